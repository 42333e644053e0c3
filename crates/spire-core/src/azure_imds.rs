//! Verifying an Azure Instance Metadata Service (IMDS) attested document, for the
//! `azure_imds` node attestor: the document's `signature` is a base64 PKCS#7 SignedData that
//! carries the JSON content (`vmId`, `subscriptionId`, `nonce`, `timeStamp`) and the signing
//! certificate. The checks are upstream's (v1.15.3 `doc_validation.go`), in its order: one
//! signer among the enclosed certificates, a valid signature, a `metadata.azure.com`-style SAN
//! on the signer, and a chain through the intermediate named by the signer's CA Issuers URL
//! (fetched by the caller from `www.microsoft.com`) to one of the roots upstream trusts.
//! Each refusal names the check that failed.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use base64::Engine as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use time::OffsetDateTime;
use webpki::KeyUsage;

use crate::aws_iid::{Tlv, children, parse_asn1_time, read_tlv, strip_leading_zeros};

/// The metadata domain of commercial Azure, allowed unless `allowed_metadata_domains` says
/// otherwise.
pub const DEFAULT_METADATA_DOMAIN: &str = "metadata.azure.com";

/// The only host intermediates are fetched from (upstream's
/// `MicrosoftIntermediateIssuerHost`).
pub const INTERMEDIATE_ISSUER_HOST: &str = "www.microsoft.com";

/// The roots upstream trusts for the signing chain (DigiCert Global Root G2 and CA,
/// Microsoft TLS RSA Root G2 self-signed and cross-signed).
const ROOTS_PEM: &str = include_str!("azure_imds/roots.pem");

/// A failed check, named for the PermissionDenied message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {detail}")]
pub struct VerifyError {
    /// Which check failed (`signature encoding`, `signer`, `signature`, `certificate SAN`,
    /// `certificate chain`, `issuer URL`, `content`, `expired`).
    pub check: &'static str,
    /// What was wrong.
    pub detail: String,
}

fn fail<T>(check: &'static str, detail: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError {
        check,
        detail: detail.into(),
    })
}

/// Upstream's trusted roots, DER.
pub fn azure_roots() -> Vec<Vec<u8>> {
    crate::pem::decode_certificates(ROOTS_PEM.as_bytes()).unwrap_or_default()
}

/// What the attested document says (`AttestedDocumentContent`), plus its expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DocumentContent {
    /// `subscriptionId`.
    #[serde(default, rename = "subscriptionId")]
    pub subscription_id: String,
    /// `vmId`.
    #[serde(default, rename = "vmId")]
    pub vm_id: String,
    /// `nonce`: the server's challenge.
    #[serde(default)]
    pub nonce: String,
    /// `timeStamp`: when IMDS made the document and until when it holds.
    #[serde(default, rename = "timeStamp")]
    pub time_stamp: Option<TimeStamp>,
}

/// The document's `timeStamp`, as IMDS writes it (`"03/08/23 23:09:33 -0000"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TimeStamp {
    /// `createdOn`.
    #[serde(default, rename = "createdOn")]
    pub created_on: String,
    /// `expiresOn`.
    #[serde(default, rename = "expiresOn")]
    pub expires_on: String,
}

/// A parsed, not yet verified, attested document signature.
#[derive(Debug, Clone)]
pub struct SignedDocument {
    der: Vec<u8>,
    /// The signing certificate (DER), found among the enclosed certificates.
    pub signer: Vec<u8>,
}

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SIGNING_TIME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// The parts of a SignedData with one signer.
struct Parts<'a> {
    content: &'a [u8],
    certificates: Vec<&'a [u8]>,
    issuer_raw: &'a [u8],
    serial: &'a [u8],
    digest_oid: &'a [u8],
    signed_attributes: Option<Tlv<'a>>,
    signature: &'a [u8],
}

/// Why a SignedData could not be read: not PKCS#7, or not exactly one signer.
enum ParseError {
    Malformed,
    Signers(usize),
}

fn parse_parts(der: &[u8]) -> Result<Parts<'_>, ParseError> {
    let m = ParseError::Malformed;
    let (info, _) = read_tlv(der).ok_or(ParseError::Malformed)?;
    let info = children(info.content).ok_or(ParseError::Malformed)?;
    if info.first().map(|t| t.content) != Some(OID_SIGNED_DATA) {
        return Err(m);
    }
    let explicit =
        children(info.get(1).ok_or(ParseError::Malformed)?.content).ok_or(ParseError::Malformed)?;
    let signed = children(explicit.first().ok_or(ParseError::Malformed)?.content)
        .ok_or(ParseError::Malformed)?;
    // version, digestAlgorithms, contentInfo, [0] certificates?, [1] crls?, signerInfos
    let content_info = children(signed.get(2).ok_or(ParseError::Malformed)?.content)
        .ok_or(ParseError::Malformed)?;
    let content = match content_info.get(1) {
        Some(wrapper) => {
            let inner = children(wrapper.content).ok_or(ParseError::Malformed)?;
            match inner.first() {
                Some(octets) if octets.tag == 0x04 => octets.content,
                _ => return Err(ParseError::Malformed),
            }
        }
        None => &[],
    };
    let certificates = signed
        .iter()
        .skip(3)
        .find(|t| t.tag == 0xa0)
        .and_then(|t| children(t.content))
        .map(|certs| certs.into_iter().map(|c| c.raw).collect())
        .unwrap_or_default();
    let signer_infos = signed.last().ok_or(ParseError::Malformed)?;
    if signer_infos.tag != 0x31 {
        return Err(ParseError::Malformed);
    }
    let signers = children(signer_infos.content).ok_or(ParseError::Malformed)?;
    if signers.len() != 1 {
        return Err(ParseError::Signers(signers.len()));
    }
    let signer = children(signers.first().ok_or(ParseError::Malformed)?.content)
        .ok_or(ParseError::Malformed)?;
    let issuer_and_serial = children(signer.get(1).ok_or(ParseError::Malformed)?.content)
        .ok_or(ParseError::Malformed)?;
    let digest_algorithm = children(signer.get(2).ok_or(ParseError::Malformed)?.content)
        .ok_or(ParseError::Malformed)?;
    let mut index = 3;
    let signed_attributes = match signer.get(index) {
        Some(t) if t.tag == 0xa0 => {
            index += 1;
            Some(*t)
        }
        _ => None,
    };
    let signature = signer.get(index + 1).ok_or(ParseError::Malformed)?;
    if signature.tag != 0x04 {
        return Err(ParseError::Malformed);
    }
    Ok(Parts {
        content,
        certificates,
        issuer_raw: issuer_and_serial.first().ok_or(ParseError::Malformed)?.raw,
        serial: issuer_and_serial
            .get(1)
            .ok_or(ParseError::Malformed)?
            .content,
        digest_oid: digest_algorithm
            .first()
            .ok_or(ParseError::Malformed)?
            .content,
        signed_attributes,
        signature: signature.content,
    })
}

impl SignedDocument {
    /// Decodes the document's `signature` and finds its one signer among the enclosed
    /// certificates (upstream's steps 1 to 3).
    pub fn parse(signature_b64: &str) -> Result<Self, VerifyError> {
        if signature_b64.is_empty() {
            return fail(
                "signature encoding",
                "missing signature in attested document",
            );
        }
        let compact: String = signature_b64.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| VerifyError {
                check: "signature encoding",
                detail: format!("failed to decode signature: {e}"),
            })?;
        let parts = match parse_parts(&der) {
            Ok(parts) => parts,
            Err(ParseError::Malformed) => {
                return fail(
                    "signature encoding",
                    "failed to parse PKCS7 signature: not PKCS#7 signed data",
                );
            }
            Err(ParseError::Signers(n)) => {
                return fail(
                    "signer",
                    format!(
                        "expected exactly one signer certificate in PKCS7 signature, found {n} signers"
                    ),
                );
            }
        };
        if parts.certificates.is_empty() {
            return fail("signer", "no certificates found in PKCS7 signature");
        }
        let Some(signer) = find_signer(&parts) else {
            return fail(
                "signer",
                "expected exactly one signer certificate in PKCS7 signature: the signer's \
                 certificate is not enclosed",
            );
        };
        let signer = signer.to_vec();
        Ok(Self { der, signer })
    }

    /// The signer's CA Issuers URL, refused unless its host is `www.microsoft.com`
    /// (upstream's `getIntermediateCertificate` before it fetches).
    pub fn issuer_url(&self) -> Result<String, VerifyError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(&self.signer).map_err(|e| VerifyError {
                check: "signer",
                detail: format!("unreadable signing certificate: {e}"),
            })?;
        let mut url = None;
        for ext in cert.extensions() {
            if let x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) =
                ext.parsed_extension()
            {
                for desc in &aia.accessdescs {
                    if desc.access_method
                        != x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS
                    {
                        continue;
                    }
                    if let x509_parser::extensions::GeneralName::URI(u) = desc.access_location
                        && !u.is_empty()
                        && url.is_none()
                    {
                        url = Some(u.to_owned());
                    }
                }
            }
        }
        let Some(url) = url else {
            return fail(
                "issuer URL",
                "failed to get intermediate certificate: failed to extract CA Issuers URL: no CA \
                 Issuers URL found in certificate",
            );
        };
        let host = url_host(&url).ok_or_else(|| VerifyError {
            check: "issuer URL",
            detail: format!("failed to parse CA Issuers URL {url:?}"),
        })?;
        if host != INTERMEDIATE_ISSUER_HOST {
            return fail(
                "issuer URL",
                format!(
                    "CA Issuers URL host {host:?} does not match expected value \
                     {INTERMEDIATE_ISSUER_HOST:?}"
                ),
            );
        }
        Ok(url)
    }

    /// Verifies the signature, the signer's SAN against `allowed_domains`, and the chain
    /// through `intermediate` to `roots` at `now`; then reads the content and refuses it once
    /// its `timeStamp.expiresOn` has passed (upstream's steps 5 to 8 and the final step).
    pub fn verify(
        &self,
        intermediate: Option<&[u8]>,
        roots: &[Vec<u8>],
        allowed_domains: &[String],
        now: OffsetDateTime,
    ) -> Result<DocumentContent, VerifyError> {
        let parts = parse_parts(&self.der).map_err(|_| VerifyError {
            check: "signature encoding",
            detail: "failed to parse PKCS7 signature".into(),
        })?;
        verify_signature(&parts, &self.signer)?;
        check_san(&self.signer, allowed_domains)?;
        verify_chain(&self.signer, intermediate, roots, now)?;
        let content: DocumentContent =
            serde_json::from_slice(parts.content).map_err(|e| VerifyError {
                check: "content",
                detail: format!("failed to unmarshal attested document payload: {e}"),
            })?;
        if let Some(expires) = content
            .time_stamp
            .as_ref()
            .and_then(|t| parse_imds_time(&t.expires_on))
            && expires < now
        {
            return fail(
                "expired",
                format!(
                    "the attested document expired at {}",
                    content
                        .time_stamp
                        .as_ref()
                        .map(|t| t.expires_on.as_str())
                        .unwrap_or_default()
                ),
            );
        }
        Ok(content)
    }
}

/// `host[:port]` of an absolute URL, without user information, as Go's `url.URL.Host`.
fn url_host(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host.is_empty()).then(|| host.to_owned())
}

/// IMDS's `MM/DD/YY HH:MM:SS -0000` times, as seconds; `None` when written otherwise.
fn parse_imds_time(text: &str) -> Option<OffsetDateTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 17 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> { text.get(range)?.parse().ok() };
    let month = time::Month::try_from(u8::try_from(num(0..2)?).ok()?).ok()?;
    let day = u8::try_from(num(3..5)?).ok()?;
    let year = 2000 + i32::try_from(num(6..8)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let at = date
        .with_hms(
            u8::try_from(num(9..11)?).ok()?,
            u8::try_from(num(12..14)?).ok()?,
            u8::try_from(num(15..17)?).ok()?,
        )
        .ok()?;
    let offset = match text.get(17..)?.trim() {
        "" => time::UtcOffset::UTC,
        zone => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits = zone.trim_start_matches(['+', '-']);
            let hours = i8::try_from(digits.get(..2)?.parse::<u8>().ok()?).ok()?;
            let minutes = i8::try_from(digits.get(2..4)?.parse::<u8>().ok()?).ok()?;
            time::UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?
        }
    };
    Some(at.assume_offset(offset))
}

fn find_signer<'a>(parts: &Parts<'a>) -> Option<&'a [u8]> {
    parts.certificates.iter().copied().find(|der| {
        x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
            strip_leading_zeros(cert.tbs_certificate.raw_serial())
                == strip_leading_zeros(parts.serial)
                && cert.tbs_certificate.issuer.as_raw() == parts.issuer_raw
        })
    })
}

fn verify_signature(parts: &Parts<'_>, signer_der: &[u8]) -> Result<(), VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(signer_der).map_err(|e| VerifyError {
        check: "signer",
        detail: format!("unreadable signing certificate: {e}"),
    })?;
    let spki = cert.public_key();
    let key_oid = spki.algorithm.algorithm.as_bytes();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.as_bytes().to_vec())
        .unwrap_or_default();
    let (digest_alg, verify_alg): (
        &'static digest::Algorithm,
        &'static dyn sig::VerificationAlgorithm,
    ) = match (key_oid, digest_of(parts.digest_oid), curve.as_slice()) {
        (OID_RSA, OID_SHA256, _) => (&digest::SHA256, &sig::RSA_PKCS1_2048_8192_SHA256),
        (OID_RSA, OID_SHA384, _) => (&digest::SHA384, &sig::RSA_PKCS1_2048_8192_SHA384),
        (OID_RSA, OID_SHA512, _) => (&digest::SHA512, &sig::RSA_PKCS1_2048_8192_SHA512),
        (OID_RSA, OID_SHA1, _) => (
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        ),
        (OID_EC, OID_SHA256, OID_P256) => (&digest::SHA256, &sig::ECDSA_P256_SHA256_ASN1),
        (OID_EC, OID_SHA384, OID_P256) => (&digest::SHA384, &sig::ECDSA_P256_SHA384_ASN1),
        (OID_EC, OID_SHA256, OID_P384) => (&digest::SHA256, &sig::ECDSA_P384_SHA256_ASN1),
        (OID_EC, OID_SHA384, OID_P384) => (&digest::SHA384, &sig::ECDSA_P384_SHA384_ASN1),
        _ => {
            return fail(
                "signature",
                format!(
                    "signature verification failed: unsupported key or digest algorithm \
                     (key {key_oid:02x?}, digest {:02x?})",
                    parts.digest_oid
                ),
            );
        }
    };
    let signed_bytes = match parts.signed_attributes {
        None => parts.content.to_vec(),
        Some(attributes) => {
            let mut digest_attr = None;
            let mut signing_time = None;
            for attribute in children(attributes.content).unwrap_or_default() {
                let pieces = children(attribute.content).unwrap_or_default();
                let (Some(oid), Some(values)) = (pieces.first(), pieces.get(1)) else {
                    continue;
                };
                let value = children(values.content).and_then(|v| v.into_iter().next());
                if oid.content == OID_MESSAGE_DIGEST {
                    digest_attr = value.map(|v| v.content);
                } else if oid.content == OID_SIGNING_TIME {
                    signing_time = value;
                }
            }
            if digest_attr != Some(digest::digest(digest_alg, parts.content).as_ref()) {
                return fail(
                    "signature",
                    "signature verification failed: the message digest does not match the content",
                );
            }
            if let Some(time) = signing_time {
                let validity = cert.validity();
                match parse_asn1_time(time) {
                    Some(at)
                        if at >= validity.not_before.timestamp()
                            && at <= validity.not_after.timestamp() => {}
                    _ => {
                        return fail(
                            "signature",
                            "signature verification failed: signing time is outside of the \
                             certificate's validity",
                        );
                    }
                }
            }
            let mut bytes = attributes.raw.to_vec();
            if let Some(first) = bytes.first_mut() {
                *first = 0x31;
            }
            bytes
        }
    };
    UnparsedPublicKey::new(verify_alg, spki.subject_public_key.data.as_ref())
        .verify(&signed_bytes, parts.signature)
        .or_else(|_| {
            fail(
                "signature",
                "signature verification failed: the content was not signed by the enclosed \
                 signing certificate",
            )
        })
}

/// The digest a SignerInfo's digest algorithm names: a hash, or (as Azure writes it) a
/// signature algorithm whose hash is meant, as Go's `pkcs7` reads both.
fn digest_of(oid: &[u8]) -> &[u8] {
    const RSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    match oid {
        [prefix @ .., 0x05] if prefix == RSA_PREFIX => OID_SHA1,
        [prefix @ .., 0x0b] if prefix == RSA_PREFIX => OID_SHA256,
        [prefix @ .., 0x0c] if prefix == RSA_PREFIX => OID_SHA384,
        [prefix @ .., 0x0d] if prefix == RSA_PREFIX => OID_SHA512,
        [prefix @ .., 0x02] if prefix == ECDSA_PREFIX => OID_SHA256,
        [prefix @ .., 0x03] if prefix == ECDSA_PREFIX => OID_SHA384,
        [prefix @ .., 0x04] if prefix == ECDSA_PREFIX => OID_SHA512,
        other => other,
    }
}

/// Azure's recommendation: a SAN that is one of `allowed_domains` or below one.
fn check_san(signer_der: &[u8], allowed_domains: &[String]) -> Result<(), VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(signer_der).map_err(|e| VerifyError {
        check: "signer",
        detail: format!("unreadable signing certificate: {e}"),
    })?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let allowed = names.iter().any(|name| {
        allowed_domains
            .iter()
            .any(|domain| name == domain || name.ends_with(&format!(".{domain}")))
    });
    if allowed {
        Ok(())
    } else {
        fail(
            "certificate SAN",
            format!(
                "signing certificate validation failed: certificate does not have any valid \
                 domain in SAN (found SANs={names:?}, allowed domains={allowed_domains:?})"
            ),
        )
    }
}

/// The signer must be issued by `intermediate` (when there is one) and chain to `roots` for
/// server authentication at `now`, as Go's `x509.Certificate.Verify` with default options.
fn verify_chain(
    signer_der: &[u8],
    intermediate: Option<&[u8]>,
    roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    let chain_error = |detail: String| VerifyError {
        check: "certificate chain",
        detail: format!("certificate chain validation failed: {detail}"),
    };
    if let Some(intermediate) = intermediate {
        let issued = x509_parser::parse_x509_certificate(signer_der)
            .ok()
            .zip(x509_parser::parse_x509_certificate(intermediate).ok())
            .is_some_and(|((_, leaf), (_, issuer))| {
                leaf.verify_signature(Some(issuer.public_key())).is_ok()
            });
        if !issued {
            return Err(chain_error(
                "signing certificate was not issued by intermediate certificate".into(),
            ));
        }
    }
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .filter_map(|d| webpki::anchor_from_trusted_cert(d).ok())
        .collect();
    let leaf = CertificateDer::from(signer_der);
    let end_entity = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| chain_error(format!("unreadable signing certificate: {e:?}")))?;
    let intermediates: Vec<CertificateDer<'_>> =
        intermediate.map(CertificateDer::from).into_iter().collect();
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
            KeyUsage::server_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| {
            chain_error(match e {
                webpki::Error::UnknownIssuer => "certificate signed by unknown authority".into(),
                webpki::Error::InvalidSignatureForPublicKey => {
                    "certificate signed by unknown authority (a signature in the chain does not \
                     verify)"
                        .into()
                }
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    "x509: certificate has expired or is not yet valid".into()
                }
                other => format!("{other:?}"),
            })
        })
}

#[cfg(test)]
mod tests;
