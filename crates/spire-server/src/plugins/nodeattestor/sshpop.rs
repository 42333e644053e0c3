//! The `sshpop` node attestor (server side): the agent presents its OpenSSH host certificate;
//! the server checks it was issued by one of `cert_authorities` (host type, validity,
//! signature, `canonical_domain`), then challenges the agent to sign with the host key.
//! Agent ID `spiffe://<td>/spire/agent/sshpop/<fingerprint>` unless `agent_path_template`
//! says otherwise; no selectors, as upstream. Agents re-attest instead of renewing. Keys and
//! messages are upstream's (`doc/plugin_server_nodeattestor_sshpop.md`); refusals of the
//! node use PermissionDenied where upstream answers Internal.

use async_trait::async_trait;
use serde::Deserialize;
use spire_core::agent_path_template::Template;
use spire_core::config::de;
use spire_core::spiffe_id::TrustDomain;
use spire_core::sshpop::{self as pop, Refusal, Server};
use tonic::{Code, Status};

use super::{Attested, Challenger, NodeAttestor, plugin_error};
use crate::config::ConfigError;

/// The attestor's name in configs and attestation data.
pub const NAME: &str = pop::PLUGIN_NAME;

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default)]
    cert_authorities: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de::opt_string")]
    cert_authorities_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    canonical_domain: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    agent_path_template: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPopConfig {
    /// The trusted CAs, `authorized_keys` lines (both keys' union).
    pub cert_authorities: Vec<String>,
    /// `canonical_domain`: the suffix cut from the principal for `.Hostname`.
    pub canonical_domain: String,
    /// The agent path template's text.
    pub agent_path_template: String,
}

impl SshPopConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`, reading `cert_authorities_path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| {
            ConfigError::invalid(file, format!("{path}.{key}"), message)
        };
        let ca_path = data.cert_authorities_path.filter(|p| !p.is_empty());
        if data.cert_authorities.is_none() && ca_path.is_none() {
            return Err(invalid(
                "cert_authorities",
                "missing required config value for \"cert_authorities\" or \
                 \"cert_authorities_path\""
                    .into(),
            ));
        }
        let mut authorities = data.cert_authorities.unwrap_or_default();
        if let Some(p) = ca_path {
            let text = std::fs::read_to_string(&p).map_err(|e| {
                invalid(
                    "cert_authorities_path",
                    format!("failed to get cert authorities from file: {e}"),
                )
            })?;
            let lines: Vec<String> = text
                .split('\n')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if lines.is_empty() {
                return Err(invalid(
                    "cert_authorities_path",
                    format!(
                        "failed to get cert authorities from file: no data found in file: {p:?}"
                    ),
                ));
            }
            authorities.extend(lines);
        }
        let template_text = data
            .agent_path_template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| pop::DEFAULT_TEMPLATE.to_owned());
        let config = Self {
            cert_authorities: authorities,
            canonical_domain: data.canonical_domain.unwrap_or_default(),
            agent_path_template: template_text,
        };
        Template::parse(&config.agent_path_template).map_err(|e| {
            invalid(
                "agent_path_template",
                format!(
                    "failed to parse agent svid template: {:?}: {e}",
                    config.agent_path_template
                ),
            )
        })?;
        pop::validate_authorities(&config.cert_authorities).map_err(|e| {
            invalid(
                "cert_authorities",
                format!("failed to create cert checker: {e}"),
            )
        })?;
        Ok(config)
    }

    fn server(&self, trust_domain: &TrustDomain) -> Result<Server, (&'static str, String)> {
        let template = Template::parse(&self.agent_path_template).map_err(|e| {
            (
                "agent_path_template",
                format!(
                    "failed to parse agent svid template: {:?}: {e}",
                    self.agent_path_template
                ),
            )
        })?;
        Server::new(
            &self.cert_authorities,
            &self.canonical_domain,
            template,
            trust_domain.clone(),
        )
        .map_err(|e| {
            (
                "cert_authorities",
                format!("failed to create cert checker: {e}"),
            )
        })
    }
}

/// Attests agents holding an SSH host certificate a trusted CA issued.
#[derive(Debug)]
pub struct SshPopAttestor {
    server: Server,
}

impl SshPopAttestor {
    /// An attestor for `trust_domain`; the configuration was validated by
    /// [`SshPopConfig::from_data`] with the same trust domain.
    pub fn new(config: &SshPopConfig, trust_domain: &TrustDomain) -> Result<Self, String> {
        config
            .server(trust_domain)
            .map(|server| Self { server })
            .map_err(|(_, message)| message)
    }
}

fn refusal(r: Refusal) -> Status {
    match r {
        Refusal::Malformed(m) => plugin_error(NAME, Code::InvalidArgument, m),
        Refusal::Denied(m) => plugin_error(NAME, Code::PermissionDenied, m),
    }
}

#[async_trait]
impl NodeAttestor for SshPopAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attest(
        &self,
        payload: &[u8],
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        let cert = self
            .server
            .verify_attestation_data(payload, now)
            .map_err(refusal)?;
        let (challenge, nonce) = self
            .server
            .issue_challenge()
            .map_err(|e| plugin_error(NAME, Code::Internal, e))?;
        let answer = challenger.challenge(challenge).await?;
        self.server
            .verify_response(&cert, &nonce, &answer)
            .map_err(refusal)?;
        let agent_id = self.server.agent_id(&cert).map_err(|e| {
            plugin_error(
                NAME,
                Code::Internal,
                format!("failed to create AgentID: {e}"),
            )
        })?;
        Ok(Attested {
            agent_id,
            selector_values: Vec::new(),
            can_reattest: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SshPopConfig, ConfigError> {
        let data: Data = serde_json::from_str(json).unwrap();
        SshPopConfig::from_data(
            "server.conf",
            "plugins.NodeAttestor.sshpop.plugin_data",
            data,
        )
    }

    const CA: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEAWPAsKJ/qMYUIBeH7BLMRCE/bkUvMHX+7OZhANk45S";

    #[test]
    fn upstream_validation() {
        let err = parse("{}").unwrap_err().to_string();
        assert!(
            err.contains(
                "missing required config value for \"cert_authorities\" or \"cert_authorities_path\""
            ),
            "{err}"
        );
        let err = parse(r#"{"cert_authorities": []}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must provide at least one cert authority"),
            "{err}"
        );
        let err = parse(r#"{"cert_authorities": ["nope"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed to parse public key \"nope\""), "{err}");
        let err = parse(r#"{"cert_authorities_path": "/nonexistent"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed to get cert authorities from file"),
            "{err}"
        );
        let err = parse(&format!(
            r#"{{"cert_authorities": ["{CA}"], "agent_path_template": "/{{{{ bad }}}}"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("failed to parse agent svid template"), "{err}");
        let c = parse(&format!(r#"{{"cert_authorities": ["{CA}"]}}"#)).unwrap();
        assert_eq!(c.agent_path_template, pop::DEFAULT_TEMPLATE);
        assert_eq!(c.canonical_domain, "");
    }
}
