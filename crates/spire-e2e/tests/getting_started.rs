//! Upstream's getting-started flow with both real binaries: server, join token, agent,
//! entry for the current uid, `api fetch x509 -write`, `openssl verify`, and an agent restart
//! that needs no second attestation.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;
use std::time::Duration;

use spire_e2e::{AgentProcess, ServerProcess};

fn current_uid() -> String {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_workload_gets_its_identity_and_keeps_it_across_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let token = server.cli_ok(&[
        "token",
        "generate",
        "-spiffeID",
        "spiffe://example.org/myagent",
    ]);
    let token = token.trim().strip_prefix("Token: ").unwrap().to_owned();

    let mut agent = AgentProcess::start(dir.path(), &server, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(30));

    // No entry yet: the workload is refused, as upstream does.
    let refused = agent.cli(&["api", "fetch", "x509"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no identity issued"),
        "{refused:?}"
    );

    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/myagent",
        "-spiffeID",
        "spiffe://example.org/myservice",
        "-selector",
        &format!("unix:uid:{}", current_uid()),
    ]);

    let out_dir = dir.path().join("svid");
    std::fs::create_dir(&out_dir).unwrap();
    let fetched = agent.cli_eventually(
        &["api", "fetch", "x509", "-write", out_dir.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(
        fetched.contains("spiffe://example.org/myservice"),
        "{fetched}"
    );

    // openssl agrees the SVID chains to the bundle, and its URI SAN is the entry's.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(out_dir.join("bundle.0.pem"))
        .arg(out_dir.join("svid.0.pem"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let pem = std::fs::read(out_dir.join("svid.0.pem")).unwrap();
    let chain = spire_core::pem::decode_certificates(&pem).unwrap();
    let id = spire_core::x509::certificate_spiffe_id(&chain[0]).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/myservice");
    assert!(out_dir.join("svid.0.key").exists());

    // Restart without a join token (it was single-use): the disk key manager and the SVID in
    // data_dir let the agent carry on without attesting again.
    agent.stop();
    let agent = AgentProcess::start_with_config(
        dir.path(),
        &agent.config_path.clone(),
        agent.socket_path.clone(),
        None,
    );
    let again = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(30));
    assert!(again.contains("spiffe://example.org/myservice"), "{again}");
    assert!(
        agent.log().contains("no attestation needed"),
        "{}",
        agent.log()
    );
}
