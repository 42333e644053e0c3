//! The `azure_msi` node attestor (server side): the agent presents a managed identity (MSI)
//! access token of its VM; the server verifies the signature against Microsoft Entra ID's
//! published keys (OpenID discovery of `https://login.microsoftonline.com/common/`), refuses
//! a token for an agent that already attested (trust on first use) or of a tenant not in
//! `tenants`, checks the audience (the tenant's `resource_id`) and times with five minutes of
//! leeway, and resolves selectors through Azure Resource Manager: `subscription-id:`,
//! `vm-name:<rg>:<name>`, `network-security-group:<rg>:<name>`, `virtual-network:<rg>:<vnet>`
//! and `virtual-network-subnet:<rg>:<vnet>:<subnet>`. Agent ID
//! `spiffe://<td>/spire/agent/azure_msi/<tenant ID>/<principal ID>` unless
//! `agent_path_template` says otherwise. Keys, defaults and messages are upstream's
//! (`doc/plugin_server_nodeattestor_azure_msi.md`); `authority_host`,
//! `resource_manager_endpoint` and `imds_endpoint` are ours (see docs/cloud-gcp-azure.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use spire_common::cloud_http::CloudHttpClient;
use spire_core::agent_path_template::{Template, Value as TemplateValue};
use spire_core::config::de;
use spire_core::jws::{self, JwsError, KeySet};
use spire_core::jwt::JwtAlgorithm;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use tonic::{Code, Status};

use super::azure_resolve::{Credentials, Endpoints, resolve_selectors};
use super::{Attested, Challenger, NodeAttestor, plugin_error, tofu};
use crate::config::ConfigError;
use crate::datastore::DataStore;

/// The attestor's name in configs, attestation data and selectors.
pub const NAME: &str = "azure_msi";

/// A tenant's token audience unless its `resource_id` says otherwise: Resource Manager.
pub const DEFAULT_RESOURCE_ID: &str = "https://management.azure.com/";

/// The agent path template unless configured.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str =
    "/{{ .PluginName }}/{{ .TenantID }}/{{ .PrincipalID }}";

/// Clock skew tolerated on the token's times (upstream's `tokenLeeway`).
const TOKEN_LEEWAY_SECONDS: i64 = 5 * 60;

/// How long the signing keys are used before discovering them again (upstream's refresh
/// interval); a token naming an unknown key discovers them at once.
const KEY_SET_REFRESH: Duration = Duration::from_secs(60 * 60);

/// The algorithms upstream accepts for MSI tokens.
const ALLOWED_ALGORITHMS: [JwtAlgorithm; 9] = JwtAlgorithm::ALL;

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::named_blocks")]
    tenants: BTreeMap<String, TenantData>,
    #[serde(default, deserialize_with = "de::opt_string")]
    agent_path_template: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    authority_host: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    resource_manager_endpoint: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    imds_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantData {
    #[serde(default, deserialize_with = "de::opt_string")]
    resource_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    subscription_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    app_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    app_secret: Option<String>,
    /// Deprecated upstream (its config struct no longer has it): the server's own identity
    /// is used whenever no app registration is given, whatever this says.
    #[serde(default, deserialize_with = "de::opt_bool")]
    use_msi: Option<bool>,
}

/// One tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// `resource_id`: the audience its agents' tokens must carry.
    pub resource_id: String,
    /// How selectors are resolved: the app registration, or the server's own identity.
    pub credentials: Credentials,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureMsiConfig {
    /// `tenants`, by tenant ID.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// `agent_path_template`'s text (validated).
    pub agent_path_template: String,
    /// Where keys, tokens and resources are asked for.
    pub endpoints: Endpoints,
}

impl AzureMsiConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| {
            ConfigError::invalid(file, format!("{path}.{key}"), message)
        };
        if data.tenants.is_empty() {
            return Err(invalid(
                "tenants".into(),
                "configuration must have at least one tenant: add tenants { \"<tenant ID>\" { } }"
                    .into(),
            ));
        }
        let mut tenants = BTreeMap::new();
        for (id, t) in data.tenants {
            if t.use_msi.is_some() {
                tracing::warn!(
                    tenant = %id,
                    "{path}.tenants.{id}.use_msi in {file} is deprecated and has no effect: the \
                     server's managed identity is used when subscription_id, app_id and \
                     app_secret are not set, as upstream; remove the key"
                );
            }
            let given = |v: Option<String>| v.filter(|v| !v.is_empty());
            let (subscription_id, app_id, app_secret) = (
                given(t.subscription_id),
                given(t.app_id),
                given(t.app_secret),
            );
            let credentials =
                if subscription_id.is_some() || app_id.is_some() || app_secret.is_some() {
                    let missing = |key: &str, what: &str| {
                        invalid(
                            format!("tenants.{id}.{key}"),
                            format!("misconfigured tenant {id:?}: missing {what}"),
                        )
                    };
                    Credentials::AppSecret {
                        subscription_id: subscription_id
                            .ok_or_else(|| missing("subscription_id", "subscription id"))?,
                        app_id: app_id.ok_or_else(|| missing("app_id", "app id"))?,
                        app_secret: app_secret
                            .ok_or_else(|| missing("app_secret", "app secret"))?,
                    }
                } else {
                    Credentials::Default
                };
            tenants.insert(
                id,
                TenantConfig {
                    resource_id: given(t.resource_id)
                        .unwrap_or_else(|| DEFAULT_RESOURCE_ID.to_owned()),
                    credentials,
                },
            );
        }
        let agent_path_template = data
            .agent_path_template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_AGENT_PATH_TEMPLATE.to_owned());
        Template::parse(&agent_path_template).map_err(|e| {
            invalid(
                "agent_path_template".into(),
                format!("failed to parse agent path template: {agent_path_template:?}: {e}"),
            )
        })?;
        let endpoints = Endpoints::from_keys(
            data.authority_host,
            data.resource_manager_endpoint,
            data.imds_endpoint,
        )
        .map_err(|(key, message)| invalid(key.into(), message))?;
        Ok(Self {
            tenants,
            agent_path_template,
            endpoints,
        })
    }
}

/// The payload, `{"token":"…"}`.
#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    token: String,
}

/// Attests agents on Azure VMs by their managed identity tokens.
pub struct AzureMsiAttestor {
    config: AzureMsiConfig,
    template: Template,
    trust_domain: TrustDomain,
    datastore: Arc<dyn DataStore>,
    http: CloudHttpClient,
    keys: tokio::sync::Mutex<Option<(Arc<KeySet>, Instant)>>,
}

fn error(code: Code, message: impl std::fmt::Display) -> Status {
    plugin_error(NAME, code, message)
}

impl AzureMsiAttestor {
    /// An attestor for `trust_domain`; `datastore` answers the trust-on-first-use check.
    pub fn new(
        config: AzureMsiConfig,
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

    /// The signing keys, discovered anew when stale or when `refresh`.
    async fn key_set(&self, refresh: bool) -> Result<Arc<KeySet>, Status> {
        let mut cache = self.keys.lock().await;
        if let Some((keys, fetched)) = cache.as_ref()
            && !refresh
            && fetched.elapsed() < KEY_SET_REFRESH
        {
            return Ok(Arc::clone(keys));
        }
        let unable = |e: String| error(Code::Internal, format!("unable to obtain JWKS: {e}"));
        let discovery = format!(
            "{}common/.well-known/openid-configuration",
            self.config.endpoints.authority_host
        );
        let body = self
            .http
            .get(&discovery, &[])
            .await
            .map_err(unable)?
            .ok_body()
            .map_err(|e| unable(format!("{discovery}: {e}")))?;
        let jwks_uri = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("jwks_uri").and_then(Value::as_str).map(str::to_owned))
            .filter(|u| !u.is_empty())
            .ok_or_else(|| unable(format!("{discovery} names no jwks_uri")))?;
        let body = self
            .http
            .get(&jwks_uri, &[])
            .await
            .map_err(unable)?
            .ok_body()
            .map_err(|e| unable(format!("{jwks_uri}: {e}")))?;
        let keys = Arc::new(KeySet::from_jwks(&body).map_err(|e| unable(e.to_string()))?);
        *cache = Some((Arc::clone(&keys), Instant::now()));
        Ok(keys)
    }

    fn agent_id(&self, claims: &serde_json::Map<String, Value>) -> Result<SpiffeId, Status> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or("");
        let mut m = BTreeMap::new();
        m.insert("PluginName".into(), TemplateValue::str(NAME));
        m.insert("TenantID".into(), TemplateValue::str(text("tid")));
        m.insert("PrincipalID".into(), TemplateValue::str(text("sub")));
        m.insert("Subject".into(), TemplateValue::str(text("sub")));
        m.insert("Issuer".into(), TemplateValue::str(text("iss")));
        m.insert("ID".into(), TemplateValue::str(text("jti")));
        let fail = |e: String| error(Code::Internal, format!("unable to make agent ID: {e}"));
        let path = self
            .template
            .execute(&TemplateValue::Map(m))
            .map_err(|e| fail(e.to_string()))?;
        spire_core::x509pop::agent_id_from_path(&self.trust_domain, &path)
            .map_err(|e| fail(e.to_string()))
    }
}

#[async_trait]
impl NodeAttestor for AzureMsiAttestor {
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
        if data.token.is_empty() {
            return Err(error(
                Code::InvalidArgument,
                "missing token from attestation data",
            ));
        }
        let mut keys = self.key_set(false).await?;
        let mut verified = jws::verify(&data.token, &keys, &ALLOWED_ALGORITHMS);
        if matches!(verified, Err(JwsError::UnknownKeyId(_))) {
            keys = self.key_set(true).await?;
            verified = jws::verify(&data.token, &keys, &ALLOWED_ALGORITHMS);
        }
        let claims = verified.map_err(|e| match e {
            JwsError::Malformed(_) => {
                error(Code::InvalidArgument, format!("unable to parse token: {e}"))
            }
            _ => error(
                Code::PermissionDenied,
                format!("unable to verify token: {e}"),
            ),
        })?;
        let tenant_id = claims.get("tid").and_then(Value::as_str).unwrap_or("");
        let principal_id = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        if tenant_id.is_empty() {
            return Err(error(Code::Internal, "token missing tenant ID claim"));
        }
        if principal_id.is_empty() {
            return Err(error(Code::Internal, "token missing subject claim"));
        }
        // Before the remaining checks, make sure this token has not attested an agent yet.
        let agent_id = self.agent_id(&claims)?;
        tofu::assess(NAME, self.datastore.as_ref(), &agent_id).await?;

        let Some(tenant) = self.config.tenants.get(tenant_id) else {
            return Err(error(
                Code::PermissionDenied,
                format!("tenant {tenant_id:?} is not authorized"),
            ));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        jws::check_claims(&claims, &[&tenant.resource_id], now, TOKEN_LEEWAY_SECONDS).map_err(
            |e| {
                error(
                    Code::PermissionDenied,
                    format!("unable to validate token claims: {e}"),
                )
            },
        )?;
        let selector_values = resolve_selectors(
            &self.http,
            &self.config.endpoints,
            tenant_id,
            &tenant.credentials,
            principal_id,
        )
        .await
        .map_err(|e| error(Code::Internal, e))?;
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

    fn parse(json: &str) -> Result<AzureMsiConfig, ConfigError> {
        let data: Data = serde_json::from_str(json)
            .map_err(|e| ConfigError::invalid("server.conf", "plugin_data", e.to_string()))?;
        AzureMsiConfig::from_data(
            "server.conf",
            "plugins.NodeAttestor.azure_msi.plugin_data",
            data,
        )
    }

    #[test]
    fn upstreams_keys_and_defaults() {
        let c = parse(
            r#"{"tenants": {"t1": {}, "t2": {"resource_id": "api://x", "subscription_id": "s",
                "app_id": "a", "app_secret": "p"}}}"#,
        )
        .unwrap();
        assert_eq!(c.tenants["t1"].resource_id, DEFAULT_RESOURCE_ID);
        assert_eq!(c.tenants["t1"].credentials, Credentials::Default);
        assert_eq!(c.tenants["t2"].resource_id, "api://x");
        assert!(matches!(
            c.tenants["t2"].credentials,
            Credentials::AppSecret { .. }
        ));
        assert_eq!(c.agent_path_template, DEFAULT_AGENT_PATH_TEMPLATE);
        assert_eq!(
            c.endpoints.resource_manager,
            super::super::azure_resolve::DEFAULT_RESOURCE_MANAGER_ENDPOINT
        );
    }

    #[test]
    fn bad_configs_name_the_tenant_and_key() {
        let err = parse("{}").unwrap_err().to_string();
        assert!(err.contains("at least one tenant"), "{err}");
        // Upstream's server_full.conf still shows the deprecated use_msi: it loads.
        let config = parse(r#"{"tenants": {"t1": {"use_msi": true}, "t2": {"use_msi": false}}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.tenants["t1"].credentials, Credentials::Default);
        assert_eq!(config.tenants["t2"].credentials, Credentials::Default);
        let err = parse(r#"{"tenants": {"t1": {"app_id": "a", "app_secret": "p"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tenants.t1.subscription_id") && err.contains("missing subscription id"),
            "{err}"
        );
        let err = parse(r#"{"tenants": {"t1": {"resource": "x"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("resource"), "{err}");
    }
}
