//! An external UpstreamAuthority (`plugin_cmd`): a spire-plugin-sdk plugin answering
//! `spire.plugin.server.upstreamauthority.v1.UpstreamAuthority`.
//!
//! As upstream's `UpstreamClient`: `MintX509CAAndSubscribe` gives the CA chain and the
//! upstream roots in its first response and keeps streaming root updates; a new mint replaces
//! the previous stream. `PublishJWTKeyAndSubscribe` likewise gives the upstream JWT keys and
//! then their updates. `SubscribeToLocalBundle` is opened on the first poll and given up for
//! good when the plugin answers Unimplemented. Every update is kept here and handed to the CA
//! manager by [`UpstreamAuthority::upstream_bundle`] on its next poll.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use spire_common::plugin_host::LoadedPlugin;
use spire_proto::spire::api::types;
use spire_proto::spire::plugin::server::upstreamauthority::v1 as pb;
use tokio::task::JoinHandle;
use tonic::Code;

use super::{MintedX509Ca, UpstreamAuthority, UpstreamAuthorityError, UpstreamBundle};
use crate::plugins::sdk_types::{from_plugin_jwt_keys, from_plugin_x509, to_plugin_jwt_key};

/// The gRPC service an UpstreamAuthority plugin implements.
pub const SERVICE: &str = "spire.plugin.server.upstreamauthority.v1.UpstreamAuthority";

type Client = pb::upstream_authority_client::UpstreamAuthorityClient<tonic::transport::Channel>;

/// What the plugin's streams said last.
#[derive(Debug, Default)]
struct Streamed {
    /// The upstream roots (first known from a mint).
    x509_roots: Option<Vec<types::X509Certificate>>,
    /// The upstream JWT keys (first known from a publish).
    jwt_keys: Option<Vec<types::JwtKey>>,
}

/// Whether the local-bundle stream runs.
#[derive(Debug, Default)]
enum LocalBundle {
    #[default]
    NotStarted,
    Running(JoinHandle<()>),
    Unsupported,
}

/// A loaded external UpstreamAuthority.
pub struct ExternalUpstreamAuthority {
    name: &'static str,
    plugin: Arc<LoadedPlugin>,
    streamed: Arc<Mutex<Streamed>>,
    mint_stream: Mutex<Option<JoinHandle<()>>>,
    jwt_stream: Mutex<Option<JoinHandle<()>>>,
    local_bundle: Mutex<LocalBundle>,
}

impl std::fmt::Debug for ExternalUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalUpstreamAuthority")
            .field("name", &self.name)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ExternalUpstreamAuthority {
    /// Wraps a plugin loaded with [`SERVICE`]. The name is leaked once: the trait hands out
    /// `&'static str`, and a server has at most one UpstreamAuthority.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            name: Box::leak(plugin.name().to_owned().into_boxed_str()),
            plugin,
            streamed: Arc::default(),
            mint_stream: Mutex::default(),
            jwt_stream: Mutex::default(),
            local_bundle: Mutex::default(),
        }
    }

    fn client(&self) -> Client {
        Client::new(self.plugin.channel())
    }

    fn error(&self, status: &tonic::Status) -> UpstreamAuthorityError {
        UpstreamAuthorityError::Upstream(format!(
            "upstreamauthority({}): {}",
            self.name,
            status.message()
        ))
    }

    fn internal(&self, message: &str) -> UpstreamAuthorityError {
        UpstreamAuthorityError::Upstream(format!("upstreamauthority({}): {message}", self.name))
    }

    /// Opens `SubscribeToLocalBundle` once; Unimplemented (every plugin not following a
    /// local bundle) turns it off for good, other failures are retried on the next poll.
    async fn ensure_local_bundle_stream(&self) {
        {
            let state = lock(&self.local_bundle);
            match &*state {
                LocalBundle::Unsupported => return,
                LocalBundle::Running(task) if !task.is_finished() => return,
                _ => {}
            }
        }
        let mut client = self.client();
        let opened = client
            .subscribe_to_local_bundle(pb::SubscribeToLocalBundleRequest {})
            .await;
        let mut stream = match opened {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => {
                *lock(&self.local_bundle) = LocalBundle::Unsupported;
                return;
            }
            Err(status) => {
                tracing::warn!(plugin_name = self.name, error = %status.message(), "Failed to subscribe to the local bundle of the upstream authority; retrying");
                return;
            }
        };
        let streamed = self.streamed.clone();
        let name = self.name;
        let task = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        let roots = from_plugin_x509(update.upstream_x509_roots);
                        match from_plugin_jwt_keys(update.upstream_jwt_keys) {
                            Ok(keys) if !roots.is_empty() => {
                                let mut s = lock(&streamed);
                                s.x509_roots = Some(roots);
                                s.jwt_keys = Some(keys);
                            }
                            Ok(_) => tracing::warn!(
                                plugin_name = name,
                                "Failed to parse an X.509 root update from the upstream authority plugin: missing upstream X.509 roots. Please report this bug."
                            ),
                            Err(e) => {
                                tracing::warn!(plugin_name = name, error = %e, "Failed to parse a JWT key update from the upstream authority plugin. Please report this bug.")
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(status) if status.code() == Code::Unimplemented => return,
                    Err(status) => {
                        tracing::error!(plugin_name = name, error = %status.message(), "The upstream authority plugin stopped streaming authorities updates prematurely. Please report this bug. Will retry later.");
                        return;
                    }
                }
            }
        });
        *lock(&self.local_bundle) = LocalBundle::Running(task);
    }
}

impl Drop for ExternalUpstreamAuthority {
    fn drop(&mut self) {
        for stream in [&self.mint_stream, &self.jwt_stream] {
            if let Some(task) = lock(stream).take() {
                task.abort();
            }
        }
        if let LocalBundle::Running(task) = &*lock(&self.local_bundle) {
            task.abort();
        }
    }
}

#[async_trait]
impl UpstreamAuthority for ExternalUpstreamAuthority {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        preferred_ttl: std::time::Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError> {
        let request = pb::MintX509caRequest {
            csr: csr_der.to_vec(),
            preferred_ttl: i32::try_from(preferred_ttl.as_secs()).unwrap_or(i32::MAX),
        };
        let mut stream = self
            .client()
            .mint_x509ca_and_subscribe(request)
            .await
            .map_err(|s| self.error(&s))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|s| self.error(&s))?
            .ok_or_else(|| self.internal("plugin closed stream unexpectedly"))?;
        if first.x509_ca_chain.is_empty() {
            return Err(self.internal("plugin response missing X.509 CA chain"));
        }
        let roots = from_plugin_x509(first.upstream_x509_roots);
        if roots.is_empty() {
            return Err(self.internal("plugin response missing upstream X.509 roots"));
        }
        let x509_ca_chain = first.x509_ca_chain.into_iter().map(|c| c.asn1).collect();
        lock(&self.streamed).x509_roots = Some(roots.clone());

        let streamed = self.streamed.clone();
        let name = self.name;
        let task = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        if !update.x509_ca_chain.is_empty() {
                            tracing::warn!(
                                plugin_name = name,
                                "Failed to parse an X.509 root update from the upstream authority plugin: it has an X.509 CA chain after the first response. Please report this bug."
                            );
                            continue;
                        }
                        let roots = from_plugin_x509(update.upstream_x509_roots);
                        if roots.is_empty() {
                            tracing::warn!(
                                plugin_name = name,
                                "Failed to parse an X.509 root update from the upstream authority plugin: missing upstream X.509 roots. Please report this bug."
                            );
                            continue;
                        }
                        tracing::debug!(
                            plugin_name = name,
                            roots = roots.len(),
                            "Upstream X.509 roots updated"
                        );
                        lock(&streamed).x509_roots = Some(roots);
                    }
                    Ok(None) => return,
                    Err(status) if status.code() == Code::Cancelled => return,
                    Err(status) => {
                        tracing::error!(plugin_name = name, error = %status.message(), "The upstream authority plugin stopped streaming X.509 root updates prematurely. Please report this bug. Will retry later.");
                        return;
                    }
                }
            }
        });
        if let Some(previous) = lock(&self.mint_stream).replace(task) {
            previous.abort();
        }
        Ok(MintedX509Ca {
            x509_ca_chain,
            upstream_x509_roots: roots,
        })
    }

    async fn publish_jwt_key(
        &self,
        key: types::JwtKey,
    ) -> Result<Option<Vec<types::JwtKey>>, UpstreamAuthorityError> {
        let request = pb::PublishJwtKeyRequest {
            jwt_key: Some(to_plugin_jwt_key(&key)),
        };
        let opened = self.client().publish_jwt_key_and_subscribe(request).await;
        let mut stream = match opened {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => return Ok(None),
            Err(status) => return Err(self.error(&status)),
        };
        let first = match stream.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return Err(self.internal("plugin closed stream unexpectedly")),
            Err(status) if status.code() == Code::Unimplemented => return Ok(None),
            Err(status) => return Err(self.error(&status)),
        };
        let keys = from_plugin_jwt_keys(first.upstream_jwt_keys)
            .map_err(|e| self.internal(&format!("invalid plugin response: {e}")))?;
        lock(&self.streamed).jwt_keys = Some(keys.clone());

        let streamed = self.streamed.clone();
        let name = self.name;
        let task = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(update)) => match from_plugin_jwt_keys(update.upstream_jwt_keys) {
                        Ok(keys) => lock(&streamed).jwt_keys = Some(keys),
                        Err(e) => {
                            tracing::warn!(plugin_name = name, error = %e, "Failed to parse a JWT key update from the upstream authority plugin. Please report this bug.")
                        }
                    },
                    Ok(None) => return,
                    Err(status) if status.code() == Code::Cancelled => return,
                    Err(status) => {
                        tracing::error!(plugin_name = name, error = %status.message(), "The upstream authority plugin stopped streaming JWT key updates prematurely. Please report this bug. Will retry later.");
                        return;
                    }
                }
            }
        });
        if let Some(previous) = lock(&self.jwt_stream).replace(task) {
            previous.abort();
        }
        Ok(Some(keys))
    }

    async fn upstream_bundle(&self) -> Result<Option<UpstreamBundle>, UpstreamAuthorityError> {
        self.ensure_local_bundle_stream().await;
        let streamed = lock(&self.streamed);
        // Without known roots (no mint yet) there is nothing to sync: an empty root set
        // would read as "the upstream dropped every root".
        let Some(x509_roots) = &streamed.x509_roots else {
            return Ok(None);
        };
        Ok(Some(UpstreamBundle {
            x509_authorities: x509_roots.clone(),
            jwt_authorities: streamed.jwt_keys.clone().unwrap_or_default(),
        }))
    }
}
