//! `experimental.ratelimit` (upstream v1.15.2) in a real agent: a workload that calls
//! FetchJWTSVID faster than the limit gets `Unavailable: rate limit exceeded for
//! /SpiffeWorkloadAPI/FetchJWTSVID`, other methods and the agent's own health check are not
//! limited, and the limit is per selector set (this test process is one set).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::process::Command;
use std::time::Duration;

use spire_e2e::workload::{unix_channel, with_security_header};
use spire_e2e::{AgentProcess, ServerProcess, binary};
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use spire_proto::workload::{JwtBundlesRequest, JwtsvidRequest};
use tonic::Code;

#[test]
fn fetch_jwt_svid_over_the_limit_is_unavailable_per_selector_set() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), "");
    let token = server.generate_join_token("spiffe://example.org/node");
    let agent = AgentProcess::start_with_agent_keys(
        tmp.path(),
        &server,
        Some(&token),
        "experimental {\n        ratelimit {\n            fetch_jwt_svid = 2\n        }\n    }",
    );
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut workload =
            SpiffeWorkloadApiClient::new(unix_channel(agent.socket_path.clone()).await.unwrap());
        // Twenty calls back to back: at 2 per second with a burst of 2, most are refused
        // however slow this machine is. The first ones pass the limit and find no entry.
        let mut codes = Vec::new();
        for _ in 0..20 {
            let result = workload
                .fetch_jwtsvid(with_security_header(JwtsvidRequest {
                    audience: vec!["test".to_owned()],
                    spiffe_id: String::new(),
                }))
                .await;
            match result {
                Ok(_) => codes.push(Code::Ok),
                Err(status) => {
                    if status.code() == Code::Unavailable {
                        assert_eq!(
                            status.message(),
                            "rate limit exceeded for /SpiffeWorkloadAPI/FetchJWTSVID"
                        );
                    }
                    codes.push(status.code());
                }
            }
        }
        assert_eq!(codes[..2], [Code::PermissionDenied, Code::PermissionDenied]);
        let refused = codes.iter().filter(|c| **c == Code::Unavailable).count();
        assert!(
            refused >= 10,
            "only {refused} of 20 calls refused: {codes:?}"
        );

        // An unlimited method is still served.
        workload
            .fetch_jwt_bundles(with_security_header(JwtBundlesRequest {}))
            .await
            .expect("FetchJWTBundles has no limit");
    });
    // The agent's own health check (which calls its Workload API) is never limited.
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(10));
    assert!(
        agent
            .log()
            .contains("Workload API/SDS rate limiting enabled"),
        "{}",
        agent.log()
    );
    drop(agent);
    drop(server);
}

/// FetchJWTSVID calls back to back until one is refused (true) or `calls` passed (false).
async fn refused_within(
    workload: &mut SpiffeWorkloadApiClient<tonic::transport::Channel>,
    calls: usize,
) -> bool {
    for _ in 0..calls {
        let result = workload
            .fetch_jwtsvid(with_security_header(JwtsvidRequest {
                audience: vec!["test".to_owned()],
                spiffe_id: String::new(),
            }))
            .await;
        if result.is_err_and(|status| status.code() == Code::Unavailable) {
            return true;
        }
    }
    false
}

#[test]
fn a_config_reload_changes_the_limits_of_a_running_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), "");
    let token = server.generate_join_token("spiffe://example.org/node");
    let admin_dir = tempfile::tempdir().unwrap();
    let admin = admin_dir.path().join("admin.sock");
    let agent = AgentProcess::start_with_agent_keys(
        tmp.path(),
        &server,
        Some(&token),
        &format!(
            "admin_socket_path = \"{}\"\n    experimental {{\n        ratelimit {{\n            fetch_jwt_svid = 2\n        }}\n    }}",
            admin.display()
        ),
    );
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut workload = runtime.block_on(async {
        SpiffeWorkloadApiClient::new(unix_channel(agent.socket_path.clone()).await.unwrap())
    });
    assert!(runtime.block_on(refused_within(&mut workload, 20)));

    // The limit removed from the file: `config reload` applies it, and nothing is refused.
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(
        &agent.config_path,
        text.replace(
            "fetch_jwt_svid = 2\n        }",
            "fetch_jwt_svid = 0\n        }\n        sync_interval = \"2s\"",
        ),
    )
    .unwrap();
    let out = Command::new(binary("spire-agent"))
        .args(["config", "reload", "-output", "json", "-socketPath"])
        .arg(&admin)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        outcome["applied"][0]["key"], "agent.experimental.ratelimit",
        "{shown}"
    );
    assert_eq!(
        outcome["applied"][0]["old_value"], "fetch_jwt_svid=2",
        "{shown}"
    );
    assert_eq!(outcome["applied"][0]["new_value"], "unlimited", "{shown}");
    // experimental.sync_interval, written in the same edit, reaches the running cache
    // manager (manager.rs `a_new_sync_interval_applies_to_the_running_loop` shows the loop
    // then syncs at the new interval).
    assert_eq!(
        (
            &outcome["applied"][1]["key"],
            &outcome["applied"][1]["old_value"],
            &outcome["applied"][1]["new_value"]
        ),
        (
            &serde_json::json!("agent.experimental.sync_interval"),
            &serde_json::json!("5s"),
            &serde_json::json!("2s")
        ),
        "{shown}"
    );
    assert_eq!(outcome["restart_needed"], serde_json::json!([]), "{shown}");
    assert!(!runtime.block_on(refused_within(&mut workload, 20)));
    drop(agent);
    drop(server);
}
