//! The OIDC Discovery Provider end to end: our server and agent, our
//! `oidc-discovery-provider` publishing the trust domain's JWT authorities, and relying
//! parties we did not write.
//!
//! - PyJWT's `PyJWKClient` (conformance/python/oidc_rp.py, in the venv of
//!   `scripts/conformance-deps.sh`) verifies a JWT-SVID fetched from our agent knowing only the
//!   issuer URL: discovery document, then keys, then signature, `iss`, `aud` and `exp`; it
//!   keeps verifying across a JWT key rotation (`localauthority jwt prepare` / `activate`),
//!   with the provider reading the server's admin socket and, once, an agent's Workload API.
//!   A long-lived `PyJWKClient` (conformance/python/oidc_rp_long_lived.py) follows the same
//!   rotation by refreshing on the unknown `kid`, then refuses the old key once it is
//!   tainted and revoked.
//! - Upstream SPIRE v1.13.3's `oidc-discovery-provider` (`SPIRE_UPSTREAM_OIDC`, built by
//!   `scripts/interop-deps.sh`) serves the same sources beside ours: the same documents after
//!   normalising key order, and the same answers for a bad Host, an unreachable server or
//!   agent, a bundle without JWT keys, unknown paths and other methods, without a crash;
//!   and the same `Incoming request` log lines (`log_requests`, text and JSON).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use spire_e2e::pebble::{LETS_ENCRYPT_VALIDITY, Pebble, TEST_DOMAIN, https_get, minica_path};
use spire_e2e::{
    AgentProcess, ServerProcess, binary, current_uid, eventually, free_ports, interop_program,
    with_ssl_cert_file,
};

#[path = "oidc_discovery/datastore.rs"]
mod datastore;
#[path = "oidc_discovery/harness.rs"]
mod harness;
#[path = "oidc_discovery/logs.rs"]
mod logs;
#[path = "oidc_discovery/relying_party.rs"]
mod relying_party;

use harness::{
    Provider, READY_WAIT, assert_same, header_value, https_answer, request, request_with,
    unix_request,
};
use relying_party::{LongLivedRelyingParty, refused, verified};

/// The providers poll every second, so a rotation shows within a few.
const POLL: &str = "1s";

/// The audience of the first token the relying party verifies.
const AUDIENCE: &str = "oidc-relying-party";

/// A server (trust domain `example.org`, `server_keys` in `server { }`) with one agent and
/// an entry giving our uid `spiffe://example.org/workload`.
fn start_domain(dir: &Path, server_keys: &str) -> (ServerProcess, AgentProcess) {
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, server_keys);
    let node = "spiffe://example.org/node";
    let token = server.generate_join_token(node);
    server.create_uid_entry(node, "spiffe://example.org/workload", current_uid(), &[]);
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = AgentProcess::start(&agent_dir, &server, Some(&token));
    (server, agent)
}

/// A JWT-SVID for `audience` from the agent's Workload API (`spire-agent api fetch jwt`).
fn fetch_jwt(agent: &AgentProcess, audience: &str) -> String {
    let fetched = agent.cli_eventually(&["api", "fetch", "jwt", "-audience", audience], READY_WAIT);
    fetched
        .lines()
        .skip_while(|line| !line.starts_with("token("))
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no token in {fetched}"))
        .to_owned()
}

/// The decoded header or claims (`part` 0 or 1) of a JWT, unverified.
fn jwt_part(token: &str, part: usize) -> serde_json::Value {
    let segment = token.split('.').nth(part).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn keys_of(provider: &Provider) -> Vec<String> {
    let answer = provider.get("/keys", "localhost");
    if answer.status != 200 {
        return Vec::new();
    }
    let keys: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    keys["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pyjwt_verifies_jwt_svids_through_discovery_across_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let [port, health_port, wl_port, wl_health_port] = free_ports::<4>();
    let issuer = format!("http://localhost:{port}");
    let (server, agent) = start_domain(dir.path(), &format!("jwt_issuer = \"{issuer}\""));

    let server_api = format!(
        "domains = [\"localhost\"]\nallow_insecure_scheme = true\nserver_api {{\n address = \
         \"unix://{}\"\n poll_interval = \"{POLL}\"\n}}",
        server.socket_path.display()
    );
    let provider = Provider::start_on(
        &binary("oidc-discovery-provider"),
        dir.path(),
        "provider",
        &server_api,
        port,
        health_port,
    );
    // Upstream's provider on the same server, to compare the keys after the revocation.
    let upstream = Provider::start(
        &interop_program("SPIRE_UPSTREAM_OIDC"),
        dir.path(),
        "upstream-provider",
        &server_api,
    );
    provider.wait_keys("our provider serves the server's keys");
    assert_eq!(provider.health("/ready"), 200);
    assert_eq!(provider.health("/live"), 200);

    // The server's jwt_issuer is the `iss` of minted JWT-SVIDs.
    let token = fetch_jwt(&agent, AUDIENCE);
    let claims = jwt_part(&token, 1);
    assert_eq!(claims["iss"], issuer.as_str(), "{claims}");
    let first_kid = jwt_part(&token, 0)["kid"].as_str().unwrap().to_owned();

    let report = verified(&issuer, AUDIENCE, &token, None);
    assert_eq!(report["sub"], "spiffe://example.org/workload");
    assert_eq!(report["kid"], first_kid.as_str());
    assert_eq!(report["jwks_uri"], format!("{issuer}/keys").as_str());

    // A long-lived relying party: one PyJWKClient with cache_keys=True for the whole test.
    let mut long_lived = LongLivedRelyingParty::start(&issuer);
    let first = long_lived.verify(AUDIENCE, &token);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["kid"], first_kid.as_str());
    assert_eq!(first["fetches"], 1, "{first}");

    // The relying party really checks: another audience, a forged signature and another
    // issuer are refused.
    let wrong = refused(&issuer, "someone-else", &token);
    assert!(wrong.contains("InvalidAudience"), "{wrong}");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&parts[2])
        .unwrap();
    signature[10] ^= 0x55;
    parts[2] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
    let forged = refused(&issuer, AUDIENCE, &parts.join("."));
    assert!(forged.contains("InvalidSignature"), "{forged}");
    // A Host outside `domains` gets no discovery document.
    let other_host = refused(&format!("http://127.0.0.1:{port}"), AUDIENCE, &token);
    assert!(other_host.contains("HTTP Error 400"), "{other_host}");

    // A second provider reads the agent's Workload API; it names the same issuer.
    let workload_provider = Provider::start_on(
        &binary("oidc-discovery-provider"),
        dir.path(),
        "workload-provider",
        &format!(
            "domains = [\"localhost\"]\nallow_insecure_scheme = true\njwt_issuer = \
             \"{issuer}\"\njwks_uri = \"http://localhost:{wl_port}/keys\"\nworkload_api {{\n \
             socket_path = \"{}\"\n trust_domain = \"example.org\"\n poll_interval = \
             \"{POLL}\"\n}}",
            agent.socket_path.display()
        ),
        wl_port,
        wl_health_port,
    );
    workload_provider.wait_keys("the Workload API provider serves the agent's keys");
    let report = verified(
        &issuer,
        AUDIENCE,
        &token,
        Some(&format!("http://localhost:{wl_port}")),
    );
    assert_eq!(
        report["jwks_uri"],
        format!("http://localhost:{wl_port}/keys").as_str()
    );

    // Rotation: the prepared key reaches both providers without a restart, then becomes
    // the signing key.
    let prepared = server.cli_json(&["localauthority", "jwt", "prepare"]);
    let next_kid = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no authority_id in {prepared}"))
        .to_owned();
    assert_ne!(next_kid, first_kid);
    let prepared_at = Instant::now();
    eventually(
        "the prepared key reaches our server_api provider",
        READY_WAIT,
        || keys_of(&provider).contains(&next_kid),
    );
    let server_api_took = prepared_at.elapsed();
    eventually(
        "the prepared key reaches our workload_api provider (after the agent's sync)",
        READY_WAIT,
        || keys_of(&workload_provider).contains(&next_kid),
    );
    let workload_api_took = prepared_at.elapsed();
    println!(
        "prepared JWT key served after {server_api_took:?} (server_api, poll {POLL}) and \
         {workload_api_took:?} (workload_api)"
    );
    server.cli_ok(&[
        "localauthority",
        "jwt",
        "activate",
        "-authorityID",
        &next_kid,
    ]);

    // A new audience makes the agent ask the server for a new token, signed with the new key.
    let after = fetch_jwt(&agent, "after-rotation");
    assert_eq!(jwt_part(&after, 0)["kid"], next_kid.as_str());
    let report = verified(&issuer, "after-rotation", &after, None);
    assert_eq!(report["kid"], next_kid.as_str());
    verified(
        &issuer,
        "after-rotation",
        &after,
        Some(&format!("http://localhost:{wl_port}")),
    );
    // The long-lived client meets an unknown kid and fetches the keys again.
    let refreshed = long_lived.verify("after-rotation", &after);
    assert_eq!(refreshed["ok"], true, "{refreshed}");
    assert_eq!(refreshed["kid"], next_kid.as_str());
    assert_eq!(
        refreshed["fetches"], 2,
        "one refresh for the new kid: {refreshed}"
    );
    // The old key stays published until it is tainted and revoked: older tokens verify.
    verified(&issuer, AUDIENCE, &token, None);
    let cached = long_lived.verify(AUDIENCE, &token);
    assert_eq!(cached["ok"], true, "{cached}");
    assert_eq!(
        cached["fetches"], 2,
        "a known key is not fetched again: {cached}"
    );

    // Taint, then revoke the old key: it leaves the bundle, so both providers drop it.
    server.cli_ok(&["localauthority", "jwt", "taint", "-authorityID", &first_kid]);
    server.cli_ok(&[
        "localauthority",
        "jwt",
        "revoke",
        "-authorityID",
        &first_kid,
    ]);
    eventually("the revoked key leaves our /keys", READY_WAIT, || {
        let keys = keys_of(&provider);
        keys.contains(&next_kid) && !keys.contains(&first_kid)
    });
    eventually(
        "the revoked key leaves upstream's /keys",
        READY_WAIT,
        || {
            let keys = keys_of(&upstream);
            keys.contains(&next_kid) && !keys.contains(&first_kid)
        },
    );
    assert_same(
        "/keys after the revocation",
        &provider.get("/keys", "localhost"),
        &upstream.get("/keys", "localhost"),
    );
    // A relying party that looks again no longer finds the old key and refuses its tokens.
    let forgotten = long_lived.forget();
    assert_eq!(
        forgotten["kids"],
        serde_json::json!([next_kid.as_str()]),
        "{forgotten}"
    );
    let revoked = long_lived.verify(AUDIENCE, &token);
    assert_eq!(revoked["ok"], false, "{revoked}");
    assert!(
        revoked["error"]
            .as_str()
            .is_some_and(|e| e.contains("Unable to find a signing key")),
        "{revoked}"
    );
    let still = long_lived.verify("after-rotation", &after);
    assert_eq!(still["ok"], true, "{still}");
    let fresh = refused(&issuer, AUDIENCE, &token);
    assert!(fresh.contains("Unable to find a signing key"), "{fresh}");

    // With the server gone, the provider keeps serving the last keys it read.
    drop(agent);
    let mut server = server;
    server.stop();
    std::thread::sleep(Duration::from_secs(3));
    let keys = keys_of(&provider);
    assert_eq!(keys, std::slice::from_ref(&next_kid), "{keys:?}");
    verified(&issuer, "after-rotation", &after, None);
    assert!(
        provider.log().contains("Failed to fetch bundle"),
        "the failed polls are logged:\n{}",
        provider.log()
    );
}

/// Runs both providers with `body` and compares the answers to `requests`
/// (`(method, path, host)`); both must still run afterwards. With `keys_path`, both first
/// serve keys there; without, both have had time to fail their first polls.
fn compare(
    dir: &Path,
    name: &str,
    body: &str,
    keys_path: Option<&str>,
    requests: &[(&str, &str, &str)],
) {
    let mut ours = Provider::start(
        &binary("oidc-discovery-provider"),
        dir,
        &format!("{name}-ours"),
        body,
    );
    let mut upstream = Provider::start(
        &interop_program("SPIRE_UPSTREAM_OIDC"),
        dir,
        &format!("{name}-upstream"),
        body,
    );
    if let Some(keys_path) = keys_path {
        ours.wait_keys_at(keys_path, &format!("{name}: ours serves keys"));
        upstream.wait_keys_at(keys_path, &format!("{name}: upstream's serves keys"));
    } else {
        std::thread::sleep(Duration::from_secs(3));
    }
    for (method, path, host) in requests {
        let what = format!("{name}: {method} {path} (Host: {host})");
        let a = request(ours.port, method, path, host);
        let b = request(upstream.port, method, path, host);
        assert_same(&what, &a, &b);
        println!("{what}: both {}", a.status);
    }
    if keys_path == Some("/keys") {
        for range in [
            "bytes=0-9",
            "bytes=-5",
            "bytes=20-",
            "bytes=100000-",
            "bytes=9-1",
        ] {
            let extra = format!("Range: {range}\r\n");
            let a = request_with(ours.port, "GET", "/keys", "localhost", &extra);
            let b = request_with(upstream.port, "GET", "/keys", "localhost", &extra);
            assert_same(&format!("{name}: GET /keys (Range: {range})"), &a, &b);
            assert_eq!(
                header_value(&a.headers, "content-range"),
                header_value(&b.headers, "content-range"),
                "{name}: Content-Range of {range}"
            );
        }
    }
    for path in ["/ready", "/live", "/elsewhere"] {
        assert_eq!(
            ours.health(path),
            upstream.health(path),
            "{name}: health check {path}"
        );
    }
    assert!(ours.running(), "{name}: ours stopped:\n{}", ours.log());
    assert!(
        upstream.running(),
        "{name}: upstream's stopped:\n{}",
        upstream.log()
    );
    // log_requests = true (the harness sets it): the same request lines, in the format
    // the body asks for.
    let sent: std::collections::BTreeSet<_> = requests.iter().map(|(m, p, _)| (m, p)).collect();
    logs::assert_same_request_logs(
        name,
        &ours.log(),
        &upstream.log(),
        body.contains("log_format = \"json\""),
        sent.len(),
    );
}

#[test]
fn upstreams_provider_gives_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (server, agent) = start_domain(dir.path(), "");
    let token = fetch_jwt(&agent, AUDIENCE);
    assert!(
        jwt_part(&token, 1).get("iss").is_none(),
        "no jwt_issuer, no iss"
    );

    let documents: &[(&str, &str, &str)] = &[
        ("GET", "/.well-known/openid-configuration", "localhost"),
        ("GET", "/.well-known/openid-configuration", "localhost:8443"),
        ("GET", "/keys", "localhost"),
        (
            "GET",
            "/.well-known/openid-configuration",
            "evil.example.org",
        ),
        ("GET", "/.well-known/openid-configuration", "LOCALHOST"),
        ("GET", "/.well-known/openid-configuration", "bad_host"),
        ("GET", "/.well-known/openid-configuration", "[::1]:80"),
        ("POST", "/.well-known/openid-configuration", "localhost"),
        ("POST", "/keys", "localhost"),
        ("GET", "/keys/", "localhost"),
        ("GET", "/unknown", "localhost"),
        ("GET", "//keys", "localhost"),
        (
            "GET",
            "/x/../.well-known/openid-configuration?a=1&b=2",
            "localhost",
        ),
        ("POST", "/./keys", "localhost"),
    ];
    let server_api = format!(
        "server_api {{\n address = \"unix://{}\"\n poll_interval = \"{POLL}\"\n}}",
        server.socket_path.display()
    );
    compare(
        dir.path(),
        "server-api",
        &format!("domains = [\"localhost\", \"oidc.example.org\"]\n{server_api}"),
        Some("/keys"),
        documents,
    );
    compare(
        dir.path(),
        "server-api-insecure-scheme-key-use-json-log",
        &format!(
            "domains = [\"localhost\"]\nallow_insecure_scheme = true\nset_key_use = true\n\
             log_format = \"json\"\n{server_api}"
        ),
        Some("/keys"),
        documents,
    );
    compare(
        dir.path(),
        "server-api-issuer-prefix",
        &format!(
            "domains = [\"localhost\"]\njwt_issuer = \"https://issuer.example.org/tenant\"\n\
             server_path_prefix = \"/oidc\"\n{server_api}"
        ),
        Some("/oidc/keys"),
        &[
            ("GET", "/oidc/.well-known/openid-configuration", "localhost"),
            ("GET", "/oidc/keys", "localhost"),
            ("GET", "/.well-known/openid-configuration", "localhost"),
            ("GET", "/keys", "localhost"),
        ],
    );
    compare(
        dir.path(),
        "server-api-jwks-uri",
        &format!(
            "domains = [\"localhost\"]\njwt_issuer = \"https://issuer.example.org\"\njwks_uri = \
             \"https://cdn.example.org/jwks.json?a=1&b=2\"\n{server_api}"
        ),
        Some("/keys"),
        &[("GET", "/.well-known/openid-configuration", "localhost")],
    );
    compare(
        dir.path(),
        "workload-api",
        &format!(
            "domains = [\"localhost\"]\nworkload_api {{\n socket_path = \"{}\"\n trust_domain = \
             \"example.org\"\n poll_interval = \"{POLL}\"\n}}",
            agent.socket_path.display()
        ),
        Some("/keys"),
        documents,
    );

    // A bundle without JWT keys: the server's bundle document with its JWT authorities
    // taken out.
    let mut bundle: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["bundle", "show", "-format", "spiffe"])).unwrap();
    bundle["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["use"] != "jwt-svid");
    assert!(!bundle["keys"].as_array().unwrap().is_empty());
    let bundle_path = dir.path().join("x509-only-bundle.json");
    std::fs::write(&bundle_path, bundle.to_string()).unwrap();
    compare(
        dir.path(),
        "file-without-jwt-keys",
        &format!(
            "domains = [\"localhost\"]\nfile {{\n path = \"{}\"\n poll_interval = \"{POLL}\"\n}}",
            bundle_path.display()
        ),
        Some("/keys"),
        &[("GET", "/keys", "localhost")],
    );

    // The same through server_api: the server's own bundle without its JWT authorities.
    datastore::strip_jwt_authorities(
        &dir.path().join("server/data/datastore.sqlite3"),
        "spiffe://example.org",
    );
    let x509_only = server.cli_ok(&["bundle", "show", "-format", "spiffe"]);
    assert!(!x509_only.contains("jwt-svid"), "{x509_only}");
    compare(
        dir.path(),
        "server-api-without-jwt-keys",
        &format!("domains = [\"localhost\"]\n{server_api}"),
        Some("/keys"),
        &[
            ("GET", "/keys", "localhost"),
            ("GET", "/.well-known/openid-configuration", "localhost"),
        ],
    );

    // Nothing to poll: an unreachable server and an unreachable agent.
    let missing = dir.path().join("nothing-listens-here.sock");
    compare(
        dir.path(),
        "unreachable-server",
        &format!(
            "domains = [\"localhost\"]\nserver_api {{\n address = \"unix://{}\"\n poll_interval \
             = \"{POLL}\"\n}}",
            missing.display()
        ),
        None,
        documents,
    );
    compare(
        dir.path(),
        "unreachable-agent",
        &format!(
            "domains = [\"localhost\"]\nworkload_api {{\n socket_path = \"{}\"\n trust_domain = \
             \"example.org\"\n poll_interval = \"{POLL}\"\n}}",
            missing.display()
        ),
        None,
        documents,
    );
}

#[test]
fn acme_certificates_from_pebble_serve_the_discovery_document() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    // Upstream's provider serves ACME certificates on port 443, where Pebble validates.
    let pebble = Pebble::start(dir.path(), 443, LETS_ENCRYPT_VALIDITY);
    let root = pebble.issuing_root();
    // The provider trusts Pebble's HTTPS directory as an operator would a private ACME CA.
    let program = with_ssl_cert_file(
        dir.path(),
        &binary("oidc-discovery-provider"),
        &minica_path(),
    );
    let [health_port] = free_ports::<1>();
    let cache_dir = dir.path().join("acme-cache");
    let listener = format!(
        "acme {{\n directory_url = \"{}\"\n email = \"oidc-admin@spire-rs.test\"\n \
         tos_accepted = true\n cache_dir = \"{}\"\n}}",
        pebble.directory_url,
        cache_dir.display()
    );
    let provider = Provider::start_with_listener(
        &program,
        dir.path(),
        "acme-provider",
        &listener,
        &format!(
            "domains = [\"{TEST_DOMAIN}\"]\nserver_api {{\n address = \"unix://{}\"\n \
             poll_interval = \"{POLL}\"\n}}",
            server.socket_path.display()
        ),
        443,
        health_port,
    );

    let start = Instant::now();
    let document = loop {
        match https_get(
            443,
            TEST_DOMAIN,
            std::slice::from_ref(&root),
            "/.well-known/openid-configuration",
        ) {
            Ok(answer) if answer.status == 200 => break answer,
            Ok(answer) => panic!("unexpected answer: {}\n{}", answer.headers, answer.text()),
            Err(e) => assert!(
                start.elapsed() < READY_WAIT,
                "no certificate from Pebble within {READY_WAIT:?} ({e}):\n{}\npebble:\n{}",
                provider.log(),
                pebble.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("ACME certificate served after {:?}", start.elapsed());
    let discovery: serde_json::Value = serde_json::from_slice(&document.body).unwrap();
    assert_eq!(
        discovery["issuer"],
        format!("https://{TEST_DOMAIN}").as_str()
    );
    assert_eq!(
        discovery["jwks_uri"],
        format!("https://{TEST_DOMAIN}/keys").as_str()
    );
    assert!(document.chain.len() >= 2, "leaf and Pebble's intermediate");

    provider.wait_keys_over_tls(&root);
    let keys = https_get(443, TEST_DOMAIN, std::slice::from_ref(&root), "/keys").unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&keys.body).unwrap();
    assert!(!keys["keys"].as_array().unwrap().is_empty(), "{keys}");

    // Only the names in `domains` get a certificate.
    let other = https_get(
        443,
        "other.spire-rs.test",
        std::slice::from_ref(&root),
        "/keys",
    );
    assert!(other.is_err(), "a name outside domains got a certificate");
    // The certificate is cached for the next start.
    assert!(cache_dir.join(TEST_DOMAIN).is_file());
    assert_eq!(provider.health("/ready"), 200);
}

#[test]
fn https_from_files_and_the_unix_socket_answer_as_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = ServerProcess::start(&server_dir, "");
    let source = format!(
        "domains = [\"localhost\"]\nallow_insecure_scheme = true\nserver_api {{\n address = \
         \"unix://{}\"\n poll_interval = \"{POLL}\"\n}}",
        server.socket_path.display()
    );

    // serving_cert_file: a certificate for localhost from files; allow_insecure_scheme does
    // not turn HTTPS requests into http:// URLs.
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("serving.crt");
    let key_path = dir.path().join("serving.key");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let root = certified.cert.der().clone();
    let mut answers = Vec::new();
    for (name, program) in [
        ("tls-ours", binary("oidc-discovery-provider")),
        ("tls-upstream", interop_program("SPIRE_UPSTREAM_OIDC")),
    ] {
        let [port, health_port] = free_ports::<2>();
        let listener = format!(
            "serving_cert_file {{\n cert_file_path = \"{}\"\n key_file_path = \"{}\"\n addr = \
             \"127.0.0.1:{port}\"\n}}",
            cert_path.display(),
            key_path.display()
        );
        let mut provider = Provider::start_with_listener(
            &program,
            dir.path(),
            name,
            &listener,
            &source,
            port,
            health_port,
        );
        eventually(
            &format!("{name} serves keys over HTTPS"),
            READY_WAIT,
            || {
                https_get(port, "localhost", std::slice::from_ref(&root), "/keys")
                    .is_ok_and(|answer| answer.status == 200)
            },
        );
        let document = https_answer(port, &root, "/.well-known/openid-configuration");
        let keys = https_answer(port, &root, "/keys");
        assert!(provider.running(), "{name} stopped:\n{}", provider.log());
        answers.push((document, keys));
    }
    let (ours, upstream) = (&answers[0], &answers[1]);
    assert_same("HTTPS discovery document", &ours.0, &upstream.0);
    assert_same("HTTPS keys", &ours.1, &upstream.1);
    let discovery: serde_json::Value = serde_json::from_str(&ours.0.body).unwrap();
    assert_eq!(discovery["issuer"], "https://localhost");

    // listen_socket_path: plain HTTP on a unix socket (behind a proxy that forwards the
    // Host and the scheme).
    let mut sockets = Vec::new();
    let mut providers = Vec::new();
    for (name, program) in [
        ("unix-ours", binary("oidc-discovery-provider")),
        ("unix-upstream", interop_program("SPIRE_UPSTREAM_OIDC")),
    ] {
        let socket = dir.path().join(format!("{name}.sock"));
        let [health_port] = free_ports::<1>();
        let provider = Provider::start_with_listener(
            &program,
            dir.path(),
            name,
            &format!("listen_socket_path = \"{}\"", socket.display()),
            &source,
            0,
            health_port,
        );
        eventually(
            &format!("{name} serves keys on its socket"),
            READY_WAIT,
            || unix_request(&socket, "GET", "/keys", "localhost").status == 200,
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&socket).unwrap().permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o777,
            "{name}: the socket is open to the proxy"
        );
        sockets.push(socket);
        providers.push(provider);
    }
    for (method, path, host) in [
        ("GET", "/.well-known/openid-configuration", "localhost"),
        ("GET", "/.well-known/openid-configuration", "localhost:8080"),
        ("GET", "/keys", "localhost"),
        ("GET", "/.well-known/openid-configuration", "proxy.internal"),
    ] {
        let ours = unix_request(&sockets[0], method, path, host);
        let upstream = unix_request(&sockets[1], method, path, host);
        assert_same(
            &format!("unix socket: {method} {path} (Host: {host})"),
            &ours,
            &upstream,
        );
    }
    let discovery: serde_json::Value = serde_json::from_str(
        &unix_request(
            &sockets[0],
            "GET",
            "/.well-known/openid-configuration",
            "localhost",
        )
        .body,
    )
    .unwrap();
    assert_eq!(discovery["issuer"], "http://localhost");
    for provider in &mut providers {
        assert!(provider.running(), "{}", provider.log());
    }
}
