//! The `azure_imds` node attestor (server side, upstream v1.15.3): the server challenges the
//! agent with a 32-character nonce; the agent answers with the Instance Metadata Service's
//! attested document for that nonce (a PKCS#7 signature by Azure's `metadata.azure.com`
//! certificate over `vmId`, `subscriptionId` and the nonce) plus its tenant domain and, on
//! a scale set, the scale set's name. The server verifies the document (signature, SAN,
//! chain through the intermediate fetched from the signer's CA Issuers URL to upstream's
//! roots, expiry), the nonce, the tenant and subscription, refuses an agent ID that already
//! attested (trust on first use), and resolves selectors through Azure Resource Graph and
//! Compute. Agent ID `spiffe://<td>/spire/agent/azure_imds/<tenant ID>/<subscription>/<vm ID>`
//! unless `agent_path_template` says otherwise. Keys and messages are upstream's
//! (`doc/plugin_server_nodeattestor_azure_imds.md`); `authority_host`,
//! `resource_manager_endpoint`, `imds_endpoint`, `extra_ca_cert_path` and
//! `ca_issuers_endpoint` are ours (docs/cloud-gcp-azure.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use spire_common::cloud_http::CloudHttpClient;
use spire_core::agent_path_template::{Template, Value as TemplateValue};
use spire_core::azure_imds::{self as verify, DocumentContent, SignedDocument};
use spire_core::config::de;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use tonic::{Code, Status};

use super::azure_imds_resolve::{self as resolve, Arm, TenantAuth};
use super::azure_resolve::Endpoints;
use super::{Attested, Challenger, NodeAttestor, plugin_error, tofu};
use crate::config::ConfigError;
use crate::datastore::DataStore;

/// The attestor's name in configs, attestation data and selectors.
pub const NAME: &str = "azure_imds";

/// The agent path template unless configured.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str =
    "/{{ .PluginName }}/{{ .TenantID }}/{{ .SubscriptionID }}/{{ .VMID }}";

/// The nonce's length (upstream's).
const NONCE_LENGTH: usize = 32;

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::named_blocks")]
    tenants: BTreeMap<String, TenantData>,
    #[serde(default, deserialize_with = "de::opt_string")]
    agent_path_template: Option<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    allowed_metadata_domains: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    authority_host: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    resource_manager_endpoint: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    imds_endpoint: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    extra_ca_cert_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    ca_issuers_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantData {
    #[serde(default, deserialize_with = "de::opt_string")]
    auth_type: Option<String>,
    #[serde(default, deserialize_with = "de::opt_block")]
    secret_auth: Option<SecretAuthData>,
    #[serde(default, deserialize_with = "de::opt_block")]
    token_auth: Option<TokenAuthData>,
    #[serde(default, deserialize_with = "de::string_list")]
    allowed_vm_tags: Vec<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    restrict_to_subscriptions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretAuthData {
    #[serde(default, deserialize_with = "de::opt_string")]
    app_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    app_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenAuthData {
    #[serde(default, deserialize_with = "de::opt_string")]
    app_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    token_path: Option<String>,
}

/// One tenant's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// How Resource Manager is authenticated to.
    pub auth: TenantAuth,
    /// `allowed_vm_tags`: the tags that become `vm-tag:` selectors.
    pub allowed_tags: BTreeSet<String>,
    /// `restrict_to_subscriptions`: empty allows any.
    pub subscriptions: BTreeSet<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureImdsConfig {
    /// `tenants`, by tenant domain.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// `agent_path_template`'s text (validated).
    pub agent_path_template: String,
    /// `allowed_metadata_domains`.
    pub allowed_metadata_domains: Vec<String>,
    /// Where tenant IDs, tokens and resources are asked for.
    pub endpoints: Endpoints,
    /// Roots trusted besides upstream's (DER), from `extra_ca_cert_path`.
    pub extra_roots: Vec<Vec<u8>>,
    /// `ca_issuers_endpoint`: where intermediates are fetched instead of the CA Issuers
    /// URL's `http://www.microsoft.com` (same path).
    pub ca_issuers_endpoint: Option<String>,
}

impl AzureImdsConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| {
            ConfigError::invalid(file, format!("{path}.{key}"), message)
        };
        if data.tenants.is_empty() {
            return Err(invalid(
                "tenants".into(),
                "configuration must have at least one tenant: add tenants { \"<tenant domain>\" { } }"
                    .into(),
            ));
        }
        let mut tenants = BTreeMap::new();
        for (domain, t) in data.tenants {
            let key = |k: &str| format!("tenants.{domain}.{k}");
            let misconfigured = |k: &str, what: &str| {
                invalid(key(k), format!("misconfigured tenant {domain:?}: {what}"))
            };
            // Upstream declares `auth_type` but never reads it; the blocks decide.
            let _ = t.auth_type;
            let auth = match (t.secret_auth, t.token_auth) {
                (Some(_), Some(_)) => {
                    return Err(misconfigured(
                        "secret_auth",
                        "only one of secret_auth or token_auth may be specified in the config",
                    ));
                }
                (None, Some(token)) => TenantAuth::Token {
                    token_path: token.token_path.ok_or_else(|| {
                        misconfigured("token_auth.token_path", "missing token file path")
                    })?,
                    app_id: token
                        .app_id
                        .ok_or_else(|| misconfigured("token_auth.app_id", "missing app id"))?,
                },
                (Some(secret), None) => TenantAuth::Secret {
                    app_id: secret
                        .app_id
                        .ok_or_else(|| misconfigured("secret_auth.app_id", "missing app id"))?,
                    app_secret: secret.app_secret.ok_or_else(|| {
                        misconfigured("secret_auth.app_secret", "missing app secret")
                    })?,
                },
                (None, None) => TenantAuth::Default,
            };
            let mut subscriptions = BTreeSet::new();
            for s in t.restrict_to_subscriptions {
                let s = s.trim();
                if s.is_empty() {
                    return Err(misconfigured(
                        "restrict_to_subscriptions",
                        "restrict_to_subscriptions entries must be non-empty",
                    ));
                }
                subscriptions.insert(s.to_owned());
            }
            tenants.insert(
                domain.clone(),
                TenantConfig {
                    auth,
                    allowed_tags: t.allowed_vm_tags.into_iter().collect(),
                    subscriptions,
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
        let ca_issuers_endpoint = match data.ca_issuers_endpoint {
            None => None,
            Some(v) => Some(
                super::azure_resolve::endpoint_url("ca_issuers_endpoint", Some(v), String::new())
                    .map_err(|(key, message)| invalid(key.into(), message))?
                    .trim_end_matches('/')
                    .to_owned(),
            ),
        };
        let extra_roots = match data.extra_ca_cert_path {
            None => Vec::new(),
            Some(p) => {
                let text = std::fs::read(&p).map_err(|e| {
                    invalid(
                        "extra_ca_cert_path".into(),
                        format!("unable to read {p:?}: {e}"),
                    )
                })?;
                spire_core::pem::decode_certificates(&text).map_err(|e| {
                    invalid(
                        "extra_ca_cert_path".into(),
                        format!("no PEM certificates in {p:?}: {e}"),
                    )
                })?
            }
        };
        let allowed_metadata_domains = if data.allowed_metadata_domains.is_empty() {
            vec![verify::DEFAULT_METADATA_DOMAIN.to_owned()]
        } else {
            data.allowed_metadata_domains
        };
        Ok(Self {
            tenants,
            agent_path_template,
            allowed_metadata_domains,
            endpoints,
            extra_roots,
            ca_issuers_endpoint,
        })
    }
}

/// The challenge response: `{"document":{...},"metadata":{...}}` (upstream's
/// `IMDSAttestationPayload`).
#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    document: Document,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize, Default)]
struct Document {
    #[serde(default)]
    signature: String,
}

/// Nothing here is trusted: it only points the server at the tenant and scale set.
#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default, rename = "agentDomain")]
    agent_domain: String,
    #[serde(default, rename = "vmssName")]
    vmss_name: Option<String>,
}

/// Attests agents on Azure VMs by their IMDS attested documents.
pub struct AzureImdsAttestor {
    config: AzureImdsConfig,
    template: Template,
    trust_domain: TrustDomain,
    datastore: Arc<dyn DataStore>,
    http: CloudHttpClient,
    roots: Vec<Vec<u8>>,
    tenant_ids: tokio::sync::Mutex<BTreeMap<String, String>>,
}

fn error(code: Code, message: impl std::fmt::Display) -> Status {
    plugin_error(NAME, code, message)
}

impl AzureImdsAttestor {
    /// An attestor for `trust_domain`; `datastore` answers the trust-on-first-use check.
    pub fn new(
        config: AzureImdsConfig,
        trust_domain: TrustDomain,
        datastore: Arc<dyn DataStore>,
    ) -> Result<Self, String> {
        let template = Template::parse(&config.agent_path_template)
            .map_err(|e| format!("failed to parse agent path template: {e}"))?;
        let mut roots = verify::azure_roots();
        roots.extend(config.extra_roots.iter().cloned());
        Ok(Self {
            config,
            template,
            trust_domain,
            datastore,
            http: CloudHttpClient::new(),
            roots,
            tenant_ids: tokio::sync::Mutex::default(),
        })
    }

    /// The tenant ID of a configured tenant domain, looked up once.
    async fn tenant_id(&self, domain: &str) -> Result<String, Status> {
        let mut cache = self.tenant_ids.lock().await;
        if let Some(id) = cache.get(domain) {
            return Ok(id.clone());
        }
        let id = resolve::lookup_tenant_id(&self.http, &self.config.endpoints, domain)
            .await
            .map_err(|e| error(Code::Internal, format!("unable to lookup tenant ID: {e}")))?;
        cache.insert(domain.to_owned(), id.clone());
        Ok(id)
    }

    /// The intermediate named by the signer's CA Issuers URL, DER or PEM.
    async fn intermediate(&self, url: &str) -> Result<Vec<u8>, Status> {
        let target = match &self.config.ca_issuers_endpoint {
            Some(base) => {
                let path = url
                    .split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                    .unwrap_or("/");
                format!("{base}{path}")
            }
            None => url.to_owned(),
        };
        let unable = |e: String| {
            error(
                Code::Internal,
                format!(
                    "failed to validate attested document: failed to get intermediate certificate: {e}"
                ),
            )
        };
        let body = self
            .http
            .get(&target, &[])
            .await
            .map_err(|e| unable(format!("failed to fetch intermediate certificate: {e}")))?
            .ok_body()
            .map_err(|e| unable(format!("failed to fetch intermediate certificate: {e}")))?;
        if x509_parser::parse_x509_certificate(&body).is_ok() {
            return Ok(body);
        }
        spire_core::pem::decode_certificates(&body)
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| unable("failed to decode intermediate certificate as PEM".into()))
    }

    /// The verified content of the document.
    async fn verified(&self, signature: &str) -> Result<DocumentContent, Status> {
        let refused = |e: verify::VerifyError| {
            error(
                Code::PermissionDenied,
                format!("failed to validate attested document: {e}"),
            )
        };
        let doc = SignedDocument::parse(signature).map_err(refused)?;
        let url = doc.issuer_url().map_err(refused)?;
        let intermediate = self.intermediate(&url).await?;
        doc.verify(
            Some(&intermediate),
            &self.roots,
            &self.config.allowed_metadata_domains,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(refused)
    }

    fn agent_id(&self, tenant_id: &str, doc: &DocumentContent) -> Result<SpiffeId, Status> {
        let mut m = BTreeMap::new();
        m.insert("PluginName".into(), TemplateValue::str(NAME));
        m.insert("TenantID".into(), TemplateValue::str(tenant_id));
        m.insert(
            "SubscriptionID".into(),
            TemplateValue::str(&doc.subscription_id),
        );
        m.insert("VMID".into(), TemplateValue::str(&doc.vm_id));
        m.insert("Nonce".into(), TemplateValue::str(&doc.nonce));
        let fail = |e: String| error(Code::Internal, format!("unable to make agent ID: {e}"));
        let path = self
            .template
            .execute(&TemplateValue::Map(m))
            .map_err(|e| fail(e.to_string()))?;
        spire_core::x509pop::agent_id_from_path(&self.trust_domain, &path)
            .map_err(|e| fail(e.to_string()))
    }
}

/// 32 random characters of `[a-zA-Z0-9]`, as upstream's nonce.
fn nonce() -> Result<String, Status> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; NONCE_LENGTH];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| error(Code::Internal, "unable to generate a nonce"))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// Whether `s` is a UUID in one of the forms Go's `uuid.FromString` reads.
fn is_uuid(s: &str) -> bool {
    let hex = |t: &str| t.bytes().all(|b| b.is_ascii_hexdigit());
    let canonical = |t: &str| {
        let parts: Vec<&str> = t.split('-').collect();
        parts.len() == 5
            && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && parts.iter().all(|p| hex(p))
    };
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        return canonical(inner);
    }
    if let Some(inner) = s.strip_prefix("urn:uuid:") {
        return canonical(inner);
    }
    canonical(s) || (s.len() == 32 && hex(s))
}

#[async_trait]
impl NodeAttestor for AzureImdsAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attest(
        &self,
        _payload: &[u8],
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        let nonce = nonce()?;
        let response = challenger.challenge(nonce.clone().into_bytes()).await?;
        if response.is_empty() {
            return Err(error(Code::InvalidArgument, "missing attestation payload"));
        }
        let payload: Payload = serde_json::from_slice(&response).map_err(|e| {
            error(
                Code::InvalidArgument,
                format!("failed to unmarshal data payload: {e}"),
            )
        })?;
        let doc = self.verified(&payload.document.signature).await?;
        if doc.vm_id.is_empty() {
            return Err(error(
                Code::InvalidArgument,
                "missing VM ID in attested document",
            ));
        }
        if doc.subscription_id.is_empty() {
            return Err(error(
                Code::InvalidArgument,
                "missing subscription ID in attested document",
            ));
        }
        if doc.nonce != nonce {
            return Err(error(
                Code::PermissionDenied,
                "nonce mismatch: the attested document was not made for this attestation",
            ));
        }
        if !is_uuid(&doc.vm_id) {
            return Err(error(
                Code::InvalidArgument,
                format!("invalid VM ID: invalid UUID format: {:?}", doc.vm_id),
            ));
        }
        let domain = payload.metadata.agent_domain;
        let Some(tenant) = self.config.tenants.get(&domain) else {
            return Err(error(
                Code::PermissionDenied,
                format!("tenant {domain:?} is not authorized"),
            ));
        };
        let tenant_id = self.tenant_id(&domain).await?;
        if !tenant.subscriptions.is_empty() && !tenant.subscriptions.contains(&doc.subscription_id)
        {
            return Err(error(
                Code::PermissionDenied,
                format!("subscription {:?} is not authorized", doc.subscription_id),
            ));
        }
        let agent_id = self.agent_id(&tenant_id, &doc)?;
        tofu::assess(NAME, self.datastore.as_ref(), &agent_id).await?;

        let internal = |e: String| error(Code::Internal, e);
        let token =
            resolve::arm_token(&self.http, &self.config.endpoints, &tenant_id, &tenant.auth)
                .await
                .map_err(|e| {
                    internal(format!(
                        "unable to get Resource Manager credentials for tenant {tenant_id:?}: {e}"
                    ))
                })?;
        let arm = Arm {
            http: &self.http,
            base: &self.config.endpoints.resource_manager,
            bearer: format!("Bearer {token}"),
        };
        let vmss = payload.metadata.vmss_name.filter(|n| !n.is_empty());
        let vm = match &vmss {
            Some(name) => arm
                .scale_set_instance(&doc.vm_id, &doc.subscription_id, name)
                .await
                .map_err(internal)?,
            None => arm
                .virtual_machine(&doc.vm_id, &doc.subscription_id)
                .await
                .map_err(internal)?,
        };
        Ok(Attested {
            agent_id,
            selector_values: resolve::selectors(
                &vm,
                vmss.as_deref(),
                &doc.subscription_id,
                &tenant.allowed_tags,
            ),
            can_reattest: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AzureImdsConfig, ConfigError> {
        let data: Data = serde_json::from_str(json)
            .map_err(|e| ConfigError::invalid("server.conf", "azure_imds", e.to_string()))?;
        AzureImdsConfig::from_data("server.conf", "azure_imds", data)
    }

    #[test]
    fn upstream_config_loads_with_defaults() {
        let c = parse(
            r#"{"tenants": {"example.onmicrosoft.com": {"restrict_to_subscriptions": ["d5b40d61-272e-48da-beb9-05f295c42bd6"], "allowed_vm_tags": ["env"], "secret_auth": {"app_id": "a", "app_secret": "s"}}}}"#,
        )
        .unwrap();
        assert_eq!(c.agent_path_template, DEFAULT_AGENT_PATH_TEMPLATE);
        assert_eq!(c.allowed_metadata_domains, vec!["metadata.azure.com"]);
        assert_eq!(
            c.endpoints.resource_manager,
            super::super::azure_resolve::DEFAULT_RESOURCE_MANAGER_ENDPOINT
        );
        let t = &c.tenants["example.onmicrosoft.com"];
        assert!(matches!(t.auth, TenantAuth::Secret { .. }));
        assert!(
            t.subscriptions
                .contains("d5b40d61-272e-48da-beb9-05f295c42bd6")
        );
    }

    #[test]
    fn bad_configs_name_the_tenant_and_key() {
        let err = parse("{}").unwrap_err().to_string();
        assert!(err.contains("at least one tenant"), "{err}");
        let err = parse(r#"{"tenants": {"t": {"secret_auth": {"app_id": "a"}}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenants.t.secret_auth.app_secret"), "{err}");
        let err = parse(
            r#"{"tenants": {"t": {"secret_auth": {"app_id": "a", "app_secret": "b"}, "token_auth": {"app_id": "a", "token_path": "/x"}}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("only one of secret_auth or token_auth"),
            "{err}"
        );
        let err = parse(r#"{"tenants": {"t": {"restrict_to_subscriptions": [" "]}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be non-empty"), "{err}");
        let err = parse(r#"{"tenants": {"t": {}}, "agent_path_template": "{{ .Bad"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent_path_template"), "{err}");
    }

    #[test]
    fn nonces_and_uuids_are_upstreams() {
        let n = nonce().unwrap();
        assert_eq!(n.len(), 32);
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(n, nonce().unwrap());
        assert!(is_uuid("990878d4-068a-4ac4-9ee9-1231d2218ef2"));
        assert!(is_uuid("{990878d4-068a-4ac4-9ee9-1231d2218ef2}"));
        assert!(is_uuid("990878d4068a4ac49ee91231d2218ef2"));
        assert!(!is_uuid("990878d4-068a-4ac4-9ee9"));
        assert!(!is_uuid("../../etc"));
    }
}
