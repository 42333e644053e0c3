//! SPIRE 1.15's entry attributes and agent version, end to end with our binaries: the
//! `entry create/update` flags and `-data` key, what `entry show` prints, what the agent does
//! with `disable_x509_svid_prefetch` (no SVID until a workload asks) and
//! `jwt_svid_include_jti` (a unique `jti` in every JWT-SVID, never cached), and the version
//! the agent posts at start showing in `agent list`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use spire_e2e::{AgentProcess, ServerProcess, current_uid};

/// `debug getinfo` of the agent's admin socket, polled until `ready` holds (the agent caches
/// its answer for 5 s, as upstream's).
fn getinfo_until(
    agent: &AgentProcess,
    admin: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(spire_e2e::binary("spire-agent"))
            .args(["debug", "getinfo", "-socketPath", admin, "-output", "json"])
            .output()
            .unwrap();
        if out.status.success() {
            let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if ready(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "debug getinfo never reached the expected state: {info}\n{}",
                agent.log()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "debug getinfo failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The claims of a compact JWT, unverified.
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `api fetch jwt` for one SPIFFE ID; returns its token.
fn fetch_jwt(agent: &AgentProcess, spiffe_id: &str) -> String {
    let text = agent.cli_eventually(
        &[
            "api",
            "fetch",
            "jwt",
            "-audience",
            "aud",
            "-spiffeID",
            spiffe_id,
            "-output",
            "json",
        ],
        Duration::from_secs(30),
    );
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    parsed[0]["svids"][0]["svid"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {text}"))
        .to_owned()
}

#[test]
fn entry_attributes_drive_the_agent_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");
    let uid = current_uid();
    let agent_id = "spiffe://example.org/spire/agent/join_token";

    // The CLI flags, as upstream 1.15's.
    let token = server.generate_join_token("");
    let parent = format!("{agent_id}/{token}");
    let lazy = server.create_uid_entry(
        &parent,
        "spiffe://example.org/lazy",
        uid,
        &["-disableX509SVIDPrefetch"],
    );
    let unique = server.create_uid_entry(
        &parent,
        "spiffe://example.org/unique",
        uid,
        &["-jwtSVIDIncludeJTI"],
    );
    let shown = server.cli_ok(&["entry", "show", "-entryID", &lazy]);
    assert!(
        shown.contains("DisableX509SvidPrefetch : true\n"),
        "{shown}"
    );
    assert!(!shown.contains("JwtSvidIncludeJti"), "{shown}");
    let json = server.cli_json(&["entry", "show", "-entryID", &unique]);
    assert_eq!(
        json["entries"][0]["additional_attributes"],
        serde_json::json!({"disable_x509_svid_prefetch": false, "jwt_svid_include_jti": true}),
        "{json}"
    );

    // The agent, with its admin socket for `debug getinfo`.
    // Not beside the Workload API socket, which the agent refuses.
    let admin_dir = tempfile::tempdir().unwrap();
    let admin = admin_dir.path().join("admin.sock");
    let admin = admin.to_str().unwrap();
    let (config, socket) = AgentProcess::write_config(
        dir.path(),
        server.port,
        &format!("admin_socket_path = \"{admin}\""),
    );
    let agent = AgentProcess::start_with_config(dir.path(), &config, socket, Some(&token));

    // Synced, yet only the prefetched entry has an X509-SVID.
    // protojson prints int64 as a string.
    getinfo_until(&agent, admin, |i| {
        i["last_sync_success"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|t| t > 0)
            && i["cached_x509_svids_count"].as_i64() == Some(1)
    });
    // A workload asks: it gets both, and the agent now holds both.
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(30));
    assert!(
        fetched.contains("spiffe://example.org/lazy")
            && fetched.contains("spiffe://example.org/unique"),
        "{fetched}"
    );
    getinfo_until(&agent, admin, |i| {
        i["cached_x509_svids_count"].as_i64() == Some(2)
    });

    // jti: every JWT-SVID of `unique` is new and carries its own jti; `lazy`'s is cached
    // and has none.
    let first = fetch_jwt(&agent, "spiffe://example.org/unique");
    let second = fetch_jwt(&agent, "spiffe://example.org/unique");
    assert_ne!(first, second);
    let (a, b) = (claims(&first), claims(&second));
    assert_eq!(a["jti"].as_str().unwrap().len(), 22, "{a}");
    assert_ne!(a["jti"], b["jti"]);
    let cached = fetch_jwt(&agent, "spiffe://example.org/lazy");
    assert_eq!(fetch_jwt(&agent, "spiffe://example.org/lazy"), cached);
    assert!(claims(&cached).get("jti").is_none());
    getinfo_until(&agent, admin, |i| {
        i["cached_jwt_svids_count"].as_i64() == Some(1)
    });

    // The agent posted its version at start.
    let listed = server.cli_ok(&["agent", "list"]);
    assert!(
        listed.contains(&format!(
            "Agent version     : {}-spire-rs\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{listed}"
    );
    let listed = server.cli_json(&["agent", "list"]);
    assert!(
        listed["agents"][0]["agent_version"]
            .as_str()
            .unwrap()
            .ends_with("-spire-rs"),
        "{listed}"
    );

    // update with one flag keeps the other attribute (upstream's merge); without either
    // flag, update replaces the whole entry and the attributes go, as upstream's does.
    let update = |extra: &[&str]| {
        let selector = format!("unix:uid:{uid}");
        let mut args = vec![
            "entry",
            "update",
            "-entryID",
            &lazy,
            "-parentID",
            &parent,
            "-spiffeID",
            "spiffe://example.org/lazy",
            "-selector",
            &selector,
        ];
        args.extend_from_slice(extra);
        server.cli_json(&args)["results"][0]["entry"]["additional_attributes"].clone()
    };
    assert_eq!(
        update(&["-jwtSVIDIncludeJTI"]),
        serde_json::json!({"disable_x509_svid_prefetch": true, "jwt_svid_include_jti": true})
    );
    assert_eq!(
        update(&["-disableX509SVIDPrefetch=false"]),
        serde_json::json!({"disable_x509_svid_prefetch": false, "jwt_svid_include_jti": true})
    );
    assert_eq!(update(&[]), serde_json::Value::Null);
    let missing = server.cli(&[
        "entry",
        "update",
        "-entryID",
        "no-such-entry",
        "-parentID",
        &parent,
        "-spiffeID",
        "spiffe://example.org/x",
        "-selector",
        "unix:uid:1",
        "-jwtSVIDIncludeJTI",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("failed to fetch existing entry to merge additional attributes")
            && stderr.contains("NotFound"),
        "{stderr}"
    );

    // `-data` takes upstream 1.15's key.
    let data = dir.path().join("entries.json");
    std::fs::write(
        &data,
        r#"{"entries": [{"spiffe_id": "spiffe://example.org/from-data",
            "parent_id": "spiffe://example.org/agent",
            "selectors": [{"type": "unix", "value": "uid:7"}],
            "additional_attributes": {"disable_x509_svid_prefetch": true}}]}"#,
    )
    .unwrap();
    let created = server.cli_json(&["entry", "create", "-data", data.to_str().unwrap()]);
    assert_eq!(
        created["results"][0]["entry"]["additional_attributes"]["disable_x509_svid_prefetch"], true,
        "{created}"
    );
}
