#!/usr/bin/env bash
# Installs what the Workload API conformance test (crates/spire-e2e/tests/conformance.rs)
# needs: a Python venv at target/conformance-venv with py-spiffe and pytest from
# conformance/python/requirements.txt (also PyJWT, the OIDC relying party of
# crates/spire-e2e/tests/oidc_discovery.rs), and the go-spiffe module of conformance/go when the
# Go toolchain is on PATH. Idempotent: a venv whose requirements are already installed is
# left as it is.
# Usage: scripts/conformance-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/conformance-venv
requirements=conformance/python/requirements.txt
stamp="$venv/.requirements.installed"

python=""
for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "Error: no python3 on PATH; install Python 3.10 or newer (py-spiffe needs it)" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "conformance-deps: creating venv $venv with $($python --version 2>&1)"
    mkdir -p target
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        # Debian ships venv separately; a fresh CI machine may lack it.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "conformance-deps: installing python3-venv with apt-get"
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >/dev/null \
                || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >/dev/null; }
        fi
        if ! "$python" -m venv "$venv"; then
            echo "Error: '$python -m venv $venv' failed; on Debian/Ubuntu install python3-venv" >&2
            rm -rf "$venv"
            exit 1
        fi
    fi
fi

if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
    echo "conformance-deps: $venv already has $requirements installed"
else
    echo "conformance-deps: installing $requirements into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi
"$venv/bin/python" -c 'import spiffe, pytest, jwt, cryptography; print("conformance-deps: py-spiffe, pytest", pytest.__version__, "and PyJWT", jwt.__version__, "import fine")'

if command -v go >/dev/null 2>&1; then
    echo "conformance-deps: go mod download in conformance/go ($(go version))"
    (cd conformance/go && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download)
    # Compiling the test binary once fetches anything go mod download left out and warms
    # the build cache, so the conformance test itself does not spend its time compiling.
    (cd conformance/go && GOFLAGS=-mod=mod GOTOOLCHAIN=local go test -count=1 -run '^$' ./... >/dev/null)
    echo "conformance-deps: go-spiffe module ready"
else
    echo "conformance-deps: go not found; the go-spiffe conformance part will be skipped"
fi
