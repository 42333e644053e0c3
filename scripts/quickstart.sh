#!/usr/bin/env bash
# The quickstart: builds spire-server and spire-agent, starts a server from
# conf/server/server.conf (SQLite, disk key manager, join tokens) in a temporary directory,
# and walks the getting-started flow an operator knows from upstream SPIRE: health check,
# join token, workload entry, entry listing, trust bundle, an X509-SVID minted over the admin
# socket. Stops the server at the end.
#
# The agent half (attest with the token, serve the Workload API, fetch the SVID as a
# workload) arrives with the agent issue; until then spire-agent is a placeholder.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
bin="$PWD/target/release"
work=$(mktemp -d)
socket="$work/api.sock"
cleanup() {
    if [[ -n "${server_pid:-}" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The example config as shipped, with the socket moved into the temporary directory.
sed "s|/tmp/spire-server/private/api.sock|$socket|" conf/server/server.conf > "$work/server.conf"

step() { printf '\n$ %s\n' "$*"; }

echo "Starting spire-server in $work (log: $work/server.log)"
(cd "$work" && exec "$bin/spire-server" run -config server.conf) > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    "$bin/spire-server" healthcheck -socketPath "$socket" >/dev/null 2>&1 && break
    sleep 0.1
done

run() { step "spire-server $*"; "$bin/spire-server" "$@" -socketPath "$socket"; }

run healthcheck
run token generate -spiffeID spiffe://example.org/myagent
run entry create -parentID spiffe://example.org/myagent \
    -spiffeID spiffe://example.org/myservice -selector "unix:uid:$(id -u)"
run entry show
run bundle show
run x509 mint -spiffeID spiffe://example.org/myservice -ttl 1h | head -n 3
echo "..."

echo
echo "Quickstart done: the server issued a join token, stored an entry, and minted an X509-SVID."
echo "(spire-agent and the Workload API come with the agent issue.)"
