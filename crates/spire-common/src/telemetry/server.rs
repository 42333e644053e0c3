//! The server's metrics outside the gRPC layer, with upstream's keys
//! (`pkg/common/telemetry/server`): each function is one call site's worth, emitted through
//! [`global`](super::global) so the code that does the work needs one line.

use std::time::{Instant, SystemTime};

use super::{Metrics, global};

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
/// `entry_entries_by_entryid_cache_count`, `node_agents_by_id_cache_count` and
/// `node_agents_by_expiresat_cache_count` (upstream keeps every cached agent in both its
/// by-ID and its by-expiry tree, so both count the agents of the index).
pub fn entry_cache_reloaded(ok: bool, started: Instant, entries: usize, agents: usize) {
    emit_entry_cache_reloaded(&global(), ok, started, entries, agents);
}

fn emit_entry_cache_reloaded(
    m: &Metrics,
    ok: bool,
    started: Instant,
    entries: usize,
    agents: usize,
) {
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
        m.set_gauge(
            &["node", "agents_by_expiresat_cache_count"],
            &[],
            agents as f64,
        );
    }
}

/// The authorized-entry index's sizes in upstream's event-based cache terms: what each
/// gauge would count in upstream's btrees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexGauges {
    /// `entry_entries_by_parentid_cache_count`: entries that are not node aliases.
    pub entries_by_parent_id: usize,
    /// `entry_nodealiases_by_entryid_cache_count`: node-alias entries.
    pub node_aliases_by_entry_id: usize,
    /// `entry_nodealiases_by_selector_cache_count`: (node alias, selector) pairs.
    pub node_aliases_by_selector: usize,
    /// `entry_skipped_entry_event_ids_count`: skipped entry event IDs still watched.
    pub skipped_entry_event_ids: usize,
    /// `node_skipped_node_event_ids_count`: skipped node event IDs still watched.
    pub skipped_node_event_ids: usize,
}

/// Sets the gauges of `now` that differ from `last` (what was last emitted), as upstream
/// emits its event-cache gauges only on change.
pub fn index_gauges(last: &IndexGauges, now: &IndexGauges) {
    emit_index_gauges(&global(), last, now);
}

#[allow(clippy::cast_precision_loss, reason = "cache sizes")]
fn emit_index_gauges(m: &Metrics, last: &IndexGauges, now: &IndexGauges) {
    if !m.enabled() {
        return;
    }
    let gauges: [(&[&str], usize, usize); 5] = [
        (
            &["entry", "entries_by_parentid_cache", "count"],
            last.entries_by_parent_id,
            now.entries_by_parent_id,
        ),
        (
            &["entry", "nodealiases_by_entryid_cache", "count"],
            last.node_aliases_by_entry_id,
            now.node_aliases_by_entry_id,
        ),
        (
            &["entry", "nodealiases_by_selector_cache", "count"],
            last.node_aliases_by_selector,
            now.node_aliases_by_selector,
        ),
        (
            &["entry", "skipped_entry_event_ids", "count"],
            last.skipped_entry_event_ids,
            now.skipped_entry_event_ids,
        ),
        (
            &["node", "skipped_node_event_ids", "count"],
            last.skipped_node_event_ids,
            now.skipped_node_event_ids,
        ),
    ];
    for (key, before, after) in gauges {
        if before != after {
            m.set_gauge(key, &[], after as f64);
        }
    }
}

/// `node_manager_prune` and `datastore_node_prune`: call counters around one cycle of
/// attested-node pruning (upstream's node manager and its one datastore call).
pub fn attested_nodes_pruned(ok: bool, started: Instant) {
    emit_attested_nodes_pruned(&global(), ok, started);
}

fn emit_attested_nodes_pruned(m: &Metrics, ok: bool, started: Instant) {
    if !m.enabled() {
        return;
    }
    m.record_outcome(&["node", "manager", "prune"], &[], ok, started);
    m.record_outcome(&["datastore", "node", "prune"], &[], ok, started);
}

/// `rateLimit_<service>_<method>` (upstream's raw key, e.g.
/// `rateLimit_agent_v1_agent_attest_agent`): a call counter around applying the rate limit
/// of the RPC `rpc` (its gRPC path); `refused` is the refusal's code.
pub fn rate_limited(rpc: &str, refused: Option<tonic::Code>, started: Instant) {
    emit_rate_limited(&global(), rpc, refused, started);
}

fn emit_rate_limited(m: &Metrics, rpc: &str, refused: Option<tonic::Code>, started: Instant) {
    if !m.enabled() {
        return;
    }
    let Some(mut key) = super::names::rpc_key(rpc) else {
        return;
    };
    "rateLimit".clone_into(&mut key[0]);
    let key: Vec<&str> = key.iter().map(String::as_str).collect();
    let status = refused.map_or("OK", |code| crate::cli::client::code_name_i32(code as i32));
    m.record_call(&key, &[], status, started);
}

/// `registration_entry_manager_prune`: a call counter around pruning expired entries.
pub fn registration_entries_pruned(ok: bool, started: Instant) {
    emit_registration_entries_pruned(&global(), ok, started);
}

fn emit_registration_entries_pruned(m: &Metrics, ok: bool, started: Instant) {
    m.record_outcome(
        &["registration_entry", "manager", "prune"],
        &[],
        ok,
        started,
    );
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
/// `get_public_key`, `get_public_keys`, `sign_data`).
pub fn key_manager_call(op: &str, ok: bool, started: Instant) {
    emit_key_manager_call(&global(), op, ok, started);
}

fn emit_key_manager_call(m: &Metrics, op: &str, ok: bool, started: Instant) {
    m.record_outcome(&["server_key_manager", op], &[], ok, started);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::prometheus_metrics;

    #[test]
    fn event_cache_gauges_are_set_only_when_they_change() {
        let m = prometheus_metrics("spire_server");
        let first = IndexGauges {
            entries_by_parent_id: 7,
            node_aliases_by_entry_id: 2,
            node_aliases_by_selector: 3,
            skipped_entry_event_ids: 0,
            skipped_node_event_ids: 1,
        };
        emit_index_gauges(&m, &IndexGauges::default(), &first);
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_server_entry_entries_by_parentid_cache_count 7\n",
            "spire_server_entry_nodealiases_by_entryid_cache_count 2\n",
            "spire_server_entry_nodealiases_by_selector_cache_count 3\n",
            "spire_server_node_skipped_node_event_ids_count 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        // Zero from zero is no change: upstream never sets it.
        assert!(!text.contains("skipped_entry_event_ids"), "{text}");
        let second = IndexGauges {
            entries_by_parent_id: 8,
            skipped_node_event_ids: 0,
            ..first
        };
        emit_index_gauges(&m, &first, &second);
        let text = m.prometheus_text().unwrap();
        assert!(
            text.contains("spire_server_entry_entries_by_parentid_cache_count 8\n"),
            "{text}"
        );
        assert!(
            text.contains("spire_server_node_skipped_node_event_ids_count 0\n"),
            "{text}"
        );
    }

    #[test]
    fn a_cache_reload_sets_the_agents_by_id_and_by_expiry_gauges() {
        let m = prometheus_metrics("spire_server");
        emit_entry_cache_reloaded(&m, true, Instant::now(), 5, 3);
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_server_entry_cache_reload{status=\"OK\"} 1\n",
            "spire_server_entry_entries_by_entryid_cache_count 5\n",
            "spire_server_node_agents_by_id_cache_count 3\n",
            "spire_server_node_agents_by_expiresat_cache_count 3\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn listing_the_key_managers_keys_is_upstreams_get_public_keys_call_counter() {
        let m = prometheus_metrics("spire_server");
        emit_key_manager_call(&m, "get_public_keys", true, Instant::now());
        emit_key_manager_call(&m, "get_public_keys", false, Instant::now());
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_server_server_key_manager_get_public_keys{status=\"OK\"} 1\n",
            "spire_server_server_key_manager_get_public_keys{status=\"Unknown\"} 1\n",
            "spire_server_server_key_manager_get_public_keys_elapsed_time_count{status=\"OK\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn pruning_and_remote_signing_are_call_counters_under_upstreams_keys() {
        let m = prometheus_metrics("spire_server");
        emit_attested_nodes_pruned(&m, true, Instant::now());
        emit_registration_entries_pruned(&m, false, Instant::now());
        emit_key_manager_call(&m, "sign_data", true, Instant::now());
        emit_key_manager_call(&m, "sign_data", true, Instant::now());
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_server_node_manager_prune{status=\"OK\"} 1\n",
            "spire_server_datastore_node_prune{status=\"OK\"} 1\n",
            "spire_server_registration_entry_manager_prune{status=\"Unknown\"} 1\n",
            "spire_server_server_key_manager_sign_data{status=\"OK\"} 2\n",
            "spire_server_server_key_manager_sign_data_elapsed_time_count{status=\"OK\"} 2\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn rate_limits_count_under_upstreams_raw_key_with_the_refusal_code() {
        let m = prometheus_metrics("spire_server");
        let rpc = "/spire.api.server.agent.v1.Agent/AttestAgent";
        emit_rate_limited(&m, rpc, None, Instant::now());
        emit_rate_limited(
            &m,
            rpc,
            Some(tonic::Code::ResourceExhausted),
            Instant::now(),
        );
        let text = m.prometheus_text().unwrap();
        for line in [
            "spire_server_rateLimit_agent_v1_agent_attest_agent{status=\"OK\"} 1\n",
            "spire_server_rateLimit_agent_v1_agent_attest_agent{status=\"ResourceExhausted\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
