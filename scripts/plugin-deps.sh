#!/usr/bin/env bash
# Builds the external test plugins in crates/spire-e2e/go-plugins (small Go programs on
# spire-plugin-sdk v1.4.4 and its pluginmain, at the exact versions pinned in their go.mod and
# go.sum) and caches them outside the clone, keyed by a hash of their sources, so a warm run
# costs nothing:
#
#   ${SPIRE_RS_CACHE:-~/.cache/spire-rs}/go-plugins-<hash>/bin/
#
# Writes `export SPIRE_TEST_PLUGINS=<that folder>`, SPIRE_PLUGIN_SDK_DIR and SPIRE_PLUGIN_SDK_113_DIR
# (the sources of SDK v1.4.4 and of the SDK commit upstream v1.13.3 pins, for the proto wire test) to target/plugin-deps.env and prints them;
# progress goes to standard error. A missing toolchain or a refused download is an error.
# Usage: scripts/plugin-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

src=crates/spire-e2e/go-plugins
cache=${SPIRE_RS_CACHE:-$HOME/.cache/spire-rs}

die() {
    printf 'plugin-deps: error: %s\n' "$*" >&2
    exit 1
}
command -v go >/dev/null 2>&1 || die "the Go toolchain is not on PATH; install Go 1.22 or newer"

hash=$(cd "$src" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-16)
dir=$cache/go-plugins-$hash
if [ ! -f "$dir/.complete" ]; then
    printf 'plugin-deps: building the test plugins into %s\n' "$dir/bin" >&2
    rm -rf "$dir"
    mkdir -p "$dir/bin"
    (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -o "$dir/bin/" ./...) >&2 ||
        die "go build in $src failed (see above): is the Go module proxy reachable?"
    # BundlePublisher and CredentialComposer are not in the v1.4.4 tag: those plugins are a
    # second module on the SDK commit upstream SPIRE v1.13.3 pins.
    (cd "$src/sdk113" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -o "$dir/bin/" ./...) >&2 ||
        die "go build in $src/sdk113 failed (see above): is the Go module proxy reachable?"
    touch "$dir/.complete"
else
    printf 'plugin-deps: test plugins cached in %s\n' "$dir/bin" >&2
fi

# The SDK's own source, whose .proto files the spire-proto wire test compares with ours.
sdk_dir=$(cd "$src" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' github.com/spiffe/spire-plugin-sdk)
[ -d "$sdk_dir/proto" ] || die "spire-plugin-sdk source not found (go list gave '$sdk_dir')"
sdk113_dir=$(cd "$src/sdk113" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' github.com/spiffe/spire-plugin-sdk)
[ -d "$sdk113_dir/proto" ] || die "spire-plugin-sdk source of upstream v1.13.3 not found (go list gave '$sdk113_dir')"

mkdir -p target
{
    echo "export SPIRE_TEST_PLUGINS='$dir/bin'"
    echo "export SPIRE_PLUGIN_SDK_DIR='$sdk_dir'"
    echo "export SPIRE_PLUGIN_SDK_113_DIR='$sdk113_dir'"
} >target/plugin-deps.env
cat target/plugin-deps.env
