//! The `ejbca` UpstreamAuthority: a Keyfactor EJBCA CA signs the server's intermediate CA
//! through EJBCA's REST API (`POST /ejbca/ejbca-rest-api/v1/certificate/pkcs10enroll`, the only
//! call upstream's plugin makes), authenticated with a client certificate (mutual TLS). The
//! end entity name comes from the CSR or `end_entity_name`, the password is random, and the
//! chain is asked for: its last certificate is the root that goes in the trust bundle, the
//! others follow our intermediate. EJBCA's certificate and end entity profiles decide the
//! validity, so the preferred TTL is not sent, as upstream. Keys and environment variables are
//! upstream's (`doc/plugin_server_upstreamauthority_ejbca.md`); JWT keys are not published.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use spire_common::cloud_http::CloudHttpClient;
use spire_core::config::de;
use spire_proto::spire::api::types;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use super::{MintedX509Ca, UpstreamAuthority, UpstreamAuthorityError};
use crate::config::ConfigError;

/// The plugin's name in configs.
pub const NAME: &str = "ejbca";

/// Where the enrollment call lives under the EJBCA host (the REST API's base path).
const ENROLL_PATH: &str = "/ejbca/ejbca-rest-api/v1/certificate/pkcs10enroll";

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    hostname: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    ca_cert_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    client_cert_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    client_cert_key_path: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    ca_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    end_entity_profile_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    certificate_profile_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    end_entity_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    account_binding_id: Option<String>,
}

/// The validated `plugin_data`, environment fallbacks applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjbcaConfig {
    /// `hostname`, as `host[:port]` (a scheme or path written with it is dropped, as
    /// upstream's client does).
    pub host: String,
    /// `ca_cert_path` (else `EJBCA_CA_CERT_PATH`): the roots EJBCA's certificate must chain
    /// to; none means the system's roots.
    pub ca_cert_path: Option<PathBuf>,
    /// `client_cert_path` (else `EJBCA_CLIENT_CERT_PATH`).
    pub client_cert_path: PathBuf,
    /// `client_cert_key_path` (else `EJBCA_CLIENT_CERT_KEY_PATH`).
    pub client_cert_key_path: PathBuf,
    /// `ca_name`: the EJBCA CA that issues.
    pub ca_name: String,
    /// `end_entity_profile_name`.
    pub end_entity_profile_name: String,
    /// `certificate_profile_name`.
    pub certificate_profile_name: String,
    /// `end_entity_name`: `cn`, `dns`, `uri`, `ip`, a literal name, or empty (try them in
    /// that order).
    pub end_entity_name: String,
    /// `account_binding_id` (sent even when empty, as upstream).
    pub account_binding_id: String,
}

impl EjbcaConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`, reading the `EJBCA_*`
    /// variables for paths the file leaves out, as upstream's Configure does.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        Self::from_data_with_env(file, path, data, |name| std::env::var(name).ok())
    }

    fn from_data_with_env(
        file: &str,
        path: &str,
        data: Data,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let present = |value: Option<String>| value.filter(|v| !v.is_empty());
        let mut problems = Vec::new();
        let hostname = present(data.hostname);
        if hostname.is_none() {
            problems.push("hostname is required");
        }
        let ca_name = present(data.ca_name);
        if ca_name.is_none() {
            problems.push("ca_name is required");
        }
        let end_entity_profile_name = present(data.end_entity_profile_name);
        if end_entity_profile_name.is_none() {
            problems.push("end_entity_profile_name is required");
        }
        let certificate_profile_name = present(data.certificate_profile_name);
        if certificate_profile_name.is_none() {
            problems.push("certificate_profile_name is required");
        }
        let from_env =
            |value: Option<String>, name: &str| present(value).or_else(|| present(env(name)));
        let client_cert_path = from_env(data.client_cert_path, "EJBCA_CLIENT_CERT_PATH");
        if client_cert_path.is_none() {
            problems
                .push("client_cert or EJBCA_CLIENT_CERT_PATH is required for mTLS authentication");
        }
        let client_cert_key_path =
            from_env(data.client_cert_key_path, "EJBCA_CLIENT_CERT_KEY_PATH");
        if client_cert_key_path.is_none() {
            problems
                .push("client_key or EJBCA_CLIENT_KEY_PATH is required for mTLS authentication");
        }
        let ca_cert_path = from_env(data.ca_cert_path, "EJBCA_CA_CERT_PATH");
        let (
            Some(hostname),
            Some(ca_name),
            Some(end_entity_profile_name),
            Some(certificate_profile_name),
            Some(client_cert_path),
            Some(client_cert_key_path),
        ) = (
            hostname,
            ca_name,
            end_entity_profile_name,
            certificate_profile_name,
            client_cert_path,
            client_cert_key_path,
        )
        else {
            return Err(ConfigError::invalid(file, path, problems.join("; ")));
        };
        let host = clean_hostname(&hostname).ok_or_else(|| {
            ConfigError::invalid(
                file,
                format!("{path}.hostname"),
                format!("ejbca hostname {hostname:?} is not a valid host name or URL"),
            )
        })?;
        Ok(Self {
            host,
            ca_cert_path: ca_cert_path.map(PathBuf::from),
            client_cert_path: PathBuf::from(client_cert_path),
            client_cert_key_path: PathBuf::from(client_cert_key_path),
            ca_name,
            end_entity_profile_name,
            certificate_profile_name,
            end_entity_name: data.end_entity_name.unwrap_or_default(),
            account_binding_id: data.account_binding_id.unwrap_or_default(),
        })
    }
}

/// `host[:port]` of `hostname`, which may carry a scheme and path (upstream's client keeps
/// only the URL's host and always speaks HTTPS).
fn clean_hostname(hostname: &str) -> Option<String> {
    let rest = hostname
        .strip_prefix("https://")
        .or_else(|| hostname.strip_prefix("http://"))
        .unwrap_or(hostname);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    valid.then(|| host.to_owned())
}

fn config_error(message: impl std::fmt::Display) -> UpstreamAuthorityError {
    UpstreamAuthorityError::Config(format!("upstreamauthority(ejbca): {message}"))
}

fn upstream_error(message: impl std::fmt::Display) -> UpstreamAuthorityError {
    UpstreamAuthorityError::Upstream(format!("upstreamauthority(ejbca): {message}"))
}

/// Signs intermediates through EJBCA's REST API.
pub struct EjbcaUpstreamAuthority {
    config: EjbcaConfig,
    client: CloudHttpClient,
}

impl std::fmt::Debug for EjbcaUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EjbcaUpstreamAuthority")
            .field("host", &self.config.host)
            .field("ca_name", &self.config.ca_name)
            .finish_non_exhaustive()
    }
}

impl EjbcaUpstreamAuthority {
    /// Reads the client certificate, its key and the CA roots and builds the mutual-TLS
    /// client; a missing or unreadable file stops start-up naming it.
    pub fn load(config: &EjbcaConfig) -> Result<Self, UpstreamAuthorityError> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                config_error(format!(
                    "failed to read {what} from file {}: {e}",
                    path.display()
                ))
            })
        };
        let roots = match &config.ca_cert_path {
            Some(path) => {
                let pem = read(path, "CA chain")?;
                let certs = spire_core::pem::decode_certificates(&pem).map_err(|e| {
                    config_error(format!("failed to parse CA chain {}: {e}", path.display()))
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for der in certs {
                    roots.add(der.into()).map_err(|e| {
                        config_error(format!("failed to parse CA chain {}: {e}", path.display()))
                    })?;
                }
                roots
            }
            None => system_roots()?,
        };
        let cert_pem = read(&config.client_cert_path, "client certificate")?;
        let key_pem = zeroize::Zeroizing::new(read(&config.client_cert_key_path, "client key")?);
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            spire_core::pem::decode_certificates(&cert_pem)
                .map_err(|e| config_error(format!("failed to load client certificate: {e}")))?
                .into_iter()
                .map(Into::into)
                .collect();
        if chain.is_empty() {
            return Err(config_error(format!(
                "failed to load client certificate: no certificate in {}",
                config.client_cert_path.display()
            )));
        }
        let key = {
            use rustls::pki_types::pem::PemObject as _;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                config_error(format!(
                    "failed to load client certificate: key {}: {e}",
                    config.client_cert_key_path.display()
                ))
            })?
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("failed to build MTLS authenticator: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_error(format!("failed to load client certificate: {e}")))?;
        tracing::info!(host = %config.host, "Created EJBCA REST API client for EJBCA UpstreamAuthority plugin");
        Ok(Self {
            config: config.clone(),
            client: CloudHttpClient::with_tls(tls),
        })
    }
}

fn system_roots() -> Result<rustls::RootCertStore, UpstreamAuthorityError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(loaded.certs);
    if roots.is_empty() {
        return Err(config_error(
            "no system root certificates to verify EJBCA's certificate; set ca_cert_path",
        ));
    }
    Ok(roots)
}

/// The names of a CSR the end entity name may come from.
#[derive(Debug, Default, PartialEq, Eq)]
struct CsrNames {
    common_name: String,
    dns: Vec<String>,
    uris: Vec<String>,
    ips: Vec<String>,
}

fn csr_names(csr_der: &[u8]) -> Result<CsrNames, String> {
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| format!("unable to parse CSR: {e}"))?;
    let info = &csr.certification_request_info;
    let mut names = CsrNames {
        common_name: info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        ..CsrNames::default()
    };
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
                    GeneralName::URI(uri) => names.uris.push((*uri).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_text(bytes) {
                            names.ips.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(names)
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// The EJBCA end entity name for a CSR, as upstream's `getEndEntityName` picks it: `cn`,
/// `dns`, `uri` and `ip` take that name from the CSR, and an empty setting tries them in that
/// order; any other value is the name itself. (`ip` with no IP in the CSR falls through to
/// being used literally, as in upstream.)
fn end_entity_name(setting: &str, names: &CsrNames) -> Result<String, String> {
    let wants = |option: &str| setting.is_empty() || setting == option;
    if wants("cn") && !names.common_name.is_empty() {
        return Ok(names.common_name.clone());
    }
    if wants("dns")
        && let Some(dns) = names.dns.first().filter(|d| !d.is_empty())
    {
        return Ok(dns.clone());
    }
    if wants("uri")
        && let Some(uri) = names.uris.first()
    {
        return Ok(uri.clone());
    }
    if wants("ip")
        && let Some(ip) = names.ips.first()
    {
        return Ok(ip.clone());
    }
    if !setting.is_empty() && !matches!(setting, "cn" | "dns" | "uri") {
        return Ok(setting.to_owned());
    }
    Err("no valid end entity name could be determined from the CertificateRequest".into())
}

/// A one-time enrollment password: 16 letters, as upstream generates it.
fn random_password() -> Result<String, String> {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    // Bytes at or above 4 * 52 are skipped so that every letter is equally likely.
    let limit = LETTERS.len() * 4;
    let mut out = String::with_capacity(16);
    while out.len() < 16 {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "failed to generate random password")?;
        let wanted = 16 - out.len();
        out.extend(
            bytes
                .iter()
                .map(|b| usize::from(*b))
                .filter(|b| *b < limit)
                .map(|b| char::from(LETTERS[b % LETTERS.len()]))
                .take(wanted),
        );
    }
    Ok(out)
}

/// The issued certificate and the chain from an enrollment answer (`response_format` `PEM` or
/// `DER`, the latter base64 as EJBCA sends it).
fn decode_answer(answer: &Value) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let format = answer["response_format"].as_str().unwrap_or_default();
    let certificate = answer["certificate"].as_str().unwrap_or_default();
    let chain: Vec<&str> = answer["certificate_chain"]
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let decode_pem = |text: &str, what: &str| {
        spire_core::pem::decode_certificates(text.as_bytes())
            .ok()
            .and_then(|certs| certs.into_iter().next())
            .ok_or_else(|| format!("failed to parse {what} PEM"))
    };
    let decode_der = |text: &str, what: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| format!("failed to base64 decode DER {what}: {e}"))
    };
    let (leaf, chain) = match format {
        "PEM" => (
            decode_pem(certificate, "certificate")?,
            chain
                .iter()
                .map(|c| decode_pem(c, "CA certificate"))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        "DER" => (
            decode_der(certificate, "certificate")?,
            chain
                .iter()
                .map(|c| decode_der(c, "CA certificate"))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        other => {
            return Err(format!(
                "ejbca returned unsupported certificate format: {other:?}"
            ));
        }
    };
    spire_core::x509::certificate_not_after(&leaf)
        .map_err(|e| format!("failed to serialize certificate issued by EJBCA: {e}"))?;
    for der in &chain {
        spire_core::x509::certificate_not_after(der)
            .map_err(|e| format!("failed to serialize CA chain returned by EJBCA: {e}"))?;
    }
    if chain.is_empty() {
        return Err("EJBCA did not return a CA chain".into());
    }
    Ok((leaf, chain))
}

#[async_trait]
impl UpstreamAuthority for EjbcaUpstreamAuthority {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        _preferred_ttl: Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError> {
        let names = csr_names(csr_der).map_err(UpstreamAuthorityError::Sign)?;
        let username = end_entity_name(&self.config.end_entity_name, &names).map_err(|e| {
            UpstreamAuthorityError::Sign(format!(
                "upstreamauthority(ejbca): unable to determine end entity name: {e}"
            ))
        })?;
        let password = random_password().map_err(upstream_error)?;
        let request = json!({
            "certificate_request": spire_core::pem::encode(spire_core::pem::CERTIFICATE_REQUEST, csr_der),
            "certificate_profile_name": self.config.certificate_profile_name,
            "end_entity_profile_name": self.config.end_entity_profile_name,
            "certificate_authority_name": self.config.ca_name,
            "username": username,
            "password": password,
            "account_binding_id": self.config.account_binding_id,
            "include_chain": true,
        });
        tracing::info!(
            end_entity_name = %username,
            ca_name = %self.config.ca_name,
            certificate_profile_name = %self.config.certificate_profile_name,
            end_entity_profile_name = %self.config.end_entity_profile_name,
            "Enrolling certificate with EJBCA"
        );
        let url = format!("https://{}{ENROLL_PATH}", self.config.host);
        let response = self
            .client
            .send(
                http::Method::POST,
                &url,
                &[
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
                request.to_string().into_bytes(),
            )
            .await
            .map_err(|e| {
                upstream_error(format!(
                    "EJBCA returned an error: failed to enroll CSR - {e}"
                ))
            })?;
        if response.status.as_u16() >= 300 {
            return Err(upstream_error(format!(
                "EJBCA returned an error: failed to enroll CSR - {} - EJBCA API returned error {}",
                response.status,
                response.body_excerpt()
            )));
        }
        let answer: Value = serde_json::from_slice(&response.body).map_err(|e| {
            upstream_error(format!(
                "EJBCA returned an error: failed to enroll CSR - {e} - EJBCA API returned error {}",
                response.body_excerpt()
            ))
        })?;
        let (certificate, chain) = decode_answer(&answer).map_err(upstream_error)?;
        let Some((root, intermediates)) = chain.split_last() else {
            return Err(upstream_error("EJBCA did not return a CA chain"));
        };
        let mut x509_ca_chain = vec![certificate];
        x509_ca_chain.extend(intermediates.iter().cloned());
        Ok(MintedX509Ca {
            x509_ca_chain,
            upstream_x509_roots: vec![types::X509Certificate {
                asn1: root.clone(),
                tainted: false,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Data {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    const FILE: &str = "server.conf";
    const PATH: &str = "plugins.UpstreamAuthority.ejbca.plugin_data";

    #[test]
    fn config_takes_upstreams_keys_and_environment() {
        let config = EjbcaConfig::from_data_with_env(
            FILE,
            PATH,
            data(
                r#"{"hostname":"https://ejbca.example.com:8443/some/path","ca_name":"Sub-CA",
                "end_entity_profile_name":"eep","certificate_profile_name":"cp",
                "end_entity_name":"uri","account_binding_id":"foo123",
                "client_cert_path":"/c.pem"}"#,
            ),
            |name| match name {
                "EJBCA_CLIENT_CERT_PATH" => Some("/env-cert.pem".into()),
                "EJBCA_CLIENT_CERT_KEY_PATH" => Some("/env-key.pem".into()),
                "EJBCA_CA_CERT_PATH" => Some("/env-ca.pem".into()),
                _ => None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.host, "ejbca.example.com:8443");
        // A path in the file wins over the environment; a missing one comes from it.
        assert_eq!(config.client_cert_path, PathBuf::from("/c.pem"));
        assert_eq!(config.client_cert_key_path, PathBuf::from("/env-key.pem"));
        assert_eq!(config.ca_cert_path, Some(PathBuf::from("/env-ca.pem")));
        assert_eq!(config.end_entity_name, "uri");
        assert_eq!(config.account_binding_id, "foo123");
    }

    #[test]
    fn missing_keys_are_all_named_with_upstreams_words() {
        let e = EjbcaConfig::from_data_with_env(FILE, PATH, data("{}"), |_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for expected in [
            "hostname is required",
            "ca_name is required",
            "end_entity_profile_name is required",
            "certificate_profile_name is required",
            "client_cert or EJBCA_CLIENT_CERT_PATH is required for mTLS authentication",
            "client_key or EJBCA_CLIENT_KEY_PATH is required for mTLS authentication",
        ] {
            assert!(e.contains(expected), "{expected:?} not in {e}");
        }
        assert!(e.contains(FILE), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_json::from_str::<Data>(r#"{"hostnme":"x"}"#).is_err());
    }

    fn names() -> CsrNames {
        CsrNames {
            common_name: String::new(),
            dns: vec!["a.example".into()],
            uris: vec!["spiffe://example.org".into()],
            ips: vec!["10.0.0.1".into()],
        }
    }

    #[test]
    fn end_entity_name_follows_upstreams_order_and_options() {
        let mut with_cn = names();
        with_cn.common_name = "CN here".into();
        assert_eq!(end_entity_name("", &with_cn).unwrap(), "CN here");
        assert_eq!(end_entity_name("", &names()).unwrap(), "a.example");
        assert_eq!(
            end_entity_name("uri", &names()).unwrap(),
            "spiffe://example.org"
        );
        assert_eq!(end_entity_name("ip", &names()).unwrap(), "10.0.0.1");
        assert_eq!(end_entity_name("custom-ee", &names()).unwrap(), "custom-ee");
        // SPIRE's CA CSR: no CN, no DNS, the trust domain URI.
        let spire = CsrNames {
            uris: vec!["spiffe://example.org".into()],
            ..CsrNames::default()
        };
        assert_eq!(end_entity_name("", &spire).unwrap(), "spiffe://example.org");
        assert!(end_entity_name("cn", &spire).is_err());
        assert!(end_entity_name("dns", &spire).is_err());
        assert_eq!(end_entity_name("ip", &spire).unwrap(), "ip");
    }

    #[test]
    fn csr_names_read_the_subject_and_sans() {
        let key = spire_core::keys::PrivateKey::generate(spire_core::keys::KeyType::EcP256)
            .unwrap_or_else(|e| panic!("{e}"));
        let td = spire_core::spiffe_id::TrustDomain::new("example.org")
            .unwrap_or_else(|e| panic!("{e}"));
        let csr =
            spire_core::x509::upstream_ca_csr_der(&key, &spire_core::x509::Subject::default(), &td)
                .unwrap_or_else(|e| panic!("{e}"));
        let names = csr_names(&csr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names.uris, vec!["spiffe://example.org".to_owned()]);
        assert!(csr_names(b"not a csr").is_err());
    }

    #[test]
    fn passwords_are_sixteen_letters_and_differ() {
        let a = random_password().unwrap_or_default();
        let b = random_password().unwrap_or_default();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_alphabetic()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn answers_in_pem_and_der_decode_and_others_are_refused() {
        let params =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        let signer = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let der = params
            .self_signed(&signer)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let (leaf, chain) = decode_answer(&json!({
            "response_format": "DER", "certificate": b64, "certificate_chain": [b64]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leaf, der);
        assert_eq!(chain, vec![der.clone()]);
        let pem = spire_core::pem::encode(spire_core::pem::CERTIFICATE, &der);
        let (leaf, _) = decode_answer(&json!({
            "response_format": "PEM", "certificate": pem, "certificate_chain": [pem]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leaf, der);
        let e = decode_answer(&json!({"response_format": "P12", "certificate": ""})).unwrap_err();
        assert!(e.contains("unsupported certificate format: \"P12\""), "{e}");
        let e = decode_answer(&json!({"response_format": "DER", "certificate": b64})).unwrap_err();
        assert_eq!(e, "EJBCA did not return a CA chain");
        let e = decode_answer(
            &json!({"response_format": "DER", "certificate": "!!", "certificate_chain": [b64]}),
        )
        .unwrap_err();
        assert!(e.contains("failed to base64 decode DER certificate"), "{e}");
    }
}
