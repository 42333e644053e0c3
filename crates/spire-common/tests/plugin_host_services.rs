//! Host services through go-plugin's broker, with a real spire-plugin-sdk v1.4.4 plugin
//! (crates/spire-e2e/go-plugins/hostsvcattestor, built by scripts/plugin-deps.sh): the plugin
//! brokers exactly the services `Init` lists, reaches them on the brokered connection, and a
//! service the host does not offer is refused to it the way upstream's host refuses it
//! (`BrokerClient` answers false). The server's AgentStore and IdentityProvider are tested
//! end to end in spire-e2e (tests/external_plugins_hostservices.rs).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};

use spire_common::plugin_host::hostservice::metrics::MetricsHostService;
use spire_common::plugin_host::{ExternalPlugin, HostServices, LoadedPlugin, PluginData};
use spire_common::telemetry::{Metrics, TelemetryConfig};
use spire_proto::spire::plugin::server::nodeattestor::v1 as server_na;

const SERVER_NA: &str = "spire.plugin.server.nodeattestor.v1.NodeAttestor";

fn plugin_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("SPIRE_TEST_PLUGINS").unwrap_or_else(|| {
        panic!(
            "SPIRE_TEST_PLUGINS is not set: run scripts/plugin-deps.sh (needs Go and the Go \
             module proxy) and `. target/plugin-deps.env`"
        )
    });
    let path = PathBuf::from(dir).join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/plugin-deps.sh",
        path.display()
    );
    path
}

fn spec(cmd: &Path) -> ExternalPlugin {
    ExternalPlugin {
        kind: "NodeAttestor".into(),
        name: "hostsvc".into(),
        cmd: cmd.to_path_buf(),
        args: Vec::new(),
        checksum: None,
        data: PluginData::Fixed("secret = \"s3cret\"\n".into()),
    }
}

fn hmac_hex(secret: &[u8], data: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    hex::encode(aws_lc_rs::hmac::sign(&key, data).as_ref())
}

/// Runs one attestation of `node` against the plugin and returns its selector values (the
/// plugin's report of what the host services answered).
async fn attest(plugin: &LoadedPlugin, node: &str) -> Vec<String> {
    let mut client = server_na::node_attestor_client::NodeAttestorClient::new(plugin.channel());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(server_na::AttestRequest {
        request: Some(server_na::attest_request::Request::Payload(
            format!(r#"{{"node":"{node}"}}"#).into_bytes(),
        )),
    })
    .await
    .unwrap();
    let mut responses = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("Attest opens")
        .into_inner();
    let challenge = match responses.message().await.unwrap().unwrap().response {
        Some(server_na::attest_response::Response::Challenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };
    tx.send(server_na::AttestRequest {
        request: Some(server_na::attest_request::Request::ChallengeResponse(
            hmac_hex(b"s3cret", &challenge).into_bytes(),
        )),
    })
    .await
    .unwrap();
    match responses.message().await.unwrap().unwrap().response {
        Some(server_na::attest_response::Response::AgentAttributes(a)) => a.selector_values,
        other => panic!("expected agent attributes, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plugin_reaches_the_metrics_host_service_and_is_refused_services_not_offered() {
    // What the agent offers: Metrics only.
    let metrics = Metrics::new(TelemetryConfig {
        in_mem: true,
        prefix: "spire_agent".into(),
        ..TelemetryConfig::default()
    })
    .unwrap();
    let services = HostServices::none().with(MetricsHostService::new(metrics.clone()).server());
    assert_eq!(
        services.names(),
        ["spire.hostservice.common.metrics.v1.Metrics"]
    );
    let plugin = LoadedPlugin::load(
        &spec(&plugin_binary("hostsvcattestor")),
        SERVER_NA,
        "example.org",
        &services,
    )
    .await
    .expect("the plugin loads and brokers its host services");

    let selectors = attest(&plugin, "n1").await;
    assert_eq!(
        selectors,
        vec![
            "brokered:agentstore:false",
            "brokered:identityprovider:false",
            "brokered:metrics:true",
            "metrics:ok",
        ]
    );
    // The in-memory sink dumps finished one-second intervals: start new ones until the
    // plugin's shows up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut dump = String::new();
    while std::time::Instant::now() < deadline && !dump.contains("hostsvc.attest") {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        metrics.incr_counter(&["tick"], &[], 1);
        dump = metrics.inmem_dump().unwrap().join("\n");
    }
    assert!(
        // go-metrics' in-memory sink appends label values to the name.
        dump.contains("'spire_agent.hostsvc.attest.n1': Count: 1 Sum: 1.000"),
        "the plugin's counter reaches our telemetry:\n{dump}"
    );
    plugin.shutdown().await;
}

#[tokio::test]
async fn without_host_services_a_plugin_brokers_nothing_and_still_loads() {
    let plugin = LoadedPlugin::load(
        &spec(&plugin_binary("hostsvcattestor")),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .expect("the plugin loads");
    assert_eq!(
        attest(&plugin, "n2").await,
        vec![
            "brokered:agentstore:false",
            "brokered:identityprovider:false",
            "brokered:metrics:false",
        ]
    );
    plugin.shutdown().await;
}
