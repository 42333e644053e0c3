//! The agent's metrics outside the gRPC layer, with upstream's keys
//! (`pkg/common/telemetry/agent`): each function is one call site's worth, emitted through
//! [`global`](super::global). Those on the Workload API path return at once when no sink is
//! configured.

use std::time::{Instant, SystemTime};

use super::global;

/// Whether any sink is configured: lets a call site skip gathering what only metrics need.
pub fn enabled() -> bool {
    global().enabled()
}

/// `agent_svid_rotate`: a call counter around renewing the agent's SVID.
pub fn svid_rotated(ok: bool, started: Instant) {
    global().record_outcome(&["agent_svid", "rotate"], &[], ok, started);
}

/// Beyond upstream: `agent_svid_expiration`, the agent SVID's expiry in Unix seconds.
pub fn svid_expiration(not_after: SystemTime) {
    global().set_time_gauge(&["agent_svid", "expiration"], &[], not_after);
}

/// `node_attestor_new_svid` (label `attestor`): a call counter around node attestation.
pub fn node_attested(attestor: &str, ok: bool, started: Instant) {
    global().record_outcome(
        &["node", "attestor", "new_svid"],
        &[("attestor", attestor.to_owned())],
        ok,
        started,
    );
}

/// `node_attest`: a call counter around re-attestation.
pub fn node_reattested(ok: bool, started: Instant) {
    global().record_outcome(&["node", "attest"], &[], ok, started);
}

/// `manager_sync_fetch_entries_updates`: a call counter around fetching entries.
pub fn sync_entries_fetched(ok: bool, started: Instant) {
    global().record_outcome(
        &["manager", "sync", "fetch_entries_updates"],
        &[],
        ok,
        started,
    );
}

/// `manager_sync_fetch_svids_updates`: a call counter around minting SVIDs for entries.
pub fn sync_svids_fetched(ok: bool, started: Instant) {
    global().record_outcome(
        &["manager", "sync", "fetch_svids_updates"],
        &[],
        ok,
        started,
    );
}

/// Upstream's `SetSyncStats` gauges after a sync: `sync_bundles_total`,
/// `sync_entries_total`.
pub fn sync_stats(bundles: usize, entries: usize) {
    let m = global();
    if !m.enabled() {
        return;
    }
    #[allow(clippy::cast_precision_loss, reason = "cache sizes")]
    {
        m.set_gauge(&["sync_bundles_total"], &[], bundles as f64);
        m.set_gauge(&["sync_entries_total"], &[], entries as f64);
    }
}

/// The workload cache's sizes: `lru_cache_record_map_size` (entries) and
/// `lru_cache_svid_map_size` (X509-SVIDs held).
pub fn cache_sizes(records: usize, svids: usize) {
    let m = global();
    if !m.enabled() {
        return;
    }
    #[allow(clippy::cast_precision_loss, reason = "cache sizes")]
    {
        m.set_gauge(&["lru_cache_record_map_size"], &[], records as f64);
        m.set_gauge(&["lru_cache_svid_map_size"], &[], svids as f64);
    }
}

/// `cache_manager_expiring_svids`: how many workload SVIDs a sync found due for renewal.
pub fn expiring_svids(count: usize) {
    #[allow(clippy::cast_precision_loss, reason = "counts")]
    global().add_sample(&["cache_manager", "expiring_svids"], &[], count as f64);
}

/// `workload_api_workload_attestation` (a call counter around attesting a caller) and
/// `workload_api_discovered_selectors` (a sample of how many selectors were found).
pub fn workload_attested(selectors: Option<usize>, started: Instant) {
    let m = global();
    if !m.enabled() {
        return;
    }
    m.record_outcome(
        &["workload_api", "workload_attestation"],
        &[],
        selectors.is_some(),
        started,
    );
    if let Some(n) = selectors {
        #[allow(clippy::cast_precision_loss, reason = "counts")]
        m.add_sample(&["workload_api", "discovered_selectors"], &[], n as f64);
    }
}

/// `workload_api_workload_attestor` (label `attestor`): a call counter around one
/// workload attestor plugin.
pub fn workload_attestor_called(attestor: &str, ok: bool, started: Instant) {
    let m = global();
    if !m.enabled() {
        return;
    }
    m.record_outcome(
        &["workload_api", "workload_attestor"],
        &[("attestor", attestor.to_owned())],
        ok,
        started,
    );
}

/// `agent_key_manager_<op>`: a call counter around a key manager call (`generate_key`,
/// `get_key`).
pub fn key_manager_call(op: &str, ok: bool, started: Instant) {
    global().record_outcome(&["agent_key_manager", op], &[], ok, started);
}
