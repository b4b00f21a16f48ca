#!/usr/bin/env bash
# scripts/stack.sh {up|down|status} — start (or stop) the whole userstatus stack locally:
# Kafka (127.0.0.1:9092), Redis (127.0.0.1:6379), two workers (metrics on 9101, 9102) and the query
# service (http://127.0.0.1:8000), built from build/. Config, pid and log files: $CACHE/local-config.json
# and $CACHE/stack/. Env: USERSTATUS_CACHE, KAFKA_PORT, KAFKA_CONTROLLER_PORT, REDIS_PORT, HTTP_PORT (8000).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

export KAFKA_PORT="${KAFKA_PORT:-9092}" KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
export REDIS_PORT="${REDIS_PORT:-6379}"
HTTP_PORT="${HTTP_PORT:-8000}"
CFG="$CACHE/local-config.json"
RUN="$CACHE/stack"
WORKER="$ROOT/build/worker/userstatus-worker"
QUERY="$ROOT/build/query/userstatus-query"

# start_proc NAME CMD...: run CMD in the background (own session), pid in $RUN/NAME.pid, log in $RUN/NAME.log.
start_proc() {
    local name="$1"; shift
    if pid_alive "$RUN/$name.pid" "$1"; then
        info "$name already running (pid $(cat "$RUN/$name.pid"))"
        return 0
    fi
    info "starting $name: $*"
    # USERSTATUS_* variables would override the config file; drop the scripts' own ones.
    setsid nohup env -u USERSTATUS_CACHE -u USERSTATUS_TEST_KAFKA -u USERSTATUS_TEST_REDIS "$@" \
        >>"$RUN/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

cmd_up() {
    "$ROOT/scripts/deps.sh"
    info "building build/"
    cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DUSERSTATUS_PYTHON=$VENV/bin/python" >/dev/null
    cmake --build "$ROOT/build" -j "${USERSTATUS_JOBS:-2}"
    [[ -x "$WORKER" ]] || die "$WORKER was not built"
    [[ -x "$QUERY" ]] || die "$QUERY was not built"

    mkdir -p "$RUN"
    # Remember which services this script started, so that 'down' stops only those.
    "$ROOT/scripts/kafka.sh" status >/dev/null || touch "$RUN/owns-kafka"
    "$ROOT/scripts/kafka.sh" start
    "$ROOT/scripts/redis.sh" status >/dev/null || touch "$RUN/owns-redis"
    "$ROOT/scripts/redis.sh" start

    cat >"$CFG" <<JSON
{
  "api_key": "secret",
  "address": "127.0.0.1",
  "port": $HTTP_PORT,
  "user_status": { "enabled": true, "redis_address": "127.0.0.1:$REDIS_PORT", "expire_interval": "744h" },
  "kafka": { "brokers": "127.0.0.1:$KAFKA_PORT", "topic": "user_status", "consumer_group": "userstatus-worker" }
}
JSON
    info "config: $CFG"

    start_proc worker1 "$WORKER" --config "$CFG" --metrics-port 9101
    start_proc worker2 "$WORKER" --config "$CFG" --metrics-port 9102
    start_proc query "$QUERY" --config "$CFG"

    local t0=$SECONDS p
    until curl -sf "http://127.0.0.1:$HTTP_PORT/health" >/dev/null; do
        for p in worker1:"$WORKER" worker2:"$WORKER" query:"$QUERY"; do
            if ! pid_alive "$RUN/${p%%:*}.pid" "${p#*:}"; then
                tail -n 30 "$RUN/${p%%:*}.log" >&2 || true
                die "${p%%:*} exited during start-up (log: $RUN/${p%%:*}.log); 'scripts/stack.sh down' to clean up"
            fi
        done
        ((SECONDS - t0 < 60)) || die "query service did not answer /health within 60 s (log: $RUN/query.log)"
        sleep 0.5
    done

    cat <<EOT

userstatus stack is up:
  query service   http://127.0.0.1:$HTTP_PORT   (/health, /metrics; log $RUN/query.log)
  workers         metrics on http://127.0.0.1:9101/metrics and :9102 (logs $RUN/worker1.log, worker2.log)
  Kafka           127.0.0.1:$KAFKA_PORT      Redis 127.0.0.1:$REDIS_PORT
  config          $CFG

Try:
  curl -s -X POST http://127.0.0.1:$HTTP_PORT/api/update_user_status -H 'X-API-Key: secret' -d '{"users":["42"]}'
  curl -s -X POST http://127.0.0.1:$HTTP_PORT/api/get_user_status -H 'X-API-Key: secret' -d '{"users":["42","43"]}'
  curl -s -X POST http://127.0.0.1:$HTTP_PORT/api/delete_user_status -H 'X-API-Key: secret' -d '{"users":["42"]}'

Stop everything with: scripts/stack.sh down
EOT
}

cmd_down() {
    stop_pidfile "$RUN/query.pid" "query service" 30 "$QUERY"
    stop_pidfile "$RUN/worker1.pid" "worker 1" 30 "$WORKER"
    stop_pidfile "$RUN/worker2.pid" "worker 2" 30 "$WORKER"
    if [[ -f "$RUN/owns-kafka" ]]; then "$ROOT/scripts/kafka.sh" stop; rm -f "$RUN/owns-kafka"; fi
    if [[ -f "$RUN/owns-redis" ]]; then "$ROOT/scripts/redis.sh" stop; rm -f "$RUN/owns-redis"; fi
    info "stack is down"
}

cmd_status() {
    local rc=0 n
    for n in query worker1 worker2; do
        if pid_alive "$RUN/$n.pid"; then info "$n running (pid $(cat "$RUN/$n.pid"))"; else info "$n not running"; rc=1; fi
    done
    "$ROOT/scripts/kafka.sh" status || rc=1
    "$ROOT/scripts/redis.sh" status || rc=1
    return $rc
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
