//! The `subsystem_name` field of a log line, from the module that wrote it.
//!
//! Upstream hands each part of the server and agent a logger carrying `subsystem_name`
//! (`ca_manager`, `endpoints`, `sql`, `catalog`, ...), so nearly every line says which part
//! wrote it, and operators' log pipelines filter on it. Our parts are modules, so the logger
//! derives the same field from the event's target (its module path) with this table instead
//! of threading a logger through every constructor. A field set on the event itself wins.

/// Module-path prefixes and upstream's subsystem name for what they do. The longest matching
/// prefix wins; a prefix matches a whole path segment (`a::b` matches `a::b::c`, not `a::bc`).
const SUBSYSTEMS: &[(&str, &str)] = &[
    // spire-server (upstream: pkg/server/server.go, catalog.go, endpoints.go)
    ("spire_server::api", "api"),
    ("spire_server::authorized", "endpoints"),
    ("spire_server::endpoints", "endpoints"),
    ("spire_server::ca", "ca"),
    ("spire_server::ca::manager", "ca_manager"),
    ("spire_server::ca::journal", "ca_manager"),
    ("spire_server::catalog", "catalog"),
    ("spire_server::plugins", "catalog"),
    ("spire_server::hostservice", "catalog"),
    ("spire_server::datastore", "sql"),
    ("spire_server::federation", "bundle_client"),
    ("spire_server::federation::endpoint", "bundle_endpoint"),
    ("spire_server::node_prune", "node_manager"),
    ("spire_server::reload", "reconfigurer"),
    // spire-agent (upstream: pkg/agent/agent.go, manager/config.go, api/endpoints.go)
    ("spire_agent::attestation", "attestor"),
    ("spire_agent::attestation::rotation", "manager"),
    ("spire_agent::attestation::reattest", "manager"),
    ("spire_agent::client", "manager"),
    ("spire_agent::manager", "manager"),
    ("spire_agent::manager::cache", "cache_manager"),
    ("spire_agent::manager::selector_index", "cache_manager"),
    ("spire_agent::manager::jwt_cache", "cache_manager"),
    ("spire_agent::workload", "endpoints"),
    ("spire_agent::sds", "endpoints"),
    ("spire_agent::admin::debug", "debug_api"),
    ("spire_agent::admin::delegated", "delegated_identity_api"),
    ("spire_agent::plugins", "catalog"),
    (
        "spire_agent::plugins::workloadattestor",
        "workload_attestor",
    ),
    ("spire_agent::svid_store", "svid_store_service"),
    ("spire_agent::health", "health"),
    ("spire_agent::reload", "reconfigurer"),
    // shared pieces
    ("spire_common::telemetry", "telemetry"),
    ("spire_common::health", "health"),
    ("spire_common::plugin_host", "catalog"),
];

/// Upstream's `subsystem_name` for a line written from module `target`, if that module is
/// one of the parts upstream names.
pub(super) fn subsystem_for(target: &str) -> Option<&'static str> {
    SUBSYSTEMS
        .iter()
        .filter(|(prefix, _)| {
            target
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_whole_segment_prefix_wins() {
        assert_eq!(subsystem_for("spire_server::ca"), Some("ca"));
        assert_eq!(subsystem_for("spire_server::ca::signer"), Some("ca"));
        assert_eq!(
            subsystem_for("spire_server::ca::manager::upstream"),
            Some("ca_manager")
        );
        assert_eq!(
            subsystem_for("spire_agent::plugins::workloadattestor::unix"),
            Some("workload_attestor")
        );
        assert_eq!(
            subsystem_for("spire_agent::plugins::nodeattestor::x509pop"),
            Some("catalog")
        );
        assert_eq!(
            subsystem_for("spire_server::datastore::sql::schema"),
            Some("sql")
        );
    }

    #[test]
    fn other_modules_have_none() {
        // Not a whole segment: `spire_server::cat` is not `spire_server::catalog`.
        assert_eq!(subsystem_for("spire_server::cat"), None);
        assert_eq!(subsystem_for("spire_server::server"), None);
        assert_eq!(subsystem_for("tonic::transport::server"), None);
        assert_eq!(subsystem_for(""), None);
    }
}
