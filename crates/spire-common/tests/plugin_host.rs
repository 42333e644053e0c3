//! The external plugin host against real plugin binaries built with spire-plugin-sdk v1.4.4
//! (crates/spire-e2e/go-plugins, built by scripts/plugin-deps.sh): a full load (handshake,
//! Init, Configure with the trust domain and HCL data) and a challenge round through the
//! plugin's own gRPC service, then every way a load must fail: a wrong checksum, a binary
//! that is not a plugin, a plugin of the wrong type, one that exits during Configure and one
//! that hangs. Each failure names the plugin and leaves no process behind.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spire_common::plugin_host::{
    ExternalPlugin, HostServices, LoadTimeouts, LoadedPlugin, PluginData,
};
use spire_proto::spire::plugin::server::nodeattestor::v1 as server_na;

const SERVER_NA: &str = "spire.plugin.server.nodeattestor.v1.NodeAttestor";

/// The folder of the built test plugins; a missing one is a loud failure saying how to build.
fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("SPIRE_TEST_PLUGINS").unwrap_or_else(|| {
        panic!(
            "SPIRE_TEST_PLUGINS is not set: run scripts/plugin-deps.sh (needs Go and the Go \
             module proxy) and `. target/plugin-deps.env`"
        )
    });
    PathBuf::from(dir)
}

/// A private name for a test plugin, so the check for leftover processes sees only ours: a
/// hard link (a copy could be "text file busy" when another test forks while it is written).
fn copy_plugin(name: &str, dir: &Path) -> PathBuf {
    let from = plugins_dir().join(name);
    let to = dir.join(name);
    std::fs::hard_link(&from, &to).unwrap_or_else(|e| panic!("link {}: {e}", from.display()));
    to
}

fn spec(kind: &str, cmd: &Path, data: &str) -> ExternalPlugin {
    ExternalPlugin {
        kind: kind.into(),
        name: "test".into(),
        cmd: cmd.to_path_buf(),
        args: Vec::new(),
        checksum: None,
        data: PluginData::Fixed(data.into()),
    }
}

/// Processes running `binary`, waiting up to a deadline for them to be gone.
async fn assert_no_process_runs(binary: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe == binary)
                    && std::fs::read_to_string(e.path().join("stat"))
                        .is_ok_and(|s| !s.contains(") Z "))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if running.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of {} still run: {running:?}",
            binary.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hmac_hex(secret: &[u8], data: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    hex::encode(aws_lc_rs::hmac::sign(&key, data).as_ref())
}

#[tokio::test]
async fn a_plugin_is_configured_with_the_trust_domain_and_answers_its_service() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("challengeattestor-server", dir.path());
    let plugin = LoadedPlugin::load(
        &spec(
            "NodeAttestor",
            &bin,
            r#"{"secret": "s3cret", "group": "blue"}"#,
        ),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .expect("the plugin loads");
    assert!(plugin.services().iter().any(|s| s == SERVER_NA));

    let mut client = server_na::node_attestor_client::NodeAttestorClient::new(plugin.channel());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(server_na::AttestRequest {
        request: Some(server_na::attest_request::Request::Payload(
            br#"{"node":"n1"}"#.to_vec(),
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
        Some(server_na::attest_response::Response::AgentAttributes(a)) => {
            assert_eq!(a.spiffe_id, "spiffe://example.org/spire/agent/challenge/n1");
            assert_eq!(a.selector_values, vec!["node:n1", "group:blue"]);
        }
        other => panic!("expected agent attributes, got {other:?}"),
    }
    drop(tx);
    plugin.shutdown().await;
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_wrong_checksum_is_refused_before_the_binary_runs() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("challengeattestor-server", dir.path());
    let mut plugin = spec("NodeAttestor", &bin, "");
    plugin.checksum = Some("00".repeat(32));
    let err = LoadedPlugin::load(&plugin, SERVER_NA, "example.org", &HostServices::none())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("checksums did not match"), "{err}");
    assert!(err.to_string().contains("NodeAttestor \"test\""), "{err}");

    // The right checksum is accepted.
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &std::fs::read(&bin).unwrap());
    plugin.checksum = Some(hex::encode(sha.as_ref()));
    plugin.data = PluginData::Fixed(r#"secret = "x""#.into());
    let loaded = LoadedPlugin::load(&plugin, SERVER_NA, "example.org", &HostServices::none())
        .await
        .expect("the right checksum loads");
    loaded.shutdown().await;
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_binary_that_is_not_a_plugin_is_refused() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("notplugin", dir.path());
    let err = LoadedPlugin::load(
        &spec("NodeAttestor", &bin, ""),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .unwrap_err();
    assert!(
        err.reason.contains("unrecognized remote plugin message"),
        "{err}"
    );
    assert!(err.reason.contains("not a SPIRE plugin"), "{err}");
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_plugin_of_another_type_is_refused() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    // A WorkloadAttestor refuses the NodeAttestor magic cookie and exits.
    let bin = copy_plugin("pidattestor", dir.path());
    let err = LoadedPlugin::load(
        &spec("NodeAttestor", &bin, ""),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .unwrap_err();
    assert!(err.reason.contains("plugin of another type"), "{err}");
    assert_no_process_runs(&bin).await;

    // The agent's NodeAttestor shares the cookie but not the service.
    let bin = copy_plugin("challengeattestor-agent", dir.path());
    let err = LoadedPlugin::load(
        &spec("NodeAttestor", &bin, ""),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .unwrap_err();
    assert!(
        err.reason
            .contains("does not implement spire.plugin.server.nodeattestor.v1"),
        "{err}"
    );
    assert!(
        err.reason
            .contains("spire.plugin.agent.nodeattestor.v1.NodeAttestor"),
        "{err}"
    );
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_plugin_that_exits_during_configure_is_refused() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("failconfigure", dir.path());
    let err = LoadedPlugin::load(
        &spec("NodeAttestor", &bin, ""),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .unwrap_err();
    assert!(err.reason.contains("failed to configure plugin"), "{err}");
    assert!(err.reason.contains("exit status 3"), "{err}");
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_plugin_configure_error_is_reported() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("challengeattestor-server", dir.path());
    // No `secret`: the plugin refuses its configuration.
    let err = LoadedPlugin::load(
        &spec("NodeAttestor", &bin, r#"group = "x""#),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .unwrap_err();
    assert!(err.reason.contains("secret is required"), "{err}");
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_plugin_that_never_completes_the_handshake_is_refused() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("hangplugin", dir.path());
    let started = Instant::now();
    let err = LoadedPlugin::load_with_timeouts(
        &spec("NodeAttestor", &bin, ""),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
        LoadTimeouts {
            start: Duration::from_secs(3),
            ..LoadTimeouts::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.reason.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_plugin_that_never_answers_configure_is_refused_and_ended() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("hangconfigure", dir.path());
    let started = Instant::now();
    let err = LoadedPlugin::load_with_timeouts(
        &spec("NodeAttestor", &bin, ""),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
        LoadTimeouts {
            call: Duration::from_secs(3),
            ..LoadTimeouts::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.reason
            .contains("timed out after 3s waiting for the plugin to answer Configure"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_no_process_runs(&bin).await;
}

#[tokio::test]
async fn a_plugin_that_dies_at_run_time_is_reported_and_calls_fail() {
    let dir = tempfile::tempdir_in(plugins_dir()).unwrap();
    let bin = copy_plugin("challengeattestor-server", dir.path());
    let plugin = LoadedPlugin::load(
        &spec("NodeAttestor", &bin, r#"secret = "x""#),
        SERVER_NA,
        "example.org",
        &HostServices::none(),
    )
    .await
    .expect("the plugin loads");
    let pid = plugin.pid().expect("a pid");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while plugin.exit_status().is_none() {
        assert!(
            Instant::now() < deadline,
            "the plugin's death was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        plugin.exit_status().unwrap().contains("signal: killed"),
        "{:?}",
        plugin.exit_status()
    );
    let mut client = server_na::node_attestor_client::NodeAttestorClient::new(plugin.channel());
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    let message = plugin.call_failure(&status).await;
    assert!(
        message.starts_with("plugin exited (signal: killed): "),
        "{message}"
    );
    plugin.shutdown().await;
}
