//! A real attested document of an Azure Government VM (March 2023, published as test data
//! by coder/coder's `azureidentity` tests), signed by Azure's `metadata.azure.us` certificate
//! under "Microsoft Azure TLS Issuing CA 05", which DigiCert Global Root G2 (one of upstream's
//! roots) issued: the production checks accept it at a time its certificates were valid, and
//! refuse it, naming the check, once expired, for another cloud's domain, tampered with, or
//! without the intermediate.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use super::*;

const GOVCLOUD: &str = include_str!("testdata/govcloud-signature.txt");
const CA05: &str = include_str!("testdata/ca05.pem");

fn at(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

fn ca05() -> Vec<u8> {
    crate::pem::decode_certificates(CA05.as_bytes())
        .unwrap()
        .remove(0)
}

fn gov() -> Vec<String> {
    vec!["metadata.azure.us".to_owned()]
}

#[test]
fn a_real_azure_document_verifies_against_upstreams_roots() {
    let doc = SignedDocument::parse(GOVCLOUD.trim()).unwrap();
    assert_eq!(
        doc.issuer_url().unwrap(),
        "http://www.microsoft.com/pkiops/certs/Microsoft%20Azure%20TLS%20Issuing%20CA%2005%20-%20xsign.crt"
    );
    let content = doc
        .verify(
            Some(&ca05()),
            &azure_roots(),
            &gov(),
            at("2023-03-08T18:00:00Z"),
        )
        .unwrap();
    assert_eq!(content.vm_id, "990878d4-068a-4ac4-9ee9-1231d2218ef2");
    assert_eq!(
        content.subscription_id,
        "0afbfffa-5df9-4a3b-987e-fe7577624272"
    );
    assert_eq!(content.nonce, "20230308-230933");
}

#[test]
fn the_real_document_is_refused_naming_each_failed_check() {
    let doc = SignedDocument::parse(GOVCLOUD.trim()).unwrap();
    let roots = azure_roots();
    // The document's own expiry (six hours after it was made).
    let err = doc
        .verify(Some(&ca05()), &roots, &gov(), at("2023-03-09T00:00:00Z"))
        .unwrap_err();
    assert_eq!(err.check, "expired", "{err}");
    // Today: the signing certificate has expired.
    let err = doc
        .verify(Some(&ca05()), &roots, &gov(), OffsetDateTime::now_utc())
        .unwrap_err();
    assert_eq!(err.check, "certificate chain", "{err}");
    assert!(err.detail.contains("expired"), "{err}");
    // Commercial Azure's domain only (upstream's default).
    let err = doc
        .verify(
            Some(&ca05()),
            &roots,
            &[DEFAULT_METADATA_DOMAIN.to_owned()],
            at("2023-03-08T18:00:00Z"),
        )
        .unwrap_err();
    assert_eq!(err.check, "certificate SAN", "{err}");
    // Without the intermediate there is no path to a root.
    let err = doc
        .verify(None, &roots, &gov(), at("2023-03-08T18:00:00Z"))
        .unwrap_err();
    assert_eq!(err.check, "certificate chain", "{err}");
    // Only a root the document does not chain to (DigiCert Global Root CA).
    let err = doc
        .verify(
            Some(&ca05()),
            &roots[1..2],
            &gov(),
            at("2023-03-08T18:00:00Z"),
        )
        .unwrap_err();
    assert_eq!(err.check, "certificate chain", "{err}");
    // An intermediate that did not issue the signer.
    let other = roots.first().cloned().unwrap();
    let err = doc
        .verify(Some(&other), &roots, &gov(), at("2023-03-08T18:00:00Z"))
        .unwrap_err();
    assert_eq!(err.check, "certificate chain", "{err}");
}

#[test]
fn a_tampered_document_fails_the_signature_check() {
    let der = base64::engine::general_purpose::STANDARD
        .decode(GOVCLOUD.trim())
        .unwrap();
    // Claim another VM: the content changes, the signature stays.
    let text = String::from_utf8_lossy(&der).into_owned();
    assert!(text.contains("990878d4"));
    let forged: Vec<u8> = {
        let needle = b"990878d4";
        let pos = der.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut d = der.clone();
        d[pos..pos + needle.len()].copy_from_slice(b"11111111");
        d
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(forged);
    let doc = SignedDocument::parse(&b64).unwrap();
    let err = doc
        .verify(
            Some(&ca05()),
            &azure_roots(),
            &gov(),
            at("2023-03-08T18:00:00Z"),
        )
        .unwrap_err();
    assert_eq!(err.check, "signature", "{err}");
}

#[test]
fn garbage_is_refused_naming_the_check() {
    assert_eq!(
        SignedDocument::parse("").unwrap_err().check,
        "signature encoding"
    );
    assert_eq!(
        SignedDocument::parse("%%%").unwrap_err().check,
        "signature encoding"
    );
    assert_eq!(
        SignedDocument::parse("MAA=").unwrap_err().check,
        "signature encoding"
    );
}

#[test]
fn hosts_and_times_parse_as_go_and_imds_write_them() {
    assert_eq!(
        url_host("http://www.microsoft.com/pkiops/x.crt").as_deref(),
        Some("www.microsoft.com")
    );
    assert_eq!(
        url_host("http://u@www.microsoft.com:8080/x").as_deref(),
        Some("www.microsoft.com:8080")
    );
    assert_eq!(url_host("nonsense"), None);
    assert_eq!(
        parse_imds_time("03/08/23 23:09:33 -0000"),
        Some(at("2023-03-08T23:09:33Z"))
    );
    assert_eq!(
        parse_imds_time("03/08/23 23:09:33 +0100"),
        Some(at("2023-03-08T22:09:33Z"))
    );
    assert_eq!(parse_imds_time("2023-03-08"), None);
    assert_eq!(azure_roots().len(), 4);
}
