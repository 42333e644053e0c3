//! `agent.conf` as operators write it: upstream's example configs, the JSON the Helm charts
//! render, our quickstart files, and the mistakes the loader must explain.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use spire_agent::config::{
    self, AgentConfig, BootstrapBundle, ConfigError, KeyManagerChoice, LogFormat,
    NodeAttestorChoice, Overrides, RebootstrapMode, TrustBundleFormat,
};
use spire_core::keys::KeyType;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn load(text: &str) -> Result<AgentConfig, ConfigError> {
    config::load_str("agent.conf", text, false)
}

fn resolve_err(text: &str) -> String {
    load(text)
        .and_then(|c| c.resolve())
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

const PLUGINS: &str = r#"
plugins {
    NodeAttestor "join_token" { plugin_data {} }
    KeyManager "memory" { plugin_data {} }
    WorkloadAttestor "unix" { plugin_data {} }
}
"#;

fn with_agent(agent_body: &str) -> String {
    format!("agent {{\n{agent_body}\n}}\n{PLUGINS}")
}

const MINIMAL_AGENT: &str = r#"
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    insecure_bootstrap = true
"#;

#[test]
fn upstream_quickstart_config_resolves_with_upstream_defaults() {
    let c = config::load_file(&fixture("upstream_agent.conf"), false)
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(c.trust_domain.name(), "example.org");
    assert_eq!(c.server_host_port(), "localhost:8081");
    assert_eq!(
        c.socket_path,
        PathBuf::from("/tmp/spire-agent/public/api.sock")
    );
    assert_eq!(c.admin_socket_path, None);
    assert_eq!(c.data_dir, PathBuf::from("./.data"));
    assert_eq!(c.bootstrap_bundle, BootstrapBundle::Insecure);
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.log_format, LogFormat::Default);
    assert_eq!(c.x509_svid_cache_max_size, 1000);
    assert_eq!(c.jwt_svid_cache_max_size, 1000);
    assert_eq!(c.workload_x509_svid_key_type, KeyType::EcP256);
    assert_eq!(c.experimental.sync_interval, Duration::from_secs(5));
    assert!(c.experimental.use_sync_authorized_entries);
    assert_eq!(c.sds.default_svid_name, "default");
    assert_eq!(c.sds.default_bundle_name, "ROOTCA");
    assert_eq!(c.sds.default_all_bundles_name, "ALL");
    assert_eq!(c.rebootstrap_mode, RebootstrapMode::Never);
    assert_eq!(c.rebootstrap_delay, Duration::from_secs(600));
    assert_eq!(c.plugins.node_attestor, NodeAttestorChoice::JoinToken);
    assert_eq!(
        c.plugins.key_manager,
        KeyManagerChoice::Disk {
            directory: PathBuf::from("./.data")
        }
    );
    assert_eq!(c.plugins.unix_attestor().copied(), Some(Default::default()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn every_documented_key_is_accepted_and_typed() {
    let c = config::load_file(&fixture("agent_all_keys.conf"), false)
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(c.server_host_port(), "spire-server.example.org:443");
    assert_eq!(
        c.admin_socket_path,
        Some(PathBuf::from("/tmp/spire-agent/private/admin.sock"))
    );
    assert_eq!(
        c.bootstrap_bundle,
        BootstrapBundle::Url {
            url: "https://bundle.example.org/bundle.jwks".into(),
            format: TrustBundleFormat::Spiffe,
            unix_socket: None,
        }
    );
    assert_eq!(c.join_token.as_deref(), Some("abc123"));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_level, "warn");
    assert!(c.log_source_location && c.allow_unauthenticated_verifiers);
    assert_eq!(c.allowed_foreign_jwt_claims, ["email", "groups"]);
    assert_eq!(
        c.authorized_delegates[0].as_str(),
        "spiffe://example.org/delegate"
    );
    assert_eq!(c.availability_target, Some(Duration::from_secs(48 * 3600)));
    assert_eq!(c.rebootstrap_mode, RebootstrapMode::Never);
    assert_eq!(c.rebootstrap_delay, Duration::from_secs(15 * 60));
    assert_eq!(c.x509_svid_cache_max_size, 5000);
    assert_eq!(c.jwt_svid_cache_max_size, 2000);
    assert_eq!(c.workload_x509_svid_key_type, KeyType::Rsa2048);
    assert_eq!(c.sds.default_all_bundles_name, "my_all");
    assert!(c.sds.disable_spiffe_cert_validation);
    assert_eq!(c.ratelimit.fetch_x509_svid, Some(10));
    assert_eq!(c.ratelimit.fetch_secrets, Some(1));
    assert_eq!(
        c.experimental.jwt_svid_cache_hit_timeout,
        Duration::from_secs(7)
    );
    assert_eq!(c.experimental.sync_interval, Duration::from_secs(10));
    assert_eq!(c.plugins.key_manager, KeyManagerChoice::Memory);
    let unix = c.plugins.unix_attestor().unwrap();
    assert!(unix.discover_workload_path);
    assert_eq!(unix.workload_size_limit, 1_048_576);
    assert_eq!(
        c.plugins.workload_attestors.len(),
        1,
        "disabled docker skipped"
    );
    assert!(c.health_checks.listener_enabled);
    assert_eq!(c.health_checks.bind_port, 9982);
    assert_eq!(c.health_checks.live_path, "/alive");
    assert_eq!(c.telemetry.prometheus.as_ref().unwrap().port, Some(9988));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("Experimental features")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn helm_json_with_expand_env_loads() {
    let text = std::fs::read_to_string(fixture("helm_agent.json")).unwrap();
    let c = config::load_str_with_env("agent.json", &text, true, |name| {
        (name == "LOG_LEVEL").then(|| "debug".to_owned())
    })
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.server_port, 443);
    assert_eq!(
        c.bootstrap_bundle,
        BootstrapBundle::Path {
            path: PathBuf::from("/run/spire/bundle/bundle.crt"),
            format: TrustBundleFormat::Pem
        }
    );
    assert_eq!(c.sds.default_bundle_name, "null");
    assert_eq!(c.plugins.key_manager, KeyManagerChoice::Memory);
}

#[test]
fn quickstart_hcl_and_json_agree() {
    let hcl = config::load_file(&repo_file("conf/agent/agent.conf"), false)
        .unwrap()
        .resolve()
        .unwrap();
    let json = config::load_file(&repo_file("conf/agent/agent.json"), false)
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(hcl.server_host_port(), "127.0.0.1:8081");
    assert_eq!(hcl.bootstrap_bundle, BootstrapBundle::Insecure);
    assert_eq!(hcl.server_host_port(), json.server_host_port());
    assert_eq!(hcl.socket_path, json.socket_path);
    assert_eq!(hcl.data_dir, json.data_dir);
    assert_eq!(hcl.plugins, json.plugins);
}

#[test]
fn unknown_keys_are_named_with_their_block() {
    let err = load(&with_agent("trust_domian = \"example.org\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("trust_domian"), "{err}");
    assert!(err.contains("agent"), "{err}");

    // Upstream never checks `sds { }` (see the warning test below); it does check
    // `health_checks { }`.
    let err = load("health_checks { listner_enabled = true }")
        .unwrap_err()
        .to_string();
    assert!(err.contains("listner_enabled"), "{err}");

    let err = load("agnet { }").unwrap_err().to_string();
    assert!(err.contains("agnet"), "{err}");
}

#[test]
fn plugin_mistakes_name_the_block() {
    let text = format!(
        "agent {{ {MINIMAL_AGENT} }}\nplugins {{\n NodeAttestor \"join_token\" {{}}\n \
         KeyManager \"disk\" {{ plugin_data {{ directroy = \"x\" }} }}\n \
         WorkloadAttestor \"unix\" {{}}\n}}"
    );
    let err = resolve_err(&text);
    assert!(err.contains("directroy"), "{err}");
    assert!(err.contains("KeyManager \"disk\""), "{err}");

    let text = format!(
        "agent {{ {MINIMAL_AGENT} }}\nplugins {{\n NodeAttestor \"tpm_devid\" {{}}\n \
         KeyManager \"memory\" {{}}\n WorkloadAttestor \"unix\" {{}}\n}}"
    );
    let err = resolve_err(&text);
    assert!(err.contains("plugins.NodeAttestor.tpm_devid"), "{err}");
    assert!(err.contains("join_token"), "{err}");

    let text = format!(
        "agent {{ {MINIMAL_AGENT} }}\nplugins {{\n NodeAttestor \"join_token\" {{}}\n \
         KeyManager \"memory\" {{}}\n}}"
    );
    let err = resolve_err(&text);
    assert!(err.contains("at least one WorkloadAttestor"), "{err}");

    let err = resolve_err(&format!("agent {{ {MINIMAL_AGENT} }}"));
    assert!(err.contains("plugins section must be configured"), "{err}");
}

#[test]
fn required_keys_are_explained() {
    let err = resolve_err(&with_agent(
        "server_address = \"127.0.0.1\"\ninsecure_bootstrap = true",
    ));
    assert!(err.contains("trust_domain must be configured"), "{err}");
    let err = resolve_err(&with_agent(
        "trust_domain = \"example.org\"\ninsecure_bootstrap = true",
    ));
    assert!(err.contains("server_address must be configured"), "{err}");
    let err = resolve_err(PLUGINS);
    assert!(err.contains("agent section must be configured"), "{err}");
}

#[test]
fn exactly_one_bootstrap_bundle_source() {
    let base = "trust_domain = \"example.org\"\nserver_address = \"s\"\n";
    let err = resolve_err(&with_agent(base));
    assert!(
        err.contains(
            "trust_bundle_path, trust_bundle_url, or trust_bundle_spiffe_workload_api must be configured"
        ),
        "{err}"
    );
    let err = resolve_err(&with_agent(&format!(
        "{base}insecure_bootstrap = true\ntrust_bundle_path = \"b.pem\""
    )));
    assert!(
        err.contains("only one of insecure_bootstrap or trust_bundle_path"),
        "{err}"
    );
    let err = resolve_err(&with_agent(&format!(
        "{base}trust_bundle_url = \"https://x\"\ntrust_bundle_path = \"b.pem\""
    )));
    assert!(
        err.contains("only one of trust_bundle_url or trust_bundle_path"),
        "{err}"
    );
    let err = resolve_err(&with_agent(&format!(
        "{base}trust_bundle_url = \"http://x/bundle\""
    )));
    assert!(err.contains("must start with https://"), "{err}");
    let err = resolve_err(&with_agent(&format!(
        "{base}trust_bundle_url = \"https://x/bundle\"\n\
         trust_bundle_unix_socket = \"/run/bundle.sock\""
    )));
    assert!(err.contains("must start with http://"), "{err}");
    let err = resolve_err(&with_agent(&format!(
        "{base}trust_bundle_path = \"b.pem\"\ntrust_bundle_format = \"der\""
    )));
    assert!(err.contains("trust_bundle_format"), "{err}");
}

#[test]
fn admin_socket_may_not_share_the_workload_socket_folder() {
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\nsocket_path = \"/tmp/spire-agent/public/api.sock\"\n\
         admin_socket_path = \"/tmp/spire-agent/public/admin/admin.sock\""
    )));
    assert!(
        err.contains("admin socket cannot be in the same directory"),
        "{err}"
    );
    assert!(err.contains("agent.admin_socket_path"), "{err}");
}

#[test]
fn values_are_checked() {
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\nauthorized_delegates = [\"spiffe://other.org/x\"]"
    )));
    assert!(
        err.contains("error validating authorized delegate"),
        "{err}"
    );
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\navailability_target = \"1h\""
    )));
    assert!(
        err.contains("availability_target must be at least"),
        "{err}"
    );
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\nx509_svid_cache_max_size = -1"
    )));
    assert!(err.contains("should not be negative"), "{err}");
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\nworkload_x509_svid_key_type = \"ed25519\""
    )));
    assert!(err.contains("workload_x509_svid_key_type"), "{err}");
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\nlog_level = \"LOUD\""
    )));
    assert!(err.contains("unknown log level"), "{err}");
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\njoin_token = \"a\"\njoin_token_file = \"/x\""
    )));
    assert!(
        err.contains("only one of join_token or join_token_file"),
        "{err}"
    );
}

#[test]
fn join_token_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "tok-123\n").unwrap();
    let c = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\njoin_token_file = \"{}\"",
        path.display()
    )))
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(c.join_token.as_deref(), Some("tok-123"));
}

#[test]
fn flags_override_the_file() {
    let mut c = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\nserver_port = 9000\nlog_level = \"INFO\""
    )))
    .unwrap();
    c.apply_overrides(&Overrides {
        server_address: Some("10.0.0.1".into()),
        server_port: Some(8443),
        join_token: Some("from-flag".into()),
        log_level: Some("debug".into()),
        trust_domain: Some("other.org".into()),
        socket_path: Some("/run/a.sock".into()),
        ..Overrides::default()
    });
    let c = c.resolve().unwrap();
    assert_eq!(c.server_host_port(), "10.0.0.1:8443");
    assert_eq!(c.join_token.as_deref(), Some("from-flag"));
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.trust_domain.name(), "other.org");
    assert_eq!(c.socket_path, PathBuf::from("/run/a.sock"));
}

#[test]
fn missing_file_points_at_the_flag() {
    let err = config::load_file(Path::new("/nonexistent/agent.conf"), false)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "could not find config file /nonexistent/agent.conf: please use the -config flag"
    );
    assert_eq!(
        Overrides::default().config_path(),
        PathBuf::from("conf/agent/agent.conf")
    );
}

#[test]
fn bootstrap_bundle_files_are_parsed_in_both_formats() {
    use spire_core::keys::PrivateKey;
    use spire_core::x509::{CaTemplate, Validity, self_signed_ca};
    let td = spire_core::spiffe_id::TrustDomain::new("example.org").unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let validity = Validity::from_now(time::OffsetDateTime::now_utc(), time::Duration::hours(1));
    let ca = self_signed_ca(&key, &CaTemplate::new(td.clone(), validity)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("bundle.pem");
    std::fs::write(&pem_path, spire_core::pem::encode("CERTIFICATE", &ca)).unwrap();
    let source = BootstrapBundle::Path {
        path: pem_path,
        format: TrustBundleFormat::Pem,
    };
    assert_eq!(source.read_file(&td).unwrap().unwrap(), vec![ca.clone()]);

    let mut bundle = spire_core::bundle::Bundle::new(td.clone());
    bundle.add_x509_authority(ca.clone()).unwrap();
    let doc = bundle.to_spiffe_document().unwrap();
    let certs =
        config::parse_bootstrap_bundle(doc.as_bytes(), TrustBundleFormat::Spiffe, &td).unwrap();
    assert_eq!(certs, vec![ca]);

    let err = config::parse_bootstrap_bundle(b"", TrustBundleFormat::Pem, &td).unwrap_err();
    assert!(err.contains("no PEM blocks"), "{err}");
}

/// Upstream's documented `k8s_psat` and `k8s` blocks (`doc/plugin_agent_nodeattestor_k8s_psat.md`,
/// `doc/plugin_agent_workloadattestor_k8s.md`) load unchanged, with upstream's defaults.
#[test]
fn upstream_kubernetes_plugin_examples_load() {
    use spire_agent::config::WorkloadAttestorChoice;
    use spire_agent::plugins::workloadattestor::k8s::{KubeletCredentials, KubeletEndpoint};
    let with_plugins = |k8s_data: &str| {
        format!(
            "agent {{\n{MINIMAL_AGENT}\n}}\nplugins {{\n    NodeAttestor \"k8s_psat\" {{\n        \
             plugin_data {{\n            cluster = \"MyCluster\"\n        }}\n    }}\n    \
             KeyManager \"memory\" {{ plugin_data {{}} }}\n    WorkloadAttestor \"k8s\" {{\n  \
             plugin_data {{\n{k8s_data}\n  }}\n}}\n}}\n"
        )
    };
    let k8s = |data: &str| {
        let c = load(&with_plugins(data)).unwrap().resolve().unwrap();
        match &c.plugins.node_attestor {
            NodeAttestorChoice::K8sPsat(psat) => {
                assert_eq!(psat.cluster, "MyCluster");
                assert_eq!(
                    psat.token_path,
                    PathBuf::from("/var/run/secrets/tokens/spire-agent")
                );
            }
            other => panic!("{other:?}"),
        }
        match c.plugins.workload_attestors.first() {
            Some(WorkloadAttestorChoice::K8s(k8s)) => k8s.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        k8s("    kubelet_read_only_port = 10255").endpoint,
        KubeletEndpoint::ReadOnly { port: 10255 }
    );
    let defaults = k8s("");
    assert_eq!(
        defaults.endpoint,
        KubeletEndpoint::Secure {
            port: 10250,
            skip_verification: false,
            ca_path: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            credentials: KubeletCredentials::Token {
                token_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
            },
        }
    );
    assert_eq!(defaults.max_poll_attempts, 60);
    assert_eq!(defaults.poll_retry_interval, Duration::from_millis(500));
    assert_eq!(defaults.reload_interval, Duration::from_secs(60));
    assert!(defaults.use_new_container_locator);
    assert!(matches!(
        k8s("    skip_kubelet_verification = true\n    token_path = \"/path/to/token\"").endpoint,
        KubeletEndpoint::Secure {
            skip_verification: true,
            credentials: KubeletCredentials::Token { .. },
            ..
        }
    ));
    assert!(matches!(
        k8s("    kubelet_ca_path = \"/path/to/kubelet-ca.pem\"\n    certificate_path = \"/path/to/cert.pem\"\n    private_key_path = \"/path/to/key.pem\"").endpoint,
        KubeletEndpoint::Secure { credentials: KubeletCredentials::Certificate { .. }, .. }
    ));
    let tuned = k8s(
        "    node_name = \"node-1\"\n    max_poll_attempts = 5\n    poll_retry_interval = \"1s\"\n    \
         reload_interval = \"5m\"\n    disable_container_selectors = true\n    \
         use_new_container_locator = false\n    verbose_container_locator_logs = true",
    );
    assert_eq!(tuned.node_name.as_deref(), Some("node-1"));
    assert_eq!(tuned.max_poll_attempts, 5);
    assert!(tuned.disable_container_selectors && !tuned.use_new_container_locator);

    // Refusals name the key.
    let err = resolve_err(&with_plugins(
        "    kubelet_read_only_port = 10255\n    kubelet_secure_port = 10250",
    ));
    assert!(
        err.contains("cannot use both the read-only and secure port"),
        "{err}"
    );
    let err = resolve_err(&with_plugins("    certificate_path = \"/c.pem\""));
    assert!(
        err.contains("the private key path is required with the certificate path"),
        "{err}"
    );
    let err = resolve_err(&with_plugins("    kubelet_port = 1"));
    assert!(err.contains("kubelet_port"), "{err}");
    let err = resolve_err(&with_plugins("").replace("cluster = \"MyCluster\"", ""));
    assert!(err.contains("missing required cluster block"), "{err}");
}

#[test]
fn trust_bundle_spiffe_workload_api_stands_alone_and_must_be_a_unix_address() {
    let base = "trust_domain = \"example.org\"\nserver_address = \"127.0.0.1\"\n";
    let c = load(&with_agent(&format!(
        "{base}trust_bundle_spiffe_workload_api = \"unix:///run/spire/agent.sock\""
    )))
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(
        c.bootstrap_bundle,
        BootstrapBundle::WorkloadApi {
            socket_path: PathBuf::from("/run/spire/agent.sock"),
            address: "unix:///run/spire/agent.sock".into(),
        }
    );
    for (other, message) in [
        (
            "insecure_bootstrap = true",
            "only one of insecure_bootstrap or trust_bundle_spiffe_workload_api can be specified, not both",
        ),
        (
            "trust_bundle_url = \"https://b.example.org\"",
            "only one of trust_bundle_url or trust_bundle_spiffe_workload_api can be specified, not both",
        ),
        (
            "trust_bundle_unix_socket = \"/run/b.sock\"",
            "trust_bundle_unix_socket can not be used with trust_bundle_spiffe_workload_api",
        ),
    ] {
        let err = resolve_err(&with_agent(&format!(
            "{base}{other}\ntrust_bundle_spiffe_workload_api = \"unix:///run/spire/agent.sock\""
        )));
        assert!(err.contains(message), "{other}: {err}");
        assert!(
            err.contains("agent.trust_bundle_spiffe_workload_api"),
            "{err}"
        );
    }
    let err = resolve_err(&with_agent(&format!(
        "{base}trust_bundle_spiffe_workload_api = \"/run/spire/agent.sock\""
    )));
    assert!(
        err.contains("not a valid SPIFFE Workload API endpoint address"),
        "{err}"
    );
}

#[test]
fn log_selectors_is_read_as_upstream_v1_15_2() {
    let c = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    log_selectors = [\"k8s:ns\", \"unix:uid\"]"
    )))
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(c.log_selectors, vec!["k8s:ns", "unix:uid"]);
    let c = load(&with_agent(MINIMAL_AGENT)).unwrap().resolve().unwrap();
    assert!(c.log_selectors.is_empty());
}

#[test]
fn profiling_is_refused_by_name_and_require_pq_kem_loads() {
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    profiling_enabled = true"
    )));
    assert!(err.contains("agent.profiling_enabled"), "{err}");
    // require_pq_kem is implemented (PQ-only key exchange toward the server).
    let c = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ require_pq_kem = true }}"
    )))
    .unwrap()
    .resolve()
    .unwrap();
    assert!(c.experimental.require_pq_kem);
    // Their off values load, as upstream.
    load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    profiling_enabled = false\n    profiling_port = 6060\n    \
         experimental {{ require_pq_kem = false }}"
    )))
    .unwrap()
    .resolve()
    .unwrap();
}

/// An agent that bootstraps from a bundle file (rebootstrapping needs one).
const BUNDLE_AGENT: &str = r#"
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    trust_bundle_path = "/nonexistent/bundle.pem"
"#;

#[test]
fn rebootstrap_auto_and_always_load_with_upstream_rules_in_file_and_flags() {
    for (mode, want) in [
        ("auto", RebootstrapMode::Auto),
        ("always", RebootstrapMode::Always),
        ("never", RebootstrapMode::Never),
    ] {
        let c = load(&with_agent(&format!(
            "{BUNDLE_AGENT}\n    rebootstrap_mode = \"{mode}\"\n    rebootstrap_delay = \"30s\""
        )))
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(c.rebootstrap_mode, want);
        assert_eq!(c.rebootstrap_delay, Duration::from_secs(30));
        assert!(c.retry_bootstrap, "retrying is on by default");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
    // Upstream refuses rebootstrapping without a bootstrap source to go back to...
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    rebootstrap_mode = \"always\""
    )));
    assert!(err.contains("agent.rebootstrap_mode"), "{err}");
    assert!(
        err.contains("insecure_bootstrap option can not be used with rebootstrapping"),
        "{err}"
    );
    // ...and with retry_bootstrap set either way.
    for retry in ["true", "false"] {
        let err = resolve_err(&with_agent(&format!(
            "{BUNDLE_AGENT}\n    rebootstrap_mode = \"auto\"\n    retry_bootstrap = {retry}"
        )));
        assert!(err.contains("agent.retry_bootstrap"), "{err}");
        assert!(
            err.contains("you can not set retry_bootstrap when using reboostrap_mode"),
            "{err}"
        );
    }
    // The flags land on the same keys.
    let mut cfg = load(&with_agent(BUNDLE_AGENT)).unwrap();
    cfg.apply_overrides(&Overrides {
        rebootstrap_mode: Some("always".into()),
        rebootstrap_delay: Some(Duration::from_secs(60)),
        ..Overrides::default()
    });
    let c = cfg.resolve().unwrap();
    assert_eq!(c.rebootstrap_mode, RebootstrapMode::Always);
    assert_eq!(c.rebootstrap_delay, Duration::from_secs(60));
    let mut cfg = load(&with_agent(BUNDLE_AGENT)).unwrap();
    cfg.apply_overrides(&Overrides {
        rebootstrap_mode: Some("auto".into()),
        retry_bootstrap: Some(true),
        ..Overrides::default()
    });
    let err = cfg.resolve().unwrap_err().to_string();
    assert!(err.contains("agent.retry_bootstrap"), "{err}");
    let err = resolve_err(&with_agent(&format!(
        "{BUNDLE_AGENT}\n    rebootstrap_mode = \"sometimes\""
    )));
    assert!(err.contains("agent.rebootstrap_mode"), "{err}");
}

#[test]
fn retry_bootstrap_defaults_to_true_and_setting_it_warns_as_upstream() {
    let c = load(&with_agent(MINIMAL_AGENT)).unwrap().resolve().unwrap();
    assert!(c.retry_bootstrap);
    assert!(c.warnings.iter().all(|w| !w.contains("retry_bootstrap")));
    let c = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    retry_bootstrap = false"
    )))
    .unwrap()
    .resolve()
    .unwrap();
    assert!(!c.retry_bootstrap);
    assert!(
        c.warnings.iter().any(|w| w
            == "The 'retry_bootstrap' configuration is deprecated. It will be removed in SPIRE \
                1.14. Please test without the flag before upgrading."),
        "{:?}",
        c.warnings
    );
    // -retryBootstrap=false overrides the file; an absent flag leaves it.
    let mut cfg = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    retry_bootstrap = true"
    )))
    .unwrap();
    cfg.apply_overrides(&Overrides {
        retry_bootstrap: Some(false),
        ..Overrides::default()
    });
    assert!(!cfg.resolve().unwrap().retry_bootstrap);
    let mut cfg = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    retry_bootstrap = false"
    )))
    .unwrap();
    cfg.apply_overrides(&Overrides::default());
    assert!(!cfg.resolve().unwrap().retry_bootstrap);
}

#[test]
fn experimental_ratelimit_and_broker_of_v1_15_load_or_are_refused_by_name() {
    let c = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ ratelimit {{ fetch_x509_svid = 5 stream_secrets = 2 }} }}"
    )))
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(c.ratelimit.fetch_x509_svid, Some(5));
    assert_eq!(c.ratelimit.stream_secrets, Some(2));
    // ratelimit is checked strictly, as upstream checks it.
    let err = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ ratelimit {{ fetch_x509 = 5 }} }}"
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown key \"fetch_x509\""), "{err}");
    // The old top-level block says where the key lives now.
    let err = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    ratelimit {{ fetch_x509_svid = 5 }}"
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("experimental { ratelimit"), "{err}");
    // The Broker API block loads and is refused by name.
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ broker {{ socket_path = \"/run/broker.sock\" brokers = [{{ id = \"spiffe://example.org/b\" allowed_reference_types = [{{ type_url = \"*\" }}] }}] }} }}"
    )));
    assert!(err.contains("agent.experimental.broker"), "{err}");
    assert!(err.contains("SPIFFE Broker API"), "{err}");
}

#[test]
fn jwt_svid_cache_hit_timeout_is_bounded_as_upstream() {
    for (value, message) in [
        ("4s", "must be greater than 5s"),
        ("31s", "must be less than 30s"),
    ] {
        let err = resolve_err(&with_agent(&format!(
            "{MINIMAL_AGENT}\n    experimental {{ jwt_svid_cache_hit_timeout = \"{value}\" }}"
        )));
        assert!(
            err.contains("agent.experimental.jwt_svid_cache_hit_timeout"),
            "{err}"
        );
        assert!(err.contains(message), "{err}");
    }
    let c = load(&with_agent(MINIMAL_AGENT)).unwrap().resolve().unwrap();
    assert_eq!(
        c.experimental.jwt_svid_cache_hit_timeout,
        Duration::from_secs(30)
    );
}

#[test]
fn unknown_keys_in_experimental_sds_and_telemetry_warn_as_upstream_ignores_them() {
    let text = with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ old_flag = true }}\n    sds {{ legacy = 1 }}"
    )) + "\ntelemetry { Unknown = 1 }\n";
    let c = load(&text).unwrap().resolve().unwrap();
    for needle in [
        "agent.experimental is ignored, as upstream ignores it: old_flag",
        "agent.sds is ignored, as upstream ignores it: legacy",
        "telemetry is ignored, as upstream ignores it: Unknown",
    ] {
        assert!(
            c.warnings.iter().any(|w| w.contains(needle)),
            "{needle}: {:?}",
            c.warnings
        );
    }
}

#[test]
fn feature_flags_are_checked_as_upstreams_fflag() {
    let c = load(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ feature_flags = [\"i_am_a_test_flag\"] }}"
    )))
    .unwrap()
    .resolve()
    .unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w == "Developer feature flag \"i_am_a_test_flag\" has been enabled"),
        "{:?}",
        c.warnings
    );
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ feature_flags = [\"b\", \"a\"] }}"
    )));
    assert!(
        err.contains(
            "agent.experimental.feature_flags: error loading feature flags: unknown feature \
             flag(s): [a b]"
        ),
        "{err}"
    );
    let err = resolve_err(&with_agent(&format!(
        "{MINIMAL_AGENT}\n    experimental {{ feature_flags = [\"wit-svid\"] }}"
    )));
    assert!(
        err.contains("WIT-SVIDs, which this agent does not support"),
        "{err}"
    );
}

#[test]
fn windows_named_pipes_are_refused_naming_the_unix_socket_key() {
    for (line, message) in [
        (
            r#"named_pipe_name = "\\spire-agent\\public\\api""#,
            "agent.experimental.named_pipe_name: named_pipe_name is not supported on this \
             platform; use socket_path instead",
        ),
        (
            r#"admin_named_pipe_name = "\\spire-agent\\private\\admin""#,
            "agent.experimental.admin_named_pipe_name: admin_named_pipe_name is not supported \
             on this platform; use admin_socket_path instead",
        ),
    ] {
        let err = resolve_err(&with_agent(&format!(
            "{MINIMAL_AGENT}\n    experimental {{ {line} }}"
        )));
        assert!(err.contains(message), "{line}: {err}");
    }
}
