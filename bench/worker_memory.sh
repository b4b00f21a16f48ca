#!/usr/bin/env bash
# Worker peak RSS against throughput for a few prefetch and batch settings (issue 13, item 4).
# Each line: the setting, events/s and peak RSS of one drain of pre-produced unique-user events.
#
#   bench/worker_memory.sh [EVENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$HOME/.cache/userstatus/venv/bin/python}
EVENTS=${1:-300000}
run() {
    local label=$1
    shift
    local args=()
    for kv in "$@"; do args+=(--worker-set "$kv"); done
    "$PY" bench/run.py --only worker --no-peers --events "$EVENTS" "${args[@]}" |
        "$PY" -c 'import json,sys; r=json.JSONDecoder().raw_decode(sys.stdin.read())[0]; print("%-58s %9.0f ev/s %6.1f MB" % (sys.argv[1], r["worker_events_per_s"], r["worker_peak_rss_mb"]))' "$label"
}
run "defaults"
for kb in 4096 16384 65536; do
    run "queued.max.messages.kbytes=$kb" "kafka.properties={\"queued.max.messages.kbytes\":\"$kb\"}"
done
for fb in 1048576 16777216; do
    run "fetch.max.bytes=$fb" "kafka.properties={\"fetch.max.bytes\":\"$fb\"}"
done
for bs in 2000 50000; do
    run "worker.batch_size=$bs" "worker.batch_size=$bs"
done
# The changes producer (status changes on): its queue holds the change events until acknowledged.
run "changes.enabled=false" "changes.enabled=false"
run "queue.buffering.max.kbytes=4096 (producer)" "kafka.properties={\"queue.buffering.max.kbytes\":\"4096\"}"
