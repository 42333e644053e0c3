#!/usr/bin/env bash
# Server memory at 100,000 entries, ours and upstream v1.13.3's side by side (issue 17):
# 100k entries over 1,000 parent agents, 2 selectors and 1 DNS name each, created through our
# server's admin socket (the CLI's batches of 50); VmRSS after creating them, then after a
# restart that loads them; then upstream's server started on a copy of the same SQLite
# datastore (the on-disk state is the same), VmRSS after it loaded them. Prints a table.
#
# Usage: scripts/bench-memory.sh          (builds the release spire-server first)
#        SPIRE_BENCH_SERVER_BIN=path scripts/bench-memory.sh
#        SPIRE_BENCH_ENTRIES=10000 scripts/bench-memory.sh   (a smaller run)
#        SPIRE_BENCH_UPSTREAM_CREATE=1 scripts/bench-memory.sh   (also creates the entries
#            through upstream's server, for its after-create column; slow: its creation rate
#            is far below ours)
# Needs target/interop-deps.env (scripts/interop-deps.sh) for upstream's binary, and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

entries=${SPIRE_BENCH_ENTRIES:-100000}
settle=${SPIRE_BENCH_SETTLE_SECONDS:-60}
if [[ -z "${SPIRE_BENCH_SERVER_BIN:-}" ]]; then
    echo "building the release spire-server" >&2
    nice cargo build --release -p spire-server --bin spire-server >&2
    SPIRE_BENCH_SERVER_BIN=target/release/spire-server
fi
ours=$(realpath "$SPIRE_BENCH_SERVER_BIN")
if [[ ! -f target/interop-deps.env ]]; then
    echo "Error: target/interop-deps.env is missing; run scripts/interop-deps.sh first" >&2
    exit 1
fi
# shellcheck source=/dev/null
. target/interop-deps.env
upstream=$SPIRE_UPSTREAM_SERVER

work=$(mktemp -d)
trap 'pkill -f "$work/" 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

config() { # $1: directory holding data/ and api.sock
    cat <<EOF
server {
  bind_address = "127.0.0.1"
  bind_port = "$(free_port)"
  socket_path = "$1/api.sock"
  trust_domain = "example.org"
  data_dir = "$1/data"
  log_level = "WARN"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "$1/data/datastore.sqlite3"
    }
  }
  KeyManager "memory" { plugin_data {} }
  NodeAttestor "join_token" { plugin_data {} }
}
EOF
}

# Starts $1 on directory $2, waits until its admin socket answers; prints the PID.
start() {
    "$1" run -config "$2/server.conf" >"$2/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 600); do
        if "$1" entry count -socketPath "$2/api.sock" >/dev/null 2>&1; then
            echo "$pid"
            return
        fi
        sleep 0.5
    done
    echo "Error: the server in $2 did not answer within 300 s; its log: $2/server.log" >&2
    cat "$2/server.log" >&2
    exit 1
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

mkdir -p "$work/ours/data" "$work/upstream/data" "$work/upstream-create/data"
config "$work/ours" >"$work/ours/server.conf"
config "$work/upstream" >"$work/upstream/server.conf"
config "$work/upstream-create" >"$work/upstream-create/server.conf"

python3 - "$work" "$entries" <<'EOF'
import json, sys
work, total = sys.argv[1], int(sys.argv[2])
for part, start in enumerate(range(0, total, 10000)):
    entries = [{
        "spiffe_id": f"spiffe://example.org/workload/{i}",
        "parent_id": f"spiffe://example.org/spire/agent/x/{i % 1000}",
        "selectors": [{"type": "unix", "value": f"uid:{i}"}, {"type": "unix", "value": f"gid:{i % 7}"}],
        "dns_names": [f"w{i}.example.org"],
    } for i in range(start, min(start + 10000, total))]
    with open(f"{work}/entries{part:03}.json", "w") as f:
        json.dump({"entries": entries}, f)
EOF

echo "ours: creating $entries entries" >&2
pid=$(start "$ours" "$work/ours")
idle=$(rss_mib "$pid")
for file in "$work"/entries*.json; do
    "$ours" entry create -socketPath "$work/ours/api.sock" -data "$file" >/dev/null
done
sleep "$settle"
created=$(rss_mib "$pid")
stop "$pid"
cp "$work"/ours/data/datastore.sqlite3* "$work/upstream/data/"

echo "ours: restarting on them" >&2
pid=$(start "$ours" "$work/ours")
sleep "$settle"
restarted=$(rss_mib "$pid")
restarted_peak=$(hwm_mib "$pid")
stop "$pid"

echo "upstream: starting on a copy of the same datastore" >&2
pid=$(start "$upstream" "$work/upstream")
sleep "$settle"
up_restarted=$(rss_mib "$pid")
up_peak=$(hwm_mib "$pid")
stop "$pid"

up_created="not measured"
if [[ -n "${SPIRE_BENCH_UPSTREAM_CREATE:-}" ]]; then
    echo "upstream: creating $entries entries" >&2
    pid=$(start "$upstream" "$work/upstream-create")
    for file in "$work"/entries*.json; do
        "$upstream" entry create -socketPath "$work/upstream-create/api.sock" -data "$file" >/dev/null
    done
    sleep "$settle"
    up_created=$(rss_mib "$pid")
    stop "$pid"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "| spire-server VmRSS (MiB), $entries entries | upstream v1.13.3 | ours | ours / upstream |"
echo "|---|---:|---:|---:|"
echo "| idle, empty datastore (ours) | | $idle | |"
created_ratio=""
[[ "$up_created" =~ ^[0-9]+$ ]] && created_ratio=$(ratio "$created" "$up_created")
echo "| after creating them ($settle s later) | $up_created | $created | $created_ratio |"
echo "| after a restart that loads them ($settle s later) | $up_restarted | $restarted | $(ratio "$restarted" "$up_restarted") |"
echo "| peak (VmHWM) of that restart | $up_peak | $restarted_peak | $(ratio "$restarted_peak" "$up_peak") |"
