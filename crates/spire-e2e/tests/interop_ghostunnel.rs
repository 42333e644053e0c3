//! ghostunnel v1.8.4, a real mTLS proxy built on go-spiffe, takes its identities from our
//! agents' Workload API (`--use-workload-api-addr`) and authorises peers by SPIFFE ID:
//!
//! - a client-side ghostunnel reaches a server-side one in front of an echo backend, each
//!   checking the other's ID (`--verify-uri`, `--allow-uri`), and bytes pass both ways;
//! - a third ghostunnel whose SVID carries an ID the server does not allow is refused;
//! - after every SVID in play has rotated and the first ones have expired, new connections
//!   still succeed, so ghostunnel picked the rotated SVIDs and bundle up from the stream.
//!
//! All ghostunnels run as our uid, so each takes its identity from its own agent (one per
//! "node", each with its own join token and alias) rather than from selectors.
//!
//! The binary comes from `scripts/interop-deps.sh` (the test command runs it), which names it
//! in `GHOSTUNNEL`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use spire_e2e::ghostunnel::{Ghostunnel, echo_backend, round_trip, round_trip_eventually};
use spire_e2e::workload::Workload;
use spire_e2e::{AgentProcess, ServerProcess, current_uid};
use time::OffsetDateTime;

/// Short-lived workload SVIDs, so they rotate and expire within the test.
const WORKLOAD_TTL: &str = "20";

/// Attestation, a sync and ghostunnel's first fetch, with a wide margin for two busy cores.
const READY_WAIT: Duration = Duration::from_secs(60);

const SERVER_ID: &str = "spiffe://example.org/ghostunnel/server";
const CLIENT_ID: &str = "spiffe://example.org/ghostunnel/client";
const INTRUDER_ID: &str = "spiffe://example.org/ghostunnel/intruder";

/// An agent of its own "node" with a workload entry giving our uid `spiffe_id` there.
fn node_agent(dir: &Path, server: &ServerProcess, node: &str, spiffe_id: &str) -> AgentProcess {
    let alias = format!("spiffe://example.org/{node}");
    let token = server.generate_join_token(&alias);
    server.create_uid_entry(
        &alias,
        spiffe_id,
        current_uid(),
        &["-x509SVIDTTL", WORKLOAD_TTL],
    );
    let agent_dir = dir.join(node);
    std::fs::create_dir(&agent_dir).unwrap();
    let agent = AgentProcess::start(&agent_dir, server, Some(&token));
    let x509 = agent.cli_eventually(&["api", "fetch", "x509"], READY_WAIT);
    assert!(x509.contains(spiffe_id), "{x509}");
    agent
}

#[test]
fn ghostunnel_pair_on_our_workload_api_authorises_by_spiffe_id_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    let server_agent = node_agent(dir.path(), &server, "node-server", SERVER_ID);
    let client_agent = node_agent(dir.path(), &server, "node-client", CLIENT_ID);
    let intruder_agent = node_agent(dir.path(), &server, "node-intruder", INTRUDER_ID);

    let backend = echo_backend();
    let tunnel_server = Ghostunnel::start(
        dir.path(),
        "ghostunnel-server",
        "server",
        backend,
        &server_agent.socket_path,
        &[&format!("--allow-uri={CLIENT_ID}")],
    );
    let verify_server = format!("--verify-uri={SERVER_ID}");
    let tunnel_client = Ghostunnel::start(
        dir.path(),
        "ghostunnel-client",
        "client",
        tunnel_server.port,
        &client_agent.socket_path,
        &[&verify_server],
    );
    let tunnel_intruder = Ghostunnel::start(
        dir.path(),
        "ghostunnel-intruder",
        "client",
        tunnel_server.port,
        &intruder_agent.socket_path,
        &[&verify_server],
    );
    let all = [&tunnel_server, &tunnel_client, &tunnel_intruder];

    // The allowed client's bytes come back through both tunnels.
    let echoed = round_trip_eventually(tunnel_client.port, "hello through mTLS", READY_WAIT, &all);
    assert_eq!(echoed, "hello through mTLS");

    // The intruder holds a valid SVID of the trust domain, but not an allowed ID: refused.
    // (Its ghostunnel has had as long as the allowed one to fetch its SVID, and keeps being
    // refused while it retries.)
    let refused_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < refused_until {
        match round_trip(tunnel_intruder.port, "let me in") {
            Ok(echoed) => panic!(
                "the server-side ghostunnel let {INTRUDER_ID} through: {echoed:?}\n{}",
                tunnel_server.log()
            ),
            // A refusal is a connection the intruder's ghostunnel accepted, then closed.
            Err(e) if e.starts_with("connect:") => panic!(
                "the intruder's ghostunnel is not listening ({e}):\n{}",
                tunnel_intruder.log()
            ),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Refused for its ID (not for a missing or untrusted certificate): the handshake got as
    // far as the server's authorisation check.
    assert!(
        tunnel_server
            .log()
            .contains("unauthorized: invalid principal, or principal not allowed"),
        "the server-side ghostunnel did not refuse the intruder by its ID:\n{}",
        tunnel_server.log()
    );

    // Wait until the SVIDs both tunnels started with have expired: a connection that still
    // works proves each side took its rotated SVID from the Workload API stream.
    let expiry = [&server_agent, &client_agent]
        .iter()
        .map(|agent| {
            let (_, svids) = Workload::new(&agent.socket_path).open_with(1, READY_WAIT);
            svids[0].not_after
        })
        .max()
        .unwrap();
    while OffsetDateTime::now_utc() < expiry + time::Duration::seconds(2) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let echoed = round_trip_eventually(
        tunnel_client.port,
        "after rotation",
        Duration::from_secs(20),
        &all,
    );
    assert_eq!(echoed, "after rotation");
}
