//! WorkloadAttestor `docker`: the calling process's container, found from its cgroups, and
//! inspected through the Docker Engine API on its unix socket, as upstream's
//! `pkg/agent/plugin/workloadattestor/docker` (v1.14+ for `image_config_digest`).
//!
//! Selectors: `docker:label:<key>:<value>` for each container label, `docker:env:<K=V>` for
//! each environment variable, `docker:image_id:<Config.Image>` (the image as the container
//! was created from it) and `docker:image_config_digest:<image Id>` (the image config's
//! digest, when the image can be inspected). A process in no container gets no selectors.
//! A container that cannot be inspected (e.g. gone: 404) is retried three times with
//! backoff, then fails with the daemon's message as upstream's Docker client words it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use regex::Regex;
use serde::Deserialize;
use spire_core::selector::Selector;

use super::containerinfo::{Locator, cgroup_paths};
use super::{AttestError, PeerProcess, WorkloadAttestor};

/// The plugin name and selector type.
pub const NAME: &str = "docker";

/// Upstream's default `docker_socket_path`.
pub const DEFAULT_SOCKET_PATH: &str = "unix:///var/run/docker.sock";

/// Retries after the first failed inspection, as upstream's retryer.
const RETRIES: u32 = 3;
/// The first retry's delay; doubled for each next one.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The most bytes of an inspection answer read.
const MAX_BODY: usize = 4 << 20;

/// `WorkloadAttestor "docker"` settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerAttestorConfig {
    /// The Docker Engine API socket (`docker_socket_path` without `unix://`).
    pub socket_path: PathBuf,
    /// `docker_version`: the API version put in each path (`/v1.43/...`); none sends
    /// unversioned paths, which the daemon answers with its own version.
    pub docker_version: Option<String>,
    /// `container_id_cgroup_matchers` (only with `use_new_container_locator = false`).
    pub container_id_cgroup_matchers: Vec<String>,
    /// `verbose_container_locator_logs`: log where each caller was located at info level.
    pub verbose_container_locator_logs: bool,
    /// Where `/proc` is (tests point it elsewhere).
    pub proc_root: PathBuf,
}

impl DockerAttestorConfig {
    /// Resolves the plugin's keys; the error names the key and the fix.
    pub fn resolve(
        docker_socket_path: Option<String>,
        docker_version: Option<String>,
        container_id_cgroup_matchers: Vec<String>,
        use_new_container_locator: Option<bool>,
        verbose_container_locator_logs: bool,
    ) -> Result<Self, (&'static str, String)> {
        let socket = docker_socket_path
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SOCKET_PATH.to_owned());
        let Some(path) = socket.strip_prefix("unix://") else {
            return Err((
                "docker_socket_path",
                format!(
                    "{socket:?} is not a unix socket address; spire-rs reaches the Docker \
                     Engine over its unix socket only: use unix:///var/run/docker.sock"
                ),
            ));
        };
        if !container_id_cgroup_matchers.is_empty() {
            if use_new_container_locator.unwrap_or(true) {
                return Err((
                    "container_id_cgroup_matchers",
                    "the new container locator and custom cgroup matchers cannot both be \
                     used; to continue using custom matchers set use_new_container_locator=false"
                        .to_owned(),
                ));
            }
            ContainerIdFinder::new(&container_id_cgroup_matchers)
                .map_err(|e| ("container_id_cgroup_matchers", e))?;
        }
        Ok(Self {
            socket_path: PathBuf::from(path),
            docker_version: docker_version.filter(|v| !v.is_empty()),
            container_id_cgroup_matchers,
            verbose_container_locator_logs,
            proc_root: PathBuf::from("/proc"),
        })
    }
}

/// The `docker` workload attestor.
#[derive(Debug)]
pub struct DockerAttestor {
    config: DockerAttestorConfig,
    locator: Locator,
    finder: Option<ContainerIdFinder>,
}

impl DockerAttestor {
    /// An attestor with resolved settings; fails only on matchers [`DockerAttestorConfig::resolve`]
    /// would have refused.
    pub fn new(config: DockerAttestorConfig) -> Result<Self, String> {
        let finder = if config.container_id_cgroup_matchers.is_empty() {
            None
        } else {
            tracing::warn!(
                "Using the legacy container locator with custom cgroup matchers. This feature will be removed in a future release."
            );
            Some(ContainerIdFinder::new(
                &config.container_id_cgroup_matchers,
            )?)
        };
        Ok(Self {
            locator: Locator::new(&config.proc_root),
            config,
            finder,
        })
    }

    /// The caller's container ID; empty when it runs in none.
    fn container_id(&self, pid: i32) -> Result<String, AttestError> {
        let id = match &self.finder {
            Some(finder) => {
                let path = self.config.proc_root.join(pid.to_string()).join("cgroup");
                let text = super::read_proc_file(&path)
                    .map_err(|e| AttestError::Internal(format!("unable to obtain cgroups: {e}")))?;
                let paths =
                    cgroup_paths(&text).map_err(|e| AttestError::Internal(e.to_string()))?;
                finder.container_id(&paths)?
            }
            None => {
                self.locator
                    .locate(pid)
                    .map_err(|e| AttestError::Internal(format!("workloadattestor(docker): {e}")))?
                    .container_id
            }
        };
        if self.config.verbose_container_locator_logs {
            tracing::info!(pid, container_id = %id, "Located container");
        }
        Ok(id)
    }

    fn api_path(&self, path: &str) -> String {
        match &self.config.docker_version {
            Some(version) => format!("/v{}{path}", version.trim_start_matches('v')),
            None => path.to_owned(),
        }
    }

    /// One GET on the Engine API; the body of a 200, else the daemon's error.
    async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        let stream = tokio::net::UnixStream::connect(&self.config.socket_path)
            .await
            .map_err(|e| {
                format!(
                    "Cannot connect to the Docker daemon at unix://{}. Is the docker daemon running? ({e})",
                    self.config.socket_path.display()
                )
            })?;
        let (status, body) = spire_common::http_get::get(
            Box::new(stream),
            "docker",
            &self.api_path(path),
            "spire-agent",
            &[],
            MAX_BODY,
        )
        .await
        .map_err(|e| format!("error during connect: {e}"))?;
        if status.is_success() {
            return Ok(body);
        }
        #[derive(Deserialize)]
        struct DaemonError {
            message: String,
        }
        let message = serde_json::from_slice::<DaemonError>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        Err(format!("Error response from daemon: {message}"))
    }

    /// `GET /containers/{id}/json`, retried as upstream.
    async fn inspect(&self, container_id: &str) -> Result<ContainerInspect, String> {
        let path = format!("/containers/{container_id}/json");
        let mut attempt = 0;
        loop {
            let result = self.get(&path).await.and_then(|body| {
                serde_json::from_slice::<ContainerInspect>(&body)
                    .map_err(|e| format!("unable to decode the container inspection: {e}"))
            });
            match result {
                Ok(inspect) => return Ok(inspect),
                Err(e) if attempt >= RETRIES => return Err(e),
                Err(e) => {
                    let backoff = INITIAL_BACKOFF * 2u32.pow(attempt);
                    tracing::debug!(container_id, error = %e, ?backoff, "Retrying container inspection");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The image config digest (`Id` of `GET /images/{name}/json`), when it can be had.
    async fn image_config_digest(&self, image: &str) -> Option<String> {
        let safe = image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./:_@-".contains(&b));
        if !safe {
            return None;
        }
        #[derive(Deserialize)]
        struct ImageInspect {
            #[serde(rename = "Id", default)]
            id: String,
        }
        match self.get(&format!("/images/{image}/json")).await {
            Ok(body) => serde_json::from_slice::<ImageInspect>(&body)
                .ok()
                .map(|i| i.id)
                .filter(|id| !id.is_empty()),
            Err(e) => {
                tracing::debug!(image, error = %e, "Could not inspect the container's image");
                None
            }
        }
    }
}

/// The parts of `GET /containers/{id}/json` the selectors come from.
#[derive(Debug, Deserialize)]
struct ContainerInspect {
    #[serde(rename = "Config", default)]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Image", default)]
    image: String,
}

/// Upstream's selector values of a container config: labels (here in key order), env in
/// order, then the image.
fn selector_values(config: &ContainerConfig) -> Vec<String> {
    let mut values = Vec::new();
    for (key, value) in config.labels.iter().flatten() {
        values.push(format!("label:{key}:{value}"));
    }
    for variable in config.env.iter().flatten() {
        values.push(format!("env:{variable}"));
    }
    if !config.image.is_empty() {
        values.push(format!("image_id:{}", config.image));
    }
    values
}

#[async_trait]
impl WorkloadAttestor for DockerAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError> {
        let container_id = self.container_id(peer.pid)?;
        if container_id.is_empty() {
            return Ok(Vec::new());
        }
        let inspect = self
            .inspect(&container_id)
            .await
            .map_err(AttestError::Internal)?;
        let config = inspect.config.unwrap_or_default();
        let mut values = selector_values(&config);
        if !config.image.is_empty()
            && let Some(digest) = self.image_config_digest(&config.image).await
        {
            values.push(format!("image_config_digest:{digest}"));
        }
        values
            .into_iter()
            .map(|value| {
                Selector::new(NAME, value)
                    .map_err(|e| AttestError::Internal(format!("workloadattestor(docker): {e}")))
            })
            .collect()
    }
}

/// The legacy locator: `container_id_cgroup_matchers` patterns, each a `/`-separated path
/// whose segments are literal, `*` (any one segment) or `<id>` (the container ID, exactly
/// once), matched against the whole cgroup path.
#[derive(Debug)]
struct ContainerIdFinder {
    patterns: Vec<Regex>,
}

impl ContainerIdFinder {
    fn new(patterns: &[String]) -> Result<Self, String> {
        let ambiguous = ambiguous_patterns(patterns);
        if !ambiguous.is_empty() {
            return Err(format!(
                "dockerfinder: patterns must not be ambiguous: {ambiguous:?}"
            ));
        }
        let patterns = patterns
            .iter()
            .map(|pattern| {
                let segments: Vec<String> = pattern
                    .split('/')
                    .map(|segment| match segment {
                        "*" => r"[^/]*".to_owned(),
                        "<id>" => r"([^/]*)".to_owned(),
                        literal => regex::escape(literal),
                    })
                    .collect();
                if pattern.split('/').filter(|s| *s == "<id>").count() != 1 {
                    return Err(format!(
                        "pattern {pattern:?} must contain the container id token \"<id>\" exactly once"
                    ));
                }
                Regex::new(&format!("^{}$", segments.join("/")))
                    .map_err(|e| format!("failed to create container id fetcher: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    fn find(&self, cgroup: &str) -> Option<String> {
        self.patterns.iter().find_map(|re| {
            re.captures(cgroup)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().to_owned())
        })
    }

    /// The one container ID the cgroups name, empty when none matches.
    fn container_id(&self, cgroups: &[String]) -> Result<String, AttestError> {
        let mut found: Option<String> = None;
        for cgroup in cgroups {
            let Some(candidate) = self.find(cgroup) else {
                continue;
            };
            match &found {
                None => found = Some(candidate),
                Some(id) if *id != candidate => {
                    return Err(AttestError::Internal(format!(
                        "workloadattestor/docker: multiple container IDs found in cgroups ({id}, {candidate})"
                    )));
                }
                Some(_) => {}
            }
        }
        match found {
            None => Ok(String::new()),
            Some(id) if id.is_empty() => Err(AttestError::Internal(
                "workloadattestor/docker: a pattern matched, but no container id was found"
                    .to_owned(),
            )),
            Some(id) => Ok(id),
        }
    }
}

/// Patterns that can match the same path: as many segments, each pair equal or one of
/// them `*` or `<id>` (upstream's `equivalentPatterns`).
fn ambiguous_patterns(patterns: &[String]) -> Vec<String> {
    let equivalent = |a: &str, b: &str| {
        let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|(x, y)| x == y || [*x, *y].contains(&"*") || [*x, *y].contains(&"<id>"))
    };
    let mut found: Vec<String> = Vec::new();
    for (i, a) in patterns.iter().enumerate() {
        for b in &patterns[i + 1..] {
            if equivalent(a, b) {
                for p in [a, b] {
                    if !found.contains(p) {
                        found.push(p.clone());
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    //! Against a unix-socket stand-in for the Docker Engine API answering with JSON recorded
    //! from a real Docker Engine 20.10.24 (API 1.41, Debian's docker.io): `/containers/{id}/json`
    //! of a container run with `-e FOO=bar -l team=blue` from an image imported with
    //! `LABEL org.example.app=sds` (testdata/docker-20.10.24-container.json), the `Id` its
    //! `/images/spire-rs-test:local/json` gave, and its 404 for a container that is gone. The e2e test `docker_attestor` runs a real daemon.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::{Path as UrlPath, State};
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;

    const RECORDED: &str = include_str!("testdata/docker-20.10.24-container.json");
    const CONTAINER_ID: &str = "80f0de42ab565eafcee05975a186f5e99968ff95fa131bea398f8fbce0abfd5c";
    const IMAGE_ID: &str =
        "sha256:5d1f70a078de3a6e52ceeb8eda6e504ee030b4daa01b7ca4820e959f522932dc";

    #[derive(Default)]
    struct Daemon {
        requests: AtomicUsize,
        gone: bool,
    }

    async fn container(
        State(daemon): State<Arc<Daemon>>,
        UrlPath(id): UrlPath<String>,
    ) -> (StatusCode, String) {
        daemon.requests.fetch_add(1, Ordering::SeqCst);
        if daemon.gone || id != CONTAINER_ID {
            // The real daemon's answer, recorded.
            return (
                StatusCode::NOT_FOUND,
                format!(r#"{{"message":"No such container: {id}"}}"#),
            );
        }
        (StatusCode::OK, RECORDED.to_owned())
    }

    /// `GET /images/{name}/json`: the recorded image ID of the recorded container's image.
    async fn image(UrlPath(name): UrlPath<String>) -> (StatusCode, String) {
        if name == "spire-rs-test:local" {
            (StatusCode::OK, format!(r#"{{"Id":"{IMAGE_ID}"}}"#))
        } else {
            (
                StatusCode::NOT_FOUND,
                format!(r#"{{"message":"No such image: {name}"}}"#),
            )
        }
    }

    async fn image_json(UrlPath(name): UrlPath<String>) -> (StatusCode, String) {
        image(UrlPath(name.trim_end_matches("/json").to_owned())).await
    }

    /// Serves the stand-in daemon on a socket in `dir`; gives its config.
    fn serve(dir: &std::path::Path, daemon: Arc<Daemon>) -> DockerAttestorConfig {
        let socket = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let routes = Router::new()
            .route("/v1.41/containers/{id}/json", get(container))
            .route("/containers/{id}/json", get(container))
            .route("/images/{*name}", get(image_json))
            .route("/v1.41/images/{*name}", get(image_json))
            .with_state(daemon);
        tokio::spawn(async move {
            axum::serve(listener, routes).await.unwrap();
        });
        let mut config = DockerAttestorConfig::resolve(
            Some(format!("unix://{}", socket.display())),
            None,
            Vec::new(),
            None,
            false,
        )
        .unwrap();
        config.proc_root = dir.join("proc");
        config
    }

    fn write_cgroup(dir: &std::path::Path, pid: i32, text: &str) {
        let proc = dir.join("proc").join(pid.to_string());
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::write(proc.join("cgroup"), text).unwrap();
    }

    fn peer(pid: i32) -> PeerProcess {
        PeerProcess {
            pid,
            uid: 0,
            gid: 0,
        }
    }

    fn values(selectors: &[Selector]) -> Vec<String> {
        selectors
            .iter()
            .map(|s| format!("{}:{}", s.kind, s.value))
            .collect()
    }

    #[tokio::test]
    async fn selectors_of_a_recorded_container_in_docker_and_containerd_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let config = serve(dir.path(), Arc::default());
        // Docker with cgroupfs on cgroup v1 (recorded from the daemon above), Docker with
        // systemd on cgroup v2, and containerd (CRI) on cgroup v2 with systemd.
        let layouts = [
            format!(
                "12:memory:/docker/{CONTAINER_ID}\n1:cpu:/docker/{CONTAINER_ID}\n0::/docker/{CONTAINER_ID}\n"
            ),
            format!("0::/system.slice/docker-{CONTAINER_ID}.scope\n"),
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-{CONTAINER_ID}.scope\n"
            ),
        ];
        for (pid, layout) in (100..).zip(&layouts) {
            write_cgroup(dir.path(), pid, layout);
        }
        let attestor = DockerAttestor::new(config).unwrap();
        let expected = [
            "docker:label:org.example.app:sds".to_owned(),
            "docker:label:team:blue".to_owned(),
            "docker:env:FOO=bar".to_owned(),
            "docker:image_id:spire-rs-test:local".to_owned(),
            format!("docker:image_config_digest:{IMAGE_ID}"),
        ];
        for pid in 100..103 {
            let got = values(&attestor.attest(peer(pid)).await.unwrap());
            assert_eq!(got, expected, "layout {}", layouts[(pid - 100) as usize]);
        }
    }

    #[tokio::test]
    async fn a_process_in_no_container_gets_no_selectors() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Arc::new(Daemon::default());
        let config = serve(dir.path(), Arc::clone(&daemon));
        write_cgroup(
            dir.path(),
            9,
            "0::/user.slice/user-1000.slice/session-2.scope\n",
        );
        let attestor = DockerAttestor::new(config).unwrap();
        assert!(attestor.attest(peer(9)).await.unwrap().is_empty());
        assert_eq!(daemon.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_container_gone_during_attestation_is_retried_then_named() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Arc::new(Daemon {
            gone: true,
            ..Daemon::default()
        });
        let config = serve(dir.path(), Arc::clone(&daemon));
        write_cgroup(dir.path(), 11, &format!("0::/docker/{CONTAINER_ID}\n"));
        let attestor = DockerAttestor::new(config).unwrap();
        let err = attestor.attest(peer(11)).await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!("Error response from daemon: No such container: {CONTAINER_ID}")
        );
        assert_eq!(
            daemon.requests.load(Ordering::SeqCst),
            4,
            "one try and three retries"
        );
    }

    #[tokio::test]
    async fn docker_version_goes_in_the_path_and_an_absent_daemon_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = serve(dir.path(), Arc::default());
        config.docker_version = Some("1.41".to_owned());
        write_cgroup(dir.path(), 5, &format!("0::/docker/{CONTAINER_ID}\n"));
        let attestor = DockerAttestor::new(config.clone()).unwrap();
        assert_eq!(attestor.attest(peer(5)).await.unwrap().len(), 5);
        // A gone image costs only its digest selector.
        assert_eq!(attestor.image_config_digest("gone:latest").await, None);

        config.socket_path = dir.path().join("absent.sock");
        let attestor = DockerAttestor::new(config).unwrap();
        let err = attestor.attest(peer(5)).await.unwrap_err().to_string();
        assert!(err.contains("Cannot connect to the Docker daemon"), "{err}");
    }

    #[tokio::test]
    async fn legacy_cgroup_matchers_as_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = serve(dir.path(), Arc::default());
        let matchers = vec!["/docker/<id>".to_owned(), "/my.slice/*/<id>/*".to_owned()];
        config.container_id_cgroup_matchers = matchers.clone();
        write_cgroup(dir.path(), 3, &format!("0::/my.slice/x/{CONTAINER_ID}/y\n"));
        write_cgroup(dir.path(), 4, "1:cpu:/docker/aaa\n2:memory:/docker/bbb\n");
        let attestor = DockerAttestor::new(config).unwrap();
        assert_eq!(attestor.attest(peer(3)).await.unwrap().len(), 5);
        let err = attestor.attest(peer(4)).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "workloadattestor/docker: multiple container IDs found in cgroups (aaa, bbb)"
        );

        let refuse = |matchers: Vec<&str>, new_locator: Option<bool>| {
            DockerAttestorConfig::resolve(
                None,
                None,
                matchers.into_iter().map(str::to_owned).collect(),
                new_locator,
                false,
            )
            .unwrap_err()
        };
        assert!(
            refuse(vec!["/docker/<id>"], None)
                .1
                .contains("cannot both be used")
        );
        assert!(
            refuse(vec!["/docker/<id>", "/docker/*"], Some(false))
                .1
                .contains("must not be ambiguous")
        );
        assert!(
            refuse(vec!["/docker/*"], Some(false))
                .1
                .contains("exactly once")
        );
        let tcp = DockerAttestorConfig::resolve(
            Some("tcp://127.0.0.1:2375".to_owned()),
            None,
            Vec::new(),
            None,
            false,
        )
        .unwrap_err();
        assert_eq!(tcp.0, "docker_socket_path");
    }
}
