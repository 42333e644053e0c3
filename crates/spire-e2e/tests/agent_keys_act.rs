//! Agent keys whose effect a workload sees, on the real binaries: two agents of one server,
//! one with `workload_x509_svid_key_type = "rsa-2048"`, `allowed_foreign_jwt_claims`,
//! `jwt_svid_cache_max_size = 1` and its own SDS resource names, one with the defaults.
//! The workload's key is RSA-2048 against EC P-256 (read by openssl); a foreign JWT-SVID's
//! `iat` survives validation only where it is allowed; a token evicted from the one-slot JWT
//! cache is minted again; an SDS client (go-control-plane's, as Envoy) gets the SVID and
//! bundles under the configured names and is refused the defaults. And the `-logSourceLocation`
//! flag puts the source file and function on every log line of the server and the agent.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, current_uid, eventually, interop_program,
    server_config,
};

const WAIT: Duration = Duration::from_secs(90);
const FOREIGN: &str = "spiffe://other.org";

/// An agent of `server` in `root/name` under the alias `spiffe://example.org/node/<name>`
/// with `keys` inside `agent { }`, serving our uid an SVID federated with [`FOREIGN`].
fn agent(root: &Path, server: &ServerProcess, name: &str, keys: &str) -> AgentProcess {
    let alias = format!("spiffe://example.org/node/{name}");
    let token = server.generate_join_token(&alias);
    server.create_uid_entry(
        &alias,
        &format!("spiffe://example.org/{name}"),
        current_uid(),
        &["-federatesWith", FOREIGN],
    );
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let agent = AgentProcess::start_with_agent_keys(&dir, server, Some(&token), keys);
    agent.cli_eventually(&["api", "fetch", "x509"], WAIT);
    agent
}

/// `openssl pkey -text` of the workload's private key as `agent` serves it.
fn workload_key_text(agent: &AgentProcess, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    agent.cli_eventually(
        &["api", "fetch", "x509", "-write", dir.to_str().unwrap()],
        WAIT,
    );
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(dir.join("svid.0.key"))
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JWT-SVID `agent` hands the workload for `audience`.
fn jwt(agent: &AgentProcess, audience: &str) -> String {
    let out = agent.cli_eventually(&["api", "fetch", "jwt", "-audience", audience], WAIT);
    out.lines()
        .skip_while(|l| !l.starts_with("token("))
        .nth(1)
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| panic!("no token in {out}"))
}

/// The claims `agent`'s ValidateJWTSVID returns for `token` and `audience`.
fn validated_claims(agent: &AgentProcess, token: &str, audience: &str) -> Value {
    let out = agent.cli_eventually(
        &[
            "api",
            "validate",
            "jwt",
            "-audience",
            audience,
            "-svid",
            token,
        ],
        WAIT,
    );
    let claims = out
        .lines()
        .find_map(|l| l.strip_prefix("Claims    : "))
        .unwrap_or_else(|| panic!("no claims in {out}"));
    serde_json::from_str(claims).unwrap()
}

/// Runs go-control-plane's SDS client against `socket`; the names and kinds of the secrets
/// of its first answer, or its error code.
fn sds_fetch(socket: &Path, names: &str) -> Result<Vec<(String, &'static str)>, String> {
    let output = Command::new(interop_program("SDS_CLIENT"))
        .arg("-socket")
        .arg(socket)
        .args(["-scenario", "fetch", "-names", names])
        .stderr(Stdio::inherit())
        .output()
        .expect("run sds-client (scripts/sds-deps.sh, target/sds-deps.env)");
    assert!(output.status.success(), "sds-client: {}", output.status);
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if let Some(error) = lines.iter().find(|l| l["event"] == "error") {
        return Err(error["code"].as_str().unwrap_or_default().to_owned());
    }
    let response = lines
        .iter()
        .find(|l| l["event"] == "response")
        .unwrap_or_else(|| panic!("no response in {lines:?}"));
    Ok(response["response"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let secret = &r["secret"];
            let kind = if secret["tls_certificate"].is_object() {
                "tls_certificate"
            } else {
                "validation_context"
            };
            (secret["name"].as_str().unwrap().to_owned(), kind)
        })
        .collect())
}

#[test]
fn workload_key_type_foreign_claims_jwt_cache_size_and_sds_names_act() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    // other.org: a real server whose JWT-SVIDs are foreign to example.org.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = ServerProcess::start_on_free_port(&other_dir, |port| {
        let data_dir = other_dir.join("data");
        let socket = other_dir.join("api.sock");
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &format!("{}/datastore.sqlite3", data_dir.display()),
            extra_server_keys: "",
        })
        .replace("\"example.org\"", "\"other.org\"");
        let path = other_dir.join("server.conf");
        std::fs::write(&path, config).unwrap();
        (path, socket)
    });
    let other_bundle = dir.path().join("other.json");
    std::fs::write(
        &other_bundle,
        other.cli_ok(&["bundle", "show", "-format", "spiffe"]),
    )
    .unwrap();
    server.cli_ok(&[
        "bundle",
        "set",
        "-format",
        "spiffe",
        "-id",
        FOREIGN,
        "-path",
        other_bundle.to_str().unwrap(),
    ]);

    let custom = agent(
        dir.path(),
        &server,
        "custom",
        "workload_x509_svid_key_type = \"rsa-2048\"\n    \
         allowed_foreign_jwt_claims = [\"iat\"]\n    \
         jwt_svid_cache_max_size = 1\n    \
         sds {\n        default_svid_name = \"my_svid\"\n        \
         default_bundle_name = \"my_bundle\"\n        \
         default_all_bundles_name = \"my_all\"\n    }",
    );
    let plain = agent(dir.path(), &server, "plain", "");

    // workload_x509_svid_key_type.
    let rsa = workload_key_text(&custom, &dir.path().join("custom-svid"));
    assert!(rsa.contains("Private-Key: (2048 bit"), "{rsa}");
    assert!(!rsa.contains("ASN1 OID"), "{rsa}");
    let ec = workload_key_text(&plain, &dir.path().join("plain-svid"));
    assert!(
        ec.contains("Private-Key: (256 bit") && ec.contains("prime256v1"),
        "{ec}"
    );

    // allowed_foreign_jwt_claims: the foreign token's iat is kept only where allowed; the
    // standard claims are kept everywhere.
    let foreign = other
        .cli_ok(&[
            "jwt",
            "mint",
            "-spiffeID",
            "spiffe://other.org/caller",
            "-audience",
            "me",
        ])
        .trim()
        .to_owned();
    eventually("both agents know other.org's JWT keys", WAIT, || {
        [&custom, &plain].iter().all(|a| {
            a.cli(&[
                "api",
                "validate",
                "jwt",
                "-audience",
                "me",
                "-svid",
                &foreign,
            ])
            .status
            .success()
        })
    });
    let allowed = validated_claims(&custom, &foreign, "me");
    assert_eq!(allowed["sub"], "spiffe://other.org/caller", "{allowed}");
    assert!(allowed["iat"].is_number(), "{allowed}");
    let filtered = validated_claims(&plain, &foreign, "me");
    assert_eq!(filtered["sub"], "spiffe://other.org/caller", "{filtered}");
    assert!(filtered.get("iat").is_none(), "{filtered}");

    // jwt_svid_cache_max_size = 1: a token for a second audience evicts the first, which is
    // then minted again; the default cache keeps both. The second apart, so a new token
    // differs in `iat`.
    for (agent, evicted) in [(&custom, true), (&plain, false)] {
        let first = jwt(agent, "one");
        assert_eq!(
            jwt(agent, "one"),
            first,
            "a cached token is handed out again"
        );
        std::thread::sleep(Duration::from_millis(1100));
        jwt(agent, "two");
        std::thread::sleep(Duration::from_millis(1100));
        let again = jwt(agent, "one");
        assert_eq!(again != first, evicted, "evicted: {evicted}");
    }

    // The SDS resource names.
    let named = sds_fetch(&custom.socket_path, "my_svid,my_bundle").unwrap();
    assert_eq!(
        named,
        vec![
            ("my_bundle".to_owned(), "validation_context"),
            ("my_svid".to_owned(), "tls_certificate"),
        ]
    );
    let all = sds_fetch(&custom.socket_path, "my_all").unwrap();
    assert_eq!(all, vec![("my_all".to_owned(), "validation_context")]);
    assert_eq!(
        sds_fetch(&custom.socket_path, "default").unwrap_err(),
        "InvalidArgument"
    );
    assert_eq!(
        sds_fetch(&plain.socket_path, "my_svid").unwrap_err(),
        "InvalidArgument"
    );
    assert_eq!(
        sds_fetch(&plain.socket_path, "default,ROOTCA")
            .unwrap()
            .len(),
        2
    );
}

/// Runs `command` (its output to `log_path`) until its log contains `marker`, then kills
/// it; the log. Panics when it exits first.
fn log_until(mut command: Command, log_path: &Path, marker: &str) -> String {
    let log = std::fs::File::create(log_path).unwrap();
    let mut child = command
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(log_path).unwrap_or_default();
    let mut exited = None;
    eventually(&format!("the log says {marker:?}"), WAIT, || {
        exited = exited.or_else(|| child.try_wait().ok().flatten());
        exited.is_some() || read().contains(marker)
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(exited.is_none(), "the process exited: {text}");
    text
}

/// Every logrus text line of `text` names its source file and function, and the `marker`
/// line one of our `.rs` files.
fn all_lines_have_source_location(text: &str, marker: &str) {
    for line in text.lines().filter(|l| l.starts_with("time=")) {
        assert!(
            line.contains(" file=\"") && line.contains(" func="),
            "no source location: {line}"
        );
    }
    let marked = text.lines().find(|l| l.contains(marker)).unwrap();
    assert!(marked.contains(".rs:"), "{marked}");
}

#[test]
fn the_log_source_location_flag_puts_file_and_func_on_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = spire_e2e::free_port();
    let data_dir = dir.path().join("data");
    let socket = dir.path().join("api.sock");
    let config = dir.path().join("server.conf");
    std::fs::write(
        &config,
        server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &format!("{}/datastore.sqlite3", data_dir.display()),
            extra_server_keys: "",
        }),
    )
    .unwrap();
    let mut server = Command::new(binary("spire-server"));
    server
        .args(["run", "-config"])
        .arg(&config)
        .arg("-logSourceLocation");
    let marker = "X509 CA activated";
    let text = log_until(server, &dir.path().join("server.log"), marker);
    all_lines_have_source_location(&text, marker);

    // The agent's flag, against a server started without it.
    let server_dir = dir.path().join("plain-server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    assert!(!server.log().contains(" file=\""), "{}", server.log());
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (config, _) = AgentProcess::write_config(&agent_dir, server.port, "");
    let mut agent = Command::new(binary("spire-agent"));
    agent
        .args(["run", "-config"])
        .arg(&config)
        .args(["-joinToken", &server.generate_join_token("")])
        .arg("-logSourceLocation");
    let marker = "Starting Workload and SDS APIs";
    let text = log_until(agent, &agent_dir.join("agent.log"), marker);
    all_lines_have_source_location(&text, marker);
}
