#!/usr/bin/env bash
# bench/grpc-tools.sh — installs the gRPC command-line tools that bench/run.py (ghz, the load generator
# of the gRPC benchmark) and the README's examples (grpcurl) use. Both are Go modules, each built once
# at a pinned version through the Go module proxy into $CACHE/go-bin/. Prints nothing else on success;
# safe to run again. Needs go (https://go.dev/dl/ or the distribution's golang package).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

TOOLS=(github.com/bojand/ghz/cmd/ghz@v0.93.0 github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4)
BIN="$CACHE/go-bin"
command -v go >/dev/null || die "go not found: install Go to build ghz and grpcurl"
mkdir -p "$BIN"
for tool in "${TOOLS[@]}"; do
    name="$(basename "${tool%@*}")" version="${tool#*@}"
    if [[ -x "$BIN/$name" && -f "$BIN/$name.version" && "$(cat "$BIN/$name.version")" == "$version" ]]; then
        continue
    fi
    info "building $name $version from the Go module proxy (once)"
    GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOBIN="$BIN" go install "$tool"
    echo "$version" >"$BIN/$name.version"
done
