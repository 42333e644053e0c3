//! Envoy SDS v3 on the agent's socket, compared with upstream's agent: one of our servers,
//! our agent and upstream v1.13.3's agent attested to it under the same alias, so both serve
//! the same entry and the same bundles. The client is `conformance/sds` (go-control-plane's
//! envoy module v1.40.0, built by `scripts/sds-deps.sh`, named by `SDS_CLIENT`), which drives
//! SDS as Envoy does and prints what it gets normalised (certificates by SANs or CA
//! fingerprint, keys by algorithm and match, nonces by shape): every answer of our agent must
//! equal upstream's field by field.
//!
//! Covered: a stream asking for `default` and `ROOTCA` that ACKs, gets the rotation pushed
//! after an entry change, NACKs it, sends a stale nonce (ignored) and narrows its names
//! (answered); FetchSecrets by default names, SPIFFE ID, trust domain IDs, `ALL` and no name;
//! the validation context for Envoy 1.17 (`trusted_ca`) and 1.18+ (SPIFFE validator) and the
//! node metadata override; unknown names on fetch and stream; DeltaSecrets; a request that
//! does not decode; a stream that never ACKs, after which both agents still serve.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use spire_e2e::{AgentProcess, ServerProcess, current_uid, interop_program};

/// The agents' alias: the workload entry names it as its parent.
const NODE: &str = "spiffe://example.org/node";
const WORKLOAD: &str = "spiffe://example.org/workload";
const FEDERATED: &str = "spiffe://other.org";

/// How long an agent may take to serve the workload, or to push a changed entry.
const WAIT: Duration = Duration::from_secs(120);

struct Setup {
    server: ServerProcess,
    ours: AgentProcess,
    upstream: AgentProcess,
    entry_id: String,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Self {
        let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
        let dir = tempfile::tempdir().unwrap();
        let server_dir = dir.path().join("server");
        std::fs::create_dir(&server_dir).unwrap();
        let server = ServerProcess::start(&server_dir, "");

        // A federated trust domain, so ALL and trust domain names have two bundles.
        let other = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other_pem = params.self_signed(&other).unwrap().pem();
        let other_path = dir.path().join("other.pem");
        std::fs::write(&other_path, other_pem).unwrap();
        server.cli_ok(&[
            "bundle",
            "set",
            "-id",
            FEDERATED,
            "-path",
            other_path.to_str().unwrap(),
        ]);
        let entry_id = server.create_uid_entry(
            NODE,
            WORKLOAD,
            current_uid(),
            &["-federatesWith", FEDERATED, "-dns", "before.example.org"],
        );

        let start_agent = |name: &str, program: &Path| {
            let agent_dir = dir.path().join(name);
            std::fs::create_dir(&agent_dir).unwrap();
            let token = server.generate_join_token(NODE);
            let (config, socket) = AgentProcess::write_config(&agent_dir, server.port, "");
            AgentProcess::start_program_with_config(
                program,
                &agent_dir,
                &config,
                socket,
                Some(&token),
            )
        };
        let ours = start_agent("ours", &spire_e2e::binary("spire-agent"));
        let upstream = start_agent("upstream", &upstream_agent);
        let setup = Self {
            server,
            ours,
            upstream,
            entry_id,
            _dir: dir,
        };
        for agent in [&setup.ours, &setup.upstream] {
            let fetched = agent.cli_eventually(&["api", "fetch", "x509"], WAIT);
            assert!(fetched.contains(WORKLOAD), "{fetched}");
        }
        setup
    }

    /// Changes the entry's DNS name: both agents mint a new SVID and push it.
    fn change_entry(&self) {
        let selector = format!("unix:uid:{}", current_uid());
        self.server.cli_ok(&[
            "entry",
            "update",
            "-entryID",
            &self.entry_id,
            "-parentID",
            NODE,
            "-spiffeID",
            WORKLOAD,
            "-selector",
            &selector,
            "-federatesWith",
            FEDERATED,
            "-dns",
            "after.example.org",
        ]);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== server log ====\n{}\n==== our agent log ====\n{}\n==== upstream agent log ====\n{}",
                self.server.log(),
                self.ours.log(),
                self.upstream.log()
            );
        }
    }
}

fn client_command(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(interop_program("SDS_CLIENT"));
    command.arg("-socket").arg(socket).args(args);
    command
}

/// Runs the client to its end; its JSON lines.
fn run_client(socket: &Path, args: &[&str]) -> Vec<Value> {
    let output = client_command(socket, args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run sds-client: {e}"));
    assert!(
        output.status.success(),
        "sds-client {args:?} failed: {}",
        output.status
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Runs the same client scenario against both agents and checks the answers are equal.
fn same_answer(setup: &Setup, args: &[&str]) -> Vec<Value> {
    let ours = run_client(&setup.ours.socket_path, args);
    let upstream = run_client(&setup.upstream.socket_path, args);
    assert_eq!(
        ours,
        upstream,
        "sds-client {args:?}: ours (left) and upstream's (right) differ\nours: {}\nupstream: {}",
        serde_json::to_string_pretty(&ours).unwrap(),
        serde_json::to_string_pretty(&upstream).unwrap()
    );
    ours
}

/// The secrets of the first response line.
fn secrets(lines: &[Value]) -> Vec<Value> {
    let response = lines
        .iter()
        .find(|l| l["event"] == "response")
        .unwrap_or_else(|| panic!("no response in {lines:?}"));
    response["response"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["secret"].clone())
        .collect()
}

fn error_of(lines: &[Value]) -> (String, String) {
    let error = lines
        .iter()
        .find(|l| l["event"] == "error")
        .unwrap_or_else(|| panic!("no error in {lines:?}"));
    (
        error["code"].as_str().unwrap().to_owned(),
        error["message"].as_str().unwrap().to_owned(),
    )
}

/// A stream scenario run on one agent in the background: lines arrive on a channel.
fn spawn_stream(socket: PathBuf, args: Vec<String>) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    let mut child = client_command(
        &socket,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
            if tx.send(value).is_err() {
                break;
            }
        }
        let _ = child.wait();
    });
    rx
}

fn next_line(rx: &mpsc::Receiver<Value>, who: &str) -> Value {
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{who}'s sds-client said nothing more: {e}"))
}

/// Versions are counters of workload updates: the first must be 1 on both agents; later
/// ones may count intermediate updates differently, so only their order is compared.
fn normalise_versions(lines: &mut [Value]) {
    let mut last = 0u64;
    for line in lines.iter_mut() {
        let Some(version) = line["response"]["version_info"].as_str() else {
            continue;
        };
        let number: u64 = version
            .parse()
            .unwrap_or_else(|_| panic!("version {version:?}"));
        assert!(number >= last, "version went back: {lines:?}");
        if line["event"] != "response" {
            line["response"]["version_info"] = Value::from("<later>");
        }
        last = number;
    }
}

#[test]
fn sds_answers_as_upstreams_agent() {
    let setup = Setup::start();

    // The stream, on both agents at once: ACK, the pushed rotation, NACK, stale nonce,
    // narrowed names.
    let args: Vec<String> = [
        "-scenario",
        "stream",
        "-names",
        "default,ROOTCA",
        "-envoy-version",
        "1.30.2",
    ]
    .map(String::from)
    .to_vec();
    let ours_rx = spawn_stream(setup.ours.socket_path.clone(), args.clone());
    let upstream_rx = spawn_stream(setup.upstream.socket_path.clone(), args);
    let mut ours = Vec::new();
    let mut upstream = Vec::new();
    for (rx, lines, who) in [
        (&ours_rx, &mut ours, "our agent"),
        (&upstream_rx, &mut upstream, "upstream"),
    ] {
        loop {
            let line = next_line(rx, who);
            let acked = line["event"] == "acked";
            lines.push(line);
            if acked {
                break;
            }
        }
    }
    setup.change_entry();
    for (rx, lines, who) in [
        (&ours_rx, &mut ours, "our agent"),
        (&upstream_rx, &mut upstream, "upstream"),
    ] {
        loop {
            let line = next_line(rx, who);
            let done = line["event"] == "closed" || line["event"] == "error";
            lines.push(line);
            if done {
                break;
            }
        }
    }
    normalise_versions(&mut ours);
    normalise_versions(&mut upstream);
    assert_eq!(
        ours,
        upstream,
        "stream: ours (left) and upstream's (right) differ\nours: {}\nupstream: {}",
        serde_json::to_string_pretty(&ours).unwrap(),
        serde_json::to_string_pretty(&upstream).unwrap()
    );
    let events: Vec<&str> = ours.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "response", "acked", "pushed", "nacked", "narrowed", "closed"
        ],
        "{ours:?}"
    );
    assert_eq!(ours[0]["response"]["version_info"], "1");
    let first = ours[0]["response"].to_string();
    assert!(
        first.contains("before.example.org") && first.contains("custom_validator_config"),
        "{first}"
    );
    let pushed = ours[2]["response"].to_string();
    assert!(pushed.contains("after.example.org"), "{pushed}");
    assert_eq!(
        ours[4]["response"]["resources"].as_array().unwrap().len(),
        1
    );

    // FetchSecrets by default names on an Envoy 1.17 (trusted_ca) and a newer one (the
    // SPIFFE validator), the metadata override, IDs, ALL and every resource.
    let old = same_answer(&setup, &["-scenario", "fetch", "-envoy-version", "1.17.0"]);
    let old = secrets(&old);
    assert_eq!(old.len(), 2, "{old:?}");
    assert_eq!(old[0]["name"], "ROOTCA");
    assert!(
        old[0]["validation_context"]["trusted_ca"].is_object(),
        "{old:?}"
    );
    assert_eq!(old[1]["name"], "default");
    assert_eq!(
        old[1]["tls_certificate"]["private_key"]["inline_bytes"][0]["matches_leaf"], true,
        "{old:?}"
    );
    let new = secrets(&same_answer(
        &setup,
        &["-scenario", "fetch", "-envoy-version", "1.18.0"],
    ));
    assert!(
        new[0]["validation_context"]["custom_validator_config"].is_object(),
        "{new:?}"
    );
    let overridden = secrets(&same_answer(
        &setup,
        &[
            "-scenario",
            "fetch",
            "-envoy-version",
            "1.18.0",
            "-metadata-disable",
            "true",
        ],
    ));
    assert!(
        overridden[0]["validation_context"]["trusted_ca"].is_object(),
        "{overridden:?}"
    );
    same_answer(
        &setup,
        &["-scenario", "fetch", "-metadata-disable", "not-a-bool"],
    );
    let all = secrets(&same_answer(
        &setup,
        &["-scenario", "fetch", "-names", "ALL"],
    ));
    assert_eq!(all.len(), 1, "{all:?}");
    let by_id = secrets(&same_answer(
        &setup,
        &[
            "-scenario",
            "fetch",
            "-names",
            &format!("{WORKLOAD},spiffe://example.org,{FEDERATED}"),
        ],
    ));
    assert_eq!(by_id.len(), 3, "{by_id:?}");
    let every = secrets(&same_answer(&setup, &["-scenario", "fetch", "-names", ""]));
    assert_eq!(every.len(), 3, "{every:?}");
    same_answer(&setup, &["-scenario", "fetch", "-names", ",default"]);

    // Refusals, with upstream's codes and messages.
    let all_old = error_of(&same_answer(
        &setup,
        &[
            "-scenario",
            "fetch",
            "-names",
            "ALL",
            "-envoy-version",
            "1.17.0",
        ],
    ));
    assert_eq!(all_old.0, "Internal", "{all_old:?}");
    let unknown = error_of(&same_answer(
        &setup,
        &[
            "-scenario",
            "fetch",
            "-names",
            "default,nope,spiffe://example.org/other",
        ],
    ));
    assert_eq!(unknown.0, "InvalidArgument", "{unknown:?}");
    // The own bundle by ID and by ROOTCA at once: upstream serves one of the two and refuses.
    same_answer(
        &setup,
        &[
            "-scenario",
            "fetch",
            "-names",
            "spiffe://example.org,ROOTCA",
        ],
    );
    let streamed = error_of(&same_answer(
        &setup,
        &["-scenario", "stream", "-names", "nope"],
    ));
    assert_eq!(streamed.0, "InvalidArgument", "{streamed:?}");
    let delta = error_of(&same_answer(&setup, &["-scenario", "delta"]));
    assert_eq!(
        delta,
        (
            "Unimplemented".to_owned(),
            "Method is not implemented".to_owned()
        )
    );
    // A request that does not decode: the same code (the messages are each gRPC library's).
    let ours_garbage = error_of(&run_client(
        &setup.ours.socket_path,
        &["-scenario", "garbage"],
    ));
    let upstream_garbage = error_of(&run_client(
        &setup.upstream.socket_path,
        &["-scenario", "garbage"],
    ));
    assert_eq!(
        ours_garbage.0, upstream_garbage.0,
        "{ours_garbage:?} vs {upstream_garbage:?}"
    );

    // A stream that never ACKs gets nothing more and does not stop the agent serving.
    let held = same_answer(&setup, &["-scenario", "noack", "-hold", "3s"]);
    assert_eq!(held.last().unwrap()["extra_responses"], 0, "{held:?}");
    same_answer(&setup, &["-scenario", "fetch"]);
}
