//! The `k8s_configmap` BundlePublisher: keeps the trust bundle, in the SPIFFE, JWKS or PEM
//! format, under one key of a Kubernetes ConfigMap, in any number of clusters. The
//! ConfigMap is written with server-side apply (field manager
//! `spire-bundlepublisher-k8s_configmap`), so it is created when missing and other keys and
//! their managers are left alone. Keys, validation messages and behaviour are upstream's
//! (`doc/plugin_server_bundlepublisher_k8s_configmap.md`); the spiffe/helm-charts-hardened
//! chart enables it by default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use spire_common::k8s::{ApiServerClient, describe_api_error};
use spire_core::config::de;
use spire_proto::spire::api::types;

use super::{BundlePublisher, BundlePublisherError};
use crate::config::ConfigError;

/// The plugin's name in configs and logs.
pub const NAME: &str = "k8s_configmap";

/// The server-side apply field manager, upstream's, so either implementation can take over
/// a ConfigMap the other wrote.
pub const FIELD_MANAGER: &str = "spire-bundlepublisher-k8s_configmap";

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::named_blocks")]
    clusters: BTreeMap<String, ClusterData>,
}

/// One entry of `clusters`, keyed by an arbitrary ID.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterData {
    #[serde(default, deserialize_with = "de::opt_string")]
    format: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    configmap_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    configmap_key: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    kubeconfig_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    refresh_hint: Option<String>,
}

/// How the bundle is written into the ConfigMap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    /// The SPIFFE bundle document: X.509 and JWT authorities, sequence and refresh hint.
    Spiffe,
    /// An RFC 7517 JWK Set without SPIFFE parameters: X.509 and JWT authorities.
    Jwks,
    /// PEM `CERTIFICATE` blocks: the X.509 authorities only.
    Pem,
}

impl BundleFormat {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spiffe => "spiffe",
            Self::Jwks => "jwks",
            Self::Pem => "pem",
        }
    }

    /// Upstream's `bundleformat.FromString`: case-insensitive.
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "spiffe" => Some(Self::Spiffe),
            "jwks" => Some(Self::Jwks),
            "pem" => Some(Self::Pem),
            _ => None,
        }
    }
}

/// One cluster the bundle is published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The key of `clusters`, naming the cluster in logs and errors.
    pub id: String,
    /// `format`.
    pub format: BundleFormat,
    /// `namespace` of the ConfigMap.
    pub namespace: String,
    /// `configmap_name`.
    pub configmap_name: String,
    /// `configmap_key`.
    pub configmap_key: String,
    /// `kubeconfig_path`; `None` means the server's in-cluster service account.
    pub kubeconfig_path: Option<PathBuf>,
    /// `refresh_hint`, in whole seconds, replacing the bundle's own when set.
    pub refresh_hint: Option<i64>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sConfigMapConfig {
    /// The clusters, by ID; none means nothing is published (upstream logs that too).
    pub clusters: Vec<ClusterConfig>,
}

impl K8sConfigMapConfig {
    /// Validates the parsed `plugin_data` of `file` at `path` as upstream's `buildConfig`
    /// does, with its messages: every cluster needs `format`, `namespace`,
    /// `configmap_name` and `configmap_key`; `format` is spiffe, jwks or pem.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let mut clusters = Vec::new();
        for (id, cluster) in data.clusters {
            let at = |key: &str| format!("{path}.clusters.{id}.{key}");
            let required = |key: &str, what: &str, value: Option<String>| {
                value.ok_or_else(|| {
                    ConfigError::invalid(
                        file,
                        at(key),
                        format!("missing {what} in cluster {id:?}: set {key}"),
                    )
                })
            };
            let format_text = required("format", "bundle format", cluster.format)?;
            let namespace = required("namespace", "namespace", cluster.namespace)?;
            let configmap_name =
                required("configmap_name", "configmap name", cluster.configmap_name)?;
            let configmap_key = required("configmap_key", "configmap key", cluster.configmap_key)?;
            let format = BundleFormat::parse(&format_text).ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    at("format"),
                    format!(
                        "could not parse bundle format from cluster {id:?}: unknown bundle \
                         format: {format_text:?} (use \"spiffe\", \"jwks\" or \"pem\")"
                    ),
                )
            })?;
            let refresh_hint = match cluster.refresh_hint {
                None => None,
                Some(text) => {
                    let hint = spire_core::duration::parse(text.trim()).map_err(|e| {
                        ConfigError::invalid(
                            file,
                            at("refresh_hint"),
                            format!(
                                "could not parse refresh_hint from cluster {id:?}: could not \
                                 parse refresh hint {text:?}: {e}"
                            ),
                        )
                    })?;
                    warn_about_refresh_hint(&id, hint);
                    Some(i64::try_from(hint.as_secs()).unwrap_or(i64::MAX))
                }
            };
            clusters.push(ClusterConfig {
                id,
                format,
                namespace,
                configmap_name,
                configmap_key,
                kubeconfig_path: cluster.kubeconfig_path.map(PathBuf::from),
                refresh_hint,
            });
        }
        Ok(Self { clusters })
    }
}

/// Upstream's notes about refresh hints out of the useful range.
fn warn_about_refresh_hint(id: &str, hint: Duration) {
    if hint >= Duration::from_secs(24 * 3600) {
        tracing::warn!(
            bundle_publisher = NAME,
            cluster_id = id,
            "Bundle endpoint refresh hint set to a high value. To cover the case of unscheduled trust bundle updates, it's recommended to have a smaller value, e.g. 5m"
        );
    }
    if hint < Duration::from_secs(60) {
        tracing::warn!(
            bundle_publisher = NAME,
            cluster_id = id,
            "Bundle endpoint refresh hint set too low. SPIRE will not refresh more often than 1 minute"
        );
    }
}

/// The bundle in `format`, with `refresh_hint` (seconds) replacing the bundle's own.
pub fn format_bundle(
    bundle: &types::Bundle,
    format: BundleFormat,
    refresh_hint: Option<i64>,
) -> Result<String, String> {
    if format == BundleFormat::Pem {
        return Ok(spire_core::pem::encode_certificates(
            bundle.x509_authorities.iter().map(|a| a.asn1.as_slice()),
        ));
    }
    let mut bundle = bundle.clone();
    if let Some(hint) = refresh_hint {
        bundle.refresh_hint = hint;
    }
    let document = crate::api::convert::bundle_to_document(&bundle)
        .and_then(|d| d.to_spiffe_document())
        .map_err(|e| {
            format!(
                "could not convert bundle to {} format: {e}",
                format.as_str()
            )
        })?;
    if format == BundleFormat::Spiffe {
        return Ok(document);
    }
    // JWKS: the same keys without the SPIFFE parameters (`use`, sequence, refresh hint).
    let mut value: Value = serde_json::from_str(&document).map_err(|e| e.to_string())?;
    let keys = value
        .get_mut("keys")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let keys: Vec<Value> = keys
        .into_iter()
        .map(|mut key| {
            if let Some(members) = key.as_object_mut() {
                members.remove("use");
            }
            key
        })
        .collect();
    serde_json::to_string(&json!({ "keys": keys })).map_err(|e| e.to_string())
}

/// One cluster with its API server client.
struct Cluster {
    config: ClusterConfig,
    client: kube::Client,
}

/// The `k8s_configmap` BundlePublisher.
pub struct K8sConfigMap {
    clusters: Vec<Cluster>,
    /// The bundle last published to every cluster: the same bundle again is not rewritten.
    published: Mutex<Option<types::Bundle>>,
}

impl std::fmt::Debug for K8sConfigMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sConfigMap")
            .field(
                "clusters",
                &self
                    .clusters
                    .iter()
                    .map(|c| &c.config.id)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl K8sConfigMap {
    /// Sets up a client for every cluster; a kubeconfig that cannot be read, or no
    /// in-cluster service account when no kubeconfig is named, is an error naming the
    /// cluster (upstream's "failed to create Kubernetes client").
    pub async fn new(config: &K8sConfigMapConfig) -> Result<Self, BundlePublisherError> {
        if config.clusters.is_empty() {
            tracing::info!(
                bundle_publisher = NAME,
                "No clusters configured, bundle will not be published"
            );
        }
        let mut clusters = Vec::new();
        for cluster in &config.clusters {
            let client = ApiServerClient::new(cluster.kubeconfig_path.as_deref())
                .kube_client()
                .await
                .map_err(|e| BundlePublisherError {
                    name: NAME.to_owned(),
                    message: format!(
                        "failed to create Kubernetes client for cluster {:?}: {e}; set \
                         kubeconfig_path to a readable kubeconfig, or leave it unset only when \
                         the server runs in a pod",
                        cluster.id
                    ),
                })?;
            clusters.push(Cluster {
                config: cluster.clone(),
                client,
            });
        }
        Ok(Self {
            clusters,
            published: Mutex::new(None),
        })
    }

    /// Applies `text` as the cluster's ConfigMap key.
    async fn apply(cluster: &Cluster, text: &str) -> Result<(), String> {
        let c = &cluster.config;
        let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &c.namespace);
        let mut data = serde_json::Map::new();
        data.insert(c.configmap_key.clone(), Value::String(text.to_owned()));
        let object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": c.configmap_name, "namespace": c.namespace},
            "data": data,
        });
        api.patch(
            &c.configmap_name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&object),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            describe_api_error(
                &e,
                "grant the server's identity create, get and patch on configmaps",
            )
        })
    }
}

#[async_trait]
impl BundlePublisher for K8sConfigMap {
    fn name(&self) -> &str {
        NAME
    }

    async fn publish_bundle(&self, bundle: &types::Bundle) -> Result<(), BundlePublisherError> {
        if self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            == Some(bundle)
        {
            return Ok(());
        }
        let mut errors = Vec::new();
        for cluster in &self.clusters {
            let c = &cluster.config;
            let text = match format_bundle(bundle, c.format, c.refresh_hint) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(format!(
                        "could not format bundle when publishing to cluster {:?}: {e}",
                        c.id
                    ));
                    continue;
                }
            };
            match Self::apply(cluster, &text).await {
                Ok(()) => tracing::debug!(
                    bundle_publisher = NAME,
                    cluster_id = %c.id,
                    format = c.format.as_str(),
                    namespace = %c.namespace,
                    configmap = %c.configmap_name,
                    key = %c.configmap_key,
                    "Bundle published to Kubernetes ConfigMap"
                ),
                Err(e) => errors.push(format!(
                    "failed to apply ConfigMap {}/{} for cluster {:?}: {e}",
                    c.namespace, c.configmap_name, c.id
                )),
            }
        }
        if !errors.is_empty() {
            return Err(BundlePublisherError {
                name: NAME.to_owned(),
                message: errors.join("; "),
            });
        }
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(bundle.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: Value) -> Result<K8sConfigMapConfig, String> {
        let data: Data =
            spire_core::config::from_value("server.conf", data).map_err(|e| e.to_string())?;
        K8sConfigMapConfig::from_data(
            "server.conf",
            "plugins.BundlePublisher.k8s_configmap.plugin_data",
            data,
        )
        .map_err(|e| e.to_string())
    }

    fn cluster() -> Value {
        json!({"configmap_name": "spire-bundle", "configmap_key": "bundle",
            "namespace": "spire", "format": "spiffe"})
    }

    #[test]
    fn every_key_is_read_from_a_map_or_the_helm_charts_list_of_maps() {
        let mut second = cluster();
        second["format"] = json!("PEM");
        second["kubeconfig_path"] = json!("/etc/kube/two");
        second["refresh_hint"] = json!("5m30s");
        let as_map = parse(json!({"clusters": {"one": cluster(), "two": second.clone()}})).unwrap();
        let as_list = parse(json!({"clusters": [{"one": cluster()}, {"two": second}]})).unwrap();
        assert_eq!(as_map, as_list);
        assert_eq!(
            as_map.clusters,
            [
                ClusterConfig {
                    id: "one".into(),
                    format: BundleFormat::Spiffe,
                    namespace: "spire".into(),
                    configmap_name: "spire-bundle".into(),
                    configmap_key: "bundle".into(),
                    kubeconfig_path: None,
                    refresh_hint: None,
                },
                ClusterConfig {
                    id: "two".into(),
                    format: BundleFormat::Pem,
                    namespace: "spire".into(),
                    configmap_name: "spire-bundle".into(),
                    configmap_key: "bundle".into(),
                    kubeconfig_path: Some("/etc/kube/two".into()),
                    refresh_hint: Some(330),
                },
            ]
        );
        assert_eq!(parse(json!({})).unwrap().clusters, []);
    }

    #[test]
    fn required_keys_are_named_with_upstreams_message() {
        for (key, what) in [
            ("format", "bundle format"),
            ("namespace", "namespace"),
            ("configmap_name", "configmap name"),
            ("configmap_key", "configmap key"),
        ] {
            let mut c = cluster();
            c.as_object_mut().unwrap().remove(key);
            let err = parse(json!({"clusters": {"c1": c.clone()}})).unwrap_err();
            assert!(
                err.contains(&format!(
                    "plugins.BundlePublisher.k8s_configmap.plugin_data.clusters.c1.{key}"
                )) && err.contains(&format!("missing {what} in cluster \"c1\"")),
                "{err}"
            );
            // Empty is unset, as Go's zero value.
            c[key] = json!("");
            assert!(parse(json!({"clusters": {"c1": c}})).is_err());
        }
    }

    #[test]
    fn bad_format_refresh_hint_and_unknown_keys_are_refused() {
        let mut c = cluster();
        c["format"] = json!("der");
        let err = parse(json!({"clusters": {"c1": c}})).unwrap_err();
        assert!(
            err.contains("clusters.c1.format")
                && err.contains(
                    "could not parse bundle format from cluster \"c1\": unknown bundle format: \"der\""
                ),
            "{err}"
        );
        let mut c = cluster();
        c["refresh_hint"] = json!("soon");
        let err = parse(json!({"clusters": {"c1": c}})).unwrap_err();
        assert!(
            err.contains("clusters.c1.refresh_hint")
                && err.contains("could not parse refresh_hint from cluster \"c1\""),
            "{err}"
        );
        let mut c = cluster();
        c["kube_config_file_path"] = json!("/etc/kubeconfig");
        let err = parse(json!({"clusters": {"c1": c}})).unwrap_err();
        assert!(err.contains("kube_config_file_path"), "{err}");
    }

    /// A bundle with one self-signed X.509 authority and one JWT authority.
    fn bundle() -> types::Bundle {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let jwt_key = rcgen::KeyPair::generate().unwrap();
        types::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![types::X509Certificate {
                asn1: cert.der().to_vec(),
                tainted: false,
            }],
            jwt_authorities: vec![types::JwtKey {
                public_key: rcgen::PublicKeyData::subject_public_key_info(&jwt_key),
                key_id: "kid-1".into(),
                expires_at: 0,
                tainted: false,
            }],
            refresh_hint: 0,
            sequence_number: 7,
            ..types::Bundle::default()
        }
    }

    #[test]
    fn formats_hold_what_upstream_puts_in_them() {
        let b = bundle();
        let pem = format_bundle(&b, BundleFormat::Pem, Some(60)).unwrap();
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 1);

        let spiffe: Value =
            serde_json::from_str(&format_bundle(&b, BundleFormat::Spiffe, Some(90)).unwrap())
                .unwrap();
        assert_eq!(spiffe["spiffe_sequence"], 7);
        assert_eq!(spiffe["spiffe_refresh_hint"], 90, "the cluster's hint wins");
        assert_eq!(spiffe["keys"][0]["use"], "x509-svid");
        assert_eq!(spiffe["keys"][1]["kid"], "kid-1");
        let parsed = spire_core::bundle::Bundle::from_spiffe_document(
            spire_core::TrustDomain::new("example.org").unwrap(),
            format_bundle(&b, BundleFormat::Spiffe, None)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            parsed.x509_authorities,
            [b.x509_authorities[0].asn1.clone()]
        );
        assert_eq!(parsed.refresh_hint, None);

        let jwks: Value =
            serde_json::from_str(&format_bundle(&b, BundleFormat::Jwks, Some(90)).unwrap())
                .unwrap();
        let object = jwks.as_object().unwrap();
        assert_eq!(object.keys().collect::<Vec<_>>(), ["keys"], "{jwks}");
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.get("use").is_none()), "{jwks}");
        assert!(keys[0]["x5c"].is_array());
        assert_eq!(keys[1]["kid"], "kid-1");
    }
}
