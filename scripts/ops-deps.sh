#!/usr/bin/env bash
# Installs the programs the operations tests use and writes their paths to
# target/ops-deps.env:
#   prometheus   Debian's prometheus package: the telemetry test scrapes our server and
#                agent with it and reads the series back through its query API.
# Idempotent: a warm run only checks versions.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'ops-deps: %s\n' "$*" >&2; }
die() { printf 'ops-deps: error: %s\n' "$*" >&2; exit 1; }

prometheus=$(command -v prometheus 2>/dev/null || true)
if [ -z "$prometheus" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "no prometheus on PATH; installing Debian's prometheus with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >&2; } ||
            die "apt-get install prometheus failed (see above); install Prometheus 2.x and put it on PATH"
        # The package may enable a service on :9090; the test starts its own.
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
        prometheus=$(command -v prometheus 2>/dev/null || true)
    fi
    [ -n "$prometheus" ] ||
        die "prometheus is not on PATH; install Prometheus 2.x (Debian/Ubuntu: apt-get install prometheus, needs root)"
fi
version=$("$prometheus" --version 2>&1 | head -n1)
log "$version at $prometheus"

mkdir -p target
env_file=target/ops-deps.env
{
    echo "export SPIRE_TEST_PROMETHEUS='$prometheus'"
} >"$env_file"
cat "$env_file"
