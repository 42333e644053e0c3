//! The Kubernetes manifests in `deploy/kubernetes/` and the `Dockerfile`, checked as far as
//! this machine can without a container runtime:
//!
//! - a real kube-apiserver (v1.37.2 with etcd, as `tests/k8s.rs`) accepts every document in a
//!   server-side dry-run apply with strict field validation, then a real apply in file order
//!   (what `kubectl apply -f deploy/kubernetes/` does), after which its RBAC authorizer gives
//!   the server's, the controller manager's and the agent's service accounts exactly the
//!   access they use;
//! - the `server.conf` and `agent.conf` inside the ConfigMaps pass our own
//!   `spire-server validate` / `spire-agent validate`, and the pods agree with them: the
//!   config file is mounted where `-config` points, data on the volume, the admin socket on
//!   the volume the controller manager reads, probes on the health listener, the trust
//!   bundle where the notifier writes it, the projected token where `k8s_psat` reads it, one
//!   cluster name and trust domain everywhere;
//! - the Dockerfile's targets put the binaries and entrypoints where the manifests expect
//!   them, and the images the manifests name are the ones the docs tell you to build.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spire_e2e::binary;
use spire_e2e::kube::KubeCluster;

const FIELD_MANAGER: &str = "spire-rs-deploy-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// One YAML document of a manifest file.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

/// Every document of `deploy/kubernetes/*.yaml`, in file-name order (`kubectl apply -f`'s).
fn manifests() -> Vec<Doc> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        // Documents are separated by `---` lines (none of ours has one inside a string).
        let mut chunks = vec![String::new()];
        for line in text.lines() {
            if line.trim_end() == "---" {
                chunks.push(String::new());
            } else {
                let chunk = chunks.last_mut().unwrap();
                chunk.push_str(line);
                chunk.push('\n');
            }
        }
        for chunk in chunks {
            let value: Value =
                serde_norway::from_str(&chunk).unwrap_or_else(|e| panic!("{file}: {e}"));
            if value.is_null() {
                continue;
            }
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Value {
    &docs
        .iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes/"))
        .value
}

/// The API path of an object: (collection, object).
fn api_paths(doc: &Doc) -> (String, String) {
    let api_version = doc.value["apiVersion"].as_str().unwrap();
    let (plural, namespaced) = match doc.kind() {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "Service" => ("services", true),
        "StatefulSet" => ("statefulsets", true),
        "DaemonSet" => ("daemonsets", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ValidatingWebhookConfiguration" => ("validatingwebhookconfigurations", false),
        other => panic!("{}: kind {other} is not known to this test", doc.file),
    };
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let collection = if namespaced {
        let ns = doc.namespace().unwrap_or_else(|| {
            panic!(
                "{}: {} {} has no namespace: `kubectl apply` would put it in the current one",
                doc.file,
                doc.kind(),
                doc.name()
            )
        });
        format!("{prefix}/namespaces/{ns}/{plural}")
    } else {
        assert!(
            doc.namespace().is_none(),
            "{}: cluster-scoped {} {} has a namespace",
            doc.file,
            doc.kind(),
            doc.name()
        );
        format!("{prefix}/{plural}")
    };
    let object = format!("{collection}/{}", doc.name());
    (collection, object)
}

/// `method path` with a JSON-or-YAML body on the admin client; the API server's answer or
/// its refusal as text.
fn request(
    cluster: &KubeCluster,
    method: http::Method,
    path: &str,
    content_type: &str,
    body: String,
) -> Result<Value, String> {
    cluster.with(async |client| {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body.into_bytes())
            .unwrap();
        match client.request_text(request).await {
            Ok(text) => Ok(serde_json::from_str(&text).unwrap()),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// A server-side apply of `doc` (JSON is YAML, so the apply-patch+yaml body is the
/// document as parsed), dry-run or real, with unknown or duplicate fields refused.
fn apply(cluster: &KubeCluster, doc: &Doc, dry_run: bool) -> Result<Value, String> {
    let (_, object) = api_paths(doc);
    let mut path = format!("{object}?fieldManager={FIELD_MANAGER}&fieldValidation=Strict");
    if dry_run {
        path.push_str("&dryRun=All");
    }
    request(
        cluster,
        http::Method::PATCH,
        &path,
        "application/apply-patch+yaml",
        doc.value.to_string(),
    )
}

/// Whether the RBAC authorizer lets `user` do `attributes` (a SubjectAccessReview's
/// resourceAttributes), waiting up to 10 s for it to see freshly applied bindings.
fn allowed(cluster: &KubeCluster, user: &str, attributes: Value, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "resourceAttributes": attributes},
        });
        let answer = request(
            cluster,
            http::Method::POST,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            "application/json",
            review.to_string(),
        )
        .unwrap_or_else(|e| panic!("SubjectAccessReview: {e}"));
        let is_allowed = answer["status"]["allowed"].as_bool() == Some(true);
        if is_allowed == want || Instant::now() > deadline {
            return is_allowed;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_manifest_is_accepted_by_a_real_api_server_and_grants_what_spire_uses() {
    let docs = manifests();
    let dir = tempfile::tempdir().unwrap();
    let cluster = KubeCluster::start(&dir.path().join("k8s"));

    // Nothing namespaced can be applied, even dry-run, before its namespace exists.
    let namespaces: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Namespace").collect();
    assert_eq!(
        namespaces.iter().map(|d| d.name()).collect::<Vec<_>>(),
        ["spire"],
        "one namespace, spire"
    );
    assert_eq!(namespaces[0].file, "00-namespace.yaml", "applied first");
    apply(&cluster, namespaces[0], false).unwrap_or_else(|e| panic!("namespace spire: {e}"));

    for doc in &docs {
        let answer = apply(&cluster, doc, true).unwrap_or_else(|e| {
            panic!(
                "{}: {} {} refused by a dry-run apply: {e}",
                doc.file,
                doc.kind(),
                doc.name()
            )
        });
        assert_eq!(answer["kind"], doc.value["kind"], "{}", doc.file);
        assert_eq!(answer["metadata"]["name"], doc.name(), "{}", doc.file);
    }

    // What `kubectl apply -f deploy/kubernetes/` does: every file in order, for real.
    for doc in &docs {
        apply(&cluster, doc, false)
            .unwrap_or_else(|e| panic!("{}: {} {} refused: {e}", doc.file, doc.kind(), doc.name()));
    }
    let bundle = request(
        &cluster,
        http::Method::GET,
        "/api/v1/namespaces/spire/configmaps/spire-bundle",
        "application/json",
        String::new(),
    )
    .unwrap();
    assert!(
        bundle["data"].is_null(),
        "spire-bundle starts empty, for the notifier to fill: {bundle}"
    );

    let server = "system:serviceaccount:spire:spire-server";
    let agent = "system:serviceaccount:spire:spire-agent";
    let may = |user: &str, attributes: Value| {
        assert!(
            allowed(&cluster, user, attributes.clone(), true),
            "{user} may not {attributes}"
        );
    };
    let may_not = |user: &str, attributes: Value| {
        assert!(
            !allowed(&cluster, user, attributes.clone(), false),
            "{user} may {attributes}"
        );
    };

    // k8s_psat on the server: the agent's token reviewed, its pod and node read.
    may(
        server,
        json!({"group": "authentication.k8s.io", "resource": "tokenreviews", "verb": "create"}),
    );
    may(
        server,
        json!({"resource": "pods", "verb": "get", "namespace": "spire", "name": "spire-agent-x"}),
    );
    may(
        server,
        json!({"resource": "nodes", "verb": "get", "name": "node-1"}),
    );
    // Notifier "k8sbundle": the spire-bundle ConfigMap, and labelled webhooks.
    for verb in ["get", "patch"] {
        may(
            server,
            json!({"resource": "configmaps", "verb": verb, "namespace": "spire",
                "name": "spire-bundle"}),
        );
    }
    for resource in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ] {
        for verb in ["get", "list", "patch", "watch"] {
            may(
                server,
                json!({"group": "admissionregistration.k8s.io", "resource": resource,
                    "verb": verb}),
            );
        }
    }
    may_not(
        server,
        json!({"resource": "configmaps", "verb": "patch", "namespace": "kube-system",
            "name": "spire-bundle"}),
    );
    may_not(
        server,
        json!({"resource": "secrets", "verb": "get", "namespace": "spire"}),
    );
    // spire-controller-manager, on the server pod's account.
    for resource in [
        "clusterspiffeids",
        "clusterstaticentries",
        "clusterfederatedtrustdomains",
    ] {
        for verb in ["list", "watch", "update", "patch"] {
            may(
                server,
                json!({"group": "spire.spiffe.io", "resource": resource, "verb": verb}),
            );
        }
        may(
            server,
            json!({"group": "spire.spiffe.io", "resource": resource, "subresource": "status",
                "verb": "update"}),
        );
        may(
            server,
            json!({"group": "spire.spiffe.io", "resource": resource,
                "subresource": "finalizers", "verb": "update"}),
        );
    }
    for resource in ["pods", "namespaces", "nodes", "endpoints"] {
        may(server, json!({"resource": resource, "verb": "watch"}));
    }
    for verb in ["get", "create", "update"] {
        may(
            server,
            json!({"group": "coordination.k8s.io", "resource": "leases", "verb": verb,
                "namespace": "spire"}),
        );
    }
    may(
        server,
        json!({"resource": "events", "verb": "create", "namespace": "spire"}),
    );
    // The agent: the kubelet's pod list (nodes/proxy), and nothing of the server's.
    may(
        agent,
        json!({"resource": "nodes", "subresource": "proxy", "verb": "get", "name": "node-1"}),
    );
    may(
        agent,
        json!({"resource": "pods", "verb": "get", "namespace": "demo", "name": "web-0"}),
    );
    may_not(
        agent,
        json!({"group": "authentication.k8s.io", "resource": "tokenreviews", "verb": "create"}),
    );
    may_not(
        agent,
        json!({"resource": "configmaps", "verb": "patch", "namespace": "spire",
            "name": "spire-bundle"}),
    );
    may_not(agent, json!({"resource": "pods", "verb": "list"}));
}

/// A ConfigMap's `data[key]`.
fn config_map_data<'a>(docs: &'a [Doc], name: &str, key: &str) -> &'a str {
    find(docs, "ConfigMap", name)["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no data key {key}"))
}

/// `<binary> validate -config <file>` on `config` written to a temporary file: its output.
fn validate(binary_name: &str, config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.conf");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(binary(binary_name))
        .arg("validate")
        .arg("-config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn agent_bundle_path(agent_conf: &str) -> String {
    hcl(agent_conf)["agent"]["trust_bundle_path"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn hcl(text: &str) -> Value {
    hcl::from_str(text).unwrap_or_else(|e| panic!("HCL: {e}"))
}

/// The one block `name "label" { ... }` of `plugins` (HCL's JSON form nests labels).
fn plugin_data<'a>(config: &'a Value, kind: &str, name: &str) -> &'a Value {
    let block = &config["plugins"][kind][name];
    assert!(!block.is_null(), "no {kind} \"{name}\" in the config");
    &block["plugin_data"]
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume of `workload` mounted in `container` at the longest mount path holding
/// `path`, and `path` relative to that mount.
fn volume_for<'a>(workload: &'a Value, container: &Value, path: &str) -> (&'a Value, String) {
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap();
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("{path} is on no volume of container {}", container["name"]));
    let at = mount["mountPath"].as_str().unwrap();
    let rest = path[at.len()..].trim_start_matches('/');
    let rest = match mount["subPath"].as_str() {
        Some(sub) if rest.is_empty() => sub.to_owned(),
        Some(sub) => format!("{sub}/{rest}"),
        None => rest.to_owned(),
    };
    let name = &mount["name"];
    let spec = &workload["spec"];
    let volume = spec["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            spec["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .find(|v| v["name"] == *name || v["metadata"]["name"] == *name)
        .unwrap_or_else(|| panic!("volume {name} is mounted but not declared"));
    (volume, rest)
}

fn parent(path: &str) -> &str {
    Path::new(path).parent().unwrap().to_str().unwrap()
}

#[test]
fn the_embedded_configs_are_valid_for_our_binaries_and_agree_with_the_pods() {
    let docs = manifests();
    let server_conf = config_map_data(&docs, "spire-server", "server.conf");
    let agent_conf = config_map_data(&docs, "spire-agent", "agent.conf");

    // Our binaries accept both files as they are. `validate` reads and checks the file
    // only: the /run/spire paths inside need not exist (they do not on a test machine),
    // and it creates none of them.
    let run_spire_absent = !Path::new("/run/spire").exists();
    let (ok, output) = validate("spire-server", server_conf);
    assert!(
        ok,
        "spire-server validate refused deploy/kubernetes/13-server-configmap.yaml's \
         server.conf:\n{output}"
    );
    assert!(
        output.contains("SPIRE server configuration file is valid."),
        "{output}"
    );
    // As upstream's, `spire-agent validate` does not read the trust_bundle_path file, which
    // the k8sbundle notifier writes only once the server runs.
    assert!(
        !Path::new(&agent_bundle_path(agent_conf)).exists(),
        "the test expects the bundle file not to exist here"
    );
    let (ok, output) = validate("spire-agent", agent_conf);
    assert!(ok, "spire-agent validate refused agent.conf:\n{output}");
    assert!(
        output.contains("SPIRE agent configuration file is valid."),
        "{output}"
    );
    if run_spire_absent {
        assert!(
            !Path::new("/run/spire").exists(),
            "validate created /run/spire"
        );
    }

    let server = hcl(server_conf);
    let agent = hcl(agent_conf);
    let cm_config: Value = serde_norway::from_str(config_map_data(
        &docs,
        "spire-controller-manager-config",
        "controller-manager-config.yaml",
    ))
    .unwrap();
    let statefulset = find(&docs, "StatefulSet", "spire-server");
    let daemonset = find(&docs, "DaemonSet", "spire-agent");
    let pod = &statefulset["spec"]["template"]["spec"];
    let agent_pod = &daemonset["spec"]["template"]["spec"];
    let server_container = container(statefulset, "spire-server");
    let cm_container = container(statefulset, "spire-controller-manager");
    let agent_container = container(daemonset, "spire-agent");

    // One trust domain and one cluster name for the server, the agents and the controller
    // manager (its entries' parent IDs name the cluster).
    let td = server["server"]["trust_domain"].as_str().unwrap();
    assert_eq!(agent["agent"]["trust_domain"], td);
    assert_eq!(cm_config["trustDomain"], td);
    let psat = plugin_data(&server, "NodeAttestor", "k8s_psat");
    let cluster = plugin_data(&agent, "NodeAttestor", "k8s_psat")["cluster"]
        .as_str()
        .unwrap();
    let clusters = psat["clusters"].as_object().unwrap();
    assert!(
        clusters.contains_key(cluster),
        "the agents' cluster {cluster} is not one of the server's: {clusters:?}"
    );
    assert_eq!(cm_config["clusterName"], cluster);
    // The agent pods' service account is on the allow list, and their token is for the
    // server's audience (its default, spire-server).
    let agent_sa = format!(
        "{}:{}",
        daemonset["metadata"]["namespace"].as_str().unwrap(),
        agent_pod["serviceAccountName"].as_str().unwrap()
    );
    let allow_list = &clusters[cluster]["service_account_allow_list"];
    assert!(
        allow_list
            .as_array()
            .unwrap()
            .iter()
            .any(|s| *s == agent_sa),
        "{agent_sa} is not in {allow_list}"
    );
    assert!(clusters[cluster].get("audience").is_none());
    let token_path = plugin_data(&agent, "NodeAttestor", "k8s_psat")["token_path"]
        .as_str()
        .unwrap_or("/var/run/secrets/tokens/spire-agent");
    let (volume, file) = volume_for(daemonset, agent_container, token_path);
    let sources = volume["projected"]["sources"].as_array().unwrap();
    let token = sources
        .iter()
        .map(|s| &s["serviceAccountToken"])
        .find(|t| t["path"] == file.as_str())
        .unwrap_or_else(|| panic!("no projected token at {token_path}"));
    assert_eq!(token["audience"], "spire-server");

    // Each binary is told to read the file its ConfigMap holds.
    for (workload, container, config_map, key) in [
        (statefulset, server_container, "spire-server", "server.conf"),
        (daemonset, agent_container, "spire-agent", "agent.conf"),
    ] {
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args.len(), 2, "{args:?}");
        assert_eq!(args[0], "-config");
        let (volume, file) = volume_for(workload, container, args[1]);
        assert_eq!(volume["configMap"]["name"], config_map);
        assert_eq!(file, key);
    }
    let cm_args = cm_container["args"].as_array().unwrap();
    let cm_config_path = cm_args
        .iter()
        .find_map(|a| a.as_str().unwrap().strip_prefix("--config="))
        .unwrap();
    let (volume, file) = volume_for(statefulset, cm_container, cm_config_path);
    assert_eq!(
        volume["configMap"]["name"],
        "spire-controller-manager-config"
    );
    assert_eq!(file, "controller-manager-config.yaml");
    assert_eq!(
        cm_container["image"], "ghcr.io/spiffe/spire-controller-manager:0.6.3",
        "the controller manager release the docs name"
    );

    // The server's state is on its PersistentVolumeClaim, not in the container.
    let sql = plugin_data(&server, "DataStore", "sql");
    assert_eq!(sql["database_type"], "sqlite3");
    for path in [
        server["server"]["data_dir"].as_str().unwrap(),
        sql["connection_string"].as_str().unwrap(),
        plugin_data(&server, "KeyManager", "disk")["keys_path"]
            .as_str()
            .unwrap(),
    ] {
        let (volume, _) = volume_for(statefulset, server_container, path);
        assert_eq!(
            volume["spec"]["accessModes"][0], "ReadWriteOnce",
            "{path} is not on the claim"
        );
    }
    // The controller manager reaches the admin socket on the volume both mount.
    let socket = server["server"]["socket_path"].as_str().unwrap();
    let (volume, file) = volume_for(statefulset, server_container, socket);
    assert!(volume["emptyDir"].is_object(), "{volume}");
    let cm_socket = cm_config["spireServerSocketPath"].as_str().unwrap();
    let (cm_volume, cm_file) = volume_for(statefulset, cm_container, cm_socket);
    assert_eq!(cm_volume["name"], volume["name"]);
    assert_eq!(cm_file, file);
    // ... as the socket's owner: it is 0770 and the server's image user is 1000.
    assert_eq!(pod["securityContext"]["runAsUser"], 1000);
    assert_eq!(pod["securityContext"]["fsGroup"], 1000);
    assert!(cm_container["securityContext"]["runAsUser"].is_null());

    // Probes on each health listener, which must listen beyond loopback for the kubelet.
    for (config, container) in [(&server, server_container), (&agent, agent_container)] {
        let health = &config["health_checks"];
        assert_eq!(health["listener_enabled"], true);
        assert_eq!(health["bind_address"], "0.0.0.0");
        let port: u64 = health["bind_port"].as_str().unwrap().parse().unwrap();
        for (probe, path) in [
            ("livenessProbe", "live_path"),
            ("readinessProbe", "ready_path"),
        ] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["port"], port, "{probe} of {}", container["name"]);
            assert_eq!(
                get["path"], health[path],
                "{probe} of {}",
                container["name"]
            );
        }
    }

    // Agents find the server through the Service, on the port the server listens on.
    let service = find(&docs, "Service", "spire-server");
    assert_eq!(agent["agent"]["server_address"], "spire-server");
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        port["port"].as_u64().unwrap().to_string(),
        agent["agent"]["server_port"].as_str().unwrap()
    );
    assert_eq!(
        port["targetPort"].as_u64().unwrap().to_string(),
        server["server"]["bind_port"].as_str().unwrap()
    );
    assert_eq!(
        service["spec"]["selector"],
        statefulset["spec"]["template"]["metadata"]["labels"]
    );

    // The notifier writes the ConfigMap and key the agents read their trust bundle from.
    let notifier = plugin_data(&server, "Notifier", "k8sbundle");
    assert_eq!(notifier["namespace"], "spire");
    let bundle_map = notifier["config_map"].as_str().unwrap();
    assert!(find(&docs, "ConfigMap", bundle_map)["data"].is_null());
    let (volume, file) = volume_for(
        daemonset,
        agent_container,
        agent["agent"]["trust_bundle_path"].as_str().unwrap(),
    );
    assert_eq!(volume["configMap"]["name"], bundle_map);
    assert_eq!(file, notifier["config_map_key"].as_str().unwrap());

    // Workloads on the node reach the Workload API socket on a hostPath; the k8s attestor
    // sees their processes (hostPID) and finds the kubelet through its node name variable.
    let (volume, _) = volume_for(
        daemonset,
        agent_container,
        parent(agent["agent"]["socket_path"].as_str().unwrap()),
    );
    assert!(volume["hostPath"]["path"].is_string(), "{volume}");
    assert_eq!(agent_pod["hostPID"], true);
    let env_name = plugin_data(&agent, "WorkloadAttestor", "k8s")["node_name_env"]
        .as_str()
        .unwrap();
    assert!(
        agent_container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == env_name),
        "{env_name} is not set in the agent container"
    );

    // The controller manager's webhook: the configuration it patches exists, and its Service
    // reaches the container's webhook port.
    let webhook_name = cm_config["validatingWebhookConfigurationName"]
        .as_str()
        .unwrap();
    let webhook = find(&docs, "ValidatingWebhookConfiguration", webhook_name);
    for hook in webhook["webhooks"].as_array().unwrap() {
        let svc = &hook["clientConfig"]["service"];
        let service = find(&docs, "Service", svc["name"].as_str().unwrap());
        assert_eq!(service["metadata"]["namespace"], svc["namespace"]);
        assert_eq!(
            service["spec"]["selector"],
            statefulset["spec"]["template"]["metadata"]["labels"]
        );
        let target = &service["spec"]["ports"][0]["targetPort"];
        assert!(
            cm_container["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["containerPort"] == *target),
            "webhook Service targets {target}, not a controller manager port"
        );
    }
    // Its ignoreNamespaces are regular expressions matched anywhere in a name: SPIRE's own
    // namespace and the system ones are skipped, workloads' namespaces are not.
    let ignored: Vec<regex::Regex> = cm_config["ignoreNamespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| regex::Regex::new(r.as_str().unwrap()).unwrap())
        .collect();
    let is_ignored = |ns: &str| ignored.iter().any(|r| r.is_match(ns));
    for ns in ["spire", "kube-system", "kube-public"] {
        assert!(is_ignored(ns), "{ns} is not ignored");
    }
    for ns in ["default", "spire-demo", "myspire", "kube-systems"] {
        assert!(!is_ignored(ns), "workload namespace {ns} is ignored");
    }
}

/// A Dockerfile stage: its base and its instructions (continuation lines joined).
#[derive(Debug, Default)]
struct Stage {
    from: String,
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> BTreeMap<String, Stage> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        lines.push(std::mem::take(&mut current));
    }
    let mut stages = BTreeMap::new();
    let mut name = String::new();
    for line in lines {
        let (instruction, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let instruction = instruction.to_uppercase();
        if instruction == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let base = words[0].to_owned();
            name = match words.as_slice() {
                [_, as_, n] if as_.eq_ignore_ascii_case("as") => (*n).to_owned(),
                _ => panic!("every stage is named: FROM {rest}"),
            };
            stages.insert(
                name.clone(),
                Stage {
                    from: base,
                    instructions: Vec::new(),
                },
            );
        } else if !name.is_empty() {
            stages
                .get_mut(&name)
                .unwrap()
                .instructions
                .push((instruction, rest.trim().to_owned()));
        }
    }
    stages
}

impl Stage {
    fn all(&self, instruction: &str) -> impl Iterator<Item = &str> {
        self.instructions
            .iter()
            .filter(move |(i, _)| i == instruction)
            .map(|(_, rest)| rest.as_str())
    }
    fn last(&self, instruction: &str) -> Option<&str> {
        self.all(instruction).last()
    }
}

/// `instruction`'s last value in `target` or, failing that, in the stages it is built on.
fn inherited<'a>(
    stages: &'a BTreeMap<String, Stage>,
    target: &str,
    instruction: &str,
) -> Option<&'a str> {
    let stage = stages.get(target)?;
    stage
        .last(instruction)
        .or_else(|| inherited(stages, &stage.from, instruction))
}

fn workspace_version() -> String {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    workspace_package_value(&text, "version")
        .as_str()
        .unwrap()
        .to_owned()
}

/// The first `key = "value"` of `[workspace.package]` (no TOML parser in the test's
/// dependencies; the section is flat).
fn workspace_package_value(text: &str, key: &str) -> Value {
    let section = text
        .split("[workspace.package]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    section
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| Value::String(v.trim().trim_matches('"').to_owned()))
        })
        .unwrap_or_else(|| panic!("no {key} in [workspace.package]"))
}

#[test]
fn the_dockerfile_builds_the_images_the_manifests_run() {
    let stages = dockerfile_stages();
    let version = workspace_version();

    // The builder: a pinned Rust on Debian bookworm, no older than the workspace's
    // rust-version, building every binary from the locked dependency set.
    let builder = &stages["builder"];
    let rust = builder
        .from
        .strip_prefix("rust:")
        .and_then(|v| v.strip_suffix("-bookworm"))
        .unwrap_or_else(|| panic!("builder is not rust:<version>-bookworm: {}", builder.from));
    let parts: Vec<u32> = rust.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(
        parts.len(),
        3,
        "rust:{rust} is not pinned to a patch release"
    );
    let rust_version = workspace_package_value(
        &std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap(),
        "rust-version",
    );
    let minimum: Vec<u32> = rust_version
        .as_str()
        .unwrap()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        parts[..minimum.len()] >= minimum[..],
        "rust:{rust} is older than rust-version {rust_version}"
    );
    let build = builder.all("RUN").collect::<Vec<_>>().join(" ");
    assert!(
        build.contains("cargo build --release --locked --bins"),
        "{build}"
    );

    for (target, binary_name, uid) in [
        ("spire-server", "spire-server", "1000"),
        ("spire-agent", "spire-agent", "0"),
    ] {
        let stage = stages
            .get(target)
            .unwrap_or_else(|| panic!("no --target {target}"));
        let path = format!("/opt/spire/bin/{binary_name}");
        assert_eq!(
            stage.last("ENTRYPOINT"),
            Some(format!(r#"["{path}", "run"]"#).as_str()),
            "{target}"
        );
        assert_eq!(
            inherited(&stages, target, "WORKDIR"),
            Some("/opt/spire"),
            "{target}"
        );
        let copy = stage
            .all("COPY")
            .find(|c| c.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{target} copies nothing to {path}"));
        assert!(copy.contains("--from=builder"), "{copy}");
        // What it copies is what the builder produced.
        let source = copy.split_whitespace().rev().nth(1).unwrap();
        assert!(
            build.contains(&format!("target/release/{binary_name}"))
                && source.ends_with(&format!("/{binary_name}")),
            "{copy}"
        );
        // The user upstream's image runs as (an ARG default here).
        let user = stage.last("USER").unwrap();
        let default_uid = stage
            .all("ARG")
            .find_map(|a| a.strip_prefix("spireuid="))
            .unwrap();
        assert!(
            user.starts_with("${spireuid}") || user.starts_with(uid),
            "{user}"
        );
        assert_eq!(default_uid, uid, "{target}");
        // A slim Debian runtime with CA certificates.
        let mut base = stage.from.as_str();
        while let Some(parent) = stages.get(base) {
            if parent.all("RUN").any(|r| r.contains("ca-certificates")) {
                assert_eq!(parent.from, "debian:bookworm-slim");
            }
            base = &parent.from;
        }
        assert_eq!(base, "debian:bookworm-slim", "{target}");
    }

    // The manifests run those images as built: entrypoint untouched, `-config` as args, the
    // tag the workspace version, the server pod as the image's user.
    let docs = manifests();
    let mut images = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| matches!(d.kind(), "StatefulSet" | "DaemonSet"))
    {
        let spec = &doc.value["spec"]["template"]["spec"];
        let all = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c, false))
            .chain(
                spec["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| (c, true)),
            );
        for (container, init) in all {
            let image = container["image"].as_str().unwrap();
            let Some(ours) = image.strip_prefix("spire-rs/") else {
                continue;
            };
            let (target, tag) = ours.split_once(':').unwrap();
            assert!(stages.contains_key(target), "{image}: no --target {target}");
            assert_eq!(tag, version, "{image}: not the workspace version");
            images.push(image.to_owned());
            if init {
                // A one-off command of the runtime image (Debian's coreutils).
                let command = container["command"][0].as_str().unwrap();
                assert!(command.starts_with("/bin/"), "{command}");
                continue;
            }
            assert!(
                container["command"].is_null(),
                "{image}: `command` would replace the `{target} run` entrypoint"
            );
            assert_eq!(container["args"][0], "-config", "{image}");
            if target == "spire-server" {
                assert_eq!(spec["securityContext"]["runAsUser"], 1000);
                assert_eq!(spec["securityContext"]["runAsGroup"], 1000);
            }
        }
    }
    images.sort();
    images.dedup();
    assert_eq!(
        images,
        [
            format!("spire-rs/spire-agent:{version}"),
            format!("spire-rs/spire-server:{version}")
        ]
    );

    // The docs build exactly those tags.
    let docs_text = std::fs::read_to_string(repo_root().join("deploy/kubernetes/README.md"))
        .unwrap()
        + &std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for image in &images {
        let target = image
            .strip_prefix("spire-rs/")
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        let command = format!("docker build --target {target} -t {image} .");
        assert!(
            docs_text.contains(&command),
            "the docs do not say `{command}`"
        );
    }

    // The build context leaves out build output and history.
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for entry in ["target", ".git"] {
        assert!(
            entries
                .iter()
                .any(|e| e.trim_end_matches('/').trim_start_matches('/') == entry),
            ".dockerignore does not list {entry}: {entries:?}"
        );
    }
    // `--locked` would refuse a Cargo.lock that does not match the manifests.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "--depth", "0"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "Cargo.lock is not current, so `cargo build --locked` in the image fails:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
