//! A real Kubernetes control plane on loopback for the k8s tests: etcd and kube-apiserver
//! v1.37.2 (from `scripts/k8s-deps.sh`), an admin token, a kubeconfig for the server's
//! `k8s_psat` plugin, and the one piece that cannot run here, the kubelet: [`FakeKubelet`]
//! serves the API server's own pod list of a node over HTTPS, as the kubelet's `/pods`
//! would, so the JSON the agent parses is Kubernetes' own.
//!
//! Pods get their container statuses the way a kubelet reports them, through the API
//! server's status subresource ([`KubeCluster::report_container`]); processes are put in
//! real cgroups named like a pod's ([`PodCgroup`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::free_port;

/// The programs, from `target/k8s-deps.env`; a missing one fails loudly.
fn program(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run scripts/k8s-deps.sh and source target/k8s-deps.env (the \
             test command does both)"
        )
    })
}

/// A container as a kubelet reports it in a pod's status.
#[derive(Debug, Clone, Copy)]
pub struct RunningContainer<'a> {
    /// The container's name in the pod spec.
    pub name: &'a str,
    /// Its 64-hex-digit runtime ID (see [`container_id`]).
    pub container_id: &'a str,
    /// The image as written in the spec.
    pub image: &'a str,
    /// The image by digest, as the runtime resolved it.
    pub image_id: &'a str,
}

/// How long etcd and kube-apiserver may take to become ready. Alone they need ~3 s; with the
/// whole test suite on 2 cores, kube-apiserver's start-up (it compiles its OpenAPI schema)
/// once took over 60 s.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The etcd and kube-apiserver processes, with their logs in `dir`; stopped on drop (the
/// API server first, so it does not spin reconnecting to a gone etcd).
struct Processes {
    etcd: Child,
    apiserver: Child,
    dir: PathBuf,
}

impl Processes {
    /// Panics, with the process's log, when one of them exited or `deadline` passed.
    fn assert_running(&mut self, deadline: Instant) {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        for (name, child, err) in [
            ("etcd", &mut self.etcd, "etcd.err"),
            ("kube-apiserver", &mut self.apiserver, "apiserver.err"),
        ] {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited with {status}:\n{}", read(err));
            }
        }
        assert!(
            Instant::now() < deadline,
            "kube-apiserver not ready within {} s:\n{}",
            START_TIMEOUT.as_secs(),
            read("apiserver.err")
        );
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// etcd and kube-apiserver with an admin client; stopped on drop.
pub struct KubeCluster {
    /// The API server's HTTPS port on 127.0.0.1.
    pub port: u16,
    /// A kubeconfig for the admin user (`system:masters`) trusting the API server.
    pub kubeconfig: PathBuf,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    _processes: Processes,
}

impl KubeCluster {
    /// Starts etcd and kube-apiserver with their state in `dir` and waits until the API
    /// server is ready (about 4 s).
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).unwrap_or_else(|e| panic!("create {pki:?}: {e}"));
        let sa_key = pki.join("sa.key");
        let sa_pub = pki.join("sa.pub");
        run_ok(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&sa_key)
                .arg("2048"),
        );
        run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&sa_key)
                .arg("-out")
                .arg(&sa_pub),
        );
        let admin_token = hex(&random_bytes::<24>());
        std::fs::write(
            pki.join("tokens.csv"),
            format!("{admin_token},admin,admin-uid,system:masters\n"),
        )
        .unwrap_or_else(|e| panic!("write tokens.csv: {e}"));

        let (client_port, peer_port, port) = (free_port(), free_port(), free_port());
        let log = |name: &str| {
            std::fs::File::create(dir.join(name)).unwrap_or_else(|e| panic!("log {name}: {e}"))
        };
        let etcd = Command::new(program("SPIRE_TEST_ETCD"))
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .stdout(log("etcd.log"))
            .stderr(log("etcd.err"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn etcd: {e}"));
        let certs = dir.join("certs");
        let apiserver = Command::new(program("SPIRE_TEST_KUBE_APISERVER"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", certs.display()))
            .arg(format!(
                "--token-auth-file={}",
                pki.join("tokens.csv").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .args([
                "--authorization-mode=RBAC",
                "--endpoint-reconciler-type=none",
                "--service-cluster-ip-range=10.0.0.0/24",
            ])
            .stdout(log("apiserver.log"))
            .stderr(log("apiserver.err"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kube-apiserver: {e}"));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let mut processes = Processes {
            etcd,
            apiserver,
            dir: dir.to_path_buf(),
        };
        // The serving certificate (and its CA) appear once the API server starts.
        let crt = certs.join("apiserver.crt");
        let kubeconfig = dir.join("kubeconfig.json");
        let deadline = Instant::now() + START_TIMEOUT;
        while !crt.exists() {
            processes.assert_running(deadline);
            std::thread::sleep(Duration::from_millis(50));
        }
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": format!("https://127.0.0.1:{port}"),
                "certificate-authority": crt.display().to_string()}}],
            "users": [{"name": "admin", "user": {"token": admin_token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test"
        });
        std::fs::write(&kubeconfig, config.to_string())
            .unwrap_or_else(|e| panic!("write kubeconfig: {e}"));
        let client = runtime.block_on(async {
            let kubeconfig = Kubeconfig::read_from(&kubeconfig)
                .unwrap_or_else(|e| panic!("read kubeconfig: {e}"));
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .unwrap_or_else(|e| panic!("kubeconfig: {e}"));
            kube::Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
        });
        loop {
            processes.assert_running(deadline);
            let ready = runtime.block_on(async {
                let request = http::Request::get("/readyz").body(Vec::new());
                match request {
                    Ok(request) => client.request_text(request).await.ok(),
                    Err(_) => None,
                }
            });
            if ready.as_deref() == Some("ok") {
                return Self {
                    port,
                    kubeconfig,
                    runtime,
                    client,
                    _processes: processes,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `f` with the admin client on the cluster's runtime.
    pub fn with<T>(&self, f: impl AsyncFnOnce(kube::Client) -> T) -> T {
        self.runtime.block_on(f(self.client.clone()))
    }

    /// Creates the object `json` at the API path of its kind (`namespaces`, `nodes`,
    /// `namespaces/<ns>/pods`, ...), returning what the API server stored.
    pub fn create(&self, path: &str, json: serde_json::Value) -> serde_json::Value {
        self.with(async |client| {
            let request = http::Request::post(format!("/api/v1/{path}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(json.to_string().into_bytes())
                .unwrap_or_else(|e| panic!("request: {e}"));
            let text = client
                .request_text(request)
                .await
                .unwrap_or_else(|e| panic!("create {path}: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("create {path}: {e}: {text}"))
        })
    }

    /// Sends `method path` with `body` of `content_type` and returns the answer as JSON, or
    /// the API server's refusal. The API server also takes `application/yaml`, so manifests
    /// such as CRDs go in as their authors wrote them, with no YAML parser here; merge patches
    /// are `application/merge-patch+json`.
    pub fn request(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, kube::Error> {
        self.with(async |client| {
            let request = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::CONTENT_TYPE, content_type)
                .body(body)
                .unwrap_or_else(|e| panic!("request {path}: {e}"));
            let text = client.request_text(request).await?;
            Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")))
        })
    }

    /// A pod's UID.
    pub fn pod_uid(&self, namespace: &str, name: &str) -> String {
        self.with(async |client| {
            let pod = Api::<Pod>::namespaced(client, namespace)
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("get pod {namespace}/{name}: {e}"));
            pod.metadata.uid.unwrap_or_default()
        })
    }

    /// A node's UID.
    pub fn node_uid(&self, name: &str) -> String {
        self.with(async |client| {
            let node = Api::<Node>::all(client)
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("get node {name}: {e}"));
            node.metadata.uid.unwrap_or_default()
        })
    }

    /// Writes a pod's status as its kubelet would: the host IP and one running container
    /// with `containerd://<container_id>`.
    pub fn report_container(
        &self,
        namespace: &str,
        pod: &str,
        host_ip: &str,
        container: &RunningContainer<'_>,
    ) {
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "hostIP": host_ip,
            "containerStatuses": [{
                "name": container.name, "image": container.image,
                "imageID": container.image_id,
                "containerID": format!("containerd://{}", container.container_id),
                "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": "2026-12-06T00:00:00Z"}}
            }]
        }});
        self.with(async |client| {
            Api::<Pod>::namespaced(client, namespace)
                .patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap_or_else(|e| panic!("patch status of {namespace}/{pod}: {e}"));
        });
    }

    /// A projected service account token of `namespace/service_account` bound to the pod,
    /// for `audience` (what the kubelet mounts for a pod's `serviceAccountToken` volume).
    pub fn pod_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audience: &str,
    ) -> String {
        let pod_uid = self.pod_uid(namespace, pod);
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": 3600,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": pod_uid}}
        }))
        .unwrap_or_else(|e| panic!("token request: {e}"));
        self.with(async |client| {
            Api::<ServiceAccount>::namespaced(client, namespace)
                .create_token_request(service_account, &PostParams::default(), &request)
                .await
                .unwrap_or_else(|e| panic!("token for {namespace}/{service_account}: {e}"))
                .status
                .map(|s| s.token)
                .unwrap_or_default()
        })
    }

    /// Deletes a pod at once (grace period 0), as a force delete does.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.with(async |client| {
            Api::<Pod>::namespaced(client, namespace)
                .delete(
                    name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("delete pod {namespace}/{name}: {e}"));
        });
    }

    /// The JSON the kubelet of `node` would answer at `/pods`: the API server's pods of that
    /// node, as a `PodList`.
    async fn node_pods(client: kube::Client, node: &str) -> Result<String, kube::Error> {
        let list = Api::<Pod>::all(client)
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?;
        Ok(serde_json::json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {},
            "items": list.items,
        })
        .to_string())
    }
}

fn run_ok(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap_or_else(|e| panic!("read /dev/urandom: {e}"));
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random 64-hex-digit container ID.
pub fn container_id() -> String {
    hex(&random_bytes::<32>())
}

/// The kubelet of one node, played by a TLS server that answers `/pods` with the API
/// server's pods of that node, for callers presenting `token` (the agent's service account
/// token). Stops on drop.
pub struct FakeKubelet {
    /// Its port on 127.0.0.1 (`kubelet_secure_port`).
    pub port: u16,
    /// Its CA certificate, PEM (`kubelet_ca_path`).
    pub ca_path: PathBuf,
    /// How many `/pods` requests it answered.
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubelet {
    /// Starts the kubelet of `node` on `cluster`'s runtime; its certificate is self-signed
    /// for 127.0.0.1 and written to `dir`.
    pub fn start(cluster: &KubeCluster, dir: &Path, node: &str, token: &str) -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .unwrap_or_else(|e| panic!("kubelet certificate: {e}"));
        let ca_path = dir.join("kubelet-ca.crt");
        std::fs::write(&ca_path, cert.cert.pem()).unwrap_or_else(|e| panic!("write CA: {e}"));
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
        })
        .unwrap_or_else(|e| panic!("kubelet TLS: {e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = cluster
            .runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("bind kubelet: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("kubelet address: {e}"))
            .port();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = cluster.client.clone();
        let expected = format!("Bearer {token}");
        let node = node.to_owned();
        let counter = Arc::clone(&requests);
        let task = cluster.runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (client, expected, node, counter) = (
                    client.clone(),
                    expected.clone(),
                    node.clone(),
                    Arc::clone(&counter),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (client, expected, node, counter) = (
                                client.clone(),
                                expected.clone(),
                                node.clone(),
                                Arc::clone(&counter),
                            );
                            async move {
                                let authorized = request
                                    .headers()
                                    .get(http::header::AUTHORIZATION)
                                    .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                                let (status, body) = if request.uri().path() != "/pods" {
                                    (404, "404 page not found".to_owned())
                                } else if !authorized {
                                    (401, "Unauthorized".to_owned())
                                } else {
                                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    match KubeCluster::node_pods(client, &node).await {
                                        Ok(json) => (200, json),
                                        Err(e) => (500, e.to_string()),
                                    }
                                };
                                http::Response::builder()
                                    .status(status)
                                    .header(http::header::CONTENT_TYPE, "application/json")
                                    .body(Full::new(Bytes::from(body)))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            ca_path,
            requests,
            task,
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A cgroup named as the kubelet names a container's (`/kubepods/besteffort/pod<uid>/<id>`)
/// in the host's cgroup v1 hierarchies that accept processes without set-up (`pids`,
/// `name=systemd`), so `/proc/<pid>/cgroup` of a process moved in reads like a pod's.
/// Removed on drop (once its processes have exited).
pub struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    /// Creates the cgroup of `container_id` in pod `pod_uid`; needs root.
    pub fn create(pod_uid: &str, container_id: &str) -> Self {
        let relative = format!("kubepods/besteffort/pod{pod_uid}/{container_id}");
        let dirs: Vec<PathBuf> = ["pids", "systemd"]
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h))
            .filter(|h| h.join("cgroup.procs").exists())
            .map(|h| h.join(&relative))
            .collect();
        assert!(
            !dirs.is_empty(),
            "no cgroup v1 hierarchy pids or name=systemd under /sys/fs/cgroup to put a pod's \
             process in"
        );
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create cgroup {dir:?}: {e}"));
        }
        Self { dirs }
    }

    /// A command that moves itself into this cgroup, then runs `program args...`.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut script = String::new();
        for dir in &self.dirs {
            script.push_str(&format!(
                "echo $$ > '{}' || exit 97; ",
                dir.join("cgroup.procs").display()
            ));
        }
        script.push_str("exec \"$@\"");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(program)
            .args(args);
        command
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Leaf first, then the pod and QoS folders when nothing else uses them.
            for ancestor in dir.ancestors().take(4) {
                let _ = std::fs::remove_dir(ancestor);
            }
        }
    }
}

/// The cluster name the k8s tests' `k8s_psat` server and agents use.
pub const CLUSTER: &str = "test-cluster";

/// Starts a server on a free port in `dir` with `k8s_psat` for [`CLUSTER`] (reading the API
/// server through `kubeconfig`, allowing `spire:spire-agent`, plus `cluster_keys` inside the
/// cluster's block) beside `join_token`, and `extra_server_keys` inside `server { }`.
pub fn start_psat_server(
    dir: &Path,
    kubeconfig: &Path,
    cluster_keys: &str,
    extra_server_keys: &str,
) -> crate::ServerProcess {
    let psat = format!(
        r#"NodeAttestor "k8s_psat" {{
        plugin_data {{
            clusters = {{
                "{CLUSTER}" = {{
                    service_account_allow_list = ["spire:spire-agent"]
                    kube_config_file = "{}"
                    {cluster_keys}
                }}
            }}
        }}
    }}

    NodeAttestor "join_token" {{"#,
        kubeconfig.display()
    );
    crate::ServerProcess::start_on_free_port(dir, |port| {
        let socket = dir.join("server.sock");
        let data = dir.join("server-data");
        let config = crate::server_config(&crate::ServerPaths {
            port,
            socket: &socket,
            data_dir: &data,
            keys: &data.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &data.join("datastore.sqlite3").display().to_string(),
            extra_server_keys,
        })
        .replace("NodeAttestor \"join_token\" {", &psat);
        let path = dir.join("server.conf");
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("write server.conf: {e}"));
        (path, socket)
    })
}

/// Writes `dir/agent.conf` for an agent of `example.org` at `127.0.0.1:server_port` that
/// attests with `k8s_psat` for [`CLUSTER`] (its token at `token_path`) and identifies
/// workloads with `k8s` through `kubelet` (with the service account token at
/// `sa_token_path`); `extra_plugins` goes inside `plugins { }`, `extra_blocks` after it.
/// Returns the config's path and the Workload API socket's.
pub fn psat_agent_config(
    dir: &Path,
    server_port: u16,
    token_path: &Path,
    kubelet: &FakeKubelet,
    sa_token_path: &Path,
    extra_plugins: &str,
    extra_blocks: &str,
) -> (PathBuf, PathBuf) {
    let socket = dir.join("agent.sock");
    let config = format!(
        r#"agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "{server_port}"
    socket_path = "{socket}"
    insecure_bootstrap = true
}}

plugins {{
    NodeAttestor "k8s_psat" {{
        plugin_data {{
            cluster = "{CLUSTER}"
            token_path = "{token}"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "k8s" {{
        plugin_data {{
            kubelet_secure_port = {kubelet_port}
            kubelet_ca_path = "{kubelet_ca}"
            token_path = "{sa_token}"
            poll_retry_interval = "200ms"
            max_poll_attempts = 5
        }}
    }}
    {extra_plugins}
}}
{extra_blocks}
"#,
        data = dir.join("agent-data").display(),
        socket = socket.display(),
        token = token_path.display(),
        kubelet_port = kubelet.port,
        kubelet_ca = kubelet.ca_path.display(),
        sa_token = sa_token_path.display(),
    );
    let path = dir.join("agent.conf");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("write agent.conf: {e}"));
    (path, socket)
}
