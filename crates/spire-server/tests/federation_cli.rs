//! `spire-server federation create|list|show|update|delete|refresh` against a live server in
//! this process (`server::run` on SQLite, listening on a socket in a temporary folder), through
//! `cli::run_cli_with_stdin`, as a user would type them: both endpoint profiles, trust domain
//! bundles in PEM and SPIFFE formats, `-data` documents from a file and from stdin, the
//! server's refusals, and the pretty and `-output json` outputs.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use spire_core::bundle::Bundle;
use spire_core::jwt::JwtAuthority;
use spire_core::x509::{CaTemplate, Validity, self_signed_ca};
use spire_core::{KeyType, PrivateKey, TrustDomain};
use tokio::sync::oneshot;

/// A server running in this process until dropped.
struct Server {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let socket = dir.path().join("private").join("api.sock");
        let text = format!(
            r#"
            server {{
                bind_address = "127.0.0.1"
                bind_port = "{port}"
                socket_path = "{socket}"
                trust_domain = "example.org"
                data_dir = "{data}"
            }}
            plugins {{
                DataStore "sql" {{
                    plugin_data {{
                        database_type = "sqlite3"
                        connection_string = "{data}/datastore.sqlite3"
                    }}
                }}
                KeyManager "memory" {{
                    plugin_data {{}}
                }}
                NodeAttestor "join_token" {{
                    plugin_data {{}}
                }}
            }}
            "#,
            socket = socket.display(),
            data = data.display(),
            port = free_port(),
        );
        let file = spire_server::config::load_str("federation_cli.conf", &text, false).unwrap();
        let resolved = file.resolve().unwrap();
        let catalog = spire_server::catalog::from_config(&file).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(spire_server::server::run(
            resolved,
            catalog,
            spire_server::logging::LogLevelHandle::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let server = Self {
            socket,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        server.wait_ready().await;
        server
    }

    /// Waits until the admin socket answers a federation call.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (code, _, err) = self.cli(&["federation", "list"]).await;
            if code == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not answer within a minute: {err}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `spire-server <args> -socketPath <ours>`; returns (exit status, stdout, stderr).
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_with_stdin(args, b"").await
    }

    async fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.push("-socketPath".into());
        all.push(self.socket.display().to_string());
        let (mut out, mut err, mut input) = (Vec::new(), Vec::new(), stdin);
        let code = spire_server::cli::run_cli_with_stdin(all, &mut input, &mut out, &mut err).await;
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    /// Runs a command that must succeed with `-output json` and returns its JSON.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-output", "json"]);
        let (code, out, err) = self.cli(&all).await;
        assert_eq!(code, 0, "{all:?}: {err}");
        assert_eq!(err, "", "{all:?}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{all:?}: not JSON ({e}): {out}"))
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the server stops")
                .unwrap()
                .expect("the server stops cleanly");
        }
    }
}

/// A loopback TCP port nothing listens on (the config needs one; port 0 is refused).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA certificate (DER) for `td`.
fn ca_der(td: &str) -> Vec<u8> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let validity = Validity::from_now(time::OffsetDateTime::now_utc(), time::Duration::hours(1));
    self_signed_ca(
        &key,
        &CaTemplate::new(TrustDomain::new(td).unwrap(), validity),
    )
    .unwrap()
}

/// A SPIFFE bundle document for `td` with one X.509 and one JWT authority.
fn spiffe_document(td: &str, x509: &[u8], kid: &str) -> String {
    let mut bundle = Bundle::new(TrustDomain::new(td).unwrap());
    bundle.add_x509_authority(x509.to_vec()).unwrap();
    bundle
        .add_jwt_authority(JwtAuthority {
            key_id: kid.into(),
            public_key_der: PrivateKey::generate(KeyType::EcP256)
                .unwrap()
                .public_key_der(),
            expires_at: None,
        })
        .unwrap();
    bundle.to_spiffe_document().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

const WEB_ORG: &str = "Trust domain              : web.org\n\
                       Bundle endpoint URL       : https://web.org/bundle\n\
                       Bundle endpoint profile   : https_web\n";

const SPIFFE_ORG: &str = "Trust domain              : spiffe.org\n\
                          Bundle endpoint URL       : https://spiffe.org:8443/bundle\n\
                          Bundle endpoint profile   : https_spiffe\n\
                          Endpoint SPIFFE ID        : spiffe://spiffe.org/bundle-endpoint\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_commands_against_a_live_server() {
    let server = Server::start().await;
    let files = tempfile::tempdir().unwrap();

    // Nothing yet.
    assert_eq!(
        server.cli(&["federation", "list"]).await,
        (
            0,
            "Found 0 federation relationships\n".into(),
            String::new()
        )
    );
    let (_, out, _) = server.cli(&["federation", "list", "-output", "json"]).await;
    assert_eq!(
        out,
        "{\"federation_relationships\":[],\"next_page_token\":\"\"}\n"
    );

    // https_web, pretty.
    assert_eq!(
        server
            .cli(&[
                "federation",
                "create",
                "-trustDomain",
                "web.org",
                "-bundleEndpointURL",
                "https://web.org/bundle",
                "-bundleEndpointProfile",
                "https_web",
            ])
            .await,
        (0, format!("\n{WEB_ORG}"), String::new())
    );

    // https_spiffe, JSON.
    let json = server
        .json(&[
            "federation",
            "create",
            "-trustDomain",
            "spiffe.org",
            "-bundleEndpointURL",
            "https://spiffe.org:8443/bundle",
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://spiffe.org/bundle-endpoint",
        ])
        .await;
    assert_eq!(
        json,
        serde_json::json!({"results": [{
            "status": {"code": 0, "message": "OK"},
            "federation_relationship": {
                "trust_domain": "spiffe.org",
                "bundle_endpoint_url": "https://spiffe.org:8443/bundle",
                "https_spiffe": {"endpoint_spiffe_id": "spiffe://spiffe.org/bundle-endpoint"}
            }
        }]})
    );

    // A PEM trust domain bundle: it belongs to the endpoint's trust domain under https_spiffe.
    let pem_der = ca_der("pem.org");
    let pem_path = write(
        files.path(),
        "pem.org.pem",
        &spire_core::pem::encode_certificates([pem_der.as_slice()]),
    );
    let json = server
        .json(&[
            "federation",
            "create",
            "-trustDomain",
            "pem.org",
            "-bundleEndpointURL",
            "https://pem.org/bundle",
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://pem.org/spire/server",
            "-trustDomainBundlePath",
            &pem_path,
        ])
        .await;
    let bundle = &json["results"][0]["federation_relationship"]["trust_domain_bundle"];
    assert_eq!(bundle["trust_domain"], "pem.org");
    assert_eq!(bundle["x509_authorities"][0]["asn1"], b64(&pem_der));
    assert_eq!(bundle["jwt_authorities"], serde_json::json!([]));

    // A SPIFFE trust domain bundle with an https_web profile, pretty.
    let jwks_der = ca_der("jwks.org");
    let jwks_path = write(
        files.path(),
        "jwks.org.json",
        &spiffe_document("jwks.org", &jwks_der, "kid-1"),
    );
    let (code, out, err) = server
        .cli(&[
            "federation",
            "create",
            "-trustDomain",
            "jwks.org",
            "-bundleEndpointURL",
            "https://jwks.org/bundle",
            "-bundleEndpointProfile",
            "https_web",
            "-trustDomainBundlePath",
            &jwks_path,
            "-trustDomainBundleFormat",
            "spiffe",
        ])
        .await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        "\nTrust domain              : jwks.org\n\
         Bundle endpoint URL       : https://jwks.org/bundle\n\
         Bundle endpoint profile   : https_web\n"
    );

    // The same relationship twice, and one with our own trust domain: the server refuses,
    // the relationship is printed as asked for on stderr, and the exit status is 1.
    let web_flags = [
        "federation",
        "create",
        "-trustDomain",
        "web.org",
        "-bundleEndpointURL",
        "https://web.org/bundle",
        "-bundleEndpointProfile",
        "https_web",
    ];
    let (code, out, err) = server.cli(&web_flags).await;
    assert_eq!((code, out.as_str()), (1, "\n"));
    assert!(
        err.starts_with(
            "Failed to create the following federation relationship (code: Internal, msg: \"failed to create federation relationship: "
        ),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "\"):\n{WEB_ORG}Error: failed to create one or more federation relationships\n"
        )),
        "{err}"
    );
    // With -output json the response is printed as it came, and that is a success.
    let mut json_flags = web_flags.to_vec();
    json_flags.extend(["-output", "json"]);
    let (code, out, err) = server.cli(&json_flags).await;
    assert_eq!((code, err.as_str()), (0, ""));
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["results"][0]["status"]["code"], 13);
    let (code, _, err) = server
        .cli(&[
            "federation",
            "create",
            "-trustDomain",
            "example.org",
            "-bundleEndpointURL",
            "https://example.org/bundle",
            "-bundleEndpointProfile",
            "https_web",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "Failed to create the following federation relationship (code: InvalidArgument, msg: "
        ),
        "{err}"
    );

    // Several relationships from a -data file, one of them refused.
    let data_pem_der = ca_der("data-2.org");
    let data = serde_json::json!({"federationRelationships": [
        {"trustDomain": "data-1.org", "bundleEndpointURL": "https://data-1.org/bundle",
         "bundleEndpointProfile": "https_web"},
        {"trustDomain": "data-2.org", "bundleEndpointURL": "https://data-2.org/bundle",
         "bundleEndpointProfile": "https_spiffe", "endpointSpiffeID": "spiffe://data-2.org/server",
         "trustDomainBundleFormat": "pem",
         "trustDomainBundle": spire_core::pem::encode_certificates([data_pem_der.as_slice()])},
        {"trustDomain": "data-3.org", "bundleEndpointURL": "https://data-3.org/bundle",
         "bundleEndpointProfile": "https_web", "trustDomainBundleFormat": "spiffe",
         "trustDomainBundle": serde_json::from_str::<Value>(
             &spiffe_document("data-3.org", &ca_der("data-3.org"), "kid-3")).unwrap()},
        {"trustDomain": "web.org", "bundleEndpointURL": "https://web.org/bundle",
         "bundleEndpointProfile": "https_web"}
    ]});
    let data_path = write(files.path(), "relationships.json", &data.to_string());
    let (code, out, err) = server
        .cli(&["federation", "create", "-data", &data_path])
        .await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        out,
        "\nTrust domain              : data-1.org\n\
         Bundle endpoint URL       : https://data-1.org/bundle\n\
         Bundle endpoint profile   : https_web\n\
         \n\
         Trust domain              : data-2.org\n\
         Bundle endpoint URL       : https://data-2.org/bundle\n\
         Bundle endpoint profile   : https_spiffe\n\
         Endpoint SPIFFE ID        : spiffe://data-2.org/server\n\
         \n\
         Trust domain              : data-3.org\n\
         Bundle endpoint URL       : https://data-3.org/bundle\n\
         Bundle endpoint profile   : https_web\n\
         \n"
    );
    assert!(
        err.starts_with("Failed to create the following federation relationship (code: Internal"),
        "{err}"
    );
    assert!(err.contains(WEB_ORG), "{err}");

    // Everything is listed, in the order created.
    let (code, out, _) = server.cli(&["federation", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!(
            "Found 7 federation relationships\n\n{WEB_ORG}\n{SPIFFE_ORG}\n"
        )),
        "{out}"
    );
    let json = server.json(&["federation", "list"]).await;
    let names: Vec<&str> = json["federation_relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trust_domain"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "web.org",
            "spiffe.org",
            "pem.org",
            "jwks.org",
            "data-1.org",
            "data-2.org",
            "data-3.org"
        ]
    );
    let data_3 = &json["federation_relationships"][6];
    assert_eq!(
        data_3["trust_domain_bundle"]["jwt_authorities"][0]["key_id"],
        "kid-3"
    );
    assert_eq!(json["next_page_token"], "");

    // show, pretty and JSON, and a trust domain we do not federate with.
    assert_eq!(
        server
            .cli(&["federation", "show", "-trustDomain", "spiffe.org"])
            .await,
        (
            0,
            format!(
                "Found a federation relationship with trust domain spiffe.org:\n\n{SPIFFE_ORG}"
            ),
            String::new()
        )
    );
    let json = server
        .json(&["federation", "show", "-trustDomain", "jwks.org"])
        .await;
    assert_eq!(json["https_web"], serde_json::json!({}));
    assert_eq!(
        json["trust_domain_bundle"]["x509_authorities"][0]["asn1"],
        b64(&jwks_der)
    );
    assert_eq!(
        json["trust_domain_bundle"]["jwt_authorities"][0]["key_id"],
        "kid-1"
    );
    let (code, out, err) = server
        .cli(&["federation", "show", "-trustDomain", "nowhere.org"])
        .await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(
            "Error: error showing federation relationship: rpc error: code = NotFound desc = "
        ),
        "{err}"
    );

    // update from the flags: a new URL and profile; the next show has them.
    let (code, out, err) = server
        .cli(&[
            "federation",
            "update",
            "-trustDomain",
            "web.org",
            "-bundleEndpointURL",
            "https://web.org/v2/bundle",
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://web.org/endpoint",
        ])
        .await;
    let updated = "Trust domain              : web.org\n\
                   Bundle endpoint URL       : https://web.org/v2/bundle\n\
                   Bundle endpoint profile   : https_spiffe\n\
                   Endpoint SPIFFE ID        : spiffe://web.org/endpoint\n";
    assert_eq!((code, out, err), (0, format!("\n{updated}"), String::new()));
    let (_, out, _) = server
        .cli(&["federation", "show", "-trustDomain", "web.org"])
        .await;
    assert!(out.ends_with(updated), "{out}");

    // update from stdin, JSON: one relationship changed, one that does not exist.
    let stdin = serde_json::json!({"federationRelationships": [
        {"trustDomain": "data-1.org", "bundleEndpointURL": "https://data-1.org/v2",
         "bundleEndpointProfile": "https_web"},
        {"trustDomain": "missing.org", "bundleEndpointURL": "https://missing.org/bundle",
         "bundleEndpointProfile": "https_web"}
    ]})
    .to_string();
    let (code, out, err) = server
        .cli_with_stdin(
            &["federation", "update", "-data", "-", "-output", "json"],
            stdin.as_bytes(),
        )
        .await;
    assert_eq!((code, err.as_str()), (0, ""));
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["results"][0]["status"]["code"], 0);
    assert_eq!(
        json["results"][0]["federation_relationship"]["bundle_endpoint_url"],
        "https://data-1.org/v2"
    );
    assert_eq!(json["results"][1]["status"]["code"], 13);
    // The same in pretty: the missing one on stderr, exit status 1.
    let (code, out, err) = server
        .cli_with_stdin(&["federation", "update", "-data", "-"], stdin.as_bytes())
        .await;
    assert_eq!(code, 1);
    assert!(
        out.contains("Bundle endpoint URL       : https://data-1.org/v2\n"),
        "{out}"
    );
    assert!(
        err.starts_with("Failed to update the following federation relationship (code: Internal"),
        "{err}"
    );
    assert!(
        err.contains("Trust domain              : missing.org\n"),
        "{err}"
    );
    assert!(
        err.ends_with("Error: failed to update one or more federation relationships\n"),
        "{err}"
    );

    // Flags the CLI refuses before calling the server.
    let (code, _, err) = server
        .cli(&[
            "federation",
            "create",
            "-data",
            &data_path,
            "-trustDomain",
            "x.org",
        ])
        .await;
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "Error: cannot use other flags to specify relationship fields when 'data' flag is set\n"
        )
    );
    let (code, _, err) = server
        .cli(&[
            "federation",
            "create",
            "-trustDomain",
            "x.org",
            "-bundleEndpointURL",
            "https://x.org/bundle",
            "-bundleEndpointProfile",
            "https_web",
            // A SPIFFE document read as PEM (the default format).
            "-trustDomainBundlePath",
            &jwks_path,
        ])
        .await;
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "Error: cannot parse bundle file: unable to parse bundle data: no PEM blocks\n"
        )
    );

    // delete, pretty and JSON, and a relationship that is not there.
    assert_eq!(
        server
            .cli(&["federation", "delete", "-id", "web.org"])
            .await,
        (
            0,
            "federation relationship deleted.\n".into(),
            String::new()
        )
    );
    let json = server
        .json(&["federation", "delete", "-id", "spiffe://spiffe.org"])
        .await;
    assert_eq!(
        json,
        serde_json::json!({"results": [{"status": {"code": 0, "message": "OK"},
                                        "trust_domain": "spiffe.org"}]})
    );
    let (code, out, err) = server
        .cli(&["federation", "delete", "-id", "web.org"])
        .await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with("Error: failed to delete federation relationship \"web.org\": "),
        "{err}"
    );
    let json = server
        .json(&["federation", "delete", "-id", "web.org"])
        .await;
    assert_eq!(json["results"][0]["status"]["code"], 5);
    let (_, out, _) = server.cli(&["federation", "list"]).await;
    assert!(
        out.starts_with("Found 5 federation relationships\n"),
        "{out}"
    );

    // refresh of a trust domain we do not federate with, in both outputs.
    for output in ["pretty", "json"] {
        assert_eq!(
            server
                .cli(&[
                    "federation",
                    "refresh",
                    "-id",
                    "spiffe://unknown.org",
                    "-output",
                    output
                ])
                .await,
            (
                1,
                String::new(),
                "Error: there is no federation relationship with trust domain \"spiffe://unknown.org\"\n"
                    .into()
            )
        );
    }

    server.stop().await;
}
