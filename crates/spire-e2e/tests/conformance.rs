//! Conformance of our agent's SPIFFE Workload API with clients we did not write: py-spiffe
//! (PyPI `spiffe`, tests in `conformance/python`) and go-spiffe v2 (tests in
//! `conformance/go`). Both run against one live server and agent, with the current uid
//! registered under two SPIFFE IDs (one with a hint and a DNS name).
//!
//! Needs `scripts/conformance-deps.sh` to have been run (the Python venv in
//! `target/conformance-venv`, the go-spiffe module in the Go module cache). The go-spiffe part
//! is skipped when there is no `go` on PATH.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use spire_e2e::{AgentProcess, ServerProcess};

const TRUST_DOMAIN: &str = "example.org";
const AGENT_ID: &str = "spiffe://example.org/conformance-agent";
const SPIFFE_ID: &str = "spiffe://example.org/conformance/main";
const HINT: &str = "main";
const DNS_NAME: &str = "main.conformance.example.org";
const SECOND_SPIFFE_ID: &str = "spiffe://example.org/conformance/second";
const SECOND_HINT: &str = "second";
/// How long one suite may run before it is killed as hung.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn current_uid() -> String {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Starts a server and an agent in `dir`, registers the current uid under two SPIFFE IDs and
/// waits until the agent serves both.
fn start(dir: &Path) -> (ServerProcess, AgentProcess) {
    let server = ServerProcess::start(dir, "");
    let token = server.cli_ok(&["token", "generate", "-spiffeID", AGENT_ID]);
    let token = token.trim().strip_prefix("Token: ").unwrap().to_owned();
    let agent = AgentProcess::start(dir, &server, Some(&token));
    agent.cli_eventually(&["healthcheck"], Duration::from_secs(30));

    let selector = format!("unix:uid:{}", current_uid());
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        AGENT_ID,
        "-spiffeID",
        SPIFFE_ID,
        "-selector",
        &selector,
        "-hint",
        HINT,
        "-dns",
        DNS_NAME,
    ]);
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        AGENT_ID,
        "-spiffeID",
        SECOND_SPIFFE_ID,
        "-selector",
        &selector,
        "-hint",
        SECOND_HINT,
    ]);

    let start = Instant::now();
    loop {
        let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(30));
        if fetched.contains(SPIFFE_ID) && fetched.contains(SECOND_SPIFFE_ID) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent never served both entries; last fetch:\n{fetched}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    (server, agent)
}

/// Runs `command` with the Workload API environment of the conformance suites, returning its
/// output and wall time. Its output goes to `<name>.stdout` / `<name>.stderr` in `dir` (no
/// pipe to fill up while we wait); after [`SUITE_TIMEOUT`] it is killed, with whatever it
/// started (`go test` runs a test binary), and the test fails.
fn run_suite(
    mut command: Command,
    agent: &AgentProcess,
    dir: &Path,
    name: &str,
) -> (Output, Duration) {
    command
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", agent.socket_path.display()),
        )
        .env("CONFORMANCE_TRUST_DOMAIN", TRUST_DOMAIN)
        .env("CONFORMANCE_SPIFFE_ID", SPIFFE_ID)
        .env("CONFORMANCE_HINT", HINT)
        .env("CONFORMANCE_DNS_NAME", DNS_NAME)
        .env("CONFORMANCE_SECOND_SPIFFE_ID", SECOND_SPIFFE_ID)
        .env("CONFORMANCE_SECOND_HINT", SECOND_HINT);
    let stdout_path = dir.join(format!("{name}.stdout"));
    let stderr_path = dir.join(format!("{name}.stderr"));
    let create = |path: &Path| {
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
    };
    let start = Instant::now();
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(create(&stdout_path))
        .stderr(create(&stderr_path))
        .spawn()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let read = |path: &Path| std::fs::read(path).unwrap_or_default();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {command:?}: {e}"))
        {
            break status;
        }
        if start.elapsed() > SUITE_TIMEOUT {
            // The child leads a process group of its own (process_group(0) above).
            if let Some(group) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} still ran after {SUITE_TIMEOUT:?} and was killed\n--- stdout ---\n{}\n\
                 --- stderr ---\n{}\nagent log:\n{}",
                String::from_utf8_lossy(&read(&stdout_path)),
                String::from_utf8_lossy(&read(&stderr_path)),
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = Output {
        status,
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    };
    (out, start.elapsed())
}

/// The outcome of one suite, as text for the final report.
fn describe(name: &str, out: &Output, took: Duration) -> String {
    format!(
        "{name}: {} in {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        took.as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether a `go` binary can be run.
fn go_available() -> bool {
    Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn py_spiffe_and_go_spiffe_get_identities_and_bundles_from_the_agent() {
    let root = workspace_root();
    let python = root.join("target/conformance-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/conformance-deps.sh to install py-spiffe and pytest",
        python.display()
    );
    let go = go_available();

    let dir = tempfile::tempdir().unwrap();
    let (_server, agent) = start(dir.path());
    let mut failures = Vec::new();

    let mut pytest = Command::new(&python);
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("conformance/python"))
        .current_dir(&root);
    let (out, took) = run_suite(pytest, &agent, dir.path(), "pytest");
    let report = describe("py-spiffe (pytest)", &out, took);
    eprintln!("{report}");
    if !out.status.success() {
        if String::from_utf8_lossy(&out.stderr).contains("No module named pytest") {
            panic!(
                "pytest is missing from {}: run scripts/conformance-deps.sh",
                python.display()
            );
        }
        failures.push(report);
    }

    if go {
        let mut go_test = Command::new("go");
        // GOPROXY=off: never the network; scripts/conformance-deps.sh fills the module cache.
        go_test
            .args(["test", "-count=1", "-v", "./..."])
            .current_dir(root.join("conformance/go"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local");
        let (out, took) = run_suite(go_test, &agent, dir.path(), "go-test");
        let report = describe("go-spiffe (go test)", &out, took);
        eprintln!("{report}");
        if !out.status.success() {
            failures.push(format!(
                "{report}\n(if modules are missing, run scripts/conformance-deps.sh)"
            ));
        }
    } else {
        eprintln!("go not found; skipping go-spiffe conformance");
    }

    assert!(
        failures.is_empty(),
        "{}\nagent log:\n{}",
        failures.join("\n\n"),
        agent.log()
    );
}
