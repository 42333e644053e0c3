//! Configuration files as operators write them: upstream's example configs, the JSON the Helm
//! charts render, and the mistakes the loader must explain.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use spire_core::keys::KeyType;
use spire_server::catalog::{
    self, DatabaseType, KeyManagerChoice, NodeAttestorChoice, UpstreamAuthorityChoice,
};
use spire_server::config::{
    self, BundleEndpointProfile, ConfigError, FederatesWithProfile, LogFormat, Overrides,
    ServerConfig,
};

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

fn load(text: &str) -> Result<ServerConfig, ConfigError> {
    config::load_str("server.conf", text, false)
}

const MINIMAL: &str = r#"
server {
    trust_domain = "example.org"
    data_dir = "./.data"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./.data/datastore.sqlite3"
        }
    }
    KeyManager "memory" { plugin_data {} }
    NodeAttestor "join_token" { plugin_data {} }
}
"#;

#[test]
fn upstream_quickstart_config_loads() {
    let cfg = config::load_file(&fixture("upstream_server.conf"), false).unwrap();
    let r = cfg.resolve().unwrap();
    assert_eq!(r.trust_domain.name(), "example.org");
    assert_eq!(r.bind_host_port(), "127.0.0.1:8081");
    assert_eq!(r.log_level, "debug");
    assert_eq!(r.ca_subject.country, ["US"]);
    let cat = catalog::from_config(&cfg).unwrap();
    assert_eq!(cat.key_manager, KeyManagerChoice::Memory);
    assert_eq!(cat.node_attestors, [NodeAttestorChoice::JoinToken]);
    assert_eq!(
        cat.upstream_authority,
        Some(UpstreamAuthorityChoice::Disk {
            key_file_path: "./conf/server/dummy_upstream_ca.key".into(),
            cert_file_path: "./conf/server/dummy_upstream_ca.crt".into(),
            bundle_file_path: None,
        })
    );
}

#[test]
fn upstream_full_config_loads_and_refuses_its_two_upstream_authorities() {
    let cfg = config::load_file(&fixture("upstream_server_full.conf"), false).unwrap();
    let r = cfg.resolve().unwrap();
    let be = r.federation.bundle_endpoint.as_ref().unwrap();
    assert_eq!(be.port, 8443);
    assert_eq!(be.refresh_hint, Duration::from_secs(300));
    let BundleEndpointProfile::HttpsWebAcme {
        domain_name,
        email,
        cache_dir,
        ..
    } = &be.profile
    else {
        panic!("expected https_web acme, got {:?}", be.profile);
    };
    assert_eq!(domain_name, "example.org");
    assert_eq!(email, "some@mail.com");
    assert_eq!(cache_dir, Path::new("./.data/bundle-acme"));
    let (td, fw) = r.federation.federates_with.iter().next().unwrap();
    assert_eq!(td.name(), "domain1.test");
    assert_eq!(
        fw.bundle_endpoint_url,
        "https://example.com/global/bundle.json"
    );
    assert!(matches!(
        &fw.profile,
        FederatesWithProfile::HttpsSpiffe { endpoint_spiffe_id }
            if endpoint_spiffe_id.as_str() == "spiffe://example.com/spire/server"
    ));
    // The full example enables two UpstreamAuthorities ("disk" and "ejbca"), which
    // upstream's catalog refuses too.
    let err = catalog::from_config(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("at most one UpstreamAuthority may be configured; found 2"),
        "{err}"
    );
}

#[test]
fn every_documented_key_is_accepted() {
    let cfg = config::load_file(&fixture("server_all_keys.conf"), false).unwrap();
    let r = cfg.resolve().unwrap();
    assert_eq!(r.ca_key_type, KeyType::EcP384);
    assert_eq!(r.jwt_key_type, KeyType::Rsa2048);
    assert_eq!(r.ca_ttl, Duration::from_secs(168 * 3600));
    assert_eq!(r.default_x509_svid_ttl, Duration::from_secs(2 * 3600));
    assert_eq!(r.default_jwt_svid_ttl, Duration::from_secs(600));
    assert_eq!(r.agent_ttl, Some(Duration::from_secs(72 * 3600)));
    assert_eq!(r.log_format, LogFormat::Json);
    assert!(r.log_source_location);
    assert_eq!(r.log_file, None, "an empty log_file means stdout");
    assert_eq!(
        r.admin_ids.len(),
        2,
        "admin IDs may be in federated domains"
    );
    assert!(!r.rate_limit.signing && r.rate_limit.attestation);
    assert!(r.audit_log_enabled);
    assert_eq!(r.jwt_issuer.as_deref(), Some("https://oidc.example.org"));
    assert_eq!(
        r.experimental.cache_reload_interval,
        Duration::from_secs(10)
    );
    assert!(r.experimental.events_based_cache);
    assert_eq!(
        r.prune_attested_nodes_expired_for,
        Some(Duration::from_secs(720 * 3600))
    );
    assert_eq!(r.federation.federates_with.len(), 2);
    assert!(matches!(
        r.federation.bundle_endpoint.as_ref().unwrap().profile,
        BundleEndpointProfile::HttpsWebServingCert { .. }
    ));
    assert!(r.health_checks.listener_enabled);
    assert_eq!(r.health_checks.bind_port, 80);
    let prom = r.telemetry.prometheus.as_ref().unwrap();
    assert_eq!(prom.port, Some(9988));
    assert_eq!(
        prom.tls.as_ref().unwrap().client_ca_file.as_deref(),
        Some("/path/to/ca.pem")
    );
    assert_eq!(r.telemetry.statsd.len(), 2);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("Experimental features")),
        "{:?}",
        r.warnings
    );

    let cat = catalog::from_config(&cfg).unwrap();
    assert_eq!(cat.datastore.database_type, DatabaseType::Sqlite3);
    assert_eq!(cat.datastore.max_open_conns, 100);
    assert_eq!(cat.datastore.conn_max_lifetime, None, "0 means unlimited");
    assert_eq!(
        cat.key_manager,
        KeyManagerChoice::Disk {
            keys_path: "/opt/spire/data/server/keys.json".into()
        }
    );
}

#[test]
fn helm_rendered_json_loads_with_expand_env() {
    let text = std::fs::read_to_string(fixture("helm_server.json")).unwrap();
    let env = |name: &str| match name {
        "TRUST_DOMAIN" => Some("prod.example.org".to_owned()),
        "SPIRE_DB_PATH" => Some("/run/spire/data/datastore.sqlite3".to_owned()),
        _ => None,
    };
    let cfg = config::load_str_with_env("server.conf", &text, true, env).unwrap();
    let r = cfg.resolve().unwrap();
    assert_eq!(r.trust_domain.name(), "prod.example.org");
    assert_eq!(
        r.jwt_issuer.as_deref(),
        Some("https://oidc-discovery.prod.example.org")
    );
    assert_eq!(r.ca_key_type, KeyType::Rsa2048);
    assert_eq!(r.ca_subject.organization, ["Example"]);
    assert_eq!(r.health_checks.bind_port, 8080);
    assert_eq!(
        r.federation.bundle_endpoint.as_ref().unwrap().profile,
        BundleEndpointProfile::HttpsSpiffe
    );
    assert_eq!(r.telemetry.prometheus.as_ref().unwrap().port, Some(9988));
    let cat = catalog::from_config(&cfg).unwrap();
    assert_eq!(
        cat.datastore.connection_string,
        "/run/spire/data/datastore.sqlite3"
    );
    assert_eq!(cat.datastore.max_idle_conns, 100);

    // Without -expandEnv the variable is taken literally and is not a trust domain.
    let cfg = config::load_str_with_env("server.conf", &text, false, env).unwrap();
    let err = cfg.resolve().unwrap_err().to_string();
    assert!(err.contains("server.trust_domain"), "{err}");
}

#[test]
fn repository_example_configs_work_and_agree() {
    let hcl = config::load_file(&repo_file("conf/server/server.conf"), false).unwrap();
    let json = config::load_file(&repo_file("conf/server/server.json"), false).unwrap();
    let (rh, rj) = (hcl.resolve().unwrap(), json.resolve().unwrap());
    assert_eq!(rh.trust_domain.name(), "example.org");
    assert_eq!(rh.bind_host_port(), "127.0.0.1:8081");
    assert_eq!(rh.data_dir, Path::new("./.data"));
    assert_eq!(
        rh.socket_path,
        Path::new("/tmp/spire-server/private/api.sock")
    );
    assert!(rh.warnings.is_empty(), "{:?}", rh.warnings);
    assert_eq!(rh, rj);
    let (ch, cj) = (
        catalog::from_config(&hcl).unwrap(),
        catalog::from_config(&json).unwrap(),
    );
    assert_eq!(ch, cj);
    assert_eq!(ch.datastore.connection_string, "./.data/datastore.sqlite3");
    assert_eq!(
        ch.key_manager,
        KeyManagerChoice::Disk {
            keys_path: "./.data/keys.json".into()
        }
    );
    assert!(ch.node_attestors.contains(&NodeAttestorChoice::JoinToken));
    assert_eq!(ch.upstream_authority, None);
}

#[test]
fn defaults_are_upstreams() {
    let r = load(MINIMAL).unwrap().resolve().unwrap();
    assert_eq!(r.bind_address, "0.0.0.0");
    assert_eq!(r.bind_port, 8081);
    assert_eq!(
        r.socket_path,
        Path::new("/tmp/spire-server/private/api.sock")
    );
    assert_eq!(r.log_level, "info");
    assert_eq!(r.log_format, LogFormat::Default);
    assert_eq!(r.ca_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(r.ca_key_type, KeyType::EcP256);
    assert_eq!(r.jwt_key_type, KeyType::EcP256);
    assert_eq!(r.default_x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(r.default_jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(r.agent_ttl, None);
    assert!(r.rate_limit.attestation && r.rate_limit.signing);
    assert_eq!(r.ca_subject.country, ["US"]);
    assert_eq!(r.ca_subject.organization, ["SPIFFE"]);
    assert!(!r.health_checks.listener_enabled);
    assert_eq!(r.health_checks.bind_address, "localhost");
    assert_eq!(r.health_checks.live_path, "/live");
    assert_eq!(
        r.experimental.prune_events_older_than,
        Duration::from_secs(12 * 3600)
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let cat = catalog::from_config(&load(MINIMAL).unwrap()).unwrap();
    assert_eq!(cat.datastore.max_open_conns, 100);
    assert_eq!(cat.datastore.max_idle_conns, 2);
    assert!(!cat.datastore.disable_migration);
}

#[test]
fn jwt_key_type_follows_ca_key_type() {
    let text = MINIMAL.replace("data_dir", "ca_key_type = \"RSA-4096\"\n data_dir");
    let r = load(&text).unwrap().resolve().unwrap();
    assert_eq!(r.ca_key_type, KeyType::Rsa4096);
    assert_eq!(r.jwt_key_type, KeyType::Rsa4096);
}

#[test]
fn numbers_may_be_strings() {
    let text = MINIMAL.replace(
        "data_dir",
        "bind_port = \"9090\"\n prune_attested_nodes_batch_size = \"50\"\n data_dir",
    );
    let r = load(&text).unwrap().resolve().unwrap();
    assert_eq!(r.bind_port, 9090);
    assert_eq!(r.prune_attested_nodes_batch_size, 50);
    let text = MINIMAL.replace("data_dir", "bind_port = 9091\n data_dir");
    assert_eq!(load(&text).unwrap().resolve().unwrap().bind_port, 9091);
}

#[test]
fn unknown_keys_name_the_key_block_and_file() {
    let text = MINIMAL.replace("data_dir", "trust_domian = \"x\"\n data_dir");
    let err = config::load_str("/etc/spire/server.conf", &text, false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("/etc/spire/server.conf: "), "{msg}");
    assert!(msg.contains("unknown key \"trust_domian\""), "{msg}");
    assert!(msg.contains("\"server\" block"), "{msg}");

    let text = format!("{MINIMAL}\nhealth_checks {{ listener = true }}\n");
    let msg = load(&text).unwrap_err().to_string();
    assert!(msg.contains("unknown key \"listener\""), "{msg}");
    assert!(msg.contains("health_checks"), "{msg}");

    let text = MINIMAL.replace("data_dir", "ratelimit { signin = false }\n data_dir");
    let msg = load(&text).unwrap_err().to_string();
    assert!(msg.contains("unknown key \"signin\""), "{msg}");
    assert!(msg.contains("ratelimit"), "{msg}");
}

#[test]
fn removed_keys_say_what_replaces_them() {
    let text = MINIMAL.replace("data_dir", "default_svid_ttl = \"1h\"\n data_dir");
    let msg = load(&text).unwrap_err().to_string();
    assert!(msg.contains("default_x509_svid_ttl"), "{msg}");
    let text = MINIMAL.replace("data_dir", "registration_uds_path = \"/tmp/x\"\n data_dir");
    let msg = load(&text).unwrap_err().to_string();
    assert!(msg.contains("use socket_path"), "{msg}");
}

#[test]
fn bad_trust_domains_are_explained() {
    let text = MINIMAL.replace("example.org", "Example.ORG");
    let err = load(&text).unwrap().resolve().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("server.conf: server.trust_domain: "),
        "{msg}"
    );
    assert!(msg.contains("\"Example.ORG\""), "{msg}");
    assert!(msg.contains("lowercase"), "{msg}");

    let text = MINIMAL.replace("trust_domain = \"example.org\"", "");
    let msg = load(&text).unwrap().resolve().unwrap_err().to_string();
    assert!(msg.contains("trust_domain must be configured"), "{msg}");
    assert!(msg.contains("-trustDomain"), "{msg}");
}

#[test]
fn overrides_win_over_the_file() {
    let mut cfg = load(&MINIMAL.replace("trust_domain = \"example.org\"", "")).unwrap();
    cfg.apply_overrides(&Overrides {
        trust_domain: Some("cli.example".into()),
        bind_address: Some("127.0.0.1".into()),
        bind_port: Some(18081),
        socket_path: Some("/tmp/other.sock".into()),
        log_level: Some("DEBUG".into()),
        data_dir: Some("/var/lib/spire".into()),
        ..Overrides::default()
    });
    let r = cfg.resolve().unwrap();
    assert_eq!(r.trust_domain.name(), "cli.example");
    assert_eq!(r.bind_host_port(), "127.0.0.1:18081");
    assert_eq!(r.socket_path, Path::new("/tmp/other.sock"));
    assert_eq!(r.log_level, "debug");
    assert_eq!(r.data_dir, Path::new("/var/lib/spire"));
    assert_eq!(
        Overrides::default().config_path(),
        Path::new("conf/server/server.conf")
    );
}

#[test]
fn semantic_errors_name_the_key_and_the_fix() {
    let cases = [
        ("ca_ttl = \"0s\"", "server.ca_ttl", "greater than zero"),
        (
            "default_x509_svid_ttl = \"0\"",
            "server.default_x509_svid_ttl",
            "greater than zero",
        ),
        ("ca_key_type = \"ed25519\"", "server.ca_key_type", "ec-p256"),
        (
            "jwt_key_type = \"rsa-1024\"",
            "server.jwt_key_type",
            "rsa-2048",
        ),
        ("admin_ids = [\"admin\"]", "server.admin_ids", "spiffe://"),
        ("log_level = \"LOUD\"", "server.log_level", "DEBUG, INFO"),
        ("log_format = \"xml\"", "server.log_format", "\"json\""),
    ];
    for (line, key, fix) in cases {
        let text = MINIMAL.replace("data_dir", &format!("{line}\n data_dir"));
        let msg = load(&text).unwrap().resolve().unwrap_err().to_string();
        assert!(msg.contains(key), "{line}: {msg}");
        assert!(msg.contains(fix), "{line}: {msg}");
    }
    let text = MINIMAL.replace("data_dir", "bind_port = 70000\n data_dir");
    let msg = load(&text).unwrap_err().to_string();
    assert!(
        msg.contains("server.bind_port") && msg.contains("1 to 65535"),
        "{msg}"
    );
    let text = MINIMAL.replace("data_dir = \"./.data\"", "");
    let msg = load(&text).unwrap().resolve().unwrap_err().to_string();
    assert!(msg.contains("data_dir must be configured"), "{msg}");
    let text = MINIMAL.replace("data_dir", "ca_ttl = \"10d\"\n data_dir");
    let msg = load(&text).unwrap_err().to_string();
    assert!(
        msg.contains("server.ca_ttl") && msg.contains("unknown unit"),
        "{msg}"
    );
}

#[test]
fn short_ca_ttl_warns_like_upstream() {
    let text = MINIMAL.replace("data_dir", "ca_ttl = \"2h\"\n data_dir");
    let r = load(&text).unwrap().resolve().unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("default_x509_svid_ttl is too high")
                && w.contains("20m or less")
                && w.contains("6h or more")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn federation_requires_https_and_a_profile() {
    let fed = |body: &str| {
        MINIMAL.replace(
            "data_dir",
            &format!("federation {{ federates_with \"other.test\" {{ {body} }} }}\n data_dir"),
        )
    };
    let msg = load(&fed(
        "bundle_endpoint_url = \"http://x\"\nbundle_endpoint_profile \"https_web\" {}",
    ))
    .unwrap()
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(msg.contains("must use the HTTPS protocol"), "{msg}");
    let msg = load(&fed("bundle_endpoint_url = \"https://x\""))
        .unwrap()
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bundle_endpoint_profile"), "{msg}");
}

#[test]
fn catalog_needs_one_key_manager() {
    let text = MINIMAL.replace(
        "KeyManager \"memory\" { plugin_data {} }",
        "KeyManager \"memory\" { plugin_data {} }\n KeyManager \"disk\" { plugin_data { keys_path = \"k.json\" } }",
    );
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("exactly one KeyManager"), "{msg}");
    assert!(msg.contains("found 2"), "{msg}");

    let text = MINIMAL.replace("KeyManager \"memory\" { plugin_data {} }", "");
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("exactly one KeyManager") && msg.contains("found none"),
        "{msg}"
    );

    let text = MINIMAL.replace("NodeAttestor \"join_token\" { plugin_data {} }", "");
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("at least one NodeAttestor"), "{msg}");
}

#[test]
fn catalog_refuses_unknown_plugins_by_name() {
    let text = MINIMAL.replace(
        "NodeAttestor \"join_token\" { plugin_data {} }",
        "NodeAttestor \"join_token\" { plugin_data {} }\n NodeAttestor \"tpm_devid\" { plugin_data {} }",
    );
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown or not yet supported built-in plugin NodeAttestor \"tpm_devid\"")
            && msg.contains("\"k8s_psat\""),
        "{msg}"
    );

    let text = MINIMAL.replace("KeyManager \"memory\"", "KeyManagr \"memory\"");
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown plugin type \"KeyManagr\""), "{msg}");

    let text = MINIMAL.replace(
        "KeyManager \"memory\" { plugin_data {} }",
        "KeyManager \"memory\" {\n plugin_cmd = \"/opt/km\"\n plugin_data {} }",
    );
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    let KeyManagerChoice::External(plugin) = &cat.key_manager else {
        panic!("{:?}", cat.key_manager);
    };
    assert_eq!(plugin.cmd, PathBuf::from("/opt/km"));

    // aws_kms takes upstream's keys and checks them as upstream does.
    let text = MINIMAL.replace(
        "KeyManager \"memory\" { plugin_data {} }",
        "KeyManager \"aws_kms\" { plugin_data {\n region = \"us-east-2\"\n key_identifier_value = \"srv-1\"\n key_policy_file = \"/p.json\" } }",
    );
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    let KeyManagerChoice::AwsKms(kms) = &cat.key_manager else {
        panic!("{:?}", cat.key_manager);
    };
    assert_eq!(kms.region, "us-east-2");
    let text = MINIMAL.replace(
        "KeyManager \"memory\" { plugin_data {} }",
        "KeyManager \"aws_kms\" { plugin_data {\n region = \"us-east-2\" } }",
    );
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("configuration requires a key identifier file or a key identifier value")
            && msg.contains("plugins.KeyManager.aws_kms"),
        "{msg}"
    );
    let text = MINIMAL.replace("KeyManager \"memory\"", "KeyManager \"awskms\"");
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("\"aws_kms\""), "{msg}");

    // An external NodeAttestor is accepted; its data reaches the plugin as HCL text, as
    // upstream re-prints the block.
    let text = MINIMAL.replace(
        "NodeAttestor \"join_token\" { plugin_data {} }",
        "NodeAttestor \"tpm\" {\n plugin_cmd = \"/opt/tpm\"\n plugin_args = [\"-v\"]\n plugin_data { ca = \"/x\" } }",
    );
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    let [NodeAttestorChoice::External(plugin)] = cat.node_attestors.as_slice() else {
        panic!("{:?}", cat.node_attestors);
    };
    assert_eq!(plugin.cmd, std::path::Path::new("/opt/tpm"));
    assert_eq!(plugin.args, ["-v"]);
    assert_eq!(
        plugin.data,
        spire_core::config::plugins::PluginData::Fixed(r#"ca = "/x""#.into())
    );

    // A disabled plugin is skipped, whatever it is.
    let text = MINIMAL.replace(
        "NodeAttestor \"join_token\" { plugin_data {} }",
        "NodeAttestor \"join_token\" { plugin_data {} }\n NodeAttestor \"x509pop\" {\n enabled = false\n plugin_data {} }",
    );
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    assert_eq!(cat.node_attestors, [NodeAttestorChoice::JoinToken]);
}

#[test]
fn catalog_takes_external_server_plugins_of_every_streamed_type_and_refuses_unported_publishers() {
    use spire_server::catalog::{BundlePublisherChoice, CredentialComposerChoice};
    let blocks = "NodeAttestor \"join_token\" { plugin_data {} }\n \
        UpstreamAuthority \"vendor\" {\n plugin_cmd = \"/opt/ua\"\n plugin_data { ca = \"/x\" } }\n \
        BundlePublisher \"bucket\" {\n plugin_cmd = \"/opt/bp\"\n plugin_data {} }\n \
        CredentialComposer \"uniqueid\" { plugin_data {} }\n \
        CredentialComposer \"claims\" {\n plugin_cmd = \"/opt/cc\"\n plugin_data {} }";
    let text = MINIMAL.replace("NodeAttestor \"join_token\" { plugin_data {} }", blocks);
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    let Some(UpstreamAuthorityChoice::External(ua)) = &cat.upstream_authority else {
        panic!("{:?}", cat.upstream_authority);
    };
    assert_eq!(ua.cmd, std::path::Path::new("/opt/ua"));
    let [BundlePublisherChoice::External(bp)] = cat.bundle_publishers.as_slice() else {
        panic!("{:?}", cat.bundle_publishers);
    };
    assert_eq!(bp.name, "bucket");
    // Both are taken (in the order the plugins block gives them: by name within a type).
    let [
        CredentialComposerChoice::External(cc),
        CredentialComposerChoice::UniqueId,
    ] = cat.credential_composers.as_slice()
    else {
        panic!("{:?}", cat.credential_composers);
    };
    assert_eq!(cc.name, "claims");

    // Upstream's built-in publishers are not ported: refused by name, saying what works.
    let text = MINIMAL.replace(
        "NodeAttestor \"join_token\" { plugin_data {} }",
        "NodeAttestor \"join_token\" { plugin_data {} }\n BundlePublisher \"aws_s3\" { plugin_data { bucket = \"b\" } }",
    );
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("plugins.BundlePublisher.aws_s3")
            && msg.contains("\"aws_s3\" is not available")
            && msg.contains("the supported built-in BundlePublisher is \"k8s_configmap\"")
            && msg.contains("plugin_cmd"),
        "{msg}"
    );

    // The built-in `k8s_configmap` publisher reads upstream's HCL map of clusters.
    let text = MINIMAL.replace(
        "NodeAttestor \"join_token\" { plugin_data {} }",
        "NodeAttestor \"join_token\" { plugin_data {} }\n BundlePublisher \"k8s_configmap\" {\n plugin_data {\n clusters = {\n \"c1\" = {\n configmap_name = \"spire-bundle\"\n configmap_key = \"bundle\"\n namespace = \"spire\"\n kubeconfig_path = \"/k/c1\"\n format = \"jwks\"\n },\n \"c2\" = {\n configmap_name = \"b\"\n configmap_key = \"k\"\n namespace = \"n\"\n format = \"pem\"\n }\n }\n }\n }",
    );
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    let [BundlePublisherChoice::K8sConfigMap(config)] = cat.bundle_publishers.as_slice() else {
        panic!("{:?}", cat.bundle_publishers);
    };
    let ids: Vec<_> = config.clusters.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c1", "c2"]);
    assert_eq!(
        config.clusters[0].kubeconfig_path.as_deref(),
        Some(std::path::Path::new("/k/c1"))
    );

    // An external UpstreamAuthority counts towards the one allowed.
    let text = MINIMAL.replace(
        "NodeAttestor \"join_token\" { plugin_data {} }",
        "NodeAttestor \"join_token\" { plugin_data {} }\n UpstreamAuthority \"vendor\" {\n plugin_cmd = \"/opt/ua\"\n plugin_data {} }\n UpstreamAuthority \"disk\" { plugin_data { key_file_path = \"k\"\n cert_file_path = \"c\" } }",
    );
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("at most one UpstreamAuthority"), "{msg}");
}

#[test]
fn catalog_refuses_unknown_plugin_data_keys() {
    let text = MINIMAL.replace(
        "KeyManager \"memory\" { plugin_data {} }",
        "KeyManager \"disk\" { plugin_data { key_path = \"k.json\" } }",
    );
    let err = catalog::from_config(&load(&text).unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("server.conf: unknown key \"key_path\""),
        "{msg}"
    );
    assert!(msg.contains("plugin_data of KeyManager \"disk\""), "{msg}");
    assert!(
        msg.contains("keys_path"),
        "the message lists valid keys: {msg}"
    );

    let text = MINIMAL.replace("database_type", "databse_type = \"x\"\n database_type");
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown key \"databse_type\"") && msg.contains("DataStore \"sql\""),
        "{msg}"
    );

    let text = MINIMAL.replace(
        "KeyManager \"memory\" { plugin_data {} }",
        "KeyManager \"disk\" { plugin_data {} }",
    );
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("keys_path is required"), "{msg}");

    let text = MINIMAL.replace("\"sqlite3\"", "\"oracle\"");
    let msg = catalog::from_config(&load(&text).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unsupported database_type \"oracle\""),
        "{msg}"
    );
}

#[test]
fn catalog_reads_json_list_forms() {
    let json = r#"{
        "server": {"trust_domain": "example.org", "data_dir": "d"},
        "plugins": {
            "DataStore": [{"sql": [{"plugin_data": [{"database_type": "postgres",
                "connection_string": "dbname=spire", "max_open_conns": "20",
                "conn_max_lifetime": "30m"}]}]}],
            "KeyManager": [{"memory": {"plugin_data": null}}],
            "NodeAttestor": [{"join_token": null}]
        }
    }"#;
    let cfg = config::load_str("server.json", json, false).unwrap();
    let cat = catalog::from_config(&cfg).unwrap();
    assert_eq!(cat.datastore.database_type, DatabaseType::Postgres);
    assert_eq!(cat.datastore.max_open_conns, 20);
    assert_eq!(
        cat.datastore.conn_max_lifetime,
        Some(Duration::from_secs(1800))
    );
    assert_eq!(cat.key_manager, KeyManagerChoice::Memory);
    assert_eq!(cat.node_attestors, [NodeAttestorChoice::JoinToken]);
}

#[test]
fn missing_files_point_at_the_config_flag() {
    let err = config::load_file(Path::new("/nonexistent/server.conf"), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not find config file /nonexistent/server.conf: please use the -config flag"
    );
}

#[test]
fn bare_words_are_a_parse_error_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(
        &path,
        "server {\n    trust_domain = \"example.org\"\n    data_dir = spire_data\n}\n",
    )
    .unwrap();
    let err = config::load_file(&path, false).unwrap_err().to_string();
    assert!(err.contains("server.conf"), "{err}");
    assert!(
        err.contains("At 3:16: server.data_dir = spire_data")
            && err.contains("server.data_dir = \"spire_data\""),
        "{err}"
    );
}

#[test]
fn validate_parses_the_connection_strings_without_connecting() {
    use spire_server::datastore::sql::{SqlConfig, SqlDataStore, SqlOptions};
    let check = |database_type: &str, connection_string: &str| {
        let config = SqlConfig {
            database_type: database_type.into(),
            connection_string: connection_string.into(),
            max_open_conns: None,
            disable_migration: false,
        };
        SqlDataStore::check_connection_strings(&config, &SqlOptions::default())
            .map_err(|e| e.to_string())
    };
    // Nothing listens on these: parsing must not connect.
    check("sqlite3", "/var/lib/spire/datastore.sqlite3").unwrap();
    check("postgres", "dbname=spire user=spire host=127.0.0.1 port=1").unwrap();
    check(
        "postgres",
        "postgres://spire:pw@127.0.0.1:1/spire?sslmode=disable",
    )
    .unwrap();
    check("mysql", "spire:pw@tcp(127.0.0.1:1)/spire?parseTime=true").unwrap();
    let err = check("postgres", "/var/lib/spire/datastore.sqlite3").unwrap_err();
    assert!(err.contains("sqlite3"), "{err}");
    let err = check("postgres", "dbname=spire usr=spire").unwrap_err();
    assert!(err.contains("usr"), "{err}");
    assert!(check("oracle", "x").is_err());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(
        &path,
        "server {\n  trust_domain = \"example.org\"\n  data_dir = \"./data\"\n}\n\
         plugins {\n  DataStore \"sql\" { plugin_data { database_type = \"postgres\" \
         connection_string = \"dbname=spire usr=spire\" } }\n\
         KeyManager \"memory\" { plugin_data {} }\n\
         NodeAttestor \"join_token\" { plugin_data {} }\n}\n",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        spire_server::server::validate_file(&path, false).unwrap_err()
    );
    assert!(err.contains("usr"), "{err}");
}

/// Upstream's documented `k8s_psat` block (`doc/plugin_server_nodeattestor_k8s_psat.md`,
/// with its missing closing brace added) loads, beside `join_token`.
#[test]
fn upstream_k8s_psat_example_loads() {
    use spire_server::plugins::nodeattestor::k8s_psat::K8sPsatConfig;
    let text = MINIMAL.replace(
        "NodeAttestor \"join_token\" { plugin_data {} }",
        r#"NodeAttestor "join_token" { plugin_data {} }
    NodeAttestor "k8s_psat" {
        plugin_data {
            clusters = {
                "MyCluster" = {
                    service_account_allow_list = ["production:spire-agent"]
                    kube_config_file = "path/to/kubeconfig/file"
                }
            }
        }
    }"#,
    );
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    let Some(NodeAttestorChoice::K8sPsat(K8sPsatConfig { clusters })) = cat.node_attestors.get(1)
    else {
        panic!("{:?}", cat.node_attestors);
    };
    let cluster = &clusters["MyCluster"];
    assert!(
        cluster
            .service_account_allow_list
            .contains("production:spire-agent")
    );
    assert_eq!(cluster.audience, ["spire-server"]);
    assert_eq!(
        cluster.kube_config_file.as_deref(),
        Some("path/to/kubeconfig/file")
    );
    let err = catalog::from_config(
        &load(&text.replace(
            "service_account_allow_list = [\"production:spire-agent\"]",
            "",
        ))
        .unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("clusters.MyCluster.service_account_allow_list")
            && err.contains("at least one service account"),
        "{err}"
    );
}

#[test]
fn acme_email_is_optional_in_the_profile_and_required_in_the_deprecated_form() {
    let server = |federation: &str| {
        format!(
            "server {{\n trust_domain = \"example.org\"\n data_dir = \"/tmp/d\"\n \
             federation {{\n bundle_endpoint {{\n port = 8443\n {federation}\n }}\n }}\n }}\n\
             plugins {{}}\n"
        )
    };
    let profile = server(
        "profile \"https_web\" { acme { domain_name = \"bundle.example.org\" tos_accepted = true } }",
    );
    let resolved = config::load_str("profile.conf", &profile, false)
        .unwrap()
        .resolve()
        .unwrap();
    let be = resolved.federation.bundle_endpoint.unwrap();
    let BundleEndpointProfile::HttpsWebAcme {
        email,
        directory_url,
        ..
    } = &be.profile
    else {
        panic!("expected https_web acme, got {:?}", be.profile);
    };
    assert_eq!(email, "");
    assert_eq!(
        directory_url,
        "https://acme-v02.api.letsencrypt.org/directory"
    );

    let deprecated = server("acme { domain_name = \"bundle.example.org\" }");
    let err = config::load_str("deprecated.conf", &deprecated, false)
        .unwrap()
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.federation.bundle_endpoint.acme.email"),
        "{err}"
    );
}

/// Upstream's documented `UpstreamAuthority "spire"` block
/// (`doc/plugin_server_upstreamauthority_spire.md`, commas included) loads; its Windows named
/// pipe variant is refused as upstream refuses it off Windows, naming the key.
#[test]
fn upstream_spire_upstream_authority_example_loads() {
    use spire_server::plugins::upstreamauthority::SpireUpstreamAuthorityConfig;
    let block = r#"KeyManager "memory" { plugin_data {} }
    UpstreamAuthority "spire" {
        plugin_data {
            server_address = "upstream-spire-server",
            server_port = "8081",
            workload_api_socket = "/tmp/spire-agent/public/api.sock"
        }
    }"#;
    let text = MINIMAL.replace("KeyManager \"memory\" { plugin_data {} }", block);
    let cat = catalog::from_config(&load(&text).unwrap()).unwrap();
    assert_eq!(
        cat.upstream_authority,
        Some(UpstreamAuthorityChoice::Spire(
            SpireUpstreamAuthorityConfig {
                server_address: "upstream-spire-server".into(),
                server_port: 8081,
                workload_api_socket: "/tmp/spire-agent/public/api.sock".into(),
                require_pq_kem: false,
            }
        ))
    );
    let windows = text.replace(
        r#"workload_api_socket = "/tmp/spire-agent/public/api.sock""#,
        r#"experimental {
                workload_api_named_pipe_name = "\\spire-agent\\public\\api"
            }"#,
    );
    let err = catalog::from_config(&load(&windows).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("workload_api_named_pipe_name") && err.contains("workload_api_socket"),
        "{err}"
    );
}

#[test]
fn keys_this_server_does_not_implement_are_refused_by_name() {
    let cases = [
        ("profiling_enabled = true", "server.profiling_enabled"),
        (
            "experimental { auth_opa_policy_engine { local { rego_path = \"p.rego\" } } }",
            "server.experimental.auth_opa_policy_engine",
        ),
        (
            "experimental { agent_spiffe_id_as_selector = true }",
            "server.experimental.agent_spiffe_id_as_selector",
        ),
        (
            "experimental { wit_issuer = \"https://x\" }",
            "server.experimental.wit_issuer",
        ),
        (
            "experimental { wit_key_type = \"ec-p256\" }",
            "server.experimental.wit_key_type",
        ),
        (
            "experimental { named_pipe_name = \"\\\\spire-server\\\\private\\\\api\" }",
            "named_pipe_name is not supported on this platform; use socket_path instead",
        ),
        (
            "use_legacy_downstream_x509_ca_ttl = false",
            "server.use_legacy_downstream_x509_ca_ttl: unknown configuration detected: \
             upstream SPIRE removed this key in v1.13",
        ),
    ];
    for (line, key) in cases {
        let text = MINIMAL.replacen("server {", &format!("server {{\n    {line}"), 1);
        let err = load(&text)
            .and_then(|c| c.resolve().map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{line}: {err}");
    }
    // Their off values, and profiling keys without profiling_enabled, load as upstream.
    let text = MINIMAL.replacen(
        "server {",
        "server {\n    profiling_enabled = false\n    profiling_port = 6060\n    \
         proxy_protocol_trusted_cidrs = []\n    experimental { require_pq_kem = false }",
        1,
    );
    load(&text).unwrap().resolve().unwrap();
    // require_pq_kem = true is implemented (PQ-only key exchange on the API listener).
    let text = MINIMAL.replacen(
        "server {",
        "server {\n    experimental { require_pq_kem = true }",
        1,
    );
    assert!(
        load(&text)
            .unwrap()
            .resolve()
            .unwrap()
            .experimental
            .require_pq_kem
    );
}

#[test]
fn tls_config_is_refused_as_upstream_releases_refuse_it() {
    // `tls_config` exists only in an unmerged upstream pull request; released upstream
    // servers fail on it as an unknown key, and so does this one, saying why.
    let text = MINIMAL.replacen(
        "server {",
        "server {\n    tls_config { min_tls_version = \"VersionTLS13\" }",
        1,
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("unknown key \"tls_config\""), "{err}");
    assert!(err.contains("not a SPIRE server key"), "{err}");
}

#[test]
fn proxy_protocol_cidrs_are_parsed_and_bad_ones_named() {
    let text = MINIMAL.replacen(
        "server {",
        "server {\n    proxy_protocol_trusted_cidrs = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        1,
    );
    let r = load(&text).unwrap().resolve().unwrap();
    let shown: Vec<String> = r
        .proxy_protocol_trusted_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32"]);
    assert!(r.proxy_protocol_trusted_cidrs[0].contains("10.1.2.3".parse().unwrap()));

    let text = MINIMAL.replacen(
        "server {",
        "server {\n    proxy_protocol_trusted_cidrs = [\"10.0.0.1\"]",
        1,
    );
    let err = load(&text).unwrap().resolve().unwrap_err().to_string();
    assert!(err.contains("server.proxy_protocol_trusted_cidrs"), "{err}");
    assert!(
        err.contains("invalid proxy_protocol_trusted_cidrs value \"10.0.0.1\""),
        "{err}"
    );
}

#[test]
fn unknown_keys_where_upstream_never_checks_load_with_a_warning() {
    // Upstream checks `server`, `ca_subject`, `ratelimit`, `bundle_endpoint`, its `acme`,
    // the telemetry sinks and `health_checks`, but not `experimental`, `federation`,
    // `federates_with` or `telemetry` itself: a stale key there loads upstream.
    let text = MINIMAL.replacen(
        "server {",
        r#"server {
    experimental { retired_flag = true }
    federation {
        stale = 1
        federates_with "other.org" {
            bundle_endpoint_url = "https://other.org:8443"
            old_key = "x"
            bundle_endpoint_profile "https_web" {}
        }
    }"#,
        1,
    ) + "\ntelemetry { NotASink = 1 }\n";
    let r = load(&text).unwrap().resolve().unwrap();
    let warned = |needle: &str| r.warnings.iter().any(|w| w.contains(needle));
    assert!(
        warned("server.experimental is ignored, as upstream ignores it: retired_flag"),
        "{:?}",
        r.warnings
    );
    assert!(warned("server.federation is ignored"), "{:?}", r.warnings);
    assert!(
        warned(
            "server.federation.federates_with \"other.org\" is ignored, as upstream ignores it: old_key"
        ),
        "{:?}",
        r.warnings
    );
    assert!(
        warned("telemetry is ignored, as upstream ignores it: NotASink"),
        "{:?}",
        r.warnings
    );

    // Where upstream checks, an unknown key still fails the load.
    for block in [
        "ca_subject { contry = \"US\" }",
        "federation { bundle_endpoint { adress = \"0.0.0.0\" } }",
    ] {
        let text = MINIMAL.replacen("server {", &format!("server {{\n    {block}"), 1);
        assert!(load(&text).is_err(), "{block}");
    }
    let text = format!("{MINIMAL}\ntelemetry {{ Prometheus {{ prot = 1 }} }}\n");
    assert!(load(&text).is_err());
}

#[test]
fn max_attested_node_info_staleness_reaches_the_agent_authorizer() {
    let r = load(&MINIMAL.replace(
        "data_dir",
        "max_attested_node_info_staleness = \"30s\"\n data_dir",
    ))
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(
        r.index_options().max_attested_node_info_staleness,
        Duration::from_secs(30)
    );
    let r = load(MINIMAL).unwrap().resolve().unwrap();
    assert_eq!(
        r.index_options().max_attested_node_info_staleness,
        Duration::ZERO
    );
}

/// Resolves MINIMAL with `line` added to the `server` block.
fn resolve_with(line: &str) -> Result<spire_server::config::ResolvedServerConfig, ConfigError> {
    let text = MINIMAL.replacen("server {", &format!("server {{\n    {line}"), 1);
    load(&text)?.resolve()
}

#[test]
fn feature_flags_are_checked_as_upstreams_fflag() {
    // Upstream's test flag loads, with upstream's warning.
    let r = resolve_with("experimental { feature_flags = [\"i_am_a_test_flag\"] }").unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w == "Developer feature flag \"i_am_a_test_flag\" has been enabled"),
        "{:?}",
        r.warnings
    );
    // Any other flag fails as upstream's fflag.Load fails, listing them sorted.
    let err =
        resolve_with("experimental { feature_flags = [\"zz\", \"i_am_a_test_flag\", \"aa\"] }")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains(
            "server.experimental.feature_flags: error loading feature flags: unknown feature \
             flag(s): [aa zz]"
        ),
        "{err}"
    );
    // wit-svid is upstream's, but it turns on WIT-SVIDs, which this server does not have.
    let err = resolve_with("experimental { feature_flags = [\"wit-svid\"] }")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.experimental.feature_flags")
            && err.contains("WIT-SVIDs, which this server does not support"),
        "{err}"
    );
}

#[test]
fn sql_transaction_timeout_is_the_deprecated_alias_of_event_timeout() {
    let r = resolve_with("experimental { sql_transaction_timeout = \"7m\" }").unwrap();
    assert_eq!(r.experimental.event_timeout, Duration::from_secs(7 * 60));
    assert!(
        r.warnings.iter().any(|w| w
            == "experimental.sql_transaction_timeout is deprecated, use experimental.event_timeout instead"),
        "{:?}",
        r.warnings
    );
    let r = resolve_with("experimental { event_timeout = \"3m\" }").unwrap();
    assert_eq!(r.experimental.event_timeout, Duration::from_secs(3 * 60));
    let err = resolve_with(
        "experimental {\n sql_transaction_timeout = \"7m\"\n event_timeout = \"3m\"\n }",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "both experimental sql_transaction_timeout and event_timeout set, only set event_timeout"
        ),
        "{err}"
    );
}
