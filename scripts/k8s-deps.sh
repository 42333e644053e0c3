#!/usr/bin/env bash
# Provides the Kubernetes programs the k8s end-to-end tests start on loopback, so Kubernetes
# attestation (k8s_psat, TokenReview) runs against a REAL API server:
#
#   kube-apiserver v1.37.2   built once from the Go module proxy (about 7 minutes on 2 cores,
#                            3 GB of memory) into
#                            ${SPIRE_RS_CACHE:-~/.cache/spire-rs}/kube-apiserver-v1.37.2/bin/
#   etcd                     Debian's etcd-server (3.4), installed with apt-get when no `etcd`
#                            is on PATH; kube-apiserver 1.37 accepts it
#   spire-controller-manager v0.6.3, built once from the Go module proxy (about a minute) into
#                            ${SPIRE_RS_CACHE:-~/.cache/spire-rs}/spire-controller-manager-v0.6.3/bin/;
#                            its CRDs are the module's config/crd/bases in the Go module cache
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at
# v0.0.0 and replaces them with ./staging folders, which a module build cannot see; the scratch
# module here replaces each with its published v0.<minor>.<patch> instead, read from the
# kubernetes go.mod itself. The proxy refuses version lists for some of them but serves the
# exact versions. The binary is built in a scratch folder and renamed into place at the end,
# so an interrupted build is never taken for a finished one.
#
# Prints the export lines (SPIRE_TEST_KUBE_APISERVER, SPIRE_TEST_ETCD, SPIRE_CONTROLLER_MANAGER,
# SPIRE_CONTROLLER_MANAGER_CRDS) on standard output and
# writes them to target/k8s-deps.env; progress goes to standard error. A missing tool or a
# refused download is an error naming it. Starting the two is up to the tests, which need
# an RSA key pair, a token file and three free ports (ready in about 3.5 s; ~50 + ~290 MB resident):
#   etcd --data-dir TMP/etcd --listen-client-urls http://127.0.0.1:C --advertise-client-urls
#     http://127.0.0.1:C --listen-peer-urls http://127.0.0.1:P --initial-advertise-peer-urls
#     http://127.0.0.1:P --initial-cluster default=http://127.0.0.1:P
#   kube-apiserver --etcd-servers=http://127.0.0.1:C --bind-address=127.0.0.1
#     --advertise-address=127.0.0.1 --secure-port=S --cert-dir=TMP/certs
#     --token-auth-file=TMP/tokens.csv (TOKEN,admin,admin-uid,system:masters)
#     --service-account-issuer=https://kubernetes.default.svc.cluster.local
#     --service-account-key-file=TMP/sa.pub --service-account-signing-key-file=TMP/sa.key
#     --authorization-mode=RBAC --endpoint-reconciler-type=none --service-cluster-ip-range=10.0.0.0/24
# then poll GET https://127.0.0.1:S/readyz (bearer TOKEN) until it answers "ok".
# Usage: scripts/k8s-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION=v1.37.2
SCM_MODULE=github.com/spiffe/spire-controller-manager
SCM_VERSION=v0.6.3
# The staging modules are published as v0.<minor>.<patch> of the Kubernetes release.
STAGING_VERSION=v0.${KUBE_VERSION#v1.}
cache=${SPIRE_RS_CACHE:-$HOME/.cache/spire-rs}

log() { printf 'k8s-deps: %s\n' "$*" >&2; }
die() {
    printf 'Error: k8s-deps: %s\n' "$*" >&2
    exit 1
}

# ---- kube-apiserver --------------------------------------------------------------------
apiserver_dir=$cache/kube-apiserver-$KUBE_VERSION
apiserver=$apiserver_dir/bin/kube-apiserver

build_apiserver() {
    command -v go >/dev/null 2>&1 ||
        die "the Go toolchain is not on PATH; kube-apiserver $KUBE_VERSION needs Go 1.26 or newer"
    log "building kube-apiserver $KUBE_VERSION from the Go module proxy into $apiserver_dir/bin ($(go version); takes about 7 minutes and 3 GB of memory)"
    local started=$SECONDS
    # Global, not local: the EXIT trap runs after this function has returned.
    scratch=$(mktemp -d)
    # The EXIT trap removes the scratch folder on success, failure and interruption alike.
    trap 'rm -rf "$scratch"' EXIT
    (
        cd "$scratch"
        export GOFLAGS=-mod=mod
        # go's own work folder too, so an interrupted build leaves nothing in /tmp.
        mkdir -p "$scratch/gotmp"
        export GOTMPDIR=$scratch/gotmp
        go mod init k8s-apiserver-build >/dev/null 2>&1
        local download gomod
        # -json reports a refused download in its "Error" field on standard output.
        download=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" 2>&1 || true)
        gomod=$(printf '%s\n' "$download" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
        [ -f "$gomod" ] ||
            die "go mod download k8s.io/kubernetes@$KUBE_VERSION failed: is the Go module proxy reachable? $(printf '%s\n' "$download" | sed -n 's/^[[:space:]]*"Error": //p')"
        # The staging modules: every k8s.io/* requirement at the placeholder version v0.0.0.
        local staging
        staging=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$gomod" | sort -u)
        [ -n "$staging" ] || die "found no k8s.io/* v0.0.0 requirement in $gomod"
        local module
        for module in $staging; do
            go mod edit -replace "$module=$module@$STAGING_VERSION"
        done
        log "replaced $(printf '%s\n' "$staging" | wc -l) staging modules with their $STAGING_VERSION releases"
        go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" >&2 ||
            die "go get k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION failed (see above): is the Go module proxy reachable, and does it serve every k8s.io/*@$STAGING_VERSION?"
        # The version stamp and build tags hack/lib/golang.sh gives a release build.
        local minor=${KUBE_VERSION#v1.}
        minor=${minor%%.*}
        local ldflags="-s -w" key value
        for key in gitVersion=$KUBE_VERSION gitMajor=1 gitMinor=$minor gitTreeState=clean; do
            value=${key#*=}
            key=${key%%=*}
            ldflags+=" -X k8s.io/client-go/pkg/version.$key=$value -X k8s.io/component-base/version.$key=$value"
        done
        CGO_ENABLED=0 go build -trimpath -tags=selinux,notest -ldflags "$ldflags" \
            -o "$scratch/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2 ||
            die "go build k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION failed (see above)"
    )
    "$scratch/kube-apiserver" --version >/dev/null ||
        die "the kube-apiserver built in $scratch does not run"
    mkdir -p "$apiserver_dir/bin"
    # Copy next to the final name, then rename: the rename is atomic on one file system.
    cp "$scratch/kube-apiserver" "$apiserver.partial.$$"
    mv -f "$apiserver.partial.$$" "$apiserver"
    rm -rf "$scratch"
    trap - EXIT
    log "built kube-apiserver $KUBE_VERSION in $((SECONDS - started)) s"
}

if [ -x "$apiserver" ] && "$apiserver" --version >/dev/null 2>&1; then
    log "kube-apiserver $KUBE_VERSION cached in $apiserver_dir/bin"
else
    build_apiserver
fi
[ -x "$apiserver" ] || die "no kube-apiserver at $apiserver after the build"

# ---- etcd --------------------------------------------------------------------------------
etcd=$(command -v etcd 2>/dev/null || true)
if [ -z "$etcd" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "no etcd on PATH; installing Debian's etcd-server with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server >&2; } ||
            die "apt-get install etcd-server failed (see above); install etcd 3.4 or newer and put it on PATH"
        # The package enables an etcd service on the default ports; the tests start their own.
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            systemctl disable --now etcd >/dev/null 2>&1 || true
        fi
        etcd=$(command -v etcd 2>/dev/null || true)
    fi
    [ -n "$etcd" ] ||
        die "etcd is not on PATH; install etcd 3.4 or newer (Debian/Ubuntu: apt-get install etcd-server, needs root)"
fi
etcd_version=$("$etcd" --version 2>&1 | sed -n 's/^etcd Version: //p')
[ -n "$etcd_version" ] || die "$etcd --version printed no 'etcd Version:' line; is it etcd?"
log "etcd $etcd_version at $etcd"

# ---- spire-controller-manager ---------------------------------------------------------
# Its main package is cmd/ of the module. The module's own go.mod pins every dependency, so a
# scratch module that requires it at exactly $SCM_VERSION builds what upstream releases.
scm_dir=$cache/spire-controller-manager-$SCM_VERSION
scm=$scm_dir/bin/spire-controller-manager

# Prints the module's folder in the Go module cache (downloading it when absent).
scm_module_dir() {
    local download dir
    download=$(cd "$1" && GOFLAGS=-mod=mod go mod download -json "$SCM_MODULE@$SCM_VERSION" 2>&1 || true)
    dir=$(printf '%s\n' "$download" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir/config/crd/bases" ] ||
        die "go mod download $SCM_MODULE@$SCM_VERSION failed: is the Go module proxy reachable? $(printf '%s\n' "$download" | sed -n 's/^[[:space:]]*"Error": //p')"
    printf '%s\n' "$dir"
}

build_scm() {
    log "building spire-controller-manager $SCM_VERSION from the Go module proxy into $scm_dir/bin ($(go version))"
    local started=$SECONDS
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    (
        cd "$scratch"
        export GOFLAGS=-mod=mod
        mkdir -p "$scratch/gotmp"
        export GOTMPDIR=$scratch/gotmp
        go mod init scm-build >/dev/null 2>&1
        go get "$SCM_MODULE/cmd@$SCM_VERSION" >&2 ||
            die "go get $SCM_MODULE/cmd@$SCM_VERSION failed (see above): is the Go module proxy reachable?"
        CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$scratch/spire-controller-manager" "$SCM_MODULE/cmd" >&2 ||
            die "go build $SCM_MODULE/cmd@$SCM_VERSION failed (see above)"
    )
    # It has no --version flag; -help prints its flags and exits 0.
    "$scratch/spire-controller-manager" -help >/dev/null 2>&1 ||
        die "the spire-controller-manager built in $scratch does not run"
    mkdir -p "$scm_dir/bin"
    cp "$scratch/spire-controller-manager" "$scm.partial.$$"
    mv -f "$scm.partial.$$" "$scm"
    rm -rf "$scratch"
    trap - EXIT
    log "built spire-controller-manager $SCM_VERSION in $((SECONDS - started)) s"
}

# Go is needed even with the binary cached: the CRDs are read from the Go module cache.
command -v go >/dev/null 2>&1 ||
    die "the Go toolchain is not on PATH; spire-controller-manager $SCM_VERSION (and its CRDs) needs Go 1.24 or newer"
if [ -x "$scm" ]; then
    log "spire-controller-manager $SCM_VERSION cached in $scm_dir/bin"
else
    build_scm
fi
[ -x "$scm" ] || die "no spire-controller-manager at $scm after the build"
# go mod download needs a module folder to run in; an empty scratch one does.
scm_probe=$(mktemp -d)
(cd "$scm_probe" && go mod init scm-probe >/dev/null 2>&1)
# (die in the command substitution only ends that subshell; its message is already out.)
scm_crds=$(scm_module_dir "$scm_probe")/config/crd/bases || { rm -rf "$scm_probe"; exit 1; }
rm -rf "$scm_probe"
log "spire-controller-manager CRDs in $scm_crds"

mkdir -p target
env_file=target/k8s-deps.env
{
    echo "export SPIRE_TEST_KUBE_APISERVER='$apiserver'"
    echo "export SPIRE_TEST_ETCD='$etcd'"
    echo "export SPIRE_CONTROLLER_MANAGER='$scm'"
    echo "export SPIRE_CONTROLLER_MANAGER_CRDS='$scm_crds'"
} >"$env_file"
"$apiserver" --version >&2 2>&1 || true
cat "$env_file"
