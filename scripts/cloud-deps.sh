#!/usr/bin/env bash
# Installs the AWS API emulator the cloud plugin tests talk to (crates/spire-server/tests/aws_*.rs,
# crates/spire-e2e/tests/aws.rs): moto[server] at an exact version in a Python venv cached under
# ~/.cache/spire-rs/moto-<version>, and writes target/cloud-deps.env with SPIRE_TEST_MOTO (the
# moto_server executable) and SPIRE_TEST_CLOUD_PYTHON (the venv's python, which also has the
# `cryptography` package the tests use to sign PKCS#7 instance identity documents).
# Idempotent: an installed venv is reused.
# Usage: scripts/cloud-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

moto_version=5.2.0
venv="$HOME/.cache/spire-rs/moto-$moto_version"
stamp="$venv/.installed"

python=""
for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "Error: no python3 on PATH; install Python 3.9 or newer (moto needs it)" >&2
    exit 1
fi

if [ ! -f "$stamp" ]; then
    echo "cloud-deps: installing moto[server]==$moto_version into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        echo "Error: '$python -m venv $venv' failed; on Debian/Ubuntu install python3-venv" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$moto_version"
    touch "$stamp"
fi
"$venv/bin/python" -c 'import moto, cryptography; print("cloud-deps: moto", moto.__version__, "cryptography", cryptography.__version__)'

mkdir -p target
cat > target/cloud-deps.env <<ENV
export SPIRE_TEST_MOTO='$venv/bin/moto_server'
export SPIRE_TEST_CLOUD_PYTHON='$venv/bin/python'
ENV
echo "cloud-deps: wrote target/cloud-deps.env"
