# shellcheck shell=bash
# shellcheck disable=SC2034  # ROOT, VENV are used by the scripts that source this file
# scripts/lib.sh — helpers shared by the scripts in scripts/ (sourced, not run).
# Defines ROOT (repo root), CACHE (${USERSTATUS_CACHE:-$HOME/.cache/userstatus}), VENV, and log helpers.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${USERSTATUS_CACHE:-$HOME/.cache/userstatus}"
VENV="$CACHE/venv"
export USERSTATUS_CACHE="$CACHE"  # so child scripts agree on the cache (programs get it removed)

_us_tag="$(basename "$0" .sh)"
info() { printf '[%s] %s\n' "$_us_tag" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$_us_tag" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$_us_tag" "$*" >&2; exit 1; }

# pid_alive PIDFILE [PATTERN]: true when PIDFILE names a live process (whose command line contains
# PATTERN, if given — guards against a recycled pid).
pid_alive() {
    local pidfile="$1" pattern="${2:-}" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -n "$pattern" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
    fi
    return 0
}

# stop_pidfile PIDFILE NAME [TIMEOUT] [PATTERN]: SIGTERM, wait up to TIMEOUT s (default 30), then SIGKILL.
stop_pidfile() {
    local pidfile="$1" name="$2" timeout="${3:-30}" pattern="${4:-}" pid i
    if ! pid_alive "$pidfile" "$pattern"; then
        info "$name is not running"
        rm -f "$pidfile"
        return 0
    fi
    pid="$(cat "$pidfile")"
    info "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$name (pid $pid) still alive after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
    info "$name stopped"
}

# port_open PORT: true when something listens on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
