//! What we build, checked by a SPIFFE implementation we did not write: the `spiffe` crate
//! (rust-spiffe) parses our X509-SVIDs with its own standard checks, and verifies our
//! JWT-SVIDs against our JWKS bundle documents.

#![allow(clippy::expect_used, reason = "test code fails loudly")]

use spire_core::bundle::Bundle;
use spire_core::jwt::{JwtAlgorithm, JwtAuthority, JwtSvidParams, mint_jwt_svid};
use spire_core::x509::{self, CaTemplate, Issuer, SvidTemplate, Validity};
use spire_core::{KeyType, PrivateKey, SpiffeId, TrustDomain};

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn spiffe_crate_accepts_our_x509_svids_for_every_key_type() {
    let td = TrustDomain::new("example.org").expect("trust domain");
    for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let now = time::OffsetDateTime::now_utc();
        let root_key = PrivateKey::generate(key_type).expect("root key");
        let root = x509::self_signed_ca(
            &root_key,
            &CaTemplate::new(
                td.clone(),
                Validity::from_now(now, time::Duration::seconds(86400)),
            ),
        )
        .expect("root");
        let inter_key = PrivateKey::generate(key_type).expect("intermediate key");
        let root_issuer = Issuer::new(&root, &root_key).expect("root issuer");
        let inter = x509::intermediate_ca(
            &root_issuer,
            &inter_key.public_key_der(),
            &CaTemplate::new(
                td.clone(),
                Validity::from_now(now, time::Duration::seconds(43200)),
            ),
        )
        .expect("intermediate");
        let workload_key = PrivateKey::generate(key_type).expect("workload key");
        let csr = x509::csr_der(&workload_key).expect("csr");
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").expect("id");
        let issuer = Issuer::new(&inter, &inter_key).expect("issuer");
        let leaf = x509::x509_svid_from_csr(
            &issuer,
            &csr,
            &SvidTemplate::new(
                id.clone(),
                Validity::from_now(now, time::Duration::seconds(3600)),
            ),
        )
        .expect("svid");

        // The Workload API sends the chain as concatenated DER and the key as PKCS#8.
        let chain: Vec<u8> = [leaf.as_slice(), inter.as_slice()].concat();
        let theirs = spiffe::X509Svid::parse_from_der(&chain, workload_key.pkcs8_der())
            .unwrap_or_else(|e| panic!("{key_type}: spiffe crate refused our SVID: {e}"));
        assert_eq!(theirs.spiffe_id().to_string(), id.to_string(), "{key_type}");
        assert_eq!(theirs.cert_chain().len(), 2);

        let bundle = spiffe::X509Bundle::parse_from_der(
            spiffe::TrustDomain::new("example.org").expect("td"),
            &root,
        )
        .unwrap_or_else(|e| panic!("{key_type}: spiffe crate refused our root: {e}"));
        assert_eq!(bundle.authorities().len(), 1);
    }
}

#[test]
fn spiffe_crate_verifies_our_jwt_svids_against_our_bundle_document() {
    let td = TrustDomain::new("example.org").expect("trust domain");
    let cases = [
        (KeyType::EcP256, None, "es256"),
        (KeyType::EcP384, None, "es384"),
        (KeyType::Rsa2048, None, "rs256"),
        (KeyType::Rsa2048, Some(JwtAlgorithm::Ps256), "ps256"),
    ];
    for (key_type, algorithm, kid) in cases {
        let key = PrivateKey::generate(key_type).expect("key");
        let mut bundle = Bundle::new(td.clone());
        bundle
            .add_jwt_authority(JwtAuthority {
                key_id: kid.to_owned(),
                public_key_der: key.public_key_der(),
                expires_at: None,
            })
            .expect("authority");
        let document = bundle.to_spiffe_document().expect("document");

        let subject = SpiffeId::parse("spiffe://example.org/backend").expect("id");
        let token = mint_jwt_svid(
            &key,
            kid,
            &JwtSvidParams {
                subject: subject.clone(),
                audience: vec!["spiffe://example.org/frontend".to_owned()],
                expires_at: now_unix() + 300,
                issued_at: None,
                issuer: None,
                algorithm,
                jwt_id: None,
            },
        )
        .expect("mint");

        let their_td = spiffe::TrustDomain::new("example.org").expect("td");
        let jwt_bundle = spiffe::JwtBundle::from_jwt_authorities(their_td, document.as_bytes())
            .unwrap_or_else(|e| panic!("{kid}: spiffe crate refused our bundle document: {e}"));
        let mut set = spiffe::JwtBundleSet::new();
        set.add_bundle(jwt_bundle);
        let svid =
            spiffe::JwtSvid::parse_and_validate(&token, &set, &["spiffe://example.org/frontend"])
                .unwrap_or_else(|e| panic!("{kid}: spiffe crate refused our token: {e}"));
        assert_eq!(svid.spiffe_id().to_string(), subject.to_string());
        assert_eq!(svid.key_id(), kid);

        // And it refuses the token for an audience it was not minted for.
        assert!(spiffe::JwtSvid::parse_and_validate(&token, &set, &["someone-else"]).is_err());
    }
}
