#!/usr/bin/env bash
# scripts/deps.sh — installs everything a fresh Debian 12 machine needs to build, run and test userstatus:
# the distribution's packages (apt-get, only when one is missing), a Python venv for the end-to-end tests
# at $CACHE/venv (pip only when tests/e2e/requirements.txt changed), the Kafka broker jars, and (optional)
# Centrifugo OSS v5/v6 with the centrifuge JS client for the real-Centrifugo end-to-end test.
# Idempotent: a second run does nothing. Env: USERSTATUS_CACHE (default ~/.cache/userstatus).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(build-essential cmake pkg-config librdkafka-dev libhiredis-dev libmsgpack-dev
          libmicrohttpd-dev libjansson-dev libcmocka-dev redis-server redis-tools clang
          libclang-rt-14-dev curl python3-venv wrk webdis
          libgrpc-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
          kcat prometheus chromium chromium-driver libcurl4-openssl-dev libssl-dev)
# kcat: the one-liner of examples/producers/README.md (tested); prometheus: promtool checks the alert
# rules of deploy/prometheus/ (ctest) and scripts/stack.sh up --monitoring runs it; chromium and
# chromium-driver: the headless browser that tests/e2e/test_status_page.py drives with Selenium;
# libcurl4-openssl-dev, libssl-dev: the HTTP client and the webhook signatures (HMAC-SHA256) of
# userstatus-notify.
# Java and Maven run the test Kafka broker and build the Java producer example (javac: a JDK);
# any existing install will do.
command -v java >/dev/null && command -v javac >/dev/null || PACKAGES+=(default-jdk-headless)
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
    printf '%s\n' 'pytest==9.2.0' 'pytest-xdist==3.8.0' 'confluent-kafka==2.16.1' 'msgpack==1.2.4' \
        'requests==2.34.2' 'selenium==4.51.0' >"$REQ"
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

# --- Centrifugo OSS and the centrifuge JS client (tests/e2e/test_centrifugo_real.py) -------------------
# Centrifugo is a Go module: each pinned version is downloaded through the Go module proxy and built
# once into $CACHE/go-bin/<major>/centrifugo (2-3 minutes on 2 cores); the npm packages of
# tests/e2e/centrifugo/package-lock.json go to $CACHE/centrifugo-js. Optional: without Go or npm, or
# when a registry refuses, this warns and the real-Centrifugo tests skip (saying why); the protocol
# tests (tests/e2e/test_proxy.py) always run. USERSTATUS_SKIP_CENTRIFUGO=1 skips this step.
CENTRIFUGO_VERSIONS=(v5.4.9 v6.9.1)
cache_go() { GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOFLAGS=-mod=mod go "$@"; }
install_centrifugo() {
    local version="$1" major="${1%%.*}" bin="$CACHE/go-bin/${1%%.*}/centrifugo" dir
    local stamp="$bin.version"
    if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
        info "Centrifugo $version present ($bin)"
        return 0
    fi
    info "building Centrifugo $version from the Go module proxy (once; a few minutes)"
    # go install module@version also asks the proxy for the module's version list, which is not
    # always served for old majors; downloading the module and building it in place needs neither.
    dir="$(cache_go mod download -json "github.com/centrifugal/centrifugo/$major@$version" \
           | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" || dir=""
    if [[ -z "$dir" || ! -d "$dir" ]]; then
        warn "cannot download Centrifugo $version from the Go module proxy; its real-Centrifugo test will skip"
        return 0
    fi
    mkdir -p "$(dirname "$bin")"
    if (cd "$dir" && cache_go build -trimpath \
            -ldflags "-X github.com/centrifugal/centrifugo/$major/internal/build.Version=${version#v}" \
            -o "$bin.tmp" .); then
        mv "$bin.tmp" "$bin"
        echo "$version" >"$stamp"
        info "Centrifugo $version built ($bin)"
    else
        rm -f "$bin.tmp"
        warn "building Centrifugo $version failed; its real-Centrifugo test will skip"
    fi
}
if [[ "${USERSTATUS_SKIP_CENTRIFUGO:-0}" == 1 ]]; then
    info "USERSTATUS_SKIP_CENTRIFUGO=1: not installing Centrifugo and the centrifuge JS client"
else
    if command -v go >/dev/null; then
        for v in "${CENTRIFUGO_VERSIONS[@]}"; do install_centrifugo "$v"; done
    else
        warn "go not found: Centrifugo cannot be built; the real-Centrifugo tests will skip"
    fi
    JS_SRC="$ROOT/tests/e2e/centrifugo" JS_DIR="$CACHE/centrifugo-js"
    if command -v npm >/dev/null && command -v node >/dev/null; then
        want="$(cat "$JS_SRC/package.json" "$JS_SRC/package-lock.json" | sha256sum | cut -d' ' -f1)"
        if [[ -d "$JS_DIR/node_modules" && -f "$JS_DIR/.lock.sha256" && "$(cat "$JS_DIR/.lock.sha256")" == "$want" ]]; then
            info "centrifuge JS client present ($JS_DIR)"
        else
            info "installing the centrifuge JS client and ws from npm into $JS_DIR"
            mkdir -p "$JS_DIR"
            cp "$JS_SRC/package.json" "$JS_SRC/package-lock.json" "$JS_DIR/"
            if (cd "$JS_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error); then
                echo "$want" >"$JS_DIR/.lock.sha256"
            else
                warn "npm ci failed; the real-Centrifugo tests will skip"
            fi
        fi
    else
        warn "node/npm not found: the real-Centrifugo tests will skip"
    fi
fi
info "done: dependencies ready (cache: $CACHE)"
