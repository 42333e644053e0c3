//! The `aws_pca` UpstreamAuthority end to end against moto's ACM Private CA (real signed
//! requests over loopback): a root private CA is created and activated in moto through its
//! API (`pca_setup.py`), our server is configured with upstream's keys and has its X.509 CA
//! issued by it (`DescribeCertificateAuthority`, `IssueCertificate`, `GetCertificate`); the
//! trust bundle is the PCA's root plus `supplemental_bundle_path`, and a workload SVID fetched
//! from an agent verifies against it with `openssl verify`.
//!
//! What moto 5.2.0 fakes, and how the test deals with it: its `IssueCertificate` ignores
//! `SigningAlgorithm` and `Validity` (a year, SHA-512) and only knows the RootCACertificate/V1
//! and EndEntityCertificate/V1 templates, so a certificate issued with upstream's default
//! SubordinateCACertificate_PathLen0/V1 template has no CA basic constraints: with the
//! default template the test checks the calls and that the server refuses such a CA. The
//! SVID check configures `ca_signing_template_arn` with RootCACertificate/V1, the one
//! template moto gives CA extensions; moto then returns no `CertificateChain`, which our
//! plugin completes with `GetCertificateAuthorityCertificate` (real ACM always returns the
//! chain up to the root).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use spire_e2e::aws::{AwsCall, Moto, with_env};
use spire_e2e::pki::{openssl_verify, pem_certificates, write_pem};
use spire_e2e::subdir as dir;
use spire_e2e::write_server_config_with_plugins as config_text;
use spire_e2e::{AgentProcess, ServerProcess, binary, current_uid, run_to_failure};

/// `UpstreamAuthority "aws_pca"` with `keys` (HCL lines) in its `plugin_data`.
fn plugin(keys: &[(&str, &str)]) -> String {
    let lines: String = keys
        .iter()
        .map(|(k, v)| format!("            {k} = \"{v}\"\n"))
        .collect();
    format!(
        "    UpstreamAuthority \"aws_pca\" {{\n        plugin_data {{\n{lines}        }}\n    }}\n"
    )
}

/// Starts our server with `env` (moto's endpoint and credentials) and `plugin`.
fn start_server(dir: &Path, env: &[(String, String)], plugin: &str) -> ServerProcess {
    let program = with_env(dir, &binary("spire-server"), env);
    ServerProcess::start_program_on_free_port(&program, dir, |port| config_text(dir, port, plugin))
}

/// The role `assume_role_arn` names (in moto's default account, where the CA lives).
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/spire-pca-issuer";

/// One STS `AssumeRole` of [`ROLE_ARN`] signed with the environment's keys, and every
/// `service` call (`operation` among them) signed with the role's temporary credentials.
fn assert_assumed_role_signed(calls: &[AwsCall], service: &str, operation: &str) {
    let sts: Vec<&AwsCall> = calls.iter().filter(|c| c.service == "sts").collect();
    assert_eq!(sts.len(), 1, "one AssumeRole: {calls:?}");
    assert_eq!(sts[0].operation, "AssumeRole");
    assert_eq!(sts[0].key_id, "AKIDSPIRESERVER", "the base credentials");
    assert!(
        sts[0]
            .body
            .contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fspire-pca-issuer"),
        "{}",
        sts[0].body
    );
    let of_service: Vec<&AwsCall> = calls.iter().filter(|c| c.service == service).collect();
    assert!(
        of_service.iter().any(|c| c.operation == operation),
        "{calls:?}"
    );
    for call in of_service {
        assert!(
            call.key_id.starts_with("ASIA") && call.session_token,
            "not signed as the role: {call:?}"
        );
    }
}

/// A self-signed CA certificate that is not the PCA's, for `supplemental_bundle_path`.
fn extra_root() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "supplemental root");
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn aws_pca_upstream_authority_has_the_server_ca_issued_by_acm_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let fixture = moto.setup_pca(&dir(tmp.path(), "fixture"));
    assert_eq!(fixture["status_before_import"], "PENDING_CERTIFICATE");
    assert_eq!(fixture["status"], "ACTIVE");
    let ca_arn = fixture["ca_arn"].as_str().unwrap();
    let root = pem_certificates(fixture["root_pem"].as_str().unwrap());
    assert_eq!(root.len(), 1);

    // Upstream's defaults (template SubordinateCACertificate_PathLen0/V1, the CA's signing
    // algorithm); moto reached through the plugin's own `endpoint` key only. The calls go
    // through, but moto issues that template's certificate without CA basic constraints, so
    // the server refuses to use it (as upstream's X509CA validation would).
    let env: Vec<_> = moto
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .collect();
    let defaults_dir = dir(tmp.path(), "default-template");
    let (config, _) = config_text(
        &defaults_dir,
        spire_e2e::free_port(),
        &plugin(&[
            ("region", "us-east-1"),
            ("certificate_authority_arn", ca_arn),
            ("endpoint", &moto.endpoint),
        ]),
    );
    let mut command = Command::new(with_env(&defaults_dir, &binary("spire-server"), &env));
    command.args(["run", "-config"]).arg(&config);
    let log = run_to_failure(
        command,
        &defaults_dir.join("server.log"),
        Duration::from_secs(60),
        "the server used moto's extension-less certificate as its CA",
    );
    assert!(
        log.contains("arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"),
        "{log}"
    );
    assert!(
        log.contains("Submitting CSR to ACM\" signing_algorithm=SHA256WITHRSA"),
        "the CA's algorithm: {log}"
    );
    assert!(log.contains("Certificate and chain received"), "{log}");
    assert!(log.contains("issuer certificate is not a CA"), "{log}");

    // The CA-extension template moto implements, and a supplemental bundle holding the PCA
    // root again (deduplicated) and another root: an agent's workload SVID verifies. With
    // `assume_role_arn`, every ACM PCA call is made as the role (moto's STS).
    let server_dir = dir(tmp.path(), "ca-template");
    let extra = extra_root();
    let supplemental = write_pem(
        &server_dir.join("supplemental.pem"),
        &[root[0].clone(), extra.clone()],
    );
    let supplemental = supplemental.display().to_string();
    moto.start_recording();
    let server = start_server(
        &server_dir,
        &moto.env(),
        &plugin(&[
            ("region", "us-east-1"),
            ("certificate_authority_arn", ca_arn),
            (
                "ca_signing_template_arn",
                "arn:aws:acm-pca:::template/RootCACertificate/V1",
            ),
            ("signing_algorithm", "SHA256WITHRSA"),
            ("supplemental_bundle_path", &supplemental),
            ("assume_role_arn", ROLE_ARN),
        ]),
    );
    let bundle = pem_certificates(&server.cli_ok(&["bundle", "show"]));
    assert_eq!(
        bundle,
        vec![root[0].clone(), extra],
        "root, then supplemental"
    );
    assert_assumed_role_signed(&moto.recorded_calls(), "acm-pca", "IssueCertificate");
    let token = server.generate_join_token("spiffe://example.org/node");
    let agent = AgentProcess::start(&dir(tmp.path(), "agent"), &server, Some(&token));
    server.create_uid_entry(
        "spiffe://example.org/node",
        "spiffe://example.org/workload",
        current_uid(),
        &[],
    );
    let fetched = dir(tmp.path(), "fetched");
    let fetched_arg = fetched.display().to_string();
    let svid = spire_e2e::aws::wait_for("a workload SVID", Duration::from_secs(90), || {
        agent
            .cli(&["api", "fetch", "x509", "-write", &fetched_arg])
            .status
            .success()
            .then(|| std::fs::read_to_string(fetched.join("svid.0.pem")).ok())
            .flatten()
    });
    let svid = pem_certificates(&svid);
    let (leaf, intermediates) = svid.split_first().unwrap();
    assert_eq!(intermediates.len(), 1, "the server's PCA-issued CA");
    openssl_verify(&fetched, &bundle, intermediates, leaf)
        .unwrap_or_else(|e| panic!("the workload SVID does not verify against the bundle: {e}"));
    assert!(openssl_verify(&fetched, &bundle[1..], intermediates, leaf).is_err());

    // A CA that does not exist stops the server at start, naming the call and AWS's error.
    let bad_dir = dir(tmp.path(), "missing-ca");
    let (config, _) = config_text(
        &bad_dir,
        spire_e2e::free_port(),
        &plugin(&[
            ("region", "us-east-1"),
            (
                "certificate_authority_arn",
                "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/missing",
            ),
        ]),
    );
    let mut command = Command::new(with_env(&bad_dir, &binary("spire-server"), &moto.env()));
    command.args(["run", "-config"]).arg(&config);
    let out = run_to_failure(
        command,
        &bad_dir.join("server.log"),
        Duration::from_secs(60),
        "the server started although its aws_pca CA does not exist",
    );
    assert!(out.contains("upstreamauthority(aws_pca)"), "{out}");
    assert!(
        out.contains("failed to describe CertificateAuthority"),
        "{out}"
    );
    assert!(out.contains("ResourceNotFoundException"), "{out}");
}
