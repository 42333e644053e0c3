//! Envoy's Secret Discovery Service v3 (`envoy.service.secret.v3.SecretDiscoveryService`) on
//! the agent's Workload API socket, answered as upstream's `pkg/agent/endpoints/sdsv3`.
//!
//! Envoy is a workload like any other: its process is attested from the socket's peer
//! credentials (no security header is required, as upstream) and it receives the SVIDs and
//! bundles of the entries its selectors match, as `Secret` resources named by SPIFFE ID, by
//! trust domain ID or by the `sds { }` default names.

mod response;
mod stream;

use std::pin::Pin;
use std::sync::Arc;

use spire_proto::sds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use spire_proto::sds::secret::secret_discovery_service_server::SecretDiscoveryService;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::SdsSettings;
use crate::manager::WorkloadIdentities;
use crate::plugins::workloadattestor::WorkloadAttestor;
use crate::workload::ratelimit::{self, WorkloadRateLimiter};
use crate::workload::{Caller, attest_caller};

/// The pid of the process calling on the socket, when the listener learned it.
fn caller_pid(extensions: &tonic::Extensions) -> Option<i32> {
    extensions.get::<Caller>().map(|caller| caller.process.pid)
}

pub use spire_proto::sds::secret::secret_discovery_service_server::SecretDiscoveryServiceServer;

/// The response stream of StreamSecrets and DeltaSecrets.
pub type SecretStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The SDS v3 gRPC service: attests each caller, then answers from the manager.
#[derive(Clone)]
pub struct SdsService {
    identities: Arc<dyn WorkloadIdentities>,
    attestors: Arc<[Arc<dyn WorkloadAttestor>]>,
    settings: Arc<SdsSettings>,
    rate_limiter: Arc<WorkloadRateLimiter>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SdsService {
    /// A service answering from `identities` with the `sds { }` names of `settings`; its
    /// streams end when `shutdown` fires.
    pub fn new(
        identities: Arc<dyn WorkloadIdentities>,
        attestors: Arc<[Arc<dyn WorkloadAttestor>]>,
        settings: SdsSettings,
        rate_limiter: Arc<WorkloadRateLimiter>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            identities,
            attestors,
            settings: Arc::new(settings),
            rate_limiter,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = SecretStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = SecretStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("Method is not implemented"))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let selectors = attest_caller(&self.attestors, request.extensions())
            .await
            .inspect_err(
                |e| tracing::error!(error = %e.message(), "Failed to attest the workload"),
            )?;
        self.rate_limiter.check(
            ratelimit::STREAM_SECRETS,
            &selectors,
            caller_pid(request.extensions()),
        )?;
        let updates = self.identities.subscribe_when_ready(selectors).await;
        let responses = stream::spawn(
            Arc::clone(&self.settings),
            request.into_inner(),
            updates,
            self.shutdown.clone(),
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let selectors = attest_caller(&self.attestors, request.extensions())
            .await
            .inspect_err(
                |e| tracing::error!(error = %e.message(), "Failed to attest the workload"),
            )?;
        self.rate_limiter.check(
            ratelimit::FETCH_SECRETS,
            &selectors,
            caller_pid(request.extensions()),
        )?;
        let update = Arc::clone(&self.identities.subscribe(selectors).borrow());
        let request = request.into_inner();
        let response = response::build_response(&self.settings, "", &request, &update)
            .inspect_err(|e| {
                tracing::error!(resource_names = ?request.resource_names, error = %e.message(), "Error building fetch secrets response");
            })?;
        tracing::debug!(
            count = response.resources.len(),
            "Sending FetchSecrets response"
        );
        Ok(Response::new(response))
    }
}
