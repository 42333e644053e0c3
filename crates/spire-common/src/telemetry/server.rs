//! The server's metrics outside the gRPC layer, with upstream's keys
//! (`pkg/common/telemetry/server`): each function is one call site's worth, emitted through
//! [`global`](super::global) so the code that does the work needs one line.

use std::time::{Instant, SystemTime};

use super::global;

/// `ca_manager_x509_ca_prepare`: a call counter around preparing an X509 CA.
pub fn x509_ca_prepared(ok: bool, started: Instant) {
    global().record_outcome(&["ca_manager", "x509_ca_prepare"], &[], ok, started);
}

/// `ca_manager_jwt_key_prepare`: a call counter around preparing a JWT key.
pub fn jwt_key_prepared(ok: bool, started: Instant) {
    global().record_outcome(&["ca_manager", "jwt_key_prepare"], &[], ok, started);
}

/// `ca_manager_x509_ca_activate` +1, and upstream's rotate gauges for the new CA:
/// `manager_x509_ca_rotate_expiration` (Unix seconds) and `manager_x509_ca_rotate_ttl`
/// (seconds left), labelled `trust_domain_id`.
pub fn x509_ca_activated(trust_domain: &str, not_after: SystemTime) {
    let m = global();
    if !m.enabled() {
        return;
    }
    m.incr_counter(&["ca_manager", "x509_ca_activate"], &[], 1);
    let labels = [("trust_domain_id", trust_domain.to_owned())];
    m.set_time_gauge(
        &["manager", "x509_ca", "rotate", "expiration"],
        &labels,
        not_after,
    );
    m.set_gauge(
        &["manager", "x509_ca", "rotate", "ttl"],
        &labels,
        seconds_until(not_after),
    );
}

/// `manager_jwt_key_activate` +1 (upstream's key, without `ca_`), and beyond upstream
/// `manager_jwt_key_rotate_expiration` (Unix seconds) labelled `trust_domain_id`.
pub fn jwt_key_activated(trust_domain: &str, not_after: SystemTime) {
    let m = global();
    if !m.enabled() {
        return;
    }
    m.incr_counter(&["manager", "jwt_key", "activate"], &[], 1);
    m.set_time_gauge(
        &["manager", "jwt_key", "rotate", "expiration"],
        &[("trust_domain_id", trust_domain.to_owned())],
        not_after,
    );
}

/// `ca_manager_bundle_prune` (a call counter) and `ca_manager_bundle_pruned` +1 when
/// something was removed.
pub fn bundle_pruned(result: Result<bool, ()>, started: Instant) {
    let m = global();
    m.record_outcome(
        &["ca_manager", "bundle_prune"],
        &[],
        result.is_ok(),
        started,
    );
    if result == Ok(true) {
        m.incr_counter(&["ca_manager", "bundle_pruned"], &[], 1);
    }
}

/// What the server CA signed, counted as upstream's `server_ca_sign_*`.
#[derive(Debug, Clone, Copy)]
pub enum Signed {
    /// `server_ca_sign_x509_svid` (workload and agent X509-SVIDs).
    X509Svid,
    /// `server_ca_sign_x509_ca_svid` (downstream CAs).
    X509CaSvid,
    /// `server_ca_sign_jwt_svid`.
    JwtSvid,
}

/// `server_ca_sign_*` +1.
pub fn ca_signed(what: Signed) {
    let key = match what {
        Signed::X509Svid => "x509_svid",
        Signed::X509CaSvid => "x509_ca_svid",
        Signed::JwtSvid => "jwt_svid",
    };
    global().incr_counter(&["server_ca", "sign", key], &[], 1);
}

/// `svid_rotate`: a call counter around renewing the server's own X509-SVID; beyond
/// upstream, `svid_expiration` (Unix seconds) of the new one.
pub fn server_svid_rotated(not_after: Result<SystemTime, ()>, started: Instant) {
    let m = global();
    m.record_outcome(&["svid", "rotate"], &[], not_after.is_ok(), started);
    if let Ok(at) = not_after {
        m.set_time_gauge(&["svid", "expiration"], &[], at);
    }
}

/// `entry_cache_reload` (a call counter) and the cache size gauges
/// `entry_entries_by_entryid_cache_count` and `node_agents_by_id_cache_count`.
pub fn entry_cache_reloaded(ok: bool, started: Instant, entries: usize, agents: usize) {
    let m = global();
    if !m.enabled() {
        return;
    }
    m.record_outcome(&["entry", "cache", "reload"], &[], ok, started);
    #[allow(clippy::cast_precision_loss, reason = "cache sizes")]
    {
        m.set_gauge(
            &["entry", "entries_by_entryid_cache_count"],
            &[],
            entries as f64,
        );
        m.set_gauge(&["node", "agents_by_id_cache_count"], &[], agents as f64);
    }
}

/// `datastore_<object>_<op>`: a call counter around one datastore operation (`key` is
/// e.g. `["registration_entry", "list"]`).
pub fn datastore_call(key: &[&str], ok: bool, started: Instant) {
    let m = global();
    if !m.enabled() {
        return;
    }
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push("datastore");
    full.extend_from_slice(key);
    m.record_outcome(&full, &[], ok, started);
}

/// `server_key_manager_<op>`: a call counter around a key manager call (`generate_key`,
/// `get_public_key`).
pub fn key_manager_call(op: &str, ok: bool, started: Instant) {
    global().record_outcome(&["server_key_manager", op], &[], ok, started);
}

/// `bundle_manager_fetch_federated_bundle` (a call counter, label `trust_domain_id`), and
/// `bundle_manager_update_federated_bundle` +1 when the fetched bundle was stored.
pub fn federated_bundle_fetched(trust_domain: &str, ok: bool, updated: bool, started: Instant) {
    let m = global();
    if !m.enabled() {
        return;
    }
    let labels = [("trust_domain_id", trust_domain.to_owned())];
    m.record_outcome(
        &["bundle_manager", "fetch", "federated_bundle"],
        &labels,
        ok,
        started,
    );
    if updated {
        m.incr_counter(
            &["bundle_manager", "update", "federated_bundle"],
            &labels,
            1,
        );
    }
}

/// Seconds from now until `at` (negative once past).
pub(crate) fn seconds_until(at: SystemTime) -> f64 {
    match at.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
