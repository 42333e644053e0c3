#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a given time each and prints, per target, how many
# inputs libFuzzer executed and how many crashes it found, ending with a table.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   scripts/fuzz.sh            # 60 s for each target
#   scripts/fuzz.sh 600        # 10 minutes each (what docs/fuzzing.md reports)
#   scripts/fuzz.sh 30 config  # one target
#   FUZZ_JOBS=2 scripts/fuzz.sh 600   # two targets at a time (one per core)
#
# Works on the stable toolchain: the targets are built with libFuzzer's coverage
# instrumentation (SanitizerCoverage, as `cargo fuzz run -s none` builds them), debug
# assertions and overflow checks, without AddressSanitizer (the code is safe Rust). The
# corpus of each target lives in fuzz/corpus/<target>/ (kept between runs, not committed);
# crashes are written to fuzz/artifacts/<target>/. A crash is fixed where it happened, and its
# input kept as a unit test beside that code, so the test command guards it from then on.
# Optional seed inputs for a target go in fuzz/seeds/<target>/; `config` also starts from the
# repository's example and fixture configs.
#
# Exits non-zero when any target crashed or could not be built.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
case $seconds in
'' | *[!0-9]*)
    echo "Error: SECONDS_PER_TARGET must be a whole number of seconds, not '$seconds' (usage: scripts/fuzz.sh [SECONDS] [TARGET...])" >&2
    exit 2
    ;;
esac
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^spire-fuzz$')
fi
jobs=${FUZZ_JOBS:-1}

command -v cargo >/dev/null || { echo "Error: cargo is not installed" >&2; exit 1; }
command -v c++ >/dev/null || { echo "Error: a C++ compiler is needed to build libFuzzer (apt-get install g++)" >&2; exit 1; }

host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the instrumentation away from build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# Same dependency versions as the workspace.
cp Cargo.lock fuzz/Cargo.lock
echo "==> building ${targets[*]} (release, coverage-instrumented)"
bins=()
for target in "${targets[@]}"; do bins+=(--bin "$target"); done
cargo build --manifest-path fuzz/Cargo.toml --release --target "$host" \
    --target-dir fuzz/target "${bins[@]}"

results=$(mktemp -d)
run_target() {
    local target=$1
    local corpus=fuzz/corpus/$target artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    local seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds+=("fuzz/seeds/$target")
    # Real configs are the best start for the config loader.
    [ "$target" = config ] && seeds+=(conf/server conf/agent crates/spire-server/tests/fixtures crates/spire-agent/tests/fixtures)
    local log=$results/$target.log
    local status=0
    local before
    before=$(find "$artifacts" -type f | wc -l)
    "fuzz/target/$host/release/$target" "$corpus" ${seeds[@]+"${seeds[@]}"} \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || status=$?
    local runs crashes
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    # Only what this run found: older artifacts may be crashes fixed since.
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    echo "$target ${runs:-0} $crashes $status" >"$results/$target.result"
    echo "--- $target: ${runs:-0} executions, $crashes crash files, exit $status (log $log)"
    if [ "$status" -ne 0 ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -n 5 || true
    fi
}

echo "==> fuzzing each target for ${seconds}s, $jobs at a time"
running=0
for target in "${targets[@]}"; do
    run_target "$target" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

failed=0
printf '\n%-20s %15s %8s\n' target executions crashes
for target in "${targets[@]}"; do
    if [ ! -f "$results/$target.result" ]; then
        printf '%-20s %15s %8s\n' "$target" "-" "died"
        failed=1
        continue
    fi
    read -r name runs crashes status <"$results/$target.result"
    printf '%-20s %15s %8s\n' "$name" "$runs" "$crashes"
    if [ "$crashes" -ne 0 ] || [ "$status" -ne 0 ]; then failed=1; fi
done
exit "$failed"
