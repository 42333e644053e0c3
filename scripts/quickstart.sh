#!/usr/bin/env bash
# The quickstart: builds spire-server and spire-agent, then (once both exist) starts a server
# and an agent on a temporary directory with SQLite, registers the current user, fetches its
# X509-SVID, prints it (SPIFFE ID, validity, chain) and stops both.
#
# Today only the foundation exists (SPIFFE core types and the wire-identical protos); the
# server and agent binaries are still placeholders, so this builds them and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
echo
echo "Built target/release/spire-server and target/release/spire-agent."
echo "The server and agent are not implemented yet (issues 3 and 4): once they are, this script"
echo "runs the getting-started flow end to end:"
echo "  spire-server run -config conf/server/server.conf"
echo "  spire-server token generate -spiffeID spiffe://example.org/myagent"
echo "  spire-agent run -config conf/agent/agent.conf -joinToken <token>"
echo "  spire-server entry create -parentID spiffe://example.org/myagent \\"
echo "      -spiffeID spiffe://example.org/myservice -selector unix:uid:$(id -u)"
echo "  spire-agent api fetch x509"
