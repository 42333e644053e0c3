//! Server keys whose effect shows outside the API, on the real binary:
//! `experimental.prune_events_older_than` decides which change events the prune pass (at
//! start, then hourly) deletes from the datastore (read with the `sqlite3` CLI), and the
//! bundle endpoint's `serving_cert_file.file_sync_interval` decides how soon a replaced
//! certificate is served (read with `openssl s_client`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use spire_e2e::{ServerProcess, eventually, free_port};

/// `SELECT count(*) FROM <table>` in the SQLite file at `db`.
fn count(db: &Path, table: &str) -> u64 {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(format!("SELECT count(*) FROM {table};"))
        .output()
        .expect("sqlite3 runs (apt-get install sqlite3)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn prune_events_older_than_decides_which_events_the_prune_pass_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), "");
    let db = dir.path().join("data/datastore.sqlite3");
    for n in 0..3 {
        server.create_entry(&[
            "-parentID",
            "spiffe://example.org/node",
            "-spiffeID",
            &format!("spiffe://example.org/w{n}"),
            "-selector",
            "unix:uid:1",
        ]);
    }
    server.generate_join_token("spiffe://example.org/node");
    let events = count(&db, "registered_entries_events");
    let entries = count(&db, "registered_entries");
    assert!(events >= 3, "{events}");

    // A restart runs the prune pass: with the default 12h, these events stay.
    std::thread::sleep(Duration::from_secs(3));
    server.start_again();
    assert_eq!(count(&db, "registered_entries_events"), events);

    // With 2s, the pass at start deletes them; events newer than that stay.
    let config = std::fs::read_to_string(&server.config_path).unwrap();
    std::fs::write(
        &server.config_path,
        config.replacen(
            "log_level = \"DEBUG\"",
            "log_level = \"DEBUG\"\n    experimental {\n        prune_events_older_than = \"2s\"\n    }",
            1,
        ),
    )
    .unwrap();
    server.stop();
    std::thread::sleep(Duration::from_secs(3));
    server.start_again();
    eventually("the old events are pruned", Duration::from_secs(60), || {
        count(&db, "registered_entries_events") == 0
    });
    server.create_entry(&[
        "-parentID",
        "spiffe://example.org/node",
        "-spiffeID",
        "spiffe://example.org/new",
        "-selector",
        "unix:uid:2",
    ]);
    assert_eq!(count(&db, "registered_entries_events"), 1);
    // The entries themselves are untouched.
    assert_eq!(count(&db, "registered_entries"), entries + 1);
}

/// A self-signed certificate for 127.0.0.1 with common name `cn`, written to `dir` as
/// `cert.pem` and `key.pem`.
fn write_certificate(dir: &Path, cn: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    // Write the key first and the certificate last, as an operator's tooling would; the
    // watcher only takes a pair that fits.
    std::fs::write(dir.join("key.pem.new"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.pem.new"), cert.pem()).unwrap();
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
}

/// The subject of the certificate served at 127.0.0.1:`port`, read by openssl.
fn served_subject(port: u16) -> String {
    let mut client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs (apt-get install openssl)");
    let stdout = client.stdout.take().unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(stdout)
        .output()
        .unwrap();
    let _ = client.wait();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn file_sync_interval_decides_how_soon_a_replaced_serving_certificate_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    write_certificate(&certs, "first");
    let bundle_port = free_port();
    let server = ServerProcess::start(
        dir.path(),
        &format!(
            "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {bundle_port}\n \
             profile \"https_web\" {{\n serving_cert_file {{\n cert_file_path = \"{cert}\"\n \
             key_file_path = \"{key}\"\n file_sync_interval = \"1s\"\n }}\n }}\n }}\n }}",
            cert = certs.join("cert.pem").display(),
            key = certs.join("key.pem").display(),
        ),
    );
    eventually(
        "the first certificate is served",
        Duration::from_secs(60),
        || served_subject(bundle_port).contains("first"),
    );

    // Upstream's default is a minute (the first check would come ~58s after this); with 1s
    // the new pair is served well within the 30s allowed.
    write_certificate(&certs, "second");
    eventually(
        "the second certificate is served",
        Duration::from_secs(30),
        || served_subject(bundle_port).contains("second"),
    );
    drop(server);
}
