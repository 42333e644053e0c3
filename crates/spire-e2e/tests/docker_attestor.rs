//! The `docker` workload attestor against a real Docker Engine (Debian's docker.io, named by
//! `DOCKERD` and `DOCKER` from `scripts/docker-deps.sh`), with upstream v1.13.3's agent beside
//! ours: the test starts its own `dockerd` on a private socket and data root, imports a small
//! image made from our `spire-agent` binary and its libraries (`docker import`, no
//! registry), and runs `spire-agent api fetch x509` in a container labelled `team=blue` with
//! `FOO=bar`, against each agent's socket. Entries select on `docker:label`, `docker:env`,
//! `docker:image_id` (both agents) and `docker:image_config_digest` (ours; upstream added it
//! in v1.14). A process outside any container gets none of them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spire_e2e::{AgentProcess, ServerProcess, binary, interop_program};

const NODE: &str = "spiffe://example.org/node";
const IMAGE: &str = "spire-rs-test:local";
const WAIT: Duration = Duration::from_secs(120);

/// A private Docker Engine, stopped (with its containers) when dropped.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(interop_program("DOCKERD"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn dockerd (apt-get install docker.io): {e}"));
        let mut dockerd = Self { child, socket, log };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = dockerd.child.try_wait() {
                panic!(
                    "dockerd exited with {status}; it cannot run here:\n{}",
                    std::fs::read_to_string(&dockerd.log).unwrap_or_default()
                );
            }
            if dockerd.docker(&["version"]).status.success() {
                return dockerd;
            }
            assert!(
                start.elapsed() < WAIT,
                "dockerd did not answer within {WAIT:?}:\n{}",
                std::fs::read_to_string(&dockerd.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(interop_program("DOCKER"));
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        command
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("run docker {args:?}: {e}"))
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = spire_e2e::send_signal(self.child.id(), spire_e2e::Signal::TERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root filesystem holding our `spire-agent` (for `api fetch x509`) and the libraries it
/// loads, as a tar stream for `docker import`.
fn image_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let agent = binary("spire-agent");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(&agent, &root.join("spire-agent"));
    let ldd = Command::new("ldd").arg(&agent).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let path = Path::new(lib);
        copy(path, &root.join(path.strip_prefix("/").unwrap()));
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tar
}

/// Runs the image's `spire-agent api fetch x509` against the agent socket in `agent_dir`
/// until it prints `want` (the agents sync entries every few seconds); returns what it
/// printed.
fn fetch_in_container(docker: &Dockerd, agent_dir: &Path, want: &str) -> String {
    let volume = format!("{}:/agent", agent_dir.display());
    let start = Instant::now();
    loop {
        let out = docker.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-e",
            "FOO=bar",
            "-l",
            "team=blue",
            "-v",
            &volume,
            IMAGE,
            "/spire-agent",
            "api",
            "fetch",
            "x509",
            "-socketPath",
            "/agent/agent.sock",
        ]);
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        if printed.contains(want) {
            return printed;
        }
        assert!(
            start.elapsed() < WAIT,
            "the container never got {want}: {printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn docker_selectors_from_a_real_engine_match_upstreams() {
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    // A short path: the daemon's sockets must fit in sun_path, and tmpfs takes overlayfs.
    let dir = tempfile::Builder::new()
        .prefix("dk")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .unwrap();
    let docker = Dockerd::start(dir.path());
    let tar = image_tar(dir.path());
    docker.docker_ok(&[
        "import",
        "-c",
        "LABEL org.example.app=sds",
        tar.to_str().unwrap(),
        IMAGE,
    ]);
    let image_id = docker
        .docker_ok(&["image", "inspect", "-f", "{{.Id}}", IMAGE])
        .trim()
        .to_owned();

    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    let entries = [
        ("by-label", "docker:label:team:blue".to_owned()),
        (
            "by-image-label",
            "docker:label:org.example.app:sds".to_owned(),
        ),
        ("by-env", "docker:env:FOO=bar".to_owned()),
        ("by-image", format!("docker:image_id:{IMAGE}")),
        (
            "by-digest",
            format!("docker:image_config_digest:{image_id}"),
        ),
    ];
    for (name, selector) in &entries {
        server.create_entry(&[
            "-parentID",
            NODE,
            "-spiffeID",
            &format!("spiffe://example.org/{name}"),
            "-selector",
            selector,
        ]);
    }

    let plugin = format!(
        "WorkloadAttestor \"docker\" {{\n        plugin_data {{\n            docker_socket_path = \"unix://{}\"\n        }}\n    }}\n",
        docker.socket.display()
    );
    let start_agent = |name: &str, program: &Path| {
        let agent_dir = dir.path().join(name);
        std::fs::create_dir(&agent_dir).unwrap();
        let token = server.generate_join_token(NODE);
        let (config, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("plugins {\n", &format!("plugins {{\n    {plugin}"));
        std::fs::write(&config, text).unwrap();
        let agent = AgentProcess::start_program_with_config(
            program,
            &agent_dir,
            &config,
            socket,
            Some(&token),
        );
        (agent, agent_dir)
    };
    let (ours, ours_dir) = start_agent("ours", &binary("spire-agent"));
    let (upstream, upstream_dir) = start_agent("upstream", &upstream_agent);

    let report = |printed: &str| -> Vec<String> {
        let mut ids: Vec<String> = entries
            .iter()
            .map(|(name, _)| format!("spiffe://example.org/{name}"))
            .filter(|id| {
                printed.contains(&format!("SPIFFE ID:\t\t{id}\n"))
                    || printed.contains(&format!("{id}\n"))
            })
            .collect();
        ids.sort();
        ids
    };
    let ours_printed = fetch_in_container(&docker, &ours_dir, "spiffe://example.org/by-digest");
    let upstream_printed =
        fetch_in_container(&docker, &upstream_dir, "spiffe://example.org/by-image");
    let mut expected_upstream: Vec<String> = ["by-env", "by-image", "by-image-label", "by-label"]
        .iter()
        .map(|n| format!("spiffe://example.org/{n}"))
        .collect();
    expected_upstream.sort();
    assert_eq!(
        report(&upstream_printed),
        expected_upstream,
        "{upstream_printed}"
    );
    let mut expected_ours = expected_upstream.clone();
    expected_ours.push("spiffe://example.org/by-digest".to_owned());
    expected_ours.sort();
    assert_eq!(
        report(&ours_printed),
        expected_ours,
        "{ours_printed}\n{}",
        ours.log()
    );

    // Outside any container the docker attestor adds nothing: no identity.
    let outside = ours.cli(&["api", "fetch", "x509"]);
    assert!(!outside.status.success(), "{outside:?}");
    drop(upstream);
}
