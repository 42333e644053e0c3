//! The `gcp_iit` node attestor (server side): the agent presents the instance identity token
//! its VM's metadata server issued; the server verifies Google's RS256 signature against the
//! certificates Google publishes, the audience `spire-gcp-node-attestor` and the times, that
//! the project is in `projectid_allow_list`, and refuses a token for an agent that already
//! attested (trust on first use). Agent ID `spiffe://<td>/spire/agent/gcp_iit/<project
//! ID>/<instance ID>` unless `agent_path_template` says otherwise; selectors `project-id:`,
//! `zone:`, `instance-name:` and, with `use_instance_metadata`, `tag:`, `sa:`,
//! `label:<key>:<value>` and `metadata:<key>:<value>` from the Compute Engine API. Keys,
//! defaults and messages are upstream's (`doc/plugin_server_nodeattestor_gcp_iit.md`);
//! `google_certs_url` and `compute_endpoint` are ours (see docs/cloud-gcp-azure.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use spire_common::cloud_http::{CloudHttpClient, url_encode};
use spire_core::agent_path_template::{Template, Value as TemplateValue};
use spire_core::config::de;
use spire_core::jws::{self, JwsError, KeySet};
use spire_core::jwt::{JwtAlgorithm, LEEWAY_SECONDS};
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use tonic::{Code, Status};

use super::gcp_credentials::Source as CredentialSource;
use super::{Attested, Challenger, NodeAttestor, plugin_error, tofu};
use crate::config::ConfigError;
use crate::datastore::DataStore;

/// The attestor's name in configs, attestation data and selectors.
pub const NAME: &str = "gcp_iit";

/// The audience identity tokens must carry (upstream's constant, which the agent asks for).
pub const TOKEN_AUDIENCE: &str = "spire-gcp-node-attestor";

/// Where Google publishes the certificates of its token signing keys.
pub const DEFAULT_GOOGLE_CERTS_URL: &str = "https://www.googleapis.com/oauth2/v1/certs";

/// The Compute Engine API.
pub const DEFAULT_COMPUTE_ENDPOINT: &str = "https://compute.googleapis.com/compute/v1/";

/// The agent path template unless configured.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str =
    "/{{ .PluginName }}/{{ .ProjectID }}/{{ .InstanceID }}";

/// The longest metadata value turned into a selector unless configured.
const DEFAULT_MAX_METADATA_VALUE_SIZE: i64 = 128;

/// How long Google's certificates are used before fetching them again (a token naming an
/// unknown key fetches them at once).
const KEY_SET_REFRESH: Duration = Duration::from_secs(15 * 60);

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::string_list")]
    projectid_allow_list: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    agent_path_template: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    use_instance_metadata: Option<bool>,
    #[serde(default, deserialize_with = "de::string_list")]
    allowed_label_keys: Vec<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    allowed_metadata_keys: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    max_metadata_value_size: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    service_account_file: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    google_certs_url: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    compute_endpoint: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpIitConfig {
    /// `projectid_allow_list`: the projects whose instances may attest.
    pub projectid_allow_list: BTreeSet<String>,
    /// `agent_path_template`'s text (validated).
    pub agent_path_template: String,
    /// `use_instance_metadata`: read tags, service accounts, labels and metadata.
    pub use_instance_metadata: bool,
    /// `allowed_label_keys`: labels that become selectors.
    pub allowed_label_keys: BTreeSet<String>,
    /// `allowed_metadata_keys`: metadata items that become selectors.
    pub allowed_metadata_keys: BTreeSet<String>,
    /// `max_metadata_value_size`: longer allowed metadata values fail the attestation.
    pub max_metadata_value_size: usize,
    /// `service_account_file`: credentials for the Compute Engine API.
    pub service_account_file: Option<String>,
    /// `google_certs_url` (ours): where the signing certificates are fetched.
    pub google_certs_url: String,
    /// `compute_endpoint` (ours): the Compute Engine API's base URL, ending in `/`.
    pub compute_endpoint: String,
}

impl GcpIitConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| {
            ConfigError::invalid(file, format!("{path}.{key}"), message)
        };
        if data.projectid_allow_list.is_empty() {
            return Err(invalid(
                "projectid_allow_list",
                "projectid_allow_list is required: list the GCP project IDs whose instances may \
                 attest"
                    .into(),
            ));
        }
        let agent_path_template = data
            .agent_path_template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_AGENT_PATH_TEMPLATE.to_owned());
        Template::parse(&agent_path_template).map_err(|e| {
            invalid(
                "agent_path_template",
                format!("failed to parse agent path template: {agent_path_template:?}: {e}"),
            )
        })?;
        let max = match data.max_metadata_value_size {
            None | Some(0) => DEFAULT_MAX_METADATA_VALUE_SIZE,
            Some(n) if n > 0 => n,
            Some(n) => {
                return Err(invalid(
                    "max_metadata_value_size",
                    format!("max_metadata_value_size must be positive, not {n}"),
                ));
            }
        };
        let url = |key: &str, value: Option<String>, default: &str| {
            let value = value
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned());
            if value.starts_with("https://") || value.starts_with("http://") {
                Ok(value)
            } else {
                Err(invalid(
                    key,
                    format!("{key} must be an http(s) URL, not {value:?}"),
                ))
            }
        };
        let mut compute_endpoint = url(
            "compute_endpoint",
            data.compute_endpoint,
            DEFAULT_COMPUTE_ENDPOINT,
        )?;
        if !compute_endpoint.ends_with('/') {
            compute_endpoint.push('/');
        }
        Ok(Self {
            projectid_allow_list: data.projectid_allow_list.into_iter().collect(),
            agent_path_template,
            use_instance_metadata: data.use_instance_metadata.unwrap_or(false),
            allowed_label_keys: data.allowed_label_keys.into_iter().collect(),
            allowed_metadata_keys: data.allowed_metadata_keys.into_iter().collect(),
            max_metadata_value_size: usize::try_from(max).unwrap_or(usize::MAX),
            service_account_file: data.service_account_file.filter(|f| !f.is_empty()),
            google_certs_url: url(
                "google_certs_url",
                data.google_certs_url,
                DEFAULT_GOOGLE_CERTS_URL,
            )?,
            compute_endpoint,
        })
    }
}

/// The `google.compute_engine` claims of an identity token in full format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ComputeEngine {
    /// The project ID.
    pub project_id: String,
    /// The project number.
    pub project_number: i64,
    /// The zone.
    pub zone: String,
    /// The instance ID (digits).
    pub instance_id: String,
    /// The instance name.
    pub instance_name: String,
    /// When the instance was created (Unix seconds).
    pub instance_creation_timestamp: i64,
}

impl ComputeEngine {
    /// The agent path template's data: upstream's field names.
    fn template_data(&self) -> TemplateValue {
        let mut m = BTreeMap::new();
        m.insert("PluginName".into(), TemplateValue::str(NAME));
        m.insert("ProjectID".into(), TemplateValue::str(&self.project_id));
        m.insert(
            "ProjectNumber".into(),
            TemplateValue::Int(self.project_number),
        );
        m.insert("Zone".into(), TemplateValue::str(&self.zone));
        m.insert("InstanceID".into(), TemplateValue::str(&self.instance_id));
        m.insert(
            "InstanceName".into(),
            TemplateValue::str(&self.instance_name),
        );
        m.insert(
            "InstanceCreationTimestamp".into(),
            TemplateValue::Int(self.instance_creation_timestamp),
        );
        TemplateValue::Map(m)
    }
}

/// Google's certificates, fetched when first needed and again after [`KEY_SET_REFRESH`].
#[derive(Debug, Default)]
struct CachedKeys {
    keys: Option<(Arc<KeySet>, Instant)>,
}

/// Attests agents on GCE by their instance identity tokens.
pub struct GcpIitAttestor {
    config: GcpIitConfig,
    template: Template,
    trust_domain: TrustDomain,
    datastore: Arc<dyn DataStore>,
    http: CloudHttpClient,
    keys: tokio::sync::Mutex<CachedKeys>,
}

fn error(code: Code, message: impl std::fmt::Display) -> Status {
    plugin_error(NAME, code, message)
}

impl GcpIitAttestor {
    /// An attestor for `trust_domain`; `datastore` answers the trust-on-first-use check.
    pub fn new(
        config: GcpIitConfig,
        trust_domain: TrustDomain,
        datastore: Arc<dyn DataStore>,
    ) -> Result<Self, String> {
        let template = Template::parse(&config.agent_path_template)
            .map_err(|e| format!("failed to parse agent path template: {e}"))?;
        Ok(Self {
            config,
            template,
            trust_domain,
            datastore,
            http: CloudHttpClient::new(),
            keys: tokio::sync::Mutex::default(),
        })
    }

    /// The key set, fetched anew when stale or when `refresh` (a token named an unknown key).
    async fn key_set(&self, refresh: bool) -> Result<Arc<KeySet>, Status> {
        let mut cache = self.keys.lock().await;
        if let Some((keys, fetched)) = &cache.keys
            && !refresh
            && fetched.elapsed() < KEY_SET_REFRESH
        {
            return Ok(Arc::clone(keys));
        }
        let url = &self.config.google_certs_url;
        let unable = |e: String| {
            error(
                Code::Internal,
                format!("unable to retrieve Google's certificates from {url}: {e}"),
            )
        };
        let body = self
            .http
            .get(url, &[])
            .await
            .map_err(unable)?
            .ok_body()
            .map_err(unable)?;
        let keys = Arc::new(KeySet::from_x509_map(&body).map_err(|e| unable(e.to_string()))?);
        cache.keys = Some((Arc::clone(&keys), Instant::now()));
        Ok(keys)
    }

    /// Verifies the token's signature and claims and returns its Compute Engine claims.
    async fn verify(&self, token: &str) -> Result<ComputeEngine, Status> {
        let allowed = [JwtAlgorithm::Rs256];
        let mut keys = self.key_set(false).await?;
        let mut verified = jws::verify(token, &keys, &allowed);
        if matches!(verified, Err(JwsError::UnknownKeyId(_))) {
            keys = self.key_set(true).await?;
            verified = jws::verify(token, &keys, &allowed);
        }
        let claims = verified.map_err(|e| match e {
            JwsError::Malformed(_) => error(
                Code::InvalidArgument,
                format!("unable to parse the identity token: {e}"),
            ),
            _ => error(
                Code::PermissionDenied,
                format!("failed to validate the identity token signature: {e}"),
            ),
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        jws::check_claims(&claims, &[TOKEN_AUDIENCE], now, LEEWAY_SECONDS).map_err(|e| {
            error(
                Code::PermissionDenied,
                format!("failed to validate the identity token claims: {e}"),
            )
        })?;
        let compute = claims
            .get("google")
            .and_then(|g| g.get("compute_engine"))
            .cloned()
            .unwrap_or(Value::Null);
        let compute: ComputeEngine = serde_json::from_value(compute).map_err(|e| {
            error(
                Code::InvalidArgument,
                format!("malformed google.compute_engine claims: {e}"),
            )
        })?;
        Ok(compute)
    }

    /// The agent ID the template makes of the token's claims.
    fn agent_id(&self, compute: &ComputeEngine) -> Result<SpiffeId, Status> {
        let fail = |e: String| error(Code::Internal, format!("failed to create agent ID: {e}"));
        let path = self
            .template
            .execute(&compute.template_data())
            .map_err(|e| fail(e.to_string()))?;
        spire_core::x509pop::agent_id_from_path(&self.trust_domain, &path)
            .map_err(|e| fail(e.to_string()))
    }

    /// The instance as the Compute Engine API describes it.
    async fn fetch_instance(&self, compute: &ComputeEngine) -> Result<Value, String> {
        let source = CredentialSource::resolve(self.config.service_account_file.as_deref());
        let token = source
            .access_token(&self.http)
            .await
            .map_err(|e| format!("failed to create compute service client: {e}"))?;
        let url = format!(
            "{}projects/{}/zones/{}/instances/{}",
            self.config.compute_endpoint,
            url_encode(&compute.project_id),
            url_encode(&compute.zone),
            url_encode(&compute.instance_name)
        );
        let bearer = format!("Bearer {token}");
        let body = self
            .http
            .get(&url, &[("Authorization", &bearer)])
            .await?
            .ok_body()?;
        serde_json::from_slice(&body).map_err(|e| format!("malformed instance from {url}: {e}"))
    }

    /// `tag:`, `sa:`, `label:` and `metadata:` selector values of an instance resource.
    fn instance_selectors(&self, instance: &Value) -> Result<Vec<String>, Status> {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut values = Vec::new();
        for tag in strings(instance.get("tags").and_then(|t| t.get("items"))) {
            values.push(format!("tag:{tag}"));
        }
        for account in instance
            .get("serviceAccounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let email = account.get("email").and_then(Value::as_str).unwrap_or("");
            values.push(format!("sa:{email}"));
        }
        if let Some(labels) = instance.get("labels").and_then(Value::as_object) {
            for (key, value) in labels {
                if self.config.allowed_label_keys.contains(key) {
                    let value = value.as_str().unwrap_or("");
                    values.push(format!("label:{key}:{value}"));
                }
            }
        }
        for item in instance
            .get("metadata")
            .and_then(|m| m.get("items"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = item.get("key").and_then(Value::as_str).unwrap_or("");
            if !self.config.allowed_metadata_keys.contains(key) {
                continue;
            }
            let value = item.get("value").and_then(Value::as_str).unwrap_or("");
            let max = self.config.max_metadata_value_size;
            if value.len() > max {
                return Err(error(
                    Code::Internal,
                    format!(
                        "metadata {key:?} exceeded value limit ({} > {max})",
                        value.len()
                    ),
                ));
            }
            values.push(format!("metadata:{key}:{value}"));
        }
        Ok(values)
    }
}

#[async_trait]
impl NodeAttestor for GcpIitAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attest(
        &self,
        payload: &[u8],
        _challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        let token = std::str::from_utf8(payload).map_err(|_| {
            error(
                Code::InvalidArgument,
                "unable to parse the identity token: not UTF-8",
            )
        })?;
        let compute = self.verify(token.trim()).await?;
        if !self
            .config
            .projectid_allow_list
            .contains(&compute.project_id)
        {
            return Err(error(
                Code::PermissionDenied,
                format!(
                    "identity token project ID {:?} is not in the allow list",
                    compute.project_id
                ),
            ));
        }
        let agent_id = self.agent_id(&compute)?;
        tofu::assess(NAME, self.datastore.as_ref(), &agent_id).await?;

        let mut selector_values = vec![
            format!("project-id:{}", compute.project_id),
            format!("zone:{}", compute.zone),
            format!("instance-name:{}", compute.instance_name),
        ];
        if self.config.use_instance_metadata {
            let instance = self.fetch_instance(&compute).await.map_err(|e| {
                error(
                    Code::Internal,
                    format!("failed to fetch instance metadata: {e}"),
                )
            })?;
            selector_values.extend(self.instance_selectors(&instance)?);
        }
        Ok(Attested {
            agent_id,
            selector_values,
            can_reattest: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<GcpIitConfig, ConfigError> {
        let data: Data = serde_json::from_str(json)
            .map_err(|e| ConfigError::invalid("server.conf", "plugin_data", e.to_string()))?;
        GcpIitConfig::from_data(
            "server.conf",
            "plugins.NodeAttestor.gcp_iit.plugin_data",
            data,
        )
    }

    #[test]
    fn upstreams_keys_and_defaults() {
        let c = parse(
            r#"{"projectid_allow_list": ["p1", "p2"], "use_instance_metadata": true,
                "allowed_label_keys": ["env"], "allowed_metadata_keys": ["role"],
                "service_account_file": "/sa.json"}"#,
        )
        .unwrap();
        assert!(c.projectid_allow_list.contains("p2"));
        assert!(c.use_instance_metadata);
        assert_eq!(c.max_metadata_value_size, 128);
        assert_eq!(c.agent_path_template, DEFAULT_AGENT_PATH_TEMPLATE);
        assert_eq!(c.google_certs_url, DEFAULT_GOOGLE_CERTS_URL);
        assert_eq!(c.compute_endpoint, DEFAULT_COMPUTE_ENDPOINT);
        assert_eq!(c.service_account_file.as_deref(), Some("/sa.json"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = parse("{}").unwrap_err().to_string();
        assert!(err.contains("projectid_allow_list is required"), "{err}");
        let err = parse(r#"{"projectid_allow_list": ["p"], "agent_path_template": "{{ if }}"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent_path_template"), "{err}");
        let err = parse(r#"{"projectid_allow_list": ["p"], "project_id_allow_list": ["p"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("project_id_allow_list"), "{err}");
    }

    #[test]
    fn the_default_template_makes_upstreams_agent_id() {
        let compute = ComputeEngine {
            project_id: "proj".into(),
            instance_id: "1234".into(),
            ..ComputeEngine::default()
        };
        let template = Template::parse(DEFAULT_AGENT_PATH_TEMPLATE).unwrap();
        let path = template.execute(&compute.template_data()).unwrap();
        assert_eq!(path, "/gcp_iit/proj/1234");
    }
}
