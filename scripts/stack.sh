#!/usr/bin/env bash
# scripts/stack.sh {up [--monitoring]|down|status} — start (or stop) the whole userstatus stack locally:
# Kafka (127.0.0.1:9092), Redis (127.0.0.1:6379), two workers (metrics on 9101, 9102) and the query
# service (http://127.0.0.1:8000), built from build/. Config, pid and log files: $CACHE/local-config.json
# and $CACHE/stack/. --monitoring also starts Prometheus (when installed: Debian package prometheus) on
# http://127.0.0.1:9190 with deploy/prometheus/prometheus.yml and its alert rules.
# Env: USERSTATUS_CACHE, KAFKA_PORT, KAFKA_CONTROLLER_PORT, REDIS_PORT, HTTP_PORT (8000),
# PROMETHEUS_PORT (9190; not 9090, where a distribution's own Prometheus service may listen).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

export KAFKA_PORT="${KAFKA_PORT:-9092}" KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
export REDIS_PORT="${REDIS_PORT:-6379}"
HTTP_PORT="${HTTP_PORT:-8000}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9190}"
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

# start_prometheus: Prometheus on loopback scraping this stack (deploy/prometheus/prometheus.yml with
# the query port of this stack), data in $RUN/prometheus. Not an error when Prometheus is not installed.
start_prometheus() {
    local bin dir="$RUN/prometheus"
    bin="$(command -v prometheus)" || {
        warn "prometheus not installed (Debian package prometheus): monitoring not started"
        return 0
    }
    mkdir -p "$dir/data"
    sed "s/127\.0\.0\.1:8000/127.0.0.1:$HTTP_PORT/" "$ROOT/deploy/prometheus/prometheus.yml" >"$dir/prometheus.yml"
    cp "$ROOT/deploy/prometheus/alerts.yml" "$dir/alerts.yml"
    start_proc prometheus "$bin" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --storage.tsdb.retention.time=2d
    local t0=$SECONDS
    until curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null; do
        if ! pid_alive "$RUN/prometheus.pid" "$bin"; then
            tail -n 20 "$RUN/prometheus.log" >&2 || true
            warn "prometheus exited during start-up (log: $RUN/prometheus.log)"
            return 0
        fi
        ((SECONDS - t0 < 30)) || { warn "prometheus not ready within 30 s (log: $RUN/prometheus.log)"; return 0; }
        sleep 0.5
    done
    cat <<EOT

Prometheus       http://127.0.0.1:$PROMETHEUS_PORT   (targets: /targets, alerts: /alerts; log $RUN/prometheus.log)
Grafana (optional, not started): add a Prometheus data source with URL http://127.0.0.1:$PROMETHEUS_PORT,
  then Dashboards > New > Import > upload $ROOT/deploy/grafana/userstatus.json and pick that data source.
EOT
}

cmd_up() {
    local monitoring=0 arg
    for arg in "$@"; do
        case "$arg" in
            --monitoring) monitoring=1 ;;
            *) die "unknown option for up: $arg (usage: $0 up [--monitoring])" ;;
        esac
    done
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
  "query": { "status_page": true },
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
  status page     http://127.0.0.1:$HTTP_PORT/status   (API key: secret)
  workers         metrics on http://127.0.0.1:9101/metrics and :9102 (logs $RUN/worker1.log, worker2.log)
  Kafka           127.0.0.1:$KAFKA_PORT      Redis 127.0.0.1:$REDIS_PORT
  config          $CFG

Try:
  curl -s -X POST http://127.0.0.1:$HTTP_PORT/api/update_user_status -H 'X-API-Key: secret' -d '{"users":["42"]}'
  curl -s -X POST http://127.0.0.1:$HTTP_PORT/api/get_user_status -H 'X-API-Key: secret' -d '{"users":["42","43"]}'
  curl -s -X POST http://127.0.0.1:$HTTP_PORT/api/delete_user_status -H 'X-API-Key: secret' -d '{"users":["42"]}'
  curl -sN -X POST http://127.0.0.1:$HTTP_PORT/api/watch_user_status -H 'X-API-Key: secret' -d '{"users":["42"]}'

Stop everything with: scripts/stack.sh down
EOT
    if ((monitoring)); then start_prometheus; fi
}

cmd_down() {
    stop_pidfile "$RUN/prometheus.pid" "prometheus" 30 "prometheus"
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
    if pid_alive "$RUN/prometheus.pid" prometheus; then
        info "prometheus running (pid $(cat "$RUN/prometheus.pid"), http://127.0.0.1:$PROMETHEUS_PORT)"
    fi
    return $rc
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 {up [--monitoring]|down|status}" >&2; exit 2 ;;
esac
