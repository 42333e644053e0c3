//! The server gRPC APIs, one module per service, and the caller model the authorization
//! policy works on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spire_core::spiffe_id::{SpiffeId, TrustDomain};

use crate::authorized::AuthorizedIndex;
use crate::ca::CaManager;
use crate::datastore::DataStore;

pub mod agent;
pub mod bundle;
pub mod convert;
pub mod debug;
pub mod entry;
pub mod health;
pub mod localauthority;
pub mod logger;
pub mod notify;
pub mod ratelimit;
pub mod svid;
pub mod trustdomain;

/// What every service needs, built once at start and shared.
pub struct ApiContext {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// The datastore.
    pub datastore: Arc<dyn DataStore>,
    /// The CA manager.
    pub ca: Arc<CaManager>,
    /// The authorized-entry index.
    pub index: Arc<AuthorizedIndex>,
    /// Settings from the `server { }` block that the APIs use.
    pub settings: ApiSettings,
    /// Changes the running log level (logger.v1).
    pub log_level: crate::logging::LogLevelHandle,
    /// When the server started (debug.v1 uptime).
    pub started_at: std::time::Instant,
    /// Per-IP limits for attestation and signing.
    pub rate_limits: ratelimit::RateLimiters,
    /// The configured node attestors, by name.
    pub node_attestors: crate::plugins::nodeattestor::NodeAttestors,
    /// Fetches federated bundles; the trustdomain API wakes it and asks it for refreshes.
    pub bundle_refresher: Arc<crate::federation::refresher::BundleRefresher>,
}

/// Settings the APIs need from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `default_x509_svid_ttl`.
    pub default_x509_svid_ttl: Duration,
    /// `default_jwt_svid_ttl`.
    pub default_jwt_svid_ttl: Duration,
    /// `agent_ttl`; `None` means the default X509-SVID TTL.
    pub agent_ttl: Option<Duration>,
    /// `admin_ids`: callers with these SVIDs are admins.
    pub admin_ids: Vec<SpiffeId>,
    /// `ratelimit.attestation`.
    pub rate_limit_attestation: bool,
    /// `ratelimit.signing`.
    pub rate_limit_signing: bool,
}

/// How the caller reached us, set by the endpoint before authorization.
#[derive(Debug, Clone)]
pub enum Peer {
    /// Over the admin unix socket.
    Local,
    /// Over TCP, with the client certificate chain if one was presented (already verified
    /// against the trust bundle by the TLS layer).
    Tcp {
        /// Remote address, for per-IP rate limits.
        addr: Option<SocketAddr>,
        /// The presented chain, leaf first.
        chain: Option<Vec<Vec<u8>>>,
        /// The SPIFFE ID in the leaf, when a chain was presented.
        spiffe_id: Option<SpiffeId>,
    },
}

/// Who the caller is, as the authorization layer found; placed in request extensions for
/// the services.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Came over the admin socket.
    pub local: bool,
    /// Presented an SVID listed in `admin_ids` or of an `admin` entry.
    pub admin: bool,
    /// Presented a valid, current, non-banned agent SVID: the agent's SPIFFE ID.
    pub agent_id: Option<SpiffeId>,
    /// Presented an SVID of a `downstream` entry: that entry's ID.
    pub downstream_entry_id: Option<String>,
    /// The presented SVID's SPIFFE ID, if any.
    pub spiffe_id: Option<SpiffeId>,
    /// Remote address, if TCP.
    pub addr: Option<SocketAddr>,
}
