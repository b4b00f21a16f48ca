#!/usr/bin/env bash
# tests/deploy/promtool.sh {check|test} REPO_ROOT — ctest deploy.promtool_*: `promtool check rules` on
# deploy/prometheus/alerts.yml (and `check config` on prometheus.yml), or `promtool test rules` on
# alerts_test.yml. Exit 77 (ctest: skipped) only when promtool is absent (Debian package prometheus,
# which scripts/deps.sh installs).
set -euo pipefail
MODE="${1:?usage: $0 check|test REPO_ROOT}"
DIR="${2:?usage: $0 check|test REPO_ROOT}/deploy/prometheus"
if ! command -v promtool >/dev/null; then
    echo "SKIP: promtool not found (Debian package prometheus); alert rules not checked"
    exit 77
fi
cd "$DIR"
case "$MODE" in
    check) promtool check rules alerts.yml && promtool check config prometheus.yml ;;
    test) promtool test rules alerts_test.yml ;;
    *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
