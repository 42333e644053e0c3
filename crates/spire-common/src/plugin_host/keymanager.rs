//! The host side of a KeyManager plugin, for server and agent alike.
//!
//! Upstream's SDK defines two services, `spire.plugin.server.keymanager.v1.KeyManager` and
//! `spire.plugin.agent.keymanager.v1.KeyManager`, whose messages are identical field for
//! field; only the service path differs. So one client speaks both: it sends the server
//! package's messages (the bytes on the wire are the same) to the path of the service the
//! plugin was loaded for.
//!
//! Keys stay in the plugin. A [`PluginKey`] signs through `SignData` with the digest and its
//! hash (or PSS options), as Go's `crypto.Signer` does; every signature is checked as upstream's
//! host does (not empty, the fingerprint of the key it was handed) and, in addition, verified
//! against the public key, so a plugin that signs with another key is caught here rather than
//! by the peer. Every call is bounded by upstream's 30 s plugin RPC timeout, so a plugin that
//! hangs or dies gives an error naming it instead of a stuck caller.
//!
//! Synchronous callers (rustls asks a client certificate key to sign inside the handshake)
//! use [`PluginKey::sign_blocking`]: the call runs on a thread of its own, with its own
//! runtime and its own connection to the plugin, so it never waits on the runtime it was
//! called from.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use spire_core::keys::{HashAlgorithm, KeyType, PublicKey, SignatureScheme};
use spire_proto::spire::plugin::server::keymanager::v1 as pb;
use tonic::transport::Channel;

use super::LoadedPlugin;

/// The gRPC service a server KeyManager plugin implements.
pub const SERVER_SERVICE: &str = "spire.plugin.server.keymanager.v1.KeyManager";
/// The gRPC service an agent KeyManager plugin implements.
pub const AGENT_SERVICE: &str = "spire.plugin.agent.keymanager.v1.KeyManager";

/// Upstream's timeout of one KeyManager plugin call.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A KeyManager plugin call failed; the message names the plugin
/// (`keymanager(<name>): ...`) and, when its process is gone, how it ended.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PluginKeyError(String);

/// A loaded KeyManager plugin; cheap to clone.
#[derive(Clone)]
pub struct KeyManagerPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    plugin: Arc<LoadedPlugin>,
    service: &'static str,
    /// Started on the first blocking signature.
    signer: OnceLock<SignerThread>,
}

impl std::fmt::Debug for KeyManagerPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManagerPlugin")
            .field("name", &self.inner.plugin.name())
            .field("service", &self.inner.service)
            .finish()
    }
}

impl KeyManagerPlugin {
    /// Wraps `plugin`, loaded for `service` ([`SERVER_SERVICE`] or [`AGENT_SERVICE`]).
    pub fn new(plugin: Arc<LoadedPlugin>, service: &'static str) -> Self {
        Self {
            inner: Arc::new(Inner {
                plugin,
                service,
                signer: OnceLock::new(),
            }),
        }
    }

    /// The plugin's configured name.
    pub fn name(&self) -> &str {
        self.inner.plugin.name()
    }

    /// An error naming the plugin.
    pub fn error(&self, message: impl std::fmt::Display) -> PluginKeyError {
        PluginKeyError(format!("keymanager({}): {message}", self.name()))
    }

    /// A failed call; when the plugin process is gone, says so with its exit status.
    fn call_error(&self, what: &str, status: &tonic::Status) -> PluginKeyError {
        match self.inner.plugin.exit_status() {
            Some(exit) => self.error(format!(
                "{what}: plugin exited ({exit}): {}",
                status.message()
            )),
            None => self.error(format!("{what}: {}", status.message())),
        }
    }

    fn path(&self, method: &str) -> String {
        format!("/{}/{method}", self.inner.service)
    }

    /// One bounded call on the host's connection.
    async fn call<Req, Resp>(
        &self,
        what: &str,
        method: &str,
        request: Req,
    ) -> Result<Resp, PluginKeyError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let call = unary(self.inner.plugin.channel(), self.path(method), request);
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(status)) => Err(self.call_error(what, &status)),
            Err(_) => Err(self.error(format!("{what}: timed out after {RPC_TIMEOUT:?}"))),
        }
    }

    /// Generates (replacing any existing) key `id` of `key_type` in the plugin.
    pub async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
    ) -> Result<PluginKey, PluginKeyError> {
        let request = pb::GenerateKeyRequest {
            key_id: id.to_owned(),
            key_type: proto_key_type(key_type) as i32,
        };
        let response: pb::GenerateKeyResponse = self
            .call("failed to generate key", "GenerateKey", request)
            .await?;
        self.key(id, response.public_key)
    }

    /// The key `id`, or `None` when the plugin has none (it answers NotFound or nothing).
    pub async fn get_public_key(&self, id: &str) -> Result<Option<PluginKey>, PluginKeyError> {
        let request = pb::GetPublicKeyRequest {
            key_id: id.to_owned(),
        };
        let call = unary::<_, pb::GetPublicKeyResponse>(
            self.inner.plugin.channel(),
            self.path("GetPublicKey"),
            request,
        );
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(response)) => match response.public_key {
                None => Ok(None),
                Some(public) => self.key(id, Some(public)).map(Some),
            },
            // Upstream's built-ins answer NotFound for a key they do not have.
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(None),
            Ok(Err(status)) => Err(self.call_error("failed to get public key", &status)),
            Err(_) => Err(self.error(format!(
                "failed to get public key: timed out after {RPC_TIMEOUT:?}"
            ))),
        }
    }

    /// Every key the plugin holds.
    pub async fn get_public_keys(&self) -> Result<Vec<PluginKey>, PluginKeyError> {
        let response: pb::GetPublicKeysResponse = self
            .call(
                "failed to get public keys",
                "GetPublicKeys",
                pb::GetPublicKeysRequest {},
            )
            .await?;
        response
            .public_keys
            .into_iter()
            .map(|public| {
                let id = public.id.clone();
                self.key(&id, Some(public))
            })
            .collect()
    }

    /// Has the plugin sign `message` with key `key_id` under `scheme` on the host's
    /// connection; returns the signature and the fingerprint the plugin reports. Callers
    /// holding a [`PluginKey`] use [`PluginKey::sign`], which also checks the answer.
    pub async fn sign_data(
        &self,
        key_id: &str,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<(Vec<u8>, String), PluginKeyError> {
        let response: pb::SignDataResponse = self
            .call(
                "failed to sign",
                "SignData",
                sign_request(key_id, message, scheme),
            )
            .await?;
        Ok((response.signature, response.key_fingerprint))
    }

    /// Checks a plugin's description of key `id`, as upstream's host does.
    fn key(&self, id: &str, public: Option<pb::PublicKey>) -> Result<PluginKey, PluginKeyError> {
        let public =
            public.ok_or_else(|| self.error(format!("plugin response empty for key {id:?}")))?;
        if public.id != id {
            return Err(self.error(format!(
                "plugin response has unexpected key id {:?} for key {id:?}",
                public.id
            )));
        }
        if public.pkix_data.is_empty() {
            return Err(self.error(format!(
                "plugin response missing public key PKIX data for key {id:?}"
            )));
        }
        let key = PublicKey::from_spki_der(&public.pkix_data).map_err(|e| {
            self.error(format!(
                "unable to parse public key PKIX data for key {id:?}: {e}"
            ))
        })?;
        Ok(PluginKey {
            id: id.to_owned(),
            public: key,
            fingerprint: public.fingerprint,
            manager: self.clone(),
        })
    }

    fn signer(&self) -> &SignerThread {
        self.inner.signer.get_or_init(|| {
            SignerThread::start(Arc::clone(&self.inner.plugin), self.path("SignData"))
        })
    }
}

/// A key held by a KeyManager plugin: its ID, public key and fingerprint.
#[derive(Clone)]
pub struct PluginKey {
    id: String,
    public: PublicKey,
    fingerprint: String,
    manager: KeyManagerPlugin,
}

impl std::fmt::Debug for PluginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginKey")
            .field("plugin", &self.manager.name())
            .field("id", &self.id)
            .field("key_type", &self.public.key_type())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl PluginKey {
    /// The key's ID in the plugin, e.g. `agent-svid-A`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The fingerprint the plugin reported for this instance of the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The name of the plugin holding the key.
    pub fn plugin_name(&self) -> &str {
        self.manager.name()
    }

    /// Has the plugin sign `message` (ECDSA signatures come back ASN.1 DER), from async code.
    pub async fn sign(
        &self,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<Vec<u8>, PluginKeyError> {
        let (signature, fingerprint) = self.manager.sign_data(&self.id, message, scheme).await?;
        self.check(message, scheme, signature, &fingerprint)
    }

    /// [`Self::sign`] for synchronous code, such as a TLS handshake asking for a signature.
    /// The call runs on the plugin's signer thread; this thread waits at most
    /// [`RPC_TIMEOUT`] (plus a margin) for it, inside `block_in_place` on a multi-threaded
    /// runtime so the runtime's other tasks go on meanwhile.
    pub fn sign_blocking(
        &self,
        message: &[u8],
        scheme: SignatureScheme,
    ) -> Result<Vec<u8>, PluginKeyError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let job = SignJob {
            request: sign_request(&self.id, message, scheme),
            reply,
        };
        let signer = self.manager.signer();
        if signer.jobs.send(job).is_err() {
            return Err(self
                .manager
                .error("failed to sign: the signer thread is gone"));
        }
        let received =
            wait_outside_runtime(|| answer.recv_timeout(RPC_TIMEOUT + Duration::from_secs(5)));
        let response = match received {
            Ok(Ok(response)) => response,
            Ok(Err(SignFailure::Status(status))) => {
                return Err(self.manager.call_error("failed to sign", &status));
            }
            Ok(Err(SignFailure::Other(message))) => {
                return Err(self.manager.error(format!("failed to sign: {message}")));
            }
            Err(_) => {
                return Err(self
                    .manager
                    .error(format!("failed to sign: timed out after {RPC_TIMEOUT:?}")));
            }
        };
        self.check(
            message,
            scheme,
            response.signature,
            &response.key_fingerprint,
        )
    }

    /// Upstream's checks of a signature (not empty, same fingerprint), then ours: it must
    /// verify with the public key.
    fn check(
        &self,
        message: &[u8],
        scheme: SignatureScheme,
        signature: Vec<u8>,
        fingerprint: &str,
    ) -> Result<Vec<u8>, PluginKeyError> {
        if signature.is_empty() {
            return Err(self.manager.error("plugin returned empty signature data"));
        }
        if fingerprint != self.fingerprint {
            return Err(self.manager.error(format!(
                "fingerprint {:?} on key {:?} does not match {fingerprint:?}",
                self.fingerprint, self.id
            )));
        }
        self.public
            .verify(message, &signature, scheme)
            .map_err(|e| {
                self.manager.error(format!(
                    "the plugin's signature with key {:?} is invalid: {e}",
                    self.id
                ))
            })?;
        Ok(signature)
    }

    /// This key as a rustls signing key, to present a certificate for it in TLS handshakes.
    pub fn tls_signing_key(&self) -> Arc<dyn rustls::sign::SigningKey> {
        Arc::new(TlsKey(self.clone()))
    }
}

/// Runs `wait` (a blocking wait on another thread) without stalling a multi-threaded tokio
/// runtime; on a current-thread runtime or none, it simply blocks (the signer thread does not
/// need this runtime, so nothing deadlocks).
fn wait_outside_runtime<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

fn sign_request(key_id: &str, message: &[u8], scheme: SignatureScheme) -> pb::SignDataRequest {
    // The plugin protocol carries the digest, as Go's crypto.Signer takes it.
    pb::SignDataRequest {
        key_id: key_id.to_owned(),
        data: scheme.hash.digest(message),
        signer_opts: Some(signer_opts(scheme)),
    }
}

/// One unary call to `path` on `channel`.
async fn unary<Req, Resp>(
    channel: Channel,
    path: String,
    request: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("plugin connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::try_from(path)
        .map_err(|e| tonic::Status::internal(format!("invalid method path: {e}")))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// The wire key type of `t`.
fn proto_key_type(t: KeyType) -> pb::KeyType {
    match t {
        KeyType::EcP256 => pb::KeyType::EcP256,
        KeyType::EcP384 => pb::KeyType::EcP384,
        KeyType::Rsa2048 => pb::KeyType::Rsa2048,
        KeyType::Rsa4096 => pb::KeyType::Rsa4096,
    }
}

fn hash_algorithm(h: HashAlgorithm) -> pb::HashAlgorithm {
    match h {
        HashAlgorithm::Sha256 => pb::HashAlgorithm::Sha256,
        HashAlgorithm::Sha384 => pb::HashAlgorithm::Sha384,
        HashAlgorithm::Sha512 => pb::HashAlgorithm::Sha512,
    }
}

/// The SignerOpts of a scheme: the hash, or PSS options with the salt as long as the hash
/// (Go's `rsa.PSSSaltLengthEqualsHash`, -1).
fn signer_opts(scheme: SignatureScheme) -> pb::sign_data_request::SignerOpts {
    let hash = hash_algorithm(scheme.hash) as i32;
    if scheme.pss {
        pb::sign_data_request::SignerOpts::PssOptions(pb::sign_data_request::PssOptions {
            salt_length: -1,
            hash_algorithm: hash,
        })
    } else {
        pb::sign_data_request::SignerOpts::HashAlgorithm(hash)
    }
}

/// A signature request for the signer thread, and where its answer goes.
struct SignJob {
    request: pb::SignDataRequest,
    reply: std::sync::mpsc::SyncSender<Result<pb::SignDataResponse, SignFailure>>,
}

enum SignFailure {
    /// The plugin answered with an error status.
    Status(tonic::Status),
    /// No answer: connection refused, timed out.
    Other(String),
}

/// The thread serving [`PluginKey::sign_blocking`]: it owns a current-thread runtime and its
/// own connection to the plugin (made again after a failure), and ends when the plugin's
/// [`KeyManagerPlugin`] is dropped.
struct SignerThread {
    jobs: std::sync::mpsc::Sender<SignJob>,
}

impl SignerThread {
    fn start(plugin: Arc<LoadedPlugin>, path: String) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<SignJob>();
        let name = format!("keymanager-{}", plugin.name());
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve_sign_jobs(&plugin, &path, &queue));
        if let Err(e) = spawned {
            // The jobs' senders see a closed queue and report the signer thread gone.
            tracing::error!(error = %e, "cannot start the KeyManager plugin signer thread");
        }
        Self { jobs }
    }
}

fn serve_sign_jobs(plugin: &LoadedPlugin, path: &str, queue: &std::sync::mpsc::Receiver<SignJob>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            while let Ok(job) = queue.recv() {
                let _ = job.reply.send(Err(SignFailure::Other(format!(
                    "cannot start a runtime: {e}"
                ))));
            }
            return;
        }
    };
    let mut channel: Option<Channel> = None;
    while let Ok(job) = queue.recv() {
        let result = runtime.block_on(async {
            let call = async {
                let connection = match &channel {
                    Some(connection) => connection.clone(),
                    None => {
                        let connection =
                            plugin.connect_again().await.map_err(SignFailure::Other)?;
                        channel = Some(connection.clone());
                        connection
                    }
                };
                unary::<_, pb::SignDataResponse>(connection, path.to_owned(), job.request)
                    .await
                    .map_err(SignFailure::Status)
            };
            match tokio::time::timeout(RPC_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => Err(SignFailure::Other(format!(
                    "timed out after {RPC_TIMEOUT:?}"
                ))),
            }
        });
        if result.is_err() {
            // Dial again next time: the plugin may have been restarted behind the same path.
            channel = None;
        }
        let _ = job.reply.send(result);
    }
}

/// A [`PluginKey`] as rustls's signing key.
#[derive(Debug)]
struct TlsKey(PluginKey);

/// The TLS signature schemes a key of each type signs with, best first, and how.
fn tls_schemes(key_type: KeyType) -> Vec<(rustls::SignatureScheme, SignatureScheme)> {
    use rustls::SignatureScheme as Tls;
    const fn scheme(hash: HashAlgorithm, pss: bool) -> SignatureScheme {
        SignatureScheme { hash, pss }
    }
    match key_type {
        KeyType::EcP256 => vec![(
            Tls::ECDSA_NISTP256_SHA256,
            scheme(HashAlgorithm::Sha256, false),
        )],
        KeyType::EcP384 => vec![(
            Tls::ECDSA_NISTP384_SHA384,
            scheme(HashAlgorithm::Sha384, false),
        )],
        KeyType::Rsa2048 | KeyType::Rsa4096 => vec![
            (Tls::RSA_PSS_SHA256, scheme(HashAlgorithm::Sha256, true)),
            (Tls::RSA_PSS_SHA384, scheme(HashAlgorithm::Sha384, true)),
            (Tls::RSA_PSS_SHA512, scheme(HashAlgorithm::Sha512, true)),
            (Tls::RSA_PKCS1_SHA256, scheme(HashAlgorithm::Sha256, false)),
            (Tls::RSA_PKCS1_SHA384, scheme(HashAlgorithm::Sha384, false)),
            (Tls::RSA_PKCS1_SHA512, scheme(HashAlgorithm::Sha512, false)),
        ],
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        tls_schemes(self.0.public.key_type())
            .into_iter()
            .find(|(tls, _)| offered.contains(tls))
            .map(|(tls, scheme)| {
                Box::new(TlsSigner {
                    key: self.0.clone(),
                    tls,
                    scheme,
                }) as Box<dyn rustls::sign::Signer>
            })
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        Some(rustls::pki_types::SubjectPublicKeyInfoDer::from(
            self.0.public.spki_der(),
        ))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.0.public.key_type() {
            KeyType::EcP256 | KeyType::EcP384 => rustls::SignatureAlgorithm::ECDSA,
            KeyType::Rsa2048 | KeyType::Rsa4096 => rustls::SignatureAlgorithm::RSA,
        }
    }
}

#[derive(Debug)]
struct TlsSigner {
    key: PluginKey,
    tls: rustls::SignatureScheme,
    scheme: SignatureScheme,
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key.sign_blocking(message, self.scheme).map_err(|e| {
            // The handshake error the caller sees may not carry this text: log it here.
            tracing::error!(error = %e, "TLS handshake signature failed");
            rustls::Error::General(e.to_string())
        })
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        self.tls
    }
}
