//! A config reload (beyond upstream) that reaches the agent before it has attested: the
//! cache manager does not exist yet, so a reloaded `experimental.sync_interval` is handed to
//! it when it is created instead of being lost.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spire_agent::config::{self, Overrides};
use spire_agent::logging::LogLevelHandle;
use spire_agent::manager::{Manager, ManagerError, ManagerOptions, ServerApi, bundle_from_proto};
use spire_agent::reload::Reloader;
use spire_agent::workload::ratelimit::WorkloadRateLimiter;
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::types;

/// The manager here is never run, so it never calls its server: every call fails loudly.
struct NeverCalled;

fn never<T>() -> Result<T, ManagerError> {
    Err(ManagerError::Internal(
        "this test never runs the manager, so it never calls the server".into(),
    ))
}

#[async_trait]
impl ServerApi for NeverCalled {
    async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError> {
        never()
    }
    async fn new_x509_svids(
        &self,
        _csrs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Vec<Vec<u8>>, ManagerError>>, ManagerError> {
        never()
    }
    async fn bundle(&self) -> Result<types::Bundle, ManagerError> {
        never()
    }
    async fn federated_bundle(
        &self,
        _trust_domain: &str,
    ) -> Result<Option<types::Bundle>, ManagerError> {
        never()
    }
    async fn new_jwt_svid(
        &self,
        _entry_id: &str,
        _audience: &[String],
    ) -> Result<String, ManagerError> {
        never()
    }
    async fn post_status(&self, _agent_version: &str) -> Result<(), ManagerError> {
        never()
    }
}

const AGENT: &str = r#"
agent {
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    insecure_bootstrap = true
    experimental { sync_interval = "5s" }
}
plugins {
    NodeAttestor "join_token" { plugin_data {} }
    KeyManager "memory" { plugin_data {} }
    WorkloadAttestor "unix" { plugin_data {} }
}
"#;

#[tokio::test]
async fn a_sync_interval_reloaded_before_attestation_reaches_the_manager() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.conf");
    std::fs::write(&path, AGENT).unwrap();
    let overrides = Overrides {
        config_path: Some(path.clone()),
        ..Overrides::default()
    };
    let config = config::load_and_resolve(&overrides).unwrap();
    let limiter = Arc::new(WorkloadRateLimiter::new(&config.ratelimit));
    let reloader = Reloader::new(overrides, config, LogLevelHandle::default(), limiter).unwrap();

    // Reloaded while the agent is still attesting: applied, not silently dropped.
    std::fs::write(
        &path,
        AGENT.replace("sync_interval = \"5s\"", "sync_interval = \"2s\""),
    )
    .unwrap();
    let outcome = reloader.reload().await.unwrap();
    let applied: Vec<(&str, &str, &str)> = outcome
        .applied
        .iter()
        .map(|c| (c.key.as_str(), c.old_value.as_str(), c.new_value.as_str()))
        .collect();
    assert_eq!(applied, [("agent.experimental.sync_interval", "5s", "2s")]);
    assert!(outcome.restart_needed.is_empty());

    // The manager, created afterwards from the start-up config, takes the reloaded value.
    let bundle = bundle_from_proto(&types::Bundle {
        trust_domain: "example.org".into(),
        ..Default::default()
    })
    .unwrap();
    let manager = Manager::new(
        Arc::new(NeverCalled),
        TrustDomain::new("example.org").unwrap(),
        bundle,
        ManagerOptions {
            sync_interval: Duration::from_secs(5),
            ..ManagerOptions::default()
        },
    );
    reloader.attach_manager(Arc::clone(&manager)).await;
    assert_eq!(manager.sync_interval(), Duration::from_secs(2));

    // Once attached, later reloads change it directly.
    std::fs::write(
        &path,
        AGENT.replace("sync_interval = \"5s\"", "sync_interval = \"3s\""),
    )
    .unwrap();
    reloader.reload().await.unwrap();
    assert_eq!(manager.sync_interval(), Duration::from_secs(3));
}
