//! The JWK Set served at `/keys`: one key per JWT authority, members in go-jose's order
//! (`use, kty, kid, crv, alg, x, y, n, e`), `alg` from the key as upstream's
//! `JoseAlgFromPublicKey` picks it, and the document indented as Go's `json.MarshalIndent`
//! with two spaces writes it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use spire_core::bundle::Bundle;
use spire_core::jwt::JwtAuthority;
use spire_core::spiffe_id::TrustDomain;

/// The `use` every key gets with `set_key_use`.
const KEY_USE_SIG: &str = "sig";

/// One key of the served set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `use`: absent unless `set_key_use` (then `sig`).
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// `kty`: `EC` or `RSA`.
    pub kty: String,
    /// `kid`: the authority's key ID, which tokens name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `crv` of EC keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// `alg`: RS256, ES256 or ES384; absent for keys upstream finds no algorithm for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// EC `x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC `y`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA `e`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// The JWK of one JWT authority, or why its public key cannot be one.
pub fn jwk_of(authority: &JwtAuthority) -> Result<Jwk, String> {
    // The bundle document writer knows how to turn a SubjectPublicKeyInfo into JWK members;
    // a one-key bundle borrows it.
    let trust_domain = TrustDomain::new("oidc.invalid").map_err(|e| e.to_string())?;
    let mut bundle = Bundle::new(trust_domain);
    bundle
        .add_jwt_authority(authority.clone())
        .map_err(|e| e.to_string())?;
    let document = bundle.to_spiffe_document().map_err(|e| e.to_string())?;
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<Jwk>,
    }
    let parsed: Document = serde_json::from_str(&document).map_err(|e| e.to_string())?;
    let mut jwk = parsed
        .keys
        .into_iter()
        .next()
        .ok_or_else(|| "the key made no JWK".to_owned())?;
    jwk.key_use = None;
    jwk.alg = algorithm(&jwk);
    Ok(jwk)
}

/// Upstream's `JoseAlgFromPublicKey`: RS256 for RSA keys of 2048 bits or more, ES256 and
/// ES384 for P-256 and P-384; nothing for anything else.
fn algorithm(jwk: &Jwk) -> Option<String> {
    match jwk.kty.as_str() {
        "RSA" => {
            let modulus = jwk.n.as_deref()?;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(modulus)
                .ok()?;
            let significant = bytes.iter().skip_while(|b| **b == 0).count();
            (significant >= 256).then(|| "RS256".to_owned())
        }
        "EC" => match jwk.crv.as_deref() {
            Some("P-256") => Some("ES256".to_owned()),
            Some("P-384") => Some("ES384".to_owned()),
            _ => None,
        },
        _ => None,
    }
}

/// The `/keys` body: `{"keys": [...]}` (`null` when there are no keys, as go-jose writes an
/// empty set), `use` set to `sig` on every key when `set_key_use`.
pub fn render(keys: &[Jwk], set_key_use: bool) -> String {
    #[derive(Serialize)]
    struct Set<'a> {
        keys: Option<Vec<Jwk>>,
        #[serde(skip)]
        _marker: std::marker::PhantomData<&'a ()>,
    }
    let keys = (!keys.is_empty()).then(|| {
        keys.iter()
            .cloned()
            .map(|mut key| {
                if set_key_use {
                    key.key_use = Some(KEY_USE_SIG.to_owned());
                }
                key
            })
            .collect()
    });
    go_json_indent(&Set {
        keys,
        _marker: std::marker::PhantomData,
    })
}

/// `value` as Go's `json.MarshalIndent(value, "", "  ")` writes it: two-space indent, and
/// `<`, `>`, `&`, U+2028 and U+2029 escaped (they can only occur inside strings).
pub fn go_json_indent<T: Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"  ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    if value.serialize(&mut serializer).is_err() {
        return String::new();
    }
    let text = String::from_utf8(out).unwrap_or_default();
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use spire_core::keys::{KeyType, PrivateKey};

    use super::*;

    fn authority(key_type: KeyType, kid: &str) -> JwtAuthority {
        JwtAuthority {
            key_id: kid.to_owned(),
            public_key_der: PrivateKey::generate(key_type).unwrap().public_key_der(),
            expires_at: None,
        }
    }

    #[test]
    fn keys_get_upstreams_members_and_algorithms() {
        let ec = jwk_of(&authority(KeyType::EcP256, "k1")).unwrap();
        assert_eq!(ec.kty, "EC");
        assert_eq!(ec.kid.as_deref(), Some("k1"));
        assert_eq!(ec.crv.as_deref(), Some("P-256"));
        assert_eq!(ec.alg.as_deref(), Some("ES256"));
        assert!(ec.key_use.is_none());
        let ec384 = jwk_of(&authority(KeyType::EcP384, "k2")).unwrap();
        assert_eq!(ec384.alg.as_deref(), Some("ES384"));
        let rsa = jwk_of(&authority(KeyType::Rsa2048, "k3")).unwrap();
        assert_eq!(rsa.alg.as_deref(), Some("RS256"));
        assert!(rsa.n.is_some() && rsa.e.is_some() && rsa.x.is_none());

        let text = render(std::slice::from_ref(&ec), false);
        let expected_prefix = "{\n  \"keys\": [\n    {\n      \"kty\": \"EC\",\n      \"kid\": \"k1\",\n      \"crv\": \"P-256\",\n      \"alg\": \"ES256\",\n      \"x\": ";
        assert!(text.starts_with(expected_prefix), "{text}");
        let with_use = render(&[ec], true);
        assert!(
            with_use.contains("\"use\": \"sig\",\n      \"kty\""),
            "{with_use}"
        );
    }

    #[test]
    fn an_empty_set_is_null_as_go_jose_writes_it() {
        assert_eq!(render(&[], false), "{\n  \"keys\": null\n}");
    }

    #[test]
    fn a_bad_key_is_an_error() {
        let bad = JwtAuthority {
            key_id: "bad".to_owned(),
            public_key_der: b"not a key".to_vec(),
            expires_at: None,
        };
        assert!(jwk_of(&bad).is_err());
    }

    #[test]
    fn html_characters_are_escaped_as_go_does() {
        #[derive(Serialize)]
        struct Doc {
            uri: String,
        }
        let text = go_json_indent(&Doc {
            uri: "https://a/?x=1&y=<2>".to_owned(),
        });
        assert_eq!(
            text,
            "{\n  \"uri\": \"https://a/?x=1\\u0026y=\\u003c2\\u003e\"\n}"
        );
    }
}
