//! Metric names as upstream builds them, so dashboards and alerts written for upstream's
//! series (`spire_server_rpc_agent_v1_agent_attest_agent`,
//! `spire_agent_rpc_workload_api_fetch_x509svid`) find ours.

/// Upstream's rewrites of a gRPC service name, applied in one left-to-right pass where the
/// first listed match at a position wins (Go's `strings.NewReplacer`).
const SERVICE_REWRITES: [(&str, &str); 6] = [
    ("spire.api.server.", ""),
    ("SpiffeWorkloadAPI", "WorkloadAPI"),
    ("envoy.service.secret.v3.SecretDiscoveryService", "SDS.v3"),
    ("grpc.health.v1.Health", "Health"),
    ("logger.v1.Logger", "Logger"),
    (
        "spire.api.agent.delegatedidentity.v1.DelegatedIdentity",
        "DelegatedIdentity",
    ),
];

fn rewrite_service(service: &str) -> String {
    let mut out = String::with_capacity(service.len());
    let mut rest = service;
    'outer: while !rest.is_empty() {
        for (from, to) in SERVICE_REWRITES {
            if let Some(after) = rest.strip_prefix(from) {
                out.push_str(to);
                rest = after;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// One key part in upstream's spelling: camel case becomes snake case (`AttestAgent` →
/// `attest_agent`, `FetchX509SVID` → `fetch_x509svid`), anything but letters and digits
/// becomes `_`.
pub fn metric_key(part: &str) -> String {
    let chars: Vec<char> = part.chars().collect();
    let mut out = String::with_capacity(part.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let inner = i > 0 && i + 1 < chars.len();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_lower = i > 0 && chars[i - 1].is_lowercase();
            if inner && (prev_lower || next_lower) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else if c.is_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// The key of an RPC's call counter from its gRPC path (`/spire.api.server.agent.v1.Agent/AttestAgent`
/// → `["rpc", "agent", "v1", "agent", "attest_agent"]`); `None` for a path that is not
/// `/<service>/<method>`.
pub fn rpc_key(path: &str) -> Option<Vec<String>> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    let method = if method == "SubscribeToX509SVIDs" {
        "subscribe_to_x509_svids"
    } else {
        method
    };
    let mut key = vec!["rpc".to_owned()];
    key.extend(rewrite_service(service).split('.').map(metric_key));
    key.push(metric_key(method));
    Some(key)
}

/// A Prometheus name from the prefix and key: parts joined with `_`, and the characters
/// go-metrics replaces (` .=-/`) made `_`.
pub fn prometheus_name(prefix: &str, key: &[impl AsRef<str>]) -> String {
    let mut name = prefix.to_owned();
    for part in key {
        name.push('_');
        name.push_str(part.as_ref());
    }
    name.chars()
        .map(|c| match c {
            ' ' | '.' | '=' | '-' | '/' => '_',
            c => c,
        })
        .collect()
}

/// A label name or value as upstream sanitises it: every run of non-word characters (and a
/// `_` right after it) becomes one `_` (`example.org` → `example_org`).
pub fn sanitize_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
            continue;
        }
        while chars
            .peek()
            .is_some_and(|n| !(n.is_ascii_alphanumeric() || *n == '_'))
        {
            chars.next();
        }
        if chars.peek() == Some(&'_') {
            chars.next();
        }
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(prefix: &str, path: &str) -> String {
        prometheus_name(prefix, &rpc_key(path).unwrap())
    }

    #[test]
    fn rpc_names_match_upstreams_series() {
        for (prefix, path, expected) in [
            (
                "spire_server",
                "/spire.api.server.agent.v1.Agent/AttestAgent",
                "spire_server_rpc_agent_v1_agent_attest_agent",
            ),
            (
                "spire_server",
                "/spire.api.server.svid.v1.SVID/BatchNewX509SVID",
                "spire_server_rpc_svid_v1_svid_batch_new_x509svid",
            ),
            (
                "spire_server",
                "/spire.api.server.localauthority.v1.LocalAuthority/GetJWTAuthorityState",
                "spire_server_rpc_localauthority_v1_local_authority_get_jwt_authority_state",
            ),
            (
                "spire_server",
                "/spire.api.server.logger.v1.Logger/SetLogLevel",
                "spire_server_rpc_logger_set_log_level",
            ),
            (
                "spire_server",
                "/grpc.health.v1.Health/Check",
                "spire_server_rpc_health_check",
            ),
            (
                "spire_agent",
                "/SpiffeWorkloadAPI/FetchX509SVID",
                "spire_agent_rpc_workload_api_fetch_x509svid",
            ),
            (
                "spire_agent",
                "/SpiffeWorkloadAPI/FetchJWTBundles",
                "spire_agent_rpc_workload_api_fetch_jwt_bundles",
            ),
            (
                "spire_agent",
                "/spire.api.agent.logger.v1.Logger/GetLogger",
                "spire_agent_rpc_spire_api_agent_logger_get_logger",
            ),
            (
                "spire_agent",
                "/spire.api.agent.delegatedidentity.v1.DelegatedIdentity/FetchJWTSVIDs",
                "spire_agent_rpc_delegated_identity_fetch_jwtsvi_ds",
            ),
            (
                "spire_agent",
                "/spire.api.agent.delegatedidentity.v1.DelegatedIdentity/SubscribeToX509SVIDs",
                "spire_agent_rpc_delegated_identity_subscribe_to_x509_svids",
            ),
            (
                "spire_agent",
                "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
                "spire_agent_rpc_sds_v3_stream_secrets",
            ),
            (
                "spire_agent",
                "/spire.agent.debug.v1.Debug/GetInfo",
                "spire_agent_rpc_spire_agent_debug_v1_debug_get_info",
            ),
        ] {
            assert_eq!(name(prefix, path), expected, "{path}");
        }
    }

    #[test]
    fn odd_paths_have_no_key() {
        for path in ["", "/", "/svc", "/svc/", "//m", "/a/b/c", "svc/m"] {
            assert_eq!(rpc_key(path), None, "{path:?}");
        }
    }

    #[test]
    fn labels_are_sanitised_like_upstream() {
        assert_eq!(sanitize_label("example.org"), "example_org");
        assert_eq!(sanitize_label("1.13.3"), "1_13_3");
        assert_eq!(sanitize_label("a.-_b"), "a_b");
        assert_eq!(sanitize_label("OK"), "OK");
    }
}
