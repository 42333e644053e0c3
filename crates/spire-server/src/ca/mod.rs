//! The CA manager: the X509 CA and the JWT signing key, each in two slots (current and next),
//! prepared, activated and retired on upstream's schedule, with state kept in the CA journal.
//!
//! INTERFACE (owned by the CA helper; the signatures below are what the API layer calls).

use std::sync::Arc;

use spire_core::spiffe_id::SpiffeId;
use spire_core::x509::Subject;

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

mod manager;

/// Re-exported so callers name one module.
pub use spire_proto::spire::api::server::localauthority::v1::AuthorityState;
