#!/usr/bin/env bash
# scripts/redis.sh {start|stop|status} — a local redis-server on 127.0.0.1 for development and tests.
# Daemonized, append-only file on, data/pid/log in $CACHE/redis-$REDIS_PORT.
# Env: USERSTATUS_CACHE (default ~/.cache/userstatus), REDIS_PORT (default 6379).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_PORT="${REDIS_PORT:-6379}"
DIR="$CACHE/redis-$REDIS_PORT"
PIDFILE="$DIR/redis.pid"
LOGFILE="$DIR/redis.log"
PATTERN="redis-server 127.0.0.1:$REDIS_PORT"

ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]; }

cmd_start() {
    command -v redis-server >/dev/null || die "redis-server not found: run scripts/deps.sh first"
    mkdir -p "$DIR"
    exec 9>"$DIR/.start.lock"
    flock 9  # two concurrent starts: the second waits, then finds Redis running
    if pid_alive "$PIDFILE" "$PATTERN"; then
        info "Redis already running on 127.0.0.1:$REDIS_PORT (pid $(cat "$PIDFILE"))"
    elif ping; then
        warn "another Redis already answers on 127.0.0.1:$REDIS_PORT (not started by this script); using it"
        return 0
    elif port_open "$REDIS_PORT"; then
        die "port $REDIS_PORT is taken by a process that is not Redis; set REDIS_PORT"
    else
        mkdir -p "$DIR"
        info "starting Redis on 127.0.0.1:$REDIS_PORT (data $DIR)"
        redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
            --pidfile "$PIDFILE" --logfile "$LOGFILE" --dir "$DIR" \
            --appendonly yes --save "" --protected-mode yes 9>&- \
            || die "redis-server failed to start (see $LOGFILE)"
    fi
    local i
    for ((i = 0; i < 100; i++)); do
        if ping; then
            info "Redis ready on 127.0.0.1:$REDIS_PORT"
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$LOGFILE" >&2 || true
    die "Redis did not answer PING on port $REDIS_PORT within 10 s"
}

cmd_stop() {
    if ! pid_alive "$PIDFILE" "$PATTERN"; then
        rm -f "$PIDFILE"
        if ping; then
            info "Redis on port $REDIS_PORT was not started by this script; leaving it alone"
        else
            info "Redis on port $REDIS_PORT is not running"
        fi
        return 0
    fi
    info "stopping Redis on port $REDIS_PORT (pid $(cat "$PIDFILE"))"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    local i
    for ((i = 0; i < 50; i++)); do
        pid_alive "$PIDFILE" "$PATTERN" || break
        sleep 0.1
    done
    # Fall back to signals if SHUTDOWN did not end it.
    stop_pidfile "$PIDFILE" "Redis on port $REDIS_PORT" 10 "$PATTERN" >/dev/null
    rm -f "$PIDFILE"
    info "Redis on port $REDIS_PORT stopped"
}

cmd_status() {
    if pid_alive "$PIDFILE" "$PATTERN" && ping; then
        info "Redis running on 127.0.0.1:$REDIS_PORT (pid $(cat "$PIDFILE"), data $DIR)"
        return 0
    fi
    info "Redis (started by this script) not running on port $REDIS_PORT"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
