//! Kubernetes attestation against a real API server (kube-apiserver v1.37.2 with etcd, on
//! loopback): our agent attests with `k8s_psat`, using a projected service account token
//! the API server issued for its pod, and our server checks it with a TokenReview and reads
//! the pod and node; a workload whose process sits in a pod's cgroup is identified by the
//! `k8s` workload attestor from the kubelet's pod list and gets the SVID of an entry keyed on
//! `k8s:ns` and `k8s:sa`, under a node alias keyed on `k8s_psat` selectors.
//!
//! The kubelet cannot run here: [`FakeKubelet`] serves the API server's own pods of the node
//! over TLS, and the pod's container status is written through the API server's status
//! subresource, as a kubelet reports it. Everything else is the real thing.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use spire_e2e::kube::{
    CLUSTER, FakeKubelet, KubeCluster, PodCgroup, RunningContainer, container_id,
    psat_agent_config, start_psat_server,
};
use spire_e2e::{
    AgentProcess, ServerProcess, binary, eventually, free_port, run_to_failure, selector_strings,
};

const TD: &str = "example.org";
const NODE: &str = "node-1";

/// The objects a cluster with a SPIRE agent DaemonSet pod and a workload pod on one node has.
fn populate(cluster: &KubeCluster) {
    for ns in ["spire", "demo"] {
        cluster.create(
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    for (ns, sa) in [
        ("spire", "spire-agent"),
        ("demo", "web"),
        ("demo", "intruder"),
    ] {
        cluster.create(
            &format!("namespaces/{ns}/serviceaccounts"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        );
    }
    cluster.create(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"zone": "z1", "secret": "no"}}}),
    );
    let pod = |ns: &str, name: &str, sa: &str, app: &str, image: &str| {
        cluster.create(
            &format!("namespaces/{ns}/pods"),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": app}},
                "spec": {"nodeName": NODE, "serviceAccountName": sa,
                    "containers": [{"name": app, "image": image}]}}),
        );
    };
    pod(
        "spire",
        "spire-agent-0",
        "spire-agent",
        "spire-agent",
        "ghcr.io/spiffe/spire-agent:1.13.3",
    );
    pod("demo", "web-0", "web", "web", "nginx:1.27");
    pod("demo", "intruder-0", "intruder", "intruder", "busybox:1.37");
}

/// An agent config attesting with `k8s_psat` (token at `token_path`) and identifying
/// workloads with `k8s` (through `kubelet`) and `unix`; health listener on `health_port`.
fn agent_config(
    dir: &Path,
    server: &ServerProcess,
    token_path: &Path,
    kubelet: &FakeKubelet,
    sa_token_path: &Path,
    health_port: u16,
) -> (PathBuf, PathBuf) {
    psat_agent_config(
        dir,
        server.port,
        token_path,
        kubelet,
        sa_token_path,
        "WorkloadAttestor \"unix\" {\n        plugin_data {}\n    }",
        &format!(
            "health_checks {{\n    listener_enabled = true\n    bind_address = \"127.0.0.1\"\n    \
             bind_port = \"{health_port}\"\n}}"
        ),
    )
}

/// `GET http://127.0.0.1:<port><path>` with curl: status code and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Starts an agent that is expected to fail attestation and returns its log.
fn failed_attestation(
    dir: &Path,
    server: &ServerProcess,
    token: &str,
    kubelet: &FakeKubelet,
    sa_token: &Path,
) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let token_path = dir.join("token");
    std::fs::write(&token_path, token).unwrap();
    let (config, _) = agent_config(dir, server, &token_path, kubelet, sa_token, free_port());
    let mut command = std::process::Command::new(binary("spire-agent"));
    // A refusal ends the agent at once instead of retrying for a minute (retry_bootstrap).
    command
        .args(["run", "-config"])
        .arg(&config)
        .arg("-retryBootstrap=false");
    run_to_failure(
        command,
        &dir.join("agent.log"),
        Duration::from_secs(60),
        "the agent attested and kept running",
    )
}

#[test]
fn k8s_psat_and_k8s_workload_attestation_against_a_real_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = KubeCluster::start(&dir.path().join("k8s"));
    populate(&cluster);
    let node_uid = cluster.node_uid(NODE);
    let web_container = container_id();
    cluster.report_container(
        "spire",
        "spire-agent-0",
        "10.1.2.3",
        &RunningContainer {
            name: "spire-agent",
            container_id: &container_id(),
            image: "ghcr.io/spiffe/spire-agent:1.13.3",
            image_id: "ghcr.io/spiffe/spire-agent@sha256:7f1e2a64c0b5b3f3bd4a6d1c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f",
        },
    );
    cluster.report_container(
        "demo",
        "web-0",
        "10.1.2.3",
        &RunningContainer {
            name: "web",
            container_id: &web_container,
            image: "nginx:1.27",
            image_id: "docker.io/library/nginx@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        },
    );

    // What the kubelet mounts in the agent's pod: the projected token for spire-server and
    // the pod's service account token (which the kubelet accepts for /pods).
    let token_path = dir.path().join("psat-token");
    std::fs::write(
        &token_path,
        cluster.pod_token("spire", "spire-agent", "spire-agent-0", "spire-server"),
    )
    .unwrap();
    let sa_token = cluster.pod_token("spire", "spire-agent", "spire-agent-0", "kubelet");
    let sa_token_path = dir.path().join("sa-token");
    std::fs::write(&sa_token_path, format!("{sa_token}\n")).unwrap();
    let kubelet = FakeKubelet::start(&cluster, dir.path(), NODE, &sa_token);

    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = start_psat_server(
        &server_dir,
        &cluster.kubeconfig,
        "allowed_node_label_keys = [\"zone\"]\n allowed_pod_label_keys = [\"app\"]",
        // Short agent SVIDs: the agent re-attests at half-life during the test.
        "agent_ttl = \"30s\"",
    );

    // Refusals, with the reason named: a service account not in the allow list, and a
    // token for another audience.
    let log = failed_attestation(
        &dir.path().join("intruder"),
        &server,
        &cluster.pod_token("demo", "intruder", "intruder-0", "spire-server"),
        &kubelet,
        &sa_token_path,
    );
    assert!(
        log.contains(&format!(
            "nodeattestor(k8s_psat): \\\"demo:intruder\\\" is not an allowed service account for cluster \\\"{CLUSTER}\\\""
        )) || log.contains(&format!(
            "nodeattestor(k8s_psat): \"demo:intruder\" is not an allowed service account for cluster \"{CLUSTER}\""
        )),
        "{log}"
    );
    let log = failed_attestation(
        &dir.path().join("wrong-audience"),
        &server,
        &cluster.pod_token("spire", "spire-agent", "spire-agent-0", "someone-else"),
        &kubelet,
        &sa_token_path,
    );
    assert!(
        log.contains("token review API response contains an error"),
        "{log}"
    );
    assert!(
        log.contains("PermissionDenied") || log.contains("denied"),
        "{log}"
    );
    assert!(
        server.agent_ids().is_empty(),
        "no agent from a refused attestation"
    );

    // The agent attests.
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let health_port = free_port();
    let (config, socket) = agent_config(
        &agent_dir,
        &server,
        &token_path,
        &kubelet,
        &sa_token_path,
        health_port,
    );
    let mut agent = AgentProcess::start_with_config(&agent_dir, &config, socket.clone(), None);
    let agent_id = format!("spiffe://{TD}/spire/agent/k8s_psat/{CLUSTER}/{node_uid}");
    let shown = server.cli_json(&["agent", "show", "-spiffeID", &agent_id]);
    assert_eq!(shown["attestation_type"], "k8s_psat", "{shown}");
    assert_eq!(shown["can_reattest"], true, "{shown}");
    let selectors = selector_strings(&shown["selectors"]);
    let agent_pod_uid = cluster.pod_uid("spire", "spire-agent-0");
    let mut expected = vec![
        format!("k8s_psat:agent_node_ip:10.1.2.3"),
        format!("k8s_psat:agent_node_label:zone:z1"),
        format!("k8s_psat:agent_node_name:{NODE}"),
        format!("k8s_psat:agent_node_uid:{node_uid}"),
        "k8s_psat:agent_ns:spire".to_owned(),
        "k8s_psat:agent_pod_label:app:spire-agent".to_owned(),
        "k8s_psat:agent_pod_name:spire-agent-0".to_owned(),
        format!("k8s_psat:agent_pod_uid:{agent_pod_uid}"),
        "k8s_psat:agent_sa:spire-agent".to_owned(),
        format!("k8s_psat:cluster:{CLUSTER}"),
    ];
    expected.sort();
    assert_eq!(
        selectors, expected,
        "sorted, and the node's `secret` label left out"
    );

    // Health: the agent holds an SVID and serves its Workload API.
    let mut last = (0, String::new());
    let start = Instant::now();
    while last != (200, "{\"agent\":{}}\n".to_owned()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent is not ready: {last:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(250));
        last = http_get(health_port, "/ready");
    }
    assert_eq!(
        http_get(health_port, "/live"),
        (200, "{\"agent\":{}}\n".to_owned())
    );

    // A node alias for every agent of the cluster's spire-agent service account, and the
    // web workload under it.
    server.cli_ok(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        &format!("spiffe://{TD}/k8s/{CLUSTER}/agents"),
        "-selector",
        &format!("k8s_psat:cluster:{CLUSTER}"),
        "-selector",
        "k8s_psat:agent_sa:spire-agent",
    ]);
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        &format!("spiffe://{TD}/k8s/{CLUSTER}/agents"),
        "-spiffeID",
        &format!("spiffe://{TD}/web"),
        "-selector",
        "k8s:ns:demo",
        "-selector",
        "k8s:sa:web",
        "-selector",
        "k8s:container-name:web",
    ]);

    // A process in web-0's container cgroup gets the web SVID...
    let pod_uid = cluster.pod_uid("demo", "web-0");
    let cgroup = PodCgroup::create(&pod_uid, &web_container);
    let socket_arg = socket.display().to_string();
    let mut served = String::new();
    eventually(
        "the workload in the pod gets its SVID",
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
                    ],
                )
                .output()
                .unwrap();
            served = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            out.status.success() && served.contains(&format!("spiffe://{TD}/web"))
        },
    );
    assert!(kubelet.requests.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // ... and a process outside every pod gets nothing (no k8s selectors, no error).
    let outside = agent.cli(&["api", "fetch", "x509", "-timeout", "5s"]);
    assert!(!outside.status.success());
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("no identity issued"),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );

    // At half of its 30 s SVID's lifetime the agent attests again with a fresh read of its
    // token, instead of calling RenewAgent (which the server refuses for it).
    eventually(
        "the agent re-attests at half-life",
        Duration::from_secs(60),
        || agent.log().contains("agent re-attested"),
    );
    assert!(
        !server
            .log()
            .contains("agent must reattest instead of renew"),
        "{}",
        server.log()
    );
    assert_eq!(server.agent_ids(), std::slice::from_ref(&agent_id));

    // Evicted, the agent attests again with a fresh read of its token, under the same ID.
    server.cli_ok(&["agent", "evict", "-spiffeID", &agent_id]);
    let reattested = agent.log().matches("agent re-attested").count();
    eventually("the agent re-attests", Duration::from_secs(60), || {
        agent.log().matches("agent re-attested").count() > reattested
            && server.agent_ids() == [agent_id.clone()]
    });

    // Once its pod is deleted, the token is invalid: the next re-attestation is refused
    // and the agent stops, saying why. (The API server keeps a review result for 10 s.)
    cluster.delete_pod("spire", "spire-agent-0");
    std::thread::sleep(Duration::from_secs(11));
    server.cli_ok(&["agent", "evict", "-spiffeID", &agent_id]);
    let status = agent.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = agent.log();
    assert!(
        log.contains("re-attestation failed") && log.contains("token review API"),
        "{log}"
    );
    drop(cgroup);
}
