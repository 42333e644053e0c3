//! Node attestation (the `agent.v1.AttestAgent` stream, driven for whichever node attestor
//! plugin is configured), the bootstrap trust bundle, the agent SVID's renewal
//! (`agent.v1.RenewAgent` at half-life, see [`rotation`]), and what happens when the server
//! stops accepting the agent (see [`reattest`]).

use crate::plugins::keymanager::AgentKey;
use spire_proto::spire::api::server::agent::v1 as agentpb;
use spire_proto::spire::api::server::bundle::v1 as bundlepb;
use spire_proto::spire::api::types;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::client::{AgentDenied, ClientError, ServerClient, classify_denial};
use crate::plugins::keymanager::KeyManagerError;
use crate::plugins::nodeattestor::{NodeAttestor, PluginError};
use crate::storage::StorageError;

pub mod bootstrap;
pub mod bootstrap_state;
pub mod reattest;
pub mod rebootstrap;
pub mod retry;
pub mod rotation;

pub use self::bootstrap::{bootstrap_trust, download_trust_bundle};
pub use self::reattest::keep_agent_svid;
pub use self::rotation::{AgentSvid, RotationConfig, renewal_due, run_rotation};

/// Why attestation, renewal or bootstrap failed. Server refusals keep the server's message,
/// which says what is wrong (e.g. "join token does not exist or has already been used").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The server could not be reached, or its certificate was refused.
    #[error("cannot reach the SPIRE server: {0}")]
    Unavailable(String),
    /// The server refused the attestation data or CSR (bad, expired or used join token).
    #[error("the SPIRE server refused the attestation: {0}")]
    InvalidArgument(String),
    /// The server refused the request (PermissionDenied) without saying the agent itself
    /// is denied.
    #[error("the SPIRE server denied the agent: {0}")]
    PermissionDenied(String),
    /// The server denied the agent itself: it must re-attest (expired, not current,
    /// evicted) or is banned; see [`crate::client::DenialKind`].
    #[error("the SPIRE server denied the agent: {0}")]
    Denied(AgentDenied),
    /// The agent must attest again but its node attestor cannot (join tokens are
    /// single-use); the agent SVID was removed from `data_dir` and the agent stops.
    #[error(
        "agent needs to re-attest ({reason}) but the {attestor} node attestor cannot re-attest; \
         removed the agent SVID from data_dir: restart the agent with a new join token \
         (-joinToken or agent.join_token)"
    )]
    CannotReattest {
        /// The node attestor's name.
        attestor: String,
        /// Why the server refused the agent.
        reason: String,
    },
    /// Re-attestation was tried and failed; the agent SVID was removed from `data_dir`.
    #[error(
        "agent needs to re-attest ({reason}) and re-attestation failed: {error}; removed the \
         agent SVID from data_dir"
    )]
    ReattestFailed {
        /// Why the server refused the agent.
        reason: String,
        /// Why re-attestation failed.
        error: Box<AttestError>,
    },
    /// The agent is banned; the agent SVID was removed from `data_dir` and the agent stops.
    #[error(
        "agent is banned ({0}); removed the agent SVID from data_dir: remove the ban on the \
         server (spire-server agent evict) and attest again"
    )]
    Banned(String),
    /// Any other error status from the server.
    #[error("the SPIRE server failed the request ({code:?}): {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The server answered something the protocol does not allow.
    #[error("unexpected answer from the SPIRE server: {0}")]
    Protocol(String),
    /// The agent SVID is past half of its lifetime and the agent is re-attestable: it
    /// attests again instead of renewing.
    #[error("the agent SVID is past half of its lifetime and the agent re-attests")]
    ReattestDue,
    /// The agent SVID is past its expiry; the agent must attest again.
    #[error("the agent SVID expired at {0}; the agent must attest again")]
    Expired(time::OffsetDateTime),
    /// A key or CSR could not be made.
    #[error("{0}")]
    Key(String),
    /// The bootstrap trust bundle could not be loaded.
    #[error("{0}")]
    Bootstrap(String),
    /// The node attestor plugin could not make its attestation data or answer a challenge.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The server client could not be configured.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The data directory could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The key manager failed.
    #[error(transparent)]
    KeyManager(#[from] KeyManagerError),
}

impl AttestError {
    /// Maps a gRPC status to the variant a caller acts on, keeping the transport's error
    /// chain (e.g. the TLS refusal) in the message. A denial of the agent itself
    /// ([`classify_denial`]) becomes [`AttestError::Denied`].
    pub fn from_status(status: &Status) -> Self {
        if let Some(denial) = classify_denial(status) {
            return Self::Denied(denial);
        }
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            source = cause.source();
        }
        match status.code() {
            Code::Unavailable => Self::Unavailable(message),
            Code::InvalidArgument => Self::InvalidArgument(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            code => Self::Server { code, message },
        }
    }
}

/// The outcome of node attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestResult {
    /// The agent X509-SVID, leaf first, DER.
    pub svid_chain: Vec<Vec<u8>>,
    /// Whether the agent may re-attest instead of renewing (never for join tokens).
    pub reattestable: bool,
}

/// Runs AttestAgent with `attestor` for `key`: sends its attestation data with a CSR,
/// answers every challenge the server sends with the attestor's response, and returns the
/// agent SVID. A refusal keeps the server's message, which says what is wrong (a used join
/// token, a service account that is not allowed).
pub async fn attest(
    client: &ServerClient,
    attestor: &dyn NodeAttestor,
    key: &AgentKey,
) -> Result<AttestResult, AttestError> {
    let started = std::time::Instant::now();
    let result = attest_agent(client, attestor, key).await;
    spire_common::telemetry::agent::node_attested(attestor.name(), result.is_ok(), started);
    result
}

async fn attest_agent(
    client: &ServerClient,
    attestor: &dyn NodeAttestor,
    key: &AgentKey,
) -> Result<AttestResult, AttestError> {
    let payload = attestor.attestation_data().await?;
    let csr = key
        .csr_der()
        .await
        .map_err(|e| AttestError::Key(format!("cannot build the agent CSR: {e}")))?;
    let request = agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData {
                    r#type: attestor.name().to_owned(),
                    payload,
                }),
                params: Some(agentpb::AgentX509svidParams { csr }),
            },
        )),
    };
    // The request stream stays open until the server answered, as upstream's does.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let closed = || AttestError::Protocol("the attestation stream closed early".into());
    tx.send(request).await.map_err(|_| closed())?;
    let mut responses = client
        .agent_client()
        .attest_agent(ReceiverStream::new(rx))
        .await
        .map_err(|s| AttestError::from_status(&s))?
        .into_inner();
    loop {
        let response = responses
            .message()
            .await
            .map_err(|s| AttestError::from_status(&s))?
            .ok_or_else(|| {
                AttestError::Protocol("the attestation stream ended without a result".into())
            })?;
        match response.step {
            Some(agentpb::attest_agent_response::Step::Result(result)) => {
                let svid = result.svid.ok_or_else(|| {
                    AttestError::Protocol("the attestation result has no SVID".into())
                })?;
                check_svid(&svid.cert_chain, key)?;
                return Ok(AttestResult {
                    svid_chain: svid.cert_chain,
                    reattestable: result.reattestable,
                });
            }
            Some(agentpb::attest_agent_response::Step::Challenge(challenge)) => {
                let answer = attestor.challenge_response(&challenge).await?;
                let reply = agentpb::AttestAgentRequest {
                    step: Some(agentpb::attest_agent_request::Step::ChallengeResponse(
                        answer,
                    )),
                };
                tx.send(reply).await.map_err(|_| closed())?;
            }
            None => {
                return Err(AttestError::Protocol(
                    "the attestation response is empty".into(),
                ));
            }
        }
    }
}

/// Renews the agent SVID for `new_key` (upstream uses a fresh key per renewal) over the
/// client's current identity; returns the new chain, leaf first. The server makes it the
/// agent's current SVID on its first use.
pub async fn renew(client: &ServerClient, new_key: &AgentKey) -> Result<Vec<Vec<u8>>, AttestError> {
    let csr = new_key
        .csr_der()
        .await
        .map_err(|e| AttestError::Key(format!("cannot build the renewal CSR: {e}")))?;
    let svid = client
        .agent_client()
        .renew_agent(agentpb::RenewAgentRequest {
            params: Some(agentpb::AgentX509svidParams { csr }),
        })
        .await
        .map_err(|s| {
            client.note_status(&s);
            AttestError::from_status(&s)
        })?
        .into_inner()
        .svid
        .ok_or_else(|| AttestError::Protocol("the renewal response has no SVID".into()))?;
    check_svid(&svid.cert_chain, new_key)?;
    Ok(svid.cert_chain)
}

/// Fetches the trust domain's bundle with `bundle.v1.GetBundle` and returns its X.509
/// authorities, DER; after insecure bootstrap this is the bundle the agent trusts.
pub async fn fetch_bundle(client: &ServerClient) -> Result<Vec<Vec<u8>>, AttestError> {
    let bundle = client
        .bundle_client()
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .map_err(|s| AttestError::from_status(&s))?
        .into_inner();
    let roots: Vec<Vec<u8>> = bundle
        .x509_authorities
        .into_iter()
        .map(|a| a.asn1)
        .collect();
    if roots.is_empty() {
        return Err(AttestError::Protocol(
            "the server's bundle has no X.509 authorities".into(),
        ));
    }
    Ok(roots)
}

/// The agent identity the server just issued must be an X509-SVID for our key.
fn check_svid(chain: &[Vec<u8>], key: &AgentKey) -> Result<(), AttestError> {
    let leaf = chain
        .first()
        .ok_or_else(|| AttestError::Protocol("the server returned an empty SVID chain".into()))?;
    spire_core::x509::X509Svid::parse(chain.to_vec())
        .map_err(|e| AttestError::Protocol(format!("the server returned an invalid SVID: {e}")))?;
    let public = spire_core::x509::certificate_public_key(leaf)
        .map_err(|e| AttestError::Protocol(format!("the server returned an invalid SVID: {e}")))?;
    if public != key.public_key_der() {
        return Err(AttestError::Protocol(
            "the server returned an SVID for a different key".into(),
        ));
    }
    Ok(())
}
