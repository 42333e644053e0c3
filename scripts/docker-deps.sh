#!/usr/bin/env bash
# Installs what the docker workload attestor's end-to-end test
# (crates/spire-e2e/tests/docker_attestor.rs) needs: a Docker Engine daemon (Debian's
# docker.io: dockerd, containerd, runc) and the docker CLI. The test starts its own dockerd
# on a private socket and data root; nothing here starts one. Writes `export DOCKERD=...` and
# `export DOCKER=...` to target/docker-deps.env (also printed). Installed with apt-get when
# missing and we are root; otherwise a missing one is an error naming the package.
# Usage: scripts/docker-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    printf 'docker-deps: error: %s\n' "$*" >&2
    exit 1
}
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        printf 'docker-deps: installing Debian'"'"'s docker.io with apt-get\n' >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >&2; } ||
            die "apt-get install docker.io failed (see above)"
    else
        die "dockerd and docker are needed; install them (Debian/Ubuntu: apt-get install docker.io)"
    fi
fi
mkdir -p target
{
    echo "export DOCKERD='$(command -v dockerd)'"
    echo "export DOCKER='$(command -v docker)'"
} >target/docker-deps.env
cat target/docker-deps.env
