#!/usr/bin/env bash
# Builds the Envoy SDS test client (conformance/sds: go-control-plane's envoy module v1.40.0
# driving the agent's SecretDiscoveryService as Envoy does) once per version of its source,
# caches it in ${SPIRE_RS_CACHE:-~/.cache/spire-rs}/sds-client-<go-control-plane version>-<source hash>/bin/,
# and writes `export SDS_CLIENT=...` to target/sds-deps.env (also printed). The modules come
# from the Go module proxy at the exact versions of conformance/sds/go.sum. A missing
# toolchain or a refused download is an error naming it.
# Usage: scripts/sds-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

GO_CONTROL_PLANE_VERSION=v1.40.0
cache=${SPIRE_RS_CACHE:-$HOME/.cache/spire-rs}

die() {
    printf 'sds-deps: error: %s\n' "$*" >&2
    exit 1
}
command -v go >/dev/null 2>&1 || die "the Go toolchain is not on PATH; install Go 1.26 or newer"
grep -q "github.com/envoyproxy/go-control-plane/envoy $GO_CONTROL_PLANE_VERSION" conformance/sds/go.mod ||
    die "conformance/sds/go.mod does not require go-control-plane/envoy $GO_CONTROL_PLANE_VERSION"

hash=$(cat conformance/sds/go.mod conformance/sds/go.sum conformance/sds/*.go | sha256sum | cut -c1-12)
dir=$cache/sds-client-$GO_CONTROL_PLANE_VERSION-$hash
if [ -x "$dir/bin/sds-client" ]; then
    printf 'sds-deps: sds-client cached in %s/bin\n' "$dir" >&2
else
    printf 'sds-deps: building sds-client with go-control-plane/envoy %s into %s/bin\n' "$GO_CONTROL_PLANE_VERSION" "$dir" >&2
    mkdir -p "$dir/bin"
    (cd conformance/sds && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -o "$dir/bin/sds-client.tmp" .) ||
        die "go build of conformance/sds failed (see above): is the Go module proxy reachable?"
    mv "$dir/bin/sds-client.tmp" "$dir/bin/sds-client"
fi

mkdir -p target
echo "export SDS_CLIENT='$dir/bin/sds-client'" >target/sds-deps.env
cat target/sds-deps.env
