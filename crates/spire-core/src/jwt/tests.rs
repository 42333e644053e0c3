use super::*;

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::hmac;
use aws_lc_rs::signature::KeyPair;

const NOW: i64 = 1_700_000_000;
const AUDIENCE: &str = "spiffe://example.org/db";

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn key(key_type: KeyType) -> PrivateKey {
    PrivateKey::generate(key_type).unwrap()
}

/// A bundle for `trust_domain` holding each `(kid, key)`.
fn bundle(trust_domain: &str, keys: &[(&str, &PrivateKey)]) -> Bundle {
    let mut bundle = Bundle::new(td(trust_domain));
    for (kid, key) in keys {
        bundle
            .add_jwt_authority(JwtAuthority {
                key_id: (*kid).to_owned(),
                public_key_der: key.public_key_der(),
                expires_at: None,
            })
            .unwrap();
    }
    bundle
}

fn params(subject: &str) -> JwtSvidParams {
    JwtSvidParams {
        subject: SpiffeId::parse(subject).unwrap(),
        audience: vec![AUDIENCE.to_owned()],
        expires_at: NOW + 300,
        issued_at: Some(NOW),
        issuer: None,
        algorithm: None,
        jwt_id: None,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(part: &str) -> String {
    let value: Value = serde_json::from_str(part).unwrap();
    b64(serde_json::to_string(&value).unwrap().as_bytes())
}

/// A token with exactly this header and these claims, signed by `key` with `alg`.
fn hand_token(key: &PrivateKey, alg: JwtAlgorithm, header: &str, claims: &str) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let sig = sign(key, alg, input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

fn claims(sub: &str, exp: i64) -> String {
    format!(r#"{{"sub":"{sub}","aud":["{AUDIENCE}"],"exp":{exp},"iat":{NOW}}}"#)
}

fn validate(token: &str, source: &Bundle) -> Result<JwtSvid, JwtSvidError> {
    validate_jwt_svid(token, source, &[AUDIENCE], NOW)
}

fn round_trip(key_type: KeyType, algorithm: Option<JwtAlgorithm>, expected_alg: &str) {
    let key = key(key_type);
    let mut params = params("spiffe://example.org/web");
    params.algorithm = algorithm;
    let token = mint_jwt_svid(&key, "k1", &params).unwrap();

    let header = token.split('.').next().unwrap();
    let header = String::from_utf8(URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(
        header,
        format!(r#"{{"alg":"{expected_alg}","kid":"k1","typ":"JWT"}}"#)
    );

    let svid = validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap();
    assert_eq!(svid.spiffe_id.as_str(), "spiffe://example.org/web");
    assert_eq!(svid.audience, vec![AUDIENCE.to_owned()]);
    assert_eq!(svid.expiry, NOW + 300);
    assert_eq!(svid.key_id, "k1");
    assert_eq!(svid.algorithm.as_str(), expected_alg);
    assert_eq!(svid.token, token);
    assert_eq!(svid.claims["iat"], NOW);
}

#[test]
fn round_trip_es256() {
    round_trip(KeyType::EcP256, None, "ES256");
}

#[test]
fn round_trip_es384() {
    round_trip(KeyType::EcP384, None, "ES384");
}

#[test]
fn round_trip_rs256() {
    round_trip(KeyType::Rsa2048, None, "RS256");
}

#[test]
fn round_trip_ps256() {
    round_trip(KeyType::Rsa2048, Some(JwtAlgorithm::Ps256), "PS256");
}

#[test]
fn claims_are_written_as_upstream_writes_them() {
    let key = key(KeyType::EcP256);
    let mut params = params("spiffe://example.org/web");
    params.issuer = Some("https://oidc.example.org".to_owned());
    let token = mint_jwt_svid(&key, "k1", &params).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(
        payload,
        format!(
            r#"{{"aud":["{AUDIENCE}"],"exp":{},"iat":{NOW},"iss":"https://oidc.example.org","sub":"spiffe://example.org/web"}}"#,
            NOW + 300
        )
    );

    params.issuer = None;
    let token = mint_jwt_svid(&key, "k1", &params).unwrap();
    let svid = parse_jwt_svid_insecure(&token).unwrap();
    assert!(!svid.claims.contains_key("iss"));
}

#[test]
fn minting_refuses_bad_input() {
    let ec = key(KeyType::EcP256);
    let mut p = params("spiffe://example.org/web");
    p.audience.clear();
    assert_eq!(
        mint_jwt_svid(&ec, "k1", &p).unwrap_err(),
        JwtSvidError::EmptyAudience
    );
    p.audience = vec![String::new()];
    assert_eq!(
        mint_jwt_svid(&ec, "k1", &p).unwrap_err(),
        JwtSvidError::EmptyAudience
    );
    let p = params("spiffe://example.org/web");
    assert_eq!(
        mint_jwt_svid(&ec, "", &p).unwrap_err(),
        JwtSvidError::EmptyKeyId
    );
    for alg in [
        JwtAlgorithm::Ps256,
        JwtAlgorithm::Es384,
        JwtAlgorithm::Es512,
    ] {
        let mut p = params("spiffe://example.org/web");
        p.algorithm = Some(alg);
        let err = mint_jwt_svid(&ec, "k1", &p).unwrap_err();
        assert!(
            matches!(err, JwtSvidError::AlgorithmKeyMismatch { .. }),
            "{err}"
        );
    }
}

#[test]
fn default_algorithms_match_upstream() {
    assert_eq!(
        JwtAlgorithm::for_key_type(KeyType::EcP256),
        JwtAlgorithm::Es256
    );
    assert_eq!(
        JwtAlgorithm::for_key_type(KeyType::EcP384),
        JwtAlgorithm::Es384
    );
    assert_eq!(
        JwtAlgorithm::for_key_type(KeyType::Rsa2048),
        JwtAlgorithm::Rs256
    );
    assert_eq!(
        JwtAlgorithm::for_key_type(KeyType::Rsa4096),
        JwtAlgorithm::Rs256
    );
    for alg in JwtAlgorithm::ALL {
        assert_eq!(alg.as_str().parse::<JwtAlgorithm>().unwrap(), alg);
    }
}

#[test]
fn every_rsa_algorithm_verifies() {
    let key = key(KeyType::Rsa2048);
    let source = bundle("example.org", &[("k1", &key)]);
    for alg in JwtAlgorithm::ALL.into_iter().filter(|a| a.is_rsa()) {
        let mut p = params("spiffe://example.org/web");
        p.algorithm = Some(alg);
        let token = mint_jwt_svid(&key, "k1", &p).unwrap();
        assert_eq!(validate(&token, &source).unwrap().algorithm, alg);
    }
}

#[test]
fn es512_token_verifies() {
    let pair = EcdsaKeyPair::generate(&signature::ECDSA_P521_SHA512_FIXED_SIGNING).unwrap();
    let spki: PublicKeyX509Der<'static> = pair.public_key().as_der().unwrap();
    let mut source = Bundle::new(td("example.org"));
    source
        .add_jwt_authority(JwtAuthority {
            key_id: "p521".to_owned(),
            public_key_der: spki.as_ref().to_vec(),
            expires_at: None,
        })
        .unwrap();
    let input = format!(
        "{}.{}",
        b64_json(r#"{"alg":"ES512","kid":"p521"}"#),
        b64_json(&claims("spiffe://example.org/web", NOW + 60))
    );
    let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    let token = format!("{input}.{}", b64(sig.as_ref()));
    assert_eq!(
        validate(&token, &source).unwrap().algorithm,
        JwtAlgorithm::Es512
    );
}

#[test]
fn wrong_audience_is_refused() {
    let key = key(KeyType::EcP256);
    let token = mint_jwt_svid(&key, "k1", &params("spiffe://example.org/web")).unwrap();
    let source = bundle("example.org", &[("k1", &key)]);
    let err = validate_jwt_svid(&token, &source, &["spiffe://example.org/other"], NOW).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::AudienceMismatch { .. }),
        "{err}"
    );
    let err = validate_jwt_svid(&token, &source, &[AUDIENCE, "other"], NOW).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::AudienceMismatch { .. }),
        "{err}"
    );
    let none: [&str; 0] = [];
    assert_eq!(
        validate_jwt_svid(&token, &source, &none, NOW).unwrap_err(),
        JwtSvidError::NoExpectedAudience
    );
}

#[test]
fn single_string_audience_is_accepted() {
    let key = key(KeyType::EcP256);
    let claims = format!(
        r#"{{"sub":"spiffe://example.org/web","aud":"{AUDIENCE}","exp":{}}}"#,
        NOW + 60
    );
    let token = hand_token(
        &key,
        JwtAlgorithm::Es256,
        r#"{"alg":"ES256","kid":"k1","typ":"JOSE"}"#,
        &claims,
    );
    let svid = validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap();
    assert_eq!(svid.audience, vec![AUDIENCE.to_owned()]);
}

#[test]
fn expired_token_is_refused() {
    let key = key(KeyType::EcP256);
    let source = bundle("example.org", &[("k1", &key)]);
    let mut p = params("spiffe://example.org/web");
    p.expires_at = NOW - LEEWAY_SECONDS - 1;
    let token = mint_jwt_svid(&key, "k1", &p).unwrap();
    let err = validate(&token, &source).unwrap_err();
    assert!(matches!(err, JwtSvidError::Expired { .. }), "{err}");

    // Within upstream's one-minute leeway the token is still good.
    p.expires_at = NOW - LEEWAY_SECONDS;
    let token = mint_jwt_svid(&key, "k1", &p).unwrap();
    validate(&token, &source).unwrap();
}

#[test]
fn future_nbf_and_iat_are_refused() {
    let key = key(KeyType::EcP256);
    let source = bundle("example.org", &[("k1", &key)]);
    let header = r#"{"alg":"ES256","kid":"k1"}"#;
    let late = NOW + LEEWAY_SECONDS + 1;
    let base = format!(
        r#""sub":"spiffe://example.org/web","aud":"{AUDIENCE}","exp":{}"#,
        NOW + 600
    );
    let token = hand_token(
        &key,
        JwtAlgorithm::Es256,
        header,
        &format!("{{{base},\"nbf\":{late}}}"),
    );
    let err = validate(&token, &source).unwrap_err();
    assert!(matches!(err, JwtSvidError::NotYetValid { .. }), "{err}");
    let token = hand_token(
        &key,
        JwtAlgorithm::Es256,
        header,
        &format!("{{{base},\"iat\":{late}}}"),
    );
    let err = validate(&token, &source).unwrap_err();
    assert!(matches!(err, JwtSvidError::IssuedInFuture { .. }), "{err}");
}

#[test]
fn missing_exp_is_refused() {
    let key = key(KeyType::EcP256);
    let claims = format!(r#"{{"sub":"spiffe://example.org/web","aud":["{AUDIENCE}"]}}"#);
    let token = hand_token(
        &key,
        JwtAlgorithm::Es256,
        r#"{"alg":"ES256","kid":"k1"}"#,
        &claims,
    );
    assert_eq!(
        validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap_err(),
        JwtSvidError::MissingExpiry
    );
    assert_eq!(
        parse_jwt_svid_insecure(&token).unwrap_err(),
        JwtSvidError::MissingExpiry
    );
}

#[test]
fn missing_or_bad_sub_and_aud_are_refused() {
    let key = key(KeyType::EcP256);
    let source = bundle("example.org", &[("k1", &key)]);
    let header = r#"{"alg":"ES256","kid":"k1"}"#;
    let cases = [
        (
            format!(r#"{{"aud":"a","exp":{NOW}}}"#),
            JwtSvidError::MissingSubject,
        ),
        (
            format!(r#"{{"sub":"spiffe://example.org/web","exp":{NOW}}}"#),
            JwtSvidError::MissingAudience,
        ),
        (
            format!(r#"{{"sub":"spiffe://example.org/web","aud":[],"exp":{NOW}}}"#),
            JwtSvidError::MissingAudience,
        ),
        (
            format!(r#"{{"sub":"spiffe://example.org/web","aud":[1],"exp":{NOW}}}"#),
            JwtSvidError::InvalidClaim { name: "aud" },
        ),
        (
            r#"{"sub":"spiffe://example.org/web","aud":"a","exp":"soon"}"#.to_owned(),
            JwtSvidError::InvalidClaim { name: "exp" },
        ),
    ];
    for (claims, want) in cases {
        let token = hand_token(&key, JwtAlgorithm::Es256, header, &claims);
        assert_eq!(validate(&token, &source).unwrap_err(), want, "{claims}");
    }
    let token = hand_token(
        &key,
        JwtAlgorithm::Es256,
        header,
        &format!(r#"{{"sub":"https://example.org/web","aud":"a","exp":{NOW}}}"#),
    );
    let err = validate(&token, &source).unwrap_err();
    assert!(matches!(err, JwtSvidError::InvalidSubject(_)), "{err}");
}

#[test]
fn alg_none_is_refused() {
    let token = format!(
        "{}.{}.",
        b64_json(r#"{"alg":"none","kid":"k1","typ":"JWT"}"#),
        b64_json(&claims("spiffe://example.org/web", NOW + 60))
    );
    let key = key(KeyType::EcP256);
    let err = validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap_err();
    assert_eq!(
        err,
        JwtSvidError::UnsupportedAlgorithm {
            alg: "none".to_owned()
        }
    );
    assert!(parse_jwt_svid_insecure(&token).is_err());
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let key = key(KeyType::EcP256);
    let input = format!(
        "{}.{}",
        b64_json(r#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#),
        b64_json(&claims("spiffe://example.org/web", NOW + 60))
    );
    let mac_key = hmac::Key::new(hmac::HMAC_SHA256, &key.public_key_der());
    let tag = hmac::sign(&mac_key, input.as_bytes());
    let token = format!("{input}.{}", b64(tag.as_ref()));
    let err = validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap_err();
    assert_eq!(
        err,
        JwtSvidError::UnsupportedAlgorithm {
            alg: "HS256".to_owned()
        }
    );
}

#[test]
fn algorithm_must_fit_the_authority_key() {
    let rsa = key(KeyType::Rsa2048);
    let ec = key(KeyType::EcP256);
    // An RS256 token whose kid names an EC key, and an ES384 token naming a P-256 key.
    let source = bundle("example.org", &[("ec", &ec), ("rsa", &rsa)]);
    let token = hand_token(
        &rsa,
        JwtAlgorithm::Rs256,
        r#"{"alg":"RS256","kid":"ec"}"#,
        &claims("spiffe://example.org/web", NOW + 60),
    );
    let err = validate(&token, &source).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::AlgorithmKeyMismatch { .. }),
        "{err}"
    );
    let p384 = key(KeyType::EcP384);
    let token = hand_token(
        &p384,
        JwtAlgorithm::Es384,
        r#"{"alg":"ES384","kid":"ec"}"#,
        &claims("spiffe://example.org/web", NOW + 60),
    );
    let err = validate(&token, &source).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::AlgorithmKeyMismatch { .. }),
        "{err}"
    );
}

#[test]
fn unknown_kid_is_refused() {
    let key = key(KeyType::EcP256);
    let token = mint_jwt_svid(&key, "k2", &params("spiffe://example.org/web")).unwrap();
    let err = validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap_err();
    assert!(
        matches!(&err, JwtSvidError::UnknownKeyId { key_id, .. } if key_id == "k2"),
        "{err}"
    );
}

#[test]
fn missing_kid_is_refused() {
    let key = key(KeyType::EcP256);
    let claims = claims("spiffe://example.org/web", NOW + 60);
    for header in [
        r#"{"alg":"ES256","typ":"JWT"}"#,
        r#"{"alg":"ES256","kid":""}"#,
    ] {
        let token = hand_token(&key, JwtAlgorithm::Es256, header, &claims);
        assert_eq!(
            validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap_err(),
            JwtSvidError::MissingKeyId
        );
        assert_eq!(
            parse_jwt_svid_insecure(&token).unwrap_err(),
            JwtSvidError::MissingKeyId
        );
    }
}

#[test]
fn extra_header_field_is_refused() {
    let key = key(KeyType::EcP256);
    let token = hand_token(
        &key,
        JwtAlgorithm::Es256,
        r#"{"alg":"ES256","kid":"k1","jku":"https://evil.example/keys"}"#,
        &claims("spiffe://example.org/web", NOW + 60),
    );
    assert_eq!(
        validate(&token, &bundle("example.org", &[("k1", &key)])).unwrap_err(),
        JwtSvidError::UnexpectedHeader {
            name: "jku".to_owned()
        }
    );
}

#[test]
fn typ_must_be_jwt_or_jose() {
    let key = key(KeyType::EcP256);
    let source = bundle("example.org", &[("k1", &key)]);
    let claims = claims("spiffe://example.org/web", NOW + 60);
    for typ in ["JWT", "JOSE", "jwt"] {
        let header = format!(r#"{{"alg":"ES256","kid":"k1","typ":"{typ}"}}"#);
        validate(
            &hand_token(&key, JwtAlgorithm::Es256, &header, &claims),
            &source,
        )
        .unwrap();
    }
    let header = r#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#;
    let err = validate(
        &hand_token(&key, JwtAlgorithm::Es256, header, &claims),
        &source,
    )
    .unwrap_err();
    assert!(matches!(err, JwtSvidError::UnsupportedType { .. }), "{err}");
}

#[test]
fn key_from_another_trust_domain_is_refused() {
    // Signed by a key of other.org, claiming a subject in example.org.
    let ours = key(KeyType::EcP256);
    let theirs = key(KeyType::EcP256);
    let token = mint_jwt_svid(&theirs, "theirs", &params("spiffe://example.org/web")).unwrap();
    let source = bundle("example.org", &[("ours", &ours)]);
    let err = validate(&token, &source).unwrap_err();
    assert!(matches!(err, JwtSvidError::UnknownKeyId { .. }), "{err}");
    let err = validate(&token, &bundle("other.org", &[("theirs", &theirs)])).unwrap_err();
    assert_eq!(
        err,
        JwtSvidError::NoBundle {
            trust_domain: td("example.org")
        }
    );
}

#[test]
fn only_the_bundle_of_the_subjects_trust_domain_is_used() {
    let ours = key(KeyType::EcP256);
    let theirs = key(KeyType::EcP256);
    let bundles = vec![
        bundle("example.org", &[("ours", &ours), ("shared", &ours)]),
        bundle("other.org", &[("theirs", &theirs), ("shared", &theirs)]),
    ];
    let source: &[Bundle] = &bundles;

    // other.org's key is trusted, but not for example.org subjects.
    let token = mint_jwt_svid(&theirs, "theirs", &params("spiffe://example.org/web")).unwrap();
    let err = validate_jwt_svid(&token, source, &[AUDIENCE], NOW).unwrap_err();
    assert!(matches!(err, JwtSvidError::UnknownKeyId { .. }), "{err}");

    // The same kid in both bundles: example.org's key is the one checked.
    let token = mint_jwt_svid(&theirs, "shared", &params("spiffe://example.org/web")).unwrap();
    let err = validate_jwt_svid(&token, source, &[AUDIENCE], NOW).unwrap_err();
    assert!(matches!(err, JwtSvidError::BadSignature { .. }), "{err}");

    // And the token is good for its own trust domain.
    let token = mint_jwt_svid(&theirs, "shared", &params("spiffe://other.org/web")).unwrap();
    validate_jwt_svid(&token, source, &[AUDIENCE], NOW).unwrap();
    let map: HashMap<TrustDomain, Bundle> = bundles
        .into_iter()
        .map(|b| (b.trust_domain.clone(), b))
        .collect();
    validate_jwt_svid(&token, &map, &[AUDIENCE], NOW).unwrap();
}

#[test]
fn tampered_payload_is_refused() {
    let key = key(KeyType::EcP256);
    let token = mint_jwt_svid(&key, "k1", &params("spiffe://example.org/web")).unwrap();
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64_json(&claims("spiffe://example.org/admin", NOW + 60));
    parts[1] = &forged;
    let err = validate(&parts.join("."), &bundle("example.org", &[("k1", &key)])).unwrap_err();
    assert!(matches!(err, JwtSvidError::BadSignature { .. }), "{err}");
}

#[test]
fn four_part_token_is_refused() {
    let key = key(KeyType::EcP256);
    let token = mint_jwt_svid(&key, "k1", &params("spiffe://example.org/web")).unwrap();
    let err = validate(
        &format!("{token}.e30"),
        &bundle("example.org", &[("k1", &key)]),
    )
    .unwrap_err();
    assert_eq!(err, JwtSvidError::NotCompact { parts: 4 });
}

#[test]
fn huge_token_is_refused() {
    let token = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        parse_jwt_svid_insecure(&token).unwrap_err(),
        JwtSvidError::TooLarge {
            len: MAX_TOKEN_LEN + 1
        }
    );
}

#[test]
fn garbage_never_panics() {
    let key = key(KeyType::EcP256);
    let source = bundle("example.org", &[("k1", &key)]);
    let inputs = [
        String::new(),
        ".".to_owned(),
        "..".to_owned(),
        "...".to_owned(),
        "a.b.c".to_owned(),
        "e30.e30.e30".to_owned(),
        "W10.W10.AA".to_owned(),
        "bnVsbA.bnVsbA.AA".to_owned(),
        "eyJhbGciOiJFUzI1NiJ9=.e30.AA".to_owned(),
        "\u{1F600}.\u{1F600}.\u{1F600}".to_owned(),
        format!("{}.e30.AA", b64_json(r#"{"alg":12,"kid":"k1"}"#)),
        format!("{}.e30.AA", b64_json(r#"{"alg":"ES256","kid":[]}"#)),
        format!("{}.W10.AA", b64_json(r#"{"alg":"ES256","kid":"k1"}"#)),
        format!(
            "{}.{}.AA",
            b64_json(r#"{"alg":"ES256","kid":"k1"}"#),
            b64_json(&claims("spiffe://example.org/web", NOW))
        ),
        format!(
            "{}.{}.",
            b64_json(r#"{"alg":"ES256","kid":"k1"}"#),
            b64_json(r#"{"sub":"spiffe://example.org/w","aud":"a","exp":1e300}"#)
        ),
    ];
    for input in &inputs {
        assert!(validate(input, &source).is_err(), "{input:?} was accepted");
        let _ = parse_jwt_svid_insecure(input);
    }
    let long_alg = format!(r#"{{"alg":"{}","kid":"k1"}}"#, "A".repeat(1000));
    let err = parse_jwt_svid_insecure(&format!("{}.e30.AA", b64_json(&long_alg))).unwrap_err();
    assert!(err.to_string().len() < 200, "{err}");
}

#[test]
fn insecure_parse_reads_claims_but_keeps_structure_checks() {
    let key = key(KeyType::EcP256);
    let mut p = params("spiffe://example.org/web");
    p.expires_at = NOW - 3600;
    let token = mint_jwt_svid(&key, "k1", &p).unwrap();
    let svid = parse_jwt_svid_insecure(&token).unwrap();
    assert_eq!(svid.spiffe_id.trust_domain(), td("example.org"));
    assert_eq!(svid.key_id, "k1");
    assert_eq!(svid.expiry, NOW - 3600);

    let token = hand_token(
        &key,
        JwtAlgorithm::Es256,
        r#"{"alg":"ES256","kid":"k1","x5u":"https://evil.example"}"#,
        &claims("spiffe://example.org/web", NOW),
    );
    assert!(matches!(
        parse_jwt_svid_insecure(&token).unwrap_err(),
        JwtSvidError::UnexpectedHeader { .. }
    ));
}

#[test]
fn debug_never_prints_the_token() {
    let key = key(KeyType::EcP256);
    let token = mint_jwt_svid(&key, "k1", &params("spiffe://example.org/web")).unwrap();
    let svid = parse_jwt_svid_insecure(&token).unwrap();
    let shown = format!("{svid:?}");
    assert!(!shown.contains(&token));
    assert!(!shown.contains(token.split('.').nth(2).unwrap()));
    assert!(shown.contains("spiffe://example.org/web"));
}
