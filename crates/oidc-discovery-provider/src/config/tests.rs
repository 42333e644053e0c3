#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use super::*;

const SOURCE: &str = "server_api { address = \"unix:///tmp/spire-server/private/api.sock\" }";

fn parse_ok(text: &str) -> Config {
    parse("oidc.conf", text, false).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    match parse("oidc.conf", text, false) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_minimal_config_gets_upstreams_defaults() {
    let config = parse_ok(&format!(
        "domains = [\"oidc.example.org\", \"oidc.example.org\", \"b.example.org\"]\n\
         listen_socket_path = \"/run/oidc.sock\"\n{SOURCE}"
    ));
    assert_eq!(config.log_level, "info");
    assert_eq!(config.domains, ["oidc.example.org", "b.example.org"]);
    assert_eq!(
        config.listener,
        ListenerConfig::UnixSocket(PathBuf::from("/run/oidc.sock"))
    );
    assert_eq!(
        config.source,
        SourceConfig::ServerApi {
            socket_path: PathBuf::from("/tmp/spire-server/private/api.sock"),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    );
    assert_eq!(config.server_path_prefix, "/");
    assert!(config.health_checks.is_none());
    assert!(!config.set_key_use && !config.allow_insecure_scheme && !config.log_requests);
}

#[test]
fn every_key_is_read() {
    let config = parse_ok(
        r#"
        log_level = "debug"
        log_format = "json"
        log_path = "/var/log/oidc.log"
        log_requests = true
        domains = ["oidc.example.org"]
        set_key_use = true
        allow_insecure_scheme = true
        insecure_addr = ":8080"
        jwt_issuer = "https://issuer.example.org/prefix"
        jwks_uri = "https://keys.example.org/keys"
        server_path_prefix = "/oidc"
        experimental { listen_named_pipe_name = "oidc" }
        workload_api {
            socket_path = "/tmp/agent.sock"
            trust_domain = "example.org"
            poll_interval = "3s"
            experimental { named_pipe_name = "agent" }
        }
        health_checks {
            bind_port = "9000"
            ready_path = "/r"
        }
        "#,
    );
    assert_eq!(config.log_level, "debug");
    assert_eq!(config.log_format, "json");
    assert_eq!(config.log_path, Some(PathBuf::from("/var/log/oidc.log")));
    assert!(config.log_requests && config.set_key_use && config.allow_insecure_scheme);
    assert_eq!(
        config.listener,
        ListenerConfig::Insecure(":8080".to_owned())
    );
    assert_eq!(
        config.source,
        SourceConfig::WorkloadApi {
            socket_path: PathBuf::from("/tmp/agent.sock"),
            trust_domain: TrustDomain::new("example.org").unwrap(),
            poll_interval: Duration::from_secs(3),
        }
    );
    assert_eq!(
        config.health_checks,
        Some(HealthChecksConfig {
            bind_port: 9000,
            ready_path: "/r".to_owned(),
            live_path: "/live".to_owned(),
        })
    );
    assert_eq!(
        config.jwt_issuer.as_deref(),
        Some("https://issuer.example.org/prefix")
    );
    assert_eq!(
        config.jwks_uri.as_deref(),
        Some("https://keys.example.org/keys")
    );
    assert_eq!(config.server_path_prefix, "/oidc");
    assert_eq!(
        config.windows_only_keys,
        [
            "experimental.listen_named_pipe_name",
            "workload_api.experimental.named_pipe_name"
        ]
    );
}

#[test]
fn json_configs_are_read() {
    let config = parse_ok(
        r#"{"domains": ["a.example"], "insecure_addr": "127.0.0.1:1",
            "file": {"path": "/b.json", "poll_interval": "0s"},
            "health_checks": {}}"#,
    );
    assert_eq!(
        config.source,
        SourceConfig::File {
            path: PathBuf::from("/b.json"),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    );
    assert_eq!(
        config.health_checks,
        Some(HealthChecksConfig {
            bind_port: 8008,
            ready_path: "/ready".to_owned(),
            live_path: "/live".to_owned(),
        })
    );
}

#[test]
fn serving_cert_file_and_acme_sections() {
    let config = parse_ok(&format!(
        "domains = [\"a.example\"]\n{SOURCE}\nserving_cert_file {{\n cert_file_path = \"/c.pem\"\n \
         key_file_path = \"/k.pem\"\n}}"
    ));
    assert_eq!(
        config.listener,
        ListenerConfig::ServingCert(ServingCertConfig {
            cert_file_path: PathBuf::from("/c.pem"),
            key_file_path: PathBuf::from("/k.pem"),
            addr: "0.0.0.0:443".parse().unwrap(),
            file_sync_interval: Duration::from_secs(60),
        })
    );
    let config = parse_ok(&format!(
        "domains = [\"a.example\"]\n{SOURCE}\nacme {{\n email = \"ops@a.example\"\n \
         tos_accepted = true\n cache_dir = \"\"\n}}"
    ));
    assert_eq!(
        config.listener,
        ListenerConfig::Acme(AcmeConfig {
            directory_url: String::new(),
            email: "ops@a.example".to_owned(),
            tos_accepted: true,
            cache_dir: None,
        })
    );
    let config = parse_ok(&format!(
        "domains = [\"a.example\"]\n{SOURCE}\nacme {{\n email = \"ops@a.example\"\n \
         tos_accepted = true\n}}"
    ));
    let ListenerConfig::Acme(acme) = config.listener else {
        panic!("{:?}", config.listener)
    };
    assert_eq!(acme.cache_dir, Some(PathBuf::from("./.acme-cache")));
}

#[test]
fn upstreams_validation_messages() {
    let cases: &[(&str, &str)] = &[
        (
            "insecure_addr = \":1\"\nserver_api { address = \"unix:/a\" }",
            "at least one domain must be configured",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nacme { tos_accepted = true email = \"e\" }\nserver_api { address = \"unix:/a\" }",
            "insecure_addr and the acme section are mutually exclusive",
        ),
        (
            "domains = [\"a\"]\nacme { email = \"e\" }\nserver_api { address = \"unix:/a\" }",
            "tos_accepted must be set to true in the acme configuration section",
        ),
        (
            "domains = [\"a\"]\nacme { tos_accepted = true }\nserver_api { address = \"unix:/a\" }",
            "email must be configured in the acme configuration section",
        ),
        (
            "domains = [\"a\"]\nserving_cert_file { key_file_path = \"k\" }\nserver_api { address = \"unix:/a\" }",
            "cert_file_path must be configured in the serving_cert_file configuration section",
        ),
        (
            "domains = [\"a\"]\nserving_cert_file { cert_file_path = \"c\" }\nserver_api { address = \"unix:/a\" }",
            "key_file_path must be configured in the serving_cert_file configuration section",
        ),
        (
            "domains = [\"a\"]\nserving_cert_file {\n cert_file_path = \"c\"\n key_file_path = \"k\"\n addr = \"nope\"\n}\nserver_api { address = \"unix:/a\" }",
            "invalid addr in the serving_cert_file configuration section",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api {\n address = \"unix:/a\"\n poll_interval = \"soon\"\n}",
            "invalid poll_interval in the server_api configuration section",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nworkload_api { socket_path = \"/a\" }",
            "trust_domain must be configured in the workload_api configuration section",
        ),
        (
            "domains = [\"a\"]\nserver_api { address = \"unix:/a\" }",
            "either acme, serving_cert_file, insecure_addr or listen_socket_path must be configured",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nlisten_socket_path = \"/s\"\nserver_api { address = \"unix:/a\" }",
            "insecure_addr and listen_socket_path are mutually exclusive",
        ),
        (
            "domains = [\"a\"]\nlisten_socket_path = \"/s\"\nacme { tos_accepted = true email = \"e\" }\nserver_api { address = \"unix:/a\" }",
            "listen_socket_path and the acme section are mutually exclusive",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api {}",
            "address must be configured in the server_api configuration section",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api { address = \"/tmp/api.sock\" }",
            "address must use the unix name system in the server_api configuration section",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nworkload_api { trust_domain = \"a\" }",
            "socket_path must be configured in the workload_api configuration section",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"",
            "exactly one of the server_api, workload_api, or file sections must be configured",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api { address = \"unix:/a\" }\nfile { path = \"/b\" }",
            "the server_api, workload_api, and file sections are mutually exclusive",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api { address = \"unix:/a\" }\njwt_issuer = \"issuer.example\"",
            "the jwt_issuer url must contain a scheme",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api { address = \"unix:/a\" }\njwt_issuer = \"https://\"",
            "the jwt_issuer url must contain a host",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api { address = \"unix:/a\" }\njwks_uri = \"/keys\"",
            "the jwks_uri setting could not be parsed",
        ),
        (
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api { address = \"unix:/a\" }\nlog_level = \"loud\"",
            "not a valid logrus Level",
        ),
    ];
    for (text, expected) in cases {
        let error = parse_err(text);
        assert!(
            error.contains(expected),
            "config:\n{text}\nerror: {error}\nexpected: {expected}"
        );
        assert!(error.starts_with("oidc.conf: "), "{error}");
    }
}

#[test]
fn unknown_keys_are_named() {
    let error = parse_err(&format!(
        "domains = [\"a\"]\ninsecure_addr = \":1\"\n{SOURCE}\ndomain = \"typo\""
    ));
    assert!(error.contains("unknown key \"domain\""), "{error}");
    let error = parse_err(
        "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api {\n address = \"unix:/a\"\n \
         pol_interval = \"1s\"\n}",
    );
    assert!(
        error.contains("\"pol_interval\"") && error.contains("server_api"),
        "{error}"
    );
    let error = parse_err(
        "domains = [\"a\"]\ninsecure_addr = \":1\"\n{SOURCE}\nhealth_checks { port = 1 }"
            .replace("{SOURCE}", SOURCE)
            .as_str(),
    );
    assert!(error.contains("\"port\""), "{error}");
}

#[test]
fn environment_variables_are_expanded_on_request() {
    let text =
        format!("domains = [\"$OIDC_TEST_DOMAIN_UNSET_X\"]\ninsecure_addr = \":1\"\n{SOURCE}");
    // An unset variable expands to nothing: an empty domain is still a domain to upstream.
    let config = parse("oidc.conf", &text, true).unwrap();
    assert_eq!(config.domains, [""]);
    let config = parse("oidc.conf", &text, false).unwrap();
    assert_eq!(config.domains, ["$OIDC_TEST_DOMAIN_UNSET_X"]);
}

#[test]
fn unix_targets_and_addresses() {
    assert_eq!(
        unix_target_path("unix:///a/b.sock"),
        PathBuf::from("/a/b.sock")
    );
    assert_eq!(
        unix_target_path("unix:/a/b.sock"),
        PathBuf::from("/a/b.sock")
    );
    assert_eq!(unix_target_path("unix:rel.sock"), PathBuf::from("rel.sock"));
    assert_eq!(
        resolve_tcp_addr(":443").unwrap(),
        "0.0.0.0:443".parse().unwrap()
    );
    assert_eq!(
        resolve_tcp_addr("127.0.0.1:8443").unwrap(),
        "127.0.0.1:8443".parse().unwrap()
    );
    assert_eq!(
        resolve_tcp_addr("[::1]:8443").unwrap(),
        "[::1]:8443".parse().unwrap()
    );
    assert!(resolve_tcp_addr("443").is_err());
}
