//! The CA manager: two slots (current and next) for the X509 CA and two for the JWT key,
//! rotated on upstream's schedule (`pkg/server/ca/manager` and `ca/rotator`):
//!
//! - the next authority is prepared once the current one has passed half of its lifetime
//!   (at most 30 days before it expires), and goes into the trust bundle at once, so every
//!   consumer trusts it before anything is signed with it;
//! - it is activated when `min(lifetime / 6, 7 days)` of the current one's lifetime is left;
//! - the old one stays in the bundle until it has been expired for a day, then is pruned.
//!
//! Every change is written to the CA journal, so a restart with the same key manager and
//! datastore resumes with the same authorities.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use spire_common::telemetry::server as metrics;

use spire_core::jwt::{JwtSvidParams, new_jwt_id};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{self, CaTemplate, Subject, SvidTemplate, Validity, X509Error};
use spire_proto::spire::api::types;
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use super::journal::{Journal, JwtKeyEntry, Status, X509CaEntry};
use super::signer::{self, CaSigner, X509OrKey};
use super::{
    AuthorityState, CaConfig, CaError, RefusalKind, ServerIdentity, SignedJwtSvid, X509SvidRequest,
};
use crate::datastore::{DataStore, DataStoreError};
use crate::plugins::credentialcomposer::{ComposerError, X509CaAttributes, X509SvidAttributes};
use crate::plugins::keymanager::{KeyManager, SigningKey};
use crate::plugins::upstreamauthority::UpstreamAuthority;

mod upstream;

/// Prepare the next authority when this much of the current one's lifetime is left, at most.
const PREPARATION_CAP: time::Duration = time::Duration::days(30);
/// ... and at least `lifetime / 2`.
const PREPARATION_DIVISOR: i32 = 2;
/// Activate the next authority when this much of the current one's lifetime is left, at most.
const ACTIVATION_CAP: time::Duration = time::Duration::days(7);
/// ... and at least `lifetime / 6`.
const ACTIVATION_DIVISOR: i32 = 6;
/// Authorities stay in the bundle this long after they expire (upstream's safety threshold).
const BUNDLE_PRUNE_GRACE: time::Duration = time::Duration::hours(24);
/// How often expired authorities are pruned from the bundle.
const BUNDLE_PRUNE_INTERVAL: time::Duration = time::Duration::hours(6);

/// An X509 CA that can sign: its key (checked against the certificate once, so signing does
/// not parse it again), certificate and the chain from the upstream authority.
struct X509Ca {
    signer: CaSigner,
    certificate: Vec<u8>,
    /// The CA certificate followed by upstream intermediates; empty when self-signed.
    upstream_chain: Vec<Vec<u8>>,
}

impl X509Ca {
    fn new(
        key: SigningKey,
        certificate: Vec<u8>,
        upstream_chain: Vec<Vec<u8>>,
    ) -> Result<Self, CaError> {
        Ok(Self {
            signer: CaSigner::new(key, &certificate)?,
            certificate,
            upstream_chain,
        })
    }
}

/// Maps a failure to build or sign a certificate.
fn sign_error(e: X509OrKey) -> CaError {
    match e {
        X509OrKey::X509(e) => x509_error(e),
        X509OrKey::Key(e) => e,
    }
}

/// A JWT signing key with its `kid` and expiry.
struct JwtKey {
    key: SigningKey,
    kid: String,
    not_after: OffsetDateTime,
}

/// One slot (`A` or `B`). After rotation the old slot keeps its ID, expiry and status `Old`
/// but no longer its key material (upstream's `Reset`).
struct Slot<T> {
    id: &'static str,
    issued_at: OffsetDateTime,
    authority: Option<Arc<T>>,
    status: Status,
    authority_id: String,
    /// Subject key ID of the upstream authority that signed this CA (its authority key ID),
    /// lowercase hex; empty when self-signed or for JWT keys.
    upstream_authority_id: String,
    not_after: OffsetDateTime,
}

impl<T> Slot<T> {
    fn empty(id: &'static str) -> Self {
        Self {
            id,
            issued_at: OffsetDateTime::UNIX_EPOCH,
            authority: None,
            status: Status::Unknown,
            authority_id: String::new(),
            upstream_authority_id: String::new(),
            not_after: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn is_empty(&self) -> bool {
        self.authority.is_none() || self.status == Status::Old
    }

    fn reset(&mut self) {
        self.authority = None;
        self.status = Status::Old;
    }

    fn should_prepare_next(&self, now: OffsetDateTime) -> bool {
        self.authority.is_some()
            && now
                > threshold(
                    self.issued_at,
                    self.not_after,
                    PREPARATION_DIVISOR,
                    PREPARATION_CAP,
                )
    }

    fn should_activate_next(&self, now: OffsetDateTime) -> bool {
        self.authority.is_some()
            && now
                > threshold(
                    self.issued_at,
                    self.not_after,
                    ACTIVATION_DIVISOR,
                    ACTIVATION_CAP,
                )
    }

    fn state(&self) -> AuthorityState {
        AuthorityState {
            authority_id: self.authority_id.clone(),
            expires_at: self.not_after.unix_timestamp(),
            upstream_authority_subject_key_id: self.upstream_authority_id.clone(),
        }
    }
}

/// `not_after - min(lifetime / divisor, cap)`, as upstream's preparation and activation
/// thresholds.
fn threshold(
    issued_at: OffsetDateTime,
    not_after: OffsetDateTime,
    divisor: i32,
    cap: time::Duration,
) -> OffsetDateTime {
    let lifetime = not_after - issued_at;
    not_after - (lifetime / divisor).min(cap)
}

fn other_slot_id(id: &str) -> &'static str {
    if id == "A" { "B" } else { "A" }
}

fn x509_key_id(slot: &str) -> String {
    format!("x509-CA-{slot}")
}

fn jwt_key_id(slot: &str) -> String {
    format!("JWT-Signer-{slot}")
}

/// The state changed by rotation, under one lock so rotation steps never interleave.
struct State {
    journal: Journal,
    current_x509: Slot<X509Ca>,
    next_x509: Slot<X509Ca>,
    current_jwt: Slot<JwtKey>,
    next_jwt: Slot<JwtKey>,
    /// When the server identity is due for renewal; `None` renews on the next tick.
    identity_renew_at: Option<OffsetDateTime>,
    last_prune: OffsetDateTime,
}

/// Signs SVIDs with the active authorities and rotates them.
pub struct CaManager {
    config: CaConfig,
    trust_domain: TrustDomain,
    key_manager: Arc<dyn KeyManager>,
    upstream: Option<Arc<dyn UpstreamAuthority>>,
    datastore: Arc<dyn DataStore>,
    state: Mutex<State>,
    /// The active authorities, for the signing paths (which never wait for rotation).
    active_x509: RwLock<Option<Arc<X509Ca>>>,
    active_jwt: RwLock<Option<Arc<JwtKey>>>,
    identity_tx: watch::Sender<Option<ServerIdentity>>,
    identity: watch::Receiver<Option<ServerIdentity>>,
    /// Bumped whenever this manager changes the trust domain's stored bundle, so bundle
    /// notifiers hear of a rotation at once instead of at their next poll.
    bundle_changed: watch::Sender<u64>,
    /// Rotation ticks that failed in a row (the `server.ca.rotator` health check).
    failed_rotations: std::sync::atomic::AtomicU32,
    /// Upstream roots seen tainted and waiting for rotation, and the last upstream bundle.
    upstream_tracker: std::sync::Mutex<upstream::UpstreamTracker>,
    /// Whether the "plugin does not publish JWT keys" warning was logged.
    jwt_unimplemented_warned: std::sync::atomic::AtomicBool,
    /// `default_x509_svid_ttl` and `default_jwt_svid_ttl` in effect; a configuration reload
    /// changes them for the next SVID.
    default_ttls: std::sync::RwLock<(Duration, Duration)>,
}

impl std::fmt::Debug for CaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaManager")
            .field("trust_domain", &self.trust_domain)
            .field("key_manager", &self.key_manager.name())
            .field("upstream", &self.upstream.as_ref().map(|u| u.name()))
            .finish_non_exhaustive()
    }
}

fn datastore_error(context: &str, e: DataStoreError) -> CaError {
    match e {
        DataStoreError::InvalidArgument(m) => CaError::InvalidArgument(format!("{context}: {m}")),
        DataStoreError::NotFound(m) => {
            CaError::FailedPrecondition(format!("{context}: {m} not found"))
        }
        other => CaError::Internal(format!("{context}: {other}")),
    }
}

/// Maps certificate building errors: those caused by the request are InvalidArgument.
/// A composer's failure: signing stops with it, as upstream's template builder does.
fn composer_error(e: ComposerError) -> CaError {
    CaError::Internal(e.to_string())
}

fn x509_error(e: X509Error) -> CaError {
    match e {
        X509Error::UnsupportedPublicKey(_)
        | X509Error::MultiValuedSubject { .. }
        | X509Error::InvalidDnsName(_)
        | X509Error::LeafIdWithoutPath(_)
        | X509Error::MalformedCsr(_)
        | X509Error::CsrSignature(_)
        | X509Error::TimeOutOfRange(_) => CaError::InvalidArgument(e.to_string()),
        X509Error::EmptyValidity { .. } => {
            CaError::FailedPrecondition(format!("the CA expires too soon to sign: {e}"))
        }
        other => CaError::Internal(format!("signing failed: {other}")),
    }
}

/// A time as upstream's JSON log lines write it (Go's `time.Time` marshals as RFC 3339 with
/// nanoseconds, trailing zeros trimmed), in UTC.
fn log_time(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    utc.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| utc.to_string())
}

fn to_time(ttl: Duration) -> Result<time::Duration, CaError> {
    time::Duration::try_from(ttl)
        .map_err(|_| CaError::InvalidArgument(format!("TTL {ttl:?} is too large")))
}

/// SHA-1 of the public key bits of a SubjectPublicKeyInfo, lowercase hex: the subject key ID
/// upstream computes, and so the X509 authority ID of a CA with this key.
fn spki_key_id(spki_der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    let sum = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &spki.subject_public_key.data,
    );
    Some(hex::encode(sum.as_ref()))
}

/// The X509 authority ID of a CA certificate: its subject key ID, lowercase hex.
fn certificate_authority_id(der: &[u8]) -> Result<String, CaError> {
    match x509::subject_key_id(der).map_err(|e| CaError::Internal(e.to_string()))? {
        Some(skid) => Ok(hex::encode(skid)),
        None => x509::certificate_public_key(der)
            .ok()
            .as_deref()
            .and_then(spki_key_id)
            .ok_or_else(|| CaError::Internal("CA certificate has no usable public key".into())),
    }
}

/// The authority key ID of a certificate, lowercase hex; empty when absent.
fn certificate_authority_key_id(der: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return String::new();
    };
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// A random `kid` of 32 letters and digits, as upstream's `newKeyID`.
fn new_key_id() -> Result<String, CaError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| CaError::Internal("no randomness for a JWT key ID".into()))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

async fn generate_key(key_type: KeyType) -> Result<PrivateKey, CaError> {
    tokio::task::spawn_blocking(move || PrivateKey::generate(key_type))
        .await
        .map_err(|e| CaError::Internal(format!("key generation task failed: {e}")))?
        .map_err(|e| CaError::Internal(e.to_string()))
}

impl CaManager {
    /// The X509-SVID TTL used when a request names none.
    pub fn default_x509_svid_ttl(&self) -> Duration {
        self.default_ttls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// The JWT-SVID TTL used when a request names none.
    pub fn default_jwt_svid_ttl(&self) -> Duration {
        self.default_ttls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
    }

    /// Changes the default X509-SVID and JWT-SVID TTLs for SVIDs signed from now on (a
    /// configuration reload); SVIDs already signed keep theirs.
    pub fn set_default_svid_ttls(&self, x509: Duration, jwt: Duration) {
        *self
            .default_ttls
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (x509, jwt);
    }

    /// Loads the CA journal and key manager keys (or mints new authorities), activates the
    /// current authorities and issues the server identity, so the returned manager can sign
    /// at once. Fails when no CA can be made (e.g. the upstream authority refuses).
    pub async fn new(
        config: CaConfig,
        key_manager: Arc<dyn KeyManager>,
        upstream: Option<Arc<dyn UpstreamAuthority>>,
        datastore: Arc<dyn DataStore>,
    ) -> Result<Arc<Self>, CaError> {
        let trust_domain = config.trust_domain.clone();
        let now = (config.clock)();
        let (identity_tx, identity) = watch::channel(None);
        let manager = Arc::new(Self {
            trust_domain,
            key_manager,
            upstream,
            datastore,
            state: Mutex::new(State {
                journal: Journal::default(),
                current_x509: Slot::empty("A"),
                next_x509: Slot::empty("B"),
                current_jwt: Slot::empty("A"),
                next_jwt: Slot::empty("B"),
                identity_renew_at: None,
                last_prune: now,
            }),
            active_x509: RwLock::new(None),
            active_jwt: RwLock::new(None),
            identity_tx,
            identity,
            bundle_changed: watch::Sender::new(0),
            failed_rotations: std::sync::atomic::AtomicU32::new(0),
            upstream_tracker: std::sync::Mutex::default(),
            jwt_unimplemented_warned: std::sync::atomic::AtomicBool::new(false),
            default_ttls: std::sync::RwLock::new((
                config.default_x509_svid_ttl,
                config.default_jwt_svid_ttl,
            )),
            config,
        });
        manager.load(now).await?;
        manager.rotate().await?;
        Ok(manager)
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Changes whenever this manager changed the stored bundle (authority prepared or
    /// appended, pruned, tainted, revoked), so notifiers can push the new bundle without
    /// waiting for their poll of the datastore.
    pub fn bundle_changes(&self) -> watch::Receiver<u64> {
        self.bundle_changed.subscribe()
    }

    fn bundle_updated(&self) {
        self.bundle_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn now(&self) -> OffsetDateTime {
        (self.config.clock)()
    }

    fn jwt_key_type(&self) -> KeyType {
        self.config.jwt_key_type.unwrap_or(self.config.ca_key_type)
    }

    /// Checks rotation every `rotate_interval` (shorter for short `ca_ttl`s) until `cancel`
    /// fires. Errors are logged and retried on the next tick, as upstream's rotator does.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let short = (self.config.ca_ttl / 60).max(Duration::from_millis(100));
        let interval = self.config.rotate_interval.min(short);
        let poll = self.config.upstream_poll_interval;
        let mut next_poll = tokio::time::Instant::now();
        loop {
            // Without an upstream authority there is nothing to poll: rotation ticks only.
            let sleep = if self.upstream.is_some() {
                interval.min(next_poll.saturating_duration_since(tokio::time::Instant::now()))
            } else {
                interval
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
            }
            if self.upstream.is_some() && tokio::time::Instant::now() >= next_poll {
                next_poll = tokio::time::Instant::now() + poll;
                if let Err(e) = self.poll_upstream().await {
                    tracing::warn!(error = %e, "Upstream bundle sync failed; retrying on the next poll");
                }
            }
            use std::sync::atomic::Ordering;
            if let Err(e) = self.rotate().await {
                self.failed_rotations.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "CA rotation failed; retrying on the next tick");
            } else {
                self.failed_rotations.store(0, Ordering::Relaxed);
            }
        }
    }

    /// How many rotation ticks of [`CaManager::run`] failed in a row (0 after a success).
    pub fn failed_rotations(&self) -> u32 {
        self.failed_rotations
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One rotation step at the clock's current time: mints authorities when there are
    /// none, prepares and activates the next ones when due, renews the server identity and
    /// prunes the bundle when due. [`CaManager::run`] calls this on every tick; tests call it
    /// after moving the clock.
    pub async fn rotate(&self) -> Result<(), CaError> {
        let now = self.now();
        let mut state = self.state.lock().await;
        let x509 = self.rotate_x509(&mut state, now).await;
        if let Err(e) = &x509 {
            tracing::error!(error = %e, "Unable to rotate X509 CA");
        }
        let jwt = if self.config.disable_jwt_svids {
            Ok(())
        } else {
            self.rotate_jwt(&mut state, now).await
        };
        if let Err(e) = &jwt {
            tracing::error!(error = %e, "Unable to rotate JWT key");
        }
        if state.identity_renew_at.is_none_or(|at| now >= at)
            && let Err(e) = self.renew_identity(&mut state, now).await
        {
            tracing::error!(error = %e, "Unable to renew the server identity");
        }
        if now - state.last_prune >= BUNDLE_PRUNE_INTERVAL {
            state.last_prune = now;
            if let Err(e) = self.prune_bundle_at(now).await {
                tracing::error!(error = %e, "Could not prune the trust bundle");
            }
        }
        x509.and(jwt)
    }

    /// Removes authorities that expired more than a day ago from the trust bundle (never
    /// the last X509 one); tells whether anything was removed. Runs every 6 hours on its own.
    pub async fn prune_bundle(&self) -> Result<bool, CaError> {
        self.prune_bundle_at(self.now()).await
    }

    async fn prune_bundle_at(&self, now: OffsetDateTime) -> Result<bool, CaError> {
        let started = Instant::now();
        let result = self.prune_expired(now).await;
        metrics::bundle_pruned(result.as_ref().map(|c| *c).map_err(|_| ()), started);
        result
    }

    async fn prune_expired(&self, now: OffsetDateTime) -> Result<bool, CaError> {
        let before = (now - BUNDLE_PRUNE_GRACE).unix_timestamp();
        let changed = self
            .datastore
            .prune_bundle(self.trust_domain.name(), before)
            .await
            .map_err(|e| datastore_error("unable to prune bundle", e))?;
        if changed {
            tracing::info!("Expired authorities were pruned from the trust bundle");
            self.bundle_updated();
        }
        Ok(changed)
    }

    // ---- loading ----

    /// Finds this server's journal row: the one whose active X509 authority ID is the key ID
    /// of one of our key manager keys, all listed at once (upstream's `findCAJournal`).
    async fn find_journal(&self) -> Result<Journal, CaError> {
        let keys =
            self.key_manager.get_keys().await.map_err(|e| {
                CaError::Internal(format!("failed to get keys from key manager: {e}"))
            })?;
        for (_, key) in keys {
            let Some(authority_id) = spki_key_id(&key.public_key_der()) else {
                continue;
            };
            let row = self
                .datastore
                .find_ca_journal(&authority_id)
                .await
                .map_err(|e| datastore_error("failed to find the CA journal", e))?;
            if let Some(row) = row {
                return Journal::from_row(&row).map_err(|e| {
                    CaError::Internal(format!("unable to decode CA journal {}: {e}", row.id))
                });
            }
        }
        tracing::info!(
            "There is not a CA journal record that matches any of the local X509 authority IDs"
        );
        Ok(Journal::default())
    }

    async fn load(&self, now: OffsetDateTime) -> Result<(), CaError> {
        let journal = self.find_journal().await?;
        tracing::info!(
            x509_cas = journal.entries.x509_cas.len(),
            jwt_keys = journal.entries.jwt_keys.len(),
            "Journal loaded"
        );
        // Keys missing from the bundle (e.g. after a database restore) are not used: nobody
        // could verify what they sign. A new authority is minted instead.
        let bundle = self
            .datastore
            .fetch_bundle(self.trust_domain.name())
            .await
            .map_err(|e| datastore_error("failed to fetch the trust bundle", e))?;
        let x509_entries: Vec<X509CaEntry> = journal
            .entries
            .x509_cas
            .iter()
            .filter(|e| {
                self.upstream.is_some()
                    || bundle
                        .as_ref()
                        .is_none_or(|b| b.x509_authorities.iter().any(|a| a.asn1 == e.certificate))
            })
            .cloned()
            .collect();
        let jwt_entries: Vec<JwtKeyEntry> = journal
            .entries
            .jwt_keys
            .iter()
            .filter(|e| {
                bundle
                    .as_ref()
                    .is_none_or(|b| b.jwt_authorities.iter().any(|a| a.key_id == e.kid))
            })
            .cloned()
            .collect();

        let mut current_x509 = None;
        let mut next_x509 = None;
        for entry in x509_entries.iter().rev() {
            let Some(slot) = self.load_x509_slot(entry).await? else {
                continue;
            };
            place(&mut current_x509, &mut next_x509, slot);
            if current_x509.is_some() && next_x509.is_some() {
                break;
            }
        }
        let mut current_jwt = None;
        let mut next_jwt = None;
        for entry in jwt_entries.iter().rev() {
            let Some(slot) = self.load_jwt_slot(entry).await? else {
                continue;
            };
            place(&mut current_jwt, &mut next_jwt, slot);
            if current_jwt.is_some() && next_jwt.is_some() {
                break;
            }
        }
        let (current_x509, next_x509) = complete(current_x509, next_x509);
        let (current_jwt, next_jwt) = complete(current_jwt, next_jwt);

        let mut state = self.state.lock().await;
        state.journal = journal;
        state.current_x509 = current_x509;
        state.next_x509 = next_x509;
        state.current_jwt = current_jwt;
        state.next_jwt = next_jwt;
        // Activate at once unless the next one is already due to take over.
        if !state.current_x509.is_empty() && !state.current_x509.should_activate_next(now) {
            self.activate_x509(&mut state).await;
        }
        if !state.current_jwt.is_empty() && !state.current_jwt.should_activate_next(now) {
            self.activate_jwt(&mut state).await;
        }
        Ok(())
    }

    async fn load_x509_slot(&self, entry: &X509CaEntry) -> Result<Option<Slot<X509Ca>>, CaError> {
        let Some(id) = slot_id(&entry.slot_id) else {
            tracing::warn!(slot = %entry.slot_id, "X509CA slot unusable: no slot id");
            return Ok(None);
        };
        let validity = x509::certificate_validity(&entry.certificate)
            .map_err(|e| CaError::Internal(format!("unable to parse CA certificate: {e}")))?;
        let key = self
            .key_manager
            .get_key(&x509_key_id(id))
            .await
            .map_err(|e| CaError::Internal(format!("key manager: {e}")))?;
        let Some(key) = key else {
            tracing::warn!(slot = id, "X509CA slot unusable: no key manager key");
            return Ok(None);
        };
        let cert_key = x509::certificate_public_key(&entry.certificate).ok();
        if cert_key.as_deref().and_then(spki_key_id) != spki_key_id(&key.public_key_der()) {
            tracing::warn!(
                slot = id,
                "X509CA slot unusable: public key does not match key manager key"
            );
            return Ok(None);
        }
        let authority_id = if entry.authority_id.is_empty() {
            certificate_authority_id(&entry.certificate)?
        } else {
            entry.authority_id.clone()
        };
        Ok(Some(Slot {
            id,
            issued_at: OffsetDateTime::from_unix_timestamp(entry.issued_at)
                .unwrap_or(validity.not_before),
            authority: Some(Arc::new(X509Ca::new(
                key,
                entry.certificate.clone(),
                entry.upstream_chain.clone(),
            )?)),
            status: Status::try_from(entry.status).unwrap_or(Status::Unknown),
            authority_id,
            upstream_authority_id: entry.upstream_authority_id.clone(),
            not_after: validity.not_after,
        }))
    }

    async fn load_jwt_slot(&self, entry: &JwtKeyEntry) -> Result<Option<Slot<JwtKey>>, CaError> {
        let Some(id) = slot_id(&entry.slot_id) else {
            tracing::warn!(slot = %entry.slot_id, "JWT key slot unusable: no slot id");
            return Ok(None);
        };
        let key = self
            .key_manager
            .get_key(&jwt_key_id(id))
            .await
            .map_err(|e| CaError::Internal(format!("key manager: {e}")))?;
        let Some(key) = key else {
            tracing::warn!(slot = id, "JWT key slot unusable: no key manager key");
            return Ok(None);
        };
        if spki_key_id(&entry.public_key) != spki_key_id(&key.public_key_der()) {
            tracing::warn!(
                slot = id,
                "JWT key slot unusable: public key does not match key manager key"
            );
            return Ok(None);
        }
        let not_after = OffsetDateTime::from_unix_timestamp(entry.not_after)
            .map_err(|e| CaError::Internal(format!("JWT key expiry out of range: {e}")))?;
        Ok(Some(Slot {
            id,
            issued_at: OffsetDateTime::from_unix_timestamp(entry.issued_at)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            authority: Some(Arc::new(JwtKey {
                key,
                kid: entry.kid.clone(),
                not_after,
            })),
            status: Status::try_from(entry.status).unwrap_or(Status::Unknown),
            authority_id: if entry.authority_id.is_empty() {
                entry.kid.clone()
            } else {
                entry.authority_id.clone()
            },
            upstream_authority_id: String::new(),
            not_after,
        }))
    }

    // ---- rotation (upstream's rotator) ----

    async fn rotate_x509(&self, state: &mut State, now: OffsetDateTime) -> Result<(), CaError> {
        if state.current_x509.is_empty() {
            self.prepare_x509(state, now).await?;
            self.activate_x509(state).await;
        }
        if state.next_x509.is_empty() && state.current_x509.should_prepare_next(now) {
            self.prepare_x509(state, now).await?;
        }
        if state.current_x509.should_activate_next(now) && !state.next_x509.is_empty() {
            self.rotate_x509_slots(state).await;
        }
        Ok(())
    }

    async fn rotate_jwt(&self, state: &mut State, now: OffsetDateTime) -> Result<(), CaError> {
        if state.current_jwt.is_empty() {
            self.prepare_jwt(state, now).await?;
            self.activate_jwt(state).await;
        }
        if state.next_jwt.is_empty() && state.current_jwt.should_prepare_next(now) {
            self.prepare_jwt(state, now).await?;
        }
        if state.current_jwt.should_activate_next(now) && !state.next_jwt.is_empty() {
            self.rotate_jwt_slots(state).await;
        }
        Ok(())
    }

    async fn save_journal(&self, state: &mut State) {
        if let Err(e) = state.journal.save(&self.datastore).await {
            tracing::error!(error = %e, "Could not save the CA journal in the datastore");
        }
    }

    /// Mints a CA into the current slot when it is empty, else into the next slot, and puts
    /// what consumers need to trust it into the bundle before it can sign anything.
    async fn prepare_x509(&self, state: &mut State, now: OffsetDateTime) -> Result<(), CaError> {
        let started = Instant::now();
        let result = self.prepare_x509_slot(state, now).await;
        metrics::x509_ca_prepared(result.is_ok(), started);
        result
    }

    async fn prepare_x509_slot(
        &self,
        state: &mut State,
        now: OffsetDateTime,
    ) -> Result<(), CaError> {
        let use_current = state.current_x509.is_empty();
        let slot = if use_current {
            &mut state.current_x509
        } else {
            &mut state.next_x509
        };
        slot.reset();
        let slot_id = slot.id;
        let key = self
            .key_manager
            .generate_key(&x509_key_id(slot_id), self.config.ca_key_type)
            .await
            .map_err(|e| CaError::Internal(format!("key manager: {e}")))?;
        let ca = match &self.upstream {
            Some(upstream) => self.upstream_sign_x509_ca(upstream.as_ref(), key).await?,
            None => self.self_sign_x509_ca(key, now).await?,
        };
        let validity = x509::certificate_validity(&ca.certificate)
            .map_err(|e| CaError::Internal(e.to_string()))?;
        let authority_id = certificate_authority_id(&ca.certificate)?;
        let upstream_authority_id = certificate_authority_key_id(&ca.certificate);
        let entry = X509CaEntry {
            slot_id: slot_id.to_owned(),
            issued_at: now.unix_timestamp(),
            certificate: ca.certificate.clone(),
            upstream_chain: ca.upstream_chain.clone(),
            status: Status::Prepared as i32,
            authority_id: authority_id.clone(),
            not_after: validity.not_after.unix_timestamp(),
            upstream_authority_id: if self.upstream.is_some() {
                upstream_authority_id.clone()
            } else {
                String::new()
            },
            not_after_is_effective: false,
        };
        let slot = if use_current {
            &mut state.current_x509
        } else {
            &mut state.next_x509
        };
        *slot = Slot {
            id: slot_id,
            issued_at: now,
            authority: Some(Arc::new(ca)),
            status: Status::Prepared,
            authority_id: authority_id.clone(),
            upstream_authority_id: if self.upstream.is_some() {
                upstream_authority_id.clone()
            } else {
                String::new()
            },
            not_after: validity.not_after,
        };
        state.journal.append_x509(entry);
        self.save_journal(state).await;
        tracing::info!(
            slot = slot_id,
            issued_at = %log_time(now),
            expiration = %log_time(validity.not_after),
            self_signed = self.upstream.is_none(),
            local_authority_id = %authority_id,
            upstream_authority_id = %upstream_authority_id,
            "X509 CA prepared"
        );
        Ok(())
    }

    async fn self_sign_x509_ca(
        &self,
        key: SigningKey,
        now: OffsetDateTime,
    ) -> Result<X509Ca, CaError> {
        let template = CaTemplate {
            trust_domain: self.trust_domain.clone(),
            subject: self
                .composed_ca_subject(self.config.ca_subject.clone())
                .await?,
            validity: Validity::from_now(now, to_time(self.config.ca_ttl)?),
        };
        let certificate = signer::self_signed_ca(&key, &template).await?;
        self.append_bundle(vec![certificate.clone()], vec![])
            .await?;
        X509Ca::new(key, certificate, Vec::new())
    }

    async fn upstream_sign_x509_ca(
        &self,
        upstream: &dyn UpstreamAuthority,
        key: SigningKey,
    ) -> Result<X509Ca, CaError> {
        let subject = self
            .composed_ca_subject(self.config.ca_subject.clone())
            .await?;
        let csr = signer::upstream_ca_csr(&key, &subject, &self.trust_domain).await?;
        let minted = upstream
            .mint_x509_ca(&csr, self.config.ca_ttl)
            .await
            .map_err(|e| {
                CaError::Internal(format!(
                    "upstream authority {} failed to mint the X509 CA: {e}",
                    upstream.name()
                ))
            })?;
        let certificate = minted.x509_ca_chain.first().cloned().ok_or_else(|| {
            CaError::Internal(format!(
                "upstream authority {} returned an empty X509 CA chain",
                upstream.name()
            ))
        })?;
        let cert_key = x509::certificate_public_key(&certificate)
            .map_err(|e| CaError::Internal(format!("upstream-signed X509 CA: {e}")))?;
        if spki_key_id(&cert_key) != spki_key_id(&key.public_key_der()) {
            return Err(CaError::Internal(
                "upstream-signed X509 CA does not certify the key the CSR was made with".into(),
            ));
        }
        match x509::certificate_spiffe_id(&certificate) {
            Ok(id) if id.as_str() == self.trust_domain.id_string() => {}
            Ok(id) => {
                return Err(CaError::Internal(format!(
                    "upstream-signed X509 CA has URI SAN {id}, expected {}",
                    self.trust_domain.id_string()
                )));
            }
            Err(e) => {
                return Err(CaError::Internal(format!("upstream-signed X509 CA: {e}")));
            }
        }
        if minted.upstream_x509_roots.is_empty() {
            return Err(CaError::Internal(format!(
                "upstream authority {} returned no X509 roots",
                upstream.name()
            )));
        }
        // The upstream roots are the trust bundle; our intermediate chains to them.
        self.sync_x509_roots(minted.upstream_x509_roots).await?;
        X509Ca::new(key, certificate, minted.x509_ca_chain)
    }

    async fn append_bundle(
        &self,
        x509_authorities: Vec<Vec<u8>>,
        jwt_authorities: Vec<types::JwtKey>,
    ) -> Result<types::Bundle, CaError> {
        self.datastore
            .append_bundle(types::Bundle {
                trust_domain: self.trust_domain.name().to_owned(),
                x509_authorities: x509_authorities
                    .into_iter()
                    .map(|asn1| types::X509Certificate {
                        asn1,
                        tainted: false,
                    })
                    .collect(),
                jwt_authorities,
                refresh_hint: 0,
                sequence_number: 0,
                wit_authorities: Vec::new(),
            })
            .await
            .map_err(|e| datastore_error("unable to append to the trust bundle", e))
            .inspect(|_| self.bundle_updated())
    }

    async fn activate_x509(&self, state: &mut State) {
        let slot = &mut state.current_x509;
        slot.status = Status::Active;
        let authority = slot.authority.clone();
        let (authority_id, issued_at) = (slot.authority_id.clone(), slot.issued_at);
        tracing::info!(
            slot = slot.id,
            issued_at = %log_time(slot.issued_at),
            expiration = %log_time(slot.not_after),
            local_authority_id = %slot.authority_id,
            upstream_authority_id = %slot.upstream_authority_id,
            "X509 CA activated"
        );
        metrics::x509_ca_activated(self.trust_domain.name(), slot.not_after.into());
        if !state
            .journal
            .set_x509_status(&authority_id, issued_at.unix_timestamp(), Status::Active)
        {
            tracing::error!(local_authority_id = %authority_id, "Failed to update to activated status on X509CA journal entry");
        }
        self.save_journal(state).await;
        *self
            .active_x509
            .write()
            .unwrap_or_else(PoisonError::into_inner) = authority;
        // SVIDs from the new CA from now on, including the server's own.
        state.identity_renew_at = None;
    }

    async fn rotate_x509_slots(&self, state: &mut State) {
        std::mem::swap(&mut state.current_x509, &mut state.next_x509);
        state.next_x509.reset();
        let (old_id, old_issued) = (
            state.next_x509.authority_id.clone(),
            state.next_x509.issued_at,
        );
        if !state
            .journal
            .set_x509_status(&old_id, old_issued.unix_timestamp(), Status::Old)
        {
            tracing::error!(local_authority_id = %old_id, "Failed to update status on X509CA journal entry");
        }
        self.activate_x509(state).await;
    }

    async fn prepare_jwt(&self, state: &mut State, now: OffsetDateTime) -> Result<(), CaError> {
        let started = Instant::now();
        let result = self.prepare_jwt_slot(state, now).await;
        metrics::jwt_key_prepared(result.is_ok(), started);
        result
    }

    async fn prepare_jwt_slot(
        &self,
        state: &mut State,
        now: OffsetDateTime,
    ) -> Result<(), CaError> {
        let use_current = state.current_jwt.is_empty();
        let slot = if use_current {
            &mut state.current_jwt
        } else {
            &mut state.next_jwt
        };
        slot.reset();
        let slot_id = slot.id;
        let key = self
            .key_manager
            .generate_key(&jwt_key_id(slot_id), self.jwt_key_type())
            .await
            .map_err(|e| CaError::Internal(format!("key manager: {e}")))?;
        let kid = new_key_id()?;
        let not_after = now + to_time(self.config.ca_ttl)?;
        let public_key = key.public_key_der();
        let jwt_key = types::JwtKey {
            public_key: public_key.clone(),
            key_id: kid.clone(),
            expires_at: not_after.unix_timestamp(),
            tainted: false,
        };
        if !self.publish_jwt_key(&jwt_key).await? {
            self.append_bundle(vec![], vec![jwt_key]).await?;
        }
        let slot = if use_current {
            &mut state.current_jwt
        } else {
            &mut state.next_jwt
        };
        *slot = Slot {
            id: slot_id,
            issued_at: now,
            authority: Some(Arc::new(JwtKey {
                key,
                kid: kid.clone(),
                not_after,
            })),
            status: Status::Prepared,
            authority_id: kid.clone(),
            upstream_authority_id: String::new(),
            not_after,
        };
        state.journal.append_jwt(JwtKeyEntry {
            slot_id: slot_id.to_owned(),
            issued_at: now.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
            kid: kid.clone(),
            public_key,
            status: Status::Prepared as i32,
            authority_id: kid.clone(),
        });
        self.save_journal(state).await;
        tracing::info!(
            slot = slot_id,
            issued_at = %log_time(now),
            expiration = %log_time(not_after),
            local_authority_id = %kid,
            "JWT key prepared"
        );
        Ok(())
    }

    async fn activate_jwt(&self, state: &mut State) {
        let slot = &mut state.current_jwt;
        slot.status = Status::Active;
        let authority = slot.authority.clone();
        let (authority_id, issued_at) = (slot.authority_id.clone(), slot.issued_at);
        tracing::info!(
            slot = slot.id,
            issued_at = %log_time(slot.issued_at),
            expiration = %log_time(slot.not_after),
            local_authority_id = %slot.authority_id,
            "JWT key activated"
        );
        metrics::jwt_key_activated(self.trust_domain.name(), slot.not_after.into());
        if !state
            .journal
            .set_jwt_status(&authority_id, issued_at.unix_timestamp(), Status::Active)
        {
            tracing::error!(local_authority_id = %authority_id, "Failed to update to activated status on JWTKey journal entry");
        }
        self.save_journal(state).await;
        *self
            .active_jwt
            .write()
            .unwrap_or_else(PoisonError::into_inner) = authority;
    }

    async fn rotate_jwt_slots(&self, state: &mut State) {
        std::mem::swap(&mut state.current_jwt, &mut state.next_jwt);
        state.next_jwt.reset();
        let (old_id, old_issued) = (
            state.next_jwt.authority_id.clone(),
            state.next_jwt.issued_at,
        );
        if !state
            .journal
            .set_jwt_status(&old_id, old_issued.unix_timestamp(), Status::Old)
        {
            tracing::error!(local_authority_id = %old_id, "Failed to update status on JWTKey journal entry");
        }
        self.activate_jwt(state).await;
    }

    async fn renew_identity(&self, state: &mut State, now: OffsetDateTime) -> Result<(), CaError> {
        let started = Instant::now();
        match self.renew_identity_at(state, now).await {
            Ok(None) => Ok(()),
            Ok(Some(not_after)) => {
                metrics::server_svid_rotated(Ok(not_after.into()), started);
                Ok(())
            }
            Err(e) => {
                metrics::server_svid_rotated(Err(()), started);
                Err(e)
            }
        }
    }

    /// Renews the server's own SVID; returns its expiry (`None` when there is no CA yet).
    async fn renew_identity_at(
        &self,
        state: &mut State,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, CaError> {
        let Some(ca) = self.active_x509() else {
            return Ok(None);
        };
        let key = generate_key(self.config.ca_key_type).await?;
        let server_id = self
            .trust_domain
            .id_with_path("/spire/server")
            .map_err(|e| CaError::Internal(e.to_string()))?;
        let (subject, dns_names) = if self.config.credential_composers.is_empty() {
            (Subject::default_x509_svid(), Vec::new())
        } else {
            let composed = self
                .config
                .credential_composers
                .server_x509_svid(X509SvidAttributes {
                    subject: Subject::default_x509_svid(),
                    dns_sans: Vec::new(),
                })
                .await
                .map_err(composer_error)?;
            (composed.subject, composed.dns_sans)
        };
        let chain = self
            .sign_leaf(
                &ca,
                &key.public_key_der(),
                server_id,
                dns_names,
                subject,
                self.default_x509_svid_ttl(),
                now,
            )
            .await?;
        let not_after = chain
            .first()
            .map(|leaf| x509::certificate_not_after(leaf))
            .transpose()
            .map_err(|e| CaError::Internal(e.to_string()))?
            .unwrap_or(now);
        // Renew at half of the lifetime, as upstream's server SVID rotator.
        state.identity_renew_at = Some(now + (not_after - now) / 2);
        self.identity_tx.send_replace(Some(ServerIdentity {
            chain,
            key: Arc::new(key),
        }));
        Ok(Some(not_after))
    }

    // ---- signing ----

    fn active_x509(&self) -> Option<Arc<X509Ca>> {
        self.active_x509
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn require_active_x509(&self) -> Result<Arc<X509Ca>, CaError> {
        self.active_x509()
            .ok_or_else(|| CaError::NotReady("no active X509 CA".into()))
    }

    fn check_member(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.is_member_of(&self.trust_domain) {
            Ok(())
        } else {
            Err(CaError::InvalidArgument(format!(
                "SPIFFE ID {id} is not a member of trust domain {}",
                self.trust_domain
            )))
        }
    }

    /// Signs a leaf with `ca`; the chain is the leaf then the upstream chain (empty when
    /// self-signed), as upstream's `makeCertChain`.
    #[allow(clippy::too_many_arguments, reason = "one call site per SVID kind")]
    async fn sign_leaf(
        &self,
        ca: &X509Ca,
        public_key_der: &[u8],
        spiffe_id: SpiffeId,
        dns_names: Vec<String>,
        subject: Subject,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        let mut template = SvidTemplate::new(spiffe_id, Validity::from_now(now, to_time(ttl)?));
        template.dns_names = dns_names;
        template.subject = subject;
        let leaf = ca
            .signer
            .x509_svid(public_key_der, &template)
            .await
            .map_err(sign_error)?;
        metrics::ca_signed(metrics::Signed::X509Svid);
        let mut chain = Vec::with_capacity(1 + ca.upstream_chain.len());
        chain.push(leaf);
        chain.extend(ca.upstream_chain.iter().cloned());
        Ok(chain)
    }

    /// Signs a workload X509-SVID; returns leaf then intermediates (upstream chain included,
    /// root excluded).
    pub async fn sign_workload_x509_svid(
        &self,
        request: X509SvidRequest,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        self.check_member(&request.spiffe_id)?;
        let ca = self.require_active_x509()?;
        let ttl = request
            .ttl
            .filter(|t| !t.is_zero())
            .unwrap_or_else(|| self.default_x509_svid_ttl());
        let mut subject = request
            .subject
            .filter(|s| !s.is_empty())
            .unwrap_or_else(Subject::default_x509_svid);
        let mut dns_names = request.dns_names;
        if !self.config.credential_composers.is_empty() {
            // As upstream's template builder: the first DNS name is the CN before composing.
            if let Some(first) = dns_names.first() {
                subject.common_name = Some(first.clone());
            }
            let composed = self
                .config
                .credential_composers
                .workload_x509_svid(
                    &request.spiffe_id,
                    &request.public_key_der,
                    X509SvidAttributes {
                        subject,
                        dns_sans: dns_names,
                    },
                )
                .await
                .map_err(composer_error)?;
            subject = composed.subject;
            dns_names = composed.dns_sans;
        }
        self.sign_leaf(
            &ca,
            &request.public_key_der,
            request.spiffe_id,
            dns_names,
            subject,
            ttl,
            self.now(),
        )
        .await
    }

    /// Signs an agent X509-SVID (TTL default `agent_ttl`, else the default X509-SVID TTL).
    pub async fn sign_agent_x509_svid(
        &self,
        public_key_der: &[u8],
        agent_id: &SpiffeId,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        self.check_member(agent_id)?;
        let ca = self.require_active_x509()?;
        let ttl = self
            .config
            .agent_ttl
            .filter(|t| !t.is_zero())
            .unwrap_or_else(|| self.default_x509_svid_ttl());
        let (subject, dns_names) = if self.config.credential_composers.is_empty() {
            (Subject::default_x509_svid(), Vec::new())
        } else {
            let composed = self
                .config
                .credential_composers
                .agent_x509_svid(
                    agent_id,
                    public_key_der,
                    X509SvidAttributes {
                        subject: Subject::default_x509_svid(),
                        dns_sans: Vec::new(),
                    },
                )
                .await
                .map_err(composer_error)?;
            (composed.subject, composed.dns_sans)
        };
        self.sign_leaf(
            &ca,
            public_key_der,
            agent_id.clone(),
            dns_names,
            subject,
            ttl,
            self.now(),
        )
        .await
    }

    /// Signs a downstream intermediate CA for a `downstream` entry's caller.
    pub async fn sign_downstream_x509_ca(
        &self,
        public_key_der: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        let ca = self.require_active_x509()?;
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(self.config.ca_ttl);
        // As upstream's credential builder: the parent's subject with OU DOWNSTREAM-<n>,
        // n being the length of the parent chain (the CA alone when self-signed).
        let parent_chain_len = ca.upstream_chain.len().max(1);
        let mut subject =
            crate::plugins::upstreamauthority::disk::certificate_subject(&ca.certificate);
        subject.organizational_unit = vec![format!("DOWNSTREAM-{parent_chain_len}")];
        let subject = self.composed_ca_subject(subject).await?;
        let template = CaTemplate {
            trust_domain: self.trust_domain.clone(),
            subject,
            validity: Validity::from_now(self.now(), to_time(ttl)?),
        };
        let cert = ca
            .signer
            .intermediate_ca(public_key_der, &template)
            .await
            .map_err(sign_error)?;
        metrics::ca_signed(metrics::Signed::X509CaSvid);
        let mut chain = Vec::with_capacity(1 + ca.upstream_chain.len());
        chain.push(cert);
        chain.extend(ca.upstream_chain.iter().cloned());
        Ok(chain)
    }

    /// Signs a JWT-SVID with the active JWT key.
    pub async fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Option<Duration>,
    ) -> Result<SignedJwtSvid, CaError> {
        self.sign_jwt_svid_with_jti(spiffe_id, audience, ttl, false)
            .await
    }

    /// Signs a JWT-SVID with the active JWT key; with `include_jti` it carries a unique
    /// `jti` claim (entries with `jwt_svid_include_jti`).
    pub async fn sign_jwt_svid_with_jti(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Option<Duration>,
        include_jti: bool,
    ) -> Result<SignedJwtSvid, CaError> {
        self.check_member(spiffe_id)?;
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(CaError::InvalidArgument(
                "at least one audience is required and none may be empty".into(),
            ));
        }
        let key = self
            .active_jwt
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| CaError::NotReady("no active JWT key".into()))?;
        let now = self.now();
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or_else(|| self.default_jwt_svid_ttl());
        let expires_at = (now + to_time(ttl)?).min(key.not_after).unix_timestamp();
        let issued_at = now.unix_timestamp();
        if expires_at <= issued_at {
            return Err(CaError::FailedPrecondition(
                "the active JWT key has expired".into(),
            ));
        }
        if !self.config.credential_composers.is_empty() {
            return self
                .sign_composed_jwt_svid(
                    &key,
                    spiffe_id,
                    audience,
                    issued_at,
                    expires_at,
                    include_jti,
                )
                .await;
        }
        let token = signer::jwt_svid(
            &key.key,
            &key.kid,
            &JwtSvidParams {
                subject: spiffe_id.clone(),
                audience: audience.to_vec(),
                expires_at,
                issued_at: Some(issued_at),
                issuer: self.config.jwt_issuer.clone(),
                algorithm: None,
                jwt_id: if include_jti {
                    Some(new_jwt_id().map_err(|e| CaError::Internal(e.to_string()))?)
                } else {
                    None
                },
            },
        )
        .await?;
        metrics::ca_signed(metrics::Signed::JwtSvid);
        Ok(SignedJwtSvid {
            token,
            issued_at,
            expires_at,
        })
    }

    /// The CA subject after the CredentialComposers (unchanged when none is configured).
    async fn composed_ca_subject(&self, subject: Subject) -> Result<Subject, CaError> {
        if self.config.credential_composers.is_empty() {
            return Ok(subject);
        }
        let composed = self
            .config
            .credential_composers
            .server_x509_ca(X509CaAttributes { subject })
            .await
            .map_err(composer_error)?;
        Ok(composed.subject)
    }

    /// Signs a JWT-SVID whose claims went through the CredentialComposers, as upstream's
    /// `BuildWorkloadJWTSVIDClaims`: `sub`, `exp`, `aud`, `iat` (and `iss`, `jti`) first,
    /// then each composer; `exp`/`iat` come back as JSON numbers and are signed as integers.
    async fn sign_composed_jwt_svid(
        &self,
        key: &JwtKey,
        spiffe_id: &SpiffeId,
        audience: &[String],
        issued_at: i64,
        expires_at: i64,
        include_jti: bool,
    ) -> Result<SignedJwtSvid, CaError> {
        use serde_json::Value;
        let mut claims = crate::plugins::credentialcomposer::JwtClaims::new();
        claims.insert("sub".into(), Value::from(spiffe_id.as_str()));
        claims.insert("exp".into(), Value::from(expires_at));
        claims.insert("aud".into(), Value::from(audience.to_vec()));
        claims.insert("iat".into(), Value::from(issued_at));
        if let Some(issuer) = &self.config.jwt_issuer {
            claims.insert("iss".into(), Value::from(issuer.as_str()));
        }
        if include_jti {
            let jti = new_jwt_id().map_err(|e| CaError::Internal(e.to_string()))?;
            claims.insert("jti".into(), Value::from(jti));
        }
        let mut claims = self
            .config
            .credential_composers
            .workload_jwt_svid(spiffe_id, claims)
            .await
            .map_err(composer_error)?;
        let mut times = [("iat", issued_at), ("exp", expires_at)];
        for (name, value) in &mut times {
            if let Some(number) = claims.get(*name).and_then(Value::as_f64) {
                #[allow(clippy::cast_possible_truncation, reason = "Unix seconds")]
                let seconds = number as i64;
                *value = seconds;
                claims.insert((*name).into(), Value::from(seconds));
            }
        }
        let token = signer::jwt_with_claims(&key.key, &key.kid, &claims).await?;
        metrics::ca_signed(metrics::Signed::JwtSvid);
        Ok(SignedJwtSvid {
            token,
            issued_at: times[0].1,
            expires_at: times[1].1,
        })
    }

    /// The server's TLS identity, updated on every renewal.
    pub fn server_identity(&self) -> watch::Receiver<Option<ServerIdentity>> {
        self.identity.clone()
    }

    // ---- local authority operations (upstream's localauthority API) ----

    /// States of the X509 authorities: (active, prepared, old).
    pub async fn x509_authority_states(
        &self,
    ) -> (
        Option<AuthorityState>,
        Option<AuthorityState>,
        Option<AuthorityState>,
    ) {
        let state = self.state.lock().await;
        slot_states(&state.current_x509, &state.next_x509)
    }

    /// States of the JWT authorities: (active, prepared, old).
    pub async fn jwt_authority_states(
        &self,
    ) -> (
        Option<AuthorityState>,
        Option<AuthorityState>,
        Option<AuthorityState>,
    ) {
        let state = self.state.lock().await;
        slot_states(&state.current_jwt, &state.next_jwt)
    }

    /// Prepares the next X509 authority now.
    pub async fn prepare_x509_authority(&self) -> Result<AuthorityState, CaError> {
        let mut state = self.state.lock().await;
        if state.current_x509.status != Status::Active {
            return Err(CaError::NotReady("server is initializing".into()));
        }
        self.prepare_x509(&mut state, self.now()).await?;
        Ok(state.next_x509.state())
    }

    /// Activates the prepared X509 authority with this ID.
    pub async fn activate_x509_authority(&self, id: &str) -> Result<AuthorityState, CaError> {
        let mut state = self.state.lock().await;
        check_prepared(&state.next_x509, id)?;
        self.rotate_x509_slots(&mut state).await;
        Ok(state.current_x509.state())
    }

    /// Taints the old X509 authority with this ID.
    pub async fn taint_x509_authority(&self, id: &str) -> Result<AuthorityState, CaError> {
        let state = self.state.lock().await;
        self.check_no_upstream("tainted")?;
        check_taintable(&state.current_x509, &state.next_x509, id)?;
        self.datastore
            .taint_x509_ca(self.trust_domain.name(), id)
            .await
            .map_err(|e| datastore_error("failed to taint X.509 authority", e))?;
        tracing::info!(local_authority_id = %id, "X.509 authority tainted");
        self.bundle_updated();
        Ok(state.next_x509.state())
    }

    /// Revokes the tainted old X509 authority with this ID.
    pub async fn revoke_x509_authority(&self, id: &str) -> Result<AuthorityState, CaError> {
        let state = self.state.lock().await;
        self.check_no_upstream("revoked")?;
        check_revocable(&state.current_x509, &state.next_x509, id)?;
        let bundle = self.fetch_bundle().await?;
        let tainted = bundle
            .x509_authorities
            .iter()
            .any(|a| a.tainted && certificate_authority_id(&a.asn1).is_ok_and(|aid| aid == id));
        if !tainted {
            return Err(CaError::FailedPrecondition(format!(
                "X.509 authority {id} is not tainted; taint it before revoking it"
            )));
        }
        self.datastore
            .revoke_x509_ca(self.trust_domain.name(), id)
            .await
            .map_err(|e| datastore_error("failed to revoke X.509 authority", e))?;
        tracing::info!(local_authority_id = %id, "X.509 authority revoked");
        self.bundle_updated();
        Ok(id_only(id))
    }

    /// Prepares the next JWT authority now.
    pub async fn prepare_jwt_authority(&self) -> Result<AuthorityState, CaError> {
        let mut state = self.state.lock().await;
        if state.current_jwt.status != Status::Active {
            return Err(CaError::NotReady("server is initializing".into()));
        }
        self.prepare_jwt(&mut state, self.now()).await?;
        Ok(state.next_jwt.state())
    }

    /// Activates the prepared JWT authority with this ID.
    pub async fn activate_jwt_authority(&self, id: &str) -> Result<AuthorityState, CaError> {
        let mut state = self.state.lock().await;
        check_prepared(&state.next_jwt, id)?;
        self.rotate_jwt_slots(&mut state).await;
        Ok(state.current_jwt.state())
    }

    /// Taints the old JWT authority with this ID.
    pub async fn taint_jwt_authority(&self, id: &str) -> Result<AuthorityState, CaError> {
        let state = self.state.lock().await;
        check_taintable(&state.current_jwt, &state.next_jwt, id)?;
        self.datastore
            .taint_jwt_key(self.trust_domain.name(), id)
            .await
            .map_err(|e| datastore_error("failed to taint JWT authority", e))?;
        tracing::info!(local_authority_id = %id, "JWT authority tainted");
        self.bundle_updated();
        Ok(id_only(id))
    }

    /// Revokes the tainted old JWT authority with this ID.
    pub async fn revoke_jwt_authority(&self, id: &str) -> Result<AuthorityState, CaError> {
        let state = self.state.lock().await;
        let bundle = self.fetch_bundle().await?;
        check_jwt_revocable(&state.current_jwt, &state.next_jwt, &bundle, id)?;
        if !bundle
            .jwt_authorities
            .iter()
            .any(|a| a.tainted && a.key_id == id)
        {
            return Err(CaError::FailedPrecondition(format!(
                "JWT authority {id} is not tainted; taint it before revoking it"
            )));
        }
        self.datastore
            .revoke_jwt_key(self.trust_domain.name(), id)
            .await
            .map_err(|e| datastore_error("failed to revoke JWT authority", e))?;
        tracing::info!(local_authority_id = %id, "JWT authority revoked");
        self.bundle_updated();
        Ok(id_only(id))
    }

    /// Local X.509 authorities are only tainted or revoked (`action`) when no upstream
    /// authority signs them.
    fn check_no_upstream(&self, action: &str) -> Result<(), CaError> {
        if self.upstream.is_some() {
            return Err(CaError::refused(
                RefusalKind::FailedPrecondition,
                format!("local authority can't be {action} if there is an upstream authority"),
            ));
        }
        Ok(())
    }

    async fn fetch_bundle(&self) -> Result<types::Bundle, CaError> {
        self.datastore
            .fetch_bundle(self.trust_domain.name())
            .await
            .map_err(|e| datastore_error("failed to fetch the trust bundle", e))?
            .ok_or_else(|| CaError::Internal("trust domain bundle is missing".into()))
    }
}

/// Puts a loaded slot where upstream's slot loader would: the active one in current, the
/// newest prepared or old one in next; entries from before 1.7 (status unknown) fill next,
/// then current.
fn place<T>(current: &mut Option<Slot<T>>, next: &mut Option<Slot<T>>, slot: Slot<T>) {
    match slot.status {
        Status::Active => *current = Some(slot),
        Status::Unknown => {
            if next.is_none() {
                *next = Some(slot);
            } else if current.is_none() {
                *current = Some(slot);
            }
        }
        Status::Prepared | Status::Old => {
            if next.is_none() {
                *next = Some(slot);
            }
        }
    }
}

/// Fills missing slots with empty ones, as upstream's `getX509CASlots`.
fn complete<T>(current: Option<Slot<T>>, next: Option<Slot<T>>) -> (Slot<T>, Slot<T>) {
    match (current, next) {
        (Some(current), Some(next)) => (current, next),
        (Some(current), None) => {
            let next = Slot::empty(other_slot_id(current.id));
            (current, next)
        }
        (None, Some(next)) => {
            let empty = Slot::empty(other_slot_id(next.id));
            (next, empty)
        }
        (None, None) => (Slot::empty("A"), Slot::empty("B")),
    }
}

fn slot_id(id: &str) -> Option<&'static str> {
    match id {
        "A" => Some("A"),
        "B" => Some("B"),
        _ => None,
    }
}

fn slot_states<T>(
    current: &Slot<T>,
    next: &Slot<T>,
) -> (
    Option<AuthorityState>,
    Option<AuthorityState>,
    Option<AuthorityState>,
) {
    let active = (!current.is_empty()).then(|| current.state());
    let prepared =
        (next.status == Status::Prepared && next.authority.is_some()).then(|| next.state());
    let old = (next.status == Status::Old && !next.authority_id.is_empty()).then(|| next.state());
    (active, prepared, old)
}

/// The answer to a taint or revoke: upstream names the authority only.
fn id_only(id: &str) -> AuthorityState {
    AuthorityState {
        authority_id: id.to_owned(),
        ..AuthorityState::default()
    }
}

/// A journal status as upstream prints it in its messages.
fn status_name(status: Status) -> &'static str {
    match status {
        Status::Unknown => "UNKNOWN",
        Status::Prepared => "PREPARED",
        Status::Active => "ACTIVE",
        Status::Old => "OLD",
    }
}

fn invalid(message: impl Into<String>) -> CaError {
    CaError::refused(RefusalKind::InvalidArgument, message)
}

/// Only the prepared authority in the next slot can be activated (upstream's checks, in its
/// order and words).
fn check_prepared<T>(next: &Slot<T>, id: &str) -> Result<(), CaError> {
    if id.is_empty() {
        return Err(invalid("no authority ID provided"));
    }
    if next.authority_id != id {
        return Err(invalid("unexpected authority ID"));
    }
    if next.status == Status::Prepared && next.authority.is_none() {
        return Err(CaError::refused(
            RefusalKind::Internal,
            "no prepared authority found: its key is missing",
        ));
    }
    if next.status != Status::Prepared {
        return Err(CaError::refused(
            RefusalKind::Internal,
            format!(
                "only Prepared authorities can be activated: unsupported local authority status: {}",
                status_name(next.status)
            ),
        ));
    }
    Ok(())
}

/// Only the old authority in the next slot can be tainted.
fn check_taintable<T>(current: &Slot<T>, next: &Slot<T>, id: &str) -> Result<(), CaError> {
    if id.is_empty() {
        return Err(invalid("no authority ID provided"));
    }
    if id == current.authority_id {
        return Err(invalid("unable to taint current local authority"));
    }
    if id != next.authority_id {
        return Err(invalid("unexpected authority ID"));
    }
    if next.status != Status::Old {
        return Err(invalid(format!(
            "only Old local authorities can be tainted: unsupported local authority status: {}",
            status_name(next.status)
        )));
    }
    Ok(())
}

/// A JWT key can be revoked unless it is the current one or the prepared one, as long as
/// the bundle still has it (upstream's `validateAuthorityID`: older tainted keys qualify too).
fn check_jwt_revocable<T>(
    current: &Slot<T>,
    next: &Slot<T>,
    bundle: &types::Bundle,
    id: &str,
) -> Result<(), CaError> {
    let why = if id.is_empty() {
        "no authority ID provided"
    } else if id == next.authority_id {
        if next.status == Status::Prepared {
            "unable to use a prepared key"
        } else {
            return Ok(());
        }
    } else if id == current.authority_id {
        "unable to use current authority"
    } else if bundle.jwt_authorities.iter().any(|a| a.key_id == id) {
        return Ok(());
    } else {
        "no JWT authority found with provided authority ID"
    };
    Err(invalid(format!("invalid authority ID: {why}")))
}

/// Only the old X.509 authority can be revoked: upstream's `invalid authority ID: ...`.
fn check_revocable<T>(current: &Slot<T>, next: &Slot<T>, id: &str) -> Result<(), CaError> {
    let why = if id.is_empty() {
        "no authority ID provided"
    } else if id == current.authority_id {
        "unable to use current authority"
    } else if id != next.authority_id || next.status != Status::Old {
        "only Old local authority can be revoked"
    } else {
        return Ok(());
    };
    Err(invalid(format!("invalid authority ID: {why}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn thresholds_follow_upstream() {
        let issued = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let day = time::Duration::hours(24);
        // 24h lifetime: prepare after 12h, activate with 4h left.
        assert_eq!(
            threshold(issued, issued + day, PREPARATION_DIVISOR, PREPARATION_CAP),
            issued + time::Duration::hours(12)
        );
        assert_eq!(
            threshold(issued, issued + day, ACTIVATION_DIVISOR, ACTIVATION_CAP),
            issued + time::Duration::hours(20)
        );
        // A year: capped at 30 days and 7 days before expiry.
        let year = time::Duration::days(365);
        assert_eq!(
            threshold(issued, issued + year, PREPARATION_DIVISOR, PREPARATION_CAP),
            issued + year - time::Duration::days(30)
        );
        assert_eq!(
            threshold(issued, issued + year, ACTIVATION_DIVISOR, ACTIVATION_CAP),
            issued + year - time::Duration::days(7)
        );
    }

    #[test]
    fn key_ids_are_32_alphanumerics() {
        let kid = new_key_id().unwrap();
        assert_eq!(kid.len(), 32);
        assert!(kid.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(kid, new_key_id().unwrap());
    }

    #[test]
    fn slot_placement_prefers_active_for_current() {
        let slot = |id, status| {
            let mut s: Slot<()> = Slot::empty(id);
            s.status = status;
            s
        };
        let (mut current, mut next) = (None, None);
        // newest first: a prepared B, then the active A.
        place(&mut current, &mut next, slot("B", Status::Prepared));
        place(&mut current, &mut next, slot("A", Status::Active));
        let (current, next) = complete(current, next);
        assert_eq!((current.id, next.id), ("A", "B"));

        let (current, next) = complete::<()>(None, Some(slot("B", Status::Old)));
        assert_eq!((current.id, next.id), ("B", "A"));
    }
}
