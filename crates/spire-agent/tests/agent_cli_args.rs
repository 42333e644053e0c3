//! The `spire-agent` binary's command line as a user meets it: Go-style flags, `Error: ...`
//! on stderr with exit status 1, upstream's `validate` messages, and clear errors when the
//! agent's socket is not there.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::Command;

/// Runs the binary from the workspace root; returns (status, stdout, stderr).
fn agent(args: &[&str]) -> (i32, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_spire-agent"))
        .args(args)
        .current_dir(root)
        .output()
        .expect("run spire-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fetch_against_a_missing_socket_names_the_socket() {
    for args in [
        &["api", "fetch", "-socketPath", "/nonexistent/agent/api.sock"][..],
        &[
            "api",
            "fetch",
            "x509",
            "-socketPath=/nonexistent/agent/api.sock",
        ][..],
        &["api", "watch", "-socketPath", "/nonexistent/agent/api.sock"][..],
        &[
            "api",
            "fetch",
            "jwt",
            "-audience",
            "a",
            "-socketPath",
            "/nonexistent/agent/api.sock",
        ][..],
    ] {
        let (code, out, err) = agent(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(out, "");
        assert!(
            err.starts_with("Error: connection error: dial unix /nonexistent/agent/api.sock"),
            "{args:?}: {err}"
        );
        assert!(err.contains("-socketPath"), "{err}");
    }
}

#[test]
fn missing_flags_are_reported_like_upstream() {
    let (code, _, err) = agent(&["api", "fetch", "jwt"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "Error: audience must be specified\n")
    );
    let (code, _, err) = agent(&["api", "validate", "jwt", "-audience", "spire"]);
    assert_eq!((code, err.as_str()), (1, "Error: svid must be specified\n"));
    let (code, _, err) = agent(&["logger", "set", "-socketPath", "/nonexistent.sock"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "Error: a value (-level) must be set\n")
    );
}

#[test]
fn unknown_flags_and_commands_fail_with_status_1() {
    let (code, _, err) = agent(&["run", "-bogusFlag", "x"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: "), "{err}");
    assert!(err.contains("Usage of run:"), "{err}");
    assert!(err.contains("-joinToken string"), "{err}");

    let (code, _, _) = agent(&["no-such-command"]);
    assert_eq!(code, 1);

    let (code, _, err) = agent(&["api", "fetch", "x509", "-timeout", "soon"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: "), "{err}");
}

#[test]
fn validate_accepts_the_quickstart_configs() {
    for config in ["conf/agent/agent.conf", "conf/agent/agent.json"] {
        let (code, out, err) = agent(&["validate", "-config", config]);
        assert_eq!((code, err.as_str()), (0, ""), "{config}");
        assert_eq!(out, "SPIRE agent configuration file is valid.\n");
    }
}

#[test]
fn validate_explains_what_is_wrong() {
    let (code, out, err) = agent(&["validate", "-config", "/nonexistent/agent.conf"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "SPIRE agent configuration file is invalid: could not find config file \
         /nonexistent/agent.conf: please use the -config flag\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.conf");
    std::fs::write(
        &path,
        "agent {\n trust_domain = \"example.org\"\n server_address = \"s\"\n \
         trust_bundle_path = \"/nonexistent/bundle.pem\"\n}\nplugins {\n \
         NodeAttestor \"join_token\" {}\n KeyManager \"memory\" {}\n \
         WorkloadAttestor \"unix\" {}\n}\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    // As upstream's, validate does not read the bootstrap bundle file (the agent reads it when
    // it attests; on Kubernetes the server's notifier writes it later).
    let (code, out, err) = agent(&["validate", "-config", config]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(out, "SPIRE agent configuration file is valid.\n");

    // Flags apply to validate as to run.
    let (code, _, err) = agent(&[
        "validate",
        "-config",
        "conf/agent/agent.conf",
        "-trustBundle",
        "/some/bundle.pem",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("only one of insecure_bootstrap or trust_bundle_path"),
        "{err}"
    );
}

#[test]
fn healthcheck_reports_an_unavailable_agent() {
    let (code, out, err) = agent(&["healthcheck", "-socketPath", "/nonexistent/api.sock"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "Error: agent is unavailable\n");
    let (code, out, err) = agent(&[
        "healthcheck",
        "-verbose",
        "-socketPath",
        "/nonexistent/api.sock",
    ]);
    assert_eq!(code, 1);
    assert_eq!(out, "Checking agent health...\n");
    assert!(err.contains("Failed to check health"), "{err}");
}

/// An agent config bootstrapping from a bundle file (which `validate` does not read), with
/// `extra` appended after the `agent` block; its path.
fn bundle_agent_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("agent.conf");
    std::fs::write(
        &path,
        format!(
            "agent {{\n trust_domain = \"example.org\"\n server_address = \"s\"\n \
             trust_bundle_path = \"/nonexistent/bundle.pem\"\n}}\nplugins {{\n \
             NodeAttestor \"join_token\" {{}}\n KeyManager \"memory\" {{}}\n \
             WorkloadAttestor \"unix\" {{}}\n}}\n{extra}"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn rebootstrap_flags_are_read_from_the_command_line_with_upstreams_rules() {
    let dir = tempfile::tempdir().unwrap();
    let config = bundle_agent_config(dir.path(), "");
    // Both flags, well formed, with a bootstrap bundle to go back to: valid.
    let (code, out, err) = agent(&[
        "validate",
        "-config",
        &config,
        "-rebootstrapMode",
        "always",
        "-rebootstrapDelay",
        "30s",
    ]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // -rebootstrapMode reaches upstream's rules: not with insecure_bootstrap...
    let (code, _, err) = agent(&[
        "validate",
        "-config",
        "conf/agent/agent.conf",
        "-rebootstrapMode",
        "always",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "agent.rebootstrap_mode: insecure_bootstrap option can not be used with \
             rebootstrapping"
        ),
        "{err}"
    );
    // ...nor with -retryBootstrap, and only upstream's three modes.
    let (code, _, err) = agent(&[
        "validate",
        "-config",
        &config,
        "-rebootstrapMode=auto",
        "-retryBootstrap",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "agent.retry_bootstrap: you can not set retry_bootstrap when using reboostrap_mode"
        ),
        "{err}"
    );
    let (code, _, err) = agent(&[
        "validate",
        "-config",
        &config,
        "-rebootstrapMode",
        "sometimes",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("agent.rebootstrap_mode: unknown rebootstrap_mode \"sometimes\""),
        "{err}"
    );
    // -rebootstrapDelay takes a Go duration.
    let (code, _, err) = agent(&["validate", "-config", &config, "-rebootstrapDelay", "soon"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "Error: invalid value 'soon' for '-rebootstrapDelay <string>': invalid duration \
             \"soon\""
        ),
        "{err}"
    );
}

#[test]
fn validate_refuses_a_prometheus_tls_block_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = bundle_agent_config(
        dir.path(),
        "telemetry {\n Prometheus {\n port = 9988\n tls {\n cert_file = \"c.pem\"\n \
         key_file = \"k.pem\"\n }\n }\n}\n",
    );
    let (code, out, err) = agent(&["validate", "-config", &config]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains(
            "telemetry.Prometheus.tls: serving /metrics over TLS (upstream v1.15) is not \
             supported by this SPIRE build; remove the tls block"
        ),
        "{err}"
    );
}

#[test]
fn help_is_go_style_and_succeeds() {
    let (code, out, err) = agent(&["api", "fetch", "-h"]);
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(err.starts_with("Usage of api fetch:\n"), "{err}");
    assert!(err.contains("  -write string\n"), "{err}");
    assert!(err.contains("  -silent\n"), "{err}");
}

mod fake_agent {
    //! A Workload API server that answers like an agent with one SVID, and refuses calls
    //! without the `workload.spiffe.io` header, so the CLI's client is checked end to end.

    use std::collections::HashMap;
    use std::path::Path;

    use spire_core::keys::{KeyType, PrivateKey};
    use spire_core::spiffe_id::{SpiffeId, TrustDomain};
    use spire_core::x509::{
        CaTemplate, Issuer, SvidTemplate, Validity, self_signed_ca, x509_svid_for_key,
    };
    use spire_proto::workload as wl;
    use wl::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

    type Stream<T> = tokio_stream::Once<Result<T, tonic::Status>>;

    /// What the fake agent serves.
    pub(super) struct Fake {
        pub(super) response: wl::X509svidResponse,
        pub(super) ca_der: Vec<u8>,
    }

    impl Fake {
        pub(super) fn new() -> Self {
            let td = TrustDomain::new("example.org").unwrap();
            let now = time::OffsetDateTime::now_utc();
            let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
            let ca_der = self_signed_ca(
                &ca_key,
                &CaTemplate::new(td, Validity::from_now(now, time::Duration::hours(24))),
            )
            .unwrap();
            let issuer = Issuer::new(&ca_der, &ca_key).unwrap();
            let key = PrivateKey::generate(KeyType::EcP256).unwrap();
            let id = SpiffeId::parse("spiffe://example.org/workload").unwrap();
            let svid = x509_svid_for_key(
                &issuer,
                &key.public_key_der(),
                &SvidTemplate::new(id, Validity::from_now(now, time::Duration::hours(1))),
            )
            .unwrap();
            let response = wl::X509svidResponse {
                svids: vec![wl::X509svid {
                    spiffe_id: "spiffe://example.org/workload".into(),
                    x509_svid: svid,
                    x509_svid_key: key.pkcs8_der().to_vec(),
                    bundle: ca_der.clone(),
                    hint: String::new(),
                }],
                crl: Vec::new(),
                federated_bundles: HashMap::from([(
                    "spiffe://other.org".to_owned(),
                    ca_der.clone(),
                )]),
            };
            Self { response, ca_der }
        }
    }

    fn check_header<T>(request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        match request.metadata().get("workload.spiffe.io") {
            Some(v) if v == "true" => Ok(()),
            _ => Err(tonic::Status::invalid_argument(
                "security header missing from request",
            )),
        }
    }

    #[tonic::async_trait]
    impl SpiffeWorkloadApi for Fake {
        type FetchX509SVIDStream = Stream<wl::X509svidResponse>;
        type FetchX509BundlesStream = Stream<wl::X509BundlesResponse>;
        type FetchJWTBundlesStream = Stream<wl::JwtBundlesResponse>;

        async fn fetch_x509svid(
            &self,
            request: tonic::Request<wl::X509svidRequest>,
        ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
            check_header(&request)?;
            Ok(tonic::Response::new(tokio_stream::once(Ok(self
                .response
                .clone()))))
        }

        async fn fetch_x509_bundles(
            &self,
            request: tonic::Request<wl::X509BundlesRequest>,
        ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
            check_header(&request)?;
            Err(tonic::Status::unimplemented("not in this fake"))
        }

        async fn fetch_jwtsvid(
            &self,
            request: tonic::Request<wl::JwtsvidRequest>,
        ) -> Result<tonic::Response<wl::JwtsvidResponse>, tonic::Status> {
            check_header(&request)?;
            let audience = request.into_inner().audience;
            if audience != ["a", "b"] {
                return Err(tonic::Status::invalid_argument(format!(
                    "unexpected audience {audience:?}"
                )));
            }
            Ok(tonic::Response::new(wl::JwtsvidResponse {
                svids: vec![wl::Jwtsvid {
                    spiffe_id: "spiffe://example.org/workload".into(),
                    svid: "header.payload.signature".into(),
                    hint: String::new(),
                }],
            }))
        }

        async fn fetch_jwt_bundles(
            &self,
            request: tonic::Request<wl::JwtBundlesRequest>,
        ) -> Result<tonic::Response<Self::FetchJWTBundlesStream>, tonic::Status> {
            check_header(&request)?;
            Ok(tonic::Response::new(tokio_stream::once(Ok(
                wl::JwtBundlesResponse {
                    bundles: HashMap::from([(
                        "spiffe://example.org".to_owned(),
                        b"{\"keys\":[]}".to_vec(),
                    )]),
                },
            ))))
        }

        async fn validate_jwtsvid(
            &self,
            request: tonic::Request<wl::ValidateJwtsvidRequest>,
        ) -> Result<tonic::Response<wl::ValidateJwtsvidResponse>, tonic::Status> {
            check_header(&request)?;
            Err(tonic::Status::invalid_argument("token has expired"))
        }
    }

    /// Serves `fake` on `socket` until the returned runtime is dropped.
    pub(super) fn serve(fake: Fake, socket: &Path) -> tokio::runtime::Runtime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(async { tokio::net::UnixListener::bind(socket).unwrap() });
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        runtime
    }
}

#[test]
fn fetch_x509_prints_and_writes_like_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let fake = fake_agent::Fake::new();
    let ca_der = fake.ca_der.clone();
    let svid_der = fake.response.svids[0].x509_svid.clone();
    let runtime = fake_agent::serve(fake, &socket);
    let socket = socket.to_str().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();

    let (code, out, err) = agent(&[
        "api",
        "fetch",
        "x509",
        "-socketPath",
        socket,
        "-write",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Received 1 svid after "), "{out}");
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], "SPIFFE ID:\t\tspiffe://example.org/workload");
    assert!(lines[3].starts_with("SVID Valid After:\t20"), "{out}");
    assert!(lines[3].ends_with(" +0000 UTC"), "{out}");
    assert!(lines[4].starts_with("SVID Valid Until:\t"), "{out}");
    assert!(lines[5].starts_with("CA #1 Valid After:\t"), "{out}");
    assert!(lines[6].starts_with("CA #1 Valid Until:\t"), "{out}");
    assert!(
        lines[7].starts_with("[spiffe://other.org] CA #1 Valid After:\t"),
        "{out}"
    );
    let out_path = out_dir.display();
    assert!(
        out.contains(&format!(
            "\nWriting SVID #0 to file {out_path}/svid.0.pem.\n\
             Writing key #0 to file {out_path}/svid.0.key.\n\
             Writing bundle #0 to file {out_path}/bundle.0.pem.\n\
             Writing federated bundle #0 for trust domain spiffe://other.org to file \
             {out_path}/federated_bundle.0.0.pem.\n"
        )),
        "{out}"
    );
    let svid_pem = std::fs::read(out_dir.join("svid.0.pem")).unwrap();
    assert_eq!(
        spire_core::pem::decode_certificates(&svid_pem).unwrap(),
        vec![svid_der]
    );
    let bundle_pem = std::fs::read(out_dir.join("bundle.0.pem")).unwrap();
    assert_eq!(
        spire_core::pem::decode_certificates(&bundle_pem).unwrap(),
        vec![ca_der]
    );
    let key_pem = std::fs::read_to_string(out_dir.join("svid.0.key")).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{key_pem}"
    );
    spire_core::keys::PrivateKey::from_pem(&key_pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out_dir.join("svid.0.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // -silent prints nothing without -write; `api fetch` alone is x509.
    let (code, out, _) = agent(&["api", "fetch", "-silent", "-socketPath", socket]);
    assert_eq!((code, out.as_str()), (0, ""));

    // -output json is the response in protobuf JSON.
    let (code, out, _) = agent(&["api", "fetch", "-output", "json", "-socketPath", socket]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["svids"][0]["spiffe_id"],
        "spiffe://example.org/workload"
    );
    assert!(json["federated_bundles"]["spiffe://other.org"].is_string());

    // JWT: comma-separated audiences, tokens then bundles.
    let (code, out, err) = agent(&[
        "api",
        "fetch",
        "jwt",
        "-audience",
        "a,b",
        "-socketPath",
        socket,
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "token(spiffe://example.org/workload):\n\theader.payload.signature\n\
         bundle(spiffe://example.org):\n\t{\"keys\":[]}\n"
    );

    let (code, _, err) = agent(&[
        "api",
        "validate",
        "jwt",
        "-audience",
        "a",
        "-svid",
        "x.y.z",
        "-socketPath",
        socket,
    ]);
    assert_eq!(
        (code, err.as_str()),
        (1, "Error: SVID is not valid: token has expired\n")
    );
    // watch prints each update; this fake ends the stream after one, which is an error.
    let (code, out, err) = agent(&["api", "watch", "-socketPath", socket]);
    assert!(out.starts_with("Received 1 svid after "), "{out}");
    assert!(
        out.contains("SPIFFE ID:\t\tspiffe://example.org/workload\n"),
        "{out}"
    );
    assert_eq!(code, 1);
    assert_eq!(err, "Error: the agent closed the Workload API stream\n");
    runtime.shutdown_background();
}
