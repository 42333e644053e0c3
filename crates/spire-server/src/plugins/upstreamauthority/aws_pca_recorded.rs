//! `aws_pca` against the ACM Private CA answers moto 5.2.0 does not give: a subordinate CA's
//! `GetCertificate` chain up to the offline root, and `RequestInProgressException` while the
//! certificate is being issued. A loopback stand-in (`spire_e2e::aws_scripted`) serves
//! bodies shaped exactly as the ACM PCA API reference documents them — no response recorded
//! from real AWS is used:
//! - `IssueCertificate` → `{"CertificateArn": "string"}`
//!   (https://docs.aws.amazon.com/privateca/latest/APIReference/API_IssueCertificate.html);
//! - `GetCertificate` → `{"Certificate": "string", "CertificateChain": "string"}`, the chain
//!   "chains up to the root CA certificate that you used to sign your private CA certificate"
//!   (https://docs.aws.amazon.com/privateca/latest/APIReference/API_GetCertificate.html);
//! - `RequestInProgressException` (HTTP 400, listed under that page's Errors), in the
//!   awsJson1_1 error shape `{"__type": ..., "message": ...}`
//!   (https://smithy.io/2.0/aws/protocols/aws-json-1_1-protocol.html); the message texts
//!   are ours.
//!
//! The certificates are the test's own (root → PCA subordinate → the issued server CA).

use super::*;
use serde_json::json;
use spire_common::aws::Credentials;
use spire_e2e::aws_scripted::ScriptedAws;

const CA_ARN: &str = "arn:aws:acm-pca:us-east-1:111122223333:certificate-authority/\
                      12345678-1234-1234-1234-123456789012";
const CERT_ARN: &str = "arn:aws:acm-pca:us-east-1:111122223333:certificate-authority/\
                        12345678-1234-1234-1234-123456789012/certificate/\
                        286535153982981100925020015808220737245";

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap_or_else(|e| panic!("params: {e}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params
}

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"))
}

/// Root → PCA (subordinate) → issued server CA, and the server CA's CSR.
struct Chain {
    root: rcgen::Certificate,
    pca: rcgen::Certificate,
    issued: rcgen::Certificate,
    csr: Vec<u8>,
}

fn chain() -> Chain {
    let (root_key, pca_key, server_key) = (key(), key(), key());
    let root_params = ca_params("offline root");
    let root = root_params
        .self_signed(&root_key)
        .unwrap_or_else(|e| panic!("root: {e}"));
    let root_issuer = rcgen::Issuer::from_params(&root_params, &root_key);
    let pca_params = ca_params("ACM PCA subordinate");
    let pca = pca_params
        .signed_by(&pca_key, &root_issuer)
        .unwrap_or_else(|e| panic!("pca: {e}"));
    let pca_issuer = rcgen::Issuer::from_params(&pca_params, &pca_key);
    let server_params = ca_params("SPIRE server CA");
    let csr = server_params
        .serialize_request(&server_key)
        .unwrap_or_else(|e| panic!("csr: {e}"))
        .der()
        .to_vec();
    let issued = server_params
        .signed_by(&server_key, &pca_issuer)
        .unwrap_or_else(|e| panic!("issued: {e}"));
    Chain {
        root,
        pca,
        issued,
        csr,
    }
}

fn authority(stand_in: &ScriptedAws) -> AwsPcaUpstreamAuthority {
    AwsPcaUpstreamAuthority {
        client: AwsClient::new(AwsConfig {
            region: "us-east-1".into(),
            static_credentials: Some(Credentials::new("AKIDTEST", "test-secret", None)),
            endpoint: Some(stand_in.endpoint.clone()),
            ..AwsConfig::default()
        })
        .unwrap_or_else(|e| panic!("client: {e}")),
        clock: crate::ca::system_clock(),
        certificate_authority_arn: CA_ARN.into(),
        signing_algorithm: "SHA256WITHECDSA".into(),
        ca_signing_template_arn: DEFAULT_CA_SIGNING_TEMPLATE_ARN.into(),
        supplemental_bundle: Vec::new(),
    }
}

#[tokio::test]
async fn a_subordinate_pcas_chain_is_split_and_in_progress_issuance_is_waited_for() {
    let chain = chain();
    let stand_in = ScriptedAws::start();
    stand_in.answer(
        "IssueCertificate",
        200,
        json!({ "CertificateArn": CERT_ARN }),
    );
    stand_in.answer(
        "GetCertificate",
        400,
        json!({"__type": "RequestInProgressException", "message": "issuance in progress"}),
    );
    stand_in.answer(
        "GetCertificate",
        200,
        json!({
            "Certificate": chain.issued.pem(),
            "CertificateChain": format!("{}{}", chain.pca.pem(), chain.root.pem()),
        }),
    );
    let started = std::time::Instant::now();
    let minted = authority(&stand_in)
        .mint_x509_ca(&chain.csr, Duration::from_secs(3600))
        .await
        .unwrap_or_else(|e| panic!("mint: {e}"));
    // Our CA, then the PCA's certificate; the root (last of the chain) is the bundle.
    assert_eq!(
        minted.x509_ca_chain,
        vec![chain.issued.der().to_vec(), chain.pca.der().to_vec()]
    );
    let roots: Vec<Vec<u8>> = minted
        .upstream_x509_roots
        .iter()
        .map(|r| r.asn1.clone())
        .collect();
    assert_eq!(roots, vec![chain.root.der().to_vec()]);

    // IssueCertificate as upstream sends it, then GetCertificate again after the waiter's
    // first pause.
    let requests = stand_in.requests();
    let ops: Vec<&str> = requests.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(
        ops,
        ["IssueCertificate", "GetCertificate", "GetCertificate"]
    );
    assert!(
        started.elapsed() >= POLL_MIN_DELAY,
        "{:?}",
        started.elapsed()
    );
    let issue = &requests[0].body;
    assert_eq!(issue["CertificateAuthorityArn"], CA_ARN);
    assert_eq!(issue["SigningAlgorithm"], "SHA256WITHECDSA");
    assert_eq!(issue["TemplateArn"], DEFAULT_CA_SIGNING_TEMPLATE_ARN);
    assert_eq!(issue["Validity"]["Type"], "ABSOLUTE");
    let not_after = issue["Validity"]["Value"].as_i64().unwrap_or_default();
    let expected = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    assert!((expected - not_after).abs() < 60, "{issue}");
    let csr_pem = base64::engine::general_purpose::STANDARD
        .decode(issue["Csr"].as_str().unwrap_or_default())
        .unwrap_or_default();
    assert_eq!(
        spire_core::pem::decode_all(&csr_pem).unwrap_or_default(),
        vec![(
            spire_core::pem::CERTIFICATE_REQUEST.to_owned(),
            chain.csr.clone()
        )]
    );
    for get in &requests[1..] {
        assert_eq!(get.body["CertificateArn"], CERT_ARN);
        assert_eq!(get.body["CertificateAuthorityArn"], CA_ARN);
        assert!(
            get.authorization
                .starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
        );
    }
}

#[tokio::test]
async fn another_get_certificate_error_ends_the_wait_with_awss_code() {
    let chain = chain();
    let stand_in = ScriptedAws::start();
    stand_in.answer(
        "IssueCertificate",
        200,
        json!({ "CertificateArn": CERT_ARN }),
    );
    stand_in.answer(
        "GetCertificate",
        400,
        json!({"__type": "RequestFailedException", "message": "the request failed"}),
    );
    let err = authority(&stand_in)
        .mint_x509_ca(&chain.csr, Duration::from_secs(3600))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("upstreamauthority(aws_pca): failed waiting for issuance"),
        "{err}"
    );
    assert!(err.contains("RequestFailedException"), "{err}");
    assert_eq!(stand_in.requests().len(), 2, "no retry");
}
