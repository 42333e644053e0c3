use super::*;

use crate::keys::{KeyType, PrivateKey};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn key(key_type: KeyType) -> PrivateKey {
    PrivateKey::generate(key_type).unwrap()
}

/// A self-signed CA certificate for `key`.
fn ca_cert(key: &PrivateKey, name: &str) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(vec!["example.org".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.self_signed(key.key_pair()).unwrap().der().to_vec()
}

fn jwt_authority(kid: &str, key: &PrivateKey) -> JwtAuthority {
    JwtAuthority {
        key_id: kid.to_owned(),
        public_key_der: key.public_key_der(),
        expires_at: None,
    }
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `x` and `y` of a P-256 key, read straight off its 91-byte SPKI.
fn p256_xy(key: &PrivateKey) -> (String, String) {
    let spki = key.public_key_der();
    assert_eq!(spki.len(), 91);
    (b64url(&spki[27..59]), b64url(&spki[59..91]))
}

/// `n` and `e` of an RSA key, as aws-lc-rs gives them.
fn rsa_ne(key: &PrivateKey) -> (String, String) {
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
    let parts = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(
        aws_lc_rs::signature::KeyPair::public_key(&pair),
    );
    (b64url(&parts.n), b64url(&parts.e))
}

fn parse(document: &str) -> Result<Bundle, BundleError> {
    Bundle::from_spiffe_document(td(), document.as_bytes())
}

#[test]
fn json_round_trip_keeps_every_authority() {
    let p256 = key(KeyType::EcP256);
    let p384 = key(KeyType::EcP384);
    let rsa = key(KeyType::Rsa2048);
    let mut bundle = Bundle::new(td());
    for k in [&p256, &p384, &rsa] {
        assert!(bundle.add_x509_authority(ca_cert(k, "root")).unwrap());
    }
    for (kid, k) in [("a", &p256), ("b", &p384), ("c", &rsa)] {
        assert!(bundle.add_jwt_authority(jwt_authority(kid, k)).unwrap());
    }
    bundle.sequence_number = 42;
    bundle.refresh_hint = Some(Duration::from_secs(300));

    let document = bundle.to_spiffe_document().unwrap();
    let back = parse(&document).unwrap();
    assert_eq!(back, bundle);
    assert_eq!(back.to_spiffe_document().unwrap(), document);
}

#[test]
fn output_layout_matches_upstream() {
    let ec = key(KeyType::EcP256);
    let rsa = key(KeyType::Rsa2048);
    let cert = ca_cert(&ec, "root");
    let mut bundle = Bundle::new(td());
    bundle.add_x509_authority(cert.clone()).unwrap();
    bundle
        .add_jwt_authority(jwt_authority("kid-1", &rsa))
        .unwrap();
    bundle.sequence_number = 7;
    bundle.refresh_hint = Some(Duration::from_millis(299_500));

    let (x, y) = p256_xy(&ec);
    let (n, e) = rsa_ne(&rsa);
    assert_eq!(e, "AQAB");
    let cert = STANDARD.encode(&cert);
    // go-jose's member order, four-space indent, refresh hint rounded up to whole seconds.
    let expected = format!(
        r#"{{
    "keys": [
        {{
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": "{x}",
            "y": "{y}",
            "x5c": [
                "{cert}"
            ]
        }},
        {{
            "use": "jwt-svid",
            "kty": "RSA",
            "kid": "kid-1",
            "n": "{n}",
            "e": "AQAB"
        }}
    ],
    "spiffe_sequence": 7,
    "spiffe_refresh_hint": 300
}}"#
    );
    assert_eq!(bundle.to_spiffe_document().unwrap(), expected);
}

#[test]
fn empty_bundle_writes_an_empty_key_list() {
    let document = Bundle::new(td()).to_spiffe_document().unwrap();
    assert_eq!(document, "{\n    \"keys\": []\n}");
    let back = parse(&document).unwrap();
    assert!(back.is_empty());
}

#[test]
fn parses_a_document_written_elsewhere() {
    // The layout of the standard's Appendix A: tabs, sequence first, `kty` before `use`,
    // `x5c` before the key parameters, plus members we do not know.
    let rsa = key(KeyType::Rsa2048);
    let p384 = key(KeyType::EcP384);
    let cert = ca_cert(&rsa, "root");
    let (n, e) = rsa_ne(&rsa);
    let spki = p384.public_key_der();
    let (x, y) = (b64url(&spki[24..72]), b64url(&spki[72..120]));
    let document = format!(
        "{{\n\t\"spiffe_sequence\": 2,\n\t\"spiffe_refresh_hint\": 2419200,\n\t\"keys\": [\n\
         \t\t{{\"kty\": \"RSA\", \"use\": \"x509-svid\", \"x5c\": [\"{}\"], \"n\": \"{n}\", \
         \"e\": \"{e}\", \"alg\": \"RS256\"}},\n\
         \t\t{{\"kty\": \"EC\", \"use\": \"jwt-svid\", \"kid\": \"C6vs25welZOx6WksNYfbMfiw9l96pMnD\", \
         \"crv\": \"P-384\", \"x\": \"{x}\", \"y\": \"{y}\", \"key_ops\": [\"verify\"]}}\n\
         \t],\n\t\"extension\": {{\"anything\": true}}\n}}\n",
        STANDARD.encode(&cert)
    );
    let bundle = parse(&document).unwrap();
    assert_eq!(bundle.sequence_number, 2);
    assert_eq!(bundle.refresh_hint, Some(Duration::from_secs(2_419_200)));
    assert_eq!(bundle.x509_authorities, vec![cert]);
    let jwt = bundle
        .jwt_authority("C6vs25welZOx6WksNYfbMfiw9l96pMnD")
        .unwrap();
    assert_eq!(jwt.public_key_der, spki);
    assert_eq!(jwt.expires_at, None);
}

#[test]
fn unknown_use_and_kty_are_ignored() {
    let ec = key(KeyType::EcP256);
    let (x, y) = p256_xy(&ec);
    let document = format!(
        r#"{{"keys": [
            {{"use": "wit-svid", "kty": "EC", "kid": "w", "crv": "P-256", "x": "{x}", "y": "{y}"}},
            {{"kty": "EC", "kid": "no-use", "crv": "P-256", "x": "{x}", "y": "{y}"}},
            {{"use": "jwt-svid", "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"}},
            {{"use": 7, "kid": 7}},
            {{"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "P-256", "x": "{x}", "y": "{y}"}}
        ]}}"#
    );
    let bundle = parse(&document).unwrap();
    assert_eq!(bundle.jwt_authorities, vec![jwt_authority("k", &ec)]);
    assert!(bundle.x509_authorities.is_empty());
}

#[test]
fn missing_keys_is_rejected() {
    for document in ["{}", r#"{"keys": null}"#, r#"{"spiffe_sequence": 1}"#] {
        assert_eq!(parse(document).unwrap_err(), BundleError::MissingKeys);
    }
    let bundle = parse(r#"{"keys": [], "spiffe_sequence": 3}"#).unwrap();
    assert!(bundle.is_empty());
    assert_eq!(bundle.sequence_number, 3);
}

#[test]
fn x5c_with_two_certificates_is_rejected() {
    let ec = key(KeyType::EcP256);
    let (x, y) = p256_xy(&ec);
    let cert = STANDARD.encode(ca_cert(&ec, "root"));
    for (x5c, found) in [
        (format!(r#"["{cert}", "{cert}"]"#), 2),
        ("[]".to_owned(), 0),
    ] {
        let document = format!(
            r#"{{"keys": [{{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "{x}", "y": "{y}", "x5c": {x5c}}}]}}"#
        );
        assert_eq!(
            parse(&document).unwrap_err(),
            BundleError::X5cCount { index: 0, found }
        );
    }
}

#[test]
fn x5c_must_match_the_key_parameters() {
    let ec = key(KeyType::EcP256);
    let other = key(KeyType::EcP256);
    let (x, y) = p256_xy(&other);
    let cert = STANDARD.encode(ca_cert(&ec, "root"));
    let document = format!(
        r#"{{"keys": [{{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "{x}", "y": "{y}", "x5c": ["{cert}"]}}]}}"#
    );
    assert_eq!(
        parse(&document).unwrap_err(),
        BundleError::X5cKeyMismatch { index: 0 }
    );
}

#[test]
fn jwt_svid_without_kid_is_rejected() {
    let ec = key(KeyType::EcP256);
    let (x, y) = p256_xy(&ec);
    for kid in ["", r#""kid": "","#] {
        let document = format!(
            r#"{{"keys": [{{"use": "jwt-svid", "kty": "EC", {kid} "crv": "P-256", "x": "{x}", "y": "{y}"}}]}}"#
        );
        assert_eq!(
            parse(&document).unwrap_err(),
            BundleError::MissingKeyId { index: 0 }
        );
    }
}

#[test]
fn duplicates_are_merged_and_conflicting_kids_rejected() {
    let ec = key(KeyType::EcP256);
    let other = key(KeyType::EcP256);
    let (x, y) = p256_xy(&ec);
    let (ox, oy) = p256_xy(&other);
    let cert = STANDARD.encode(ca_cert(&ec, "root"));
    let x509 = format!(
        r#"{{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "{x}", "y": "{y}", "x5c": ["{cert}"]}}"#
    );
    let jwt = format!(
        r#"{{"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "P-256", "x": "{x}", "y": "{y}"}}"#
    );
    let bundle = parse(&format!(r#"{{"keys": [{x509}, {x509}, {jwt}, {jwt}]}}"#)).unwrap();
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert_eq!(bundle.jwt_authorities.len(), 1);

    let conflicting = format!(
        r#"{{"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "P-256", "x": "{ox}", "y": "{oy}"}}"#
    );
    assert_eq!(
        parse(&format!(r#"{{"keys": [{jwt}, {conflicting}]}}"#)).unwrap_err(),
        BundleError::ConflictingKeyId("k".to_owned())
    );
}

#[test]
fn malformed_key_parameters_are_rejected() {
    let ec = key(KeyType::EcP256);
    let (x, y) = p256_xy(&ec);
    let entry = |crv: &str, x: &str, y: &str| {
        format!(
            r#"{{"keys": [{{"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "{crv}", "x": "{x}", "y": "{y}"}}]}}"#
        )
    };
    // Bad base64, wrong coordinate length, a point off the curve, an unknown curve, no y.
    let off_curve = b64url(&[1u8; 32]);
    for document in [
        entry("P-256", "!!!!", &y),
        entry("P-256", &x, &b64url(&[1u8; 31])),
        entry("P-256", &x, &off_curve),
        entry("P-384", &x, &y),
        entry("secp256k1", &x, &y),
        format!(
            r#"{{"keys": [{{"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "P-256", "x": "{x}"}}]}}"#
        ),
        r#"{"keys": [{"use": "jwt-svid", "kty": "RSA", "kid": "k", "n": "AA", "e": "AQAB"}]}"#
            .to_owned(),
        r#"{"keys": [{"use": "jwt-svid", "kid": "k"}]}"#.to_owned(),
    ] {
        let err = parse(&document).unwrap_err();
        assert!(
            matches!(err, BundleError::Entry { index: 0, .. }),
            "{document}: {err}"
        );
    }
    // Padded base64url parameters are accepted, as go-jose does.
    parse(&entry("P-256", &format!("{x}="), &format!("{y}="))).unwrap();
}

#[test]
fn bad_top_level_values_are_rejected() {
    for document in [
        "[]",
        "null",
        "\"keys\"",
        "{\"keys\": {}}",
        "{\"keys\": [1]}",
    ] {
        assert!(parse(document).is_err(), "{document}");
    }
    assert_eq!(
        parse(r#"{"keys": [], "spiffe_refresh_hint": -5}"#).unwrap_err(),
        BundleError::NegativeRefreshHint(-5)
    );
    assert!(matches!(
        parse(r#"{"keys": [], "spiffe_sequence": -1}"#).unwrap_err(),
        BundleError::Json(_)
    ));
}

#[test]
fn spki_and_jwk_parameters_convert_both_ways() {
    let p521 = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED_SIGNING,
    )
    .unwrap();
    let p521: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
        aws_lc_rs::signature::KeyPair::public_key(&p521)
            .as_der()
            .unwrap();
    let mut spkis = vec![p521.as_ref().to_vec()];
    for t in KeyType::ALL {
        spkis.push(key(t).public_key_der());
    }
    for spki in spkis {
        let params = PublicKeyParams::from_spki(&spki).unwrap();
        assert_eq!(params.to_spki().unwrap(), spki, "{}", params.describe());
        assert_eq!(PublicKeyParams::from_jwk(&params.to_jwk()).unwrap(), params);
    }
}

#[test]
fn add_helpers_dedup_and_validate() {
    let ec = key(KeyType::EcP256);
    let cert = ca_cert(&ec, "root");
    let mut bundle = Bundle::new(td());
    assert!(bundle.is_empty());
    assert!(bundle.add_x509_authority(cert.clone()).unwrap());
    assert!(!bundle.add_x509_authority(cert).unwrap());
    assert!(matches!(
        bundle.add_x509_authority(b"not a certificate".to_vec()),
        Err(BundleError::BadCertificate(_))
    ));
    assert!(bundle.add_jwt_authority(jwt_authority("k", &ec)).unwrap());
    assert!(!bundle.add_jwt_authority(jwt_authority("k", &ec)).unwrap());
    assert_eq!(
        bundle
            .add_jwt_authority(jwt_authority("", &ec))
            .unwrap_err(),
        BundleError::EmptyKeyId
    );
    assert!(matches!(
        bundle.add_jwt_authority(JwtAuthority {
            key_id: "junk".to_owned(),
            public_key_der: vec![0x30, 0x00],
            expires_at: None,
        }),
        Err(BundleError::BadPublicKey(_))
    ));
    assert_eq!(bundle.jwt_authority("k").unwrap().key_id, "k");
    assert!(bundle.jwt_authority("nope").is_none());
    assert!(!bundle.is_empty());
}

#[test]
fn pem_round_trip() {
    let certs = [
        ca_cert(&key(KeyType::EcP256), "one"),
        ca_cert(&key(KeyType::EcP384), "two"),
    ];
    let mut bundle = Bundle::new(td());
    for cert in &certs {
        bundle.add_x509_authority(cert.clone()).unwrap();
    }
    let pem = bundle.to_pem();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    let back = Bundle::from_pem(td(), &pem).unwrap();
    assert_eq!(back.x509_authorities, certs);
    assert!(Bundle::from_pem(td(), "").is_err());
    assert!(Bundle::from_pem(td(), &crate::pem::encode("CERTIFICATE", b"junk")).is_err());
}

#[test]
fn garbage_never_panics() {
    let inputs: [&[u8]; 12] = [
        b"",
        b"{",
        b"\xff\xfe",
        b"{\"keys\": [{\"use\": \"x509-svid\", \"kty\": \"EC\"}]}",
        b"{\"keys\": [{\"use\": \"x509-svid\", \"kty\": \"RSA\", \"x5c\": [\"AAAA\"], \"n\": \"AQAB\", \"e\": \"AQAB\"}]}",
        b"{\"keys\": [{\"use\": \"x509-svid\", \"kty\": \"EC\", \"crv\": \"P-256\", \"x5c\": \"AAAA\"}]}",
        b"{\"keys\": [{\"use\": \"jwt-svid\", \"kty\": 5}]}",
        b"{\"keys\": [{\"use\": \"jwt-svid\", \"kty\": \"RSA\", \"kid\": \"k\", \"n\": 5, \"e\": \"AQAB\"}]}",
        b"{\"keys\": [{\"use\": \"jwt-svid\", \"kty\": \"RSA\", \"kid\": \"k\", \"n\": \"\", \"e\": \"\"}]}",
        b"{\"keys\": [], \"spiffe_refresh_hint\": 1e99}",
        b"{\"keys\": [], \"spiffe_sequence\": 18446744073709551616}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ];
    for input in inputs {
        assert!(
            Bundle::from_spiffe_document(td(), input).is_err(),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(PublicKeyParams::from_spki(b"").is_err());
    assert!(PublicKeyParams::from_spki(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
}
