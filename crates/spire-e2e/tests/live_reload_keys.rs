//! Live reload of the server keys whose effect an operator sees elsewhere than in `config
//! reload`'s answer (spire-rs, beyond upstream), on the real binaries: a reloaded `log_file`
//! takes the next lines, a reloaded `ratelimit` block turns the per-IP limits off for the
//! next AttestAgent and NewJWTSVID (upstream's `rateLimit_*` counters stop), reloaded
//! `federates_with` relationships start and stop being refreshed, and a reloaded k8s_psat
//! `service_account_allow_list` admits an agent a real kube-apiserver vouches for. Each also
//! shows that a bad file changes nothing.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use spire_e2e::kube::{CLUSTER, KubeCluster, start_psat_server};
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, current_uid, eventually, free_port,
    server_config,
};

const TIMEOUT: Duration = Duration::from_secs(90);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Rewrites the config file at `path`, replacing `from` with `to`.
fn edit(path: &Path, from: &str, to: &str) {
    let text = read(path);
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// `spire-server config reload -output json` on `server`: the answer, or the failed output.
fn reload(server: &ServerProcess) -> Result<serde_json::Value, Output> {
    let out = server.cli(&["config", "reload", "-output", "json"]);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(out)
    }
}

/// The applied keys of a reload that must succeed.
fn reload_ok(server: &ServerProcess) -> Vec<String> {
    let answer = reload(server).unwrap_or_else(|out| {
        panic!(
            "config reload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        answer["restart_needed"],
        serde_json::json!([]),
        "nothing needs a restart: {answer}"
    );
    answer["applied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["key"].as_str().map(str::to_owned))
        .collect()
}

/// A reload that must fail and say that nothing changed; returns its error text.
fn reload_refused(server: &ServerProcess) -> String {
    let out = reload(server).err().unwrap_or_else(|| {
        panic!("the reload of a bad file succeeded");
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("nothing changed"), "{err}");
    err
}

#[test]
fn a_reloaded_log_file_takes_the_next_lines_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.log");
    let second = dir.path().join("second.log");
    let server = ServerProcess::start(
        dir.path(),
        &format!(
            "log_file = \"{}\"\n    audit_log_enabled = true",
            first.display()
        ),
    );
    server.cli_ok(&["entry", "count"]);
    eventually("audit lines in the first file", TIMEOUT, || {
        read(&first).contains("CountEntries")
    });

    edit(
        &server.config_path,
        &format!("log_file = \"{}\"", first.display()),
        &format!("log_file = \"{}\"", second.display()),
    );
    assert_eq!(reload_ok(&server), vec!["server.log_file"]);
    let first_after_reload = read(&first);
    server.cli_ok(&["bundle", "show"]);
    eventually("the next audit line in the second file", TIMEOUT, || {
        read(&second).contains("GetBundle")
    });
    // (`healthcheck` at start also calls GetBundle: compare with the file as it was.)
    assert_eq!(
        read(&first),
        first_after_reload,
        "the first file still gets lines"
    );

    // A log file that cannot be opened fails the reload; the log level beside it is not
    // applied and the lines keep going to the second file.
    edit(
        &server.config_path,
        &format!("log_file = \"{}\"", second.display()),
        &format!(
            "log_file = \"{}\"",
            dir.path().join("missing-dir/third.log").display()
        ),
    );
    edit(
        &server.config_path,
        "log_level = \"DEBUG\"",
        "log_level = \"ERROR\"",
    );
    let err = reload_refused(&server);
    assert!(err.contains("server.log_file"), "{err}");
    server.cli_ok(&["agent", "count"]);
    eventually("audit lines still in the second file", TIMEOUT, || {
        read(&second).contains("CountAgents")
    });
    let level = server.cli_json(&["logger", "get"]);
    assert_eq!(level["current_level"], "DEBUG", "{level}");
    assert!(!dir.path().join("missing-dir").exists());
    assert_eq!(
        read(&first),
        first_after_reload,
        "the first file got lines after the reload"
    );
}

#[test]
fn an_agents_reloaded_log_file_takes_the_next_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (first, second) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let admin = dir.path().join("admin.sock");
    let token = server.generate_join_token("");
    let agent = AgentProcess::start_with_agent_keys(
        &agent_dir,
        &server,
        Some(&token),
        &format!(
            "log_file = \"{}\"\n    admin_socket_path = \"{}\"",
            first.display(),
            admin.display()
        ),
    );
    let attested = "PID attested to have selectors";
    let _ = agent.cli(&["api", "fetch", "x509", "-timeout", "2s"]);
    eventually("the agent logs into the first file", TIMEOUT, || {
        read(&first).contains(attested)
    });
    let reload = |expect_ok: bool| {
        let out = std::process::Command::new(binary("spire-agent"))
            .args(["config", "reload", "-output", "json", "-socketPath"])
            .arg(&admin)
            .output()
            .unwrap();
        assert_eq!(out.status.success(), expect_ok, "{out:?}");
        out
    };

    // A file that cannot be opened changes nothing.
    edit(
        &agent.config_path,
        &format!("log_file = \"{}\"", first.display()),
        &format!(
            "log_file = \"{}\"",
            dir.path().join("missing-dir/agent.log").display()
        ),
    );
    let bad = reload(false);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("nothing changed"),
        "{bad:?}"
    );
    let lines = read(&first).matches(attested).count();
    let _ = agent.cli(&["api", "fetch", "x509", "-timeout", "2s"]);
    eventually("the agent still logs into the first file", TIMEOUT, || {
        read(&first).matches(attested).count() > lines
    });

    let text = read(&agent.config_path).replace(
        &dir.path()
            .join("missing-dir/agent.log")
            .display()
            .to_string(),
        &second.display().to_string(),
    );
    std::fs::write(&agent.config_path, text).unwrap();
    let applied: serde_json::Value = serde_json::from_slice(&reload(true).stdout).unwrap();
    assert_eq!(applied["applied"][0]["key"], "agent.log_file", "{applied}");
    let lines = read(&first).matches(attested).count();
    let _ = agent.cli(&["api", "fetch", "x509", "-timeout", "2s"]);
    eventually("the agent logs into the second file", TIMEOUT, || {
        read(&second).contains(attested)
    });
    assert_eq!(read(&first).matches(attested).count(), lines);
}

/// The sum of the samples of `name` (exactly, any labels) whose labels include `label`, in
/// the Prometheus exposition at 127.0.0.1:`port`.
fn counter(port: u16, name: &str, label: &str) -> f64 {
    let out = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const ATTEST_LIMIT: &str = "spire_server_rateLimit_agent_v1_agent_attest_agent";
const JWT_LIMIT: &str = "spire_server_rateLimit_svid_v1_svid_new_jwtsvid";
const ATTEST_CALLS: &str = "spire_server_rpc_agent_v1_agent_attest_agent";
const JWT_CALLS: &str = "spire_server_rpc_svid_v1_svid_new_jwtsvid";

/// Starts an agent of `server` in `dir/name` with a join token aliased to `alias`.
fn agent(dir: &Path, server: &ServerProcess, name: &str, alias: &str) -> AgentProcess {
    let token = server.generate_join_token(alias);
    let agent_dir = dir.join(name);
    std::fs::create_dir_all(&agent_dir).unwrap();
    AgentProcess::start(&agent_dir, server, Some(&token))
}

/// `spire-agent api fetch jwt -audience audience` through `agent` until it succeeds.
fn fetch_jwt(agent: &AgentProcess, audience: &str) {
    agent.cli_eventually(&["api", "fetch", "jwt", "-audience", audience], TIMEOUT);
}

#[test]
fn a_reloaded_ratelimit_block_turns_the_limits_off_for_the_next_calls() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let server = ServerProcess::start_on_free_port(dir.path(), |port| {
        let data_dir = dir.path().join("data");
        let socket = dir.path().join("api.sock");
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &format!("{}/datastore.sqlite3", data_dir.display()),
            extra_server_keys: "ratelimit {\n        attestation = true\n        signing = true\n    }",
        });
        let config = format!(
            "{config}\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {metrics}\n  }}\n}}\n"
        );
        let path = dir.path().join("server.conf");
        std::fs::write(&path, config).unwrap();
        (path, socket)
    });

    // Limits on: the first agent's attestation and its workload's JWT-SVID go through them.
    let first = agent(
        dir.path(),
        &server,
        "first",
        "spiffe://example.org/node/first",
    );
    server.create_uid_entry(
        "spiffe://example.org/node/first",
        "spiffe://example.org/first",
        current_uid(),
        &[],
    );
    fetch_jwt(&first, "before");
    eventually("the limiters count the first calls", TIMEOUT, || {
        counter(metrics, ATTEST_LIMIT, "status=\"OK\"") >= 1.0
            && counter(metrics, JWT_LIMIT, "status=\"OK\"") >= 1.0
    });

    // A bad block changes nothing.
    edit(
        &server.config_path,
        "attestation = true",
        "attestation = \"sometimes\"",
    );
    let err = reload_refused(&server);
    assert!(err.contains("attestation"), "{err}");
    edit(
        &server.config_path,
        "attestation = \"sometimes\"",
        "attestation = true",
    );
    let limited_jwts = counter(metrics, JWT_LIMIT, "status=\"OK\"");
    fetch_jwt(&first, "still-limited");
    eventually("the signing limit still counts", TIMEOUT, || {
        counter(metrics, JWT_LIMIT, "status=\"OK\"") > limited_jwts
    });

    // Both limits off by a reload: the next attestation and JWT-SVID are served without them.
    edit(
        &server.config_path,
        "attestation = true",
        "attestation = false",
    );
    edit(&server.config_path, "signing = true", "signing = false");
    assert_eq!(
        reload_ok(&server),
        vec!["server.ratelimit.attestation", "server.ratelimit.signing"]
    );
    let limited_attestations = counter(metrics, ATTEST_LIMIT, "status=\"OK\"");
    let limited_jwts = counter(metrics, JWT_LIMIT, "status=\"OK\"");
    let jwt_calls = counter(metrics, JWT_CALLS, "status=\"OK\"");
    let attest_calls = counter(metrics, ATTEST_CALLS, "status=\"OK\"");
    let second = agent(
        dir.path(),
        &server,
        "second",
        "spiffe://example.org/node/second",
    );
    fetch_jwt(&first, "after");
    eventually("the calls after the reload are counted", TIMEOUT, || {
        counter(metrics, JWT_CALLS, "status=\"OK\"") > jwt_calls
            && counter(metrics, ATTEST_CALLS, "status=\"OK\"") > attest_calls
    });
    assert_eq!(
        counter(metrics, ATTEST_LIMIT, "status=\"OK\""),
        limited_attestations,
        "the attestation limit still applies"
    );
    assert_eq!(
        counter(metrics, JWT_LIMIT, "status=\"OK\""),
        limited_jwts,
        "the signing limit still applies"
    );
    drop(second);
}

/// A server of trust domain `name` in `root/name` with an `https_spiffe` bundle endpoint;
/// returns it and the endpoint's URL.
fn domain_server(root: &Path, name: &str, extra: &str) -> (ServerProcess, String) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let bundle_port = free_port();
    let keys = format!(
        "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {bundle_port}\n \
         profile \"https_spiffe\" {{}}\n }}\n }}\n {extra}"
    );
    let server = ServerProcess::start_on_free_port(&dir, |port| {
        let data_dir = dir.join("data");
        let socket = dir.join("api.sock");
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &format!("{}/datastore.sqlite3", data_dir.display()),
            extra_server_keys: &keys,
        })
        .replace(
            "trust_domain = \"example.org\"",
            &format!("trust_domain = \"{name}\""),
        );
        let path = dir.join("server.conf");
        std::fs::write(&path, config).unwrap();
        (path, socket)
    });
    (server, format!("https://127.0.0.1:{bundle_port}"))
}

/// `federation refresh -id b.test` on `server`: `Ok` or its error text.
fn refresh(server: &ServerProcess) -> Result<(), String> {
    let out = server.cli(&["federation", "refresh", "-id", "b.test"]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn reloaded_federates_with_relationships_start_and_stop_being_refreshed() {
    let root = tempfile::tempdir().unwrap();
    let (b, b_url) = domain_server(root.path(), "b.test", "");
    let (a, _) = domain_server(root.path(), "a.test", "");
    let b_bundle = root.path().join("b.bundle.json");
    std::fs::write(
        &b_bundle,
        b.cli_ok(&["bundle", "show", "-format", "spiffe"]),
    )
    .unwrap();
    a.cli_ok(&[
        "bundle",
        "set",
        "-format",
        "spiffe",
        "-id",
        "spiffe://b.test",
        "-path",
        b_bundle.to_str().unwrap(),
    ]);
    let err = refresh(&a).unwrap_err();
    assert!(err.contains("there is no federation relationship"), "{err}");

    // Added by a reload: refreshed from b's endpoint.
    let federates_with = format!(
        "federates_with \"b.test\" {{\n bundle_endpoint_url = \"{b_url}\"\n \
         bundle_endpoint_profile \"https_spiffe\" {{\n endpoint_spiffe_id = \
         \"spiffe://b.test/spire/server\"\n }}\n }}\n"
    );
    edit(
        &a.config_path,
        "profile \"https_spiffe\" {}\n }\n",
        &format!("profile \"https_spiffe\" {{}}\n }}\n {federates_with}"),
    );
    assert_eq!(reload_ok(&a), vec!["server.federation.federates_with"]);
    eventually("a refreshes b's bundle from b's endpoint", TIMEOUT, || {
        refresh(&a).is_ok()
    });
    eventually("a logs that it manages b.test", TIMEOUT, || {
        a.log().contains("b.test")
    });

    // A bad relationship changes nothing: b stays refreshed.
    let good = read(&a.config_path);
    std::fs::write(&a.config_path, good.replace(&b_url, "ftp://127.0.0.1:1")).unwrap();
    let err = reload_refused(&a);
    assert!(err.contains("bundle_endpoint_url"), "{err}");
    refresh(&a).unwrap_or_else(|e| panic!("the bad reload dropped b.test: {e}"));

    // Removed by a reload: no longer a relationship. `federation list` shows the
    // relationships of the datastore, as upstream's, never the file's.
    std::fs::write(&a.config_path, good.replace(&federates_with, "")).unwrap();
    assert_eq!(reload_ok(&a), vec!["server.federation.federates_with"]);
    eventually("b.test is no longer a relationship", TIMEOUT, || {
        refresh(&a).is_err_and(|e| e.contains("there is no federation relationship"))
    });
    let listed = a.cli_json(&["federation", "list"]);
    assert_eq!(
        listed["federation_relationships"],
        serde_json::json!([]),
        "{listed}"
    );
}

/// Writes an agent config in `dir` attesting with `k8s_psat` (its token at `token_path`) to
/// `server`, and runs it to the end of its first attestation: the log when it is refused,
/// `None` when the agent attested and runs (it is then stopped).
fn psat_attestation(dir: &Path, server: &ServerProcess, token: &str) -> Option<String> {
    std::fs::create_dir_all(dir).unwrap();
    let token_path = dir.join("token");
    std::fs::write(&token_path, token).unwrap();
    let socket = dir.join("agent.sock");
    let config_path = dir.join("agent.conf");
    std::fs::write(
        &config_path,
        format!(
            r#"agent {{
    data_dir = "{data}"
    log_level = "DEBUG"
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "{port}"
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
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
            data = dir.join("data").display(),
            port = server.port,
            socket = socket.display(),
            token = token_path.display(),
        ),
    )
    .unwrap();
    let log_path = dir.join("agent.log");
    let mut command = std::process::Command::new(binary("spire-agent"));
    command
        .args(["run", "-config"])
        .arg(&config_path)
        .arg("-retryBootstrap=false");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = command
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(read(&log_path));
        }
        if socket.exists() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent neither attested nor failed:\n{}",
            read(&log_path)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn not_allowed(log: &str) -> bool {
    log.contains("\"demo:intruder\" is not an allowed service account")
        || log.contains("\\\"demo:intruder\\\" is not an allowed service account")
}

#[test]
fn a_reloaded_k8s_psat_allow_list_admits_a_service_account_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = KubeCluster::start(&dir.path().join("k8s"));
    for (kind, body) in [
        (
            "namespaces",
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
        ),
        (
            "nodes",
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
        ),
    ] {
        cluster.create(kind, body);
    }
    cluster.create(
        "namespaces/demo/serviceaccounts",
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "intruder"}}),
    );
    cluster.create(
        "namespaces/demo/pods",
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "intruder-0"},
            "spec": {"nodeName": "node-1", "serviceAccountName": "intruder",
                "containers": [{"name": "c", "image": "busybox:1.37"}]}}),
    );
    let token = cluster.pod_token("demo", "intruder", "intruder-0", "spire-server");
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = start_psat_server(&server_dir, &cluster.kubeconfig, "", "");
    let log = psat_attestation(&dir.path().join("refused"), &server, &token)
        .expect("demo:intruder is not in the allow list yet");
    assert!(not_allowed(&log), "{log}");

    // A bad clusters block (no allow list) changes nothing: still refused.
    let allow = "service_account_allow_list = [\"spire:spire-agent\"]";
    edit(&server.config_path, allow, "");
    let err = reload_refused(&server);
    assert!(err.contains("service_account_allow_list"), "{err}");
    let log = psat_attestation(&dir.path().join("still-refused"), &server, &token)
        .expect("the bad reload admitted demo:intruder");
    assert!(not_allowed(&log), "{log}");

    // The service account added by a reload: the agent attests.
    let config = read(&server.config_path);
    std::fs::write(
        &server.config_path,
        config.replacen(
            "clusters = {\n                \"test-cluster\" = {\n",
            "clusters = {\n                \"test-cluster\" = {\n service_account_allow_list = [\"spire:spire-agent\", \"demo:intruder\"]\n",
            1,
        ),
    )
    .unwrap();
    let applied = reload_ok(&server);
    assert_eq!(
        applied,
        vec![
            "plugins.NodeAttestor.k8s_psat.plugin_data.clusters.test-cluster.service_account_allow_list"
        ]
    );
    if let Some(log) = psat_attestation(&dir.path().join("admitted"), &server, &token) {
        panic!("the reloaded allow list refused demo:intruder:\n{log}");
    }
    let node_uid = cluster.node_uid("node-1");
    let agent_id = format!("spiffe://example.org/spire/agent/k8s_psat/{CLUSTER}/{node_uid}");
    assert!(
        server.agent_ids().contains(&agent_id),
        "{:?}",
        server.agent_ids()
    );
}
