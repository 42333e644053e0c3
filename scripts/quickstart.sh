#!/usr/bin/env bash
# The quickstart: builds spire-server and spire-agent, then walks upstream SPIRE's
# getting-started flow in a temporary directory: a server from conf/server/server.conf
# (SQLite, disk key manager, join tokens), a join token, an agent from conf/agent/agent.conf
# attesting with it, an entry for the current user's uid, and the workload (this script)
# fetching its X509-SVID over the Workload API. Prints the SVID and stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
bin="$PWD/target/release"
work=$(mktemp -d)
socket="$work/api.sock"
agent_socket="$work/agent.sock"
cleanup() {
    for pid in "${agent_pid:-}" "${server_pid:-}"; do
        if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

# The example configs as shipped, with the sockets moved into the temporary directory.
sed "s|/tmp/spire-server/private/api.sock|$socket|" conf/server/server.conf > "$work/server.conf"
sed "s|/tmp/spire-agent/public/api.sock|$agent_socket|" conf/agent/agent.conf > "$work/agent.conf"

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
step "spire-server token generate -spiffeID spiffe://example.org/myagent"
token=$("$bin/spire-server" token generate -socketPath "$socket" -spiffeID spiffe://example.org/myagent | awk '{print $2}')
echo "Token: $token"

echo
echo "Starting spire-agent with the join token (log: $work/agent.log)"
(cd "$work" && exec "$bin/spire-agent" run -config agent.conf -joinToken "$token") > "$work/agent.log" 2>&1 &
agent_pid=$!

run entry create -parentID spiffe://example.org/myagent \
    -spiffeID spiffe://example.org/myservice -selector "unix:uid:$(id -u)"

step "spire-agent api fetch x509 -write $work"
for _ in $(seq 1 100); do
    if "$bin/spire-agent" api fetch x509 -socketPath "$agent_socket" -write "$work" 2>/dev/null; then
        fetched=1
        break
    fi
    sleep 0.2
done
if [[ -z "${fetched:-}" ]]; then
    echo "Error: the workload did not get an X509-SVID; agent log:" >&2
    cat "$work/agent.log" >&2
    exit 1
fi

step "openssl x509 -in svid.0.pem -noout -subject -ext subjectAltName -dates"
openssl x509 -in "$work/svid.0.pem" -noout -subject -ext subjectAltName -dates
step "openssl verify -CAfile bundle.0.pem svid.0.pem"
openssl verify -CAfile "$work/bundle.0.pem" "$work/svid.0.pem"

echo
echo "Quickstart done: the agent attested with a join token and the workload (uid $(id -u))"
echo "received spiffe://example.org/myservice over the Workload API. Stopping both."
