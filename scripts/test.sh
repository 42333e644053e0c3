#!/usr/bin/env bash
# Runs every check and test of the project: formatting, clippy, all unit, integration and
# conformance tests, and a build check of the fuzz targets. Installs what it needs first.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says when it started (seconds since the script began), so a slow run shows where
# its time went.
elapsed() { printf '%dm%02ds' $((SECONDS / 60)) $((SECONDS % 60)); }
step() { printf '\n==> %s  [%s]\n' "$*" "$(elapsed)"; }

step "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "Error: cargo is not installed; install Rust (stable) with rustup first" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version
# tikv-jemalloc-sys (the binaries' allocator) builds jemalloc from C source.
for tool in cc make; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "Error: '$tool' is needed to build jemalloc; install it (Debian: apt-get install build-essential)" >&2
        exit 1
    fi
done
# One run from a fresh clone gains nothing from incremental compilation, whose caches about
# double the target folder's size (a CI machine ran out of disk with them on).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "disk space"
# A fresh run writes about 7 GiB under target/ with CARGO_INCREMENTAL=0 (the newest build of
# each artifact, counted on 2026-12-07), plus the Go build cache of the third-party programs.
# Said now, as a warning (the figure is an estimate), rather than only as ENOSPC mid-build.
need_gib=9
target_gib=$(du -s --block-size=1G target 2>/dev/null | cut -f1 || true)
target_gib=${target_gib:-0}
free_gib=$(df --output=avail --block-size=1G . | tail -1 | tr -d ' ')
echo "free: ${free_gib} GiB; target/ holds ${target_gib} GiB; a fresh run needs about ${need_gib} GiB"
if [ $((free_gib + target_gib)) -lt "$need_gib" ]; then
    echo "Warning: only ${free_gib} GiB free and ${target_gib} GiB in target/; the build and tests" \
        "need about ${need_gib} GiB and may fail with 'No space left on device': free some space" >&2
fi

step "third-party test programs, built in the background while Rust compiles"
# The conformance clients, upstream SPIRE v1.13.3 and ghostunnel, kube-apiserver v1.37.2,
# etcd and Prometheus: built (or installed) once and cached in ~/.cache/spire-rs (a warm run takes seconds), in this order
# and one at a time (they share apt's lock), while the Rust steps below compile. Their output
# goes to target/third-party.log and is shown if a build fails.
mkdir -p target
(
    scripts/conformance-deps.sh &&
        scripts/interop-deps.sh >/dev/null &&
        scripts/plugin-deps.sh >/dev/null &&
        scripts/k8s-deps.sh >/dev/null &&
        scripts/ops-deps.sh >/dev/null &&
        scripts/sds-deps.sh >/dev/null &&
        scripts/docker-deps.sh >/dev/null &&
        scripts/cloud-deps.sh >/dev/null
) >target/third-party.log 2>&1 &
third_party=$!
# A failing step below ends the script; the builds do not outlive it.
trap 'pkill -P "$third_party" 2>/dev/null; kill "$third_party" 2>/dev/null; true' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fuzz targets build"
# The workspace's versions, and its target folder, so the dependencies clippy just checked
# are reused (scripts/fuzz.sh runs the targets).
cp Cargo.lock fuzz/Cargo.lock
cargo check --manifest-path fuzz/Cargo.toml --bins --quiet --target-dir target

step "conformance clients, upstream SPIRE v1.13.3, ghostunnel, kube-apiserver v1.37.2, etcd, Prometheus"
if ! wait "$third_party"; then
    cat target/third-party.log >&2
    echo "Error: building the third-party test programs failed (log above)" >&2
    exit 1
fi
trap - EXIT
cat target/third-party.log
# shellcheck source=/dev/null
. target/interop-deps.env
# shellcheck source=/dev/null
. target/plugin-deps.env
# shellcheck source=/dev/null
. target/k8s-deps.env
# shellcheck source=/dev/null
. target/ops-deps.env
# shellcheck source=/dev/null
. target/sds-deps.env
# shellcheck source=/dev/null
. target/docker-deps.env
# shellcheck source=/dev/null
. target/cloud-deps.env

step "databases (PostgreSQL, MariaDB) for the datastore suite"
scripts/test-databases.sh >/dev/null
# shellcheck source=/dev/null
. target/test-databases.env

step "cargo build --bins"
# The end-to-end tests spawn every binary of the workspace; `cargo test` alone builds only the
# binaries of packages that have integration tests (oidc-discovery-provider has none).
cargo build --workspace --bins --locked

step "cargo test"
# --no-fail-fast: every test binary runs even after one fails, so the summary counts them all.
# The status is kept rather than ending the script here, so the summary is printed either way.
test_status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.log || test_status=$?
log=target/test-output.log
# `|| true`: no `test result:` line at all (nothing compiled) is a count of zero, not an exit.
results_lines=$(grep -E '^test result:' "$log" || true)
# Every test binary cargo starts prints a `Running ...` or `Doc-tests ...` line and, unless it
# crashed (a signal, an abort, a panic outside a test), one `test result:` line; a crashed
# binary counts as one failure.
binaries=$(grep -cE '^ +(Running|Doc-tests) ' "$log" || true)
results=$(grep -cE '^test result:' "$log" || true)
crashed=$((binaries > results ? binaries - results : 0))
summary=$(printf '%s\n' "$results_lines" | awk -v crashed="$crashed" 'NF {p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d skipped", p, f + crashed, i}')
failed=$(printf '%s\n' "$results_lines" | awk 'NF {f+=$6} END {print f+0}')
echo
if [ "$results" -lt "$binaries" ]; then
    echo "Error: $((binaries - results)) of $binaries test binaries ended without a 'test result:' line (crashed)" >&2
fi
if [ "$test_status" -ne 0 ]; then
    echo "Error: cargo test exited with status $test_status" >&2
    # cargo's own list of the targets that failed, when it printed one.
    sed -n '/^error: [0-9]* targets\{0,1\} failed:/,/^[^ ]/p' "$log" >&2 || true
fi
echo "$summary ($(elapsed) in all)"
if [ "$test_status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$results" -lt "$binaries" ]; then
    exit 1
fi
