//! Upstream's `force-rotation-jwt-authority` suite with our server and agent: a workload holds
//! a JWT-SVID, the JWT authority is prepared, activated and tainted, and the agent drops the
//! cached token at its next sync, so the workload's next fetch is signed by the new key
//! (without the taint it would get the cached one until its half-life, minutes later).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use spire_e2e::{AgentProcess, ServerProcess, current_uid};

const TIMEOUT: Duration = Duration::from_secs(180);
/// How long the new token may take: several 5 s syncs, and well under the 150 s half-life of
/// the default 5 min JWT-SVID, after which the token would be minted again without a taint.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(90);

/// The `kid` of the JWT-SVID `api fetch jwt` printed.
fn fetched_kid(agent: &AgentProcess) -> String {
    let out = agent.cli_eventually(&["api", "fetch", "jwt", "-audience", "test"], TIMEOUT);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("eyJ") && w.matches('.').count() == 2)
        .unwrap_or_else(|| panic!("no token in {out}"));
    spire_core::jwt::parse_jwt_svid_insecure(token)
        .unwrap_or_else(|e| panic!("unparsable token: {e}"))
        .key_id
}

#[test]
fn tainted_jwt_authority_makes_the_agent_mint_new_jwt_svids() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    let alias = "spiffe://example.org/node";
    let token = server.generate_join_token(alias);
    let agent = AgentProcess::start(&agent_dir, &server, Some(&token));
    server.create_uid_entry(alias, "spiffe://example.org/workload", current_uid(), &[]);

    let old_kid = fetched_kid(&agent);
    assert_eq!(fetched_kid(&agent), old_kid, "cached while fresh");

    let prepared = server.cli_json(&["localauthority", "jwt", "prepare"]);
    let new_kid = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.cli_json(&[
        "localauthority",
        "jwt",
        "activate",
        "-authorityID",
        &new_kid,
    ]);
    server.cli_json(&["localauthority", "jwt", "taint", "-authorityID", &old_kid]);

    let start = Instant::now();
    loop {
        let kid = fetched_kid(&agent);
        if kid == new_kid {
            break;
        }
        assert!(
            start.elapsed() < ROTATION_TIMEOUT,
            "still {kid} after {ROTATION_TIMEOUT:?}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
