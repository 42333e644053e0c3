//! The `x509pop` node attestor (server side): the agent presents an X.509 certificate chain;
//! the server verifies it against the configured CA bundle (`external_pki`) or its own trust
//! bundle (`spiffe` mode), then challenges the agent to prove it holds the leaf's private key.
//! Agent ID `spiffe://<td>/spire/agent/x509pop/<SHA-1 fingerprint>` unless
//! `agent_path_template` says otherwise; selectors `subject:cn:`, `ca:fingerprint:`,
//! `serialnumber:` and `san:<key>:<value>`. Agents re-attest instead of renewing. Keys,
//! defaults and messages are upstream's (`doc/plugin_server_nodeattestor_x509pop.md`).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use spire_core::agent_path_template::Template;
use spire_core::config::de;
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509pop::{self as pop, AttestationData, Response};
use tonic::{Code, Status};

use super::{Attested, Challenger, NodeAttestor, plugin_error};
use crate::config::ConfigError;
use crate::datastore::DataStore;

/// The attestor's name in configs, attestation data and selectors.
pub const NAME: &str = pop::PLUGIN_NAME;

/// The SPIFFE ID path prefix an SVID must carry in `spiffe` mode unless configured.
const DEFAULT_SVID_PREFIX: &str = "/spire-exchange/";

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    mode: Option<String>,
    /// The key upstream's code reads (its documentation says `svid_prefix`); an empty
    /// string is a setting (any path), so it is read as it is.
    #[serde(default)]
    spiffe_prefix: Option<String>,
    /// The key upstream's documentation names.
    #[serde(default)]
    svid_prefix: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    ca_bundle_path: Option<String>,
    #[serde(default, deserialize_with = "de::string_list")]
    ca_bundle_paths: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    agent_path_template: Option<String>,
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `external_pki`: the CA certificates read from `ca_bundle_path(s)` at start.
    ExternalPki {
        /// The files they were read from.
        paths: Vec<PathBuf>,
        /// The root certificates, DER.
        roots: Vec<Vec<u8>>,
    },
    /// `spiffe`: the server's own X.509 authorities; the leaf's SPIFFE ID must start with
    /// `svid_prefix`, which is cut off for `.SVIDPathTrimmed`.
    Spiffe {
        /// The required path prefix, ending in `/` (or empty: any).
        svid_prefix: String,
    },
}

/// The validated `plugin_data`.
#[derive(Debug, Clone)]
pub struct X509PopConfig {
    /// Roots and ID rules.
    pub mode: Mode,
    /// The agent path template.
    pub template: Template,
    /// The template's text, for comparisons and logs.
    pub template_text: String,
}

impl PartialEq for X509PopConfig {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.template_text == other.template_text
    }
}

impl Eq for X509PopConfig {}

impl X509PopConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`, reading the CA bundles.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| {
            ConfigError::invalid(file, format!("{path}.{key}"), message)
        };
        let mode_name = data.mode.filter(|m| !m.is_empty());
        let mode_name = mode_name.as_deref().unwrap_or("external_pki");
        let bundle_paths_given = data
            .ca_bundle_path
            .as_deref()
            .is_some_and(|p| !p.is_empty())
            || !data.ca_bundle_paths.is_empty();
        let mode = match mode_name {
            "external_pki" => {
                let single = data.ca_bundle_path.filter(|p| !p.is_empty());
                if single.is_some() && !data.ca_bundle_paths.is_empty() {
                    return Err(invalid(
                        "ca_bundle_path",
                        "only one of ca_bundle_path or ca_bundle_paths can be configured, not \
                         both"
                            .into(),
                    ));
                }
                let paths: Vec<String> = match single {
                    Some(p) => vec![p],
                    None => data.ca_bundle_paths,
                };
                if paths.is_empty() {
                    return Err(invalid(
                        "ca_bundle_path",
                        "one of ca_bundle_path or ca_bundle_paths must be configured: the PEM \
                         file(s) of the CAs that signed the agents' certificates"
                            .into(),
                    ));
                }
                let mut roots = Vec::new();
                for p in &paths {
                    let text = std::fs::read(p).map_err(|e| {
                        invalid(
                            "ca_bundle_path",
                            format!("unable to load trust bundle {p:?}: {e}"),
                        )
                    })?;
                    let certs = spire_core::pem::decode_certificates(&text).map_err(|e| {
                        invalid(
                            "ca_bundle_path",
                            format!("unable to load trust bundle {p:?}: {e}"),
                        )
                    })?;
                    if certs.is_empty() {
                        return Err(invalid(
                            "ca_bundle_path",
                            format!("unable to load trust bundle {p:?}: no PEM blocks"),
                        ));
                    }
                    roots.extend(certs);
                }
                Mode::ExternalPki {
                    paths: paths.into_iter().map(PathBuf::from).collect(),
                    roots,
                }
            }
            "spiffe" => {
                if bundle_paths_given {
                    return Err(invalid(
                        "mode",
                        "you can not use ca_bundle_path or ca_bundle_paths in spiffe mode".into(),
                    ));
                }
                let prefix = match (data.spiffe_prefix, data.svid_prefix) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(invalid(
                            "svid_prefix",
                            "spiffe_prefix and svid_prefix are the same setting and disagree; \
                             keep one"
                                .into(),
                        ));
                    }
                    (Some(p), _) | (None, Some(p)) => {
                        if p.ends_with('/') {
                            p
                        } else {
                            format!("{p}/")
                        }
                    }
                    (None, None) => DEFAULT_SVID_PREFIX.to_owned(),
                };
                Mode::Spiffe {
                    svid_prefix: prefix,
                }
            }
            _ => {
                return Err(invalid(
                    "mode",
                    "mode can only be either spiffe or external_pki".into(),
                ));
            }
        };
        let default = if matches!(mode, Mode::Spiffe { .. }) {
            pop::DEFAULT_TEMPLATE_SVID
        } else {
            pop::DEFAULT_TEMPLATE_CN
        };
        let template_text = data
            .agent_path_template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| default.to_owned());
        let template = Template::parse(&template_text).map_err(|e| {
            invalid(
                "agent_path_template",
                format!("failed to parse agent svid template: {template_text:?}: {e}"),
            )
        })?;
        Ok(Self {
            mode,
            template,
            template_text,
        })
    }
}

/// Attests agents holding a certificate a trusted CA issued.
pub struct X509PopAttestor {
    config: X509PopConfig,
    trust_domain: TrustDomain,
    datastore: Arc<dyn DataStore>,
}

impl X509PopAttestor {
    /// An attestor for `trust_domain`; `datastore` supplies the bundle in `spiffe` mode.
    pub fn new(
        config: X509PopConfig,
        trust_domain: TrustDomain,
        datastore: Arc<dyn DataStore>,
    ) -> Self {
        Self {
            config,
            trust_domain,
            datastore,
        }
    }

    async fn roots(&self) -> Result<Vec<Vec<u8>>, Status> {
        match &self.config.mode {
            Mode::ExternalPki { roots, .. } => Ok(roots.clone()),
            Mode::Spiffe { .. } => {
                let bundle = self
                    .datastore
                    .fetch_bundle(self.trust_domain.name())
                    .await
                    .map_err(|e| {
                        plugin_error(
                            NAME,
                            Code::Internal,
                            format!("failed to get trust bundle: {e}"),
                        )
                    })?;
                let roots: Vec<Vec<u8>> = bundle
                    .map(|b| b.x509_authorities.into_iter().map(|a| a.asn1).collect())
                    .unwrap_or_default();
                if roots.is_empty() {
                    tracing::warn!("No trust bundle retrieved from SPIRE");
                }
                Ok(roots)
            }
        }
    }
}

#[async_trait]
impl NodeAttestor for X509PopAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attest(
        &self,
        payload: &[u8],
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        let err = |code: Code, message: String| plugin_error(NAME, code, message);
        let data: AttestationData = serde_json::from_slice(payload).map_err(|e| {
            err(
                Code::InvalidArgument,
                format!("failed to unmarshal data: {e}"),
            )
        })?;
        let Some((leaf, intermediates)) = data.certificates.split_first() else {
            return Err(err(
                Code::InvalidArgument,
                "no certificate to attest".into(),
            ));
        };
        let facts = pop::leaf_facts(leaf, self.trust_domain.name()).map_err(|e| {
            err(
                Code::InvalidArgument,
                format!("unable to parse leaf certificate: {e}"),
            )
        })?;
        for (i, der) in intermediates.iter().enumerate() {
            if let Err(e) = pop::leaf_facts(der, self.trust_domain.name()) {
                return Err(err(
                    Code::InvalidArgument,
                    format!("unable to parse intermediate certificate {i}: {e}"),
                ));
            }
        }
        let roots = self.roots().await?;
        let chain = pop::verify_chain(leaf, intermediates, &roots, time::OffsetDateTime::now_utc())
            .map_err(|e| {
                err(
                    Code::PermissionDenied,
                    format!("certificate verification failed: {e}"),
                )
            })?;

        let challenge = pop::generate_challenge(leaf)
            .map_err(|e| err(Code::Internal, format!("unable to generate challenge: {e}")))?;
        let challenge_bytes = serde_json::to_vec(&challenge)
            .map_err(|e| err(Code::Internal, format!("unable to marshal challenge: {e}")))?;
        let answer = challenger.challenge(challenge_bytes).await?;
        let response: Response = serde_json::from_slice(&answer).map_err(|e| {
            err(
                Code::InvalidArgument,
                format!("unable to unmarshal challenge response: {e}"),
            )
        })?;
        pop::verify_response(leaf, &challenge, &response).map_err(|e| {
            err(
                Code::PermissionDenied,
                format!("challenge response verification failed: {e}"),
            )
        })?;

        let svid_path = match &self.config.mode {
            Mode::ExternalPki { .. } => String::new(),
            Mode::Spiffe { svid_prefix } => {
                let Some(uri) = facts.spiffe_uris.first() else {
                    return Err(err(
                        Code::PermissionDenied,
                        "valid SVID x509 cert not found".into(),
                    ));
                };
                let path = pop::uri_escaped_path(uri);
                let Some(trimmed) = path.strip_prefix(svid_prefix.as_str()) else {
                    return Err(err(
                        Code::PermissionDenied,
                        "x509 cert doesnt match SVID prefix".into(),
                    ));
                };
                trimmed.to_owned()
            }
        };
        let agent_id = pop::agent_id(
            &self.trust_domain,
            &self.config.template,
            leaf,
            &facts,
            &svid_path,
        )
        .map_err(|e| err(Code::Internal, format!("failed to make spiffe id: {e}")))?;
        Ok(Attested {
            agent_id,
            selector_values: pop::selector_values(&facts, &chain),
            can_reattest: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<X509PopConfig, ConfigError> {
        let data: Data = serde_json::from_str(json).unwrap();
        X509PopConfig::from_data(
            "server.conf",
            "plugins.NodeAttestor.x509pop.plugin_data",
            data,
        )
    }

    #[test]
    fn upstream_validation_and_defaults() {
        let err = parse("{}").unwrap_err().to_string();
        assert!(
            err.contains("one of ca_bundle_path or ca_bundle_paths must be configured"),
            "{err}"
        );
        let err = parse(r#"{"ca_bundle_path": "a", "ca_bundle_paths": ["b"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only one of ca_bundle_path or ca_bundle_paths"),
            "{err}"
        );
        let err = parse(r#"{"mode": "other"}"#).unwrap_err().to_string();
        assert!(
            err.contains("mode can only be either spiffe or external_pki"),
            "{err}"
        );
        let err = parse(r#"{"mode": "spiffe", "ca_bundle_path": "a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("you can not use ca_bundle_path"), "{err}");
        let err = parse(r#"{"ca_bundle_path": "/nonexistent/ca.pem"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unable to load trust bundle \"/nonexistent/ca.pem\""),
            "{err}"
        );
        let err = parse(r#"{"mode": "spiffe", "agent_path_template": "/{{ nope }}"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed to parse agent svid template"), "{err}");

        let c = parse(r#"{"mode": "spiffe"}"#).unwrap();
        assert_eq!(
            c.mode,
            Mode::Spiffe {
                svid_prefix: "/spire-exchange/".into()
            }
        );
        assert_eq!(c.template_text, pop::DEFAULT_TEMPLATE_SVID);
        let c = parse(r#"{"mode": "spiffe", "spiffe_prefix": "/nodes"}"#).unwrap();
        assert_eq!(
            c.mode,
            Mode::Spiffe {
                svid_prefix: "/nodes/".into()
            }
        );
        let c = parse(r#"{"mode": "spiffe", "svid_prefix": ""}"#).unwrap();
        assert_eq!(
            c.mode,
            Mode::Spiffe {
                svid_prefix: "/".into()
            }
        );
        assert!(
            parse(r#"{"mode": "spiffe", "svid_prefix": "/a", "spiffe_prefix": "/b"}"#).is_err()
        );
    }
}
