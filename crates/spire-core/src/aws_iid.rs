//! Verifying an EC2 instance identity document's signature, for the `aws_iid` node
//! attestor: AWS's public certificates by region (the ones upstream SPIRE ships) and the two
//! signature forms IMDS serves — `signature` (base64 RSA PKCS#1 v1.5 over SHA-256, the
//! legacy RSA-1024 certificates) and `rsa2048` (base64 PKCS#7 SignedData carrying the
//! document). Each refusal names the check that failed.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use base64::Engine as _;

/// Which of AWS's certificate sets signed the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    /// `instance-identity/signature`.
    Rsa1024,
    /// `instance-identity/rsa2048` (PKCS#7).
    Rsa2048,
}

/// A failed check, named for the PermissionDenied message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {detail}")]
pub struct VerifyError {
    /// Which check failed (`signature`, `message digest`, `signing time`, ...).
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

const RSA1024_CERTS: &str = include_str!("aws_iid/rsa1024.txt");
const RSA2048_CERTS: &str = include_str!("aws_iid/rsa2048.txt");

/// AWS's certificate (DER) for `region` and `kind`: RSA-1024 falls back to AWS's
/// all-regions certificate; RSA-2048 has one per region and unknown regions get none.
pub fn aws_ca_certificate(region: &str, kind: SignatureKind) -> Option<Vec<u8>> {
    let table = match kind {
        SignatureKind::Rsa1024 => RSA1024_CERTS,
        SignatureKind::Rsa2048 => RSA2048_CERTS,
    };
    let mut fallback = None;
    let mut current: Option<&str> = None;
    let mut pem = String::new();
    for line in table.lines() {
        if let Some(name) = line.strip_prefix("region ") {
            current = Some(name.trim());
            pem.clear();
            continue;
        }
        if current.is_none() || line.starts_with('#') {
            continue;
        }
        pem.push_str(line);
        pem.push('\n');
        if line.starts_with("-----END") {
            let der = crate::pem::decode_certificates(pem.as_bytes())
                .ok()
                .and_then(|c| c.into_iter().next());
            match current {
                Some(name) if name == region => return der,
                Some("*") => fallback = der,
                _ => {}
            }
            current = None;
        }
    }
    fallback
}

/// Verifies the legacy `signature`: base64 RSA PKCS#1 v1.5 SHA-256 over the document, by one
/// of `certs`.
pub fn verify_rsa1024(
    certs: &[Vec<u8>],
    document: &str,
    signature_b64: &str,
) -> Result<(), VerifyError> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD.decode(
                signature_b64
                    .split_whitespace()
                    .collect::<String>()
                    .as_bytes(),
            )
        })
        .map_err(|e| VerifyError {
            check: "signature encoding",
            detail: format!("the signature is not base64: {e}"),
        })?;
    for cert in certs {
        let Ok(key) = rsa_public_key(cert) else {
            continue;
        };
        let verifier =
            UnparsedPublicKey::new(&sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, key);
        if verifier.verify(document.as_bytes(), &signature).is_ok() {
            return Ok(());
        }
    }
    fail(
        "signature",
        "the document's signature does not verify with the AWS certificate of its region",
    )
}

fn rsa_public_key(cert_der: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| VerifyError {
        check: "certificate",
        detail: format!("unreadable CA certificate: {e}"),
    })?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// A DER element: tag, its content, and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
    pub(crate) raw: &'a [u8],
}

/// Reads one DER element from the front of `input`, returning it and the rest.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut length = 0usize;
        for &b in &rest[..count] {
            length = (length << 8) | usize::from(b);
        }
        rest = &rest[count..];
        length
    };
    if rest.len() < length {
        return None;
    }
    let header = input.len() - rest.len();
    let (content, after) = rest.split_at(length);
    Some((
        Tlv {
            tag,
            content,
            raw: &input[..header + length],
        },
        after,
    ))
}

/// All elements of a constructed element's content.
pub(crate) fn children(content: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (tlv, after) = read_tlv(rest)?;
        out.push(tlv);
        rest = after;
    }
    Some(out)
}

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SIGNING_TIME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

/// The parts of a PKCS#7 SignedData with one signer that verification needs.
struct SignedData<'a> {
    content: &'a [u8],
    issuer_raw: &'a [u8],
    serial: &'a [u8],
    digest_oid: &'a [u8],
    signed_attributes: Option<Tlv<'a>>,
    signature: &'a [u8],
}

fn parse_signed_data(der: &[u8]) -> Option<SignedData<'_>> {
    let (info, _) = read_tlv(der)?;
    let info = children(info.content)?;
    if info.first()?.content != OID_SIGNED_DATA {
        return None;
    }
    let explicit = children(info.get(1)?.content)?;
    let signed = children(explicit.first()?.content)?;
    // version, digestAlgorithms, contentInfo, [0] certificates?, [1] crls?, signerInfos
    let content_info = children(signed.get(2)?.content)?;
    let content = match content_info.get(1) {
        Some(wrapper) => {
            let inner = children(wrapper.content)?;
            let octets = inner.first()?;
            if octets.tag != 0x04 {
                return None;
            }
            octets.content
        }
        None => &[],
    };
    let signer_infos = signed.last()?;
    if signer_infos.tag != 0x31 {
        return None;
    }
    let signers = children(signer_infos.content)?;
    if signers.len() != 1 {
        return None;
    }
    let signer = children(signers.first()?.content)?;
    let issuer_and_serial = children(signer.get(1)?.content)?;
    let digest_algorithm = children(signer.get(2)?.content)?;
    let mut index = 3;
    let signed_attributes = match signer.get(index) {
        Some(t) if t.tag == 0xa0 => {
            index += 1;
            Some(*t)
        }
        _ => None,
    };
    // digestEncryptionAlgorithm, then the signature.
    let signature = signer.get(index + 1)?;
    if signature.tag != 0x04 {
        return None;
    }
    Some(SignedData {
        content,
        issuer_raw: issuer_and_serial.first()?.raw,
        serial: issuer_and_serial.get(1)?.content,
        digest_oid: digest_algorithm.first()?.content,
        signed_attributes,
        signature: signature.content,
    })
}

/// Verifies the `rsa2048` PKCS#7 signature: it must carry exactly `document`, name one of
/// `certs` as its signer (issuer and serial), have a matching message digest, a signing
/// time inside the certificate's validity, and an RSA signature that verifies.
pub fn verify_pkcs7(
    certs: &[Vec<u8>],
    document: &str,
    signature_b64: &str,
) -> Result<(), VerifyError> {
    let compact: String = signature_b64.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| VerifyError {
            check: "signature encoding",
            detail: format!("failed to decode the instance identity cryptographic signature: {e}"),
        })?;
    let Some(signed) = parse_signed_data(&der) else {
        return fail(
            "signature encoding",
            "failed to parse the instance identity cryptographic signature as PKCS#7 signed \
             data with one signer",
        );
    };
    if signed.content != document.as_bytes() {
        return fail(
            "signed content",
            "the PKCS#7 signature does not carry the attested document",
        );
    }
    let Some((cert_der, cert)) = certs.iter().find_map(|der| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let serial_matches = strip_leading_zeros(cert.tbs_certificate.raw_serial())
            == strip_leading_zeros(signed.serial);
        (serial_matches && cert.tbs_certificate.issuer.as_raw() == signed.issuer_raw)
            .then_some((der, cert))
    }) else {
        return fail(
            "signer",
            "no AWS certificate of the document's region matches the signer",
        );
    };
    let (digest_alg, verify_alg): (
        &'static digest::Algorithm,
        &'static dyn sig::VerificationAlgorithm,
    ) = match signed.digest_oid {
        OID_SHA256 => (&digest::SHA256, &sig::RSA_PKCS1_2048_8192_SHA256),
        OID_SHA1 => (
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        ),
        _ => return fail("signature algorithm", "unsupported PKCS#7 digest algorithm"),
    };
    let signed_bytes: Vec<u8> = match signed.signed_attributes {
        None => signed.content.to_vec(),
        Some(attributes) => {
            let mut digest_attr = None;
            let mut signing_time = None;
            for attribute in children(attributes.content).unwrap_or_default() {
                let parts = children(attribute.content).unwrap_or_default();
                let (Some(oid), Some(values)) = (parts.first(), parts.get(1)) else {
                    continue;
                };
                let value = children(values.content).and_then(|v| v.into_iter().next());
                if oid.content == OID_MESSAGE_DIGEST {
                    digest_attr = value.map(|v| v.content);
                } else if oid.content == OID_SIGNING_TIME {
                    signing_time = value;
                }
            }
            let expected = digest::digest(digest_alg, signed.content);
            if digest_attr != Some(expected.as_ref()) {
                return fail(
                    "message digest",
                    "the PKCS#7 message digest does not match the document",
                );
            }
            if let Some(time) = signing_time {
                let Some(at) = parse_asn1_time(time) else {
                    return fail("signing time", "unreadable PKCS#7 signing time");
                };
                let validity = cert.validity();
                if at < validity.not_before.timestamp() || at > validity.not_after.timestamp() {
                    return fail(
                        "signing time",
                        "the document was signed outside the AWS certificate's validity",
                    );
                }
            }
            // The signature covers the attributes re-tagged as a SET.
            let mut bytes = attributes.raw.to_vec();
            if let Some(first) = bytes.first_mut() {
                *first = 0x31;
            }
            bytes
        }
    };
    let key = rsa_public_key(cert_der)?;
    UnparsedPublicKey::new(verify_alg, key)
        .verify(&signed_bytes, signed.signature)
        .or_else(|_| {
            fail(
                "signature",
                "failed verification of instance identity cryptographic signature",
            )
        })
}

pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Seconds since the epoch of a UTCTime or GeneralizedTime (`...Z`).
pub(crate) fn parse_asn1_time(tlv: Tlv<'_>) -> Option<i64> {
    let text = std::str::from_utf8(tlv.content).ok()?;
    let text = text.strip_suffix('Z')?;
    let (year, rest) = match tlv.tag {
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u8> { rest.get(i..i + 2)?.parse().ok() };
    let month = time::Month::try_from(field(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, field(2)?).ok()?;
    let at = date
        .with_hms(field(4)?, field(6)?, field(8).unwrap_or(0))
        .ok()?
        .assume_utc();
    Some(at.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_certificates_by_region() {
        let east = aws_ca_certificate("us-east-1", SignatureKind::Rsa2048).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&east).unwrap();
        assert!(cert.subject().to_string().contains("Amazon Web Services"));
        assert!(aws_ca_certificate("mars-north-1", SignatureKind::Rsa2048).is_none());
        // RSA-1024 falls back to AWS's all-regions certificate.
        assert!(aws_ca_certificate("mars-north-1", SignatureKind::Rsa1024).is_some());
        assert!(aws_ca_certificate("af-south-1", SignatureKind::Rsa1024).is_some());
    }

    #[test]
    fn garbage_is_refused_naming_the_check() {
        let cert = aws_ca_certificate("us-east-1", SignatureKind::Rsa2048).unwrap();
        let err = verify_pkcs7(std::slice::from_ref(&cert), "{}", "%%%").unwrap_err();
        assert_eq!(err.check, "signature encoding");
        let err = verify_pkcs7(std::slice::from_ref(&cert), "{}", "MAA=").unwrap_err();
        assert_eq!(err.check, "signature encoding");
        let err = verify_rsa1024(&[cert], "{}", "AAAA").unwrap_err();
        assert_eq!(err.check, "signature");
    }
}
