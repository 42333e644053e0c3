//! WorkloadAttestor `k8s`: the calling process's pod and container, found from its cgroups
//! ([`containerinfo`](super::containerinfo)), looked up in the kubelet's `/pods` list, and
//! turned into upstream's `k8s:` selectors (`doc/plugin_agent_workloadattestor_k8s.md`). A
//! process in no container gets no selectors and no error; a container the kubelet does not
//! list yet is polled for until `max_poll_attempts`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::List;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use spire_core::selector::Selector;

use super::containerinfo::{Locator, legacy};
use super::{AttestError, PeerProcess, WorkloadAttestor};
use spire_common::http_get;

/// The plugin name and selector type.
pub const PLUGIN_NAME: &str = "k8s";

/// The kubelet's secure port unless configured.
pub const DEFAULT_SECURE_PORT: u16 = 10250;
/// The service account files of the agent's own pod.
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The service account token of the agent's own pod.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The environment variable holding the node name (the downward API sets it).
pub const DEFAULT_NODE_NAME_ENV: &str = "MY_NODE_NAME";

/// Largest `/pods` answer read (a node's pod list is far smaller).
const MAX_POD_LIST_BYTES: usize = 64 * 1024 * 1024;
/// How long one `/pods` request may take, as upstream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How the plugin reaches the kubelet, as the config resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletEndpoint {
    /// `kubelet_read_only_port`: plain HTTP to 127.0.0.1, no credentials.
    ReadOnly {
        /// The port.
        port: u16,
    },
    /// `kubelet_secure_port`: HTTPS to the node (or 127.0.0.1) with credentials.
    Secure {
        /// The port.
        port: u16,
        /// `skip_kubelet_verification`: accept any kubelet certificate.
        skip_verification: bool,
        /// `kubelet_ca_path`.
        ca_path: PathBuf,
        /// How the agent authenticates.
        credentials: KubeletCredentials,
    },
}

/// The agent's credentials towards the kubelet's secure port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletCredentials {
    /// `use_anonymous_authentication`.
    Anonymous,
    /// `certificate_path` and `private_key_path`: a TLS client certificate.
    Certificate {
        /// The certificate (PEM).
        certificate_path: PathBuf,
        /// Its key (PEM).
        private_key_path: PathBuf,
    },
    /// `token_path`: a bearer token, trimmed, re-read at every reload.
    Token {
        /// The token file.
        token_path: PathBuf,
    },
}

/// `plugin_data` of `WorkloadAttestor "k8s"`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sAttestorConfig {
    /// The kubelet and how to talk to it.
    pub endpoint: KubeletEndpoint,
    /// The node name the kubelet's certificate is checked against (and its host); `None`
    /// means 127.0.0.1, with the certificate checked without a host name.
    pub node_name: Option<String>,
    /// `max_poll_attempts` (default 60).
    pub max_poll_attempts: u32,
    /// `poll_retry_interval` (default 500 ms); the pod list is cached for half of it.
    pub poll_retry_interval: Duration,
    /// `reload_interval` (default 1 min): how often credentials are read again.
    pub reload_interval: Duration,
    /// `disable_container_selectors`: pod selectors only.
    pub disable_container_selectors: bool,
    /// `verbose_container_locator_logs`: log where each caller was located at info level.
    pub verbose_container_locator_logs: bool,
    /// `use_new_container_locator` (default true); false uses the deprecated legacy
    /// locator, as upstream still allows.
    pub use_new_container_locator: bool,
    /// Where `/proc` is (tests point it at a fake tree).
    pub proc_root: PathBuf,
}

/// The `k8s` workload attestor.
pub struct K8sAttestor {
    config: K8sAttestorConfig,
    locator: Locator,
    kubelet: Mutex<Option<(Instant, Arc<KubeletClient>)>>,
    pods: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Pod>>)>>,
}

impl std::fmt::Debug for K8sAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sAttestor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl K8sAttestor {
    /// An attestor with validated settings; the kubelet client is built now, so missing
    /// credential files fail the agent's start with their names, as upstream's Configure.
    pub fn new(config: K8sAttestorConfig) -> Result<Self, String> {
        if !config.use_new_container_locator {
            tracing::warn!(
                "Using the legacy container locator. This option will removed in a future release."
            );
        }
        let client = KubeletClient::build(&config)?;
        Ok(Self {
            locator: Locator::new(&config.proc_root),
            config,
            kubelet: Mutex::new(Some((Instant::now(), Arc::new(client)))),
            pods: tokio::sync::Mutex::new(None),
        })
    }

    /// The kubelet client, rebuilt (credentials and CA read again) once `reload_interval`
    /// has passed; a failed rebuild keeps the previous client and is retried next call.
    fn client(&self) -> Result<Arc<KubeletClient>, String> {
        let mut slot = self.kubelet.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built, client)) = slot.as_ref()
            && (built.elapsed() < self.config.reload_interval
                || matches!(self.config.endpoint, KubeletEndpoint::ReadOnly { .. }))
        {
            return Ok(Arc::clone(client));
        }
        match KubeletClient::build(&self.config) {
            Ok(client) => {
                let client = Arc::new(client);
                *slot = Some((Instant::now(), Arc::clone(&client)));
                Ok(client)
            }
            // The previous client is kept, and the reload tried again on the next call, as
            // upstream's.
            Err(e) => match slot.as_ref() {
                Some((_, client)) => {
                    tracing::warn!(error = %e, "Unable to load kubelet client");
                    Ok(Arc::clone(client))
                }
                None => Err(e),
            },
        }
    }

    /// The kubelet's pods, cached for half of `poll_retry_interval`.
    async fn pods(&self) -> Result<Arc<Vec<Pod>>, String> {
        let mut cached = self.pods.lock().await;
        if let Some((at, pods)) = cached.as_ref()
            && at.elapsed() < self.config.poll_retry_interval / 2
        {
            return Ok(Arc::clone(pods));
        }
        let pods = Arc::new(self.client()?.pod_list().await?);
        *cached = Some((Instant::now(), Arc::clone(&pods)));
        Ok(pods)
    }

    /// Selectors of the pod listing `container_id` (only `pod_uid`'s when known); `None`
    /// when the kubelet does not list it yet.
    fn find(
        &self,
        pods: &[Pod],
        pod_uid: &str,
        container_id: &str,
    ) -> Result<Option<Vec<String>>, AttestError> {
        let mut found = None;
        for pod in pods {
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            if uid.is_empty() || (!pod_uid.is_empty() && uid != pod_uid) {
                continue;
            }
            let status = pod.status.as_ref();
            let container = status
                .into_iter()
                .flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                })
                .find(|c| matches_container(c, container_id));
            let selectors = match container {
                Some(container) => {
                    let mut values = pod_selectors(pod);
                    if !self.config.disable_container_selectors {
                        values.extend(container_selectors(container));
                    }
                    values
                }
                None if !pod_uid.is_empty() && self.config.disable_container_selectors => {
                    pod_selectors(pod)
                }
                None => continue,
            };
            if found.is_some() {
                tracing::warn!(container_id, "Two pods found with same container Id");
                return Err(AttestError::Internal(
                    "workloadattestor(k8s): two pods found with same container Id".to_owned(),
                ));
            }
            found = Some(selectors);
        }
        Ok(found)
    }
}

/// Whether a status's `containerID` (`containerd://<id>`, `docker://<id>`, `cri-o://<id>`)
/// names `container_id`.
fn matches_container(status: &ContainerStatus, container_id: &str) -> bool {
    status
        .container_id
        .as_deref()
        .and_then(|id| id.split_once("://"))
        .is_some_and(|(_, id)| id == container_id)
}

/// Every distinct `imageID` and `image` of some statuses (empty values included, as
/// upstream's set does).
fn images<'a>(statuses: impl Iterator<Item = &'a ContainerStatus>) -> BTreeSet<String> {
    statuses
        .flat_map(|s| [s.image_id.clone(), s.image.clone()])
        .collect()
}

/// The pod's selector values, in upstream's order.
fn pod_selectors(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let init = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or_default();
    let mut values = vec![
        format!(
            "sa:{}",
            spec.and_then(|s| s.service_account_name.as_deref())
                .unwrap_or_default()
        ),
        format!(
            "ns:{}",
            pod.metadata.namespace.as_deref().unwrap_or_default()
        ),
        format!(
            "node-name:{}",
            spec.and_then(|s| s.node_name.as_deref())
                .unwrap_or_default()
        ),
        format!(
            "pod-uid:{}",
            pod.metadata.uid.as_deref().unwrap_or_default()
        ),
        format!(
            "pod-name:{}",
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
        format!("pod-image-count:{}", containers.len()),
        format!("pod-init-image-count:{}", init.len()),
    ];
    values.extend(
        images(containers.iter())
            .into_iter()
            .map(|i| format!("pod-image:{i}")),
    );
    values.extend(
        images(init.iter())
            .into_iter()
            .map(|i| format!("pod-init-image:{i}")),
    );
    for (key, value) in pod.metadata.labels.iter().flatten() {
        values.push(format!("pod-label:{key}:{value}"));
    }
    for owner in pod.metadata.owner_references.iter().flatten() {
        values.push(format!("pod-owner:{}:{}", owner.kind, owner.name));
        values.push(format!("pod-owner-uid:{}:{}", owner.kind, owner.uid));
    }
    values
}

/// The matched container's selector values.
fn container_selectors(container: &ContainerStatus) -> Vec<String> {
    std::iter::once(format!("container-name:{}", container.name))
        .chain(
            images(std::iter::once(container))
                .into_iter()
                .map(|i| format!("container-image:{i}")),
        )
        .collect()
}

#[async_trait]
impl WorkloadAttestor for K8sAttestor {
    fn name(&self) -> &'static str {
        PLUGIN_NAME
    }

    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError> {
        let located = if self.config.use_new_container_locator {
            self.locator.locate(peer.pid)
        } else {
            legacy::locate(&self.config.proc_root, peer.pid)
        };
        let located =
            located.map_err(|e| AttestError::Internal(format!("workloadattestor(k8s): {e}")))?;
        if self.config.verbose_container_locator_logs {
            tracing::info!(
                pid = peer.pid,
                pod_uid = located.pod_uid,
                container_id = located.container_id,
                "Located the caller's container"
            );
        } else {
            tracing::debug!(
                pid = peer.pid,
                pod_uid = located.pod_uid,
                container_id = located.container_id,
                "Located the caller's container"
            );
        }
        if located.container_id.is_empty() {
            return Ok(Vec::new());
        }
        let mut last_error = None;
        for attempt in 1..=self.config.max_poll_attempts.max(1) {
            match self.pods().await {
                Ok(pods) => {
                    if let Some(values) =
                        self.find(&pods, &located.pod_uid, &located.container_id)?
                    {
                        return values
                            .into_iter()
                            .map(|v| {
                                Selector::new(PLUGIN_NAME, v).map_err(|e| {
                                    AttestError::Internal(format!(
                                        "workloadattestor(k8s): invalid selector: {e}"
                                    ))
                                })
                            })
                            .collect();
                    }
                    last_error = None;
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "Unable to get the pod list from the kubelet");
                    last_error = Some(e);
                }
            }
            if attempt < self.config.max_poll_attempts {
                tokio::time::sleep(self.config.poll_retry_interval).await;
            }
        }
        Err(AttestError::Internal(match last_error {
            Some(e) => format!("workloadattestor(k8s): {e}"),
            None => {
                tracing::warn!(
                    container_id = located.container_id,
                    pod_uid = located.pod_uid,
                    "Container id not found; giving up"
                );
                "workloadattestor(k8s): no selectors found after max poll attempts".to_owned()
            }
        }))
    }
}

/// A client for one kubelet, with the credentials read when it was built.
struct KubeletClient {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<String>,
    /// The TLS server name: the node name, or 127.0.0.1 (checked without a name).
    server_name: ServerName<'static>,
}

impl KubeletClient {
    fn build(config: &K8sAttestorConfig) -> Result<Self, String> {
        let node = config.node_name.clone().filter(|n| !n.is_empty());
        match &config.endpoint {
            KubeletEndpoint::ReadOnly { port } => Ok(Self {
                host: "127.0.0.1".to_owned(),
                port: *port,
                tls: None,
                token: None,
                server_name: ServerName::try_from("127.0.0.1")
                    .map_err(|e| e.to_string())?
                    .to_owned(),
            }),
            KubeletEndpoint::Secure {
                port,
                skip_verification,
                ca_path,
                credentials,
            } => {
                let host = node.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let verifier: Arc<dyn ServerCertVerifier> = if *skip_verification {
                    Arc::new(KubeletVerifier {
                        roots: None,
                        algorithms: provider.signature_verification_algorithms,
                    })
                } else {
                    let pem = std::fs::read(ca_path).map_err(|e| {
                        format!("unable to load kubelet CA: {}: {e}", ca_path.display())
                    })?;
                    let mut roots = rustls::RootCertStore::empty();
                    for cert in spire_core::pem::decode_certificates(&pem).map_err(|e| {
                        format!("unable to parse kubelet CA: {}: {e}", ca_path.display())
                    })? {
                        roots.add(CertificateDer::from(cert)).map_err(|e| {
                            format!("unable to parse kubelet CA: {}: {e}", ca_path.display())
                        })?;
                    }
                    let roots = Arc::new(roots);
                    if node.is_some() {
                        rustls::client::WebPkiServerVerifier::builder_with_provider(
                            roots,
                            Arc::clone(&provider),
                        )
                        .build()
                        .map_err(|e| format!("unable to load kubelet CA: {e}"))?
                    } else {
                        Arc::new(KubeletVerifier {
                            roots: Some(roots),
                            algorithms: provider.signature_verification_algorithms,
                        })
                    }
                };
                let builder = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier);
                let (tls, token) = match credentials {
                    KubeletCredentials::Anonymous => (builder.with_no_client_auth(), None),
                    KubeletCredentials::Certificate {
                        certificate_path,
                        private_key_path,
                    } => {
                        let (chain, key) = load_key_pair(certificate_path, private_key_path)?;
                        let tls = builder
                            .with_client_auth_cert(chain, key)
                            .map_err(|e| format!("unable to load keypair: {e}"))?;
                        (tls, None)
                    }
                    KubeletCredentials::Token { token_path } => {
                        let token = std::fs::read_to_string(token_path).map_err(|e| {
                            format!("unable to load token: {}: {e}", token_path.display())
                        })?;
                        (builder.with_no_client_auth(), Some(token.trim().to_owned()))
                    }
                };
                let mut tls = tls;
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                let server_name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("invalid node name {host:?}: {e}"))?;
                Ok(Self {
                    host,
                    port: *port,
                    tls: Some(Arc::new(tls)),
                    token,
                    server_name,
                })
            }
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/pods", self.port)
    }

    /// `GET /pods`, parsed; errors name the kubelet's URL.
    async fn pod_list(&self) -> Result<Vec<Pod>, String> {
        let url = self.url();
        let fetch = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("unable to perform request: {e}"))?;
            let stream: Box<dyn http_get::Connection> = match &self.tls {
                Some(tls) => Box::new(
                    tokio_rustls::TlsConnector::from(Arc::clone(tls))
                        .connect(self.server_name.clone(), tcp)
                        .await
                        .map_err(|e| format!("unable to perform request: {e}"))?,
                ),
                None => Box::new(tcp),
            };
            let headers: Vec<(http::HeaderName, String)> = self
                .token
                .iter()
                .map(|t| (http::header::AUTHORIZATION, format!("Bearer {t}")))
                .collect();
            let authority = format!("{}:{}", self.host, self.port);
            let (status, body) = http_get::get(
                stream,
                &authority,
                "/pods",
                "spire-agent",
                &headers,
                MAX_POD_LIST_BYTES,
            )
            .await
            .map_err(|e| format!("unable to perform request: {e}"))?;
            if status != http::StatusCode::OK {
                let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
                return Err(format!(
                    "unexpected status code on pods response: {} {text}",
                    status.as_u16()
                ));
            }
            let list: List<Pod> = serde_json::from_slice(&body)
                .map_err(|e| format!("unable to parse kubelet response: {e}"))?;
            Ok(list.items)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, fetch).await {
            Ok(result) => result.map_err(|e| format!("kubelet {url}: {e}")),
            Err(_) => Err(format!(
                "kubelet {url}: unable to perform request: no answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            )),
        }
    }
}

fn load_key_pair(
    certificate_path: &PathBuf,
    private_key_path: &PathBuf,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    use rustls::pki_types::pem::PemObject as _;
    let chain = CertificateDer::pem_file_iter(certificate_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "unable to load certificate: {}: {e}",
                certificate_path.display()
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(private_key_path).map_err(|e| {
        format!(
            "unable to load private key: {}: {e}",
            private_key_path.display()
        )
    })?;
    Ok((chain, key))
}

/// The kubelet's certificate check when no node name is set (or verification is skipped):
/// with `roots`, the chain must lead to the kubelet CA, without a host name (the kubelet's
/// certificate names the node, which the agent does not know); without, any chain is
/// accepted (`skip_kubelet_verification`). The handshake's signature by the presented key
/// is checked either way.
#[derive(Debug)]
struct KubeletVerifier {
    roots: Option<Arc<rustls::RootCertStore>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for KubeletVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pod of upstream's `pod_list.json` fixture that holds the `blog` container.
    fn blog_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "blog-24ck7", "namespace": "default",
                "uid": "2c48913c-b29f-11e7-9350-020968147796",
                "labels": {"k8s-app": "blog", "version": "v0"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "ReplicationController",
                    "name": "blog", "uid": "2c401175-b29f-11e7-9350-020968147796"}]
            },
            "spec": {"serviceAccountName": "default", "nodeName": "k8s-node-1",
                "containers": []},
            "status": {"containerStatuses": [
                {"name": "blog", "image": "localhost/spiffe/blog:latest",
                 "imageID": "docker-pullable://localhost/spiffe/blog@sha256:0cfdaced91cb46dd7af48309799a3c351e4ca2d5e1ee9737ca0cbd932cb79898",
                 "containerID": "docker://9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961",
                 "ready": true, "restartCount": 0},
                {"name": "ghostunnel", "image": "localhost/spiffe/ghostunnel:latest",
                 "imageID": "docker-pullable://localhost/spiffe/ghostunnel@sha256:b2fc20676c92a433b9a91f3f4535faddec0c2c3613849ac12f02c1d5cfcd4c3a",
                 "containerID": "docker://6a1ca8f4b2ec0c4a6e87b2a3b0b9bd3f4be1fc3a4b39ebfd4e9e5e9c6d1c1e01",
                 "ready": true, "restartCount": 0}
            ]}
        }))
        .unwrap()
    }

    /// Upstream's expected selectors for `pod_list.json` with `cgroups_pid_in_pod.txt`.
    #[test]
    fn selectors_match_upstreams_for_its_fixture() {
        let pod = blog_pod();
        let status = &pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        let mut got: Vec<String> = pod_selectors(&pod)
            .into_iter()
            .chain(container_selectors(status))
            .collect();
        got.sort();
        let mut want = vec![
            "node-name:k8s-node-1",
            "ns:default",
            "pod-image-count:2",
            "pod-image:docker-pullable://localhost/spiffe/blog@sha256:0cfdaced91cb46dd7af48309799a3c351e4ca2d5e1ee9737ca0cbd932cb79898",
            "pod-image:docker-pullable://localhost/spiffe/ghostunnel@sha256:b2fc20676c92a433b9a91f3f4535faddec0c2c3613849ac12f02c1d5cfcd4c3a",
            "pod-image:localhost/spiffe/blog:latest",
            "pod-image:localhost/spiffe/ghostunnel:latest",
            "pod-init-image-count:0",
            "pod-label:k8s-app:blog",
            "pod-label:version:v0",
            "pod-name:blog-24ck7",
            "pod-owner-uid:ReplicationController:2c401175-b29f-11e7-9350-020968147796",
            "pod-owner:ReplicationController:blog",
            "pod-uid:2c48913c-b29f-11e7-9350-020968147796",
            "sa:default",
            "container-image:docker-pullable://localhost/spiffe/blog@sha256:0cfdaced91cb46dd7af48309799a3c351e4ca2d5e1ee9737ca0cbd932cb79898",
            "container-image:localhost/spiffe/blog:latest",
            "container-name:blog",
        ];
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(matches_container(
            status,
            "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
        ));
        assert!(!matches_container(status, "9bca8d63"));
    }

    fn config(endpoint: KubeletEndpoint, proc_root: &std::path::Path) -> K8sAttestorConfig {
        K8sAttestorConfig {
            endpoint,
            node_name: None,
            max_poll_attempts: 3,
            poll_retry_interval: Duration::from_millis(20),
            reload_interval: Duration::from_secs(60),
            disable_container_selectors: false,
            verbose_container_locator_logs: false,
            use_new_container_locator: true,
            proc_root: proc_root.to_path_buf(),
        }
    }

    /// A process in no container gets no selectors without asking the kubelet; one in a
    /// container whose kubelet does not answer is retried, then refused naming the kubelet.
    #[tokio::test]
    async fn an_unreachable_kubelet_is_retried_then_named() {
        let proc = tempfile::tempdir().unwrap();
        for (pid, cgroup) in [
            (
                42,
                "0::/kubepods/besteffort/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961\n",
            ),
            (43, "0::/user.slice/user-1000.slice/session-2.scope\n"),
        ] {
            std::fs::create_dir(proc.path().join(pid.to_string())).unwrap();
            std::fs::write(proc.path().join(format!("{pid}/cgroup")), cgroup).unwrap();
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let attestor =
            K8sAttestor::new(config(KubeletEndpoint::ReadOnly { port }, proc.path())).unwrap();
        let peer = |pid| PeerProcess {
            pid,
            uid: 0,
            gid: 0,
        };
        assert!(attestor.attest(peer(43)).await.unwrap().is_empty());
        let started = Instant::now();
        let err = attestor.attest(peer(42)).await.unwrap_err().to_string();
        assert!(
            err.starts_with("workloadattestor(k8s): kubelet ")
                && err.contains(&format!("http://127.0.0.1:{port}/pods")),
            "{err}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "retried twice"
        );
        std::fs::write(proc.path().join("42/cgroup"), "garbage\n").unwrap();
        let err = attestor.attest(peer(42)).await.unwrap_err().to_string();
        assert!(err.contains("invalid cgroup entry"), "{err}");
    }

    /// Credentials are read when the attestor is built: a missing file is named.
    #[test]
    fn missing_kubelet_credentials_are_named() {
        let proc = tempfile::tempdir().unwrap();
        let endpoint = KubeletEndpoint::Secure {
            port: 10250,
            skip_verification: true,
            ca_path: "/nonexistent/ca.crt".into(),
            credentials: KubeletCredentials::Token {
                token_path: "/nonexistent/token".into(),
            },
        };
        let err = K8sAttestor::new(config(endpoint, proc.path())).unwrap_err();
        assert!(
            err.contains("unable to load token") && err.contains("/nonexistent/token"),
            "{err}"
        );
        let endpoint = KubeletEndpoint::Secure {
            port: 10250,
            skip_verification: false,
            ca_path: "/nonexistent/ca.crt".into(),
            credentials: KubeletCredentials::Anonymous,
        };
        let err = K8sAttestor::new(config(endpoint, proc.path())).unwrap_err();
        assert!(
            err.contains("unable to load kubelet CA: /nonexistent/ca.crt"),
            "{err}"
        );
    }
}
