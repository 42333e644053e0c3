#!/usr/bin/env bash
# Runs the spire-server and spire-agent benchmarks in the release (bench) profile and prints their markdown
# tables to stdout (progress goes to stderr). Benchmarks are not tests: nothing here runs
# inside `cargo test`. docs/benchmarks.md records the numbers and the machine they came from.
#
# Usage: scripts/bench.sh            full run (about 2 minutes per engine after the build)
#        SPIRE_BENCH_QUICK=1 scripts/bench.sh   smoke run at a tenth of the sizes
#        SPIRE_BENCH_DATABASE=postgres scripts/bench.sh   one engine only (sqlite3|postgres|mysql)
#
# server_api runs once per SQL engine: SQLite always, PostgreSQL when SPIRE_TEST_POSTGRES is
# set, MySQL/MariaDB when SPIRE_TEST_MYSQL is set. When neither is set and
# target/test-databases.env exists (written by scripts/test-databases.sh, which starts both
# servers on loopback), it is sourced first. Each pass works on fresh databases it creates
# and drops (the `spire` user needs CREATE DATABASE, which test-databases.sh grants).
#
# The memory table needs the release `spire-server` binary; this script builds it
# (`cargo build --release -p spire-server --bin spire-server`).
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

if [[ -z "${SPIRE_TEST_POSTGRES:-}" && -z "${SPIRE_TEST_MYSQL:-}" && -f target/test-databases.env ]]; then
    # shellcheck source=/dev/null
    . target/test-databases.env
fi
if [[ -n "${SPIRE_BENCH_DATABASE:-}" ]]; then
    engines=("$SPIRE_BENCH_DATABASE")
else
    engines=(sqlite3)
    [[ -n "${SPIRE_TEST_POSTGRES:-}" ]] && engines+=(postgres)
    [[ -n "${SPIRE_TEST_MYSQL:-}" ]] && engines+=(mysql)
fi
echo "- engines: ${engines[*]}"
echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "building the release spire-server and spire-agent (memory table, agent bench)" >&2
nice cargo build --release --bins >&2

for engine in "${engines[@]}"; do
    echo "## server_api on $engine (SPIRE_BENCH_DATABASE=$engine cargo bench -p spire-server --bench server_api)"
    echo
    SPIRE_BENCH_DATABASE=$engine nice cargo bench -p spire-server --bench server_api
    echo
    echo "- load average after the $engine pass: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
done

if [[ -f crates/spire-server/benches/authorized_sync.rs ]]; then
    echo
    echo "## authorized_sync (cargo bench -p spire-server --bench authorized_sync)"
    echo
    nice cargo bench -p spire-server --bench authorized_sync
fi

echo
echo "## push_fanout (cargo bench -p spire-server --bench push_fanout)"
echo
nice cargo bench -p spire-server --bench push_fanout

echo
echo "## agent_workload (cargo bench -p spire-e2e --bench agent_workload)"
echo
nice cargo bench -p spire-e2e --bench agent_workload

echo
echo "## agent_scale (cargo bench -p spire-e2e --bench agent_scale)"
echo
nice cargo bench -p spire-e2e --bench agent_scale
