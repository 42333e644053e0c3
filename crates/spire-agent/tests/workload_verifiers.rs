//! `allow_unauthenticated_verifiers` on a real Workload API socket: a caller no entry
//! matches gets the trust bundles only when the key is true, as upstream.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use spire_agent::manager::{JwtIdentity, ManagerError, WorkloadIdentities, WorkloadUpdate};
use spire_agent::workload::{self, WorkloadApiOptions};
use spire_core::bundle::Bundle;
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::workload::X509BundlesRequest;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Endpoint, Uri};

/// A manager that has the trust bundle but no identity for anyone.
struct NoIdentities {
    updates: watch::Sender<Arc<WorkloadUpdate>>,
    bundles: watch::Sender<Arc<BTreeMap<String, Arc<Bundle>>>>,
}

#[async_trait]
impl WorkloadIdentities for NoIdentities {
    fn subscribe(&self, _selectors: Vec<Selector>) -> watch::Receiver<Arc<WorkloadUpdate>> {
        self.updates.subscribe()
    }

    async fn fetch_jwt_svids(
        &self,
        _selectors: &[Selector],
        _spiffe_id: Option<&SpiffeId>,
        _audience: &[String],
    ) -> Result<Vec<JwtIdentity>, ManagerError> {
        Ok(Vec::new())
    }

    fn bundles(&self) -> watch::Receiver<Arc<BTreeMap<String, Arc<Bundle>>>> {
        self.bundles.subscribe()
    }
}

/// The first FetchX509Bundles answer of an agent with `allow_unauthenticated_verifiers`:
/// the trust domains of the bundles sent, or the status.
async fn fetch_bundles(allow_unauthenticated_verifiers: bool) -> Result<Vec<String>, Code> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let bundle = Arc::new(Bundle::new(TrustDomain::new("example.org").unwrap()));
    let identities = Arc::new(NoIdentities {
        updates: watch::Sender::new(Arc::new(WorkloadUpdate {
            identities: Vec::new(),
            bundle: Arc::clone(&bundle),
            federated_bundles: BTreeMap::new(),
        })),
        bundles: watch::Sender::new(Arc::new(BTreeMap::from([(
            "example.org".to_owned(),
            bundle,
        )]))),
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(workload::serve_with_options(
        identities as Arc<dyn WorkloadIdentities>,
        Vec::new(),
        WorkloadApiOptions {
            allow_unauthenticated_verifiers,
            ..WorkloadApiOptions::default()
        },
        socket.clone(),
        cancel.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(&socket).await.is_err() {
        assert!(Instant::now() < deadline, "the Workload API never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let path = socket.clone();
    let channel = Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let mut request = tonic::Request::new(X509BundlesRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let first = async {
        let mut stream = SpiffeWorkloadApiClient::new(channel)
            .fetch_x509_bundles(request)
            .await
            .map_err(|s| s.code())?
            .into_inner();
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an answer within 10 s")
            .map_err(|s| s.code())?
            .expect("a first message");
        Ok(message.bundles.into_keys().collect())
    }
    .await;
    cancel.cancel();
    let _ = task.await;
    first
}

#[tokio::test]
async fn unregistered_callers_get_bundles_only_with_allow_unauthenticated_verifiers() {
    assert_eq!(fetch_bundles(false).await, Err(Code::PermissionDenied));
    assert_eq!(
        fetch_bundles(true).await,
        Ok(vec!["spiffe://example.org".to_owned()])
    );
}
