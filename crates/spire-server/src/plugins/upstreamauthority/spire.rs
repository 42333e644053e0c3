//! The `spire` UpstreamAuthority (nested SPIRE): this server's CA is signed by another SPIRE
//! server of the same trust domain, as upstream's `pkg/server/plugin/upstreamauthority/spire`.
//!
//! The server gets its own X509-SVID from the local agent's Workload API (the agent's entry
//! for this server must be `-downstream`), and with it calls the upstream server over mTLS:
//! `svid.v1.NewDownstreamX509CA` signs our intermediate, `bundle.v1.PublishJWTAuthority`
//! publishes our JWT keys, and `bundle.v1.GetBundle` (polled by the CA manager, as upstream's
//! plugin polls every 5 s) brings new and tainted upstream roots into our bundle.
//!
//! The SVID and the bundle the upstream server is checked against follow the Workload API
//! stream, so a rotation at the agent is picked up for the next connection.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::Deserialize;
use spire_common::tls::{SpiffeIdVerifier, provider};
use spire_core::config::de;
use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::server::bundle::v1 as bundlev1;
use spire_proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use spire_proto::spire::api::server::svid::v1 as svidv1;
use spire_proto::spire::api::server::svid::v1::svid_client::SvidClient;
use spire_proto::spire::api::types;
use spire_proto::workload::X509svidRequest;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::sync::{OnceCell, watch};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{MintedX509Ca, UpstreamAuthority, UpstreamAuthorityError, UpstreamBundle};
use crate::config::ConfigError;

/// The plugin's name in configs.
pub const NAME: &str = "spire";

/// How long one call to the upstream server may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dialing the upstream server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait between Workload API reconnections.
const WORKLOAD_RETRY: Duration = Duration::from_secs(1);
/// How often a wait for the first SVID says it is still waiting.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    server_address: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    server_port: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    workload_api_socket: Option<String>,
    #[serde(default, deserialize_with = "de::opt_block")]
    experimental: Option<ExperimentalData>,
}

/// `experimental { }` of the plugin data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentalData {
    #[serde(default, deserialize_with = "de::opt_string")]
    workload_api_named_pipe_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    require_pq_kem: Option<bool>,
}

/// The validated settings of `UpstreamAuthority "spire"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpireUpstreamAuthorityConfig {
    /// `server_address`: host name or IP of the upstream SPIRE server.
    pub server_address: String,
    /// `server_port`: its TCP port.
    pub server_port: u16,
    /// `workload_api_socket`: the local agent's Workload API socket.
    pub workload_api_socket: PathBuf,
    /// `experimental.require_pq_kem`: only the X25519MLKEM768 key exchange toward the
    /// upstream server.
    pub require_pq_kem: bool,
}

impl SpireUpstreamAuthorityConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let required = |key: &str, value: Option<String>, example: &str| {
            value.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    format!("{path}.{key}"),
                    format!("{key} is required: set it, e.g. {key} = {example}"),
                )
            })
        };
        let server_address = required(
            "server_address",
            data.server_address,
            "\"spire-server.example.org\"",
        )?;
        let port_text = required("server_port", data.server_port, "\"8081\"")?;
        let server_port = port_text.trim().parse::<u16>().map_err(|_| {
            ConfigError::invalid(
                file,
                format!("{path}.server_port"),
                format!("server_port {port_text:?} is not a TCP port number (1-65535)"),
            )
        })?;
        let experimental = data.experimental.unwrap_or_default();
        if experimental
            .workload_api_named_pipe_name
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ConfigError::invalid(
                file,
                format!("{path}.experimental.workload_api_named_pipe_name"),
                "workload_api_named_pipe_name is not supported in this platform; please use \
                 workload_api_socket instead",
            ));
        }
        let socket = required(
            "workload_api_socket",
            data.workload_api_socket,
            "\"/tmp/spire-agent/public/api.sock\"",
        )?;
        let workload_api_socket = std::path::absolute(&socket).map_err(|e| {
            ConfigError::invalid(
                file,
                format!("{path}.workload_api_socket"),
                format!("cannot make {socket:?} an absolute path: {e}"),
            )
        })?;
        Ok(Self {
            server_address,
            server_port,
            workload_api_socket,
            require_pq_kem: experimental.require_pq_kem.unwrap_or(false),
        })
    }
}

/// The X509-SVID the local agent gave this server, with the bundle of our trust domain.
struct WorkloadSvid {
    chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
    bundle: Vec<Vec<u8>>,
}

/// The latest Workload API SVID with its sequence number (`None` until the first arrives).
type LatestSvid = Option<(u64, Arc<WorkloadSvid>)>;

/// The connection to the upstream server, rebuilt when the Workload API SVID changes.
struct Connection {
    generation: u64,
    channel: Channel,
}

/// Signs our intermediate with the upstream SPIRE server.
pub struct SpireUpstreamAuthority {
    config: SpireUpstreamAuthorityConfig,
    server_id: String,
    /// Latest SVID from the Workload API, numbered so connections know when to redial.
    svid: OnceCell<watch::Receiver<LatestSvid>>,
    connection: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for SpireUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpireUpstreamAuthority")
            .field("config", &self.config)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

fn upstream_error(what: &str, status: &tonic::Status) -> UpstreamAuthorityError {
    UpstreamAuthorityError::Upstream(format!(
        "upstreamauthority(spire): {what}: {}",
        spire_common::cli::client::format_status(status)
    ))
}

impl SpireUpstreamAuthority {
    /// The plugin for our `trust_domain`; nothing is dialed until the first request. The
    /// upstream server must present `spiffe://<trust_domain>/spire/server`.
    pub fn new(
        config: SpireUpstreamAuthorityConfig,
        trust_domain: &TrustDomain,
    ) -> Result<Self, UpstreamAuthorityError> {
        if config.require_pq_kem {
            // Checked now so a configuration we cannot honour fails at start.
            pq_provider()?;
        }
        tracing::info!(
            require_pq_kem = config.require_pq_kem,
            "upstreamauthority(spire): TLS policy"
        );
        Ok(Self {
            server_id: format!("spiffe://{}/spire/server", trust_domain.name()),
            config,
            svid: OnceCell::new(),
            connection: Mutex::new(None),
        })
    }

    /// Starts following the Workload API (once) and waits for the first SVID, as upstream's
    /// X509Source does; logs while it waits so an operator sees what is missing.
    async fn current_svid(&self) -> (u64, Arc<WorkloadSvid>) {
        let receiver = self
            .svid
            .get_or_init(|| async {
                let (tx, rx) = watch::channel(None);
                tokio::spawn(follow_workload_api(
                    self.config.workload_api_socket.clone(),
                    tx,
                ));
                rx
            })
            .await;
        let mut receiver = receiver.clone();
        loop {
            if let Some(current) = receiver.borrow_and_update().clone() {
                return current;
            }
            match tokio::time::timeout(WAITING_LOG_INTERVAL, receiver.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // The follower never stops on its own; wait as if it were slow.
                    tokio::time::sleep(WAITING_LOG_INTERVAL).await;
                }
                Err(_) => tracing::warn!(
                    socket = %self.config.workload_api_socket.display(),
                    "upstreamauthority(spire): still waiting for an X509-SVID from the \
                     Workload API; the agent needs a registration entry for this server \
                     created with -downstream"
                ),
            }
        }
    }

    /// The channel to the upstream server, redialed after the Workload API SVID changed.
    async fn channel(&self) -> Result<Channel, UpstreamAuthorityError> {
        let (generation, svid) = self.current_svid().await;
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = connection.as_ref()
            && existing.generation == generation
        {
            return Ok(existing.channel.clone());
        }
        let tls = Arc::new(self.client_config(&svid)?);
        let host = self.config.server_address.clone();
        let port = self.config.server_port;
        let uri = format!("http://{}:{port}", bracket_ipv6(&host));
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|_| {
                UpstreamAuthorityError::Config(format!(
                    "upstreamauthority(spire): invalid server address {uri:?}"
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let tls = Arc::clone(&tls);
            let host = host.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let name = ServerName::try_from(host)
                    .or_else(|_| ServerName::try_from("spire-server".to_owned()))
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }));
        *connection = Some(Connection {
            generation,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// mTLS with our SVID; the upstream server must chain to the Workload API bundle and be
    /// `spiffe://<td>/spire/server` (go-spiffe's `MTLSClientConfig` with `AuthorizeID`).
    fn client_config(
        &self,
        svid: &WorkloadSvid,
    ) -> Result<rustls::ClientConfig, UpstreamAuthorityError> {
        let tls_error = |e: String| {
            UpstreamAuthorityError::Upstream(format!("upstreamauthority(spire): TLS: {e}"))
        };
        let verifier = SpiffeIdVerifier::new(
            Some(&svid.bundle),
            &self.server_id,
            "upstream SPIRE server",
            "the bundle comes from the Workload API at workload_api_socket",
        )
        .map_err(tls_error)?;
        let crypto = if self.config.require_pq_kem {
            pq_provider()?
        } else {
            provider()
        };
        let mut config = rustls::ClientConfig::builder_with_provider(crypto)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(
                svid.chain
                    .iter()
                    .cloned()
                    .map(CertificateDer::from)
                    .collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_pkcs8.clone())),
            )
            .map_err(|e| tls_error(format!("the Workload API SVID is unusable: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Drops the connection after a failed call so the next one dials again.
    fn reset(&self) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    async fn get_bundle(&self) -> Result<types::Bundle, UpstreamAuthorityError> {
        let mut client = BundleClient::new(self.channel().await?);
        client
            .get_bundle(bundlev1::GetBundleRequest { output_mask: None })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| {
                self.reset();
                upstream_error("failed to fetch bundle from upstream server", &e)
            })
    }
}

/// The crypto provider with X25519MLKEM768 as the only key exchange, upstream's
/// `require_pq_kem` policy (shared with the server-level setting).
fn pq_provider() -> Result<Arc<rustls::crypto::CryptoProvider>, UpstreamAuthorityError> {
    let crypto = spire_common::tls::pq_kem_provider();
    if crypto.kx_groups.is_empty() {
        return Err(UpstreamAuthorityError::Config(
            "upstreamauthority(spire): experimental.require_pq_kem = true needs the \
             X25519MLKEM768 key exchange, which this build's TLS library does not offer; \
             remove require_pq_kem"
                .into(),
        ));
    }
    Ok(Arc::new(crypto))
}

/// `::1` -> `[::1]`, so an IPv6 `server_address` forms a valid URI.
fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Follows FetchX509SVID on the agent's socket forever, publishing the first SVID of each
/// response; reconnects after errors.
async fn follow_workload_api(socket: PathBuf, tx: watch::Sender<LatestSvid>) {
    let mut generation = 0u64;
    loop {
        if tx.is_closed() {
            return;
        }
        match fetch_stream(&socket, &tx, &mut generation).await {
            Ok(()) => tracing::debug!("upstreamauthority(spire): Workload API stream ended"),
            Err(e) => tracing::debug!(
                socket = %socket.display(),
                "upstreamauthority(spire): Workload API: {e}"
            ),
        }
        tokio::time::sleep(WORKLOAD_RETRY).await;
    }
}

async fn fetch_stream(
    socket: &std::path::Path,
    tx: &watch::Sender<LatestSvid>,
    generation: &mut u64,
) -> Result<(), String> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = client
        .fetch_x509svid(request)
        .await
        .map_err(|e| spire_common::cli::client::format_status(&e))?
        .into_inner();
    while let Some(response) = stream
        .message()
        .await
        .map_err(|e| spire_common::cli::client::format_status(&e))?
    {
        let Some(svid) = response.svids.first() else {
            continue;
        };
        let parsed = (|| {
            let chain = spire_core::x509::parse_certificates(&svid.x509_svid)
                .map_err(|e| format!("bad X509-SVID: {e}"))?;
            let bundle = spire_core::x509::parse_certificates(&svid.bundle)
                .map_err(|e| format!("bad bundle: {e}"))?;
            Ok::<_, String>(WorkloadSvid {
                chain,
                key_pkcs8: svid.x509_svid_key.clone(),
                bundle,
            })
        })();
        match parsed {
            Ok(parsed) => {
                *generation = generation.wrapping_add(1);
                tracing::debug!(
                    spiffe_id = %svid.spiffe_id,
                    "upstreamauthority(spire): X509-SVID received from the Workload API"
                );
                tx.send_replace(Some((*generation, Arc::new(parsed))));
            }
            Err(e) => tracing::warn!("upstreamauthority(spire): Workload API sent an {e}"),
        }
    }
    Ok(())
}

#[async_trait]
impl UpstreamAuthority for SpireUpstreamAuthority {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        preferred_ttl: Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError> {
        let mut client = SvidClient::new(self.channel().await?);
        let response = client
            .new_downstream_x509ca(svidv1::NewDownstreamX509caRequest {
                csr: csr_der.to_vec(),
                preferred_ttl: i32::try_from(preferred_ttl.as_secs()).unwrap_or(i32::MAX),
            })
            .await
            .map_err(|e| {
                self.reset();
                upstream_error("unable to request a new Downstream X509CA", &e)
            })?
            .into_inner();
        for der in response
            .ca_cert_chain
            .iter()
            .chain(&response.x509_authorities)
        {
            spire_core::x509::certificate_validity(der).map_err(|e| {
                UpstreamAuthorityError::Upstream(format!(
                    "upstreamauthority(spire): the upstream server sent an unparsable \
                     certificate: {e}"
                ))
            })?;
        }
        // As upstream: the downstream response has no tainted bits, so the roots come from
        // GetBundle.
        let bundle = self.get_bundle().await?;
        Ok(MintedX509Ca {
            x509_ca_chain: response.ca_cert_chain,
            upstream_x509_roots: bundle.x509_authorities,
        })
    }

    async fn publish_jwt_key(
        &self,
        key: types::JwtKey,
    ) -> Result<Option<Vec<types::JwtKey>>, UpstreamAuthorityError> {
        let mut client = BundleClient::new(self.channel().await?);
        let response = client
            .publish_jwt_authority(bundlev1::PublishJwtAuthorityRequest {
                jwt_authority: Some(key),
            })
            .await
            .map_err(|e| {
                self.reset();
                upstream_error("failed to push JWT authority", &e)
            })?
            .into_inner();
        Ok(Some(response.jwt_authorities))
    }

    async fn upstream_bundle(&self) -> Result<Option<UpstreamBundle>, UpstreamAuthorityError> {
        let bundle = self.get_bundle().await?;
        Ok(Some(UpstreamBundle {
            x509_authorities: bundle.x509_authorities,
            jwt_authorities: bundle.jwt_authorities,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn parse(json: &str) -> Result<SpireUpstreamAuthorityConfig, String> {
        let data: Data = serde_json::from_str(json).map_err(|e| e.to_string())?;
        SpireUpstreamAuthorityConfig::from_data("server.conf", "plugins.x", data)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn upstream_example_config_loads() {
        let config = parse(
            r#"{"server_address": "upstream-spire-server", "server_port": "8081",
                "workload_api_socket": "/tmp/spire-agent/public/api.sock"}"#,
        )
        .unwrap();
        assert_eq!(config.server_address, "upstream-spire-server");
        assert_eq!(config.server_port, 8081);
        assert_eq!(
            config.workload_api_socket,
            PathBuf::from("/tmp/spire-agent/public/api.sock")
        );
        assert!(!config.require_pq_kem);
        // A number works as well as a string, and the experimental block is read.
        let config = parse(
            r#"{"server_address": "h", "server_port": 8081, "workload_api_socket": "/s",
                "experimental": {"require_pq_kem": true}}"#,
        )
        .unwrap();
        assert_eq!(config.server_port, 8081);
        assert!(config.require_pq_kem);
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (json, key) in [
            (
                r#"{"server_port": "8081", "workload_api_socket": "/s"}"#,
                "server_address",
            ),
            (
                r#"{"server_address": "h", "workload_api_socket": "/s"}"#,
                "server_port",
            ),
            (
                r#"{"server_address": "h", "server_port": "80x", "workload_api_socket": "/s"}"#,
                "server_port",
            ),
            (
                r#"{"server_address": "h", "server_port": "8081"}"#,
                "workload_api_socket",
            ),
            (
                r#"{"server_address": "h", "server_port": "8081", "workload_api_socket": "/s",
                    "experimental": {"workload_api_named_pipe_name": "p"}}"#,
                "workload_api_named_pipe_name",
            ),
            (
                r#"{"server_address": "h", "server_port": "8081", "workload_api_socket": "/s",
                    "serveraddress": "x"}"#,
                "serveraddress",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn pq_kem_policy_is_available() {
        let crypto = pq_provider().unwrap();
        assert_eq!(crypto.kx_groups.len(), 1);
    }
}
