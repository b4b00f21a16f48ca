#!/usr/bin/env bash
# scripts/test.sh [ctest args...] — THE test command (CI runs it through .ci/run).
# 1. scripts/deps.sh (packages, Python venv, Kafka jars)
# 2. starts a test Kafka broker (127.0.0.1:19092, controller 19093) and Redis (127.0.0.1:16379) unless
#    already running there; services it starts itself begin from empty data and are stopped on exit
# 3. builds build/ (RelWithDebInfo) and build-asan/ (same + ASan/UBSan), each with -Werror
# 4. runs ctest --output-on-failure in both (unit + e2e), with USERSTATUS_TEST_KAFKA/REDIS exported
# 5. builds build-fuzz/ (clang, libFuzzer) and fuzzes each target for a bounded time (tests/fuzz/run.sh)
# Exit code non-zero if any build or test fails.
# Env: USERSTATUS_CACHE, USERSTATUS_JOBS (build jobs, default 2), USERSTATUS_SKIP_ASAN=1 (quick run),
#      USERSTATUS_E2E_JOBS (pytest-xdist workers running the e2e tests, default 4; 1 = serial),
#      USERSTATUS_KEEP_SERVICES=1 (leave Kafka/Redis running afterwards),
#      USERSTATUS_FUZZ_SECONDS (libFuzzer seconds per target after the suites, default 45; 0 skips),
#      TEST_KAFKA_PORT / TEST_KAFKA_CONTROLLER_PORT / TEST_REDIS_PORT (defaults 19092 / 19093 / 16379).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

export KAFKA_PORT="${TEST_KAFKA_PORT:-19092}" KAFKA_CONTROLLER_PORT="${TEST_KAFKA_CONTROLLER_PORT:-19093}"
export REDIS_PORT="${TEST_REDIS_PORT:-16379}"
export USERSTATUS_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
export USERSTATUS_TEST_REDIS="127.0.0.1:$REDIS_PORT"
JOBS="${USERSTATUS_JOBS:-2}"
T0=$SECONDS

"$ROOT/scripts/deps.sh"

started=()
stop_started() {
    if [[ "${USERSTATUS_KEEP_SERVICES:-0}" == 1 ]]; then
        ((${#started[@]} == 0)) || info "leaving ${started[*]} running (USERSTATUS_KEEP_SERVICES=1)"
    else
        local s
        for s in "${started[@]}"; do
            "$ROOT/scripts/$s.sh" stop || true
        done
    fi
    started=()
}
cleanup() {
    local rc=$?
    stop_started
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if "$ROOT/scripts/kafka.sh" status >/dev/null; then
    info "reusing the Kafka broker already running on $USERSTATUS_TEST_KAFKA"
else
    rm -rf "$CACHE/kafka-data-$KAFKA_PORT"   # fresh, reproducible broker state
    started+=(kafka)
fi
"$ROOT/scripts/kafka.sh" start
if "$ROOT/scripts/redis.sh" status >/dev/null; then
    info "reusing the Redis already running on $USERSTATUS_TEST_REDIS"
else
    rm -rf "$CACHE/redis-$REDIS_PORT"
    started+=(redis)
fi
"$ROOT/scripts/redis.sh" start

COMMON=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DUSERSTATUS_WERROR=ON "-DUSERSTATUS_PYTHON=$VENV/bin/python"
        "-DUSERSTATUS_E2E_JOBS=${USERSTATUS_E2E_JOBS:-4}")
declare -A RESULT=()
TOTAL_PASSED=0 TOTAL_FAILED=0
ORDER=(build)
[[ "${USERSTATUS_SKIP_ASAN:-0}" == 1 ]] || ORDER+=(build-asan)

run_suite() {
    local dir="$1"; shift
    local log="$ROOT/$dir/ctest-output.log" t0=$SECONDS
    info "=== configure $dir ==="
    if ! cmake -S "$ROOT" -B "$ROOT/$dir" "${COMMON[@]}" "$@"; then
        RESULT[$dir]="FAILED (cmake configure)"; TOTAL_FAILED=$((TOTAL_FAILED + 1)); return
    fi
    info "=== build $dir ==="
    if ! cmake --build "$ROOT/$dir" -j "$JOBS"; then
        RESULT[$dir]="FAILED (build)"; TOTAL_FAILED=$((TOTAL_FAILED + 1)); return
    fi
    info "=== ctest $dir ==="
    local rc=0
    (cd "$ROOT/$dir" && ctest --output-on-failure --no-tests=error --timeout 1800 "${CTEST_ARGS[@]}") \
        2>&1 | tee "$log" || rc=$?
    # "NN% tests passed, F tests failed out of N"
    local line passed=0 failed=0 total
    line="$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n1 || true)"
    if [[ -n "$line" ]]; then
        failed="$(sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/' <<<"$line")"
        total="$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")"
        passed=$((total - failed))
    elif ((rc != 0)); then
        failed=1
    fi
    TOTAL_PASSED=$((TOTAL_PASSED + passed)); TOTAL_FAILED=$((TOTAL_FAILED + failed))
    if ((rc == 0)); then
        RESULT[$dir]="ok: $passed passed, $failed failed ($((SECONDS - t0)) s)"
    else
        RESULT[$dir]="FAILED: $passed passed, $failed failed (ctest exit $rc, log $dir/ctest-output.log)"
        ((failed > 0)) || TOTAL_FAILED=$((TOTAL_FAILED + 1))
    fi
}

CTEST_ARGS=("$@")
for dir in "${ORDER[@]}"; do
    if [[ "$dir" == build-asan ]]; then
        run_suite "$dir" -DUSERSTATUS_SANITIZE=ON
    else
        run_suite "$dir"
    fi
done

# Fuzzing: a bounded libFuzzer run of every target (tests/fuzz/run.sh), one more result.
FUZZ_SECONDS="${USERSTATUS_FUZZ_SECONDS:-45}"
if [[ "$FUZZ_SECONDS" != 0 ]]; then
    ORDER+=(fuzz)
    info "=== fuzz (${FUZZ_SECONDS}s per target) ==="
    t0=$SECONDS
    mkdir -p "$ROOT/build-fuzz"
    if "$ROOT/tests/fuzz/run.sh" "$FUZZ_SECONDS" 2>&1 | tee "$ROOT/build-fuzz/run.log"; then
        RESULT[fuzz]="ok: $(grep -E '^  total: ' "$ROOT/build-fuzz/run.log" | tail -n1 | sed 's/^  total: //') ($((SECONDS - t0)) s)"
        TOTAL_PASSED=$((TOTAL_PASSED + 1))
    else
        RESULT[fuzz]="FAILED: $(grep -E '^  total: ' "$ROOT/build-fuzz/run.log" | tail -n1 | sed 's/^  total: //') (log build-fuzz/run.log)"
        TOTAL_FAILED=$((TOTAL_FAILED + 1))
    fi
fi

# Stop services now, so that the summary below is the last thing printed.
stop_started

echo
echo "================ userstatus test summary ================"
for dir in "${ORDER[@]}"; do
    printf '  %-11s %s\n' "$dir:" "${RESULT[$dir]}"
done
echo "  services:   Kafka $USERSTATUS_TEST_KAFKA, Redis $USERSTATUS_TEST_REDIS"
echo "  time:       $((SECONDS - T0)) s"
echo "========================================================="
# Plain closing line: tests summed over both builds (a failed build counts as one failure).
echo "total: $TOTAL_PASSED passed, $TOTAL_FAILED failed"
((TOTAL_FAILED == 0))
