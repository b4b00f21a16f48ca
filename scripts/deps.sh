#!/usr/bin/env bash
# scripts/deps.sh — installs everything a fresh Debian 12 machine needs to build, run and test userstatus:
# the distribution's packages (apt-get, only when one is missing), a Python venv for the end-to-end tests
# at $CACHE/venv (pip only when tests/e2e/requirements.txt changed), and the Kafka broker jars.
# Idempotent: a second run does nothing. Env: USERSTATUS_CACHE (default ~/.cache/userstatus).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(build-essential cmake pkg-config librdkafka-dev libhiredis-dev libmsgpack-dev
          libmicrohttpd-dev libjansson-dev libcmocka-dev redis-server redis-tools clang
          libclang-rt-14-dev curl python3-venv wrk webdis)
# Java and Maven only run the test Kafka broker; any existing install will do.
command -v java >/dev/null || PACKAGES+=(default-jre-headless)
command -v mvn >/dev/null || PACKAGES+=(maven)

# --- distribution packages ---------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
        SUDO="sudo"
    fi
    info "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    info "all Debian packages present"
fi
command -v java >/dev/null || die "java still missing after install"
command -v mvn >/dev/null || die "mvn still missing after install"

# --- Python venv for tests/e2e -------------------------------------------------------------------------
REQ="$ROOT/tests/e2e/requirements.txt"
if [[ ! -f "$REQ" ]]; then
    warn "$REQ missing; writing the default one"
    mkdir -p "$(dirname "$REQ")"
    printf '%s\n' 'pytest==9.2.0' 'confluent-kafka==2.16.1' 'msgpack==1.2.4' 'requests==2.34.2' >"$REQ"
fi
# Debian's python3 (with python3-venv) is preferred; any python3 works.
PY_BASE="/usr/bin/python3"
[[ -x "$PY_BASE" ]] || PY_BASE="$(command -v python3)" || die "python3 not found"
STAMP="$VENV/.requirements.sha256"
want="$( { sha256sum "$REQ" | cut -d' ' -f1; "$PY_BASE" -VV; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null \
        && [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    info "Python venv up to date ($VENV)"
else
    if ! { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; }; then
        info "creating Python venv at $VENV"
        rm -rf "$VENV"
        mkdir -p "$CACHE"
        "$PY_BASE" -m venv "$VENV"
    fi
    info "installing Python test requirements from tests/e2e/requirements.txt"
    "$VENV/bin/python" -m pip install -q -r "$REQ"
    echo "$want" >"$STAMP"
fi

# --- Kafka broker jars ---------------------------------------------------------------------------------
"$ROOT/scripts/kafka.sh" fetch
info "done: dependencies ready (cache: $CACHE)"
