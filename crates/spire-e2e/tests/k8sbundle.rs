//! The `k8sbundle` notifier against a real API server (kube-apiserver v1.37.2 with etcd, on
//! loopback): our spire-server keeps the trust bundle in a ConfigMap and as `caBundle` in
//! labelled webhook configurations and APIServices, follows rotation, taint and revocation,
//! survives the API server going away and the ConfigMap going missing, and refuses to start
//! when it cannot publish at all or is misconfigured. The same flow runs the
//! `k8s_configmap` BundlePublisher beside it (no second API server): it creates or updates
//! its ConfigMaps by server-side apply, in the SPIFFE and PEM formats, and follows rotation.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use spire_e2e::kube::KubeCluster;
use spire_e2e::{ServerPaths, ServerProcess, binary, run_to_failure, server_config};

const WEBHOOK_LABEL: &str = "spiffe.io/webhook";
const API_SERVICE_LABEL: &str = "spiffe.io/api_service";

/// A server config with `notifier` (a whole `Notifier "k8sbundle" { }` block) added.
fn write_config(dir: &Path, port: u16, notifier: &str) -> (PathBuf, PathBuf) {
    let socket = dir.join("server.sock");
    let data = dir.join("server-data");
    let config = server_config(&ServerPaths {
        port,
        socket: &socket,
        data_dir: &data,
        keys: &data.join("keys.json"),
        database_type: "sqlite3",
        connection_string: &data.join("datastore.sqlite3").display().to_string(),
        extra_server_keys: "",
    })
    .replace(
        "    KeyManager \"disk\" {",
        &format!("{notifier}\n\n    KeyManager \"disk\" {{"),
    );
    let path = dir.join("server.conf");
    std::fs::write(&path, config).unwrap();
    (path, socket)
}

fn notifier_block(kubeconfig: &Path) -> String {
    format!(
        r#"    Notifier "k8sbundle" {{
        plugin_data {{
            kube_config_file_path = "{}"
            webhook_label = "{WEBHOOK_LABEL}"
            api_service_label = "{API_SERVICE_LABEL}"
        }}
    }}"#,
        kubeconfig.display()
    )
}

/// A `BundlePublisher "k8s_configmap"` block publishing to two ConfigMaps of the same API
/// server: `spire/published-spiffe` (created by the publisher) in the SPIFFE format with a
/// refresh hint, and `spire/published-pem` (created beforehand, other keys kept) as PEM.
fn publisher_block(kubeconfig: &Path) -> String {
    format!(
        r#"    BundlePublisher "k8s_configmap" {{
        plugin_data {{
            clusters = {{
                "spiffe-cluster" = {{
                    configmap_name = "published-spiffe"
                    configmap_key = "bundle.spiffe"
                    namespace = "spire"
                    kubeconfig_path = "{path}"
                    format = "spiffe"
                    refresh_hint = "2m"
                }},
                "pem-cluster" = {{
                    configmap_name = "published-pem"
                    configmap_key = "bundle.pem"
                    namespace = "spire"
                    kubeconfig_path = "{path}"
                    format = "PEM"
                }}
            }}
        }}
    }}"#,
        path = kubeconfig.display()
    )
}

/// The data of ConfigMap spire/`name` and its field managers, or why not.
fn config_map_contents(
    cluster: &KubeCluster,
    name: &str,
) -> Result<(std::collections::BTreeMap<String, String>, Vec<String>), String> {
    cluster.with(async |client| {
        let cm = Api::<ConfigMap>::namespaced(client, "spire")
            .get(name)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let managers = cm
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.manager)
            .collect();
        Ok((cm.data.unwrap_or_default(), managers))
    })
}

/// Waits until the publisher's two ConfigMaps hold what `bundle show` prints.
fn assert_publisher_wrote(cluster: &KubeCluster, server: &ServerProcess, timeout: Duration) {
    eventually("the BundlePublisher wrote the bundle", timeout, || {
        let pem = server.cli_ok(&["bundle", "show"]);
        let (data, managers) = config_map_contents(cluster, "published-pem")?;
        assert_eq!(
            data.get("other").map(String::as_str),
            Some("kept"),
            "other keys of an existing ConfigMap are left alone"
        );
        if data.get("bundle.pem") != Some(&pem) {
            return Err(format!("published-pem holds {data:?}, bundle show {pem:?}"));
        }
        assert!(
            managers
                .iter()
                .any(|m| m == "spire-bundlepublisher-k8s_configmap"),
            "{managers:?}"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
        let (data, _) = config_map_contents(cluster, "published-spiffe")?;
        let text = data
            .get("bundle.spiffe")
            .ok_or_else(|| format!("published-spiffe holds {data:?}"))?;
        let published: serde_json::Value = serde_json::from_str(text).unwrap();
        if published["keys"] != shown["keys"] {
            return Err(format!(
                "published-spiffe holds {published}, bundle show {shown}"
            ));
        }
        assert_eq!(published["spiffe_refresh_hint"], 120, "{published}");
        Ok(())
    });
}

/// `spire-server run` with `config`, which must exit; its output.
fn failed_start(dir: &Path, config: &Path) -> String {
    let mut command = Command::new(binary("spire-server"));
    command.args(["run", "-config"]).arg(config);
    run_to_failure(
        command,
        &dir.join("failed-start.log"),
        Duration::from_secs(60),
        "the server started",
    )
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(last) => assert!(
                start.elapsed() < timeout,
                "{what} within {timeout:?}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn api_services() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
        "apiservices",
    )
}

/// A ValidatingWebhookConfiguration with two webhooks, labelled for the notifier or not.
fn create_webhook(cluster: &KubeCluster, name: &str, labelled: bool) {
    let labels = if labelled {
        json!({WEBHOOK_LABEL: "true"})
    } else {
        json!({"app": "other"})
    };
    let hook = |n: &str| {
        json!({"name": format!("{n}.{name}.example.com"),
            "clientConfig": {"url": format!("https://{name}.example.com/validate")},
            "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore",
            "rules": [{"apiGroups": ["example.com"], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["widgets"]}]})
    };
    let object: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": [hook("a"), hook("b")],
    }))
    .unwrap();
    cluster.with(async |client| {
        Api::<ValidatingWebhookConfiguration>::all(client)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create webhook {name}: {e}"));
    });
}

/// A non-local APIService (backed by a Service that does not exist: the aggregator reports
/// it unavailable, which does not matter here), labelled for the notifier.
fn create_api_service(cluster: &KubeCluster, group: &str) -> String {
    let name = format!("v1alpha1.{group}");
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name, "labels": {API_SERVICE_LABEL: "true"}},
        "spec": {"group": group, "version": "v1alpha1",
            "service": {"namespace": "spire", "name": "extension", "port": 443},
            "groupPriorityMinimum": 1000, "versionPriority": 15},
    }))
    .unwrap();
    cluster.with(async |client| {
        Api::<DynamicObject>::all_with(client, &api_services())
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create APIService {name}: {e}"));
    });
    name
}

fn create_config_map(cluster: &KubeCluster) {
    cluster.create(
        "namespaces/spire/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "spire-bundle"}, "data": {"other": "kept"}}),
    );
}

/// `bundle.crt` of spire/spire-bundle, or why not.
fn config_map_bundle(cluster: &KubeCluster) -> Result<String, String> {
    cluster.with(async |client| {
        let cm = Api::<ConfigMap>::namespaced(client, "spire")
            .get("spire-bundle")
            .await
            .map_err(|e| e.to_string())?;
        let data = cm.data.unwrap_or_default();
        assert_eq!(
            data.get("other").map(String::as_str),
            Some("kept"),
            "other keys are left alone"
        );
        data.get("bundle.crt")
            .cloned()
            .ok_or_else(|| "no bundle.crt".to_owned())
    })
}

/// The `caBundle`s of a webhook configuration's webhooks, decoded.
fn webhook_ca_bundles(cluster: &KubeCluster, name: &str) -> Vec<Option<String>> {
    cluster.with(async |client| {
        let object = Api::<ValidatingWebhookConfiguration>::all(client)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get webhook {name}: {e}"));
        object
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| {
                w.client_config
                    .ca_bundle
                    .map(|b| String::from_utf8(b.0).unwrap())
            })
            .collect()
    })
}

fn api_service_ca_bundle(cluster: &KubeCluster, name: &str) -> Option<String> {
    cluster.with(async |client| {
        let object = Api::<DynamicObject>::all_with(client, &api_services())
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get APIService {name}: {e}"));
        object
            .data
            .pointer("/spec/caBundle")
            .and_then(|v| v.as_str())
            .map(|b| {
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                    .unwrap()
            })
    })
}

/// Waits until the ConfigMap, the labelled webhooks and APIServices all hold what
/// `bundle show` prints.
fn assert_published(
    cluster: &KubeCluster,
    server: &ServerProcess,
    webhooks: &[&str],
    api_services: &[&str],
    timeout: Duration,
) -> String {
    let mut expected = String::new();
    eventually("the bundle is published", timeout, || {
        expected = server.cli_ok(&["bundle", "show"]);
        let in_map = config_map_bundle(cluster)?;
        if in_map != expected {
            return Err(format!(
                "ConfigMap holds {in_map:?}, bundle show {expected:?}"
            ));
        }
        for name in webhooks {
            let bundles = webhook_ca_bundles(cluster, name);
            if bundles
                .iter()
                .any(|b| b.as_deref() != Some(expected.as_str()))
            {
                return Err(format!("webhook {name}: {bundles:?}"));
            }
        }
        for name in api_services {
            let bundle = api_service_ca_bundle(cluster, name);
            if bundle.as_deref() != Some(expected.as_str()) {
                return Err(format!("APIService {name}: {bundle:?}"));
            }
        }
        Ok(())
    });
    expected
}

fn certificates(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// The kube-apiserver serving on `port`: found by its command line, killed, and started
/// again with the same arguments (same etcd, certificates and port) when asked.
struct ApiServerRestart {
    args: Vec<String>,
    dir: PathBuf,
    restarted: Option<Child>,
}

impl ApiServerRestart {
    fn stop(port: u16, dir: &Path) -> Self {
        let flag = format!("--secure-port={port}");
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.iter().any(|a| a == &flag) && args[0].contains("kube-apiserver") {
                let pid: i32 = entry.file_name().to_string_lossy().parse().unwrap();
                assert!(
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .unwrap()
                        .success()
                );
                return Self {
                    args,
                    dir: dir.to_path_buf(),
                    restarted: None,
                };
            }
        }
        panic!("no kube-apiserver with {flag} found");
    }

    fn start(&mut self, cluster: &KubeCluster) {
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
                .unwrap()
        };
        let child = Command::new(&self.args[0])
            .args(&self.args[1..])
            .stdin(Stdio::null())
            .stdout(log("apiserver-restarted.log"))
            .stderr(log("apiserver-restarted.err"))
            .spawn()
            .unwrap();
        self.restarted = Some(child);
        eventually("the API server is back", Duration::from_secs(60), || {
            cluster.with(async |client| {
                let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
                match client.request_text(request).await {
                    Ok(text) if text == "ok" => Ok(()),
                    Ok(text) => Err(text),
                    Err(e) => Err(e.to_string()),
                }
            })
        });
    }
}

impl Drop for ApiServerRestart {
    fn drop(&mut self) {
        if let Some(child) = &mut self.restarted {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn k8sbundle_publishes_the_bundle_to_a_real_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = KubeCluster::start(&dir.path().join("k8s"));
    cluster.create(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "spire"}}),
    );
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let notifier = format!(
        "{}\n\n{}",
        notifier_block(&cluster.kubeconfig),
        publisher_block(&cluster.kubeconfig)
    );

    // No ConfigMap: the bundle cannot be published, so the server does not start (upstream's
    // advice semantics), saying which object is missing.
    let (config, _) = write_config(&server_dir, spire_e2e::free_port(), &notifier);
    let log = failed_start(&server_dir, &config);
    assert!(
        log.contains("ConfigMap spire/spire-bundle not found") && log.contains("create it"),
        "{log}"
    );
    assert!(
        !log.contains("retrying"),
        "a server that stops does not promise a retry: {log}"
    );

    // Objects that exist before the server starts.
    create_config_map(&cluster);
    cluster.create(
        "namespaces/spire/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "published-pem"}, "data": {"other": "kept"}}),
    );
    create_webhook(&cluster, "before", true);
    create_webhook(&cluster, "unlabelled", false);
    let service_before = create_api_service(&cluster, "before.example.com");

    let server = ServerProcess::start_on_free_port(&server_dir, |port| {
        write_config(&server_dir, port, &notifier)
    });
    let pem = assert_published(
        &cluster,
        &server,
        &["before"],
        &[&service_before],
        Duration::from_secs(10),
    );
    assert_eq!(certificates(&pem), 1, "{pem}");
    assert_publisher_wrote(&cluster, &server, Duration::from_secs(10));
    assert_eq!(
        webhook_ca_bundles(&cluster, "unlabelled"),
        vec![None::<String>, None],
        "an unlabelled webhook is left alone"
    );

    // Labelled objects created while the server runs get the bundle too.
    create_webhook(&cluster, "after", true);
    let service_after = create_api_service(&cluster, "after.example.com");
    let webhooks = ["before", "after"];
    let services = [service_before.as_str(), service_after.as_str()];
    assert_published(
        &cluster,
        &server,
        &webhooks,
        &services,
        Duration::from_secs(10),
    );

    // Rotation by hand: a prepared authority joins the bundle at once, a tainted and
    // revoked one leaves it.
    let prepared = server.cli_json(&["localauthority", "x509", "prepare"]);
    let next = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pem = assert_published(
        &cluster,
        &server,
        &webhooks,
        &services,
        Duration::from_secs(5),
    );
    assert_eq!(certificates(&pem), 2, "{pem}");
    assert_publisher_wrote(&cluster, &server, Duration::from_secs(10));
    let shown = server.cli_json(&["localauthority", "x509", "show"]);
    let old = shown["active"]["authority_id"].as_str().unwrap().to_owned();
    server.cli_ok(&["localauthority", "x509", "activate", "-authorityID", &next]);
    server.cli_ok(&["localauthority", "x509", "taint", "-authorityID", &old]);
    let pem = assert_published(
        &cluster,
        &server,
        &webhooks,
        &services,
        Duration::from_secs(5),
    );
    assert_eq!(
        certificates(&pem),
        2,
        "a tainted authority stays in the bundle"
    );
    server.cli_ok(&["localauthority", "x509", "revoke", "-authorityID", &old]);
    let pem = assert_published(
        &cluster,
        &server,
        &webhooks,
        &services,
        Duration::from_secs(5),
    );
    assert_eq!(certificates(&pem), 1, "{pem}");
    assert_publisher_wrote(&cluster, &server, Duration::from_secs(10));

    // The API server goes away while the bundle changes: the failure is logged, naming the
    // object, and the write is retried until the API server is back.
    let mut apiserver = ApiServerRestart::stop(cluster.port, &dir.path().join("k8s"));
    server.cli_ok(&["localauthority", "x509", "prepare"]);
    eventually("the failure is logged", Duration::from_secs(20), || {
        let log = server.log();
        if log.contains("Unable to publish the bundle; retrying")
            && log.contains("ConfigMap spire/spire-bundle")
            && log.contains("API server unreachable")
        {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    apiserver.start(&cluster);
    let pem = assert_published(
        &cluster,
        &server,
        &webhooks,
        &services,
        Duration::from_secs(40),
    );
    assert_eq!(certificates(&pem), 2, "{pem}");

    // The ConfigMap briefly missing: logged as such, and written once it is back.
    cluster.with(async |client| {
        Api::<ConfigMap>::namespaced(client, "spire")
            .delete("spire-bundle", &DeleteParams::default())
            .await
            .unwrap();
    });
    let shown = server.cli_json(&["localauthority", "x509", "show"]);
    let next = shown["prepared"]["authority_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = shown["active"]["authority_id"].as_str().unwrap().to_owned();
    server.cli_ok(&["localauthority", "x509", "activate", "-authorityID", &next]);
    server.cli_ok(&["localauthority", "x509", "taint", "-authorityID", &old]);
    server.cli_ok(&["localauthority", "x509", "revoke", "-authorityID", &old]);
    eventually(
        "the missing ConfigMap is logged",
        Duration::from_secs(10),
        || {
            if server
                .log()
                .contains("ConfigMap spire/spire-bundle not found")
            {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    create_config_map(&cluster);
    let pem = assert_published(
        &cluster,
        &server,
        &webhooks,
        &services,
        Duration::from_secs(40),
    );
    assert_eq!(certificates(&pem), 1, "{pem}");
}

#[test]
fn k8sbundle_misconfiguration_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (name, block, expected) in [
        (
            "cluster-without-kubeconfig",
            r#"    Notifier "k8sbundle" {
        plugin_data {
            clusters = [{ namespace = "spire" }]
        }
    }"#,
            "plugins.Notifier.k8sbundle.plugin_data.clusters[0].kube_config_file_path",
        ),
        (
            "unknown-key",
            r#"    Notifier "k8sbundle" {
        plugin_data {
            kube_config_file = "/etc/kubeconfig"
        }
    }"#,
            "kube_config_file",
        ),
        (
            "unreadable-kubeconfig",
            r#"    Notifier "k8sbundle" {
        plugin_data {
            kube_config_file_path = "/nonexistent/kubeconfig"
        }
    }"#,
            "/nonexistent/kubeconfig",
        ),
    ] {
        let case = dir.path().join(name);
        std::fs::create_dir_all(&case).unwrap();
        let (config, _) = write_config(&case, spire_e2e::free_port(), block);
        let log = failed_start(&case, &config);
        assert!(log.contains(expected), "{name}: {log}");
    }
}
