//! JWT-SVIDs: minting and validating the JSON Web Tokens that carry a SPIFFE ID, as the
//! SPIFFE JWT-SVID standard and upstream SPIRE do.
//!
//! Validation is strict on purpose: compact form only, a header holding only `alg`, `kid` and
//! `typ`, an allow-listed asymmetric `alg` whose key type matches the authority's key, a `kid`
//! naming a key in the bundle of the *subject's* trust domain, and required `sub`, `aud` and
//! `exp`. Times get upstream's leeway of one minute (go-jose's `DefaultLeeway`).
//!
//! Signing and verification call aws-lc-rs directly instead of going through jsonwebtoken:
//! we must read and police the raw header and claims before trusting anything (jsonwebtoken
//! would parse them a second time with its own rules), validators must accept ES512 (which
//! jsonwebtoken lacks), RSA keys sign straight from our PKCS#8 without a PKCS#1 conversion,
//! and the header and claims bytes come out in upstream's key order.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, ParsedPublicKey, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::bundle::{Bundle, EcCurve, PublicKeyParams};
use crate::keys::{KeyType, PrivateKey};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The largest token accepted, in bytes; longer input is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds: go-jose's `DefaultLeeway`,
/// which upstream SPIRE and go-spiffe validate with.
pub const LEEWAY_SECONDS: i64 = 60;

/// Why a JWT-SVID could not be minted, parsed or validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidError {
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes long; the limit is 65536")]
    TooLarge {
        /// The token's length.
        len: usize,
    },
    /// The token is not three dot-separated parts (JWS JSON forms and JWEs are refused).
    #[error("token is not a compact JWS: expected 3 dot-separated parts, found {parts}")]
    NotCompact {
        /// How many parts were found.
        parts: usize,
    },
    /// A part of the token is not unpadded base64url.
    #[error("token {part} is not unpadded base64url")]
    Base64 {
        /// `header`, `payload` or `signature`.
        part: &'static str,
    },
    /// The header is not a JSON object.
    #[error("token header is not a JSON object: {0}")]
    MalformedHeader(String),
    /// The header has a parameter other than `alg`, `kid` and `typ`.
    #[error(
        "token header has parameter \"{name}\"; JWT-SVIDs allow only \"alg\", \"kid\" and \"typ\""
    )]
    UnexpectedHeader {
        /// The parameter's name.
        name: String,
    },
    /// A header parameter is not a string.
    #[error("token header parameter \"{name}\" is not a string")]
    HeaderNotString {
        /// The parameter's name.
        name: &'static str,
    },
    /// The header has no `alg`.
    #[error("token has no \"alg\" header")]
    MissingAlgorithm,
    /// The `alg` is not one of the nine asymmetric algorithms JWT-SVIDs may use.
    #[error(
        "token algorithm \"{alg}\" is not allowed; JWT-SVIDs use RS256/384/512, ES256/384/512 or PS256/384/512"
    )]
    UnsupportedAlgorithm {
        /// The algorithm named by the token.
        alg: String,
    },
    /// The `typ` header is present but neither `JWT` nor `JOSE`.
    #[error("token \"typ\" header is \"{typ}\"; expected \"JWT\" or \"JOSE\"")]
    UnsupportedType {
        /// The type named by the token.
        typ: String,
    },
    /// The header has no `kid`, or an empty one.
    #[error("token has no \"kid\" header; JWT-SVIDs must name their signing key")]
    MissingKeyId,
    /// The signature part is empty.
    #[error("token has an empty signature")]
    MissingSignature,
    /// The payload is not a JSON object.
    #[error("token claims are not a JSON object: {0}")]
    MalformedClaims(String),
    /// The claims have no `sub`.
    #[error("token has no \"sub\" claim")]
    MissingSubject,
    /// The `sub` claim is not a SPIFFE ID.
    #[error("token \"sub\" claim is not a valid SPIFFE ID: {0}")]
    InvalidSubject(SpiffeIdError),
    /// The claims have no `exp`.
    #[error("token has no \"exp\" claim; JWT-SVIDs must expire")]
    MissingExpiry,
    /// The claims have no `aud`, or an empty one.
    #[error("token has no \"aud\" claim; JWT-SVIDs must name their audience")]
    MissingAudience,
    /// A registered claim has the wrong JSON type.
    #[error("token \"{name}\" claim has the wrong type")]
    InvalidClaim {
        /// The claim's name.
        name: &'static str,
    },
    /// No JWT bundle is known for the subject's trust domain.
    #[error("no JWT bundle for trust domain \"{trust_domain}\"")]
    NoBundle {
        /// The subject's trust domain.
        trust_domain: TrustDomain,
    },
    /// The subject's trust domain has no JWT authority with the token's `kid`.
    #[error(
        "no JWT authority with key ID \"{key_id}\" in the bundle of trust domain \"{trust_domain}\""
    )]
    UnknownKeyId {
        /// The token's `kid`.
        key_id: String,
        /// The subject's trust domain.
        trust_domain: TrustDomain,
    },
    /// The JWT authority's public key cannot be used.
    #[error("JWT authority \"{key_id}\" has an unusable public key: {reason}")]
    BadAuthorityKey {
        /// The authority's key ID.
        key_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The algorithm does not fit the key (e.g. RS256 with an EC key, ES384 with P-256).
    #[error("algorithm {alg} cannot be used with {key} key")]
    AlgorithmKeyMismatch {
        /// The algorithm.
        alg: JwtAlgorithm,
        /// The key, e.g. `an EC P-256`.
        key: String,
    },
    /// The signature does not verify.
    #[error("token signature does not verify with JWT authority \"{key_id}\"")]
    BadSignature {
        /// The authority's key ID.
        key_id: String,
    },
    /// `exp` is in the past, beyond the leeway.
    #[error("token has expired (exp {exp}, now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The time of validation.
        now: i64,
    },
    /// `nbf` is in the future, beyond the leeway.
    #[error("token is not valid yet (nbf {nbf}, now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The time of validation.
        now: i64,
    },
    /// `iat` is in the future, beyond the leeway.
    #[error("token was issued in the future (iat {iat}, now {now})")]
    IssuedInFuture {
        /// The token's `iat`.
        iat: i64,
        /// The time of validation.
        now: i64,
    },
    /// The caller gave no audience to validate against.
    #[error("an expected audience is required to validate a JWT-SVID")]
    NoExpectedAudience,
    /// The token's `aud` lacks an expected audience.
    #[error("expected audience in {expected:?} (audience={actual:?})")]
    AudienceMismatch {
        /// The audiences the caller required.
        expected: Vec<String>,
        /// The token's `aud`.
        actual: Vec<String>,
    },
    /// Minting was asked for without an audience, or with an empty audience value.
    #[error("at least one audience is required, and audiences cannot be empty strings")]
    EmptyAudience,
    /// Minting was asked for with an empty key ID.
    #[error("a key ID is required to sign a JWT-SVID")]
    EmptyKeyId,
    /// The crypto library failed to sign.
    #[error("could not sign the token with the {0} key")]
    Signing(KeyType),
    /// The system random number generator failed.
    #[error("could not generate a random token ID")]
    Random,
}

/// The signature algorithms a JWT-SVID may use (JWT-SVID standard §3.1): never `none`,
/// HMAC or EdDSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// ECDSA P-256 with SHA-256; what SPIRE signs with for `ec-p256` keys.
    Es256,
    /// ECDSA P-384 with SHA-384; what SPIRE signs with for `ec-p384` keys.
    Es384,
    /// ECDSA P-521 with SHA-512; verify-only here, as no SPIRE key type is P-521.
    Es512,
    /// RSASSA-PKCS1-v1_5 with SHA-256; what SPIRE signs with for RSA keys.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
}

impl JwtAlgorithm {
    /// Every allowed algorithm.
    pub const ALL: [Self; 9] = [
        Self::Es256,
        Self::Es384,
        Self::Es512,
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
    ];

    /// How a remote key signs for this algorithm: hash and padding (`None` for ES512, which
    /// no SPIRE key type signs with).
    pub fn scheme(self) -> Option<crate::keys::SignatureScheme> {
        use crate::keys::{HashAlgorithm, SignatureScheme};
        let (hash, pss) = match self {
            Self::Es256 | Self::Rs256 => (HashAlgorithm::Sha256, false),
            Self::Es384 | Self::Rs384 => (HashAlgorithm::Sha384, false),
            Self::Rs512 => (HashAlgorithm::Sha512, false),
            Self::Ps256 => (HashAlgorithm::Sha256, true),
            Self::Ps384 => (HashAlgorithm::Sha384, true),
            Self::Ps512 => (HashAlgorithm::Sha512, true),
            Self::Es512 => return None,
        };
        Some(SignatureScheme { hash, pss })
    }

    /// The JOSE name, e.g. `ES256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }

    /// The algorithm upstream SPIRE signs with for a key type (`cryptoutil.JoseAlgFromPublicKey`):
    /// ES256 for P-256, ES384 for P-384, RS256 for RSA.
    pub fn for_key_type(key_type: KeyType) -> Self {
        match key_type {
            KeyType::EcP256 => Self::Es256,
            KeyType::EcP384 => Self::Es384,
            KeyType::Rsa2048 | KeyType::Rsa4096 => Self::Rs256,
        }
    }

    fn is_rsa(self) -> bool {
        !matches!(self, Self::Es256 | Self::Es384 | Self::Es512)
    }

    pub(crate) fn fits(self, key: &PublicKeyParams) -> bool {
        match key {
            PublicKeyParams::Ec { curve, .. } => match self {
                Self::Es256 => *curve == EcCurve::P256,
                Self::Es384 => *curve == EcCurve::P384,
                Self::Es512 => *curve == EcCurve::P521,
                _ => false,
            },
            PublicKeyParams::Rsa { .. } => self.is_rsa(),
        }
    }

    fn fits_key_type(self, key_type: KeyType) -> bool {
        match key_type {
            KeyType::EcP256 => self == Self::Es256,
            KeyType::EcP384 => self == Self::Es384,
            KeyType::Rsa2048 | KeyType::Rsa4096 => self.is_rsa(),
        }
    }

    pub(crate) fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Self::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::Es512 => &signature::ECDSA_P521_SHA512_FIXED,
            Self::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = JwtSvidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| JwtSvidError::UnsupportedAlgorithm { alg: clip(s) })
    }
}

/// A JWT signing key as bundles keep it: the key ID tokens name in `kid`, the public key, and
/// when the key stops being used. Shared by [`crate::bundle::Bundle`] and validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwtAuthority {
    /// The key ID (`kid`).
    pub key_id: String,
    /// The public key as a DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// When the key expires, in Unix seconds; `None` when unknown (e.g. from a SPIFFE bundle
    /// document, which does not carry it).
    pub expires_at: Option<i64>,
}

/// Where validation finds the JWT authorities of a trust domain. Implemented for a single
/// [`Bundle`] and for maps and slices of bundles; the agent and server cache implement it too.
pub trait JwtBundleSource {
    /// The JWT authorities of `trust_domain`, or `None` when there is no bundle for it.
    fn jwt_authorities(&self, trust_domain: &TrustDomain) -> Option<&[JwtAuthority]>;
}

impl JwtBundleSource for Bundle {
    fn jwt_authorities(&self, trust_domain: &TrustDomain) -> Option<&[JwtAuthority]> {
        (self.trust_domain == *trust_domain).then_some(self.jwt_authorities.as_slice())
    }
}

impl JwtBundleSource for [Bundle] {
    fn jwt_authorities(&self, trust_domain: &TrustDomain) -> Option<&[JwtAuthority]> {
        self.iter()
            .find_map(|b| JwtBundleSource::jwt_authorities(b, trust_domain))
    }
}

impl<S: std::hash::BuildHasher> JwtBundleSource for HashMap<TrustDomain, Bundle, S> {
    fn jwt_authorities(&self, trust_domain: &TrustDomain) -> Option<&[JwtAuthority]> {
        self.get(trust_domain)
            .and_then(|b| JwtBundleSource::jwt_authorities(b, trust_domain))
    }
}

impl JwtBundleSource for BTreeMap<TrustDomain, Bundle> {
    fn jwt_authorities(&self, trust_domain: &TrustDomain) -> Option<&[JwtAuthority]> {
        self.get(trust_domain)
            .and_then(|b| JwtBundleSource::jwt_authorities(b, trust_domain))
    }
}

/// What goes into a new JWT-SVID besides the signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidParams {
    /// The `sub` claim: the workload's SPIFFE ID (from the registration entry).
    pub subject: SpiffeId,
    /// The `aud` claim; at least one, none empty. Always serialised as an array, as upstream.
    pub audience: Vec<String>,
    /// The `exp` claim, in Unix seconds (already capped at the signing key's expiry).
    pub expires_at: i64,
    /// The `iat` claim, in Unix seconds; `None` means now.
    pub issued_at: Option<i64>,
    /// The `iss` claim, from the server's `jwt_issuer` setting; left out when `None`.
    pub issuer: Option<String>,
    /// Overrides the algorithm (e.g. PS256 for an RSA key); `None` picks upstream's default
    /// for the key type ([`JwtAlgorithm::for_key_type`]).
    pub algorithm: Option<JwtAlgorithm>,
    /// The `jti` claim, a unique token ID for entries that ask for one
    /// (`jwt_svid_include_jti`); left out when `None`. See [`new_jwt_id`].
    pub jwt_id: Option<String>,
}

/// A fresh `jti` value as upstream makes it: the 16 bytes of a random (version 4) UUID in
/// unpadded base64url, 22 characters.
pub fn new_jwt_id() -> Result<String, JwtSvidError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| JwtSvidError::Random)?;
    // The version (4) and variant (RFC 4122) bits of a UUID v4.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

/// Claims in the order Go's `encoding/json` writes upstream's claims map (sorted keys).
#[derive(Serialize)]
struct ClaimsOut<'a> {
    aud: &'a [String],
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
    sub: &'a str,
}

/// Signs a JWT-SVID with `key`, naming it `key_id` in the header. The header is exactly
/// `{"alg","kid","typ":"JWT"}`; the claims are `aud` (an array), `exp`, `iat`, `iss` when
/// configured, `jti` when given, and `sub`, as upstream SPIRE's CA writes them.
pub fn mint_jwt_svid(
    key: &PrivateKey,
    key_id: &str,
    params: &JwtSvidParams,
) -> Result<String, JwtSvidError> {
    let unsigned = jwt_svid_unsigned(key.key_type(), key_id, params)?;
    let sig = sign(key, unsigned.alg, unsigned.signing_input.as_bytes())?;
    Ok(unsigned.assemble(&sig))
}

/// A JWT-SVID laid out and waiting for its signature, for a key held outside this process
/// (a KMS or an external KeyManager plugin) to sign with its own round trip.
#[derive(Debug, Clone)]
pub struct UnsignedJwt {
    signing_input: String,
    alg: JwtAlgorithm,
}

impl UnsignedJwt {
    /// The JWS signing input (`header.claims`), what the key signs.
    pub fn signing_input(&self) -> &[u8] {
        self.signing_input.as_bytes()
    }

    /// The algorithm named in the header.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.alg
    }

    /// The compact token, given the JWS signature (fixed-width `r || s` for ECDSA).
    pub fn assemble(&self, jws_signature: &[u8]) -> String {
        format!(
            "{}.{}",
            self.signing_input,
            URL_SAFE_NO_PAD.encode(jws_signature)
        )
    }
}

/// [`mint_jwt_svid`] for a key of `key_type` held elsewhere: the token to have it sign.
pub fn jwt_svid_unsigned(
    key_type: KeyType,
    key_id: &str,
    params: &JwtSvidParams,
) -> Result<UnsignedJwt, JwtSvidError> {
    if key_id.is_empty() {
        return Err(JwtSvidError::EmptyKeyId);
    }
    if params.audience.is_empty() || params.audience.iter().any(String::is_empty) {
        return Err(JwtSvidError::EmptyAudience);
    }
    let alg = params
        .algorithm
        .unwrap_or_else(|| JwtAlgorithm::for_key_type(key_type));
    if !alg.fits_key_type(key_type) {
        return Err(JwtSvidError::AlgorithmKeyMismatch {
            alg,
            key: key_type_description(key_type),
        });
    }
    let header = HeaderOut {
        alg: alg.as_str(),
        kid: key_id,
        typ: "JWT",
    };
    let claims = ClaimsOut {
        aud: &params.audience,
        exp: params.expires_at,
        iat: params.issued_at.unwrap_or_else(unix_now),
        iss: params.issuer.as_deref(),
        jti: params.jwt_id.as_deref(),
        sub: params.subject.as_str(),
    };
    let fail = |_| JwtSvidError::Signing(key_type);
    let header = serde_json::to_vec(&header).map_err(fail)?;
    let claims = serde_json::to_vec(&claims).map_err(fail)?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    Ok(UnsignedJwt { signing_input, alg })
}

/// Signs a JWT with `claims` as they are (a CredentialComposer may have added or changed
/// any of them), with the same header as [`mint_jwt_svid`].
pub fn mint_jwt_with_claims(
    key: &PrivateKey,
    key_id: &str,
    algorithm: Option<JwtAlgorithm>,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, JwtSvidError> {
    let unsigned = jwt_with_claims_unsigned(key.key_type(), key_id, algorithm, claims)?;
    let sig = sign(key, unsigned.alg, unsigned.signing_input.as_bytes())?;
    Ok(unsigned.assemble(&sig))
}

/// [`mint_jwt_with_claims`] for a key of `key_type` held elsewhere: the token to have it
/// sign.
pub fn jwt_with_claims_unsigned(
    key_type: KeyType,
    key_id: &str,
    algorithm: Option<JwtAlgorithm>,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<UnsignedJwt, JwtSvidError> {
    if key_id.is_empty() {
        return Err(JwtSvidError::EmptyKeyId);
    }
    let alg = algorithm.unwrap_or_else(|| JwtAlgorithm::for_key_type(key_type));
    if !alg.fits_key_type(key_type) {
        return Err(JwtSvidError::AlgorithmKeyMismatch {
            alg,
            key: key_type_description(key_type),
        });
    }
    let header = HeaderOut {
        alg: alg.as_str(),
        kid: key_id,
        typ: "JWT",
    };
    let fail = |_| JwtSvidError::Signing(key_type);
    let header = serde_json::to_vec(&header).map_err(fail)?;
    let claims = serde_json::to_vec(claims).map_err(fail)?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    Ok(UnsignedJwt { signing_input, alg })
}

/// Signs `message` with `key` using `alg`, giving the JWS signature bytes (r||s for ECDSA).
pub(crate) fn sign(
    key: &PrivateKey,
    alg: JwtAlgorithm,
    message: &[u8],
) -> Result<Vec<u8>, JwtSvidError> {
    let fail = || JwtSvidError::Signing(key.key_type());
    let rng = SystemRandom::new();
    let ecdsa = |alg: &'static signature::EcdsaSigningAlgorithm| {
        let pair = EcdsaKeyPair::from_pkcs8(alg, key.pkcs8_der()).map_err(|_| fail())?;
        let sig = pair.sign(&rng, message).map_err(|_| fail())?;
        Ok(sig.as_ref().to_vec())
    };
    let rsa = |encoding: &'static dyn signature::RsaEncoding| {
        let pair = RsaKeyPair::from_pkcs8(key.pkcs8_der()).map_err(|_| fail())?;
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(encoding, &rng, message, &mut sig)
            .map_err(|_| fail())?;
        Ok(sig)
    };
    match alg {
        JwtAlgorithm::Es256 => ecdsa(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        JwtAlgorithm::Es384 => ecdsa(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        JwtAlgorithm::Es512 => ecdsa(&signature::ECDSA_P521_SHA512_FIXED_SIGNING),
        JwtAlgorithm::Rs256 => rsa(&signature::RSA_PKCS1_SHA256),
        JwtAlgorithm::Rs384 => rsa(&signature::RSA_PKCS1_SHA384),
        JwtAlgorithm::Rs512 => rsa(&signature::RSA_PKCS1_SHA512),
        JwtAlgorithm::Ps256 => rsa(&signature::RSA_PSS_SHA256),
        JwtAlgorithm::Ps384 => rsa(&signature::RSA_PSS_SHA384),
        JwtAlgorithm::Ps512 => rsa(&signature::RSA_PSS_SHA512),
    }
}

/// A JWT-SVID that passed [`validate_jwt_svid`] (or only the structural checks of
/// [`parse_jwt_svid_insecure`]).
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSvid {
    /// The subject, from `sub`.
    pub spiffe_id: SpiffeId,
    /// The `aud` claim, as a list even when the token holds a single string.
    pub audience: Vec<String>,
    /// The `exp` claim, in Unix seconds.
    pub expiry: i64,
    /// The key ID from the header.
    pub key_id: String,
    /// The signature algorithm from the header.
    pub algorithm: JwtAlgorithm,
    /// Every claim, for the Workload API's `ValidateJWTSVIDResponse.claims`.
    pub claims: Map<String, Value>,
    /// The token exactly as received; a bearer credential, never logged.
    pub token: String,
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("audience", &self.audience)
            .field("expiry", &self.expiry)
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A token that passed the structural checks, before any key is looked at.
struct Parsed<'t> {
    signing_input: &'t str,
    signature: Vec<u8>,
    not_before: Option<i64>,
    issued_at: Option<i64>,
    svid: JwtSvid,
}

/// Validates a JWT-SVID: structure, signature by the `kid` authority of the bundle of the
/// subject's trust domain, times (with [`LEEWAY_SECONDS`]) against `now` (Unix seconds), and
/// that `aud` holds every one of `expected_audience` (at least one is required).
pub fn validate_jwt_svid<S, A>(
    token: &str,
    bundles: &S,
    expected_audience: &[A],
    now: i64,
) -> Result<JwtSvid, JwtSvidError>
where
    S: JwtBundleSource + ?Sized,
    A: AsRef<str>,
{
    if expected_audience.is_empty() {
        return Err(JwtSvidError::NoExpectedAudience);
    }
    let parsed = parse(token)?;
    let svid = &parsed.svid;
    let trust_domain = svid.spiffe_id.trust_domain();
    let authorities =
        bundles
            .jwt_authorities(&trust_domain)
            .ok_or_else(|| JwtSvidError::NoBundle {
                trust_domain: trust_domain.clone(),
            })?;
    let authority = authorities
        .iter()
        .find(|a| a.key_id == svid.key_id)
        .ok_or_else(|| JwtSvidError::UnknownKeyId {
            key_id: svid.key_id.clone(),
            trust_domain,
        })?;
    let bad_key = |reason: String| JwtSvidError::BadAuthorityKey {
        key_id: authority.key_id.clone(),
        reason,
    };
    let params = PublicKeyParams::from_spki(&authority.public_key_der).map_err(bad_key)?;
    if !svid.algorithm.fits(&params) {
        return Err(JwtSvidError::AlgorithmKeyMismatch {
            alg: svid.algorithm,
            key: params.describe(),
        });
    }
    let key = ParsedPublicKey::new(svid.algorithm.verification(), &authority.public_key_der)
        .map_err(|e| bad_key(e.to_string()))?;
    key.verify_sig(parsed.signing_input.as_bytes(), &parsed.signature)
        .map_err(|_| JwtSvidError::BadSignature {
            key_id: authority.key_id.clone(),
        })?;
    check_times(&parsed, now)?;
    check_audience(svid, expected_audience)?;
    Ok(parsed.svid)
}

/// Reads a JWT-SVID **without verifying its signature, times or audience**, but with every
/// structural check of [`validate_jwt_svid`]. For finding the subject's trust domain or the
/// `kid` before validation; never for authenticating anyone.
pub fn parse_jwt_svid_insecure(token: &str) -> Result<JwtSvid, JwtSvidError> {
    parse(token).map(|p| p.svid)
}

fn check_times(parsed: &Parsed<'_>, now: i64) -> Result<(), JwtSvidError> {
    let exp = parsed.svid.expiry;
    if now.saturating_sub(LEEWAY_SECONDS) > exp {
        return Err(JwtSvidError::Expired { exp, now });
    }
    let later = now.saturating_add(LEEWAY_SECONDS);
    if let Some(nbf) = parsed.not_before.filter(|nbf| later < *nbf) {
        return Err(JwtSvidError::NotYetValid { nbf, now });
    }
    if let Some(iat) = parsed.issued_at.filter(|iat| later < *iat) {
        return Err(JwtSvidError::IssuedInFuture { iat, now });
    }
    Ok(())
}

fn check_audience<A: AsRef<str>>(svid: &JwtSvid, expected: &[A]) -> Result<(), JwtSvidError> {
    if expected
        .iter()
        .all(|e| svid.audience.iter().any(|a| a == e.as_ref()))
    {
        return Ok(());
    }
    Err(JwtSvidError::AudienceMismatch {
        expected: expected.iter().map(|e| e.as_ref().to_owned()).collect(),
        actual: svid.audience.clone(),
    })
}

fn parse(token: &str) -> Result<Parsed<'_>, JwtSvidError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtSvidError::TooLarge { len: token.len() });
    }
    let parts = token.split('.').count();
    let (Some((signing_input, signature)), 3) = (token.rsplit_once('.'), parts) else {
        return Err(JwtSvidError::NotCompact { parts });
    };
    let Some((header, payload)) = signing_input.split_once('.') else {
        return Err(JwtSvidError::NotCompact { parts });
    };

    let header: Map<String, Value> = serde_json::from_slice(&decode(header, "header")?)
        .map_err(|e| JwtSvidError::MalformedHeader(e.to_string()))?;
    if let Some(name) = header
        .keys()
        .find(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(JwtSvidError::UnexpectedHeader { name: clip(name) });
    }
    let algorithm: JwtAlgorithm = header_str(&header, "alg")?
        .ok_or(JwtSvidError::MissingAlgorithm)?
        .parse()?;
    if let Some(typ) = header_str(&header, "typ")? {
        // go-spiffe compares case-insensitively: media type names are case-insensitive.
        if !typ.eq_ignore_ascii_case("JWT") && !typ.eq_ignore_ascii_case("JOSE") {
            return Err(JwtSvidError::UnsupportedType { typ: clip(typ) });
        }
    }
    let key_id = header_str(&header, "kid")?
        .filter(|k| !k.is_empty())
        .ok_or(JwtSvidError::MissingKeyId)?
        .to_owned();

    let claims: Map<String, Value> = serde_json::from_slice(&decode(payload, "payload")?)
        .map_err(|e| JwtSvidError::MalformedClaims(e.to_string()))?;
    let signature = decode(signature, "signature")?;
    if signature.is_empty() {
        return Err(JwtSvidError::MissingSignature);
    }

    let spiffe_id = match claims.get("sub") {
        None => return Err(JwtSvidError::MissingSubject),
        Some(Value::String(s)) => SpiffeId::parse(s).map_err(JwtSvidError::InvalidSubject)?,
        Some(_) => return Err(JwtSvidError::InvalidClaim { name: "sub" }),
    };
    let expiry = numeric_date(&claims, "exp")?.ok_or(JwtSvidError::MissingExpiry)?;
    let not_before = numeric_date(&claims, "nbf")?;
    let issued_at = numeric_date(&claims, "iat")?;
    let audience = audience(&claims)?;

    Ok(Parsed {
        signing_input,
        signature,
        not_before,
        issued_at,
        svid: JwtSvid {
            spiffe_id,
            audience,
            expiry,
            key_id,
            algorithm,
            claims,
            token: token.to_owned(),
        },
    })
}

fn decode(part: &str, name: &'static str) -> Result<Vec<u8>, JwtSvidError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtSvidError::Base64 { part: name })
}

fn header_str<'a>(
    header: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JwtSvidError> {
    match header.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwtSvidError::HeaderNotString { name }),
    }
}

/// A NumericDate claim (RFC 7519 §2): a JSON number of seconds; fractions are truncated, as
/// go-jose does.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, JwtSvidError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let invalid = JwtSvidError::InvalidClaim { name };
    let Value::Number(n) = value else {
        return Err(invalid);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // `as` saturates out-of-range floats, which only makes them more clearly expired or
        // far in the future.
        Some(f) if f.is_finite() => Ok(Some(f.trunc() as i64)),
        _ => Err(invalid),
    }
}

/// The `aud` claim: a string or an array of strings (RFC 7519 §4.1.3), required and not empty.
fn audience(claims: &Map<String, Value>) -> Result<Vec<String>, JwtSvidError> {
    let audience = match claims.get("aud") {
        None => return Err(JwtSvidError::MissingAudience),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtSvidError::InvalidClaim { name: "aud" })?,
        Some(_) => return Err(JwtSvidError::InvalidClaim { name: "aud" }),
    };
    if audience.iter().all(String::is_empty) {
        return Err(JwtSvidError::MissingAudience);
    }
    Ok(audience)
}

/// Shortens attacker-chosen text before it goes into an error message.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", s.get(..end).unwrap_or_default()),
        None => s.to_owned(),
    }
}

fn key_type_description(key_type: KeyType) -> String {
    match key_type {
        KeyType::EcP256 => "an EC P-256".to_owned(),
        KeyType::EcP384 => "an EC P-384".to_owned(),
        KeyType::Rsa2048 => "an RSA 2048-bit".to_owned(),
        KeyType::Rsa4096 => "an RSA 4096-bit".to_owned(),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
