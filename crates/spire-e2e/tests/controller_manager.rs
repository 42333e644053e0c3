//! spire-controller-manager v0.6.3, unchanged, against our server: the manager watches
//! `ClusterSPIFFEID`, `ClusterStaticEntry` and `ClusterFederatedTrustDomain` resources (its
//! own CRDs, installed from its module) and pods in a REAL kube-apiserver, and keeps our
//! server's entries and federation relationships in line with them through the admin socket
//! (entry.v1 with paging and its feature probe, trustdomain.v1 batches).
//!
//! The manager runs outside a cluster: `KUBECONFIG` points it at the API server, and
//! `ENABLE_WEBHOOKS=false` turns off its validating webhook, which needs in-cluster
//! credentials and a Service the API server can call (neither exists here). So its svid.v1
//! and bundle.v1 calls (the webhook's certificate) are not made in this test.
//!
//! The last step is what an operator wants from all this: an agent attested with `k8s_psat`
//! on the pod's node serves a process in the pod's cgroup the X509-SVID of the entry the
//! manager created for that pod.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spire_e2e::kube::{
    CLUSTER, FakeKubelet, KubeCluster, PodCgroup, RunningContainer, container_id,
    psat_agent_config, start_psat_server,
};
use spire_e2e::{AgentProcess, ServerProcess, binary, eventually, selector_strings};

const TD: &str = "example.org";
const FEDERATED_TD: &str = "federated.test";
const NODE: &str = "node-1";
const GROUP: &str = "/apis/spire.spiffe.io/v1alpha1";

/// A path from `target/k8s-deps.env`; a missing one fails loudly, naming the script.
fn dep(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run scripts/k8s-deps.sh and source target/k8s-deps.env (the \
             test command does both)"
        )
    })
}

/// The running manager; killed on drop.
struct ControllerManager {
    child: Child,
    log_path: PathBuf,
}

impl ControllerManager {
    /// Starts the manager for [`CLUSTER`] in [`TD`] on `server`'s admin socket, with the
    /// cluster's kubeconfig, debug logs, its metrics listener off and a 2 s resync, so a
    /// server answer it disliked would show again and again in its log. Its entries get IDs
    /// `k8s.<uuid>` (`entryIDPrefix`), which it sets itself on create; entries without the
    /// prefix are not its own and left alone.
    fn start(dir: &Path, cluster: &KubeCluster, server: &ServerProcess) -> Self {
        let config = dir.join("controller-manager.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metrics:
  bindAddress: \"0\"
clusterName: {CLUSTER}
clusterDomain: cluster.local
trustDomain: {TD}
spireServerSocketPath: {socket}
ignoreNamespaces: [kube-system, kube-public, spire]
gcInterval: 2000000000
entryIDPrefix: k8s
logLevel: debug
",
                socket = server.socket_path.display()
            ),
        )
        .unwrap();
        let log_path = dir.join("controller-manager.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(dep("SPIRE_CONTROLLER_MANAGER"))
            .arg("-config")
            .arg(&config)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("ENABLE_WEBHOOKS", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn spire-controller-manager: {e}"));
        Self { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log records, as (level, fields): zap's console lines of its default development
    /// logger are `time<TAB>LEVEL<TAB>[logger<TAB>]message[<TAB>{json}]` (its `logEncoding:
    /// json` setting is overridden by the development defaults, so that is what operators
    /// see too).
    fn records(&self) -> Vec<(String, Vec<String>)> {
        self.log()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t').map(str::to_owned);
                let _time = fields.next()?;
                let level = fields.next()?;
                Some((level, fields.collect()))
            })
            .collect()
    }

    /// The log records at level `ERROR` (or worse).
    fn errors(&self) -> Vec<String> {
        self.records()
            .into_iter()
            .filter(|(level, _)| matches!(level.as_str(), "ERROR" | "DPANIC" | "PANIC" | "FATAL"))
            .map(|(level, fields)| format!("{level} {}", fields.join(" ")))
            .collect()
    }

    /// How many log records have the message `msg`.
    fn count(&self, msg: &str) -> usize {
        self.records()
            .iter()
            .filter(|(_, fields)| fields.iter().any(|f| f == msg))
            .count()
    }
}

impl Drop for ControllerManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(cluster: &KubeCluster, path: &str, body: &Value) -> Value {
    cluster
        .request(
            http::Method::POST,
            path,
            "application/json",
            body.to_string().into_bytes(),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn merge_patch(cluster: &KubeCluster, path: &str, body: &Value) -> Value {
    cluster
        .request(
            http::Method::PATCH,
            path,
            "application/merge-patch+json",
            body.to_string().into_bytes(),
        )
        .unwrap_or_else(|e| panic!("PATCH {path}: {e}"))
}

fn delete(cluster: &KubeCluster, path: &str) {
    cluster
        .request(http::Method::DELETE, path, "application/json", Vec::new())
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
}

fn get(cluster: &KubeCluster, path: &str) -> Value {
    cluster
        .request(http::Method::GET, path, "application/json", Vec::new())
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Installs the manager's CRDs, as written in its module, and waits until the API server
/// serves the three kinds.
fn install_crds(cluster: &KubeCluster) {
    let dir = dep("SPIRE_CONTROLLER_MANAGER_CRDS");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    for file in &files {
        cluster
            .request(
                http::Method::POST,
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                "application/yaml",
                std::fs::read(file).unwrap(),
            )
            .unwrap_or_else(|e| panic!("install {file:?}: {e}"));
    }
    eventually(
        "the API server serves the manager's kinds",
        Duration::from_secs(30),
        || {
            [
                "clusterspiffeids",
                "clusterstaticentries",
                "clusterfederatedtrustdomains",
            ]
            .iter()
            .all(|kind| {
                cluster
                    .request(
                        http::Method::GET,
                        &format!("{GROUP}/{kind}"),
                        "application/json",
                        Vec::new(),
                    )
                    .is_ok()
            })
        },
    );
}

/// Namespaces, service accounts, the node, the agent's pod and the workloads' pods, and an
/// Endpoints object of a Service backed by `web-0` (for `autoPopulateDNSNames`).
fn populate(cluster: &KubeCluster) {
    for (ns, env) in [("spire", "infra"), ("demo", "demo"), ("other", "other")] {
        cluster.create(
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"env": env}}}),
        );
    }
    for (ns, sa) in [
        ("spire", "spire-agent"),
        ("demo", "web"),
        ("demo", "db"),
        ("other", "web"),
    ] {
        cluster.create(
            &format!("namespaces/{ns}/serviceaccounts"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        );
    }
    cluster.create(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
    );
    for (ns, name, sa, app) in [
        ("spire", "spire-agent-0", "spire-agent", "spire-agent"),
        ("demo", "web-0", "web", "web"),
        ("demo", "web-1", "web", "web"),
        ("demo", "db-0", "db", "db"),
        ("other", "web-0", "web", "web"),
    ] {
        cluster.create(
            &format!("namespaces/{ns}/pods"),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": app}},
                "spec": {"nodeName": NODE, "serviceAccountName": sa,
                    "containers": [{"name": app, "image": "registry.example/app:1"}]}}),
        );
    }
    let web0 = cluster.pod_uid("demo", "web-0");
    cluster.create(
        "namespaces/demo/endpoints",
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web-svc"},
            "subsets": [{"addresses": [{"ip": "10.1.0.5",
                "targetRef": {"kind": "Pod", "namespace": "demo", "name": "web-0", "uid": web0}}],
                "ports": [{"port": 8443}]}]}),
    );
}

/// Our server's entries, by SPIFFE ID (`spiffe://td/path`).
fn entries(server: &ServerProcess) -> std::collections::BTreeMap<String, Value> {
    let shown = server.cli_json(&["entry", "show"]);
    shown["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let id = format!(
                "spiffe://{}{}",
                e["spiffe_id"]["trust_domain"].as_str().unwrap(),
                e["spiffe_id"]["path"].as_str().unwrap()
            );
            (id, e)
        })
        .collect()
}

fn id_of(value: &Value) -> String {
    format!(
        "spiffe://{}{}",
        value["trust_domain"].as_str().unwrap_or_default(),
        value["path"].as_str().unwrap_or_default()
    )
}

fn strings(value: &Value) -> Vec<String> {
    let mut all: Vec<String> = value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

/// The templated fields of one entry, in a form a test can compare.
fn summary(entry: &Value) -> Value {
    let mut selectors = selector_strings(&entry["selectors"]);
    selectors.sort();
    json!({
        "parent_id": id_of(&entry["parent_id"]),
        "selectors": selectors,
        "x509_svid_ttl": entry["x509_svid_ttl"],
        "jwt_svid_ttl": entry["jwt_svid_ttl"],
        "federates_with": strings(&entry["federates_with"]),
        "dns_names": strings(&entry["dns_names"]),
        "hint": entry["hint"],
        "admin": entry["admin"].as_bool().unwrap_or(false),
        "downstream": entry["downstream"].as_bool().unwrap_or(false),
        "store_svid": entry["store_svid"].as_bool().unwrap_or(false),
    })
}

#[test]
fn spire_controller_manager_reconciles_entries_and_federation_on_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = KubeCluster::start(&dir.path().join("k8s"));
    install_crds(&cluster);
    populate(&cluster);
    let node_uid = cluster.node_uid(NODE);
    let agent_id = format!("spiffe://{TD}/spire/agent/k8s_psat/{CLUSTER}/{node_uid}");
    let web_container = container_id();
    for (ns, pod, app, container) in [
        ("spire", "spire-agent-0", "spire-agent", container_id()),
        ("demo", "web-0", "web", web_container.clone()),
    ] {
        cluster.report_container(
            ns,
            pod,
            "10.1.2.3",
            &RunningContainer {
                name: app,
                container_id: &container,
                image: "registry.example/app:1",
                image_id: "registry.example/app@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
            },
        );
    }

    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = start_psat_server(&server_dir, &cluster.kubeconfig, "", "");
    // The agent of node-1, attested with the projected token of its DaemonSet pod.
    let token_path = dir.path().join("psat-token");
    std::fs::write(
        &token_path,
        cluster.pod_token("spire", "spire-agent", "spire-agent-0", "spire-server"),
    )
    .unwrap();
    let sa_token = cluster.pod_token("spire", "spire-agent", "spire-agent-0", "kubelet");
    let sa_token_path = dir.path().join("sa-token");
    std::fs::write(&sa_token_path, &sa_token).unwrap();
    let kubelet = FakeKubelet::start(&cluster, dir.path(), NODE, &sa_token);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (agent_config, agent_socket) = psat_agent_config(
        &agent_dir,
        server.port,
        &token_path,
        &kubelet,
        &sa_token_path,
        "",
        "",
    );
    let agent = AgentProcess::start_with_config(&agent_dir, &agent_config, agent_socket, None);
    assert_eq!(server.agent_ids(), std::slice::from_ref(&agent_id));

    // An entry an operator made by hand: not the manager's (no `k8s.` ID prefix), so kept.
    let by_hand = format!("spiffe://{TD}/by-hand");
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &agent_id,
        "-spiffeID",
        &by_hand,
        "-selector",
        "unix:uid:4242",
    ]);
    let by_hand_entry = entries(&server)[&by_hand].clone();

    let started = Instant::now();
    let manager = ControllerManager::start(dir.path(), &cluster, &server);

    // A federated trust domain, with the bundle to start from (any SPIFFE bundle will do:
    // our own trust domain's, in SPIFFE format).
    let bundle = server.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    let federated_endpoint = format!("https://127.0.0.1:{}", spire_e2e::free_port());
    let federated_server = format!("spiffe://{FEDERATED_TD}/spire/server");
    post(
        &cluster,
        &format!("{GROUP}/clusterfederatedtrustdomains"),
        &json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterFederatedTrustDomain",
            "metadata": {"name": "federated"},
            "spec": {"trustDomain": FEDERATED_TD, "bundleEndpointURL": federated_endpoint,
                "bundleEndpointProfile": {"type": "https_spiffe",
                    "endpointSPIFFEID": federated_server},
                "trustDomainBundle": bundle}}),
    );
    let mut relationship = Value::Null;
    eventually(
        "the federation relationship is created",
        Duration::from_secs(60),
        || {
            let listed = server.cli_json(&["federation", "list"]);
            relationship = listed["federation_relationships"]
                .as_array()
                .and_then(|all| all.first().cloned())
                .unwrap_or(Value::Null);
            !relationship.is_null()
        },
    );
    eprintln!("relationship after {:?}: {relationship}", started.elapsed());
    assert_eq!(relationship["trust_domain"], FEDERATED_TD, "{relationship}");
    assert_eq!(
        relationship["bundle_endpoint_url"], federated_endpoint,
        "{relationship}"
    );
    assert_eq!(
        relationship["https_spiffe"]["endpoint_spiffe_id"], federated_server,
        "{relationship}"
    );
    assert_eq!(
        relationship["trust_domain_bundle"]["trust_domain"], FEDERATED_TD,
        "{relationship}"
    );
    let our_bundle = server.cli_json(&["bundle", "show"]);
    assert_eq!(
        relationship["trust_domain_bundle"]["x509_authorities"], our_bundle["x509_authorities"],
        "the bundle of the resource"
    );

    // The workloads' ClusterSPIFFEID and a ClusterStaticEntry.
    post(
        &cluster,
        &format!("{GROUP}/clusterspiffeids"),
        &json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
            "metadata": {"name": "web"},
            "spec": {
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}/{{ .PodMeta.Name }}",
                "podSelector": {"matchLabels": {"app": "web"}},
                "namespaceSelector": {"matchLabels": {"env": "demo"}},
                "dnsNameTemplates": ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.example"],
                "workloadSelectorTemplates": ["k8s:ns:{{ .PodMeta.Namespace }}"],
                "ttl": "1h", "jwtTtl": "5m",
                "federatesWith": [FEDERATED_TD],
                "hint": "web",
                "autoPopulateDNSNames": true}}),
    );
    let static_id = format!("spiffe://{TD}/static/db-admin");
    post(
        &cluster,
        &format!("{GROUP}/clusterstaticentries"),
        &json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterStaticEntry",
            "metadata": {"name": "db-admin"},
            "spec": {"spiffeID": static_id, "parentID": agent_id,
                "selectors": ["unix:uid:1000", "unix:gid:1000"],
                "federatesWith": [FEDERATED_TD],
                "x509SVIDTTL": "30m", "jwtSVIDTTL": "2m",
                "dnsNames": ["db-admin.example"], "hint": "db",
                "admin": true, "storeSVID": true}}),
    );

    let web0_id = format!("spiffe://{TD}/ns/demo/sa/web/web-0");
    let web1_id = format!("spiffe://{TD}/ns/demo/sa/web/web-1");
    let web0_uid = cluster.pod_uid("demo", "web-0");
    let web1_uid = cluster.pod_uid("demo", "web-1");
    let expected_web = |uid: &str, dns: &[&str], hint: &str, ttl: i64| {
        let mut dns: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
        dns.sort();
        json!({
            "parent_id": agent_id,
            "selectors": ["k8s:ns:demo", format!("k8s:pod-uid:{uid}")],
            "x509_svid_ttl": ttl, "jwt_svid_ttl": 300,
            "federates_with": [FEDERATED_TD],
            "dns_names": dns,
            "hint": hint, "admin": false, "downstream": false, "store_svid": false,
        })
    };
    let expected = std::collections::BTreeMap::from([
        (
            web0_id.clone(),
            expected_web(
                &web0_uid,
                &[
                    "web-0.demo.example",
                    "web-svc",
                    "web-svc.demo",
                    "web-svc.demo.svc",
                    "web-svc.demo.svc.cluster.local",
                ],
                "web",
                3600,
            ),
        ),
        (
            web1_id.clone(),
            expected_web(&web1_uid, &["web-1.demo.example"], "web", 3600),
        ),
        (
            static_id.clone(),
            json!({
                "parent_id": agent_id,
                "selectors": ["unix:gid:1000", "unix:uid:1000"],
                "x509_svid_ttl": 1800, "jwt_svid_ttl": 120,
                "federates_with": [FEDERATED_TD],
                "dns_names": ["db-admin.example"],
                "hint": "db", "admin": true, "downstream": false, "store_svid": true,
            }),
        ),
    ]);
    // The manager's entries (the hand-made one is checked apart).
    let summaries = |server: &ServerProcess| -> std::collections::BTreeMap<String, Value> {
        entries(server)
            .iter()
            .filter(|(id, _)| **id != by_hand)
            .map(|(id, e)| (id.clone(), summary(e)))
            .collect()
    };
    let wait_for_entries = |what: &str, expected: &std::collections::BTreeMap<String, Value>| {
        let start = Instant::now();
        loop {
            let seen = summaries(&server);
            if &seen == expected {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what} within 60 s: saw {seen:#?}\nwanted {expected:#?}\nmanager log:\n{}",
                manager.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait_for_entries("the manager creates the three entries", &expected);
    eprintln!("entries after {:?}", started.elapsed());

    // Nothing failed, and after several resyncs (every 2 s) nothing was touched again: the
    // manager found our entries as it left them.
    let first_ids: Vec<String> = entries(&server)
        .values()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &first_ids {
        assert!(
            id.starts_with("k8s.") || *id == by_hand_entry["id"],
            "the manager's own entry IDs: {first_ids:?}"
        );
    }
    let statuses_settled =
        |name: &str| get(&cluster, &format!("{GROUP}/clusterspiffeids/{name}"))["status"].clone();
    eventually(
        "the ClusterSPIFFEID's status counts its two entries",
        Duration::from_secs(30),
        || statuses_settled("web")["stats"]["entriesToSet"] == 2,
    );
    let stats = statuses_settled("web")["stats"].clone();
    assert_eq!(
        stats,
        json!({"namespacesSelected": 1, "namespacesIgnored": 0, "podsSelected": 2,
            "podEntryRenderFailures": 0, "entriesMasked": 0, "entriesToSet": 2,
            "entryFailures": 0}),
        "{stats}"
    );
    // `set` is true only in the status of the pass that created the entry (v0.6.3 starts
    // each pass from an empty status and sets it only on a successful create), so the next
    // resync turns it back to false whatever the server: not a failure.
    let status = get(&cluster, &format!("{GROUP}/clusterstaticentries/db-admin"))["status"].clone();
    assert_eq!(status["rendered"], true, "{status}");
    assert_eq!(status["masked"], false, "{status}");
    let (created, updated) = (
        manager.count("Created entry"),
        manager.count("Updated entry"),
    );
    assert_eq!(
        (created, updated),
        (3, 0),
        "three entries created, none updated:\n{}",
        manager.log()
    );
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        (
            manager.count("Created entry"),
            manager.count("Updated entry")
        ),
        (created, updated),
        "entries flapping:\n{}",
        manager.log()
    );
    let ids_now: Vec<String> = entries(&server)
        .values()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_now, first_ids);
    assert!(
        manager.errors().is_empty(),
        "the manager logged errors:\n{}",
        manager.errors().join("\n")
    );

    // Done when: the agent of node-1 serves web-0's process the SVID of its entry, with the
    // DNS names the manager templated.
    let cgroup = PodCgroup::create(&web0_uid, &web_container);
    let svid_dir = dir.path().join("svid");
    std::fs::create_dir_all(&svid_dir).unwrap();
    let socket_arg = agent.socket_path.display().to_string();
    let svid_dir_arg = svid_dir.display().to_string();
    let mut served = String::new();
    eventually(
        "the workload in web-0 gets the SVID of its entry",
        Duration::from_secs(60),
        || {
            let out = cgroup
                .command(
                    &binary("spire-agent"),
                    &[
                        "api",
                        "fetch",
                        "x509",
                        "-socketPath",
                        &socket_arg,
                        "-timeout",
                        "10s",
                        "-write",
                        &svid_dir_arg,
                    ],
                )
                .output()
                .unwrap();
            served = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            out.status.success() && served.contains(&web0_id)
        },
    );
    assert!(!served.contains(&web1_id), "{served}");
    let sans = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(svid_dir.join("svid.0.pem"))
        .output()
        .expect("openssl runs");
    let sans = String::from_utf8_lossy(&sans.stdout).into_owned();
    for name in ["web-0.demo.example", "web-svc.demo.svc.cluster.local"] {
        assert!(sans.contains(&format!("DNS:{name}")), "{sans}");
    }
    assert!(sans.contains(&format!("URI:{web0_id}")), "{sans}");
    // With the entry's hint, and the federated trust domain's bundle (federatesWith).
    assert!(served.contains("Hint:\t\t\tweb\n"), "{served}");
    assert!(
        served.contains(&format!("[spiffe://{FEDERATED_TD}] CA #1")),
        "{served}"
    );
    assert!(svid_dir.join("federated_bundle.0.0.pem").exists());

    // An edited template reconciles: the same entries, updated in place.
    merge_patch(
        &cluster,
        &format!("{GROUP}/clusterspiffeids/web"),
        &json!({"spec": {"hint": "web-v2", "ttl": "2h"}}),
    );
    let mut expected = expected;
    for id in [&web0_id, &web1_id] {
        let e = expected.get_mut(id).unwrap();
        e["hint"] = json!("web-v2");
        e["x509_svid_ttl"] = json!(7200);
    }
    wait_for_entries("the entries follow the edited template", &expected);
    let ids_now: Vec<String> = entries(&server)
        .values()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_now, first_ids, "updated, not replaced");

    // A deleted pod loses its entry.
    cluster.delete_pod("demo", "web-1");
    expected.remove(&web1_id);
    wait_for_entries("web-1's entry is removed", &expected);
    eventually(
        "the ClusterSPIFFEID's status counts one pod",
        Duration::from_secs(30),
        || statuses_settled("web")["stats"]["podsSelected"] == 1,
    );
    assert_eq!(statuses_settled("web")["stats"]["entryFailures"], 0);

    // Deleted resources take their entries and relationship with them.
    delete(&cluster, &format!("{GROUP}/clusterstaticentries/db-admin"));
    expected.remove(&static_id);
    wait_for_entries("the static entry is removed", &expected);
    delete(&cluster, &format!("{GROUP}/clusterspiffeids/web"));
    eventually(
        "the ClusterSPIFFEID's entries are removed",
        Duration::from_secs(60),
        || summaries(&server).is_empty(),
    );
    assert_eq!(
        entries(&server).into_values().collect::<Vec<_>>(),
        vec![by_hand_entry],
        "the hand-made entry stays, untouched"
    );
    delete(
        &cluster,
        &format!("{GROUP}/clusterfederatedtrustdomains/federated"),
    );
    eventually(
        "the federation relationship is removed",
        Duration::from_secs(60),
        || {
            server.cli_json(&["federation", "list"])["federation_relationships"]
                .as_array()
                .is_none_or(Vec::is_empty)
        },
    );
    assert!(
        manager.errors().is_empty(),
        "the manager logged errors:\n{}",
        manager.errors().join("\n")
    );
    assert_eq!(
        (
            manager.count("Updated entry"),
            manager.count("Deleted entry"),
            manager.count("Created federation relationship"),
            manager.count("Deleted federation relationship"),
        ),
        (2, 3, 1, 1),
        "{}",
        manager.log()
    );
    eprintln!("whole loop in {:?}", started.elapsed());
    drop(cgroup);
}
