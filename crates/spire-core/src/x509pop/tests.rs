use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

use super::*;

struct Issued {
    der: Vec<u8>,
    key: KeyPair,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(
    issuer: &(rcgen::Certificate, KeyPair),
    alg: &'static rcgen::SignatureAlgorithm,
    digital_signature: bool,
    uris: &[&str],
) -> Issued {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "node-1");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(1);
    if digital_signature {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    let issuer_ = rcgen::Issuer::from_ca_cert_der(issuer.0.der(), &issuer.1).unwrap();
    let cert = params.signed_by(&key, &issuer_).unwrap();
    Issued {
        der: cert.der().to_vec(),
        key,
    }
}

fn signing_key(issued: &Issued) -> SigningKey {
    SigningKey::from_pem(issued.key.serialize_pem().as_bytes(), &issued.der).unwrap()
}

#[test]
fn proof_of_possession_round_trips_for_rsa_and_ecdsa() {
    let root = ca("root");
    for alg in [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ] {
        let node = leaf(&root, alg, true, &[]);
        let key = signing_key(&node);
        let challenge = generate_challenge(&node.der).unwrap();
        let wire = serde_json::to_value(&challenge).unwrap();
        let nonce = if alg == &rcgen::PKCS_RSA_SHA256 {
            assert!(wire["ecdsa_signature"].is_null(), "{wire}");
            challenge.rsa_signature.as_ref().unwrap().nonce.clone()
        } else {
            assert!(wire["rsa_signature"].is_null(), "{wire}");
            challenge.ecdsa_signature.as_ref().unwrap().nonce.clone()
        };
        assert_eq!(nonce.len(), NONCE_LEN);
        let response = key.respond(&challenge).unwrap();
        verify_response(&node.der, &challenge, &response).unwrap();

        // The same answer to another challenge (a replay) fails.
        let second = generate_challenge(&node.der).unwrap();
        assert!(verify_response(&node.der, &second, &response).is_err());
        // An answer by another key fails.
        let other = leaf(&root, alg, true, &[]);
        let forged = signing_key(&other).respond(&challenge).unwrap();
        assert!(verify_response(&node.der, &challenge, &forged).is_err());
    }
}

#[test]
fn the_key_must_match_the_certificate_and_allow_signatures() {
    let root = ca("root");
    let node = leaf(&root, &rcgen::PKCS_ECDSA_P256_SHA256, true, &[]);
    let other = leaf(&root, &rcgen::PKCS_ECDSA_P256_SHA256, true, &[]);
    let err = SigningKey::from_pem(other.key.serialize_pem().as_bytes(), &node.der).unwrap_err();
    assert_eq!(err.to_string(), "private key does not match public key");
    let no_ku = leaf(&root, &rcgen::PKCS_ECDSA_P256_SHA256, false, &[]);
    assert_eq!(
        generate_challenge(&no_ku.der).unwrap_err().to_string(),
        "certificate not intended for digital signature use"
    );
}

#[test]
fn chains_are_verified_against_the_roots_only() {
    let root = ca("root");
    let other = ca("other");
    let node = leaf(&root, &rcgen::PKCS_ECDSA_P256_SHA256, true, &[]);
    let now = OffsetDateTime::now_utc();
    let chain = verify_chain(&node.der, &[], &[root.0.der().to_vec()], now).unwrap();
    assert_eq!(chain, vec![root.0.der().to_vec()]);
    let err = verify_chain(&node.der, &[], &[other.0.der().to_vec()], now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "x509: certificate signed by unknown authority"
    );
    let later = now + time::Duration::days(2);
    let err = verify_chain(&node.der, &[], &[root.0.der().to_vec()], later).unwrap_err();
    assert!(err.to_string().contains("certificate has expired"), "{err}");
    assert!(verify_chain(b"junk", &[], &[root.0.der().to_vec()], now).is_err());
}

#[test]
fn selectors_and_agent_ids_are_upstreams() {
    let root = ca("root");
    let node = leaf(
        &root,
        &rcgen::PKCS_ECDSA_P256_SHA256,
        true,
        &[
            "x509pop://example.org/datacenter/us-east-1",
            "x509pop://other.org/a/b",
        ],
    );
    let facts = leaf_facts(&node.der, "example.org").unwrap();
    let values = selector_values(&facts, &[root.0.der().to_vec()]);
    assert_eq!(values[0], "subject:cn:node-1");
    assert_eq!(
        values[1],
        format!("ca:fingerprint:{}", fingerprint(root.0.der()))
    );
    assert!(values[2].starts_with("serialnumber:"));
    assert_eq!(values[3], "san:datacenter:us-east-1");
    assert_eq!(values.len(), 4);

    let td = TrustDomain::new("example.org").unwrap();
    let id = agent_id(
        &td,
        &Template::parse(DEFAULT_TEMPLATE_CN).unwrap(),
        &node.der,
        &facts,
        "",
    )
    .unwrap();
    assert_eq!(
        id.to_string(),
        format!(
            "spiffe://example.org/spire/agent/x509pop/{}",
            fingerprint(&node.der)
        )
    );
    let id = agent_id(
        &td,
        &Template::parse(
            "/foo/{{ .Subject.CommonName }}/{{ index .URISanSelectors \"datacenter\" }}",
        )
        .unwrap(),
        &node.der,
        &facts,
        "",
    )
    .unwrap();
    assert_eq!(
        id.to_string(),
        "spiffe://example.org/spire/agent/foo/node-1/us-east-1"
    );
    // A template must give a valid path.
    assert!(
        agent_id(
            &td,
            &Template::parse("no-slash").unwrap(),
            &node.der,
            &facts,
            ""
        )
        .is_err()
    );
}

#[test]
fn upstreams_fingerprint_serial_and_wire_shapes() {
    // Upstream's test: the SHA-1 of an empty certificate.
    assert_eq!(fingerprint(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    assert_eq!(serial_number_hex(&[0x01]), "01");
    assert_eq!(serial_number_hex(&[0x00, 0x0a, 0xbc]), "0abc");
    assert_eq!(serial_number_hex(&[0x1a, 0xbc]), "1abc");
    let data = AttestationData {
        certificates: vec![vec![1, 2, 3]],
    };
    assert_eq!(
        serde_json::to_string(&data).unwrap(),
        r#"{"certificates":["AQID"]}"#
    );
    let response: Response = serde_json::from_str(
        r#"{"rsa_signature":null,"ecdsa_signature":{"nonce":"AQ==","r":"Ag==","s":"Aw=="}}"#,
    )
    .unwrap();
    assert_eq!(response.ecdsa_signature.unwrap().s, vec![3]);
    assert_eq!(
        uri_escaped_path("spiffe://example.org/spire-exchange/host%201?x"),
        "/spire-exchange/host%201"
    );
    assert!(combine_nonces(&[0; 31], &[0; 32]).is_err());
    assert!(combine_nonces(&[0; 32], &[0; 33]).is_err());
}
