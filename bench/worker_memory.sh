#!/usr/bin/env bash
# Worker peak RSS against throughput: the default prefetch budget next to larger and smaller ones
# (issue 13; the choice is explained in docs/choices.md, "Worker memory").
# Each line: the setting, events/s and peak RSS of one drain of pre-produced unique-user events
# (status changes on, as by default). Throughput on a shared machine is noisy: repeat, compare
# medians; RSS is stable.
#
#   bench/worker_memory.sh [EVENTS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$HOME/.cache/userstatus/venv/bin/python}
EVENTS=${1:-300000}
ROUNDS=${2:-1}
run() {
    local label=$1
    shift
    local args=()
    for kv in "$@"; do args+=(--worker-set "$kv"); done
    "$PY" bench/run.py --only worker --no-peers --memory-users 0 --events "$EVENTS" "${args[@]}" |
        "$PY" -c 'import json,sys; r=json.JSONDecoder().raw_decode(sys.stdin.read())[0]; print("%-62s %9.0f ev/s %6.1f MB" % (sys.argv[1], r["worker_events_per_s"], r["worker_peak_rss_mb"]))' "$label"
}
props() { echo "kafka.properties=$1"; }
for ((i = 0; i < ROUNDS; i++)); do
    run "defaults (5000 msgs, 4 MiB, fetch 1 MiB / 64 KiB)"
    # The budget before issue 13 (the fetcher then slept up to 1 s once the queue was full).
    run "queued.min.messages=100000 kbytes=16384 fetch 4 MiB/256 KiB" \
        "$(props '{"queued.min.messages":"100000","queued.max.messages.kbytes":"16384","fetch.max.bytes":"4194304","max.partition.fetch.bytes":"262144"}')"
done
for qm in 2000 10000 20000; do
    run "queued.min.messages=$qm" "$(props "{\"queued.min.messages\":\"$qm\"}")"
done
run "queued.max.messages.kbytes=16384" "$(props '{"queued.max.messages.kbytes":"16384"}')"
run "max.partition.fetch.bytes=32768" "$(props '{"max.partition.fetch.bytes":"32768"}')"
run "fetch 2 MiB / 128 KiB" \
    "$(props '{"fetch.max.bytes":"2097152","max.partition.fetch.bytes":"131072"}')"
for bs in 2000 10000; do
    run "worker.batch_size=$bs" "worker.batch_size=$bs"
done
run "changes.enabled=false" "changes.enabled=false"
MALLOC_ARENA_MAX=2 run "MALLOC_ARENA_MAX=2 (environment)"
