#!/usr/bin/env bash
# Builds the third-party programs the interop tests run against ours, once per version, and
# caches them outside the clone so a warm run costs seconds:
#
#   upstream SPIRE v1.13.3   spire-server, spire-agent   (cgo, for its SQLite datastore)
#                            oidc-discovery-provider     (support/oidc-discovery-provider)
#   ghostunnel v1.8.4        ghostunnel                  (an mTLS proxy on the Workload API)
#   pebble v2.10.3           pebble, pebble-challtestsrv (Let's Encrypt's test ACME server
#                                                         and its DNS stand-in)
#
# into ${SPIRE_RS_CACHE:-~/.cache/spire-rs}/<name>-<version>/bin/. Each comes from the Go
# module proxy at that exact version (the proxy refuses version lists for spiffe/spire but
# serves exact versions). The first build takes about 15 minutes on 2 cores.
#
# Prints one `export` line per program (SPIRE_UPSTREAM_SERVER, SPIRE_UPSTREAM_AGENT,
# SPIRE_UPSTREAM_OIDC, GHOSTUNNEL,
# PEBBLE, PEBBLE_CHALLTESTSRV), for the spire-api-sdk source (SPIRE_API_SDK_DIR) and for
# Pebble's test certificates (PEBBLE_CERTS_DIR: the CA of its HTTPS directory) on
# standard output and writes them to target/interop-deps.env; progress goes
# to standard error. A missing toolchain or a refused download is an error naming it.
# Usage: scripts/interop-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SPIRE_VERSION=v1.13.3
GHOSTUNNEL_VERSION=v1.8.4
PEBBLE_VERSION=v2.10.3
# The spire-api-sdk of the newest upstream release (v1.15.3 builds with the same protos):
# the wire-conformance test compares our protos with its .proto files.
SPIRE_API_SDK_VERSION=v1.15.2
cache=${SPIRE_RS_CACHE:-$HOME/.cache/spire-rs}

log() { printf 'interop-deps: %s\n' "$*" >&2; }
die() {
    printf 'interop-deps: error: %s\n' "$*" >&2
    exit 1
}

command -v go >/dev/null 2>&1 || die "the Go toolchain is not on PATH; install Go 1.24 or newer"
command -v gcc >/dev/null 2>&1 || die "gcc is needed to build upstream SPIRE with cgo (SQLite); apt-get install gcc"

# The x509pop and sshpop tests make node certificates with the real tools: `openssl` (Debian
# package openssl) and `ssh-keygen -s` (openssh-client). Installed with apt-get when missing
# and we are root; otherwise a missing one is an error naming the package.
for tool_package in openssl:openssl ssh-keygen:openssh-client; do
    tool=${tool_package%%:*} package=${tool_package#*:}
    command -v "$tool" >/dev/null 2>&1 && continue
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "no $tool on PATH; installing Debian's $package with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" >&2; } ||
            die "apt-get install $package failed (see above)"
    else
        die "$tool is not on PATH; install it (Debian/Ubuntu: apt-get install $package)"
    fi
done

# build NAME VERSION MODULE PACKAGE... : go-installs each package of MODULE@VERSION into the
# cache folder of NAME-VERSION, unless every binary is already there. A PACKAGE of `.` is the
# module's root package, whose binary is named after the module.
build() {
    local name=$1 version=$2 module=$3
    shift 3
    local dir=$cache/$name-$version
    local missing=0 package
    binary() { if [ "$1" = . ]; then basename "$module"; else basename "$1"; fi; }
    for package in "$@"; do
        [ -x "$dir/bin/$(binary "$package")" ] || missing=1
    done
    if [ "$missing" -eq 0 ]; then
        log "$name $version cached in $dir/bin"
        return
    fi
    log "building $name $version from the Go module proxy into $dir/bin (takes minutes)"
    local scratch
    scratch=$(mktemp -d)
    mkdir -p "$dir/bin"
    (
        cd "$scratch"
        go mod init interop-build >/dev/null 2>&1
        # `go get` of the exact version resolves the module's own dependency versions.
        GOFLAGS=-mod=mod go get "$module@$version" >&2 ||
            die "go get $module@$version failed (see above): is the Go module proxy reachable?"
        local path
        for package in "$@"; do
            path=$module/$package
            [ "$package" = . ] && path=$module
            CGO_ENABLED=1 GOBIN="$dir/bin" GOFLAGS=-mod=mod go install -trimpath "$path" >&2 ||
                die "go install $path@$version failed (see above)"
        done
    )
    rm -rf "$scratch"
    for package in "$@"; do
        [ -x "$dir/bin/$(binary "$package")" ] || die "$name $version built no $(binary "$package")"
    done
}

build spire "$SPIRE_VERSION" github.com/spiffe/spire cmd/spire-server cmd/spire-agent support/oidc-discovery-provider
build ghostunnel "$GHOSTUNNEL_VERSION" github.com/ghostunnel/ghostunnel .
build pebble "$PEBBLE_VERSION" github.com/letsencrypt/pebble/v2 cmd/pebble cmd/pebble-challtestsrv

# module_dir MODULE VERSION: the folder of MODULE@VERSION's source in the Go module cache,
# downloaded if missing. go mod download needs a module to run in; the scratch one resolves
# nothing else.
module_dir() (
    scratch=$(mktemp -d)
    cd "$scratch"
    go mod init module-download >/dev/null 2>&1
    GOFLAGS=-mod=mod go mod download -json "$1@$2" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
    rm -rf "$scratch"
)

sdk_dir=$(module_dir github.com/spiffe/spire-api-sdk "$SPIRE_API_SDK_VERSION")
[ -d "$sdk_dir/proto" ] || die "go mod download github.com/spiffe/spire-api-sdk@$SPIRE_API_SDK_VERSION gave no proto folder: is the Go module proxy reachable?"
log "spire-api-sdk $SPIRE_API_SDK_VERSION in $sdk_dir"

# Pebble serves its ACME directory over HTTPS with a certificate from its own test CA
# (minica); the ACME tests trust that CA and give Pebble the localhost certificate and key.
pebble_certs=$(module_dir github.com/letsencrypt/pebble/v2 "$PEBBLE_VERSION")/test/certs
if [ ! -f "$pebble_certs/pebble.minica.pem" ] || [ ! -f "$pebble_certs/localhost/cert.pem" ]; then
    die "go mod download github.com/letsencrypt/pebble/v2@$PEBBLE_VERSION gave no test/certs folder: is the Go module proxy reachable?"
fi
log "pebble $PEBBLE_VERSION test certificates in $pebble_certs"

mkdir -p target
env_file=target/interop-deps.env
{
    echo "export SPIRE_UPSTREAM_SERVER='$cache/spire-$SPIRE_VERSION/bin/spire-server'"
    echo "export SPIRE_UPSTREAM_AGENT='$cache/spire-$SPIRE_VERSION/bin/spire-agent'"
    echo "export SPIRE_UPSTREAM_OIDC='$cache/spire-$SPIRE_VERSION/bin/oidc-discovery-provider'"
    echo "export GHOSTUNNEL='$cache/ghostunnel-$GHOSTUNNEL_VERSION/bin/ghostunnel'"
    echo "export SPIRE_API_SDK_DIR='$sdk_dir'"
    echo "export PEBBLE='$cache/pebble-$PEBBLE_VERSION/bin/pebble'"
    echo "export PEBBLE_CHALLTESTSRV='$cache/pebble-$PEBBLE_VERSION/bin/pebble-challtestsrv'"
    echo "export PEBBLE_CERTS_DIR='$pebble_certs'"
} >"$env_file"
"$cache/spire-$SPIRE_VERSION/bin/spire-server" --version >&2 2>&1 || true
cat "$env_file"
