#!/usr/bin/env bash
# Runs every check and test of the project: formatting, clippy, all unit, integration and
# conformance tests, and a build check of the fuzz targets. Installs what it needs first.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "Error: cargo is not installed; install Rust (stable) with rustup first" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fuzz targets build"
cargo check --manifest-path fuzz/Cargo.toml --bins --quiet

step "conformance clients (py-spiffe, go-spiffe)"
scripts/conformance-deps.sh

step "databases (PostgreSQL, MariaDB) for the datastore suite"
scripts/test-databases.sh >/dev/null
# shellcheck source=/dev/null
. target/test-databases.env

step "cargo test"
cargo test --workspace --locked 2>&1 | tee target/test-output.log
summary=$(grep -E '^test result:' target/test-output.log | awk '{p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d skipped", p, f, i}')
echo
echo "$summary"
