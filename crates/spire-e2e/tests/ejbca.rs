//! The `ejbca` UpstreamAuthority end to end: our server, configured with upstream's keys, has
//! its X.509 CA issued over mutual TLS through EJBCA's `pkcs10enroll` REST call, the trust
//! bundle is EJBCA's root, and an agent's workload SVID verifies against it with
//! `openssl verify`.
//!
//! EJBCA is a Java EE application that cannot run here, so `tests/data/fake_ejbca.py` stands
//! in for its REST API (a hand-written fake, as the project's rules allow only for what cannot
//! run here): HTTPS requiring a client certificate, EJBCA's request and answer bodies as
//! Keyfactor's ejbca-go-client-sdk v1.0.2 (upstream's client) defines them, base64 DER or PEM
//! answers with the chain issuing CA first and root last, and EJBCA's error body for an
//! unknown CA. Its certificates are signed by Python's `cryptography` (from the moto venv of
//! `scripts/cloud-deps.sh`), independent of our code.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use spire_e2e::pki::{openssl_verify, pem_certificates};
use spire_e2e::subdir as dir;
use spire_e2e::write_server_config_with_plugins as config_text;
use spire_e2e::{AgentProcess, ServerProcess, binary, current_uid, eventually, run_to_failure};

/// The fake EJBCA, killed when dropped.
struct FakeEjbca {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl FakeEjbca {
    fn start(dir: &Path, response_format: &str) -> Self {
        let python = std::env::var("SPIRE_TEST_CLOUD_PYTHON").unwrap_or_else(|_| {
            panic!(
                "SPIRE_TEST_CLOUD_PYTHON is not set: run `. target/cloud-deps.env` \
                 (written by scripts/cloud-deps.sh, which the test command runs)"
            )
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fake_ejbca.py");
        let child = Command::new(python)
            .arg(&script)
            .arg(dir)
            .arg(response_format)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("fake_ejbca.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", script.display()));
        let port_file = dir.join("port");
        eventually("the fake EJBCA to listen", Duration::from_secs(60), || {
            port_file.exists()
        });
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Self {
            child,
            dir: dir.to_owned(),
            port,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The enrollment requests it received, as JSON objects.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `UpstreamAuthority "ejbca"` for it, with `ca_name`.
    fn plugin(&self, ca_name: &str) -> String {
        format!(
            r#"    UpstreamAuthority "ejbca" {{
        plugin_data {{
            hostname = "https://127.0.0.1:{port}"
            ca_cert_path = "{ca}"
            client_cert_path = "{cert}"
            client_cert_key_path = "{key}"
            ca_name = "{ca_name}"
            end_entity_profile_name = "fakeSpireIntermediateCAEEP"
            certificate_profile_name = "fakeSubCACP"
            account_binding_id = "foo123"
        }}
    }}
"#,
            port = self.port,
            ca = self.path("server_ca.pem"),
            cert = self.path("client.pem"),
            key = self.path("client.key"),
        )
    }
}

impl Drop for FakeEjbca {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fails_to_start(dir: &Path, plugin: &str, why: &str) -> String {
    let (config, _) = config_text(dir, spire_e2e::free_port(), plugin);
    let mut command = Command::new(binary("spire-server"));
    command.args(["run", "-config"]).arg(&config);
    run_to_failure(
        command,
        &dir.join("server.log"),
        Duration::from_secs(60),
        why,
    )
}

#[test]
fn ejbca_upstream_authority_issues_the_server_ca_over_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let ejbca = FakeEjbca::start(&dir(tmp.path(), "ejbca"), "DER");
    let root = pem_certificates(&std::fs::read_to_string(ejbca.path("root.pem")).unwrap());

    let server_dir = dir(tmp.path(), "server");
    let server = ServerProcess::start_on_free_port(&server_dir, |port| {
        config_text(&server_dir, port, &ejbca.plugin("Fake-Sub-CA"))
    });
    let bundle = pem_certificates(&server.cli_ok(&["bundle", "show"]));
    assert_eq!(bundle, root, "the trust bundle is EJBCA's root");

    // One enrollment, as upstream's plugin sends it: the end entity named after the CSR's
    // trust domain URI (SPIRE's CA CSR has no CN or DNS name), a random 16-letter password,
    // the chain asked for, our client certificate presented.
    let requests = ejbca.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request["username"], "spiffe://example.org");
    assert_eq!(request["certificate_authority_name"], "Fake-Sub-CA");
    assert_eq!(request["certificate_profile_name"], "fakeSubCACP");
    assert_eq!(
        request["end_entity_profile_name"],
        "fakeSpireIntermediateCAEEP"
    );
    assert_eq!(request["account_binding_id"], "foo123");
    assert_eq!(request["include_chain"], true);
    assert_eq!(request["password"].as_str().unwrap().len(), 16);
    assert!(
        request["certificate_request"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    );
    assert_eq!(request["_client_subject"]["commonName"], "spire-server");
    assert_eq!(request["_content_type"], "application/json");

    // A workload SVID chains through our CA and EJBCA's issuing CA to the root.
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
    eventually("a workload SVID", Duration::from_secs(90), || {
        agent
            .cli(&["api", "fetch", "x509", "-write", &fetched_arg])
            .status
            .success()
    });
    let svid = pem_certificates(&std::fs::read_to_string(fetched.join("svid.0.pem")).unwrap());
    let (leaf, intermediates) = svid.split_first().unwrap();
    assert_eq!(intermediates.len(), 2, "our CA, then EJBCA's issuing CA");
    openssl_verify(&fetched, &bundle, intermediates, leaf)
        .unwrap_or_else(|e| panic!("the workload SVID does not verify against the bundle: {e}"));
}

#[test]
fn ejbca_pem_answers_work_and_errors_stop_start_up_naming_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let ejbca = FakeEjbca::start(&dir(tmp.path(), "ejbca"), "PEM");
    let root = pem_certificates(&std::fs::read_to_string(ejbca.path("root.pem")).unwrap());

    let server_dir = dir(tmp.path(), "server");
    let server = ServerProcess::start_on_free_port(&server_dir, |port| {
        config_text(&server_dir, port, &ejbca.plugin("Fake-Sub-CA"))
    });
    assert_eq!(pem_certificates(&server.cli_ok(&["bundle", "show"])), root);
    drop(server);

    // EJBCA's refusal, with its error body.
    let log = fails_to_start(
        &dir(tmp.path(), "unknown-ca"),
        &ejbca.plugin("No-Such-CA"),
        "the server started although EJBCA refused its CA name",
    );
    assert!(log.contains("upstreamauthority(ejbca)"), "{log}");
    assert!(
        log.contains("failed to enroll CSR - 400 Bad Request"),
        "{log}"
    );
    assert!(
        log.contains("CA with name No-Such-CA doesn't exist."),
        "{log}"
    );

    // A client key that is not there stops start-up naming the file.
    let missing = dir(tmp.path(), "missing-key");
    let plugin = ejbca
        .plugin("Fake-Sub-CA")
        .replace(&ejbca.path("client.key"), "/nonexistent/client.key");
    let log = fails_to_start(
        &missing,
        &plugin,
        "the server started without its client key",
    );
    assert!(
        log.contains("failed to read client key from file /nonexistent/client.key"),
        "{log}"
    );

    // Without the client certificate EJBCA's TLS refuses the connection.
    let other = dir(tmp.path(), "wrong-client");
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".to_owned()]).unwrap();
    std::fs::write(other.join("stranger.pem"), stranger.cert.pem()).unwrap();
    std::fs::write(
        other.join("stranger.key"),
        stranger.signing_key.serialize_pem(),
    )
    .unwrap();
    let plugin = ejbca
        .plugin("Fake-Sub-CA")
        .replace(
            &ejbca.path("client.pem"),
            &other.join("stranger.pem").display().to_string(),
        )
        .replace(
            &ejbca.path("client.key"),
            &other.join("stranger.key").display().to_string(),
        );
    let log = fails_to_start(
        &other,
        &plugin,
        "the server started with a client EJBCA does not trust",
    );
    assert!(log.contains("upstreamauthority(ejbca)"), "{log}");
    assert!(log.contains("failed to enroll CSR"), "{log}");
}
