//! Where the JWT authorities come from, polled every `poll_interval` so a key rotation shows
//! up without a restart: the server's admin socket (`server_api`), an agent's Workload API
//! (`workload_api`) or a SPIFFE bundle file (`file`). Each poll that gets a bundle replaces
//! the served set when the authorities changed (and only then moves its modification time)
//! and records the time of the last successful poll for the health checks. A failed poll is
//! logged and keeps what was served before.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use spire_core::bundle::Bundle;
use spire_core::jwt::JwtAuthority;
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::server::bundle::v1::GetBundleRequest;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::types::BundleMask;
use spire_proto::workload::JwtBundlesRequest;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::SourceConfig;
use crate::jwks::{self, Jwk};

/// How long one gRPC poll may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The key set being served and when it last changed.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// The keys, in the source's order.
    pub keys: Vec<Jwk>,
    /// When this set replaced the previous one (`Last-Modified`).
    pub modified: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    authorities: Option<Vec<JwtAuthority>>,
    key_set: Option<Arc<KeySet>>,
    last_poll: Option<Instant>,
}

/// What the handlers read: the current key set and the time of the last successful poll.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    state: Arc<RwLock<State>>,
}

impl KeySource {
    /// A source that has not polled yet: no key set, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key set, once a poll succeeded.
    pub fn key_set(&self) -> Option<Arc<KeySet>> {
        self.read().key_set.clone()
    }

    /// When a poll last succeeded, if ever.
    pub fn last_successful_poll(&self) -> Option<Instant> {
        self.read().last_poll
    }

    /// Records a successful poll that found `authorities`; the served set is rebuilt only
    /// when they changed. Keys that are not usable public keys are logged and left out.
    pub fn update(&self, authorities: Vec<JwtAuthority>) {
        let changed = self.read().authorities.as_ref() != Some(&authorities);
        let mut key_set = None;
        if changed {
            let mut keys = Vec::with_capacity(authorities.len());
            for authority in &authorities {
                match jwks::jwk_of(authority) {
                    Ok(jwk) => keys.push(jwk),
                    Err(e) => tracing::warn!(
                        kid = %authority.key_id,
                        error = %e,
                        "Malformed public key in bundle"
                    ),
                }
            }
            key_set = Some(Arc::new(KeySet {
                keys,
                modified: SystemTime::now(),
            }));
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(key_set) = key_set {
            tracing::info!(
                keys = key_set.keys.len(),
                "Serving a new set of JWT authorities"
            );
            state.key_set = Some(key_set);
            state.authorities = Some(authorities);
        }
        state.last_poll = Some(Instant::now());
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Polls the configured source into `source` until `cancel` fires: once at once, then every
/// poll interval.
pub async fn poll(config: SourceConfig, source: KeySource, cancel: CancellationToken) {
    let interval = config.poll_interval();
    tracing::debug!(interval = ?interval, "Polling started");
    loop {
        let polled = tokio::select! {
            () = cancel.cancelled() => break,
            polled = poll_once(&config) => polled,
        };
        match polled {
            Ok(authorities) => source.update(authorities),
            Err(message) => tracing::warn!("{message}"),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    tracing::debug!("Polling done");
}

async fn poll_once(config: &SourceConfig) -> Result<Vec<JwtAuthority>, String> {
    match config {
        SourceConfig::ServerApi { socket_path, .. } => server_api(socket_path.clone()).await,
        SourceConfig::WorkloadApi {
            socket_path,
            trust_domain,
            ..
        } => workload_api(socket_path.clone(), trust_domain).await,
        SourceConfig::File { path, .. } => file(path),
    }
}

/// A channel over the unix socket at `socket`, dialled lazily as gRPC clients do.
fn unix_channel(socket: PathBuf) -> Result<Channel, String> {
    let endpoint = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT);
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        })),
    )
}

/// bundle.v1.GetBundle with only the JWT authorities asked for, as upstream polls.
async fn server_api(socket: PathBuf) -> Result<Vec<JwtAuthority>, String> {
    let fail = |e: String| format!("Failed to fetch bundle: {e}");
    let mut client = BundleClient::new(unix_channel(socket).map_err(fail)?);
    let request = GetBundleRequest {
        output_mask: Some(BundleMask {
            jwt_authorities: true,
            ..BundleMask::default()
        }),
    };
    let bundle = tokio::time::timeout(CALL_TIMEOUT, client.get_bundle(request))
        .await
        .map_err(|_| fail(format!("no answer within {CALL_TIMEOUT:?}")))?
        .map_err(|status| fail(spire_common::cli::client::format_status(&status)))?
        .into_inner();
    Ok(bundle
        .jwt_authorities
        .into_iter()
        .map(|a| JwtAuthority {
            key_id: a.key_id,
            public_key_der: a.public_key,
            expires_at: Some(a.expires_at),
        })
        .collect())
}

/// FetchJWTBundles (the first message of the stream) and the bundle of `trust_domain` in it.
async fn workload_api(
    socket: PathBuf,
    trust_domain: &TrustDomain,
) -> Result<Vec<JwtAuthority>, String> {
    let fail = |e: String| format!("Failed to fetch JWKS from the Workload API: {e}");
    let mut client = SpiffeWorkloadApiClient::new(unix_channel(socket).map_err(fail)?);
    let mut request = tonic::Request::new(JwtBundlesRequest {});
    request.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let first = tokio::time::timeout(CALL_TIMEOUT, async {
        let mut stream = client.fetch_jwt_bundles(request).await?.into_inner();
        stream.message().await
    })
    .await
    .map_err(|_| fail(format!("no answer within {CALL_TIMEOUT:?}")))?
    .map_err(|status| fail(spire_common::cli::client::format_status(&status)))?
    .ok_or_else(|| fail("the stream ended without a message".to_owned()))?;
    let document = first
        .bundles
        .iter()
        .find(|(name, _)| {
            TrustDomain::new(name).is_ok_and(|td| td == *trust_domain)
                || name.as_str() == trust_domain.id_string()
        })
        .map(|(_, document)| document)
        .ok_or_else(|| {
            format!(
                "No bundle for trust domain in Workload API response: {}",
                trust_domain.id_string()
            )
        })?;
    jwt_authorities_of_jwks(trust_domain, document).map_err(|e| {
        format!("Failed to parse trust domain bundle received from the Workload API: {e}")
    })
}

/// The keys of a Workload API JWT bundle (a JWK Set whose keys carry no `use`, or
/// `jwt-svid`): every key with a `kid` is a JWT authority, as go-spiffe's jwtbundle reads it.
fn jwt_authorities_of_jwks(
    trust_domain: &TrustDomain,
    document: &[u8],
) -> Result<Vec<JwtAuthority>, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| e.to_string())?;
    if let Some(keys) = value.get_mut("keys").and_then(|k| k.as_array_mut()) {
        for key in keys.iter_mut() {
            if let Some(members) = key.as_object_mut() {
                members.insert("use".to_owned(), "jwt-svid".into());
                members.remove("x5c");
            }
        }
    } else if value.get("keys").is_some_and(serde_json::Value::is_null) {
        value["keys"] = serde_json::Value::Array(Vec::new());
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    let bundle =
        Bundle::from_spiffe_document(trust_domain.clone(), &bytes).map_err(|e| e.to_string())?;
    Ok(bundle.jwt_authorities)
}

/// The JWT authorities of the SPIFFE bundle document at `path`.
fn file(path: &std::path::Path) -> Result<Vec<JwtAuthority>, String> {
    let fail = |e: String| format!("Failed to load SPIFFE trust bundle {}: {e}", path.display());
    let document = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let trust_domain = TrustDomain::new("oidc.invalid").map_err(|e| fail(e.to_string()))?;
    let bundle =
        Bundle::from_spiffe_document(trust_domain, &document).map_err(|e| fail(e.to_string()))?;
    Ok(bundle.jwt_authorities)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use spire_core::keys::{KeyType, PrivateKey};

    use super::*;

    fn authority(kid: &str) -> JwtAuthority {
        JwtAuthority {
            key_id: kid.to_owned(),
            public_key_der: PrivateKey::generate(KeyType::EcP256)
                .unwrap()
                .public_key_der(),
            expires_at: Some(1),
        }
    }

    #[test]
    fn the_set_changes_only_when_the_authorities_do() {
        let source = KeySource::new();
        assert!(source.key_set().is_none());
        assert!(source.last_successful_poll().is_none());
        let a = authority("a");
        source.update(vec![a.clone()]);
        let first = source.key_set().unwrap();
        assert_eq!(first.keys.len(), 1);
        let polled = source.last_successful_poll().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        source.update(vec![a.clone()]);
        assert!(Arc::ptr_eq(&first, &source.key_set().unwrap()));
        assert!(source.last_successful_poll().unwrap() > polled);
        source.update(vec![a, authority("b")]);
        let second = source.key_set().unwrap();
        assert_eq!(second.keys.len(), 2);
        assert_eq!(second.keys[1].kid.as_deref(), Some("b"));
    }

    #[test]
    fn malformed_keys_are_left_out() {
        let source = KeySource::new();
        let bad = JwtAuthority {
            key_id: "bad".to_owned(),
            public_key_der: vec![1, 2, 3],
            expires_at: None,
        };
        source.update(vec![bad, authority("good")]);
        let set = source.key_set().unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("good"));
    }

    #[test]
    fn workload_api_bundles_without_use_are_read() {
        let td = TrustDomain::new("example.org").unwrap();
        let a = authority("k");
        let mut bundle = Bundle::new(td.clone());
        bundle.add_jwt_authority(a.clone()).unwrap();
        let document = bundle.to_spiffe_document().unwrap();
        let stripped = document.replace("\"use\": \"jwt-svid\",", "");
        assert!(!stripped.contains("\"use\""));
        let read = jwt_authorities_of_jwks(&td, stripped.as_bytes()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].public_key_der, a.public_key_der);
        assert!(
            jwt_authorities_of_jwks(&td, b"{\"keys\": null}")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn files_are_read_and_failures_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        let error = file(&path).unwrap_err();
        assert!(error.contains("bundle.json"), "{error}");
        std::fs::write(&path, "{\"keys\": []}").unwrap();
        assert!(file(&path).unwrap().is_empty());
    }
}
