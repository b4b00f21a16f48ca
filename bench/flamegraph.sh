#!/usr/bin/env bash
# Records a CPU profile of a running process and renders it as a flame graph (SVG).
#
#   bench/flamegraph.sh install                 # inferno from crates.io, once
#   bench/flamegraph.sh record PID SECONDS OUT.svg [TITLE]
#
# perf record samples at 499 Hz with DWARF call graphs (our RelWithDebInfo build omits frame
# pointers, so --call-graph fp would cut the stacks at libmicrohttpd and hiredis). Frames of our own
# binaries are named by bench/perf_symbolize.py from the process's memory map.
set -euo pipefail

FREQ=499       # Samples per second per CPU.
STACK=16384    # Bytes of stack copied per sample for DWARF unwinding.

need_inferno() {
    command -v inferno-flamegraph >/dev/null && command -v inferno-collapse-perf >/dev/null
}

case "${1:-}" in
install)
    export PATH="$HOME/.cargo/bin:$PATH"
    need_inferno || cargo install --locked inferno
    ;;
record)
    pid=$2 seconds=$3 out=$4 title=${5:-$(basename "$out" .svg)}
    export PATH="$HOME/.cargo/bin:$PATH"
    need_inferno || { echo "inferno is missing: run $0 install" >&2; exit 1; }
    data=$(mktemp /tmp/perf-XXXXXX.data)
    cp "/proc/$pid/maps" "$data.maps"
    perf record -F "$FREQ" --call-graph "dwarf,$STACK" -p "$pid" -o "$data" -- sleep "$seconds" \
        2>/dev/null >/dev/null
    perf script -i "$data" 2>/dev/null | "$(dirname "$0")/perf_symbolize.py" "$data.maps" |
        inferno-collapse-perf > "${out%.svg}.folded"
    inferno-flamegraph --title "$title" < "${out%.svg}.folded" > "$out"
    rm -f "$data" "$data.maps"
    ;;
*)
    echo "usage: $0 install | record PID SECONDS OUT.svg [TITLE]" >&2
    exit 2
    ;;
esac
