use std::sync::OnceLock;

use proptest::prelude::*;
use rcgen::CustomExtension;
use x509_parser::extensions::KeyUsage;

use super::*;
use crate::keys::KeyType;

/// Lays out `params` under `issuer` and signs in process, as the public signing functions do.
fn sign(
    params: CertificateParams,
    subject_public_key: &[u8],
    issuer: &Issuer<'_>,
) -> Result<Vec<u8>, X509Error> {
    layout(
        params,
        subject_public_key,
        issuer.key.key_pair(),
        &issuer.checked,
    )?
    .sign(issuer.key)
}

/// The key types every behaviour is checked with.
const KEY_TYPES: [KeyType; 3] = [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048];

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A root and an intermediate CA of one trust domain, all keys of one type.
struct Pki {
    root: Vec<u8>,
    root_key: PrivateKey,
    intermediate: Vec<u8>,
    intermediate_key: PrivateKey,
    leaf_key: PrivateKey,
}

impl Pki {
    fn new(key_type: KeyType, trust_domain: &str) -> Self {
        let td = td(trust_domain);
        let root_key = PrivateKey::generate(key_type).unwrap();
        let root_template =
            CaTemplate::new(td.clone(), Validity::from_now(now(), Duration::days(2)));
        let root = self_signed_ca(&root_key, &root_template).unwrap();
        let intermediate_key = PrivateKey::generate(key_type).unwrap();
        let template = CaTemplate::new(td, Validity::from_now(now(), Duration::days(1)));
        let issuer = Issuer::new(&root, &root_key).unwrap();
        let intermediate =
            intermediate_ca(&issuer, &intermediate_key.public_key_der(), &template).unwrap();
        Self {
            root,
            root_key,
            intermediate,
            intermediate_key,
            leaf_key: PrivateKey::generate(key_type).unwrap(),
        }
    }

    fn issuer(&self) -> Issuer<'_> {
        Issuer::new(&self.intermediate, &self.intermediate_key).unwrap()
    }

    fn bundle(&self) -> Vec<Vec<u8>> {
        vec![self.root.clone()]
    }

    /// An X509-SVID chain (leaf, intermediate) minted from a CSR, as the server does.
    fn svid_chain(&self, template: &SvidTemplate) -> Vec<Vec<u8>> {
        let csr = csr_der(&self.leaf_key).unwrap();
        let leaf = x509_svid_from_csr(&self.issuer(), &csr, template).unwrap();
        vec![leaf, self.intermediate.clone()]
    }

    /// A chain whose leaf is built from hand-edited rcgen parameters, signed by the
    /// intermediate, to produce leaves that break one rule.
    fn custom_leaf_chain(&self, edit: impl FnOnce(&mut CertificateParams)) -> Vec<Vec<u8>> {
        let mut params = CertificateParams::default();
        params.distinguished_name = Subject::default_x509_svid()
            .to_distinguished_name()
            .unwrap();
        params.not_before = now() - Duration::minutes(1);
        params.not_after = now() + Duration::hours(1);
        params.subject_alt_names = vec![uri_san("spiffe://example.org/workload").unwrap()];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        edit(&mut params);
        let leaf = sign(params, &self.leaf_key.public_key_der(), &self.issuer()).unwrap();
        vec![leaf, self.intermediate.clone()]
    }
}

/// One PKI per key type for trust domain `example.org`, built once for all tests.
fn pkis() -> &'static [Pki] {
    static PKIS: OnceLock<Vec<Pki>> = OnceLock::new();
    PKIS.get_or_init(|| {
        KEY_TYPES
            .iter()
            .map(|t| Pki::new(*t, "example.org"))
            .collect()
    })
}

fn workload_template() -> SvidTemplate {
    SvidTemplate::new(
        id("spiffe://example.org/workload"),
        Validity::from_now(now(), Duration::hours(1)),
    )
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn uris(der: &[u8]) -> Vec<String> {
    uri_sans(&parse(der), 0)
        .unwrap()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn key_usage(der: &[u8]) -> (bool, KeyUsage) {
    let cert = parse(der);
    let ku = cert.key_usage().unwrap().unwrap();
    (ku.critical, *ku.value)
}

fn basic_constraints(der: &[u8]) -> (bool, bool) {
    let cert = parse(der);
    let bc = cert.basic_constraints().unwrap().unwrap();
    (bc.critical, bc.value.ca)
}

fn authority_key_id(der: &[u8]) -> Option<Vec<u8>> {
    parse(der)
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn attribute_values(der: &[u8], oid: &[u64]) -> Vec<String> {
    let oid = x509_parser::oid_registry::Oid::from(oid).unwrap();
    parse(der)
        .subject()
        .iter_by_oid(&oid)
        .map(|attr| attr.as_str().unwrap().to_owned())
        .collect()
}

fn verify_with(chain: &[Vec<u8>], pki: &Pki) -> Result<SpiffeId, X509Error> {
    verify_x509_svid(chain, &pki.bundle(), now())
}

#[test]
fn root_intermediate_svid_chain_verifies_and_yields_the_spiffe_id() {
    for pki in pkis() {
        let chain = pki.svid_chain(&workload_template());
        assert_eq!(
            verify_with(&chain, pki).unwrap(),
            id("spiffe://example.org/workload")
        );

        let svid = X509Svid::parse_der_chain(&chain.concat()).unwrap();
        assert_eq!(svid.spiffe_id(), &id("spiffe://example.org/workload"));
        assert_eq!(svid.chain(), chain.as_slice());
        assert_eq!(svid.leaf_der(), chain[0].as_slice());
        assert_eq!(svid.not_after(), certificate_not_after(&chain[0]).unwrap());
    }
}

#[test]
fn svid_signed_directly_by_the_root_verifies() {
    for pki in pkis() {
        let issuer = Issuer::new(&pki.root, &pki.root_key).unwrap();
        let leaf = x509_svid_for_key(
            &issuer,
            &pki.leaf_key.public_key_der(),
            &workload_template(),
        )
        .unwrap();
        assert_eq!(
            verify_with(&[leaf], pki).unwrap(),
            id("spiffe://example.org/workload")
        );
    }
}

#[test]
fn svid_takes_only_the_public_key_from_the_csr() {
    for pki in pkis() {
        let mut params = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(uri_san("spiffe://example.org/admin").unwrap());
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "evil");
        let csr = params.serialize_request(pki.leaf_key.key_pair()).unwrap();

        let leaf = x509_svid_from_csr(&pki.issuer(), csr.der(), &workload_template()).unwrap();

        assert_eq!(uris(&leaf), ["spiffe://example.org/workload"]);
        let cert = parse(&leaf);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names.len(), 1, "no DNS SAN may come from the CSR");
        assert_eq!(cert.subject().iter_common_name().count(), 0);
        assert_eq!(
            certificate_public_key(&leaf).unwrap(),
            csr_public_key(csr.der()).unwrap()
        );
    }
}

#[test]
fn csr_with_a_broken_signature_is_refused() {
    for pki in pkis() {
        let mut csr = csr_der(&pki.leaf_key).unwrap();
        *csr.last_mut().unwrap() ^= 0x01;
        let err = x509_svid_from_csr(&pki.issuer(), &csr, &workload_template()).unwrap_err();
        assert!(matches!(err, X509Error::CsrSignature(_)), "{err:?}");
    }
}

#[test]
fn csr_carries_the_key_and_nothing_else() {
    for pki in pkis() {
        let csr = csr_der(&pki.leaf_key).unwrap();
        let (_, parsed) = X509CertificationRequest::from_der(&csr).unwrap();
        assert_eq!(parsed.certification_request_info.subject.iter().count(), 0);
        assert!(parsed.requested_extensions().is_none());
        assert_eq!(
            parse_spki(&csr_public_key(&csr).unwrap())
                .unwrap()
                .subject_public_key
                .data,
            parse_spki(&pki.leaf_key.public_key_der())
                .unwrap()
                .subject_public_key
                .data
        );
    }
}

#[test]
fn svid_and_intermediate_expiry_are_capped_at_the_issuer() {
    for pki in pkis() {
        let intermediate_expiry = certificate_not_after(&pki.intermediate).unwrap();
        let mut template = workload_template();
        template.validity.not_after = now() + Duration::days(365);
        let chain = pki.svid_chain(&template);
        assert_eq!(
            certificate_not_after(&chain[0]).unwrap(),
            intermediate_expiry
        );
        assert!(verify_with(&chain, pki).is_ok());

        let root_issuer = Issuer::new(&pki.root, &pki.root_key).unwrap();
        let long = CaTemplate::new(
            td("example.org"),
            Validity::from_now(now(), Duration::days(3650)),
        );
        let ca = intermediate_ca(&root_issuer, &pki.leaf_key.public_key_der(), &long).unwrap();
        assert_eq!(certificate_not_after(&ca).unwrap(), root_issuer.not_after());
    }
}

#[test]
fn issuing_past_the_issuers_expiry_is_refused() {
    let pki = &pkis()[0];
    let mut template = workload_template();
    template.validity = Validity::from_now(now() + Duration::days(30), Duration::hours(1));
    let err =
        x509_svid_from_csr(&pki.issuer(), &csr_der(&pki.leaf_key).unwrap(), &template).unwrap_err();
    assert!(matches!(err, X509Error::EmptyValidity { .. }), "{err:?}");
}

#[test]
fn svid_extensions_match_upstream() {
    for pki in pkis() {
        let mut template = workload_template();
        template.dns_names = vec!["web.example.org".into(), "api.example.org".into()];
        let leaf = pki.svid_chain(&template).remove(0);
        let cert = parse(&leaf);

        assert_eq!(basic_constraints(&leaf), (true, false));
        let (critical, ku) = key_usage(&leaf);
        assert!(critical);
        assert!(ku.digital_signature() && ku.key_encipherment() && ku.key_agreement());
        assert!(!ku.key_cert_sign() && !ku.crl_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(!eku.critical);
        assert!(eku.value.server_auth && eku.value.client_auth);

        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(!san.critical);
        let dns: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect();
        assert_eq!(dns, ["web.example.org", "api.example.org"]);
        assert_eq!(uris(&leaf), ["spiffe://example.org/workload"]);

        assert_eq!(attribute_values(&leaf, &[2, 5, 4, 6]), ["US"]);
        assert_eq!(attribute_values(&leaf, &[2, 5, 4, 10]), ["SPIRE"]);
        assert_eq!(attribute_values(&leaf, &[2, 5, 4, 3]), ["web.example.org"]);
        assert!(attribute_values(&leaf, &OID_UNIQUE_ID).is_empty());

        let ski = subject_key_id(&leaf).unwrap().unwrap();
        assert_eq!(ski, key_identifier(&pki.leaf_key.public_key_der()).unwrap());
        assert_eq!(ski.len(), 20);
        assert_eq!(
            authority_key_id(&leaf),
            subject_key_id(&pki.intermediate).unwrap()
        );
        assert_eq!(
            cert.issuer().as_raw(),
            parse(&pki.intermediate).subject().as_raw()
        );

        let serial = cert.raw_serial();
        assert!(!serial.is_empty() && serial.len() <= 17 && serial[0] & 0x80 == 0);
        assert_ne!(certificate_serial_decimal(&leaf).unwrap(), "0");
    }
}

#[test]
fn ca_extensions_match_upstream() {
    for pki in pkis() {
        for ca in [&pki.root, &pki.intermediate] {
            assert_eq!(basic_constraints(ca), (true, true));
            let (critical, ku) = key_usage(ca);
            assert!(critical);
            assert!(ku.key_cert_sign() && ku.crl_sign());
            assert!(!ku.digital_signature());
            assert_eq!(uris(ca), ["spiffe://example.org"]);
            assert_eq!(
                certificate_spiffe_id(ca).unwrap(),
                id("spiffe://example.org")
            );
            assert_eq!(attribute_values(ca, &[2, 5, 4, 6]), ["US"]);
            assert_eq!(attribute_values(ca, &[2, 5, 4, 10]), ["SPIFFE"]);
            assert_eq!(
                attribute_values(ca, &OID_SERIAL_NUMBER),
                [certificate_serial_decimal(ca).unwrap()]
            );
            assert!(subject_key_id(ca).unwrap().is_some());
            assert!(parse(ca).extended_key_usage().unwrap().is_none());
        }
        assert_eq!(authority_key_id(&pki.root), None);
        assert_eq!(
            authority_key_id(&pki.intermediate),
            subject_key_id(&pki.root).unwrap()
        );
        assert_eq!(
            subject_key_id(&pki.root).unwrap().unwrap(),
            key_identifier(&pki.root_key.public_key_der()).unwrap()
        );
    }
}

#[test]
fn serial_numbers_are_random_and_printed_in_decimal_and_hex() {
    let pki = &pkis()[0];
    let a = pki.svid_chain(&workload_template()).remove(0);
    let b = pki.svid_chain(&workload_template()).remove(0);
    let (da, db) = (
        certificate_serial_decimal(&a).unwrap(),
        certificate_serial_decimal(&b).unwrap(),
    );
    assert_ne!(da, db);
    let hex = certificate_serial_hex(&a).unwrap();
    assert_eq!(u128::from_str_radix(&hex, 16).unwrap().to_string(), da);
}

#[test]
fn subject_override_unique_id_and_multi_values() {
    let pki = &pkis()[0];
    let workload = id("spiffe://example.org/foo");
    assert_eq!(unique_id(&workload), "c3406f9b12ceb4f9c948318c579b905b");

    let mut template = SvidTemplate::new(
        workload.clone(),
        Validity::from_now(now(), Duration::hours(1)),
    );
    template.subject = Subject {
        organization: vec!["Acme".into()],
        common_name: Some("acme worker".into()),
        ..Subject::default()
    }
    .with_unique_id(&workload);
    let leaf = pki.svid_chain(&template).remove(0);
    assert!(attribute_values(&leaf, &[2, 5, 4, 6]).is_empty());
    assert_eq!(attribute_values(&leaf, &[2, 5, 4, 10]), ["Acme"]);
    assert_eq!(attribute_values(&leaf, &[2, 5, 4, 3]), ["acme worker"]);
    assert_eq!(
        attribute_values(&leaf, &OID_UNIQUE_ID),
        ["c3406f9b12ceb4f9c948318c579b905b"]
    );

    template.subject = Subject::default();
    let leaf = pki.svid_chain(&template).remove(0);
    assert_eq!(attribute_values(&leaf, &[2, 5, 4, 10]), ["SPIRE"]);

    template.subject.organization = vec!["A".into(), "B".into()];
    let err =
        x509_svid_for_key(&pki.issuer(), &pki.leaf_key.public_key_der(), &template).unwrap_err();
    assert_eq!(
        err,
        X509Error::MultiValuedSubject {
            field: "organization",
            count: 2
        }
    );
}

#[test]
fn builder_refuses_a_leaf_id_without_path_and_non_ascii_dns_names() {
    let pki = &pkis()[0];
    let mut template = workload_template();
    template.spiffe_id = id("spiffe://example.org");
    let err =
        x509_svid_for_key(&pki.issuer(), &pki.leaf_key.public_key_der(), &template).unwrap_err();
    assert!(matches!(err, X509Error::LeafIdWithoutPath(_)), "{err:?}");

    let mut template = workload_template();
    template.dns_names = vec!["bücher.example".into()];
    let err =
        x509_svid_for_key(&pki.issuer(), &pki.leaf_key.public_key_der(), &template).unwrap_err();
    assert!(matches!(err, X509Error::InvalidDnsName(_)), "{err:?}");
}

#[test]
fn issuer_must_be_a_ca_with_the_matching_key() {
    let pki = &pkis()[0];
    let leaf = pki.svid_chain(&workload_template()).remove(0);
    assert_eq!(
        Issuer::new(&leaf, &pki.leaf_key).unwrap_err(),
        X509Error::IssuerNotCa
    );
    assert_eq!(
        Issuer::new(&pki.root, &pki.intermediate_key).unwrap_err(),
        X509Error::IssuerKeyMismatch
    );
}

#[test]
fn hand_built_leaf_baseline_verifies() {
    for pki in pkis() {
        let chain = pki.custom_leaf_chain(|_| {});
        assert_eq!(
            verify_with(&chain, pki).unwrap(),
            id("spiffe://example.org/workload")
        );
    }
}

/// Checks that a leaf built with `edit` is refused, both when parsed and when verified.
fn assert_leaf_refused(edit: impl Fn(&mut CertificateParams), expected: &X509Error) {
    for pki in pkis() {
        let chain = pki.custom_leaf_chain(&edit);
        assert_eq!(&X509Svid::parse(chain.clone()).unwrap_err(), expected);
        assert_eq!(&verify_with(&chain, pki).unwrap_err(), expected);
    }
}

#[test]
fn leaf_with_ca_true_is_refused() {
    assert_leaf_refused(
        |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
        &X509Error::LeafIsCa,
    );
}

#[test]
fn leaf_with_key_cert_sign_is_refused() {
    assert_leaf_refused(
        |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign),
        &X509Error::LeafCanSign,
    );
}

#[test]
fn leaf_with_crl_sign_is_refused() {
    assert_leaf_refused(
        |p| p.key_usages.push(KeyUsagePurpose::CrlSign),
        &X509Error::LeafCanSign,
    );
}

#[test]
fn leaf_without_key_usage_is_refused() {
    assert_leaf_refused(|p| p.key_usages.clear(), &X509Error::MissingKeyUsage);
}

#[test]
fn leaf_without_digital_signature_is_refused() {
    assert_leaf_refused(
        |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
        &X509Error::MissingDigitalSignature,
    );
}

#[test]
fn leaf_with_non_critical_key_usage_is_refused() {
    assert_leaf_refused(
        |p| {
            p.key_usages.clear();
            // keyUsage BIT STRING with only digitalSignature, not marked critical.
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                &[2, 5, 29, 15],
                vec![0x03, 0x02, 0x07, 0x80],
            )];
        },
        &X509Error::KeyUsageNotCritical,
    );
}

#[test]
fn leaf_with_two_uri_sans_is_refused() {
    assert_leaf_refused(
        |p| {
            p.subject_alt_names
                .push(uri_san("spiffe://example.org/other").unwrap());
        },
        &X509Error::UriSanCount(2),
    );
}

#[test]
fn leaf_without_uri_san_is_refused() {
    assert_leaf_refused(
        |p| {
            p.subject_alt_names = vec![SanType::DnsName(
                Ia5String::try_from("web.example.org").unwrap(),
            )];
        },
        &X509Error::UriSanCount(0),
    );
}

#[test]
fn leaf_with_non_spiffe_uri_san_is_refused() {
    assert_leaf_refused(
        |p| p.subject_alt_names = vec![uri_san("https://example.org/workload").unwrap()],
        &X509Error::InvalidSpiffeId {
            uri: "https://example.org/workload".into(),
            source: SpiffeIdError::WrongScheme,
        },
    );
}

#[test]
fn leaf_with_a_bare_trust_domain_id_is_refused() {
    assert_leaf_refused(
        |p| p.subject_alt_names = vec![uri_san("spiffe://example.org").unwrap()],
        &X509Error::LeafIdWithoutPath(id("spiffe://example.org")),
    );
}

#[test]
fn leaf_with_eku_without_client_auth_is_refused() {
    assert_leaf_refused(
        |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth],
        &X509Error::MissingExtendedKeyUsage("clientAuth"),
    );
}

#[test]
fn leaf_with_eku_without_server_auth_is_refused() {
    assert_leaf_refused(
        |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        &X509Error::MissingExtendedKeyUsage("serverAuth"),
    );
}

#[test]
fn leaf_without_eku_is_accepted() {
    for pki in pkis() {
        let chain = pki.custom_leaf_chain(|p| p.extended_key_usages.clear());
        assert!(verify_with(&chain, pki).is_ok());
    }
}

#[test]
fn non_ca_after_the_leaf_is_refused() {
    for pki in pkis() {
        let leaf = pki.svid_chain(&workload_template());
        let chain = vec![leaf[0].clone(), leaf[0].clone()];
        assert_eq!(
            X509Svid::parse(chain).unwrap_err(),
            X509Error::IntermediateNotCa { index: 1 }
        );
    }
}

#[test]
fn expired_leaf_is_refused() {
    for pki in pkis() {
        let chain = pki.custom_leaf_chain(|p| {
            p.not_before = now() - Duration::hours(2);
            p.not_after = now() - Duration::hours(1);
        });
        let err = verify_with(&chain, pki).unwrap_err();
        assert!(matches!(err, X509Error::Expired { .. }), "{err:?}");
    }
}

#[test]
fn not_yet_valid_leaf_is_refused() {
    for pki in pkis() {
        let chain = pki.svid_chain(&workload_template());
        let err = verify_x509_svid(&chain, &pki.bundle(), now() - Duration::hours(1)).unwrap_err();
        assert!(matches!(err, X509Error::NotYetValid { .. }), "{err:?}");
    }
}

#[test]
fn chain_to_a_different_root_is_refused() {
    for (pki, key_type) in pkis().iter().zip(KEY_TYPES) {
        let other = Pki::new(key_type, "example.org");
        let chain = pki.svid_chain(&workload_template());
        assert_eq!(
            verify_x509_svid(&chain, &other.bundle(), now()).unwrap_err(),
            X509Error::UnknownIssuer
        );
    }
}

#[test]
fn wrong_trust_domains_bundle_is_refused() {
    for (pki, key_type) in pkis().iter().zip(KEY_TYPES) {
        let other = Pki::new(key_type, "other.org");
        let template = SvidTemplate::new(
            id("spiffe://other.org/workload"),
            Validity::from_now(now(), Duration::hours(1)),
        );
        let chain = other.svid_chain(&template);
        assert_eq!(
            verify_with(&chain, &other).unwrap(),
            id("spiffe://other.org/workload")
        );
        assert_eq!(
            verify_with(&chain, pki).unwrap_err(),
            X509Error::UnknownIssuer
        );
    }
}

#[test]
fn missing_intermediate_is_refused() {
    let pki = &pkis()[0];
    let chain = pki.svid_chain(&workload_template());
    assert_eq!(
        verify_with(&chain[..1], pki).unwrap_err(),
        X509Error::UnknownIssuer
    );
}

#[test]
fn empty_chain_and_empty_bundle_are_refused() {
    let pki = &pkis()[0];
    assert_eq!(
        verify_x509_svid(&[], &pki.bundle(), now()).unwrap_err(),
        X509Error::EmptyChain
    );
    let chain = pki.svid_chain(&workload_template());
    assert_eq!(
        verify_x509_svid(&chain, &[], now()).unwrap_err(),
        X509Error::EmptyBundle
    );
    assert_eq!(parse_certificates(&[]).unwrap_err(), X509Error::EmptyChain);
}

#[test]
fn garbage_der_is_refused_without_panicking() {
    let pki = &pkis()[0];
    let garbage = b"\x30\x82\xff\xffnot a certificate".to_vec();
    let chain = pki.svid_chain(&workload_template());

    assert!(matches!(
        parse_certificates(&garbage).unwrap_err(),
        X509Error::MalformedCertificate { index: 0, .. }
    ));
    let mut tail_garbage = chain.concat();
    tail_garbage.extend_from_slice(b"junk");
    assert!(matches!(
        parse_certificates(&tail_garbage).unwrap_err(),
        X509Error::MalformedCertificate { index: 2, .. }
    ));
    assert!(verify_x509_svid(std::slice::from_ref(&garbage), &pki.bundle(), now()).is_err());
    assert!(matches!(
        verify_x509_svid(&chain, std::slice::from_ref(&garbage), now()).unwrap_err(),
        X509Error::BadBundleCertificate { index: 0, .. }
    ));
    assert!(X509Svid::parse(vec![garbage.clone()]).is_err());
    assert!(Issuer::new(&garbage, &pki.root_key).is_err());
    assert!(matches!(
        csr_public_key(&garbage).unwrap_err(),
        X509Error::MalformedCsr(_)
    ));
    assert!(matches!(
        x509_svid_for_key(&pki.issuer(), &garbage, &workload_template()).unwrap_err(),
        X509Error::UnsupportedPublicKey(_)
    ));
    assert!(certificate_not_after(&garbage).is_err());
    assert!(certificate_serial_hex(&garbage).is_err());
    assert!(certificate_spiffe_id(&garbage).is_err());
    assert!(subject_key_id(&garbage).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_certificates(&bytes);
        let _ = X509Svid::parse(vec![bytes.clone()]);
        let _ = csr_public_key(&bytes);
        let _ = certificate_spiffe_id(&bytes);
        let _ = verify_x509_svid(std::slice::from_ref(&bytes), std::slice::from_ref(&bytes), now());
    }
}

#[test]
fn times_x509_cannot_encode_are_errors_not_panics() {
    let key = &pkis()[0].root_key;
    let year_minus_one = OffsetDateTime::from_unix_timestamp(-62_200_000_000).unwrap();
    let template = CaTemplate::new(
        td("example.org"),
        Validity::from_now(year_minus_one, Duration::hours(1)),
    );
    assert!(matches!(
        self_signed_ca(key, &template).unwrap_err(),
        X509Error::TimeOutOfRange(_)
    ));

    // A huge TTL saturates at the end of year 9999, which X.509 can still write.
    let template = CaTemplate::new(
        td("example.org"),
        Validity::from_now(now(), Duration::days(365 * 10_000)),
    );
    let root = self_signed_ca(key, &template).unwrap();
    assert_eq!(certificate_not_after(&root).unwrap().year(), 9999);
}

/// An operator's upstream CA made with OpenSSL, whose subject has repeated `DC` attributes and
/// a multi-valued RDN (`OU=PKI + O=Example Corp`): names rcgen cannot re-encode.
const UPSTREAM_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3Erd8ui58l+lF3Jx
pFntCadxq9MKWxkqfHFDHHjp4rOhRANCAARFaMXjcxO9FRX1ycqZ7sOtn3idtWgk
1dOf83qU8fRSjlXuo/kv6sk8jNVFp5+6E9mNq5RVRfS7FctpJgLuy7gs
-----END PRIVATE KEY-----
";
const UPSTREAM_CERT: &str = "-----BEGIN CERTIFICATE-----
MIICOTCCAd+gAwIBAgIUDxVnyjvfZUfPqxib7wJHx3ZV2wwwCgYIKoZIzj0EAwIw
aTETMBEGCgmSJomT8ixkARkWA29yZzEXMBUGCgmSJomT8ixkARkWB2V4YW1wbGUx
ITAKBgNVBAsMA1BLSTATBgNVBAoMDEV4YW1wbGUgQ29ycDEWMBQGA1UEAwwNVXBz
dHJlYW0gUm9vdDAgFw0yNjExMjMxMjMyMDhaGA8yMTI2MTAzMDEyMzIwOFowaTET
MBEGCgmSJomT8ixkARkWA29yZzEXMBUGCgmSJomT8ixkARkWB2V4YW1wbGUxITAK
BgNVBAsMA1BLSTATBgNVBAoMDEV4YW1wbGUgQ29ycDEWMBQGA1UEAwwNVXBzdHJl
YW0gUm9vdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABEVoxeNzE70VFfXJypnu
w62feJ21aCTV05/zepTx9FKOVe6j+S/qyTyM1UWnn7oT2Y2rlFVF9LsVy2kmAu7L
uCyjYzBhMB8GA1UdIwQYMBaAFAwpgK5ezQuHvPOQu7hIv5P9DT/CMA8GA1UdEwEB
/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBQMKYCuXs0Lh7zzkLu4
SL+T/Q0/wjAKBggqhkjOPQQDAgNIADBFAiBPTjlBpfloCH+EmWSAk9ghlYDsg92b
B/0wN0Yhem1qYgIhALpeXHzEwzgRDDhsVZi2YMLLVrnCxnuc2+ga8wyB+wZn
-----END CERTIFICATE-----
";

#[test]
fn upstream_ca_with_names_rcgen_cannot_write_signs_chains_that_verify() {
    let upstream_key = PrivateKey::from_pem(UPSTREAM_KEY).unwrap();
    let upstream = crate::pem::decode_certificates(UPSTREAM_CERT.as_bytes())
        .unwrap()
        .remove(0);
    // Fixed times inside the fixture's validity, so the test does not depend on the clock.
    let at = certificate_validity(&upstream).unwrap().not_before + Duration::days(1);

    for key_type in KEY_TYPES {
        let ca_key = PrivateKey::generate(key_type).unwrap();
        let upstream_issuer = Issuer::new(&upstream, &upstream_key).unwrap();
        let ca_template =
            CaTemplate::new(td("example.org"), Validity::from_now(at, Duration::days(1)));
        let ca = intermediate_ca(&upstream_issuer, &ca_key.public_key_der(), &ca_template).unwrap();
        assert_eq!(
            parse(&ca).issuer().as_raw(),
            parse(&upstream).subject().as_raw()
        );
        assert_eq!(authority_key_id(&ca), subject_key_id(&upstream).unwrap());
        // OpenSSL's `subjectKeyIdentifier=hash` is the same SHA-1 method we use.
        assert_eq!(
            subject_key_id(&upstream).unwrap().unwrap(),
            key_identifier(&certificate_public_key(&upstream).unwrap()).unwrap()
        );

        let leaf_key = PrivateKey::generate(key_type).unwrap();
        let template = SvidTemplate::new(
            id("spiffe://example.org/workload"),
            Validity::from_now(at, Duration::hours(1)),
        );
        let issuer = Issuer::new(&ca, &ca_key).unwrap();
        let leaf = x509_svid_for_key(&issuer, &leaf_key.public_key_der(), &template).unwrap();
        let chain = vec![leaf, ca];
        assert_eq!(
            verify_x509_svid(&chain, std::slice::from_ref(&upstream), at).unwrap(),
            id("spiffe://example.org/workload")
        );
    }
}

#[test]
fn validity_from_now_backdates_by_ten_seconds() {
    let t = now();
    let v = Validity::from_now(t, Duration::hours(1));
    assert_eq!(v.not_before, t - Duration::seconds(10));
    assert_eq!(v.not_after, t + Duration::hours(1));
}

#[test]
fn bundle_certificates_outside_their_validity_are_not_roots() {
    for key_type in KEY_TYPES {
        let root_key = PrivateKey::generate(key_type).unwrap();
        let expired = Validity::from_now(now() - Duration::days(2), Duration::days(1));
        let root = self_signed_ca(&root_key, &CaTemplate::new(td("example.org"), expired)).unwrap();
        // A leaf valid now, signed straight by the expired root (sign() does not cap).
        let leaf_key = PrivateKey::generate(key_type).unwrap();
        let issuer = Issuer::new(&root, &root_key).unwrap();
        let mut params = CertificateParams::default();
        params.not_before = now() - Duration::minutes(1);
        params.not_after = now() + Duration::hours(1);
        params.subject_alt_names = vec![uri_san("spiffe://example.org/workload").unwrap()];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf = sign(params, &leaf_key.public_key_der(), &issuer).unwrap();

        assert_eq!(
            verify_x509_svid(&[leaf], &[root], now()).unwrap_err(),
            X509Error::UnknownIssuer
        );
    }
}

#[test]
fn subject_of_only_empty_strings_is_empty() {
    let subject = Subject {
        country: vec![String::new()],
        common_name: Some(String::new()),
        ..Subject::default()
    };
    assert!(subject.is_empty());
    assert!(!Subject::default_ca().is_empty());
}

#[test]
fn upstream_ca_csr_names_the_trust_domain() {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = upstream_ca_csr_der(&key, &Subject::default(), &td("example.org")).unwrap();
    let (_, parsed) = X509CertificationRequest::from_der(&csr).unwrap();
    let uris: Vec<String> = parsed
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|ext| match ext {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec!["spiffe://example.org".to_owned()]);
}

/// Signs `tbs` as a KMS does: only the digest leaves for the signer, which signs it with the
/// scheme of its key type (ECDSA as ASN.1 DER, RSA PKCS#1 v1.5).
fn sign_like_a_remote_key(key: &PrivateKey, tbs: &[u8]) -> Vec<u8> {
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, RsaKeyPair};
    let scheme = key.key_type().x509_scheme();
    let digest = scheme.hash.digest(tbs);
    match key.key_type() {
        KeyType::EcP256 | KeyType::EcP384 => {
            let alg = if key.key_type() == KeyType::EcP256 {
                &sig::ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let pair = EcdsaKeyPair::from_pkcs8(alg, key.pkcs8_der()).unwrap();
            let digest = aws_lc_rs::digest::Digest::import_less_safe(
                &digest,
                if key.key_type() == KeyType::EcP256 {
                    &aws_lc_rs::digest::SHA256
                } else {
                    &aws_lc_rs::digest::SHA384
                },
            )
            .unwrap();
            pair.sign_digest(&digest).unwrap().as_ref().to_vec()
        }
        KeyType::Rsa2048 | KeyType::Rsa4096 => {
            let pair = RsaKeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
            let digest =
                aws_lc_rs::digest::Digest::import_less_safe(&digest, &aws_lc_rs::digest::SHA256)
                    .unwrap();
            let mut out = vec![0; pair.public_modulus_len()];
            pair.sign_digest(&sig::RSA_PKCS1_SHA256, &digest, &mut out)
                .unwrap();
            out
        }
    }
}

#[test]
fn a_ca_key_held_elsewhere_signs_a_root_an_intermediate_svids_and_a_csr_that_verify() {
    for key_type in KEY_TYPES {
        let root_key = PrivateKey::generate(key_type).unwrap();
        let remote = root_key.public_key();
        let td = td("example.org");
        let root_template =
            CaTemplate::new(td.clone(), Validity::from_now(now(), Duration::days(2)));
        let unsigned = self_signed_ca_unsigned(&remote, &root_template).unwrap();
        let root = unsigned.assemble(&sign_like_a_remote_key(&root_key, unsigned.tbs()));
        let issuer = RemoteIssuer::new(&root, remote.clone()).unwrap();

        let ca_key = PrivateKey::generate(key_type).unwrap();
        let template = CaTemplate::new(td.clone(), Validity::from_now(now(), Duration::days(1)));
        let unsigned =
            intermediate_ca_unsigned(&issuer, &ca_key.public_key_der(), &template).unwrap();
        let intermediate = unsigned.assemble(&sign_like_a_remote_key(&root_key, unsigned.tbs()));

        let leaf_key = PrivateKey::generate(key_type).unwrap();
        let template = SvidTemplate::new(
            id("spiffe://example.org/workload"),
            Validity::from_now(now(), Duration::hours(1)),
        );
        let unsigned = x509_svid_unsigned(&issuer, &leaf_key.public_key_der(), &template).unwrap();
        let leaf = unsigned.assemble(&sign_like_a_remote_key(&root_key, unsigned.tbs()));
        assert_eq!(
            verify_x509_svid(&[leaf], std::slice::from_ref(&root), now())
                .unwrap()
                .as_str(),
            "spiffe://example.org/workload",
            "{key_type}"
        );
        // The intermediate signed remotely is a CA the in-process path can sign under.
        let under = Issuer::new(&intermediate, &ca_key).unwrap();
        let leaf = x509_svid_for_key(&under, &leaf_key.public_key_der(), &template).unwrap();
        verify_x509_svid(&[leaf, intermediate], &[root], now()).unwrap();

        let unsigned = upstream_ca_csr_unsigned(&remote, &Subject::default_ca(), &td).unwrap();
        let csr = unsigned.assemble(&sign_like_a_remote_key(&root_key, unsigned.tbs()));
        assert_eq!(csr_public_key(&csr).unwrap(), root_key.public_key_der());
    }
}

#[test]
fn a_csr_signed_elsewhere_carries_the_key_and_verifies() {
    let key = crate::keys::PrivateKey::generate(KeyType::EcP256).unwrap();
    let public = PublicKey::from_spki_der(&key.public_key_der()).unwrap();
    let csr = csr_unsigned(&public).unwrap().sign(&key).unwrap();
    assert_eq!(csr_public_key(&csr).unwrap(), key.public_key_der());
}
