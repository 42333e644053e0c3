//! The `awssecret` UpstreamAuthority: the upstream CA's certificate (and optionally the
//! roots it chains to) and private key are PEM text in AWS Secrets Manager secrets, read once
//! at start with `secretsmanager:GetSecretValue` (as upstream reads them in Configure); the
//! server's intermediate CA is then signed locally with that key. Keys are upstream's
//! (`doc/plugin_server_upstreamauthority_awssecret.md`); credentials come from the keys, the
//! environment, the shared credentials file or the instance role, optionally through
//! `assume_role_arn`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use spire_common::aws::client::SECRETS_MANAGER;
use spire_common::aws::{AwsClient, AwsConfig, Credentials};
use spire_core::config::de;
use spire_core::keys::PrivateKey;
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509::{self, CaTemplate, Issuer, Validity};
use spire_proto::spire::api::types;

use super::disk::{csr_subject, signed_by};
use super::{MintedX509Ca, UpstreamAuthority, UpstreamAuthorityError};
use crate::ca::Clock;
use crate::config::ConfigError;

/// The plugin's name in configs.
pub const NAME: &str = "awssecret";

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    region: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    cert_file_arn: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    key_file_arn: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    bundle_file_arn: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    access_key_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    secret_access_key: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    secret_token: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    assume_role_arn: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsSecretConfig {
    /// `region` (empty: `AWS_REGION`).
    pub region: String,
    /// `cert_file_arn`: the CA certificate, then intermediates.
    pub cert_file_arn: String,
    /// `key_file_arn`: the CA private key.
    pub key_file_arn: String,
    /// `bundle_file_arn`: the roots, when the CA is not self-signed.
    pub bundle_file_arn: Option<String>,
    /// `access_key_id`, `secret_access_key`, `secret_token` (else `AWS_SESSION_TOKEN`).
    pub credentials: Option<(String, String, Option<String>)>,
    /// `assume_role_arn`.
    pub assume_role_arn: Option<String>,
}

impl std::fmt::Debug for AwsSecretConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSecretConfig")
            .field("region", &self.region)
            .field("cert_file_arn", &self.cert_file_arn)
            .field("key_file_arn", &self.key_file_arn)
            .field("bundle_file_arn", &self.bundle_file_arn)
            .field("assume_role_arn", &self.assume_role_arn)
            .finish_non_exhaustive()
    }
}

impl AwsSecretConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let required = |key: &str, value: Option<String>| {
            value.filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    format!("{path}.{key}"),
                    format!("configuration missing '{key}' value"),
                )
            })
        };
        let cert_file_arn = required("cert_file_arn", data.cert_file_arn)?;
        let key_file_arn = required("key_file_arn", data.key_file_arn)?;
        let token = data
            .secret_token
            .filter(|t| !t.is_empty())
            .or_else(|| std::env::var("AWS_SESSION_TOKEN").ok());
        let credentials = match (
            data.access_key_id.filter(|v| !v.is_empty()),
            data.secret_access_key.filter(|v| !v.is_empty()),
        ) {
            (Some(id), Some(secret)) => Some((id, secret, token)),
            _ => None,
        };
        Ok(Self {
            region: data.region.unwrap_or_default(),
            cert_file_arn,
            key_file_arn,
            bundle_file_arn: data.bundle_file_arn.filter(|b| !b.is_empty()),
            credentials,
            assume_role_arn: data.assume_role_arn.filter(|r| !r.is_empty()),
        })
    }
}

/// Signs intermediates with the CA read from Secrets Manager.
pub struct AwsSecretUpstreamAuthority {
    trust_domain: TrustDomain,
    clock: Clock,
    key: PrivateKey,
    ca_cert: Vec<u8>,
    chain: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
}

impl std::fmt::Debug for AwsSecretUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSecretUpstreamAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn error(message: impl std::fmt::Display) -> UpstreamAuthorityError {
    UpstreamAuthorityError::Config(format!("upstreamauthority(awssecret): {message}"))
}

async fn read_secret(client: &AwsClient, arn: &str) -> Result<String, UpstreamAuthorityError> {
    let answer = client
        .json(
            SECRETS_MANAGER,
            "GetSecretValue",
            &json!({ "SecretId": arn }),
        )
        .await
        .map_err(|e| error(format!("unable to read {arn}: {e}")))?;
    answer
        .get("SecretString")
        .and_then(|s| s.as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            error(format!(
                "unable to read {arn}: response or SecretString is nil"
            ))
        })
}

impl AwsSecretUpstreamAuthority {
    /// Reads the secrets and checks that the key matches the certificate and that the
    /// certificate is self-signed or chains to the bundle.
    pub async fn load(
        config: &AwsSecretConfig,
        trust_domain: &TrustDomain,
    ) -> Result<Self, UpstreamAuthorityError> {
        let client = AwsClient::new(AwsConfig {
            region: config.region.clone(),
            static_credentials: config
                .credentials
                .as_ref()
                .map(|(id, secret, token)| Credentials::new(id, secret, token.as_deref())),
            assume_role_arn: config.assume_role_arn.clone(),
            endpoint: None,
            sts_endpoint: None,
        })
        .map_err(|e| error(format!("failed to create AWS client: {e}")))?;
        let key_pem = zeroize::Zeroizing::new(read_secret(&client, &config.key_file_arn).await?);
        let cert_pem = read_secret(&client, &config.cert_file_arn).await?;
        let bundle_pem = match &config.bundle_file_arn {
            Some(arn) => Some(read_secret(&client, arn).await?),
            None => None,
        };
        let key = PrivateKey::from_pem(&key_pem)
            .map_err(|e| error(format!("unable to parse private key: {e}")))?;
        let mut certs = spire_core::pem::decode_certificates(cert_pem.as_bytes())
            .map_err(|e| error(format!("unable to parse certificate: {e}")))?;
        let ca_cert = certs
            .first()
            .cloned()
            .ok_or_else(|| error("unable to parse certificate: no certificate"))?;
        Issuer::new(&ca_cert, &key).map_err(|e| {
            error(format!(
                "unable to load upstream CA: certificate and private key do not match: {e}"
            ))
        })?;
        let roots = match bundle_pem {
            None => {
                if certs.len() != 1 {
                    return Err(error(
                        "with no bundle_file_arn configured only self-signed CAs are supported",
                    ));
                }
                if !signed_by(&ca_cert, &ca_cert) {
                    return Err(error(
                        "unable to load upstream CA: certificate could not be validated with \
                         the provided bundle or is not self signed",
                    ));
                }
                certs.clear();
                vec![ca_cert.clone()]
            }
            Some(text) => {
                let roots = spire_core::pem::decode_certificates(text.as_bytes())
                    .map_err(|e| error(format!("unable to load upstream CA bundle: {e}")))?;
                let chains = certs
                    .windows(2)
                    .all(|pair| matches!(pair, [child, parent] if signed_by(child, parent)))
                    && certs
                        .last()
                        .is_some_and(|last| roots.iter().any(|r| r == last || signed_by(last, r)));
                if !chains {
                    return Err(error(
                        "unable to load upstream CA: certificate could not be validated with \
                         the provided bundle or is not self signed",
                    ));
                }
                roots
            }
        };
        Ok(Self {
            trust_domain: trust_domain.clone(),
            clock: crate::ca::system_clock(),
            key,
            ca_cert,
            chain: certs,
            roots,
        })
    }
}

#[async_trait]
impl UpstreamAuthority for AwsSecretUpstreamAuthority {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        preferred_ttl: Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError> {
        let sign_error = |e: &dyn std::fmt::Display| {
            UpstreamAuthorityError::Sign(format!(
                "upstreamauthority(awssecret): unable to sign CSR: {e}"
            ))
        };
        let public_key = x509::csr_public_key(csr_der).map_err(|e| sign_error(&e))?;
        let ttl = time::Duration::try_from(preferred_ttl).map_err(|e| sign_error(&e))?;
        let mut template = CaTemplate::new(
            self.trust_domain.clone(),
            Validity::from_now((self.clock)(), ttl),
        );
        let subject = csr_subject(csr_der);
        if !subject.is_empty() {
            template.subject = subject;
        }
        let issuer = Issuer::new(&self.ca_cert, &self.key).map_err(|e| sign_error(&e))?;
        let cert =
            x509::intermediate_ca(&issuer, &public_key, &template).map_err(|e| sign_error(&e))?;
        let mut x509_ca_chain = vec![cert];
        x509_ca_chain.extend(self.chain.iter().cloned());
        Ok(MintedX509Ca {
            x509_ca_chain,
            upstream_x509_roots: self
                .roots
                .iter()
                .map(|asn1| types::X509Certificate {
                    asn1: asn1.clone(),
                    tainted: false,
                })
                .collect(),
        })
    }
}
