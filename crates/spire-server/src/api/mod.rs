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
pub mod audit;
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
    /// `audit_log_enabled`: every authorized call writes upstream's "API accessed" entry.
    pub audit_log_enabled: bool,
    /// `disable_jwt_svids`: the JWT RPCs answer Unimplemented, as upstream's.
    pub disable_jwt_svids: bool,
}

impl Default for ApiSettings {
    /// What a `server.conf` that sets none of these keys gets, as upstream: 1 h X509-SVIDs,
    /// 5 min JWT-SVIDs, agents as long as X509-SVIDs, no admin IDs, both rate limits on,
    /// no audit log, JWT-SVIDs enabled.
    fn default() -> Self {
        Self {
            default_x509_svid_ttl: crate::config::DEFAULT_X509_SVID_TTL,
            default_jwt_svid_ttl: crate::config::DEFAULT_JWT_SVID_TTL,
            agent_ttl: None,
            admin_ids: Vec::new(),
            rate_limit_attestation: true,
            rate_limit_signing: true,
            audit_log_enabled: false,
            disable_jwt_svids: false,
        }
    }
}

/// How the caller reached us, set by the endpoint before authorization.
#[derive(Debug, Clone)]
pub enum Peer {
    /// Over the admin unix socket, with the calling process when the kernel told us
    /// (`SO_PEERCRED`), for the audit log's `caller_uid`/`caller_gid`/`caller_path`.
    Local {
        /// The connecting process.
        process: Option<LocalProcess>,
    },
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

/// The process at the other end of an admin socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalProcess {
    /// Its process id, when the kernel reports one.
    pub pid: Option<i32>,
    /// Its effective user id at connect time.
    pub uid: u32,
    /// Its effective group id at connect time.
    pub gid: u32,
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
    /// The calling process of an admin socket connection, when known.
    pub process: Option<LocalProcess>,
    /// How the policy admitted the call, as upstream logs it in `authorized_as`:
    /// `nobody` (open RPC), `local`, `admin`, `downstream` or `agent`.
    pub authorized_as: &'static str,
    /// What proved it (`authorized_via`): `transport`, `config`, `entries`, `datastore`, or
    /// empty for an open RPC.
    pub authorized_via: &'static str,
}
