//! The agent config keys of Envoy SDS (`sds { }`, `disable_sds_api`, `disable_workload_api`
//! and their flags) and of `WorkloadAttestor "docker"`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::PathBuf;

use spire_agent::config::{self, Overrides, ResolvedAgentConfig, WorkloadAttestorChoice};

const AGENT: &str = r#"
agent {
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    insecure_bootstrap = true
    admin_socket_path = "/tmp/spire-agent/public/admin.sock"
    EXTRA
}
plugins {
    NodeAttestor "join_token" { plugin_data {} }
    KeyManager "memory" { plugin_data {} }
    WorkloadAttestor "unix" { plugin_data {} }
    PLUGIN
}
"#;

fn resolve(
    extra: &str,
    plugin: &str,
    overrides: &Overrides,
) -> Result<ResolvedAgentConfig, String> {
    let text = AGENT.replace("EXTRA", extra).replace("PLUGIN", plugin);
    let mut c = config::load_str("agent.conf", &text, false).map_err(|e| e.to_string())?;
    c.apply_overrides(overrides);
    c.resolve().map_err(|e| e.to_string())
}

#[test]
fn disable_keys_and_flags_as_upstream() {
    let none = Overrides::default();
    // The admin socket beside the public one is refused while the public socket exists...
    let err = resolve("", "", &none).unwrap_err();
    assert!(
        err.contains("admin socket cannot be in the same directory"),
        "{err}"
    );
    let err = resolve("disable_sds_api = true", "", &none).unwrap_err();
    assert!(
        err.contains("admin socket cannot be in the same directory"),
        "{err}"
    );
    // ...and accepted when both APIs are off (no public socket), from keys or flags.
    let c = resolve(
        "disable_sds_api = true\ndisable_workload_api = true",
        "",
        &none,
    )
    .unwrap();
    assert!(c.disable_sds_api && c.disable_workload_api);
    let flags = Overrides {
        disable_sds_api: true,
        disable_workload_api: true,
        ..Overrides::default()
    };
    let c = resolve("", "", &flags).unwrap();
    assert!(c.disable_sds_api && c.disable_workload_api);
    assert_eq!(c.sds, config::SdsSettings::default());
    let c = resolve(
        "disable_sds_api = true\ndisable_workload_api = true\nsds { default_svid_name = \"svid\"\ndisable_spiffe_cert_validation = true }",
        "",
        &none,
    )
    .unwrap();
    assert_eq!(c.sds.default_svid_name, "svid");
    assert!(c.sds.disable_spiffe_cert_validation);
    let err = resolve("disable_sds_api = \"sometimes\"", "", &none).unwrap_err();
    assert!(err.contains("disable_sds_api"), "{err}");
}

#[test]
fn docker_attestor_keys_as_upstream() {
    let off = "disable_sds_api = true\ndisable_workload_api = true";
    let none = Overrides::default();
    let docker = |data: &str| {
        resolve(
            off,
            &format!("WorkloadAttestor \"docker\" {{ plugin_data {{ {data} }} }}"),
            &none,
        )
    };
    let c = docker("").unwrap();
    let find = |c: &ResolvedAgentConfig| {
        c.plugins
            .workload_attestors
            .iter()
            .find_map(|w| match w {
                WorkloadAttestorChoice::Docker(d) => Some(d.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no docker attestor: {:?}", c.plugins.workload_attestors))
    };
    let d = find(&c);
    assert_eq!(d.socket_path, PathBuf::from("/var/run/docker.sock"));
    assert_eq!(d.docker_version, None);

    let c = docker(
        "docker_socket_path = \"unix:///run/docker.sock\"\ndocker_version = \"1.41\"\nverbose_container_locator_logs = true\nuse_new_container_locator = false\ncontainer_id_cgroup_matchers = [\"/docker/<id>\"]",
    )
    .unwrap();
    let d = find(&c);
    assert_eq!(d.socket_path, PathBuf::from("/run/docker.sock"));
    assert_eq!(d.docker_version.as_deref(), Some("1.41"));
    assert!(d.verbose_container_locator_logs);
    assert_eq!(d.container_id_cgroup_matchers, ["/docker/<id>"]);

    let err =
        docker("experimental { sigstore { rekor_url = \"https://rekor.example\" } }").unwrap_err();
    assert!(
        err.contains("experimental.sigstore") && err.contains("not built into spire-rs"),
        "{err}"
    );
    let err = docker("container_id_cgroup_matchers = [\"/docker/<id>\"]").unwrap_err();
    assert!(err.contains("cannot both be used"), "{err}");
    let err = docker("docker_socket_path = \"tcp://127.0.0.1:2375\"").unwrap_err();
    assert!(err.contains("docker_socket_path"), "{err}");
    let err = docker("docker_host = \"npipe:////./pipe/docker_engine\"").unwrap_err();
    assert!(err.contains("docker_host"), "{err}");
}
