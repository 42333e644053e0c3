//! `spire.api.agent.delegatedidentity.v1.DelegatedIdentity`: a trusted delegate (e.g. a CNI or
//! a proxy) obtains the identities of other workloads, named by selectors or by a pid the agent
//! attests, as upstream's `pkg/agent/api/delegatedidentity/v1`.
//!
//! Every call first attests the caller itself from the socket's peer credentials; one of the
//! caller's entries must have a SPIFFE ID listed in `authorized_delegates`, otherwise the call
//! is refused with PermissionDenied. Streams check this again before every message they send.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use spire_core::bundle::Bundle;
use spire_core::jwt::parse_jwt_svid_insecure;
use spire_core::selector::Selector;
use spire_core::spiffe_id::SpiffeId;
use spire_core::x509::certificate_not_after;
use spire_proto::spire::api::agent::delegatedidentity::v1 as pb;
use spire_proto::spire::api::agent::delegatedidentity::v1::delegated_identity_server::DelegatedIdentity;
use spire_proto::spire::api::types;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::stream::WatchResponses;
use super::{process_ids, selectors_from_proto};
use crate::manager::{Manager, ManagerError, WorkloadIdentities, WorkloadUpdate};
use crate::plugins::workloadattestor::{PeerProcess, WorkloadAttestor};
use crate::workload::peer::verify_still_alive;
use crate::workload::{Caller, attest_process};

/// Upstream's message when the caller itself could not be attested.
const ATTESTATION_FAILED: &str = "workload attestation failed";
/// Upstream's message when the caller has no entry at all.
const NO_IDENTITY: &str = "no identity issued";
/// Upstream's message when none of the caller's entries is an authorized delegate.
const NOT_A_DELEGATE: &str = "caller not configured as an authorized delegate";

type BundleMap = Arc<std::collections::BTreeMap<String, Arc<Bundle>>>;

/// The Delegated Identity service.
#[derive(Clone)]
pub struct DelegatedIdentityService {
    manager: Arc<Manager>,
    attestors: Arc<[Arc<dyn WorkloadAttestor>]>,
    authorized_delegates: Arc<BTreeSet<SpiffeId>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for DelegatedIdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatedIdentityService")
            .field("authorized_delegates", &self.authorized_delegates)
            .finish_non_exhaustive()
    }
}

impl DelegatedIdentityService {
    /// A service answering from `manager` for callers whose entries name one of
    /// `authorized_delegates`; its streams end when `shutdown` fires.
    pub fn new(
        manager: Arc<Manager>,
        attestors: Vec<Arc<dyn WorkloadAttestor>>,
        authorized_delegates: Vec<SpiffeId>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            manager,
            attestors: attestors.into(),
            authorized_delegates: Arc::new(authorized_delegates.into_iter().collect()),
            shutdown,
        }
    }

    /// Attests the caller of `request` from the socket's peer credentials, checks that the
    /// attested pid is still the caller, and checks that it is an authorized delegate.
    /// Returns the caller's own subscription so streams can check again on every update.
    async fn authorize_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<watch::Receiver<Arc<WorkloadUpdate>>, Status> {
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            tracing::error!("Workload attestation failed: the caller's pid is unknown");
            return Err(Status::internal(ATTESTATION_FAILED));
        };
        let pid = caller.process.pid;
        let selectors = attest_process(&self.attestors, caller.process)
            .await
            .map_err(|e| {
                tracing::error!(pid, error = %e, "Workload attestation failed");
                Status::internal(ATTESTATION_FAILED)
            })?;
        if let Err(reason) = verify_still_alive(&caller) {
            tracing::error!(
                pid,
                %reason,
                "Workload attestation failed: could not verify existence of the original caller"
            );
            return Err(Status::internal(ATTESTATION_FAILED));
        }
        // Waits until the caller's own entries have their SVIDs, so a delegate registered a
        // moment ago is not refused for want of a sync.
        let caller = self.manager.subscribe_when_ready(selectors).await;
        self.check_delegate(&caller.borrow())?;
        Ok(caller)
    }

    /// Whether the caller whose identities are `caller` is an authorized delegate.
    fn check_delegate(&self, caller: &WorkloadUpdate) -> Result<(), Status> {
        check_delegate(&self.authorized_delegates, caller)
    }

    /// The selectors of the workload the delegate asks about: the request's selectors, or
    /// those of the pid it names (exactly one of the two), as upstream.
    async fn target_selectors(
        &self,
        pid: i32,
        selectors: &[types::Selector],
    ) -> Result<Vec<Selector>, Status> {
        if selectors.is_empty() == (pid == 0) {
            tracing::error!(
                "Invalid argument; must provide either selectors or non-zero PID, but not both"
            );
            return Err(Status::invalid_argument(
                "must provide either selectors or non-zero PID, but not both",
            ));
        }
        if !selectors.is_empty() {
            return selectors_from_proto(selectors);
        }
        let failed = || Status::internal("workload attestation with PID failed");
        let Some((uid, gid)) = process_ids(pid) else {
            tracing::error!(pid, "Workload attestation with PID failed: no such process");
            return Err(failed());
        };
        attest_process(&self.attestors, PeerProcess { pid, uid, gid })
            .await
            .map_err(|e| {
                tracing::error!(pid, error = %e, "Workload attestation with PID failed");
                failed()
            })
    }

    /// A stream of bundle messages rendered by `render`, checking the caller before each.
    fn bundle_stream<T: Send + 'static>(
        &self,
        caller: watch::Receiver<Arc<WorkloadUpdate>>,
        render: impl Fn(&Bundle) -> Result<Vec<u8>, Status> + Send + 'static,
        wrap: impl Fn(HashMap<String, Vec<u8>>) -> T + Send + 'static,
    ) -> WatchResponses<BundleMap, T> {
        let authorized = Arc::clone(&self.authorized_delegates);
        WatchResponses::new(
            self.manager.bundles(),
            self.shutdown.clone(),
            move |bundles| {
                check_delegate(&authorized, &caller.borrow())?;
                let map = bundles
                    .values()
                    .map(|b| Ok((b.trust_domain.id_string(), render(b)?)))
                    .collect::<Result<HashMap<_, _>, Status>>()?;
                Ok(Some(wrap(map)))
            },
        )
    }
}

fn check_delegate(authorized: &BTreeSet<SpiffeId>, caller: &WorkloadUpdate) -> Result<(), Status> {
    let Some(default) = caller.identities.first() else {
        tracing::error!("Permission denied; no identity issued to the caller");
        return Err(Status::permission_denied(NO_IDENTITY));
    };
    if let Some(delegate) = caller
        .identities
        .iter()
        .find(|identity| authorized.contains(&identity.spiffe_id))
    {
        tracing::debug!(delegate_id = %delegate.spiffe_id, "Caller authorized as delegate");
        return Ok(());
    }
    tracing::error!(
        num_registered_entries = caller.identities.len(),
        default_id = %default.spiffe_id,
        "Permission denied; caller not configured as an authorized delegate."
    );
    Err(Status::permission_denied(NOT_A_DELEGATE))
}

fn spiffe_id_proto(id: &SpiffeId) -> types::Spiffeid {
    types::Spiffeid {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    }
}

/// The X509-SVIDs (with keys) of a workload's update, and the federated trust domains.
fn x509_svids_response(
    update: &WorkloadUpdate,
) -> Result<pb::SubscribeToX509sviDsResponse, Status> {
    let mut federates_with: Vec<String> = update
        .federated_bundles
        .values()
        .map(|b| b.trust_domain.id_string())
        .collect();
    federates_with.sort();
    let x509_svids = update
        .identities
        .iter()
        .map(|identity| {
            let leaf = identity.chain.first().ok_or_else(|| {
                tracing::error!(spiffe_id = %identity.spiffe_id, "Could not serialize X.509 SVID response: empty chain");
                Status::internal("could not serialize response")
            })?;
            let expires_at = certificate_not_after(leaf).map_err(|e| {
                tracing::error!(spiffe_id = %identity.spiffe_id, error = %e, "Could not serialize X.509 SVID response");
                Status::internal("could not serialize response")
            })?;
            Ok(pb::X509svidWithKey {
                x509_svid: Some(types::X509svid {
                    id: Some(spiffe_id_proto(&identity.spiffe_id)),
                    cert_chain: identity.chain.clone(),
                    expires_at: expires_at.unix_timestamp(),
                    hint: identity.hint.clone(),
                }),
                x509_svid_key: identity.key.pkcs8_der().to_vec(),
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(pb::SubscribeToX509sviDsResponse {
        x509_svids,
        federates_with,
    })
}

/// A standard JWKS of a bundle's JWT authorities only, as upstream's
/// `bundleutil.Marshal(bundle, NoX509SVIDKeys(), StandardJWKS())`.
fn jwt_authorities_jwks(bundle: &Bundle) -> Result<Vec<u8>, Status> {
    let mut jwt_only = Bundle::new(bundle.trust_domain.clone());
    jwt_only.jwt_authorities.clone_from(&bundle.jwt_authorities);
    jwt_only
        .to_spiffe_document()
        .map(String::into_bytes)
        .map_err(|e| Status::internal(format!("could not serialize bundle: {e}")))
}

#[tonic::async_trait]
impl DelegatedIdentity for DelegatedIdentityService {
    type SubscribeToX509SVIDsStream =
        WatchResponses<Arc<WorkloadUpdate>, pb::SubscribeToX509sviDsResponse>;

    async fn subscribe_to_x509svi_ds(
        &self,
        request: Request<pb::SubscribeToX509sviDsRequest>,
    ) -> Result<Response<Self::SubscribeToX509SVIDsStream>, Status> {
        let started = std::time::Instant::now();
        let caller = self.authorize_caller(&request).await?;
        let request = request.into_inner();
        let selectors = self
            .target_selectors(request.pid, &request.selectors)
            .await?;
        tracing::info!(count = selectors.len(), "Subscribing to cache changes");
        // As upstream's cache, the first message waits until every matching entry has its
        // SVID instead of sending a partial list.
        let updates = self.manager.subscribe_when_ready(selectors).await;
        let authorized = Arc::clone(&self.authorized_delegates);
        // Upstream's `delegated_identity_api_subscribe_x509_svids_first_update` latency: until
        // the first message that carries an SVID.
        let mut first_update = Some(started);
        Ok(Response::new(WatchResponses::new(
            updates,
            self.shutdown.clone(),
            move |update: &Arc<WorkloadUpdate>| {
                check_delegate(&authorized, &caller.borrow())?;
                let response = x509_svids_response(update)?;
                if !update.identities.is_empty()
                    && let Some(started) = first_update.take()
                {
                    spire_common::telemetry::agent::delegated_first_x509_update(started);
                }
                Ok(Some(response))
            },
        )))
    }

    type SubscribeToX509BundlesStream =
        WatchResponses<BundleMap, pb::SubscribeToX509BundlesResponse>;

    async fn subscribe_to_x509_bundles(
        &self,
        request: Request<pb::SubscribeToX509BundlesRequest>,
    ) -> Result<Response<Self::SubscribeToX509BundlesStream>, Status> {
        let caller = self.authorize_caller(&request).await?;
        Ok(Response::new(self.bundle_stream(
            caller,
            |bundle| Ok(bundle.x509_authorities.concat()),
            |ca_certificates| pb::SubscribeToX509BundlesResponse { ca_certificates },
        )))
    }

    async fn fetch_jwtsvi_ds(
        &self,
        request: Request<pb::FetchJwtsviDsRequest>,
    ) -> Result<Response<pb::FetchJwtsviDsResponse>, Status> {
        if request.get_ref().audience.is_empty() {
            tracing::error!("Missing required audience parameter");
            return Err(Status::invalid_argument("audience must be specified"));
        }
        self.authorize_caller(&request).await?;
        let request = request.into_inner();
        let selectors = self
            .target_selectors(request.pid, &request.selectors)
            .await?;
        let identities = self
            .manager
            .fetch_jwt_svids(&selectors, None, &request.audience)
            .await
            .map_err(|e| match e {
                ManagerError::NoIdentity => {
                    tracing::error!("No identity issued");
                    Status::permission_denied(NO_IDENTITY)
                }
                ManagerError::InvalidArgument(message) => Status::invalid_argument(message),
                other => {
                    tracing::error!(error = %other, "Could not fetch JWT-SVID");
                    Status::unavailable(format!("could not fetch JWT-SVID: {other}"))
                }
            })?;
        let svids = identities
            .into_iter()
            .map(|identity| {
                let parsed = parse_jwt_svid_insecure(&identity.token).map_err(|e| {
                    Status::internal(format!(
                        "could not read the JWT-SVID of {}: {e}",
                        identity.spiffe_id
                    ))
                })?;
                let issued_at = parsed
                    .claims
                    .get("iat")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or_default();
                Ok(types::Jwtsvid {
                    token: identity.token,
                    id: Some(spiffe_id_proto(&identity.spiffe_id)),
                    expires_at: parsed.expiry,
                    issued_at,
                    hint: identity.hint,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::FetchJwtsviDsResponse { svids }))
    }

    type SubscribeToJWTBundlesStream = WatchResponses<BundleMap, pb::SubscribeToJwtBundlesResponse>;

    async fn subscribe_to_jwt_bundles(
        &self,
        request: Request<pb::SubscribeToJwtBundlesRequest>,
    ) -> Result<Response<Self::SubscribeToJWTBundlesStream>, Status> {
        let caller = self.authorize_caller(&request).await?;
        Ok(Response::new(self.bundle_stream(
            caller,
            jwt_authorities_jwks,
            |bundles| pb::SubscribeToJwtBundlesResponse { bundles },
        )))
    }
}
