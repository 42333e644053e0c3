//! Identity tokens signed by a cloud provider (GCP instance identity tokens, Azure MSI
//! tokens): compact JWS verified against the provider's published keys, then the registered
//! claims (`exp`, `nbf`, `iat`, `aud`) checked with go-jose's rules.
//!
//! Separate from [`crate::jwt`] because these are not JWT-SVIDs: the subject is not a SPIFFE
//! ID, headers may carry more than `alg`/`kid`/`typ`, and the keys come from the provider's
//! key set (a JWKS, or Google's map of key ID to PEM certificate), not from a bundle.

use std::collections::BTreeMap;

use aws_lc_rs::signature::ParsedPublicKey;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::bundle::{PublicKeyParams, certificate_public_key, jwk_public_key};
use crate::jwt::{JwtAlgorithm, MAX_TOKEN_LEN};
use crate::keys::PrivateKey;

/// Why a token or key set was refused; each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// The key set document could not be read.
    #[error("malformed key set: {0}")]
    KeySet(String),
    /// The token is not a compact JWS with a JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg` is missing or not one the caller allows.
    #[error("signature algorithm {alg:?} is not allowed (allowed: {allowed})")]
    Algorithm {
        /// The token's `alg`.
        alg: String,
        /// The allowed algorithms, comma-separated.
        allowed: String,
    },
    /// The header has no `kid`.
    #[error("token missing key id")]
    MissingKeyId,
    /// No key of the set has the token's `kid`.
    #[error("key id {0:?} not found")]
    UnknownKeyId(String),
    /// The key does not fit the algorithm (e.g. an EC key for RS256).
    #[error("key {key_id:?} is {key} key, which cannot verify {alg}")]
    KeyMismatch {
        /// The key's ID.
        key_id: String,
        /// What the key is.
        key: String,
        /// The token's algorithm.
        alg: JwtAlgorithm,
    },
    /// The signature does not verify with the key.
    #[error("signature does not verify with key {0:?}")]
    BadSignature(String),
    /// A registered claim has the wrong type, or a required one is missing.
    #[error("claim {0:?} is missing or malformed")]
    Claim(&'static str),
    /// `exp` has passed.
    #[error("token is expired (exp {exp}, now {now})")]
    Expired {
        /// The token's expiry (Unix seconds).
        exp: i64,
        /// The time checked against.
        now: i64,
    },
    /// `nbf` is in the future.
    #[error("token not valid yet (nbf {nbf}, now {now})")]
    NotYetValid {
        /// The token's not-before (Unix seconds).
        nbf: i64,
        /// The time checked against.
        now: i64,
    },
    /// `iat` is in the future.
    #[error("token issued in the future (iat {iat}, now {now})")]
    IssuedInFuture {
        /// The token's issue time (Unix seconds).
        iat: i64,
        /// The time checked against.
        now: i64,
    },
    /// `aud` names none of the expected audiences.
    #[error("invalid audience claim: expected one of {expected:?}, got {actual:?}")]
    Audience {
        /// What the caller accepts.
        expected: Vec<String>,
        /// What the token carries.
        actual: Vec<String>,
    },
}

/// A provider's verification keys by key ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: BTreeMap<String, PublicKeyParams>,
}

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`), as OpenID providers publish at `jwks_uri`.
    /// Keys without a `kid` cannot be chosen by a token and are skipped; keys of unsupported
    /// types (e.g. `oct`) are skipped too, as go-jose's lookup would never pick them for an
    /// asymmetric algorithm.
    pub fn from_jwks(document: &[u8]) -> Result<Self, JwsError> {
        #[derive(serde::Deserialize)]
        struct Jwks {
            keys: Vec<Value>,
        }
        let jwks: Jwks = serde_json::from_slice(document)
            .map_err(|e| JwsError::KeySet(format!("not a JWKS document: {e}")))?;
        let mut keys = BTreeMap::new();
        for (i, jwk) in jwks.keys.into_iter().enumerate() {
            match jwk_public_key(jwk) {
                Ok((Some(kid), params)) if !kid.is_empty() => {
                    keys.insert(kid, params);
                }
                Ok(_) => {}
                Err(e) if e.starts_with("unsupported key type") => {}
                Err(e) => return Err(JwsError::KeySet(format!("key {i}: {e}"))),
            }
        }
        Ok(Self { keys })
    }

    /// Reads Google's certificate map (`https://www.googleapis.com/oauth2/v1/certs`): an
    /// object of key ID to PEM certificate, the key being the certificate's.
    pub fn from_x509_map(document: &[u8]) -> Result<Self, JwsError> {
        let map: BTreeMap<String, String> = serde_json::from_slice(document).map_err(|e| {
            JwsError::KeySet(format!("unable to unmarshal certificate response: {e}"))
        })?;
        let mut keys = BTreeMap::new();
        for (kid, pem) in map {
            let der = crate::pem::decode_certificates(pem.as_bytes())
                .ok()
                .and_then(|c| c.into_iter().next())
                .ok_or_else(|| {
                    JwsError::KeySet(format!(
                        "unable to unmarshal certificate response: malformed PEM block for key \
                         {kid:?}"
                    ))
                })?;
            let params = certificate_public_key(&der).map_err(|e| {
                JwsError::KeySet(format!(
                    "unable to unmarshal certificate response: malformed certificate for key \
                     {kid:?}: {e}"
                ))
            })?;
            keys.insert(kid, params);
        }
        Ok(Self { keys })
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The JWK of a public key (SPKI DER) with key ID `kid`, as a JWKS lists it: what a loopback
/// stand-in for a provider serves its signing keys as.
pub fn public_jwk(spki_der: &[u8], kid: &str) -> Result<Value, JwsError> {
    let params = PublicKeyParams::from_spki(spki_der).map_err(JwsError::KeySet)?;
    let mut jwk =
        serde_json::to_value(params.to_jwk_value()).map_err(|e| JwsError::KeySet(e.to_string()))?;
    if let Value::Object(fields) = &mut jwk {
        fields.insert("kid".into(), Value::from(kid));
        fields.insert("use".into(), Value::from("sig"));
    }
    Ok(jwk)
}

/// Verifies the signature of the compact JWS `token` with the key its `kid` names in `keys`,
/// using one of `allowed` algorithms, and returns its claims. Times and audience are not
/// checked here: see [`check_claims`].
pub fn verify(
    token: &str,
    keys: &KeySet,
    allowed: &[JwtAlgorithm],
) -> Result<Map<String, Value>, JwsError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwsError::Malformed(format!(
            "token is {} bytes, more than {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed(
            "not a compact JWS (three dot-separated parts)".into(),
        ));
    };
    let decode = |part: &str, name: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwsError::Malformed(format!("{name} is not base64url")))
    };
    let header: Map<String, Value> = serde_json::from_slice(&decode(header, "header")?)
        .map_err(|e| JwsError::Malformed(format!("header is not a JSON object: {e}")))?;
    let allowed_names = || {
        allowed
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = allowed
        .iter()
        .copied()
        .find(|a| a.as_str() == alg_name)
        .ok_or_else(|| JwsError::Algorithm {
            alg: alg_name.to_owned(),
            allowed: allowed_names(),
        })?;
    if header.contains_key("crit") {
        return Err(JwsError::Malformed(
            "critical header parameters are not supported".into(),
        ));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(JwsError::MissingKeyId)?;
    let key = keys
        .keys
        .get(kid)
        .ok_or_else(|| JwsError::UnknownKeyId(kid.to_owned()))?;
    if !alg.fits(key) {
        return Err(JwsError::KeyMismatch {
            key_id: kid.to_owned(),
            key: key.describe(),
            alg,
        });
    }
    let signature = decode(signature, "signature")?;
    let spki = key
        .to_spki()
        .map_err(|e| JwsError::KeySet(format!("key {kid:?}: {e}")))?;
    let public = ParsedPublicKey::new(alg.verification(), spki)
        .map_err(|e| JwsError::KeySet(format!("key {kid:?}: {e}")))?;
    let signing_input_len = token.len() - signature_len(token);
    let signing_input = token.get(..signing_input_len).unwrap_or_default();
    public
        .verify_sig(signing_input.as_bytes(), &signature)
        .map_err(|_| JwsError::BadSignature(kid.to_owned()))?;
    serde_json::from_slice(&decode(payload, "claims")?)
        .map_err(|e| JwsError::Malformed(format!("claims are not a JSON object: {e}")))
}

/// Signs `claims` with `key` using `alg` into a compact JWS whose header is `alg`, `typ: JWT`
/// and `kid` when given: the assertion of an OAuth JWT-bearer grant (a service account
/// signing its token request), and the tokens tests stand in for a provider with.
pub fn sign(
    key: &PrivateKey,
    alg: JwtAlgorithm,
    key_id: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<String, JwsError> {
    let mut header = Map::new();
    header.insert("alg".into(), Value::from(alg.as_str()));
    if let Some(kid) = key_id {
        header.insert("kid".into(), Value::from(kid));
    }
    header.insert("typ".into(), Value::from("JWT"));
    let encode = |v: &Map<String, Value>| {
        serde_json::to_vec(v)
            .map(|b| URL_SAFE_NO_PAD.encode(b))
            .map_err(|e| JwsError::Malformed(e.to_string()))
    };
    let signing_input = format!("{}.{}", encode(&header)?, encode(claims)?);
    let signature = crate::jwt::sign(key, alg, signing_input.as_bytes())
        .map_err(|e| JwsError::Malformed(e.to_string()))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The length of the signature part and its dot.
fn signature_len(token: &str) -> usize {
    token.rsplit_once('.').map_or(0, |(_, s)| s.len() + 1)
}

/// Checks the registered claims as go-jose's `Expected.ValidateWithLeeway` does with
/// `AnyAudience`: `exp` (required here), `nbf` and `iat` against `now` (Unix seconds) with
/// `leeway` seconds, and that `aud` holds at least one of `audiences`.
pub fn check_claims(
    claims: &Map<String, Value>,
    audiences: &[&str],
    now: i64,
    leeway: i64,
) -> Result<(), JwsError> {
    let exp = numeric_date(claims, "exp")?.ok_or(JwsError::Claim("exp"))?;
    if now.saturating_sub(leeway) > exp {
        return Err(JwsError::Expired { exp, now });
    }
    let later = now.saturating_add(leeway);
    if let Some(nbf) = numeric_date(claims, "nbf")?.filter(|nbf| later < *nbf) {
        return Err(JwsError::NotYetValid { nbf, now });
    }
    if let Some(iat) = numeric_date(claims, "iat")?.filter(|iat| later < *iat) {
        return Err(JwsError::IssuedInFuture { iat, now });
    }
    let actual: Vec<String> = match claims.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(JwsError::Claim("aud")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwsError::Claim("aud")),
    };
    if !audiences.iter().any(|a| actual.iter().any(|b| b == a)) {
        return Err(JwsError::Audience {
            expected: audiences.iter().map(|a| (*a).to_owned()).collect(),
            actual,
        });
    }
    Ok(())
}

/// A NumericDate claim; fractions are truncated, as go-jose does.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwsError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                #[allow(clippy::cast_possible_truncation, reason = "go-jose truncates")]
                n.as_f64().map(|f| f as i64)
            })
            .map(Some)
            .ok_or(JwsError::Claim(name)),
        Some(_) => Err(JwsError::Claim(name)),
    }
}

#[cfg(test)]
mod tests;
