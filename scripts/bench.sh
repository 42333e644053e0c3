#!/usr/bin/env bash
# Runs the spire-server benchmarks in the release (bench) profile and prints their markdown
# tables to stdout (progress goes to stderr). Benchmarks are not tests: nothing here runs
# inside `cargo test`. docs/benchmarks.md records the numbers and the machine they came from.
#
# Usage: scripts/bench.sh            full run (about 2 minutes after the build)
#        SPIRE_BENCH_QUICK=1 scripts/bench.sh   smoke run at a tenth of the sizes
#
# Needs `openssl` on PATH for the ECDSA P-256 ceiling of the SVID scenario (Debian: openssl);
# without it the SVID table has no ceiling ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "Error: cargo is not installed; install Rust (stable) with rustup first" >&2
    exit 1
fi
if ! command -v openssl >/dev/null 2>&1; then
    echo "Warning: openssl not found; install it (apt-get install openssl) for the SVID ceiling" >&2
fi

echo "## Machine"
echo
echo "- cores (nproc): $(nproc)"
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "- RAM: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "- date: $(date -u +%Y-%m-%d)"
echo

echo "## server_api (cargo bench -p spire-server --bench server_api)"
echo
nice cargo bench -p spire-server --bench server_api

if [[ -f crates/spire-server/benches/authorized_sync.rs ]]; then
    echo
    echo "## authorized_sync (cargo bench -p spire-server --bench authorized_sync)"
    echo
    nice cargo bench -p spire-server --bench authorized_sync
fi
