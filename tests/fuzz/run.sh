#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] — build the libFuzzer targets into build-fuzz/ (clang, ASan + UBSan,
# -DUSERSTATUS_FUZZ=ON) and run each for SECONDS (default 60) from its corpus, printing the
# executions and findings of every target. Exit code non-zero when a target found a crash, leak,
# timeout or OOM (the input is kept in build-fuzz/artifacts/<target>/: copy it into
# tests/fuzz/regressions/<target>/, fix the bug, and ctest replays it from then on).
# The corpus in build-fuzz/corpus/<target>/ starts from the seeds of tests/fuzz/seeds.py and keeps
# what earlier runs found, so longer or repeated runs go deeper.
# Env: USERSTATUS_FUZZ_TARGETS (default "fuzz_event fuzz_api_body fuzz_config fuzz_redirect"), USERSTATUS_JOBS,
#      USERSTATUS_FUZZ_DIR (default build-fuzz).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECONDS_EACH="${1:-60}"
TARGETS=(${USERSTATUS_FUZZ_TARGETS:-fuzz_event fuzz_api_body fuzz_config fuzz_redirect})
DIR="$ROOT/${USERSTATUS_FUZZ_DIR:-build-fuzz}"
JOBS="${USERSTATUS_JOBS:-2}"
info() { printf '[fuzz] %s\n' "$*"; }

command -v clang >/dev/null || { echo "[fuzz] ERROR: clang not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
info "building ${TARGETS[*]} in $DIR (clang, ASan + UBSan + libFuzzer)"
mkdir -p "$DIR"
cmake -S "$ROOT" -B "$DIR" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DUSERSTATUS_FUZZ=ON >"$DIR/configure.log" 2>&1 || { cat "$DIR/configure.log" >&2; exit 1; }
cmake --build "$DIR" -j "$JOBS" --target "${TARGETS[@]}" >"$DIR/build.log" 2>&1 \
    || { tail -n 40 "$DIR/build.log" >&2; exit 1; }

python3 "$ROOT/tests/fuzz/seeds.py" "$DIR/seeds" | sed 's/^/[fuzz] /'
total_execs=0 total_findings=0
summary=()
for t in "${TARGETS[@]}"; do
    corpus="$DIR/corpus/$t" artifacts="$DIR/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    before="$(find "$artifacts" -type f | wc -l)"
    log="$DIR/$t.log"
    info "running $t for ${SECONDS_EACH}s (corpus $corpus, log $log)"
    rc=0
    # Work in the corpus dir, seeds as a read-only second corpus. -timeout: one input may take at
    # most 10 s; -rss_limit_mb bounds memory; UBSan findings abort (halt_on_error).
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" ASAN_OPTIONS="detect_leaks=1" \
        "$DIR/tests/fuzz/$t" "$corpus" "$DIR/seeds/$t" -max_total_time="$SECONDS_EACH" \
        -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n1)"
    execs="${execs:-0}"
    after="$(find "$artifacts" -type f | wc -l)"
    findings=$((after - before))
    if ((rc != 0 && findings == 0)); then findings=1; fi  # crashed without an artifact
    cov="$(grep -Eo 'cov: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2)"
    total_execs=$((total_execs + execs)) total_findings=$((total_findings + findings))
    summary+=("$(printf '%-14s %10s execs  cov %-5s corpus %-5s findings %d' "$t" "$execs" "${cov:-?}" \
        "$(find "$corpus" -type f | wc -l)" "$findings")")
    if ((findings > 0)); then
        grep -E 'ERROR: |runtime error|SUMMARY' "$log" | head -n 5 | sed 's/^/[fuzz]   /' || true
        info "  artifacts: $(find "$artifacts" -type f -newer "$DIR/seeds" | tr '\n' ' ')"
    fi
done
echo "---------------- fuzz summary (${SECONDS_EACH}s per target) ----------------"
printf '  %s\n' "${summary[@]}"
echo "  total: $total_execs executions, $total_findings findings"
((total_findings == 0))
