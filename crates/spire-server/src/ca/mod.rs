//! The CA manager: the X509 CA and the JWT signing key, each in two slots (current and next),
//! prepared, activated and retired on upstream's schedule, with state kept in the CA journal.
//!
//! Construct with [`CaManager::new`], which loads the journal and keys (or mints new ones)
//! and activates an authority before returning; then spawn [`CaManager::run`] for rotation.

use std::sync::Arc;
use std::time::Duration;

use spire_core::keys::KeyType;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::Subject;
use time::OffsetDateTime;

/// The time source of the CA: what "now" is when certificates are issued and rotation is
/// decided. Tests pass a clock they move by hand instead of sleeping.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// The server settings the CA uses (the `server { }` keys of the same names).
#[derive(Clone)]
pub struct CaConfig {
    /// The trust domain every authority and SVID belongs to.
    pub trust_domain: TrustDomain,
    /// Lifetime of each X509 CA and JWT key (`ca_ttl`, default 24h).
    pub ca_ttl: Duration,
    /// Key type of the X509 CA (`ca_key_type`, default ec-p256).
    pub ca_key_type: KeyType,
    /// Key type of the JWT signing key (`jwt_key_type`); `None` means `ca_key_type`.
    pub jwt_key_type: Option<KeyType>,
    /// Subject of the CA certificates (`ca_subject`, default C=US, O=SPIFFE).
    pub ca_subject: Subject,
    /// `iss` claim of JWT-SVIDs (`jwt_issuer`); no claim when `None`.
    pub jwt_issuer: Option<String>,
    /// TTL of X509-SVIDs when neither the entry nor the caller sets one (default 1h).
    pub default_x509_svid_ttl: Duration,
    /// TTL of JWT-SVIDs when neither the entry nor the caller sets one (default 5m).
    pub default_jwt_svid_ttl: Duration,
    /// TTL of agent SVIDs (`agent_ttl`); `None` means the default X509-SVID TTL.
    pub agent_ttl: Option<Duration>,
    /// How often [`CaManager::run`] checks for rotation (upstream: 10 s); shortened
    /// automatically for very short `ca_ttl`s.
    pub rotate_interval: Duration,
    /// How often the upstream bundle of a `spire` UpstreamAuthority is polled for new and
    /// tainted roots (upstream: 5 s).
    pub upstream_poll_interval: Duration,
    /// The time source.
    pub clock: Clock,
    /// `disable_jwt_svids`: no JWT signing keys are prepared, activated or rotated.
    pub disable_jwt_svids: bool,
    /// The CredentialComposers applied to every credential built; empty costs nothing.
    pub credential_composers: crate::plugins::credentialcomposer::CredentialComposers,
}

impl CaConfig {
    /// Upstream's defaults for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            ca_ttl: Duration::from_secs(24 * 3600),
            ca_key_type: KeyType::EcP256,
            jwt_key_type: None,
            ca_subject: Subject::default_ca(),
            jwt_issuer: None,
            default_x509_svid_ttl: Duration::from_secs(3600),
            default_jwt_svid_ttl: Duration::from_secs(300),
            agent_ttl: None,
            rotate_interval: Duration::from_secs(10),
            upstream_poll_interval: Duration::from_secs(5),
            clock: system_clock(),
            disable_jwt_svids: false,
            credential_composers: Default::default(),
        }
    }
}

impl std::fmt::Debug for CaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaConfig")
            .field("trust_domain", &self.trust_domain)
            .field("ca_ttl", &self.ca_ttl)
            .field("ca_key_type", &self.ca_key_type)
            .field("jwt_key_type", &self.jwt_key_type)
            .field("ca_subject", &self.ca_subject)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("default_x509_svid_ttl", &self.default_x509_svid_ttl)
            .field("default_jwt_svid_ttl", &self.default_jwt_svid_ttl)
            .field("agent_ttl", &self.agent_ttl)
            .field("rotate_interval", &self.rotate_interval)
            .field("upstream_poll_interval", &self.upstream_poll_interval)
            .finish_non_exhaustive()
    }
}

/// Why the CA could not sign or change state; the API maps these to gRPC codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// No active authority yet (gRPC Unavailable).
    #[error("CA is not ready: {0}")]
    NotReady(String),
    /// Bad input such as a malformed CSR or public key (gRPC InvalidArgument).
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation does not apply in the current state (gRPC FailedPrecondition).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Key manager, datastore or signing failure (gRPC Internal).
    #[error("{0}")]
    Internal(String),
    /// A local authority request refused in upstream's exact words, which the API returns
    /// as they are, with no context added (`unexpected authority ID`).
    #[error("{message}")]
    Refused {
        /// Which gRPC code upstream answers with.
        kind: RefusalKind,
        /// The whole status message.
        message: String,
    },
}

/// The gRPC code of a [`CaError::Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// InvalidArgument.
    InvalidArgument,
    /// FailedPrecondition.
    FailedPrecondition,
    /// Internal.
    Internal,
}

impl CaError {
    /// A refusal worded as upstream's.
    pub(crate) fn refused(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self::Refused {
            kind,
            message: message.into(),
        }
    }
}

/// What to put in a workload or agent X509-SVID.
#[derive(Debug, Clone)]
pub struct X509SvidRequest {
    /// DER SubjectPublicKeyInfo (taken from a CSR whose signature was checked).
    pub public_key_der: Vec<u8>,
    /// The SPIFFE ID, from the entry, never from the CSR.
    pub spiffe_id: SpiffeId,
    /// DNS SANs; the first also becomes the subject CN.
    pub dns_names: Vec<String>,
    /// Requested TTL; `None` means the server default. Capped at the CA's expiry.
    pub ttl: Option<std::time::Duration>,
    /// Subject override (MintX509SVID lets admins choose it).
    pub subject: Option<Subject>,
}

/// A signed JWT-SVID.
#[derive(Debug, Clone)]
pub struct SignedJwtSvid {
    /// The compact token.
    pub token: String,
    /// Unix seconds `iat`.
    pub issued_at: i64,
    /// Unix seconds `exp`.
    pub expires_at: i64,
}

/// The server's own TLS identity (`spiffe://<td>/spire/server`), renewed by the CA manager.
#[derive(Clone)]
pub struct ServerIdentity {
    /// Leaf first, then intermediates up to (not including) the root.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's private key.
    pub key: Arc<spire_core::keys::PrivateKey>,
}

pub use self::manager::CaManager;

mod journal;
mod manager;
mod signer;

/// Re-exported so callers name one module.
pub use spire_proto::spire::api::server::localauthority::v1::AuthorityState;
