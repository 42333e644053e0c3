//! The `k8s_psat` node attestor (server side): the agent presents a projected service
//! account token of its pod; the cluster's API server reviews it (TokenReview, audience
//! checked), and the pod and its node are read from the API server. Agent ID
//! `spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node UID>` (or `.../pod/<pod UID>` with
//! `use_pod_uid_for_agent_id`); the agent re-attests with a fresh token instead of renewing.
//! Keys, selectors and messages are upstream's (`doc/plugin_server_nodeattestor_k8s_psat.md`);
//! messages name the cluster, as upstream 1.15's do.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::Deserialize;
use spire_common::k8s::{
    ApiServerClient, EXTRA_POD_NAME, EXTRA_POD_UID, K8sError, extra_value, service_account_of,
};
use spire_core::config::de;
use spire_core::spiffe_id::TrustDomain;
use tonic::{Code, Status};

use super::{Attested, Challenger, NodeAttestor, plugin_error};
use crate::config::ConfigError;

/// The attestor's name in configs, attestation data and selectors.
pub const NAME: &str = "k8s_psat";

/// The audience tokens must carry when a cluster names none.
const DEFAULT_AUDIENCE: &str = "spire-server";

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::named_blocks")]
    clusters: BTreeMap<String, ClusterData>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterData {
    #[serde(default, deserialize_with = "de::string_list")]
    service_account_allow_list: Vec<String>,
    /// `None` (absent) means the default audience; an empty list means the API server's.
    #[serde(default)]
    audience: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de::opt_string")]
    kube_config_file: Option<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    allowed_node_label_keys: Vec<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    allowed_pod_label_keys: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    use_pod_uid_for_agent_id: Option<bool>,
}

/// One cluster's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `service_account_allow_list`: `<namespace>:<name>` of the agents' service accounts.
    pub service_account_allow_list: BTreeSet<String>,
    /// The audiences a token must carry one of; empty: the API server's default audience.
    pub audience: Vec<String>,
    /// `kube_config_file`; `None` means in-cluster.
    pub kube_config_file: Option<String>,
    /// `allowed_node_label_keys`: node labels turned into `agent_node_label` selectors.
    pub allowed_node_label_keys: BTreeSet<String>,
    /// `allowed_pod_label_keys`: pod labels turned into `agent_pod_label` selectors.
    pub allowed_pod_label_keys: BTreeSet<String>,
    /// `use_pod_uid_for_agent_id`: one agent ID per pod instead of per node.
    pub use_pod_uid_for_agent_id: bool,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct K8sPsatConfig {
    /// Clusters by the name agents send.
    pub clusters: BTreeMap<String, ClusterConfig>,
}

impl K8sPsatConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        if data.clusters.is_empty() {
            tracing::info!("No clusters configured, PSAT attestation is effectively disabled");
        }
        let mut clusters = BTreeMap::new();
        for (name, c) in data.clusters {
            if c.service_account_allow_list.is_empty() {
                return Err(ConfigError::invalid(
                    file,
                    format!("{path}.clusters.{name}.service_account_allow_list"),
                    format!(
                        "cluster {name:?} configuration must have at least one service account \
                         allowed: add service_account_allow_list = [\"<namespace>:<name>\"]"
                    ),
                ));
            }
            clusters.insert(
                name,
                ClusterConfig {
                    service_account_allow_list: c.service_account_allow_list.into_iter().collect(),
                    audience: c
                        .audience
                        .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]),
                    kube_config_file: c.kube_config_file.filter(|f| !f.is_empty()),
                    allowed_node_label_keys: c.allowed_node_label_keys.into_iter().collect(),
                    allowed_pod_label_keys: c.allowed_pod_label_keys.into_iter().collect(),
                    use_pod_uid_for_agent_id: c.use_pod_uid_for_agent_id.unwrap_or(false),
                },
            );
        }
        Ok(Self { clusters })
    }
}

/// The attestation payload, `{"cluster":"…","token":"…"}` (shared with `k8s_sat`).
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    token: String,
}

/// Attests agents by their pods' projected service account tokens.
#[derive(Debug)]
pub struct K8sPsatAttestor {
    config: K8sPsatConfig,
    trust_domain: TrustDomain,
}

impl K8sPsatAttestor {
    /// An attestor for `trust_domain` with the validated configuration.
    pub fn new(config: K8sPsatConfig, trust_domain: TrustDomain) -> Self {
        Self {
            config,
            trust_domain,
        }
    }
}

fn error(code: Code, message: impl std::fmt::Display) -> Status {
    plugin_error(NAME, code, message)
}

#[async_trait]
impl NodeAttestor for K8sPsatAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attest(
        &self,
        payload: &[u8],
        _challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        let data: Payload = serde_json::from_slice(payload).map_err(|e| {
            error(
                Code::InvalidArgument,
                format!("failed to unmarshal data payload: {e}"),
            )
        })?;
        if data.cluster.is_empty() {
            return Err(error(
                Code::InvalidArgument,
                "missing cluster in attestation data",
            ));
        }
        if data.token.is_empty() {
            return Err(error(
                Code::InvalidArgument,
                "missing token in attestation data",
            ));
        }
        let cluster_name = data.cluster;
        let Some(cluster) = self.config.clusters.get(&cluster_name) else {
            return Err(error(
                Code::InvalidArgument,
                format!("not configured for cluster {cluster_name:?}"),
            ));
        };
        let for_cluster = format!("for cluster {cluster_name:?}");
        let client = ApiServerClient::new(
            cluster
                .kube_config_file
                .as_deref()
                .map(std::path::Path::new),
        )
        .connect()
        .await
        .map_err(|e| {
            error(
                Code::Internal,
                format!("unable to validate token with TokenReview API {for_cluster}: {e}"),
            )
        })?;

        // A token the API server rejects (a review error, such as a wrong audience or a
        // deleted pod) is a refusal of the agent, PermissionDenied; upstream reports it as
        // Internal, which reads like a server fault. Not reaching the API server is Internal.
        let status = client
            .validate_token(&data.token, &cluster.audience)
            .await
            .map_err(|e| {
                let code = match e {
                    K8sError::ReviewError(_) | K8sError::Audience { .. } => Code::PermissionDenied,
                    _ => Code::Internal,
                };
                error(
                    code,
                    format!("unable to validate token with TokenReview API {for_cluster}: {e}"),
                )
            })?;
        if status.authenticated != Some(true) {
            return Err(error(
                Code::PermissionDenied,
                format!("token not authenticated according to TokenReview API {for_cluster}"),
            ));
        }
        let (namespace, service_account) = service_account_of(&status).map_err(|e| {
            error(
                Code::Internal,
                format!("fail to parse username from token review status {for_cluster}: {e}"),
            )
        })?;
        let account = format!("{namespace}:{service_account}");
        if !cluster.service_account_allow_list.contains(&account) {
            return Err(error(
                Code::PermissionDenied,
                format!("{account:?} is not an allowed service account {for_cluster}"),
            ));
        }
        let pod_name = extra_value(&status, EXTRA_POD_NAME, "name").map_err(|e| {
            error(
                Code::Internal,
                format!("fail to get pod name from token review status {for_cluster}: {e}"),
            )
        })?;
        let pod_uid = extra_value(&status, EXTRA_POD_UID, "UID").map_err(|e| {
            error(
                Code::Internal,
                format!("fail to get pod UID from token review status {for_cluster}: {e}"),
            )
        })?;
        let pod = client.get_pod(&namespace, &pod_name).await.map_err(|e| {
            error(
                Code::Internal,
                format!("fail to get pod from k8s API server {for_cluster}: {e}"),
            )
        })?;
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let node = client.get_node(&node_name).await.map_err(|e| {
            error(
                Code::Internal,
                format!("fail to get node from k8s API server {for_cluster}: {e}"),
            )
        })?;
        let node_uid = node.metadata.uid.clone().unwrap_or_default();
        if node_uid.is_empty() {
            return Err(error(
                Code::Internal,
                format!("node UID is empty {for_cluster}"),
            ));
        }

        let suffix = if cluster.use_pod_uid_for_agent_id {
            format!("pod/{pod_uid}")
        } else {
            node_uid.clone()
        };
        let agent_id = self
            .trust_domain
            .id_with_path(&format!("/spire/agent/{NAME}/{cluster_name}/{suffix}"))
            .map_err(|e| error(Code::Internal, format!("invalid agent ID: {e}")))?;

        let host_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.host_ip.clone())
            .unwrap_or_default();
        let mut selector_values = vec![
            format!("cluster:{cluster_name}"),
            format!("agent_ns:{namespace}"),
            format!("agent_sa:{service_account}"),
            format!("agent_pod_name:{pod_name}"),
            format!("agent_pod_uid:{pod_uid}"),
            format!("agent_node_ip:{host_ip}"),
            format!("agent_node_name:{node_name}"),
            format!("agent_node_uid:{node_uid}"),
        ];
        for (key, value) in node.metadata.labels.iter().flatten() {
            if cluster.allowed_node_label_keys.contains(key) {
                selector_values.push(format!("agent_node_label:{key}:{value}"));
            }
        }
        for (key, value) in pod.metadata.labels.iter().flatten() {
            if cluster.allowed_pod_label_keys.contains(key) {
                selector_values.push(format!("agent_pod_label:{key}:{value}"));
            }
        }
        Ok(Attested {
            agent_id,
            selector_values,
            can_reattest: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<K8sPsatConfig, ConfigError> {
        let data: Data = serde_json::from_str(json)
            .map_err(|e| ConfigError::invalid("server.conf", "plugin_data", e.to_string()))?;
        K8sPsatConfig::from_data(
            "server.conf",
            "plugins.NodeAttestor.k8s_psat.plugin_data",
            data,
        )
    }

    #[test]
    fn clusters_take_upstreams_keys_and_defaults() {
        let config = parse(
            r#"{"clusters": {"prod": {"service_account_allow_list": ["spire:spire-agent"],
                "allowed_node_label_keys": ["zone"], "kube_config_file": "/k.conf"},
                "dev": {"service_account_allow_list": ["a:b"], "audience": []}}}"#,
        )
        .unwrap();
        let prod = &config.clusters["prod"];
        assert_eq!(prod.audience, ["spire-server"], "the default audience");
        assert!(
            prod.service_account_allow_list
                .contains("spire:spire-agent")
        );
        assert!(prod.allowed_node_label_keys.contains("zone"));
        assert_eq!(prod.kube_config_file.as_deref(), Some("/k.conf"));
        assert!(!prod.use_pod_uid_for_agent_id);
        assert!(
            config.clusters["dev"].audience.is_empty(),
            "an empty list asks for the API server's audience"
        );
        // HCL's repeated named blocks arrive as a list of one-key objects.
        let listed =
            parse(r#"{"clusters": [{"a": [{"service_account_allow_list": "ns:sa"}]}]}"#).unwrap();
        assert!(
            listed.clusters["a"]
                .service_account_allow_list
                .contains("ns:sa")
        );
        assert!(parse("{}").unwrap().clusters.is_empty());
    }

    #[test]
    fn bad_configs_name_the_cluster_and_key() {
        let err = parse(r#"{"clusters": {"prod": {}}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("service_account_allow_list") && err.contains("\"prod\""),
            "{err}"
        );
        let err = parse(
            r#"{"clusters": {"prod": {"service_account_allow_list": ["a:b"], "audiences": []}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("audiences"), "{err}");
    }

    struct NoChallenges;

    #[async_trait]
    impl Challenger for NoChallenges {
        async fn challenge(&mut self, _: Vec<u8>) -> Result<Vec<u8>, Status> {
            Err(Status::internal("no challenges here"))
        }
    }

    /// Payload checks happen before any API server call, with upstream's codes.
    #[tokio::test]
    async fn bad_payloads_are_refused_before_calling_the_api_server() {
        let config =
            parse(r#"{"clusters": {"prod": {"service_account_allow_list": ["a:b"]}}}"#).unwrap();
        let attestor = K8sPsatAttestor::new(config, TrustDomain::new("example.org").unwrap());
        for (payload, code, message) in [
            (
                &b"not json"[..],
                Code::InvalidArgument,
                "failed to unmarshal data payload",
            ),
            (
                br#"{"token":"t"}"#,
                Code::InvalidArgument,
                "missing cluster in attestation data",
            ),
            (
                br#"{"cluster":"prod"}"#,
                Code::InvalidArgument,
                "missing token in attestation data",
            ),
            (
                br#"{"cluster":"other","token":"t"}"#,
                Code::InvalidArgument,
                "nodeattestor(k8s_psat): not configured for cluster \"other\"",
            ),
        ] {
            let err = attestor
                .attest(payload, &mut NoChallenges)
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{err:?}");
            assert!(err.message().contains(message), "{err:?}");
            assert!(
                err.message().starts_with("nodeattestor(k8s_psat): "),
                "{err:?}"
            );
        }
    }

    /// An API server that cannot be reached is an Internal error naming the TokenReview.
    #[tokio::test]
    async fn an_unreachable_api_server_is_named() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "c", "cluster": {
                    "server": format!("https://127.0.0.1:{port}"),
                    "insecure-skip-tls-verify": true}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c"
            })
            .to_string(),
        )
        .unwrap();
        let config = parse(&format!(
            r#"{{"clusters": {{"prod": {{"service_account_allow_list": ["a:b"],
                "kube_config_file": {:?}}}}}}}"#,
            kubeconfig.display().to_string()
        ))
        .unwrap();
        let attestor = K8sPsatAttestor::new(config, TrustDomain::new("example.org").unwrap());
        let err = attestor
            .attest(br#"{"cluster":"prod","token":"t"}"#, &mut NoChallenges)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        assert!(
            err.message().contains(
                "unable to validate token with TokenReview API for cluster \"prod\": unable to \
                 query token review API"
            ),
            "{err:?}"
        );
        let missing = parse(
            r#"{"clusters": {"prod": {"service_account_allow_list": ["a:b"],
                "kube_config_file": "/nonexistent/kubeconfig"}}}"#,
        )
        .unwrap();
        let attestor = K8sPsatAttestor::new(missing, TrustDomain::new("example.org").unwrap());
        let err = attestor
            .attest(br#"{"cluster":"prod","token":"t"}"#, &mut NoChallenges)
            .await
            .unwrap_err();
        assert!(err.message().contains("/nonexistent/kubeconfig"), "{err:?}");
    }
}
