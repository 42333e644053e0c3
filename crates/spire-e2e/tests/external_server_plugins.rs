//! External server plugins of the types upstream added after spire-plugin-sdk v1.4.4's
//! NodeAttestor/Notifier set, end to end with real plugin binaries
//! (crates/spire-e2e/go-plugins, built by scripts/plugin-deps.sh):
//!
//! - `fileupstream` (SDK v1.4.4), an UpstreamAuthority signing with a CA from its
//!   plugin_data: our server's CA chains to that root, a workload SVID verifies against the
//!   bundle, and a root sent later on the mint stream reaches the bundle;
//! - `filepublisher` (the SDK commit upstream v1.13.3 pins), a BundlePublisher writing each
//!   bundle it gets to a file: written at start, and again when the CA prepares a new
//!   authority, as under upstream v1.13.3's server;
//! - `claimcomposer` (same SDK), a CredentialComposer adding a subject OU to workload
//!   X509-SVIDs and a claim to workload JWT-SVIDs; upstream v1.13.3's server with the same
//!   composers gives the same subject attributes and claims.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, current_uid, eventually, interop_program,
    server_config,
};
use spire_e2e::{subdir as dir, test_plugin as plugin};

const TD: &str = "example.org";
const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

/// Starts our server with `blocks` added to its `plugins { }` (join_token stays).
fn start_server(dir: &Path, blocks: &str) -> ServerProcess {
    start_server_program(&binary("spire-server"), dir, blocks)
}

/// [`start_server`] with another `spire-server` binary (upstream's).
fn start_server_program(program: &Path, dir: &Path, blocks: &str) -> ServerProcess {
    ServerProcess::start_program_on_free_port(program, dir, |port| {
        let socket = dir.join("api.sock");
        let data_dir = dir.join("data");
        let config_path = dir.join("server.conf");
        let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &connection_string,
            extra_server_keys: "",
        });
        assert!(config.contains(JOIN_TOKEN_BLOCK), "{config}");
        let config = config.replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{blocks}"));
        std::fs::write(&config_path, config).unwrap();
        (config_path, socket)
    })
}

/// A self-signed CA: (certificate DER, certificate PEM, PKCS#8 key PEM).
fn root_ca(name: &str) -> (Vec<u8>, String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let cert = params.self_signed(&key).unwrap();
    (cert.der().to_vec(), cert.pem(), key.serialize_pem())
}

/// The stored bundle's X.509 authorities (DER).
fn bundle_authorities(server: &ServerProcess) -> Vec<Vec<u8>> {
    let shown = server.cli_json(&["bundle", "show"]);
    shown["x509_authorities"]
        .as_array()
        .unwrap_or_else(|| panic!("no x509_authorities: {shown}"))
        .iter()
        .map(|a| {
            base64::engine::general_purpose::STANDARD
                .decode(a["asn1"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

/// Starts an agent by join token with an entry for this test's uid; returns the agent and
/// the workload's SPIFFE ID.
fn agent_with_workload(server: &ServerProcess, case: &Path) -> (AgentProcess, String) {
    let agent_id = format!("spiffe://{TD}/node");
    let token = server.generate_join_token(&agent_id);
    let workload = format!("spiffe://{TD}/workload");
    server.create_uid_entry(&agent_id, &workload, current_uid(), &[]);
    let agent = AgentProcess::start(&dir(case, "agent"), server, Some(&token));
    (agent, workload)
}

#[test]
fn an_external_upstream_authority_signs_the_ca_and_streams_root_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let (root_der, root_pem, root_key) = root_ca("fileupstream test root");
    let pki = dir(tmp.path(), "pki");
    std::fs::write(pki.join("root.pem"), &root_pem).unwrap();
    std::fs::write(pki.join("root.key"), &root_key).unwrap();
    let extra_roots = pki.join("extra-roots.pem");
    let block = format!(
        "    UpstreamAuthority \"fileupstream\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            key_path = \"{}\"\n            cert_path = \"{}\"\n            extra_roots_path = \"{}\"\n        }}\n    }}\n",
        plugin("fileupstream").display(),
        pki.join("root.key").display(),
        pki.join("root.pem").display(),
        extra_roots.display()
    );
    let server = start_server(&dir(tmp.path(), "server"), &block);

    // The bundle holds the plugin's root only: our CA is an intermediate under it.
    assert_eq!(
        bundle_authorities(&server),
        vec![root_der.clone()],
        "{}",
        server.log()
    );

    // A workload SVID chains to the plugin's root through our intermediate.
    let (agent, workload) = agent_with_workload(&server, tmp.path());
    let out = dir(tmp.path(), "svid");
    let fetched = agent.cli_eventually(
        &["api", "fetch", "x509", "-write", out.to_str().unwrap()],
        Duration::from_secs(90),
    );
    assert!(fetched.contains(&workload), "{fetched}");
    let svid = out.join("svid.0.pem");
    let svid_pem = std::fs::read_to_string(&svid).unwrap();
    assert!(
        svid_pem.matches("BEGIN CERTIFICATE").count() >= 2,
        "the SVID carries our intermediate: {svid_pem}"
    );
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(out.join("bundle.0.pem"))
        .arg("-untrusted")
        .arg(&svid)
        .arg(&svid)
        .output()
        .expect("openssl is needed for this test: install the openssl package");
    assert!(
        verify.status.success(),
        "the SVID does not verify against the bundle: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let bundle_pem = std::fs::read_to_string(out.join("bundle.0.pem")).unwrap();
    assert_eq!(
        bundle_pem.trim(),
        root_pem.trim(),
        "the workload's bundle is the plugin root"
    );

    // A root the plugin sends later on the mint stream reaches the bundle.
    let (new_root_der, new_root_pem, _) = root_ca("fileupstream second root");
    std::fs::write(&extra_roots, &new_root_pem).unwrap();
    eventually(
        "the streamed root is in the bundle",
        Duration::from_secs(60),
        || {
            let authorities = bundle_authorities(&server);
            authorities.contains(&new_root_der) && authorities.contains(&root_der)
        },
    );
    assert!(
        server.log().contains("Upstream X.509 roots updated"),
        "{}",
        server.log()
    );
}

/// The publisher's file: (sequence number, number of X.509 authorities).
fn published(path: &Path) -> Option<(u64, usize)> {
    let line = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&TD), "{line}");
    Some((fields.get(1)?.parse().ok()?, fields.get(2)?.parse().ok()?))
}

/// What a server (`program`) published through `filepublisher`: at start, then after
/// `localauthority x509 prepare`. Each publication as (trust domain, number of X.509
/// authorities, whether the first is the bundle's first at start), repeats folded, and whether
/// the sequence numbers never went down.
fn publications(program: &Path, case: &Path) -> (Vec<(String, usize, bool)>, bool) {
    let target = case.join("published-bundle");
    let block = format!(
        "    BundlePublisher \"filepublisher\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            path = \"{}\"\n        }}\n    }}\n",
        plugin("filepublisher").display(),
        target.display()
    );
    let server = start_server_program(program, &dir(case, "server"), &block);

    eventually(
        "the bundle is published at start",
        Duration::from_secs(30),
        || published(&target).is_some_and(|(_, n)| n == 1),
    );
    let (first_sequence, _) = published(&target).unwrap();

    // Preparing a new X.509 authority changes the bundle: published at once.
    server.cli_ok(&["localauthority", "x509", "prepare"]);
    eventually(
        "the changed bundle is published",
        Duration::from_secs(15),
        || published(&target).is_some_and(|(seq, n)| n == 2 && seq > first_sequence),
    );
    drop(server);
    let log = std::fs::read_to_string(case.join("published-bundle.log")).unwrap();
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    let first_der = lines[0][3].split(',').next().unwrap_or_default().to_owned();
    let mut seen: Vec<(String, usize, bool)> = lines
        .iter()
        .map(|l| {
            (
                l[0].to_owned(),
                l[2].parse().unwrap(),
                l[3].split(',').next() == Some(first_der.as_str()),
            )
        })
        .collect();
    seen.dedup();
    let sequences: Vec<u64> = lines.iter().map(|l| l[1].parse().unwrap()).collect();
    (seen, sequences.windows(2).all(|w| w[0] <= w[1]))
}

#[test]
fn an_external_bundle_publisher_gets_the_bundle_at_start_and_on_change_as_under_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = publications(&binary("spire-server"), &dir(tmp.path(), "ours"));
    assert_eq!(
        ours,
        (
            vec![(TD.to_owned(), 1, true), (TD.to_owned(), 2, true)],
            true
        )
    );
    let upstream = interop_program("SPIRE_UPSTREAM_SERVER");
    let upstreams = publications(&upstream, &dir(tmp.path(), "upstream"));
    assert_eq!(ours, upstreams);
}

/// The JSON claims of the first JWT in `text`.
fn jwt_claims(text: &str) -> serde_json::Value {
    let token = text
        .split_whitespace()
        .find(|w| w.starts_with("eyJ") && w.matches('.').count() == 2)
        .unwrap_or_else(|| panic!("no JWT in {text}"));
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// What the composers made of a workload's SVIDs under a server (`program`): the X509-SVID's
/// subject (openssl, one attribute a line, sorted) and the JWT-SVID's claims.
fn composed(program: &Path, case: &Path) -> (Vec<String>, serde_json::Value, String) {
    let blocks = format!(
        "    CredentialComposer \"uniqueid\" {{\n        plugin_data {{}}\n    }}\n    CredentialComposer \"claimcomposer\" {{\n        plugin_cmd = \"{}\"\n        plugin_data {{\n            unit = \"composed-unit\"\n            claim = \"hello\"\n        }}\n    }}\n",
        plugin("claimcomposer").display()
    );
    let server = start_server_program(program, &dir(case, "server"), &blocks);
    let (agent, workload) = agent_with_workload(&server, case);

    let out = dir(case, "svid");
    agent.cli_eventually(
        &["api", "fetch", "x509", "-write", out.to_str().unwrap()],
        Duration::from_secs(90),
    );
    let subject = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "oid,sep_multiline",
            "-in",
        ])
        .arg(out.join("svid.0.pem"))
        .output()
        .expect("openssl is needed for this test: install the openssl package");
    let mut subject: Vec<String> = String::from_utf8_lossy(&subject.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    subject.sort();
    let fetched = agent.cli_eventually(
        &["api", "fetch", "jwt", "-audience", "composed-aud"],
        Duration::from_secs(60),
    );
    (subject, jwt_claims(&fetched), workload)
}

#[test]
fn credential_composers_shape_workload_svids_as_under_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let (subject, claims, workload) = composed(&binary("spire-server"), &dir(tmp.path(), "ours"));

    // X509-SVID: the external composer's OU and the built-in uniqueid's attribute.
    let id = spire_core::SpiffeId::parse(&workload).unwrap();
    let unique = spire_core::x509::unique_id(&id);
    assert!(
        subject.iter().any(|l| l == "2.5.4.11=composed-unit"),
        "{subject:?}"
    );
    assert!(
        subject.iter().any(|l| *l == format!("2.5.4.45={unique}")),
        "{subject:?}"
    );
    assert!(
        subject.iter().any(|l| l == "2.5.4.10=SPIRE"),
        "the default subject stays: {subject:?}"
    );

    // JWT-SVID: the claim the plugin added, next to the standard ones.
    assert_eq!(
        claims["composed"],
        format!("hello for {workload}"),
        "{claims}"
    );
    assert_eq!(claims["sub"], workload, "{claims}");
    assert_eq!(
        claims["aud"],
        serde_json::json!(["composed-aud"]),
        "{claims}"
    );
    assert!(claims["exp"].is_i64(), "exp stays an integer: {claims}");
    assert!(claims["iat"].is_i64(), "iat stays an integer: {claims}");

    // Upstream v1.13.3's server with the same composers: the same subject and claims.
    let upstream = interop_program("SPIRE_UPSTREAM_SERVER");
    let (up_subject, up_claims, _) = composed(&upstream, &dir(tmp.path(), "upstream"));
    assert_eq!(subject, up_subject);
    let keys =
        |c: &serde_json::Value| -> Vec<String> { c.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&claims), keys(&up_claims), "{claims}\n{up_claims}");
    for claim in ["composed", "sub", "aud"] {
        assert_eq!(claims[claim], up_claims[claim], "{claim}");
    }
}
