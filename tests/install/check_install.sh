#!/usr/bin/env bash
# tests/install/check_install.sh {units|deb} BUILD_DIR — checks of what `cmake --install` and
# `cpack -G DEB` ship (ctest install.*; tests/CMakeLists.txt).
#   units  install into a scratch root (DESTDIR) and check the systemd units with `systemd-analyze
#          verify` (any message fails: verify exits 0 on parse warnings) and their hardening with
#          `systemd-analyze security --offline` (exposure at most HARDENING_THRESHOLD).
#   deb    build the .deb with cpack, check its control data and file list, unpack it (dpkg -x) into
#          a scratch root and run the unpacked programs: --help, and --check-config on the installed
#          configurations.
# Exit 77 (ctest: skipped) only when a tool is absent: systemd-analyze (package systemd), dpkg-deb.
set -euo pipefail

USAGE="usage: $0 units|deb BUILD_DIR"
MODE="${1:?$USAGE}"
BUILD="$(cd "${2:?$USAGE}" && pwd)"
HARDENING_THRESHOLD=25  # systemd-analyze security exposure, in tenths (2.5; the units score 1.5)
SKIP=77

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/userstatus-install.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The configured prefix (the units name binaries by their full path under it).
PREFIX="$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$BUILD/CMakeCache.txt")"
[[ -n "$PREFIX" ]] || fail "no CMAKE_INSTALL_PREFIX in $BUILD/CMakeCache.txt"
UNIT_DIR="$(sed -n 's/^USERSTATUS_SYSTEMD_UNIT_DIR:STRING=//p' "$BUILD/CMakeCache.txt")"
[[ "$UNIT_DIR" == /* ]] || UNIT_DIR="$PREFIX/$UNIT_DIR"
UNITS=(userstatus-query.service userstatus-worker@.service userstatus-notify.service)

check_units() {
    if ! command -v systemd-analyze >/dev/null; then
        echo "SKIP: systemd-analyze not found (Debian package systemd); units not verified"
        exit $SKIP
    fi
    local root="$SCRATCH/root" out unit
    DESTDIR="$root" cmake --install "$BUILD" >/dev/null
    # verify --root resolves the units' dependencies (sysinit.target, ...) inside the root: give it
    # the system's own unit directories, as an installed system has (both, for a system without
    # merged /usr).
    local d
    for d in /usr/lib/systemd/system /lib/systemd/system; do
        [[ -d "$d" ]] || continue
        mkdir -p "$root$d"
        cp -a "$d/." "$root$d/"
    done
    for unit in "${UNITS[@]}"; do
        [[ -f "$root$UNIT_DIR/$unit" ]] || fail "$UNIT_DIR/$unit not installed"
        out="$(systemd-analyze verify --man=no --root="$root" "$root$UNIT_DIR/$unit" 2>&1)" \
            || fail "systemd-analyze verify $unit failed:"$'\n'"$out"
        [[ -z "$out" ]] || fail "systemd-analyze verify $unit complained:"$'\n'"$out"
        echo "ok: systemd-analyze verify $unit"
        for want in DynamicUser=yes ProtectSystem=strict NoNewPrivileges=yes Restart=on-failure \
                    "ExecStart=$PREFIX/bin/userstatus-"; do
            grep -q "^$want" "$root$UNIT_DIR/$unit" || fail "$unit lacks $want"
        done
        out="$(systemd-analyze security --offline=true --root="$root" --threshold=$HARDENING_THRESHOLD \
               --no-pager "$root$UNIT_DIR/$unit" 2>&1)" \
            || fail "systemd-analyze security $unit: exposure above $HARDENING_THRESHOLD/10:"$'\n'"$out"
        echo "ok: $(grep 'Overall exposure' <<<"$out")"
    done
}

check_deb() {
    for tool in cpack dpkg-deb; do
        command -v $tool >/dev/null || { echo "SKIP: $tool not found; package not checked"; exit $SKIP; }
    done
    local dir="$SCRATCH/out" root="$SCRATCH/root" deb list f out
    (cd "$BUILD" && cpack -G DEB -B "$dir" >"$SCRATCH/cpack.log" 2>&1) \
        || { cat "$SCRATCH/cpack.log" >&2; fail "cpack -G DEB failed"; }
    deb="$(find "$dir" -maxdepth 1 -name "userstatus_*.deb" | head -n1)"
    [[ -n "$deb" ]] || fail "cpack made no userstatus_*.deb in $dir"
    echo "ok: $(basename "$deb")"

    [[ "$(dpkg-deb -f "$deb" Package)" == userstatus ]] || fail "Package is not userstatus"
    for lib in librdkafka libhiredis libmsgpackc libmicrohttpd libjansson libcurl4 libssl3; do
        dpkg-deb -f "$deb" Depends | grep -q "$lib" || fail "Depends lacks $lib: $(dpkg-deb -f "$deb" Depends)"
    done
    local etc="$PREFIX/etc/userstatus"
    [[ "$PREFIX" == /usr ]] && etc=/etc/userstatus
    dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx "$etc/config.json" \
        || fail "$etc/config.json is not a conffile"

    list="$(dpkg-deb -c "$deb" | awk '{print $1, $NF}')"
    for f in "$PREFIX/bin/userstatus-query" "$PREFIX/bin/userstatus-worker" \
             "$PREFIX/bin/userstatus-notify" "$UNIT_DIR/userstatus-notify.service" \
             "$UNIT_DIR/userstatus-query.service" "$UNIT_DIR/userstatus-worker@.service" \
             "$etc/config.json" "$PREFIX/share/doc/userstatus/README.md" \
             "$PREFIX/share/doc/userstatus/examples/minimal.json" \
             "$PREFIX/share/userstatus/deploy/grafana/userstatus.json" \
             "$PREFIX/share/userstatus/deploy/prometheus/alerts.yml"; do
        grep -q " \.$f\$" <<<"$list" || fail "$f missing from the package:"$'\n'"$list"
    done
    grep -q "^-rw------- \.$etc/config.json\$" <<<"$list" || fail "$etc/config.json is not mode 0600"
    echo "ok: package holds the programs, units, configuration, docs and deploy files"

    dpkg -x "$deb" "$root"
    local bin="$root$PREFIX/bin" prog
    for prog in userstatus-query userstatus-worker userstatus-notify; do
        out="$("$bin/$prog" --help 2>&1)" || true
        grep -q "^usage: $prog" <<<"$out" || fail "$prog --help printed no usage: $out"
        "$bin/$prog" --config "$root$PREFIX/share/doc/userstatus/examples/minimal.json" --check-config \
            || fail "$prog --check-config on the installed minimal.json"
    done
    # The default configuration ships without an API key: the worker accepts it, the query service
    # refuses to start until one is set, saying so.
    "$bin/userstatus-worker" --config "$root$etc/config.json" --check-config \
        || fail "userstatus-worker --check-config on the installed $etc/config.json"
    if msg="$("$bin/userstatus-query" --config "$root$etc/config.json" --check-config 2>&1)"; then
        fail "userstatus-query accepted the shipped config without an api_key"
    fi
    grep -q "api_key" <<<"$msg" || fail "userstatus-query's refusal does not name api_key: $msg"
    # The units' own command lines (ExecStart=) are accepted by the programs: the worker's with its
    # instance name as the metrics port, the query's with a config that has an API key.
    local unit cfg words line
    for unit in userstatus-worker@.service userstatus-query.service userstatus-notify.service; do
        cfg="$root$etc/config.json"
        [[ $unit == userstatus-query.service ]] && cfg="$root$PREFIX/share/doc/userstatus/examples/minimal.json"
        line="$(sed -n 's/^ExecStart=//p' "$root$UNIT_DIR/$unit")"
        [[ -n "$line" ]] || fail "$unit has no ExecStart="
        line="${line//%i/9101}"
        # shellcheck disable=SC2016  # the unit's literal text, expanded by systemd, not here
        line="${line//'${CREDENTIALS_DIRECTORY}'\/config.json/$cfg}"
        read -r -a words <<<"$line"
        words[0]="$root${words[0]}"
        "${words[@]}" --check-config || fail "$unit: '$line --check-config' refused"
    done
    echo "ok: unpacked programs run (--help, --check-config, the units' command lines)"
}

case "$MODE" in
    units) check_units ;;
    deb) check_deb ;;
    *) fail "unknown mode $MODE" ;;
esac
