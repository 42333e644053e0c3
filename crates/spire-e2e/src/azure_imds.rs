//! The Azure side of `azure_imds` tests, since no real Azure can run here (hand-written, on
//! purpose): a signing chain shaped like Azure's (a test root the server is told to trust
//! through `extra_ca_cert_path`, an intermediate served at the signer's CA Issuers URL path
//! under `http://www.microsoft.com/pkiops/certs/`, and a `metadata.azure.com` signing
//! certificate), and attested documents in IMDS's format: a PKCS#7 SignedData with the JSON
//! content attached, the signing certificate enclosed, SHA-256 named as
//! `sha256WithRSAEncryption` and no signed attributes — the layout of real IMDS documents
//! (see spire-core's `azure_imds` tests, which verify a real one).

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SigningKey as _,
};
use serde_json::{Value, json};

/// The CA Issuers URL path of the test intermediate (served by the fake cloud).
pub const INTERMEDIATE_PATH: &str = "/pkiops/certs/Test%20Azure%20TLS%20Issuing%20CA%2001.crt";

/// A signing chain and key, as the test holds Azure's.
pub struct ImdsSigner {
    /// The root (PEM) the server must trust.
    pub root_pem: String,
    /// The intermediate (DER) the CA Issuers URL serves.
    pub intermediate_der: Vec<u8>,
    leaf_der: Vec<u8>,
    leaf_key: KeyPair,
    issuer_raw: Vec<u8>,
    serial: Vec<u8>,
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap_or(0));
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0));
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

fn oid(bytes: &[u8]) -> Vec<u8> {
    der(0x06, bytes)
}

const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The AuthorityInfoAccess extension naming `url` as CA Issuers.
fn aia(url: &str) -> CustomExtension {
    let ca_issuers = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let content = seq(&[seq(&[oid(&ca_issuers), der(0x86, url.as_bytes())])]);
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], content)
}

impl ImdsSigner {
    /// A chain whose signer has SAN `san`, valid from an hour ago for `valid_hours` (negative:
    /// already expired), naming `http://www.microsoft.com` + [`INTERMEDIATE_PATH`] as its
    /// CA Issuers URL.
    pub fn new(san: &str, valid_hours: i64) -> Self {
        Self::with_issuer_url(
            san,
            valid_hours,
            &format!("http://www.microsoft.com{INTERMEDIATE_PATH}"),
        )
    }

    /// As [`ImdsSigner::new`] with another CA Issuers URL.
    pub fn with_issuer_url(san: &str, valid_hours: i64, issuer_url: &str) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new())
                .unwrap_or_else(|e| panic!("params: {e}"));
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_before = now - time::Duration::days(30);
            p.not_after = now + time::Duration::days(365);
            p
        };
        let rsa = || {
            KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap_or_else(|e| panic!("RSA: {e}"))
        };
        let root_key = rsa();
        let root_params = ca("Test Azure Root G2");
        let root = root_params
            .self_signed(&root_key)
            .unwrap_or_else(|e| panic!("root: {e}"));
        let root_issuer = Issuer::new(root_params, root_key);
        let int_key = rsa();
        let int_params = ca("Test Azure TLS Issuing CA 01");
        let intermediate = int_params
            .signed_by(&int_key, &root_issuer)
            .unwrap_or_else(|e| panic!("intermediate: {e}"));
        let int_issuer = Issuer::new(int_params, int_key);
        let leaf_key = rsa();
        let mut leaf =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("params: {e}"));
        leaf.distinguished_name
            .push(DnType::CommonName, "metadata.azure.com");
        leaf.subject_alt_names = vec![SanType::DnsName(
            san.try_into().unwrap_or_else(|e| panic!("SAN: {e}")),
        )];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let serial = vec![0x33, 0x00, 0x85, 0xd0, 0x2b, 0x11];
        leaf.serial_number = Some(SerialNumber::from(serial.clone()));
        leaf.not_before = now - time::Duration::hours(1) - time::Duration::days(1);
        leaf.not_after = now + time::Duration::hours(valid_hours);
        leaf.custom_extensions.push(aia(issuer_url));
        let leaf_cert = leaf
            .signed_by(&leaf_key, &int_issuer)
            .unwrap_or_else(|e| panic!("leaf: {e}"));
        let leaf_der = leaf_cert.der().to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf_der)
            .unwrap_or_else(|e| panic!("parse leaf: {e}"));
        let issuer_raw = parsed.tbs_certificate.issuer.as_raw().to_vec();
        Self {
            root_pem: root.pem(),
            intermediate_der: intermediate.der().to_vec(),
            leaf_der,
            leaf_key,
            issuer_raw,
            serial,
        }
    }

    /// The base64 PKCS#7 `signature` of an attested document with `content`.
    pub fn sign(&self, content: &[u8]) -> String {
        let signature = self
            .leaf_key
            .sign(content)
            .unwrap_or_else(|e| panic!("sign: {e}"));
        let sha256_rsa = seq(&[oid(OID_SHA256_RSA), der(0x05, &[])]);
        let rsa = seq(&[oid(OID_RSA), der(0x05, &[])]);
        let signer_info = seq(&[
            der(0x02, &[1]),
            seq(&[self.issuer_raw.clone(), der(0x02, &self.serial)]),
            sha256_rsa.clone(),
            rsa,
            der(0x04, &signature),
        ]);
        let signed_data = seq(&[
            der(0x02, &[1]),
            der(0x31, &sha256_rsa),
            seq(&[oid(OID_DATA), der(0xa0, &der(0x04, content))]),
            der(0xa0, &self.leaf_der),
            der(0x31, &signer_info),
        ]);
        let info = seq(&[oid(OID_SIGNED_DATA), der(0xa0, &signed_data)]);
        base64::engine::general_purpose::STANDARD.encode(info)
    }

    /// The IMDS answer (`{"encoding":"pkcs7","signature":…}`) for a document of `vm_id` in
    /// `subscription` made for `nonce`, in IMDS's content layout, expiring in six hours.
    pub fn document(&self, vm_id: &str, subscription: &str, nonce: &str) -> Value {
        let now = time::OffsetDateTime::now_utc();
        let stamp = |t: time::OffsetDateTime| {
            format!(
                "{:02}/{:02}/{:02} {:02}:{:02}:{:02} -0000",
                u8::from(t.month()),
                t.day(),
                t.year() % 100,
                t.hour(),
                t.minute(),
                t.second()
            )
        };
        let content = json!({
            "licenseType": "",
            "nonce": nonce,
            "plan": {"name": "", "product": "", "publisher": ""},
            "sku": "22_04-lts-gen2",
            "subscriptionId": subscription,
            "timeStamp": {"createdOn": stamp(now), "expiresOn": stamp(now + time::Duration::hours(6))},
            "vmId": vm_id,
        });
        json!({"encoding": "pkcs7", "signature": self.sign(content.to_string().as_bytes())})
    }
}
