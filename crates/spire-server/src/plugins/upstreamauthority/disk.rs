//! The `disk` UpstreamAuthority: signs the server's intermediate CA with a CA key and
//! certificate read from files, either as a root of its own or as part of an existing PKI.
//!
//! As upstream, the files are read again on every signing request, so an operator can
//! replace them without restarting; when they cannot be read, the last good ones are used.
//! Without `bundle_file_path` the certificate must be a single self-signed CA, which is then
//! the trust root. With it, `cert_file_path` holds the CA certificate followed by any
//! intermediates up to one of the roots in `bundle_file_path`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use spire_core::keys::PrivateKey;
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509::{self, CaTemplate, Issuer, Subject, Validity};
use spire_proto::spire::api::types;
use x509_parser::asn1_rs::FromDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::x509::X509Name;
use zeroize::Zeroizing;

use super::{MintedX509Ca, UpstreamAuthority, UpstreamAuthorityError};
use crate::ca::Clock;

/// The `plugin_data` of `UpstreamAuthority "disk"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUpstreamAuthorityConfig {
    /// PEM file with the upstream CA key (PKCS#8, SEC1 or PKCS#1).
    pub key_file_path: PathBuf,
    /// PEM file with the upstream CA certificate first, then any intermediates.
    pub cert_file_path: PathBuf,
    /// PEM file with the upstream roots; unset means the certificate is a self-signed root.
    #[serde(default)]
    pub bundle_file_path: Option<PathBuf>,
    /// Deprecated upstream option: a fixed TTL for the intermediates instead of `ca_ttl`.
    #[serde(default, with = "spire_core::duration::serde_go::option")]
    pub ttl: Option<Duration>,
}

/// What was read from the files: the CA key, the chain after the new intermediate, and
/// the roots for the trust bundle.
struct Loaded {
    key: PrivateKey,
    ca_cert: Vec<u8>,
    chain: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
}

/// Signs intermediates with CA credentials from disk.
pub struct DiskUpstreamAuthority {
    config: DiskUpstreamAuthorityConfig,
    trust_domain: TrustDomain,
    clock: Clock,
    last_good: Mutex<Option<std::sync::Arc<Loaded>>>,
}

impl std::fmt::Debug for DiskUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskUpstreamAuthority")
            .field("config", &self.config)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl DiskUpstreamAuthority {
    /// Loads and checks the files now, so a bad configuration fails at start with an error
    /// that names the file.
    pub fn new(
        config: DiskUpstreamAuthorityConfig,
        trust_domain: TrustDomain,
    ) -> Result<Self, UpstreamAuthorityError> {
        Self::with_clock(config, trust_domain, crate::ca::system_clock())
    }

    /// Like [`DiskUpstreamAuthority::new`] with the time source the certificates' validity
    /// starts from (tests move it by hand).
    pub fn with_clock(
        config: DiskUpstreamAuthorityConfig,
        trust_domain: TrustDomain,
        clock: Clock,
    ) -> Result<Self, UpstreamAuthorityError> {
        let loaded = load(&config)?;
        Ok(Self {
            config,
            trust_domain,
            clock,
            last_good: Mutex::new(Some(std::sync::Arc::new(loaded))),
        })
    }

    /// Reloads the files, falling back to the last good credentials.
    fn reload(&self) -> Result<std::sync::Arc<Loaded>, UpstreamAuthorityError> {
        let mut last_good = self
            .last_good
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match load(&self.config) {
            Ok(loaded) => {
                let loaded = std::sync::Arc::new(loaded);
                *last_good = Some(std::sync::Arc::clone(&loaded));
                Ok(loaded)
            }
            Err(e) => match last_good.as_ref() {
                Some(loaded) => {
                    tracing::warn!(error = %e, "upstreamauthority(disk): reload failed; using the previously loaded CA");
                    Ok(std::sync::Arc::clone(loaded))
                }
                None => Err(e),
            },
        }
    }
}

fn config_error(message: String) -> UpstreamAuthorityError {
    UpstreamAuthorityError::Config(format!("upstreamauthority(disk): {message}"))
}

fn read_file(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, UpstreamAuthorityError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| config_error(format!("cannot read {what} {}: {e}", path.display())))
}

fn read_certificates(path: &Path, what: &str) -> Result<Vec<Vec<u8>>, UpstreamAuthorityError> {
    let text = read_file(path, what)?;
    let certs = spire_core::pem::decode_certificates(&text)
        .map_err(|e| config_error(format!("{what} {}: {e}", path.display())))?;
    for (index, der) in certs.iter().enumerate() {
        parse_cert(der).map_err(|e| {
            config_error(format!(
                "{what} {}: certificate {index} is not valid X.509: {e}",
                path.display()
            ))
        })?;
    }
    Ok(certs)
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| e.to_string())
}

/// Whether `child` carries a valid signature by `parent`'s key and names it as issuer.
pub(crate) fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    match (parse_cert(child), parse_cert(parent)) {
        (Ok(child), Ok(parent)) => {
            child.issuer().as_raw() == parent.subject().as_raw()
                && child.verify_signature(Some(parent.public_key())).is_ok()
        }
        _ => false,
    }
}

fn load(config: &DiskUpstreamAuthorityConfig) -> Result<Loaded, UpstreamAuthorityError> {
    let key_pem = read_file(&config.key_file_path, "key_file_path")?;
    let key_text = std::str::from_utf8(&key_pem).map_err(|_| {
        config_error(format!(
            "key_file_path {} is not PEM text",
            config.key_file_path.display()
        ))
    })?;
    let key = PrivateKey::from_pem(key_text).map_err(|e| {
        config_error(format!(
            "key_file_path {}: {e}",
            config.key_file_path.display()
        ))
    })?;
    let mut certs = read_certificates(&config.cert_file_path, "cert_file_path")?;
    let ca_cert = certs.first().cloned().ok_or_else(|| {
        config_error(format!(
            "cert_file_path {} holds no certificate",
            config.cert_file_path.display()
        ))
    })?;
    Issuer::new(&ca_cert, &key).map_err(|e| {
        config_error(format!(
            "the first certificate of cert_file_path {} cannot sign with the key in key_file_path {}: {e}",
            config.cert_file_path.display(),
            config.key_file_path.display()
        ))
    })?;

    let roots = match &config.bundle_file_path {
        None => {
            if certs.len() != 1 {
                return Err(config_error(format!(
                    "with no bundle_file_path configured only self-signed CAs are supported, but cert_file_path {} holds {} certificates",
                    config.cert_file_path.display(),
                    certs.len()
                )));
            }
            if !signed_by(&ca_cert, &ca_cert) {
                return Err(config_error(format!(
                    "cert_file_path {} is not self-signed; set bundle_file_path to the roots it chains to",
                    config.cert_file_path.display()
                )));
            }
            // The self-signed certificate is the root, not part of the chain.
            certs.clear();
            vec![ca_cert.clone()]
        }
        Some(bundle_path) => {
            let roots = read_certificates(bundle_path, "bundle_file_path")?;
            let chains_to_a_root = certs
                .windows(2)
                .all(|pair| matches!(pair, [child, parent] if signed_by(child, parent)))
                && certs.last().is_some_and(|last| {
                    roots
                        .iter()
                        .any(|root| root == last || signed_by(last, root))
                });
            if !chains_to_a_root {
                return Err(config_error(format!(
                    "the certificates in cert_file_path {} do not chain to a root in bundle_file_path {}",
                    config.cert_file_path.display(),
                    bundle_path.display()
                )));
            }
            roots
        }
    };
    Ok(Loaded {
        key,
        ca_cert,
        chain: certs,
        roots,
    })
}

/// The subject the CSR asks for, so `ca_subject` carries over to the intermediate.
pub(crate) fn csr_subject(csr_der: &[u8]) -> Subject {
    let Ok((_, csr)) = X509CertificationRequest::from_der(csr_der) else {
        return Subject::default();
    };
    name_to_subject(&csr.certification_request_info.subject)
}

/// The subject of a certificate (empty when it cannot be parsed), e.g. to derive the
/// subject of a downstream CA from its parent's.
pub(crate) fn certificate_subject(der: &[u8]) -> Subject {
    match parse_cert(der) {
        Ok(cert) => name_to_subject(cert.subject()),
        Err(_) => Subject::default(),
    }
}

fn name_to_subject(name: &X509Name<'_>) -> Subject {
    let strings =
        |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            iter.filter_map(|attr| attr.as_str().ok().map(str::to_owned))
                .collect::<Vec<_>>()
        };
    Subject {
        country: strings(&mut name.iter_country()),
        province: strings(&mut name.iter_state_or_province()),
        locality: strings(&mut name.iter_locality()),
        organization: strings(&mut name.iter_organization()),
        organizational_unit: strings(&mut name.iter_organizational_unit()),
        common_name: strings(&mut name.iter_common_name()).into_iter().next(),
        serial_number: None,
        x500_unique_identifier: None,
    }
}

#[async_trait]
impl UpstreamAuthority for DiskUpstreamAuthority {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        preferred_ttl: Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError> {
        let loaded = self.reload()?;
        let public_key = x509::csr_public_key(csr_der)
            .map_err(|e| UpstreamAuthorityError::Sign(format!("upstreamauthority(disk): {e}")))?;
        let ttl = self.config.ttl.unwrap_or(preferred_ttl);
        let ttl = time::Duration::try_from(ttl).map_err(|_| {
            UpstreamAuthorityError::Sign(format!(
                "upstreamauthority(disk): TTL {ttl:?} is too large"
            ))
        })?;
        let mut template = CaTemplate::new(
            self.trust_domain.clone(),
            Validity::from_now((self.clock)(), ttl),
        );
        let subject = csr_subject(csr_der);
        if !subject.is_empty() {
            template.subject = subject;
        }
        let issuer = Issuer::new(&loaded.ca_cert, &loaded.key)
            .map_err(|e| UpstreamAuthorityError::Sign(format!("upstreamauthority(disk): {e}")))?;
        // intermediate_ca caps not_after at the upstream certificate's expiry.
        let cert = x509::intermediate_ca(&issuer, &public_key, &template)
            .map_err(|e| UpstreamAuthorityError::Sign(format!("upstreamauthority(disk): {e}")))?;
        let mut x509_ca_chain = Vec::with_capacity(1 + loaded.chain.len());
        x509_ca_chain.push(cert);
        x509_ca_chain.extend(loaded.chain.iter().cloned());
        Ok(MintedX509Ca {
            x509_ca_chain,
            upstream_x509_roots: loaded
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use spire_core::keys::KeyType;
    use time::OffsetDateTime;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    struct Files {
        _dir: tempfile::TempDir,
        config: DiskUpstreamAuthorityConfig,
        root_cert: Vec<u8>,
    }

    fn self_signed_files(ttl: time::Duration) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let upstream_td = TrustDomain::new("upstream.example").unwrap();
        let cert = x509::self_signed_ca(
            &key,
            &CaTemplate::new(
                upstream_td,
                Validity::from_now(OffsetDateTime::now_utc(), ttl),
            ),
        )
        .unwrap();
        let key_path = dir.path().join("ca.key");
        let cert_path = dir.path().join("ca.crt");
        std::fs::write(&key_path, key.to_pem().as_bytes()).unwrap();
        std::fs::write(
            &cert_path,
            spire_core::pem::encode_certificates([cert.as_slice()]),
        )
        .unwrap();
        Files {
            config: DiskUpstreamAuthorityConfig {
                key_file_path: key_path,
                cert_file_path: cert_path,
                bundle_file_path: None,
                ttl: None,
            },
            _dir: dir,
            root_cert: cert,
        }
    }

    #[tokio::test]
    async fn self_signed_root_signs_intermediate_capped_at_its_expiry() {
        let files = self_signed_files(time::Duration::hours(2));
        let ua = DiskUpstreamAuthority::new(files.config.clone(), td()).unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let csr = x509::csr_der(&key).unwrap();
        let minted = ua
            .mint_x509_ca(&csr, Duration::from_secs(24 * 3600))
            .await
            .unwrap();
        assert_eq!(minted.x509_ca_chain.len(), 1);
        assert_eq!(
            minted
                .upstream_x509_roots
                .iter()
                .map(|r| r.asn1.clone())
                .collect::<Vec<_>>(),
            vec![files.root_cert.clone()]
        );
        let intermediate = &minted.x509_ca_chain[0];
        assert_eq!(
            x509::certificate_public_key(intermediate).unwrap(),
            key.public_key_der()
        );
        assert!(signed_by(intermediate, &files.root_cert));
        assert_eq!(
            x509::certificate_not_after(intermediate).unwrap(),
            x509::certificate_not_after(&files.root_cert).unwrap()
        );
        assert_eq!(
            x509::certificate_spiffe_id(intermediate).unwrap().as_str(),
            "spiffe://example.org"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let files = self_signed_files(time::Duration::hours(2));
        let mut config = files.config.clone();
        config.key_file_path = PathBuf::from("/nonexistent/upstream.key");
        let err = DiskUpstreamAuthority::new(config, td())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/upstream.key"), "{err}");

        // A key that does not belong to the certificate.
        let other = PrivateKey::generate(KeyType::EcP256).unwrap();
        std::fs::write(&files.config.key_file_path, other.to_pem().as_bytes()).unwrap();
        let err = DiskUpstreamAuthority::new(files.config.clone(), td())
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.crt") && err.contains("ca.key"), "{err}");
    }

    #[test]
    fn config_rejects_unknown_keys_and_reads_ttl() {
        let config: DiskUpstreamAuthorityConfig =
            serde_json::from_str(r#"{"key_file_path": "a", "cert_file_path": "b", "ttl": "1h"}"#)
                .unwrap();
        assert_eq!(config.ttl, Some(Duration::from_secs(3600)));
        let err = serde_json::from_str::<DiskUpstreamAuthorityConfig>(
            r#"{"key_file_path": "a", "cert_file_path": "b", "keyfile": "c"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("keyfile"), "{err}");
    }
}
