//! SPIFFE bundles: the X.509 and JWT authorities of one trust domain, and their two file
//! forms, the SPIFFE bundle document (a JWK Set, SPIFFE Trust Domain and Bundle standard §4)
//! and a PEM list of CA certificates.
//!
//! The document is modelled with our own serde structs so that members come out in
//! upstream's order (go-jose's `use, kty, kid, crv, x, y, n, e, x5c`, then `spiffe_sequence`,
//! `spiffe_refresh_hint`) and so that unknown entries are skipped rather than failing the
//! whole document.

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, ParsedPublicKey};
use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::jwt::JwtAuthority;
use crate::pem::{self, PemError};
use crate::spiffe_id::TrustDomain;

/// The `use` of entries holding an X.509 authority.
const X509_SVID_USE: &str = "x509-svid";
/// The `use` of entries holding a JWT authority.
const JWT_SVID_USE: &str = "jwt-svid";

/// Why a bundle could not be read, written or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The document is not JSON, or its top level is not an object of the bundle's shape.
    #[error("bundle document is not a valid SPIFFE bundle JSON object: {0}")]
    Json(String),
    /// The document has no `keys` member (standard §4.1.3: it MUST be present).
    #[error(
        "bundle document has no \"keys\" member; it is required (an empty list revokes every authority)"
    )]
    MissingKeys,
    /// `spiffe_refresh_hint` is negative.
    #[error("\"spiffe_refresh_hint\" is {0}; it must be a non-negative number of seconds")]
    NegativeRefreshHint(i64),
    /// An `x509-svid` entry has other than one certificate in `x5c`.
    #[error("x509-svid entry {index} must hold exactly one certificate in \"x5c\"; found {found}")]
    X5cCount {
        /// The entry's position in `keys`.
        index: usize,
        /// How many certificates it holds.
        found: usize,
    },
    /// An `x509-svid` entry's key parameters differ from its certificate's public key.
    #[error(
        "x509-svid entry {index}: the key parameters do not match the certificate's public key"
    )]
    X5cKeyMismatch {
        /// The entry's position in `keys`.
        index: usize,
    },
    /// A `jwt-svid` entry has no `kid`, or an empty one.
    #[error("jwt-svid entry {index} has no \"kid\"; JWT authorities must have a key ID")]
    MissingKeyId {
        /// The entry's position in `keys`.
        index: usize,
    },
    /// Any other problem with one entry of `keys`.
    #[error("key entry {index}: {reason}")]
    Entry {
        /// The entry's position in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate is not a DER X.509 certificate.
    #[error("invalid X.509 authority: {0}")]
    BadCertificate(String),
    /// A public key is malformed or of an unsupported type.
    #[error("unsupported or malformed public key: {0}")]
    BadPublicKey(String),
    /// A JWT authority was given without a key ID.
    #[error("a JWT authority must have a non-empty key ID")]
    EmptyKeyId,
    /// Two JWT authorities share a key ID but not a key.
    #[error("key ID \"{0}\" names two different JWT authorities")]
    ConflictingKeyId(String),
    /// The PEM text is not a list of certificates.
    #[error(transparent)]
    Pem(#[from] PemError),
}

/// The trust anchors of one trust domain: what SVIDs of that trust domain are checked
/// against, what the bundle endpoint publishes, and what federation imports. Bundles of
/// different trust domains are never merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The trust domain the authorities belong to; not part of the document, kept beside it.
    pub trust_domain: TrustDomain,
    /// The X.509 authorities (root CA certificates), DER, without duplicates.
    pub x509_authorities: Vec<Vec<u8>>,
    /// The JWT authorities, with distinct key IDs.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence`: increases on every change; 0 means unset and is not written.
    pub sequence_number: u64,
    /// `spiffe_refresh_hint`: how often consumers should poll for updates.
    pub refresh_hint: Option<Duration>,
}

impl Bundle {
    /// An empty bundle for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence_number: 0,
            refresh_hint: None,
        }
    }

    /// Adds an X.509 authority unless the same certificate is already there; tells whether
    /// it was added. The certificate must parse.
    pub fn add_x509_authority(&mut self, der: Vec<u8>) -> Result<bool, BundleError> {
        certificate_key(&der)?;
        if self.x509_authorities.contains(&der) {
            return Ok(false);
        }
        self.x509_authorities.push(der);
        Ok(true)
    }

    /// Adds a JWT authority unless the same key is already there under the same key ID;
    /// tells whether it was added. A key ID naming a different key is an error.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) -> Result<bool, BundleError> {
        if authority.key_id.is_empty() {
            return Err(BundleError::EmptyKeyId);
        }
        PublicKeyParams::from_spki(&authority.public_key_der).map_err(BundleError::BadPublicKey)?;
        match self.jwt_authority(&authority.key_id) {
            Some(existing) if existing.public_key_der == authority.public_key_der => Ok(false),
            Some(_) => Err(BundleError::ConflictingKeyId(authority.key_id)),
            None => {
                self.jwt_authorities.push(authority);
                Ok(true)
            }
        }
    }

    /// The JWT authority with key ID `key_id`, as a token's `kid` names it.
    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }

    /// Whether the bundle holds no authority at all (every SVID of the trust domain fails).
    pub fn is_empty(&self) -> bool {
        self.x509_authorities.is_empty() && self.jwt_authorities.is_empty()
    }

    /// The SPIFFE bundle document, as upstream's `bundle show -format spiffe` and bundle
    /// endpoint write it: indented by four spaces, X.509 authorities first, no trailing
    /// newline. `spiffe_sequence` and `spiffe_refresh_hint` are left out when zero.
    pub fn to_spiffe_document(&self) -> Result<String, BundleError> {
        let mut keys = Vec::with_capacity(self.x509_authorities.len() + self.jwt_authorities.len());
        for der in &self.x509_authorities {
            let mut jwk = certificate_key(der)?.to_jwk();
            jwk.key_use = Some(X509_SVID_USE.to_owned());
            jwk.x5c = Some(vec![STANDARD.encode(der)]);
            keys.push(jwk);
        }
        for authority in &self.jwt_authorities {
            let mut jwk = PublicKeyParams::from_spki(&authority.public_key_der)
                .map_err(BundleError::BadPublicKey)?
                .to_jwk();
            jwk.key_use = Some(JWT_SVID_USE.to_owned());
            jwk.kid = Some(authority.key_id.clone());
            keys.push(jwk);
        }
        let refresh_hint = self
            .refresh_hint
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .filter(|s| *s > 0);
        let document = DocumentOut {
            keys,
            spiffe_sequence: Some(self.sequence_number).filter(|s| *s > 0),
            spiffe_refresh_hint: refresh_hint,
        };
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        document
            .serialize(&mut serializer)
            .map_err(|e| BundleError::Json(e.to_string()))?;
        String::from_utf8(out).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Reads a SPIFFE bundle document for `trust_domain`. `keys` is required (it may be
    /// empty); entries with an unknown `use` or `kty` are skipped, as the standard says;
    /// `x509-svid` entries need exactly one `x5c` certificate matching the key parameters,
    /// `jwt-svid` entries need a `kid`.
    pub fn from_spiffe_document(
        trust_domain: TrustDomain,
        document: &[u8],
    ) -> Result<Self, BundleError> {
        let doc: DocumentIn =
            serde_json::from_slice(document).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence_number = doc.spiffe_sequence.unwrap_or(0);
        if let Some(hint) = doc.spiffe_refresh_hint {
            let secs = u64::try_from(hint).map_err(|_| BundleError::NegativeRefreshHint(hint))?;
            bundle.refresh_hint = Some(Duration::from_secs(secs));
        }
        let keys = doc.keys.ok_or(BundleError::MissingKeys)?;
        for (index, entry) in keys.into_iter().enumerate() {
            bundle.add_entry(index, entry)?;
        }
        Ok(bundle)
    }

    fn add_entry(&mut self, index: usize, entry: Value) -> Result<(), BundleError> {
        let entry_error = |reason: String| BundleError::Entry { index, reason };
        let Value::Object(members) = &entry else {
            return Err(entry_error("not a JSON object".to_owned()));
        };
        let is_x509 = match members.get("use").and_then(Value::as_str) {
            Some(X509_SVID_USE) => true,
            Some(JWT_SVID_USE) => false,
            _ => return Ok(()),
        };
        match members.get("kty") {
            Some(Value::String(kty)) if kty == "EC" || kty == "RSA" => {}
            Some(Value::String(_)) => return Ok(()),
            _ => return Err(entry_error("\"kty\" is missing or not a string".to_owned())),
        }
        let jwk: Jwk = serde_json::from_value(entry).map_err(|e| entry_error(e.to_string()))?;
        let params = PublicKeyParams::from_jwk(&jwk).map_err(entry_error)?;
        if is_x509 {
            let certs = jwk.x5c.unwrap_or_default();
            let [cert] = certs.as_slice() else {
                return Err(BundleError::X5cCount {
                    index,
                    found: certs.len(),
                });
            };
            let der = LENIENT_STANDARD
                .decode(cert)
                .map_err(|_| entry_error("\"x5c\" is not base64".to_owned()))?;
            if certificate_key(&der)? != params {
                return Err(BundleError::X5cKeyMismatch { index });
            }
            self.add_x509_authority(der)?;
        } else {
            let key_id = jwk
                .kid
                .filter(|k| !k.is_empty())
                .ok_or(BundleError::MissingKeyId { index })?;
            let public_key_der = params.to_spki().map_err(entry_error)?;
            self.add_jwt_authority(JwtAuthority {
                key_id,
                public_key_der,
                expires_at: None,
            })?;
        }
        Ok(())
    }

    /// The X.509 authorities as concatenated PEM `CERTIFICATE` blocks (`bundle show`'s
    /// default format and the agent's `trust_bundle_path` file).
    pub fn to_pem(&self) -> String {
        pem::encode_certificates(self.x509_authorities.iter().map(Vec::as_slice))
    }

    /// Reads a PEM list of CA certificates as the X.509 authorities of `trust_domain`
    /// (duplicates are dropped).
    pub fn from_pem(trust_domain: TrustDomain, text: &str) -> Result<Self, BundleError> {
        let mut bundle = Self::new(trust_domain);
        for der in pem::decode_certificates(text.as_bytes())? {
            bundle.add_x509_authority(der)?;
        }
        Ok(bundle)
    }
}

#[derive(Serialize)]
struct DocumentOut {
    keys: Vec<Jwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Deserialize)]
struct DocumentIn {
    keys: Option<Vec<Value>>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<i64>,
}

/// One JWK of the document, members in go-jose's order; unknown members are ignored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Jwk {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    key_use: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

/// The NIST curves a JWK or SPKI may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EcCurve {
    /// P-256 (`prime256v1`).
    P256,
    /// P-384 (`secp384r1`).
    P384,
    /// P-521 (`secp521r1`).
    P521,
}

impl EcCurve {
    const ALL: [Self; 3] = [Self::P256, Self::P384, Self::P521];

    /// The JWK `crv` name.
    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    /// The fixed byte length of each coordinate (RFC 7518 §6.2.1.2).
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    fn verification(self) -> &'static signature::EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::P384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::P521 => &signature::ECDSA_P521_SHA512_FIXED,
        }
    }
}

/// A public key as its JWK parameters: the bridge between SPKI DER (what bundles and the
/// datastore keep) and JWK (what the bundle document carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKeyParams {
    /// An EC key: the curve and the two fixed-length coordinates.
    Ec {
        /// The curve.
        curve: EcCurve,
        /// The x coordinate, big-endian, `coordinate_len` bytes.
        x: Vec<u8>,
        /// The y coordinate, big-endian, `coordinate_len` bytes.
        y: Vec<u8>,
    },
    /// An RSA key: modulus and public exponent, big-endian without leading zeros.
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
}

impl PublicKeyParams {
    /// Reads a DER SubjectPublicKeyInfo of an EC (P-256/384/521) or RSA key.
    pub(crate) fn from_spki(der: &[u8]) -> Result<Self, String> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err("trailing bytes after the public key".to_owned());
        }
        Self::from_parsed_spki(&spki)
    }

    fn from_parsed_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, String> {
        let algorithm = &spki.algorithm.algorithm;
        if *algorithm == OID_PKCS1_RSAENCRYPTION {
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err("malformed RSA public key".to_owned());
            };
            let (n, e) = (strip_zeros(rsa.modulus), strip_zeros(rsa.exponent));
            if n.is_empty() || e.is_empty() {
                return Err("RSA modulus or exponent is zero".to_owned());
            }
            return Ok(Self::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            });
        }
        if *algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err(format!("unsupported key algorithm {algorithm}"));
        }
        let curve_oid = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or("EC key without a named curve")?;
        let curve = [
            (OID_EC_P256, EcCurve::P256),
            (OID_NIST_EC_P384, EcCurve::P384),
            (OID_NIST_EC_P521, EcCurve::P521),
        ]
        .into_iter()
        .find(|(oid, _)| *oid == curve_oid)
        .map(|(_, c)| c)
        .ok_or_else(|| format!("unsupported EC curve {curve_oid}"))?;
        let point: &[u8] = &spki.subject_public_key.data;
        let len = curve.coordinate_len();
        let (x, y) = match point.split_first() {
            Some((4, xy)) if xy.len() == 2 * len => xy.split_at(len),
            _ => return Err(format!("{} key is not an uncompressed point", curve.name())),
        };
        Ok(Self::Ec {
            curve,
            x: x.to_vec(),
            y: y.to_vec(),
        })
    }

    /// Writes the key as a DER SubjectPublicKeyInfo, checking that it is a valid key (EC
    /// points must lie on the curve).
    pub(crate) fn to_spki(&self) -> Result<Vec<u8>, String> {
        let der = match self {
            Self::Ec { curve, x, y } => {
                let point = [&[4u8][..], x, y].concat();
                ParsedPublicKey::new(curve.verification(), point)
                    .map_err(|e| format!("invalid {} point: {e}", curve.name()))?
                    .as_der()
            }
            Self::Rsa { n, e } => aws_lc_rs::rsa::PublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .as_der(),
        };
        der.map(|d| d.as_ref().to_vec())
            .map_err(|_| "invalid public key".to_owned())
    }

    /// Describes the key for error messages, e.g. `an EC P-256`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Ec { curve, .. } => format!("an EC {}", curve.name()),
            Self::Rsa { n, .. } => format!("an RSA {}-bit", n.len() * 8),
        }
    }

    fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        let param = |name: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
            let value = value.as_deref().ok_or(format!("\"{name}\" is missing"))?;
            LENIENT_URL_SAFE
                .decode(value)
                .map_err(|_| format!("\"{name}\" is not base64url"))
        };
        match jwk.kty.as_deref() {
            Some("EC") => {
                let crv = jwk.crv.as_deref().unwrap_or_default();
                let curve = EcCurve::ALL
                    .into_iter()
                    .find(|c| c.name() == crv)
                    .ok_or_else(|| format!("unsupported EC curve {crv:?}"))?;
                let (x, y) = (param("x", &jwk.x)?, param("y", &jwk.y)?);
                if x.len() != curve.coordinate_len() || y.len() != curve.coordinate_len() {
                    return Err(format!("wrong coordinate length for {}", curve.name()));
                }
                Ok(Self::Ec { curve, x, y })
            }
            Some("RSA") => {
                let n = strip_zeros(&param("n", &jwk.n)?).to_vec();
                let e = strip_zeros(&param("e", &jwk.e)?).to_vec();
                if n.is_empty() || e.is_empty() {
                    return Err("RSA modulus or exponent is zero".to_owned());
                }
                Ok(Self::Rsa { n, e })
            }
            other => Err(format!("unsupported key type {other:?}")),
        }
    }

    /// The key as a JWK JSON object (no `kid`).
    pub(crate) fn to_jwk_value(&self) -> Value {
        serde_json::to_value(self.to_jwk()).unwrap_or(Value::Null)
    }

    fn to_jwk(&self) -> Jwk {
        let b64 = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
        match self {
            Self::Ec { curve, x, y } => Jwk {
                kty: Some("EC".to_owned()),
                crv: Some(curve.name().to_owned()),
                x: b64(x),
                y: b64(y),
                ..Jwk::default()
            },
            Self::Rsa { n, e } => Jwk {
                kty: Some("RSA".to_owned()),
                n: b64(n),
                e: b64(e),
                ..Jwk::default()
            },
        }
    }
}

/// The public key of a DER certificate, which must parse completely.
fn certificate_key(der: &[u8]) -> Result<PublicKeyParams, BundleError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| BundleError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(BundleError::BadCertificate(
            "trailing bytes after the certificate".to_owned(),
        ));
    }
    PublicKeyParams::from_parsed_spki(cert.public_key()).map_err(BundleError::BadPublicKey)
}

/// The key ID and public key of one JWK of a key set: what [`crate::jws`] reads from a
/// cloud provider's JWKS with the same rules as bundle documents.
pub(crate) fn jwk_public_key(value: Value) -> Result<(Option<String>, PublicKeyParams), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let params = PublicKeyParams::from_jwk(&jwk)?;
    Ok((jwk.kid, params))
}

/// The public key of a DER certificate, for key sets published as certificates.
pub(crate) fn certificate_public_key(der: &[u8]) -> Result<PublicKeyParams, String> {
    certificate_key(der).map_err(|e| e.to_string())
}

/// Decoding as lenient as Go's decoders behind go-jose: padding optional, trailing bits allowed.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
/// Reads `x5c` certificates (standard base64).
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
/// Reads JWK key parameters (base64url).
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

#[cfg(test)]
mod tests;
