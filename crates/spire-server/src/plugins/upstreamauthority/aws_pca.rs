//! The `aws_pca` UpstreamAuthority: AWS Certificate Manager Private CA signs the server's
//! intermediate CA. At start the CA is looked up with `acm-pca:DescribeCertificateAuthority`
//! (a CA that is not `ACTIVE` is only warned about, and its signing algorithm is the default,
//! as upstream); each CA CSR goes to `acm-pca:IssueCertificate` with the configured CA signing
//! template and an absolute validity of the preferred TTL, then `acm-pca:GetCertificate` is
//! polled until the certificate is issued (upstream's three-minute waiter). The last
//! certificate of the returned chain is the root that goes in the trust bundle (with the
//! `supplemental_bundle_path` certificates); the others follow our intermediate in the chain.
//! Keys are upstream's (`doc/plugin_server_upstreamauthority_aws_pca.md`); credentials come
//! from the environment, the shared credentials file or the instance role, optionally
//! through `assume_role_arn`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use spire_common::aws::client::ACM_PCA;
use spire_common::aws::{AwsClient, AwsConfig, AwsError};
use spire_core::config::de;
use spire_proto::spire::api::types;

use super::{MintedX509Ca, UpstreamAuthority, UpstreamAuthorityError};
use crate::ca::Clock;
use crate::config::ConfigError;

/// The plugin's name in configs.
pub const NAME: &str = "aws_pca";

/// The CA signing template used when `ca_signing_template_arn` is not set: the server's
/// intermediate may sign end-entity SVIDs only (path length 0), as upstream.
pub const DEFAULT_CA_SIGNING_TEMPLATE_ARN: &str =
    "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1";

/// How long to wait for ACM PCA to issue a certificate (upstream's `maxCertIssuanceWaitDur`).
const MAX_CERT_ISSUANCE_WAIT: Duration = Duration::from_secs(180);
/// The first and the longest pause between two `GetCertificate` polls.
const POLL_MIN_DELAY: Duration = Duration::from_secs(1);
const POLL_MAX_DELAY: Duration = Duration::from_secs(30);

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    region: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    endpoint: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    certificate_authority_arn: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    signing_algorithm: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    ca_signing_template_arn: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    assume_role_arn: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    supplemental_bundle_path: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsPcaConfig {
    /// `region` (required, as upstream).
    pub region: String,
    /// `endpoint`: a host name or URL replacing the ACM PCA endpoint.
    pub endpoint: Option<String>,
    /// `certificate_authority_arn` (required).
    pub certificate_authority_arn: String,
    /// `signing_algorithm` (empty: the CA's own).
    pub signing_algorithm: Option<String>,
    /// `ca_signing_template_arn` (empty: [`DEFAULT_CA_SIGNING_TEMPLATE_ARN`]).
    pub ca_signing_template_arn: Option<String>,
    /// `assume_role_arn`.
    pub assume_role_arn: Option<String>,
    /// `supplemental_bundle_path`: more roots for the trust bundle.
    pub supplemental_bundle_path: Option<PathBuf>,
}

impl AwsPcaConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let non_empty = |v: Option<String>| v.filter(|v| !v.is_empty());
        let required = |key: &str, value: Option<String>| {
            non_empty(value).ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    format!("{path}.{key}"),
                    format!("plugin configuration is missing the {key}"),
                )
            })
        };
        Ok(Self {
            region: required("region", data.region)?,
            certificate_authority_arn: required(
                "certificate_authority_arn",
                data.certificate_authority_arn,
            )?,
            endpoint: non_empty(data.endpoint),
            signing_algorithm: non_empty(data.signing_algorithm),
            ca_signing_template_arn: non_empty(data.ca_signing_template_arn),
            assume_role_arn: non_empty(data.assume_role_arn),
            supplemental_bundle_path: non_empty(data.supplemental_bundle_path).map(PathBuf::from),
        })
    }
}

/// Has ACM Private CA sign the server's intermediates.
pub struct AwsPcaUpstreamAuthority {
    client: AwsClient,
    clock: Clock,
    certificate_authority_arn: String,
    signing_algorithm: String,
    ca_signing_template_arn: String,
    supplemental_bundle: Vec<Vec<u8>>,
}

impl std::fmt::Debug for AwsPcaUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsPcaUpstreamAuthority")
            .field("certificate_authority_arn", &self.certificate_authority_arn)
            .field("signing_algorithm", &self.signing_algorithm)
            .field("ca_signing_template_arn", &self.ca_signing_template_arn)
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl std::fmt::Display) -> UpstreamAuthorityError {
    UpstreamAuthorityError::Config(format!("upstreamauthority(aws_pca): {message}"))
}

fn upstream_error(message: impl std::fmt::Display) -> UpstreamAuthorityError {
    UpstreamAuthorityError::Upstream(format!("upstreamauthority(aws_pca): {message}"))
}

/// A configured `endpoint` as a URL: upstream accepts a bare host name too.
fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("https://{endpoint}")
    }
}

impl AwsPcaUpstreamAuthority {
    /// Loads the supplemental bundle, looks the CA up and settles the signing algorithm and
    /// template, as upstream's Configure.
    pub async fn load(config: &AwsPcaConfig) -> Result<Self, UpstreamAuthorityError> {
        let supplemental_bundle = match &config.supplemental_bundle_path {
            Some(path) => {
                tracing::info!(
                    supplemental_bundle_path = %path.display(),
                    "Loading supplemental certificates for inclusion in the bundle"
                );
                let text = std::fs::read(path).map_err(|e| {
                    config_error(format!(
                        "failed to load supplemental bundle: supplemental_bundle_path {}: {e}",
                        path.display()
                    ))
                })?;
                spire_core::pem::decode_certificates(&text).map_err(|e| {
                    config_error(format!(
                        "failed to load supplemental bundle: supplemental_bundle_path {}: {e}",
                        path.display()
                    ))
                })?
            }
            None => Vec::new(),
        };
        let client = AwsClient::new(AwsConfig {
            region: config.region.clone(),
            static_credentials: None,
            assume_role_arn: config.assume_role_arn.clone(),
            endpoint: config.endpoint.as_deref().map(endpoint_url),
            sts_endpoint: None,
        })
        .map_err(|e| config_error(format!("failed to create client: {e}")))?;

        tracing::info!(
            certificate_authority_arn = %config.certificate_authority_arn,
            "Looking up certificate authority from ACM"
        );
        let described = client
            .json(
                ACM_PCA,
                "DescribeCertificateAuthority",
                &json!({ "CertificateAuthorityArn": config.certificate_authority_arn }),
            )
            .await
            .map_err(|e| config_error(format!("failed to describe CertificateAuthority: {e}")))?;
        let authority = &described["CertificateAuthority"];
        let status = authority["Status"].as_str().unwrap_or_default();
        if status != "ACTIVE" {
            tracing::warn!(
                certificate_authority_arn = %config.certificate_authority_arn,
                status,
                "Certificate is in an invalid state for issuance"
            );
        }
        let signing_algorithm = match &config.signing_algorithm {
            Some(algorithm) => algorithm.clone(),
            None => {
                let algorithm = authority["CertificateAuthorityConfiguration"]["SigningAlgorithm"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                tracing::info!(
                    signing_algorithm = %algorithm,
                    "No signing algorithm specified, using the CA default"
                );
                algorithm
            }
        };
        let ca_signing_template_arn = match &config.ca_signing_template_arn {
            Some(arn) => arn.clone(),
            None => {
                tracing::info!(
                    ca_signing_template_arn = DEFAULT_CA_SIGNING_TEMPLATE_ARN,
                    "No CA signing template ARN specified, using the default"
                );
                DEFAULT_CA_SIGNING_TEMPLATE_ARN.to_owned()
            }
        };
        Ok(Self {
            client,
            clock: crate::ca::system_clock(),
            certificate_authority_arn: config.certificate_authority_arn.clone(),
            signing_algorithm,
            ca_signing_template_arn,
            supplemental_bundle,
        })
    }

    /// Polls `GetCertificate` until ACM has issued the certificate, as the SDK's
    /// `CertificateIssued` waiter: `RequestInProgressException` means "not yet", any other
    /// error ends the wait.
    async fn wait_for_certificate(&self, certificate_arn: &str) -> Result<Value, AwsError> {
        let request = json!({
            "CertificateAuthorityArn": self.certificate_authority_arn,
            "CertificateArn": certificate_arn,
        });
        let deadline = tokio::time::Instant::now() + MAX_CERT_ISSUANCE_WAIT;
        let mut delay = POLL_MIN_DELAY;
        loop {
            match self.client.json(ACM_PCA, "GetCertificate", &request).await {
                Err(e)
                    if e.code() == Some("RequestInProgressException")
                        && tokio::time::Instant::now() + delay < deadline =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(POLL_MAX_DELAY);
                }
                answer => return answer,
            }
        }
    }

    /// The CA's own certificate and chain, for an issued certificate that came back without
    /// a chain (see [`assemble`]).
    async fn ca_certificate_chain(&self) -> Result<Vec<Vec<u8>>, UpstreamAuthorityError> {
        let answer = self
            .client
            .json(
                ACM_PCA,
                "GetCertificateAuthorityCertificate",
                &json!({ "CertificateAuthorityArn": self.certificate_authority_arn }),
            )
            .await
            .map_err(|e| upstream_error(format!("failed to get the CA certificate: {e}")))?;
        let mut text = answer["Certificate"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        text.push('\n');
        text.push_str(answer["CertificateChain"].as_str().unwrap_or_default());
        spire_core::pem::decode_certificates(text.as_bytes()).map_err(|e| {
            upstream_error(format!(
                "failed to parse the CA certificate from response: {e}"
            ))
        })
    }
}

/// Our CA chain (issued certificate first) and the bundle roots, DER.
pub type SplitChain = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Splits what ACM returned into our CA chain and the bundle roots, as upstream: ACM orders
/// the chain issuer first up to the root, so its last certificate is the root (deduplicated
/// with the supplemental bundle) and the others follow the issued certificate.
pub fn assemble(
    certificate: Vec<u8>,
    chain: &[Vec<u8>],
    supplemental_bundle: &[Vec<u8>],
) -> Option<SplitChain> {
    let (root, intermediates) = chain.split_last()?;
    let mut roots = vec![root.clone()];
    for extra in supplemental_bundle {
        if !roots.contains(extra) {
            roots.push(extra.clone());
        }
    }
    let mut x509_ca_chain = vec![certificate];
    x509_ca_chain.extend(intermediates.iter().cloned());
    Some((x509_ca_chain, roots))
}

#[async_trait]
impl UpstreamAuthority for AwsPcaUpstreamAuthority {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        preferred_ttl: Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError> {
        let csr_pem = spire_core::pem::encode(spire_core::pem::CERTIFICATE_REQUEST, csr_der);
        let not_after = time::Duration::try_from(preferred_ttl)
            .ok()
            .and_then(|ttl| (self.clock)().checked_add(ttl))
            .ok_or_else(|| {
                UpstreamAuthorityError::Sign(format!(
                    "upstreamauthority(aws_pca): preferred TTL {preferred_ttl:?} is out of range"
                ))
            })?;
        tracing::info!(signing_algorithm = %self.signing_algorithm, "Submitting CSR to ACM");
        let issued = self
            .client
            .json(
                ACM_PCA,
                "IssueCertificate",
                &json!({
                    "CertificateAuthorityArn": self.certificate_authority_arn,
                    "SigningAlgorithm": self.signing_algorithm,
                    "Csr": base64::engine::general_purpose::STANDARD.encode(csr_pem),
                    "TemplateArn": self.ca_signing_template_arn,
                    "Validity": { "Type": "ABSOLUTE", "Value": not_after.unix_timestamp() },
                }),
            )
            .await
            .map_err(|e| upstream_error(format!("failed submitting CSR: {e}")))?;
        let certificate_arn = issued["CertificateArn"]
            .as_str()
            .filter(|arn| !arn.is_empty())
            .ok_or_else(|| upstream_error("failed submitting CSR: no CertificateArn in answer"))?;

        tracing::info!(certificate_arn, "Waiting for issuance from ACM");
        let answer = self
            .wait_for_certificate(certificate_arn)
            .await
            .map_err(|e| upstream_error(format!("failed waiting for issuance: {e}")))?;
        tracing::info!(certificate_arn, "Certificate issued");

        let certificate = spire_core::pem::decode_certificates(
            answer["Certificate"]
                .as_str()
                .unwrap_or_default()
                .as_bytes(),
        )
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .ok_or_else(|| {
            upstream_error("failed to parse certificate from response: no PEM blocks")
        })?;
        let chain_text = answer["CertificateChain"].as_str().unwrap_or_default();
        let chain = if chain_text.trim().is_empty() {
            // ACM always returns the chain up to the root for the CA templates; an empty one
            // (upstream would crash on it) is completed with the CA's own chain.
            self.ca_certificate_chain().await?
        } else {
            spire_core::pem::decode_certificates(chain_text.as_bytes()).map_err(|e| {
                upstream_error(format!(
                    "failed to parse certificate chain from response: {e}"
                ))
            })?
        };
        tracing::info!(certificate_arn, "Certificate and chain received");
        let (x509_ca_chain, roots) = assemble(certificate, &chain, &self.supplemental_bundle)
            .ok_or_else(|| {
                upstream_error("failed to parse certificate chain from response: empty chain")
            })?;
        Ok(MintedX509Ca {
            x509_ca_chain,
            upstream_x509_roots: roots
                .into_iter()
                .map(|asn1| types::X509Certificate {
                    asn1,
                    tainted: false,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
#[path = "aws_pca_recorded.rs"]
mod recorded_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Data {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn config_takes_upstreams_keys() {
        let config = AwsPcaConfig::from_data(
            "server.conf",
            "plugins.UpstreamAuthority.aws_pca.plugin_data",
            data(
                r#"{"region":"us-west-2","certificate_authority_arn":"arn:ca",
                "ca_signing_template_arn":"arn:t","signing_algorithm":"SHA256WITHECDSA",
                "assume_role_arn":"arn:role","endpoint":"pca.example",
                "supplemental_bundle_path":"/b.pem"}"#,
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.region, "us-west-2");
        assert_eq!(config.certificate_authority_arn, "arn:ca");
        assert_eq!(config.ca_signing_template_arn.as_deref(), Some("arn:t"));
        assert_eq!(config.signing_algorithm.as_deref(), Some("SHA256WITHECDSA"));
        assert_eq!(config.assume_role_arn.as_deref(), Some("arn:role"));
        assert_eq!(
            config.supplemental_bundle_path,
            Some(PathBuf::from("/b.pem"))
        );
        assert_eq!(endpoint_url("pca.example"), "https://pca.example");
        assert_eq!(
            endpoint_url("http://127.0.0.1:5000"),
            "http://127.0.0.1:5000"
        );
    }

    #[test]
    fn config_requires_region_and_ca_arn() {
        let err =
            AwsPcaConfig::from_data("s.conf", "p", data(r#"{"certificate_authority_arn":"a"}"#))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(err.contains("p.region"), "{err}");
        assert!(err.contains("missing the region"), "{err}");
        let err = AwsPcaConfig::from_data("s.conf", "p", data(r#"{"region":"r"}"#))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("missing the certificate_authority_arn"),
            "{err}"
        );
        let unknown: Result<Data, _> = serde_json::from_str(r#"{"region":"r","key_arn":"x"}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn last_chain_certificate_is_the_root() {
        let (chain, roots) = assemble(
            b"issued".to_vec(),
            &[b"intermediate".to_vec(), b"root".to_vec()],
            &[b"root".to_vec(), b"extra".to_vec()],
        )
        .unwrap_or_default();
        assert_eq!(chain, vec![b"issued".to_vec(), b"intermediate".to_vec()]);
        assert_eq!(roots, vec![b"root".to_vec(), b"extra".to_vec()]);
        let (chain, roots) =
            assemble(b"issued".to_vec(), &[b"root".to_vec()], &[]).unwrap_or_default();
        assert_eq!(chain, vec![b"issued".to_vec()]);
        assert_eq!(roots, vec![b"root".to_vec()]);
        assert!(assemble(b"issued".to_vec(), &[], &[]).is_none());
    }
}
