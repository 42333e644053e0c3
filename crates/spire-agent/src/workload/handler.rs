//! The five `SpiffeWorkloadAPI` RPCs, answered as upstream's
//! `pkg/agent/endpoints/workload/handler.go` does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use spire_core::bundle::Bundle;
use spire_core::jwt::{JwtAuthority, JwtBundleSource, validate_jwt_svid};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use spire_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::ratelimit;
use super::stream::UpdateStream;
use super::{Caller, SECURITY_HEADER, WorkloadApiOptions, peer};
use crate::manager::{ManagerError, WorkloadIdentities, WorkloadUpdate, X509Identity};
use crate::plugins::workloadattestor::{AttestError, PeerProcess, WorkloadAttestor};

/// The message the `spiffe` crates and go-spiffe recognise as "registered nowhere (yet)".
const NO_IDENTITY: &str = "no identity issued";

/// The selectors of a caller that `log_selectors` lets the logs show: those whose
/// `type:value` equals a configured prefix or continues it with `:` (upstream's
/// `isLoggableSelector`), sorted and joined with `,`; `None` when nothing may be shown.
pub(super) fn loggable_selectors(selectors: &[Selector], prefixes: &[String]) -> Option<String> {
    let mut shown: Vec<String> = selectors
        .iter()
        .map(ToString::to_string)
        .filter(|rendered| {
            prefixes.iter().any(|prefix| {
                rendered == prefix
                    || rendered
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with(':'))
            })
        })
        .collect();
    if shown.is_empty() {
        return None;
    }
    shown.sort();
    Some(shown.join(","))
}

/// Upstream's Error "No identity issued" (`registered=false`, `pid`, and the selectors
/// `log_selectors` allows).
fn log_no_identity(pid: Option<i32>, selectors: &[Selector], prefixes: &[String]) {
    match loggable_selectors(selectors, prefixes) {
        Some(shown) => {
            tracing::error!(registered = false, pid, selectors = %shown, "No identity issued");
        }
        None => tracing::error!(registered = false, pid, "No identity issued"),
    }
}

/// Logs "No identity issued" when `result` is that refusal, and passes it on.
fn logged<T>(
    result: Result<T, Status>,
    pid: Option<i32>,
    selectors: &[Selector],
    prefixes: &[String],
) -> Result<T, Status> {
    if let Err(status) = &result
        && status.code() == tonic::Code::PermissionDenied
        && status.message() == NO_IDENTITY
    {
        log_no_identity(pid, selectors, prefixes);
    }
    result
}

/// The caller's pid, for logs.
fn caller_pid<T>(request: &Request<T>) -> Option<i32> {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.process.pid)
}

/// The `SpiffeWorkloadAPI` gRPC service: attests each caller, then answers from the manager.
#[derive(Clone)]
pub struct WorkloadApiService {
    identities: Arc<dyn WorkloadIdentities>,
    attestors: Arc<[Arc<dyn WorkloadAttestor>]>,
    options: Arc<WorkloadApiOptions>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for WorkloadApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.attestors.iter().map(|a| a.name()).collect();
        f.debug_struct("WorkloadApiService")
            .field("attestors", &names)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl WorkloadApiService {
    /// A service answering from `identities`, attesting callers with every one of `attestors`;
    /// its streams end when `shutdown` fires.
    pub fn new(
        identities: Arc<dyn WorkloadIdentities>,
        attestors: Vec<Arc<dyn WorkloadAttestor>>,
        options: WorkloadApiOptions,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            identities,
            attestors: attestors.into(),
            options: Arc::new(options),
            shutdown,
        }
    }

    /// Checks the security header, attests the caller of `request` and makes sure the
    /// attested pid still is the caller; gives the caller's selectors.
    async fn attest<T>(&self, request: &Request<T>) -> Result<Vec<Selector>, Status> {
        check_security_header(request)?;
        attest_caller(&self.attestors, request.extensions()).await
    }

    /// Attests the caller, then takes a token of `method`'s `experimental.ratelimit` bucket
    /// for its selector set.
    async fn attest_limited<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
    ) -> Result<Vec<Selector>, Status> {
        let selectors = self.attest(request).await?;
        self.options
            .rate_limiter
            .check(method, &selectors, caller_pid(request))?;
        Ok(selectors)
    }
}

/// Attests the peer of a call on the agent's socket (the [`Caller`] the listener put in the
/// request's extensions) and makes sure the attested pid still is the caller; gives the
/// caller's selectors. Shared by the Workload API and Envoy SDS, which attest alike.
pub(crate) async fn attest_caller(
    attestors: &[Arc<dyn WorkloadAttestor>],
    extensions: &http::Extensions,
) -> Result<Vec<Selector>, Status> {
    let caller = extensions.get::<Caller>().cloned().ok_or_else(|| {
        Status::internal("unable to resolve the caller's pid: is this a supported system?")
    })?;
    let started = std::time::Instant::now();
    let attested = attest_process(attestors, caller.process).await;
    spire_common::telemetry::agent::workload_attested(
        attested.as_ref().ok().map(Vec::len),
        started,
    );
    // A failure reads as upstream's: Unauthenticated when the process went away, Internal
    // otherwise.
    let selectors = attested.map_err(|failure| {
        let message = failure.to_string();
        match failure.error {
            AttestError::ProcessGone(_) => Status::unauthenticated(message),
            _ => Status::internal(message),
        }
    })?;
    peer::verify_still_alive(&caller).map_err(|reason| {
        tracing::warn!(pid = caller.process.pid, %reason, "Refusing workload: caller changed during attestation");
        Status::unauthenticated(format!(
            "could not verify existence of the original caller: {reason}"
        ))
    })?;
    tracing::debug!(
        pid = caller.process.pid,
        count = selectors.len(),
        "PID attested to have selectors"
    );
    Ok(selectors)
}

/// Every workload attestor failed on a process; the first failure.
#[derive(Debug, thiserror::Error)]
#[error("workload attestor {attestor:?} failed: {error}")]
pub(crate) struct AttestFailure {
    /// The attestor's plugin name.
    pub(crate) attestor: &'static str,
    /// What it said.
    pub(crate) error: AttestError,
}

/// Runs every attestor concurrently on `process` and concatenates their selectors in
/// configuration order. A failing attestor is logged and skipped, as upstream; when every one
/// fails, so does the call.
pub(crate) async fn attest_process(
    attestors: &[Arc<dyn WorkloadAttestor>],
    process: PeerProcess,
) -> Result<Vec<Selector>, AttestFailure> {
    // One attestor (the usual `unix` or `k8s` alone) runs in place: a task of its own would
    // only add a spawn and a wake-up to every call.
    if let [attestor] = attestors {
        return attest_timed(attestor.as_ref(), process)
            .await
            .map_err(|error| AttestFailure {
                attestor: attestor.name(),
                error,
            });
    }
    let mut tasks = JoinSet::new();
    for (index, attestor) in attestors.iter().enumerate() {
        let attestor = Arc::clone(attestor);
        tasks.spawn(async move {
            let result = attest_timed(attestor.as_ref(), process).await;
            (index, attestor.name(), result)
        });
    }
    let mut results = Vec::with_capacity(attestors.len());
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, _, Ok(selectors))) => results.push((index, selectors)),
            Ok((_, attestor, Err(error))) => {
                first_failure.get_or_insert(AttestFailure { attestor, error });
            }
            Err(e) => {
                tracing::error!(pid = process.pid, error = %e, "Workload attestor task failed");
            }
        }
    }
    if results.is_empty()
        && let Some(failure) = first_failure
    {
        return Err(failure);
    }
    results.sort_by_key(|(index, _)| *index);
    Ok(results.into_iter().flat_map(|(_, s)| s).collect())
}

/// One attestor's selectors for `process`, timed into upstream's per-attestor metric; a
/// failure is logged as upstream logs it.
async fn attest_timed(
    attestor: &dyn WorkloadAttestor,
    process: PeerProcess,
) -> Result<Vec<Selector>, AttestError> {
    let started = std::time::Instant::now();
    let result = attestor.attest(process).await;
    spire_common::telemetry::agent::workload_attestor_called(
        attestor.name(),
        result.is_ok(),
        started,
    );
    if let Err(error) = &result {
        tracing::error!(pid = process.pid, attestor = attestor.name(), error = %error, "Failed to collect all selectors for PID");
    }
    result
}

/// Upstream requires exactly one `workload.spiffe.io` value, equal to `true`.
fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if value.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// `spiffe://<trust domain>` for a bundle, the key of every bundle map of the API.
fn bundle_key(bundle: &Bundle) -> String {
    bundle.trust_domain.id_string()
}

/// The concatenated DER of a bundle's X.509 authorities.
fn x509_authorities_der(bundle: &Bundle) -> Vec<u8> {
    bundle.x509_authorities.concat()
}

/// A standard JWKS of a bundle's JWT authorities only (no X.509 keys, no SPIFFE fields), as
/// upstream's FetchJWTBundles sends.
fn jwt_authorities_jwks(bundle: &Bundle) -> Result<Vec<u8>, Status> {
    let mut jwt_only = Bundle::new(bundle.trust_domain.clone());
    jwt_only.jwt_authorities.clone_from(&bundle.jwt_authorities);
    jwt_only
        .to_spiffe_document()
        .map(String::into_bytes)
        .map_err(|e| Status::unavailable(format!("could not serialize response: {e}")))
}

/// The identities to send: when several share a non-empty hint, only the first is kept
/// (upstream keeps one per hint and logs the others).
fn dedup_by_hint(identities: &[X509Identity]) -> Vec<&X509Identity> {
    let mut hints = HashSet::new();
    identities
        .iter()
        .filter(|identity| {
            let keep = identity.hint.is_empty() || hints.insert(identity.hint.as_str());
            if !keep {
                tracing::warn!(hint = %identity.hint, registration_id = %identity.entry_id, "Ignoring entry with duplicate hint");
            }
            keep
        })
        .collect()
}

fn x509_svid_response(update: &WorkloadUpdate) -> Result<Option<X509svidResponse>, Status> {
    if update.identities.is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let bundle = x509_authorities_der(&update.bundle);
    let svids = dedup_by_hint(&update.identities)
        .into_iter()
        .map(|identity| X509svid {
            spiffe_id: identity.spiffe_id.to_string(),
            x509_svid: identity.chain.concat(),
            x509_svid_key: identity.key.pkcs8_der().to_vec(),
            bundle: bundle.clone(),
            hint: identity.hint.clone(),
        })
        .collect();
    let federated_bundles = update
        .federated_bundles
        .values()
        .map(|b| (bundle_key(b), x509_authorities_der(b)))
        .collect();
    Ok(Some(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    }))
}

/// The bundles a caller may see: its own trust domain's always, federated ones only with an
/// identity. `Err` when the caller has no identity and unauthenticated verifiers are not
/// allowed.
fn visible_bundles(
    update: &WorkloadUpdate,
    allow_unauthenticated: bool,
) -> Result<Vec<&Bundle>, Status> {
    let has_identity = !update.identities.is_empty();
    if !has_identity && !allow_unauthenticated {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let mut bundles = vec![update.bundle.as_ref()];
    if has_identity {
        bundles.extend(update.federated_bundles.values().map(AsRef::as_ref));
    }
    Ok(bundles)
}

/// Bundles by trust domain name, as a JWT bundle source for validation.
struct NamedBundles<'a>(&'a BTreeMap<String, Arc<Bundle>>);

impl JwtBundleSource for NamedBundles<'_> {
    fn jwt_authorities(&self, trust_domain: &TrustDomain) -> Option<&[JwtAuthority]> {
        self.0
            .get(trust_domain.name())
            .and_then(|b| JwtBundleSource::jwt_authorities(b.as_ref(), trust_domain))
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn manager_status(error: ManagerError) -> Status {
    match error {
        ManagerError::NoIdentity => Status::permission_denied(NO_IDENTITY),
        ManagerError::Unavailable(m) => {
            Status::unavailable(format!("could not fetch JWT-SVID: {m}"))
        }
        ManagerError::InvalidArgument(m) => Status::invalid_argument(m),
        ManagerError::Internal(m) => Status::internal(m),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = UpdateStream<X509svidResponse>;
    type FetchX509BundlesStream = UpdateStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = UpdateStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self
            .attest_limited(&request, ratelimit::FETCH_X509_SVID)
            .await?;
        let pid = caller_pid(&request);
        let prefixes = self.options.log_selectors.clone();
        let shown = selectors.clone();
        let updates = self.identities.subscribe_when_ready(selectors).await;
        Ok(Response::new(UpdateStream::new(
            updates,
            self.shutdown.clone(),
            move |update| logged(x509_svid_response(update), pid, &shown, &prefixes),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = self
            .attest_limited(&request, ratelimit::FETCH_X509_BUNDLES)
            .await?;
        let pid = caller_pid(&request);
        let prefixes = self.options.log_selectors.clone();
        let shown = selectors.clone();
        let updates = self.identities.subscribe_when_ready(selectors).await;
        let allow_unauthenticated = self.options.allow_unauthenticated_verifiers;
        let mut previous: Option<X509BundlesResponse> = None;
        Ok(Response::new(UpdateStream::new(
            updates,
            self.shutdown.clone(),
            move |update| {
                let visible = visible_bundles(update, allow_unauthenticated);
                let bundles = logged(visible, pid, &shown, &prefixes)?
                    .into_iter()
                    .map(|b| (bundle_key(b), x509_authorities_der(b)))
                    .collect();
                let response = X509BundlesResponse {
                    crl: Vec::new(),
                    bundles,
                };
                if previous.as_ref() == Some(&response) {
                    return Ok(None);
                }
                previous = Some(response.clone());
                Ok(Some(response))
            },
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_security_header(&request)?;
        let body = request.get_ref();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if body.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must not be empty"));
        }
        let spiffe_id = if body.spiffe_id.is_empty() {
            None
        } else {
            Some(SpiffeId::parse(&body.spiffe_id).map_err(|e| {
                Status::invalid_argument(format!("invalid requested SPIFFE ID: {e}"))
            })?)
        };
        let selectors = self
            .attest_limited(&request, ratelimit::FETCH_JWT_SVID)
            .await?;
        let pid = caller_pid(&request);
        let prefixes = &self.options.log_selectors;
        let body = request.get_ref();
        let minted = self
            .identities
            .fetch_jwt_svids(&selectors, spiffe_id.as_ref(), &body.audience)
            .await
            .map_err(manager_status);
        let minted = logged(minted, pid, &selectors, prefixes)?;
        let mut hints = HashSet::new();
        let svids: Vec<Jwtsvid> = minted
            .into_iter()
            .filter(|svid| svid.hint.is_empty() || hints.insert(svid.hint.clone()))
            .map(|svid| Jwtsvid {
                spiffe_id: svid.spiffe_id.to_string(),
                svid: svid.token,
                hint: svid.hint,
            })
            .collect();
        if svids.is_empty() {
            return logged(
                Err(Status::permission_denied(NO_IDENTITY)),
                pid,
                &selectors,
                prefixes,
            );
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self
            .attest_limited(&request, ratelimit::FETCH_JWT_BUNDLES)
            .await?;
        let pid = caller_pid(&request);
        let prefixes = self.options.log_selectors.clone();
        let shown = selectors.clone();
        let updates = self.identities.subscribe_when_ready(selectors).await;
        let allow_unauthenticated = self.options.allow_unauthenticated_verifiers;
        let mut previous: Option<JwtBundlesResponse> = None;
        Ok(Response::new(UpdateStream::new(
            updates,
            self.shutdown.clone(),
            move |update| {
                let mut bundles = HashMap::new();
                let visible = visible_bundles(update, allow_unauthenticated);
                for bundle in logged(visible, pid, &shown, &prefixes)? {
                    bundles.insert(bundle_key(bundle), jwt_authorities_jwks(bundle)?);
                }
                let response = JwtBundlesResponse { bundles };
                if previous.as_ref() == Some(&response) {
                    return Ok(None);
                }
                previous = Some(response.clone());
                Ok(Some(response))
            },
        )))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_security_header(&request)?;
        let body = request.get_ref();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if body.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        self.attest(&request).await?;
        let body = request.get_ref();
        let bundles = self.identities.bundles().borrow().clone();
        let svid = validate_jwt_svid(
            &body.svid,
            &NamedBundles(&bundles),
            &[body.audience.as_str()],
            unix_now(),
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "Failed to validate JWT");
            Status::invalid_argument(e.to_string())
        })?;
        let mut claims = svid.claims;
        if let Some(own) = &self.options.trust_domain
            && !svid.spiffe_id.is_member_of(own)
        {
            claims.retain(|claim, _| {
                matches!(claim.as_str(), "sub" | "exp" | "aud")
                    || self.options.allowed_foreign_jwt_claims.contains(claim)
            });
        }
        let claims: pbjson_types::Struct =
            serde_json::from_value(serde_json::Value::Object(claims))
                .map_err(|e| Status::internal(format!("unable to encode claims: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: svid.spiffe_id.to_string(),
            claims: Some(claims),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(kind: &str, value: &str) -> Selector {
        Selector {
            kind: kind.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn log_selectors_shows_only_the_configured_prefixes() {
        let selectors = vec![
            selector("k8s", "ns:default"),
            selector("k8s", "sa:app"),
            selector("k8s", "nsx:other"),
            selector("unix", "uid:1000"),
        ];
        // None configured: nothing is shown (upstream's privacy default).
        assert_eq!(loggable_selectors(&selectors, &[]), None);
        // `k8s:ns` matches `k8s:ns:default`, not `k8s:nsx:other`; output sorted.
        let prefixes = vec!["k8s:ns".to_owned(), "unix:uid:1000".to_owned()];
        assert_eq!(
            loggable_selectors(&selectors, &prefixes).as_deref(),
            Some("k8s:ns:default,unix:uid:1000")
        );
        assert_eq!(loggable_selectors(&selectors, &["docker".to_owned()]), None);
    }
}
