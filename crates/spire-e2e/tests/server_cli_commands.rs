//! Every `spire-server` command group against a live server, checked the way an operator
//! reads the output: entries (batch `-data`, update, delete), federated bundles (pem and
//! spiffe formats), agents, x509/jwt mint, local authorities and the logger.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509::{CaTemplate, Validity, self_signed_ca};
use spire_e2e::{ServerProcess, selector_strings};

fn other_org_root_pem() -> String {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let td = TrustDomain::new("other.org").unwrap();
    let validity = Validity::from_now(time::OffsetDateTime::now_utc(), time::Duration::hours(24));
    let der = self_signed_ca(&key, &CaTemplate::new(td, validity)).unwrap();
    spire_core::pem::encode_certificates([der.as_slice()])
}

#[test]
fn every_command_group_works_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");

    // entry create -data: a batch in upstream's documented JSON form (IDs as strings).
    let data = dir.path().join("entries.json");
    std::fs::write(
        &data,
        r#"{"entries": [
            {"spiffe_id": "spiffe://example.org/a",
             "parent_id": "spiffe://example.org/agent",
             "selectors": [{"type": "unix", "value": "uid:1"}]},
            {"spiffe_id": "spiffe://example.org/b",
             "parent_id": "spiffe://example.org/agent",
             "selectors": [{"type": "unix", "value": "uid:2"}], "dns_names": ["b.example.org"]}
        ]}"#,
    )
    .unwrap();
    let created = server.cli_json(&["entry", "create", "-data", data.to_str().unwrap()]);
    let results = created["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{created}");
    let id_b = results[1]["entry"]["id"].as_str().unwrap().to_owned();

    // Filters: by selector (superset by default) and by SPIFFE ID.
    let by_selector = server.cli_json(&["entry", "show", "-selector", "unix:uid:2"]);
    assert_eq!(
        by_selector["entries"].as_array().unwrap().len(),
        1,
        "{by_selector}"
    );
    let by_id = server.cli_json(&["entry", "show", "-spiffeID", "spiffe://example.org/a"]);
    assert_eq!(by_id["entries"][0]["spiffe_id"]["path"], "/a");

    // Update then delete.
    let updated = server.cli_json(&[
        "entry",
        "update",
        "-entryID",
        &id_b,
        "-parentID",
        "spiffe://example.org/agent",
        "-spiffeID",
        "spiffe://example.org/b2",
        "-selector",
        "unix:uid:3",
    ]);
    assert_eq!(
        updated["results"][0]["entry"]["spiffe_id"]["path"], "/b2",
        "{updated}"
    );
    server.cli_ok(&["entry", "delete", "-entryID", &id_b]);
    let missing = server.cli(&["entry", "show", "-entryID", &id_b]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NotFound"),
        "{missing:?}"
    );

    // Federated bundles: set from PEM, list, show in SPIFFE format, count, delete.
    let pem_path = dir.path().join("other.pem");
    std::fs::write(&pem_path, other_org_root_pem()).unwrap();
    server.cli_ok(&[
        "bundle",
        "set",
        "-id",
        "spiffe://other.org",
        "-path",
        pem_path.to_str().unwrap(),
    ]);
    let listed = server.cli_ok(&["bundle", "list", "-format", "spiffe"]);
    assert!(listed.contains("* other.org"), "{listed}");
    assert!(listed.contains("\"x509-svid\""), "{listed}");
    let count = server.cli_ok(&["bundle", "count"]);
    assert!(count.contains('2'), "{count}");
    // Our own trust domain cannot be replaced as a federated bundle.
    let own = server.cli(&[
        "bundle",
        "set",
        "-id",
        "spiffe://example.org",
        "-path",
        pem_path.to_str().unwrap(),
    ]);
    assert_eq!(own.status.code(), Some(1), "{own:?}");
    server.cli_ok(&["bundle", "delete", "-id", "spiffe://other.org"]);
    assert!(server.cli_ok(&["bundle", "count"]).contains('1'));

    // Agents: none attested yet.
    let agents = server.cli_ok(&["agent", "count"]);
    assert!(agents.contains('0'), "{agents}");

    // debug getinfo (upstream v1.15): the counts and the server's own SVID chain.
    let info = server.cli_ok(&["debug", "getinfo"]);
    assert!(info.starts_with("Server Debug Info:\n  Uptime:"), "{info}");
    assert!(info.contains("  Registered Agents:       0\n"), "{info}");
    assert!(info.contains("  Federated Bundles:       0\n"), "{info}");
    assert!(
        info.contains("[0] SPIFFE ID:  spiffe://example.org/spire/server\n"),
        "{info}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["debug", "getinfo", "-output", "json"])).unwrap();
    assert_eq!(
        info["svid_chain"][0]["id"]["path"], "/spire/server",
        "{info}"
    );
    assert!(info["uptime"].is_number(), "{info}");
    let unknown = server.cli(&[
        "agent",
        "show",
        "-spiffeID",
        "spiffe://example.org/spire/agent/x",
    ]);
    assert_eq!(unknown.status.code(), Some(1));

    // x509 mint -write: an SVID, its key and the bundle on disk.
    let out_dir = dir.path().join("minted");
    std::fs::create_dir(&out_dir).unwrap();
    server.cli_ok(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/minted",
        "-ttl",
        "10m",
        "-write",
        out_dir.to_str().unwrap(),
    ]);
    let svid = std::fs::read_to_string(out_dir.join("svid.pem")).unwrap();
    let chain = spire_core::pem::decode_certificates(svid.as_bytes()).unwrap();
    let id = spire_core::x509::certificate_spiffe_id(&chain[0]).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/minted");
    assert!(out_dir.join("key.pem").exists());
    assert!(out_dir.join("bundle.pem").exists());

    // jwt mint: a token for the audience.
    let token = server.cli_ok(&[
        "jwt",
        "mint",
        "-spiffeID",
        "spiffe://example.org/minted",
        "-audience",
        "db",
    ]);
    assert_eq!(token.trim().split('.').count(), 3, "{token}");

    // Local authorities: an active X509 authority exists; prepare a next one.
    let state = server.cli_json(&["localauthority", "x509", "show"]);
    assert!(state["active"]["authority_id"].is_string(), "{state}");
    let prepared = server.cli_json(&["localauthority", "x509", "prepare"]);
    assert!(
        prepared["prepared_authority"]["authority_id"].is_string(),
        "{prepared}"
    );

    // Logger: set, get, reset.
    server.cli_ok(&["logger", "set", "-level", "debug"]);
    let level = server.cli_json(&["logger", "get"]);
    assert_eq!(level["current_level"], "DEBUG", "{level}");
    server.cli_ok(&["logger", "reset"]);
}

/// Output details upstream's CLI has and a reading of the protos would miss (found by running
/// upstream's CLI next to ours): key order, nulls, sorting, byte fields and the downstream
/// filter.
#[test]
fn json_and_filters_match_upstreams_cli() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), "");

    // Selectors given out of order come back sorted, as upstream's `entry show` sorts them,
    // and entries come sorted by SPIFFE ID.
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/agent",
        "-spiffeID",
        "spiffe://example.org/z",
        "-selector",
        "unix:uid:2",
        "-selector",
        "unix:gid:9",
        "-selector",
        "docker:label:a",
    ]);
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/agent",
        "-spiffeID",
        "spiffe://example.org/downstream",
        "-selector",
        "unix:uid:3",
        "-downstream",
    ]);
    let shown = server.cli_json(&["entry", "show"]);
    let entries = shown["entries"].as_array().unwrap();
    // `false` from upstream's CLI (and ours) filters nothing: the downstream entry is listed.
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["spiffe_id"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/downstream", "/z"], "{shown}");
    let selectors = selector_strings(&entries[1]["selectors"]);
    assert_eq!(selectors, ["docker:label:a", "unix:gid:9", "unix:uid:2"]);
    let only_downstream = server.cli_json(&["entry", "show", "-downstream"]);
    assert_eq!(only_downstream["entries"].as_array().unwrap().len(), 1);
    let counted = server.cli_json(&["entry", "count"]);
    assert_eq!(counted["count"], 2, "{counted}");

    // Keys sorted at every level and no nulls, as Go re-encodes protojson through maps.
    let raw = server.cli_ok(&[
        "entry",
        "show",
        "-spiffeID",
        "spiffe://example.org/z",
        "-output",
        "json",
    ]);
    let keys = [
        "\"admin\"",
        "\"created_at\"",
        "\"dns_names\"",
        "\"downstream\"",
        "\"id\"",
        "\"parent_id\"",
    ];
    let at: Vec<usize> = keys
        .iter()
        .map(|k| raw.find(k).unwrap_or(usize::MAX))
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "keys not in upstream's order: {raw}"
    );
    assert!(!raw.contains("null"), "{raw}");
    let authorities = server.cli_ok(&["localauthority", "x509", "show", "-output", "json"]);
    assert!(!authorities.contains("null"), "{authorities}");

    // `x509 mint -output json`: upstream's []byte fields, base64 DER, in a one-element array
    // (upstream's struct printer marshals its variadic slice).
    let minted = server.cli_json(&["x509", "mint", "-spiffeID", "spiffe://example.org/minted"]);
    assert_eq!(minted.as_array().map(Vec::len), Some(1), "{minted}");
    let minted = &minted[0];
    let leaf = b64
        .decode(minted["x509_svid"][0].as_str().unwrap())
        .unwrap();
    let id = spire_core::x509::certificate_spiffe_id(&leaf).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/minted");
    let key = b64.decode(minted["private_key"].as_str().unwrap()).unwrap();
    PrivateKey::from_der(&key).unwrap();
    let root = b64.decode(minted["root_cas"][0].as_str().unwrap()).unwrap();
    spire_core::x509::parse_certificates(&root).unwrap();

    // `bundle delete` echoes the ID as the operator gave it.
    let pem_path = dir.path().join("other.pem");
    std::fs::write(&pem_path, other_org_root_pem()).unwrap();
    server.cli_ok(&[
        "bundle",
        "set",
        "-id",
        "spiffe://other.org",
        "-path",
        pem_path.to_str().unwrap(),
    ]);
    let deleted = server.cli_json(&["bundle", "delete", "-id", "spiffe://other.org"]);
    assert_eq!(
        deleted["results"][0]["trust_domain"], "spiffe://other.org",
        "{deleted}"
    );
}
