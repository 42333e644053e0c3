//! The `x509pop` node attestation protocol, shared by the agent and server plugins and
//! wire-compatible with upstream's `pkg/common/plugin/x509pop`:
//!
//! 1. the agent sends `{"certificates":[<DER, base64>...]}` (leaf first);
//! 2. the server verifies the chain and challenges with a 32-byte nonce,
//!    `{"rsa_signature":{"nonce":..},"ecdsa_signature":null}` (or the ECDSA form);
//! 3. the agent answers with its own 32-byte nonce and a signature over
//!    `SHA-256(challenge nonce || response nonce)`: RSA-PSS (SHA-256, maximum salt, as Go's
//!    `rsa.SignPSS` with nil options) or ECDSA (`r`, `s` as big-endian integers), the
//!    combined hash being signed as the digest itself, as upstream does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::RsaParameters;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use webpki::{ExtendedKeyUsageValidator, KeyPurposeIdIter};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::agent_path_template::{Template, Value};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The plugin name: the attestation data type and the agent ID's attestor segment.
pub const PLUGIN_NAME: &str = "x509pop";

/// Bytes in each side's nonce, as upstream.
pub const NONCE_LEN: usize = 32;

/// The default agent path in `external_pki` mode.
pub const DEFAULT_TEMPLATE_CN: &str = "/{{ .PluginName }}/{{ .Fingerprint }}";

/// The default agent path in `spiffe` mode.
pub const DEFAULT_TEMPLATE_SVID: &str = "/{{ .PluginName }}/{{ .SVIDPathTrimmed }}";

/// Why a step of the protocol failed; the message is the operator's (or agent's) reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PopError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, PopError> {
    Err(PopError(message.into()))
}

/// Go's JSON form of `[]byte`: standard base64, `null` for none.
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes bytes as standard base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Reads standard base64; `null` is empty, as Go's decoder.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text {
            None => Ok(Vec::new()),
            Some(t) => base64::engine::general_purpose::STANDARD
                .decode(t.as_bytes())
                .map_err(serde::de::Error::custom),
        }
    }

    /// A list of byte strings.
    pub mod list {
        use super::*;
        use serde::ser::SerializeSeq;

        /// Writes each element as base64.
        pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(&base64::engine::general_purpose::STANDARD.encode(item))?;
            }
            seq.end()
        }

        /// Reads a list of base64 strings; `null` is empty.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            let items: Option<Vec<Option<String>>> = Option::deserialize(d)?;
            items
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    base64::engine::general_purpose::STANDARD
                        .decode(t.unwrap_or_default().as_bytes())
                        .map_err(serde::de::Error::custom)
                })
                .collect()
        }
    }
}

/// The agent's attestation payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationData {
    /// DER certificates, leaf first, then intermediates.
    #[serde(with = "b64::list", default)]
    pub certificates: Vec<Vec<u8>>,
}

/// A nonce from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceChallenge {
    /// The server's nonce.
    #[serde(with = "b64", default)]
    pub nonce: Vec<u8>,
}

/// The server's challenge; exactly one member is set, by the leaf's key type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// For RSA keys.
    #[serde(default)]
    pub rsa_signature: Option<NonceChallenge>,
    /// For ECDSA keys.
    #[serde(default)]
    pub ecdsa_signature: Option<NonceChallenge>,
}

/// An RSA-PSS answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaSignatureResponse {
    /// The agent's nonce.
    #[serde(with = "b64", default)]
    pub nonce: Vec<u8>,
    /// The PSS signature.
    #[serde(with = "b64", default)]
    pub signature: Vec<u8>,
}

/// An ECDSA answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcdsaSignatureResponse {
    /// The agent's nonce.
    #[serde(with = "b64", default)]
    pub nonce: Vec<u8>,
    /// `r`, big-endian.
    #[serde(with = "b64", default)]
    pub r: Vec<u8>,
    /// `s`, big-endian.
    #[serde(with = "b64", default)]
    pub s: Vec<u8>,
}

/// The agent's answer to a [`Challenge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// For RSA keys.
    #[serde(default)]
    pub rsa_signature: Option<RsaSignatureResponse>,
    /// For ECDSA keys.
    #[serde(default)]
    pub ecdsa_signature: Option<EcdsaSignatureResponse>,
}

/// A fresh random nonce.
pub fn nonce() -> Result<Vec<u8>, PopError> {
    let mut bytes = vec![0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PopError("unable to generate nonce".into()))?;
    Ok(bytes)
}

/// `SHA-256(challenge || response)`, refusing nonces of the wrong size.
pub fn combine_nonces(challenge: &[u8], response: &[u8]) -> Result<Digest, PopError> {
    if challenge.len() != NONCE_LEN {
        return fail("invalid challenge nonce");
    }
    if response.len() != NONCE_LEN {
        return fail("invalid response nonce");
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(challenge);
    ctx.update(response);
    Ok(ctx.finish())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The SHA-1 of a certificate's DER, hex: upstream's fingerprint for IDs and selectors.
pub fn fingerprint(der: &[u8]) -> String {
    hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

/// A serial number as lower-case hex with an even number of digits, as upstream.
pub fn serial_number_hex(serial_be: &[u8]) -> String {
    let start = serial_be
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial_be.len());
    let digits = hex(&serial_be[start..]);
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return "00".to_owned();
    }
    if trimmed.len() % 2 == 1 {
        format!("0{trimmed}")
    } else {
        trimmed.to_owned()
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PopError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => fail("trailing data after certificate"),
        Err(e) => fail(e.to_string()),
    }
}

/// The kind of key a leaf certificate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA.
    Rsa,
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
    /// ECDSA on P-521.
    P521,
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";

/// The key kind and raw public key bytes (PKCS#1 for RSA, the EC point) of a DER SPKI owner.
fn leaf_key(cert: &X509Certificate<'_>) -> Result<(KeyKind, Vec<u8>), PopError> {
    let spki = &cert.tbs_certificate.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    let kind = if alg == OID_RSA {
        KeyKind::Rsa
    } else if alg == OID_EC {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .unwrap_or_default();
        match curve.as_str() {
            OID_P256 => KeyKind::P256,
            OID_P384 => KeyKind::P384,
            OID_P521 => KeyKind::P521,
            other => return fail(format!("unsupported public key type: EC curve {other}")),
        }
    } else {
        return fail(format!("unsupported public key type {alg}"));
    };
    Ok((kind, spki.subject_public_key.data.to_vec()))
}

/// Upstream's `GenerateChallenge`: the leaf must allow digital signatures.
pub fn generate_challenge(leaf_der: &[u8]) -> Result<Challenge, PopError> {
    let leaf = parse(leaf_der)?;
    let digital_signature = leaf
        .key_usage()
        .ok()
        .flatten()
        .is_some_and(|ku| ku.value.digital_signature());
    if !digital_signature {
        return fail("certificate not intended for digital signature use");
    }
    let challenge = NonceChallenge { nonce: nonce()? };
    Ok(match leaf_key(&leaf)?.0 {
        KeyKind::Rsa => Challenge {
            rsa_signature: Some(challenge),
            ecdsa_signature: None,
        },
        _ => Challenge {
            rsa_signature: None,
            ecdsa_signature: Some(challenge),
        },
    })
}

static PSS_MAX_SIGN: sig::RsaSignatureEncoding =
    sig::RSA_PSS_SHA256.with_pss_salt_length(sig::RsaPssSaltLength::Max);
static PSS_MAX_VERIFY: RsaParameters =
    sig::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(sig::RsaPssSaltLength::Max);

/// The agent's private key, matched to its certificate.
pub enum SigningKey {
    /// An RSA key.
    Rsa(RsaKeyPair),
    /// An ECDSA key and its curve.
    Ec(EcdsaKeyPair, KeyKind),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rsa(_) => "SigningKey::Rsa",
            Self::Ec(..) => "SigningKey::Ec",
        })
    }
}

impl SigningKey {
    /// Reads a PEM private key (PKCS#1, SEC1 or PKCS#8) and checks that it is the key of
    /// `leaf_der`, as Go's `tls.LoadX509KeyPair`.
    pub fn from_pem(pem: &[u8], leaf_der: &[u8]) -> Result<Self, PopError> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| PopError("no private key PEM block found".into()))?;
        let leaf = parse(leaf_der)?;
        let (kind, public) = leaf_key(&leaf)?;
        let key = match kind {
            KeyKind::Rsa => {
                let pair = RsaKeyPair::from_pkcs8(der.secret_der())
                    .or_else(|_| RsaKeyPair::from_der(der.secret_der()))
                    .map_err(|e| PopError(format!("unable to parse RSA private key: {e}")))?;
                if sig::KeyPair::public_key(&pair).as_ref() != public.as_slice() {
                    return fail("private key does not match public key");
                }
                Self::Rsa(pair)
            }
            curve => {
                let alg = match curve {
                    KeyKind::P256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                    KeyKind::P384 => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
                    _ => &sig::ECDSA_P521_SHA512_FIXED_SIGNING,
                };
                let pair = EcdsaKeyPair::from_pkcs8(alg, der.secret_der())
                    .or_else(|_| EcdsaKeyPair::from_private_key_der(alg, der.secret_der()))
                    .map_err(|_| PopError("private key does not match public key".into()))?;
                if sig::KeyPair::public_key(&pair).as_ref() != public.as_slice() {
                    return fail("private key does not match public key");
                }
                Self::Ec(pair, curve)
            }
        };
        Ok(key)
    }

    /// Upstream's `CalculateResponse`.
    pub fn respond(&self, challenge: &Challenge) -> Result<Response, PopError> {
        let own = nonce()?;
        match self {
            Self::Rsa(pair) => {
                let Some(c) = &challenge.rsa_signature else {
                    return fail("expecting RSA challenge");
                };
                let combined = combine_nonces(&c.nonce, &own)?;
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign_digest(&PSS_MAX_SIGN, &combined, &mut signature)
                    .map_err(|_| PopError("unable to sign challenge".into()))?;
                Ok(Response {
                    rsa_signature: Some(RsaSignatureResponse {
                        nonce: own,
                        signature,
                    }),
                    ecdsa_signature: None,
                })
            }
            Self::Ec(pair, kind) => {
                let Some(c) = &challenge.ecdsa_signature else {
                    return fail("expecting ECDSA challenge");
                };
                let combined = combine_nonces(&c.nonce, &own)?;
                // Go signs the 32-byte hash as it is; a longer digest with leading zero
                // bytes is the same integer for the larger curves' digest sizes.
                let (algorithm, len) = match kind {
                    KeyKind::P384 => (&digest::SHA384, 48),
                    KeyKind::P521 => (&digest::SHA512, 64),
                    _ => (&digest::SHA256, 32),
                };
                let mut padded = vec![0u8; len - combined.as_ref().len()];
                padded.extend_from_slice(combined.as_ref());
                let imported = Digest::import_less_safe(&padded, algorithm)
                    .map_err(|_| PopError("unable to sign challenge".into()))?;
                let fixed = pair
                    .sign_digest(&imported)
                    .map_err(|_| PopError("unable to sign challenge".into()))?;
                let (r, s) = fixed.as_ref().split_at(fixed.as_ref().len() / 2);
                Ok(Response {
                    rsa_signature: None,
                    ecdsa_signature: Some(EcdsaSignatureResponse {
                        nonce: own,
                        r: strip_zeros(r).to_vec(),
                        s: strip_zeros(s).to_vec(),
                    }),
                })
            }
        }
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Upstream's `VerifyChallengeResponse` against the leaf's public key.
pub fn verify_response(
    leaf_der: &[u8],
    challenge: &Challenge,
    response: &Response,
) -> Result<(), PopError> {
    let leaf = parse(leaf_der)?;
    let (kind, public) = leaf_key(&leaf)?;
    if kind == KeyKind::Rsa {
        let Some(c) = &challenge.rsa_signature else {
            return fail("expecting RSA challenge");
        };
        let Some(r) = &response.rsa_signature else {
            return fail("expecting RSA response");
        };
        let combined = combine_nonces(&c.nonce, &r.nonce)?;
        // Go's verifier detects the salt length; upstream agents use the maximum, others
        // may use the digest length.
        let ok = [&PSS_MAX_VERIFY, &sig::RSA_PSS_2048_8192_SHA256]
            .into_iter()
            .any(|params| {
                UnparsedPublicKey::new(params, &public)
                    .verify_digest(&combined, &r.signature)
                    .is_ok()
            });
        return if ok {
            Ok(())
        } else {
            fail("RSA signature verify failed")
        };
    }
    let Some(c) = &challenge.ecdsa_signature else {
        return fail("expecting ECDSA challenge");
    };
    let Some(r) = &response.ecdsa_signature else {
        return fail("expecting ECDSA response");
    };
    let combined = combine_nonces(&c.nonce, &r.nonce)?;
    let alg = match kind {
        KeyKind::P256 => &sig::ECDSA_P256_SHA256_ASN1,
        KeyKind::P384 => &sig::ECDSA_P384_SHA256_ASN1,
        _ => &sig::ECDSA_P521_SHA256_ASN1,
    };
    let der = ecdsa_der(&r.r, &r.s);
    UnparsedPublicKey::new(alg, &public)
        .verify_digest(&combined, &der)
        .map_err(|_| PopError("ECDSA signature verify failed".into()))
}

/// `SEQUENCE { INTEGER r, INTEGER s }` from big-endian magnitudes.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, value: &[u8]) {
        let value = strip_zeros(value);
        let mut body = Vec::with_capacity(value.len() + 1);
        if value.first().is_none_or(|b| b & 0x80 != 0) {
            body.push(0);
        }
        body.extend_from_slice(value);
        out.push(0x02);
        length(out, body.len());
        out.extend_from_slice(&body);
    }
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend_from_slice(&[0x81, len as u8]);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
    }
    let mut body = Vec::new();
    integer(&mut body, r);
    integer(&mut body, s);
    let mut out = vec![0x30];
    length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Accepts any extended key usage, as Go's `x509.ExtKeyUsageAny`.
struct AnyEku;

impl ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// Verifies `leaf_der` through `intermediates` to one of `roots` at `now`, and returns the
/// verified chain's certificates after the leaf (intermediates, then the root), DER.
pub fn verify_chain(
    leaf_der: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<Vec<Vec<u8>>, PopError> {
    let prefix = "x509: ";
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let mut anchors = Vec::new();
    let mut anchor_roots = Vec::new();
    for (der, raw) in root_ders.iter().zip(roots) {
        let Ok(anchor) = webpki::anchor_from_trusted_cert(der) else {
            continue;
        };
        // Go checks every certificate's validity, the root's included.
        let valid_now = parse(raw).is_ok_and(|c| {
            let v = c.validity();
            v.not_before.to_datetime() <= now && now <= v.not_after.to_datetime()
        });
        if valid_now {
            anchors.push(anchor);
            anchor_roots.push(raw);
        }
    }
    let leaf = parse(leaf_der).map_err(|e| PopError(format!("{prefix}{e}")))?;
    let validity = leaf.validity();
    if now > validity.not_after.to_datetime() {
        return fail(format!(
            "{prefix}certificate has expired or is not yet valid: current time {} is after {}",
            rfc3339(now),
            rfc3339(validity.not_after.to_datetime())
        ));
    }
    if now < validity.not_before.to_datetime() {
        return fail(format!(
            "{prefix}certificate has expired or is not yet valid: current time {} is before {}",
            rfc3339(now),
            rfc3339(validity.not_before.to_datetime())
        ));
    }
    let leaf_cert = CertificateDer::from(leaf_der);
    let end_entity = webpki::EndEntityCert::try_from(&leaf_cert)
        .map_err(|e| PopError(format!("{prefix}unable to parse leaf certificate: {e:?}")))?;
    let intermediate_ders: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let path = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediate_ders,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
            AnyEku,
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => {
                PopError(format!("{prefix}certificate signed by unknown authority"))
            }
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => PopError(
                format!("{prefix}a certificate in the chain has expired or is not yet valid"),
            ),
            other => PopError(format!("{prefix}{other:?}")),
        })?;
    let mut chain: Vec<Vec<u8>> = path
        .intermediate_certificates()
        .map(|c| c.der().to_vec())
        .collect();
    let anchor = path.anchor();
    if let Some(root) = anchors
        .iter()
        .zip(&anchor_roots)
        .find(|(a, _)| {
            a.subject == anchor.subject
                && a.subject_public_key_info == anchor.subject_public_key_info
        })
        .map(|(_, r)| (*r).clone())
    {
        chain.push(root);
    }
    Ok(chain)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// What the server learned from a verified leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    /// The subject's common name (the last one, as Go's `pkix.Name`), if any.
    pub common_name: Option<String>,
    /// The serial number, even-length lower-case hex.
    pub serial_hex: String,
    /// SPIFFE URI SANs, in order.
    pub spiffe_uris: Vec<String>,
    /// `x509pop://<td>/<key>/<value>` URI SANs, as key → value.
    pub san_selectors: BTreeMap<String, String>,
    /// The template's view of the certificate (Go's `x509.Certificate` fields).
    pub template_fields: BTreeMap<String, Value>,
}

fn name_fields(name: &x509_parser::x509::X509Name<'_>) -> Value {
    let attr = |oid: &x509_parser::der_parser::oid::Oid<'_>| -> Vec<String> {
        name.iter_by_oid(oid)
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect()
    };
    use x509_parser::oid_registry as o;
    let mut m = BTreeMap::new();
    let cn = attr(&o::OID_X509_COMMON_NAME);
    m.insert(
        "CommonName".into(),
        Value::str(cn.last().cloned().unwrap_or_default()),
    );
    m.insert(
        "Organization".into(),
        Value::strs(attr(&o::OID_X509_ORGANIZATION_NAME)),
    );
    m.insert(
        "OrganizationalUnit".into(),
        Value::strs(attr(&o::OID_X509_ORGANIZATIONAL_UNIT)),
    );
    m.insert(
        "Country".into(),
        Value::strs(attr(&o::OID_X509_COUNTRY_NAME)),
    );
    m.insert(
        "Locality".into(),
        Value::strs(attr(&o::OID_X509_LOCALITY_NAME)),
    );
    m.insert(
        "Province".into(),
        Value::strs(attr(&o::OID_X509_STATE_OR_PROVINCE_NAME)),
    );
    let serial = attr(&o::OID_X509_SERIALNUMBER);
    m.insert(
        "SerialNumber".into(),
        Value::str(serial.last().cloned().unwrap_or_default()),
    );
    Value::Map(m)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the facts selectors and agent IDs are built from.
pub fn leaf_facts(leaf_der: &[u8], trust_domain: &str) -> Result<LeafFacts, PopError> {
    let leaf = parse(leaf_der)?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let mut emails = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::RFC822Name(e) => emails.push((*e).to_owned()),
                _ => {}
            }
        }
    }
    let spiffe_uris: Vec<String> = uris
        .iter()
        .filter(|u| u.to_ascii_lowercase().starts_with("spiffe:"))
        .cloned()
        .collect();
    let prefix = format!("x509pop://{trust_domain}/");
    let mut san_selectors = BTreeMap::new();
    for uri in &uris {
        let Some(rest) = uri.strip_prefix(&prefix) else {
            continue;
        };
        let path = rest.split(['?', '#']).next().unwrap_or_default();
        let path = percent_decode(path);
        let mut segments = path.trim_matches('/').splitn(2, '/');
        if let (Some(key), Some(value)) = (segments.next(), segments.next()) {
            san_selectors.insert(key.to_owned(), value.to_owned());
        }
    }
    let serial_hex = serial_number_hex(leaf.raw_serial());
    let subject = name_fields(leaf.subject());
    let common_name = match &subject {
        Value::Map(m) => match m.get("CommonName") {
            Some(Value::Str(cn)) if !cn.is_empty() => Some(cn.clone()),
            _ => None,
        },
        _ => None,
    };
    let mut fields = BTreeMap::new();
    fields.insert("Subject".into(), subject);
    fields.insert("Issuer".into(), name_fields(leaf.issuer()));
    fields.insert(
        "SerialNumber".into(),
        Value::str(leaf.tbs_certificate.serial.to_str_radix(10)),
    );
    fields.insert("DNSNames".into(), Value::strs(dns));
    fields.insert("EmailAddresses".into(), Value::strs(emails));
    fields.insert("URIs".into(), Value::strs(uris));
    Ok(LeafFacts {
        common_name,
        serial_hex,
        spiffe_uris,
        san_selectors,
        template_fields: fields,
    })
}

/// The node selector values (without the `x509pop:` type), in upstream's order.
pub fn selector_values(facts: &LeafFacts, chain_after_leaf: &[Vec<u8>]) -> Vec<String> {
    let mut values = Vec::new();
    if let Some(cn) = &facts.common_name {
        values.push(format!("subject:cn:{cn}"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for der in chain_after_leaf {
        let fp = fingerprint(der);
        if seen.insert(fp.clone()) {
            values.push(format!("ca:fingerprint:{fp}"));
        }
    }
    values.push(format!("serialnumber:{}", facts.serial_hex));
    for (key, value) in &facts.san_selectors {
        values.push(format!("san:{key}:{value}"));
    }
    values
}

/// The path of a `spiffe://` URI as it is written (Go's `EscapedPath`).
pub fn uri_escaped_path(uri: &str) -> String {
    let after_scheme = uri.split_once("://").map_or("", |(_, r)| r);
    let without_query = after_scheme.split(['?', '#']).next().unwrap_or_default();
    without_query
        .find('/')
        .map_or(String::new(), |i| without_query[i..].to_owned())
}

/// Renders the agent ID from `template` (upstream's `MakeAgentID`).
pub fn agent_id(
    trust_domain: &TrustDomain,
    template: &Template,
    leaf_der: &[u8],
    facts: &LeafFacts,
    svid_path_trimmed: &str,
) -> Result<SpiffeId, PopError> {
    let mut data = facts.template_fields.clone();
    data.insert("PluginName".into(), Value::str(PLUGIN_NAME));
    data.insert("Fingerprint".into(), Value::str(fingerprint(leaf_der)));
    data.insert(
        "SerialNumberHex".into(),
        Value::str(facts.serial_hex.clone()),
    );
    data.insert("TrustDomain".into(), Value::str(trust_domain.name()));
    data.insert("SVIDPathTrimmed".into(), Value::str(svid_path_trimmed));
    data.insert(
        "URISanSelectors".into(),
        Value::Map(
            facts
                .san_selectors
                .iter()
                .map(|(k, v)| (k.clone(), Value::str(v.clone())))
                .collect(),
        ),
    );
    let path = template
        .execute(&Value::Map(data))
        .map_err(|e| PopError(e.to_string()))?;
    agent_id_from_path(trust_domain, &path)
}

/// `spiffe://<td>/spire/agent<path>`, refusing a path that is not a valid SPIFFE ID path.
pub fn agent_id_from_path(trust_domain: &TrustDomain, path: &str) -> Result<SpiffeId, PopError> {
    if let Err(e) = SpiffeId::from_path(trust_domain, path) {
        return fail(format!("invalid agent path suffix {path:?}: {e}"));
    }
    SpiffeId::from_path(trust_domain, &format!("/spire/agent{path}"))
        .map_err(|e| PopError(format!("invalid agent path suffix {path:?}: {e}")))
}

#[cfg(test)]
mod tests;
