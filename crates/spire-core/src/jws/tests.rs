#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_json::json;

use super::*;
use crate::keys::KeyType;

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn rsa_set(kid: &str) -> (PrivateKey, KeySet) {
    let key = PrivateKey::generate(KeyType::Rsa2048).unwrap();
    let jwks = json!({"keys": [public_jwk(&key.public_key_der(), kid).unwrap()]});
    let set = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
    (key, set)
}

#[test]
fn a_signed_token_verifies_and_tampering_is_refused() {
    let (key, set) = rsa_set("k1");
    let token = sign(
        &key,
        JwtAlgorithm::Rs256,
        Some("k1"),
        &claims(json!({"aud": "a", "exp": 10})),
    )
    .unwrap();
    let got = verify(&token, &set, &[JwtAlgorithm::Rs256]).unwrap();
    assert_eq!(got["aud"], "a");

    // Another claim set under the same signature.
    let (head, rest) = token.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"aud":"b","exp":10}"#);
    let forged = format!("{head}.{forged_claims}.{sig}");
    assert_eq!(
        verify(&forged, &set, &[JwtAlgorithm::Rs256]).unwrap_err(),
        JwsError::BadSignature("k1".into())
    );
    // Signed by another key under the same kid.
    let (other, _) = rsa_set("k1");
    let wrong = sign(&other, JwtAlgorithm::Rs256, Some("k1"), &Map::new()).unwrap();
    assert!(matches!(
        verify(&wrong, &set, &[JwtAlgorithm::Rs256]),
        Err(JwsError::BadSignature(_))
    ));
    // Unknown kid, missing kid, disallowed algorithm, alg none.
    let unknown = sign(&key, JwtAlgorithm::Rs256, Some("k2"), &Map::new()).unwrap();
    assert_eq!(
        verify(&unknown, &set, &[JwtAlgorithm::Rs256]).unwrap_err(),
        JwsError::UnknownKeyId("k2".into())
    );
    let no_kid = sign(&key, JwtAlgorithm::Rs256, None, &Map::new()).unwrap();
    assert_eq!(
        verify(&no_kid, &set, &[JwtAlgorithm::Rs256]).unwrap_err(),
        JwsError::MissingKeyId
    );
    let rs384 = sign(&key, JwtAlgorithm::Rs384, Some("k1"), &Map::new()).unwrap();
    assert!(matches!(
        verify(&rs384, &set, &[JwtAlgorithm::Rs256]),
        Err(JwsError::Algorithm { .. })
    ));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(b"{}")
    );
    assert!(matches!(
        verify(&none, &set, &[JwtAlgorithm::Rs256]),
        Err(JwsError::Algorithm { .. })
    ));
    assert!(matches!(
        verify("a.b", &set, &[JwtAlgorithm::Rs256]),
        Err(JwsError::Malformed(_))
    ));
}

#[test]
fn an_ec_key_cannot_verify_rs256() {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let jwks = json!({"keys": [public_jwk(&key.public_key_der(), "e").unwrap()]});
    let set = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
    let token = sign(&key, JwtAlgorithm::Es256, Some("e"), &Map::new()).unwrap();
    verify(&token, &set, &[JwtAlgorithm::Es256, JwtAlgorithm::Rs256]).unwrap();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"e"}"#);
    let rest = token.split_once('.').unwrap().1;
    assert!(matches!(
        verify(&format!("{header}.{rest}"), &set, &[JwtAlgorithm::Rs256]),
        Err(JwsError::KeyMismatch { .. })
    ));
}

#[test]
fn googles_certificate_map_is_read() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let private = PrivateKey::from_der(&key.serialize_der()).unwrap();
    let map = json!({"abc": cert.pem()});
    let set = KeySet::from_x509_map(map.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    let token = sign(&private, JwtAlgorithm::Rs256, Some("abc"), &Map::new()).unwrap();
    verify(&token, &set, &[JwtAlgorithm::Rs256]).unwrap();
    assert!(KeySet::from_x509_map(br#"{"abc": "not pem"}"#).is_err());
    assert!(KeySet::from_x509_map(b"[]").is_err());
}

#[test]
fn claims_are_checked_with_leeway() {
    let c = claims(json!({"aud": ["x", "y"], "exp": 1000, "nbf": 900, "iat": 900}));
    check_claims(&c, &["y"], 950, 60).unwrap();
    check_claims(&c, &["y"], 1059, 60).unwrap();
    assert!(matches!(
        check_claims(&c, &["y"], 1061, 60),
        Err(JwsError::Expired { .. })
    ));
    assert!(matches!(
        check_claims(&c, &["y"], 800, 60),
        Err(JwsError::NotYetValid { .. })
    ));
    assert!(matches!(
        check_claims(&c, &["z"], 950, 60),
        Err(JwsError::Audience { .. })
    ));
    assert_eq!(
        check_claims(&claims(json!({"aud": "x"})), &["x"], 0, 60),
        Err(JwsError::Claim("exp"))
    );
    assert!(matches!(
        check_claims(
            &claims(json!({"exp": 1000, "iat": 2000, "aud": "x"})),
            &["x"],
            900,
            60
        ),
        Err(JwsError::IssuedInFuture { .. })
    ));
}
