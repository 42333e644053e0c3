//! A request over the 4 MiB message limit is answered `RESOURCE_EXHAUSTED`, as gRPC
//! specifies and upstream (grpc-go) answers, on every socket either process serves: the
//! server's admin socket, the agent's Workload API and the agent's admin socket. tonic on its
//! own would answer `OUT_OF_RANGE`. The connection stays usable afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::path::PathBuf;
use std::time::Duration;

use spire_e2e::workload::{unix_channel, with_security_header};
use spire_e2e::{AgentProcess, ServerProcess};
use spire_proto::spire::api::agent::delegatedidentity::v1::FetchJwtsviDsRequest;
use spire_proto::spire::api::agent::delegatedidentity::v1::delegated_identity_client::DelegatedIdentityClient;
use spire_proto::spire::api::server::entry::v1::entry_client::EntryClient;
use spire_proto::spire::api::server::entry::v1::{CountEntriesRequest, ListEntriesRequest};
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use spire_proto::workload::{JwtBundlesRequest, JwtsvidRequest};
use tonic::Code;
use tonic::transport::Channel;

/// Over tonic's (and grpc-go's) default 4 MiB receive limit.
const OVERSIZED: usize = 5 * 1024 * 1024;

async fn channel(socket: PathBuf) -> Channel {
    unix_channel(socket).await.unwrap()
}

fn assert_resource_exhausted(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{what}: {status:?}"
    );
}

#[test]
fn oversized_requests_are_resource_exhausted_on_every_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), "");
    let token = server.generate_join_token("spiffe://example.org/node");
    // Not under the Workload API socket's folder, which the agent refuses.
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_socket = admin_dir.path().join("admin.sock");
    let agent = AgentProcess::start_with_agent_keys(
        tmp.path(),
        &server,
        Some(&token),
        &format!("admin_socket_path = \"{}\"", admin_socket.display()),
    );
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let huge = "x".repeat(OVERSIZED);

        let mut entries = EntryClient::new(channel(server.socket_path.clone()).await);
        let oversized = entries
            .list_entries(ListEntriesRequest {
                page_token: huge.clone(),
                ..ListEntriesRequest::default()
            })
            .await;
        assert_resource_exhausted(oversized, "server ListEntries");
        entries
            .count_entries(CountEntriesRequest::default())
            .await
            .expect("the server's admin socket still answers");

        let mut workload = SpiffeWorkloadApiClient::new(channel(agent.socket_path.clone()).await);
        let oversized = workload
            .fetch_jwtsvid(with_security_header(JwtsvidRequest {
                audience: vec![huge.clone()],
                spiffe_id: String::new(),
            }))
            .await;
        assert_resource_exhausted(oversized, "Workload API FetchJWTSVID");
        let bundles = workload
            .fetch_jwt_bundles(with_security_header(JwtBundlesRequest {}))
            .await
            .expect("the Workload API still answers");
        drop(bundles);

        let mut delegated = DelegatedIdentityClient::new(channel(admin_socket.clone()).await);
        let oversized = delegated
            .fetch_jwtsvi_ds(FetchJwtsviDsRequest {
                audience: vec![huge.clone()],
                ..FetchJwtsviDsRequest::default()
            })
            .await;
        assert_resource_exhausted(oversized, "agent admin FetchJWTSVIDs");
    });
    drop(agent);
    drop(server);
}
