//! The agent's metrics outside the gRPC layer, with upstream's keys
//! (`pkg/common/telemetry/agent`): each function is one call site's worth, emitted through
//! [`global`](super::global). Those on the Workload API path return at once when no sink is
//! configured.

use std::time::{Instant, SystemTime};

use super::{Metrics, global};

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

/// `cache_manager_expiring_svids`: how many cached workload X509-SVIDs a sync found due for
/// renewal (only when there are some, as upstream).
pub fn expiring_svids(count: usize) {
    if count > 0 {
        #[allow(clippy::cast_precision_loss, reason = "counts")]
        global().add_sample(&["cache_manager", "expiring_svids"], &[], count as f64);
    }
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

/// How a sync changed the cached entries, as upstream counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryChanges {
    /// Entries the server sent that were not cached (`sync_entries_missing`).
    pub missing: usize,
    /// Entries the server sent at another revision or creation (`sync_entries_stale`).
    pub stale: usize,
    /// Cached entries the server no longer lists (`sync_entries_dropped`).
    pub dropped: usize,
    /// Workload entries added to the cache (`lru_cache_entry_add`).
    pub added: usize,
    /// Workload entries whose selectors or federated trust domains changed
    /// (`lru_cache_entry_update`).
    pub updated: usize,
    /// Workload entries removed from the cache (`lru_cache_entry_remove`).
    pub removed: usize,
}

/// After every sync, as upstream's `SetSyncStats` and LRU cache: the gauges
/// `sync_entries_missing`, `sync_entries_stale`, `sync_entries_dropped`, and the counters
/// `lru_cache_entry_add`, `lru_cache_entry_update`, `lru_cache_entry_remove` (incremented
/// by zero too, so the series exist from the first sync).
pub fn entry_changes(changes: &EntryChanges) {
    emit_entry_changes(&global(), changes);
}

#[allow(clippy::cast_precision_loss, reason = "counts")]
fn emit_entry_changes(m: &Metrics, changes: &EntryChanges) {
    if !m.enabled() {
        return;
    }
    m.set_gauge(&["sync_entries_missing"], &[], changes.missing as f64);
    m.set_gauge(&["sync_entries_stale"], &[], changes.stale as f64);
    m.set_gauge(&["sync_entries_dropped"], &[], changes.dropped as f64);
    m.incr_counter(&["lru_cache_entry_add"], &[], changes.added as u64);
    m.incr_counter(&["lru_cache_entry_update"], &[], changes.updated as u64);
    m.incr_counter(&["lru_cache_entry_remove"], &[], changes.removed as u64);
}

/// `cache_manager_outdated_svids`: how many cached X509-SVIDs a sync found minted for an
/// older revision of their entry (only when there are some, as upstream).
pub fn outdated_svids(count: usize) {
    emit_outdated_svids(&global(), count);
}

fn emit_outdated_svids(m: &Metrics, count: usize) {
    if count > 0 {
        #[allow(clippy::cast_precision_loss, reason = "counts")]
        m.add_sample(&["cache_manager", "outdated_svids"], &[], count as f64);
    }
}

/// Upstream's processing of newly tainted authorities in the workload cache:
/// `cache_manager_workload_process_tainted_x509_svids` (or `…_jwt_svids`), a call counter,
/// and `cache_manager_tainted_x509_svids_workload` (or `…_jwt_svids_workload`), a sample of
/// how many cached SVIDs were signed by them.
pub fn tainted_svids_processed(jwt: bool, tainted: usize, started: Instant) {
    emit_tainted_svids_processed(&global(), jwt, tainted, started);
}

fn emit_tainted_svids_processed(m: &Metrics, jwt: bool, tainted: usize, started: Instant) {
    if !m.enabled() {
        return;
    }
    let (process, sample) = if jwt {
        ("process_tainted_jwt_svids", "tainted_jwt_svids")
    } else {
        ("process_tainted_x509_svids", "tainted_x509_svids")
    };
    m.record_outcome(&["cache_manager", "workload", process], &[], true, started);
    #[allow(clippy::cast_precision_loss, reason = "counts")]
    m.add_sample(&["cache_manager", sample, "workload"], &[], tainted as f64);
}

/// `store_store_svid_updates`: a call counter around one pass of the SVIDStore service
/// over its records (upstream's `StartStoreSVIDUpdates`, always `OK`: failures of single
/// puts and deletes are logged, not counted).
pub fn store_svid_updates(started: Instant) {
    emit_store_svid_updates(&global(), started);
}

fn emit_store_svid_updates(m: &Metrics, started: Instant) {
    m.record_outcome(&["store", "store_svid_updates"], &[], true, started);
}

/// `delegated_identity_api_subscribe_x509_svids_first_update_elapsed_time`: how long a
/// Delegated Identity X509-SVID subscription waited for its first SVID.
pub fn delegated_first_x509_update(started: Instant) {
    emit_delegated_first_x509_update(&global(), started);
}

fn emit_delegated_first_x509_update(m: &Metrics, started: Instant) {
    m.measure_since(
        &[
            "delegated_identity_api",
            "subscribe_x509_svids",
            "first_update",
        ],
        &[],
        started,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::prometheus_metrics;

    #[test]
    fn a_sync_sets_upstreams_entry_gauges_and_adds_to_the_lru_counters() {
        let m = prometheus_metrics("spire_agent");
        let changes = EntryChanges {
            missing: 3,
            stale: 1,
            dropped: 2,
            added: 2,
            updated: 1,
            removed: 0,
        };
        emit_entry_changes(&m, &changes);
        emit_entry_changes(
            &m,
            &EntryChanges {
                missing: 0,
                added: 1,
                ..changes
            },
        );
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_agent_sync_entries_missing 0\n",
            "spire_agent_sync_entries_stale 1\n",
            "spire_agent_sync_entries_dropped 2\n",
            "spire_agent_lru_cache_entry_add 3\n",
            "spire_agent_lru_cache_entry_update 2\n",
            "spire_agent_lru_cache_entry_remove 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn each_svid_store_pass_is_upstreams_store_svid_updates_call_counter() {
        let m = prometheus_metrics("spire_agent");
        emit_store_svid_updates(&m, Instant::now());
        emit_store_svid_updates(&m, Instant::now());
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_agent_store_store_svid_updates{status=\"OK\"} 2\n",
            "spire_agent_store_store_svid_updates_elapsed_time_count{status=\"OK\"} 2\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn outdated_and_tainted_svids_are_samples_under_upstreams_keys() {
        let m = prometheus_metrics("spire_agent");
        emit_outdated_svids(&m, 0);
        assert!(!m.prometheus_text().unwrap().contains("outdated"));
        emit_outdated_svids(&m, 4);
        emit_tainted_svids_processed(&m, false, 5, Instant::now());
        emit_tainted_svids_processed(&m, true, 2, Instant::now());
        emit_delegated_first_x509_update(&m, Instant::now());
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_agent_cache_manager_outdated_svids_sum 4\n",
            "spire_agent_cache_manager_tainted_x509_svids_workload_sum 5\n",
            "spire_agent_cache_manager_tainted_jwt_svids_workload_sum 2\n",
            "spire_agent_cache_manager_workload_process_tainted_x509_svids{status=\"OK\"} 1\n",
            "spire_agent_cache_manager_workload_process_tainted_jwt_svids{status=\"OK\"} 1\n",
            "spire_agent_delegated_identity_api_subscribe_x509_svids_first_update_elapsed_time_count 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
