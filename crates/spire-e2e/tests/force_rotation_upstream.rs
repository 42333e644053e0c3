//! Upstream's `force-rotation-upstream-authority` suite with our server and agent: a server
//! whose CA is signed by a `disk` UpstreamAuthority, an agent and a workload. The CA files are
//! swapped for a new upstream CA, `localauthority x509 prepare` + `activate` move the server to
//! a CA signed by it, `upstreamauthority taint -subjectKeyID <old root>` makes the agent renew
//! the workload's SVID under the new root, and `upstreamauthority revoke` removes the old root
//! from the bundle the workload receives. The CLI's answers are upstream's text; a refusal is
//! printed identically by upstream's v1.13.3 CLI against our server.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spire_e2e::{AgentProcess, ServerPaths, ServerProcess, current_uid, interop_program};

/// Several 5 s agent syncs on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(240);

/// An upstream CA as the suite's `00-setup` makes it: P-384, CA:TRUE, a hashed SKID.
fn generate_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let crt = dir.join(format!("{name}.crt"));
    let ext = dir.join(format!("{name}.cnf"));
    std::fs::write(
        &ext,
        "[req]\ndistinguished_name = dn\n[dn]\n[v3_req]\nsubjectKeyIdentifier=hash\n\
         basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectAltName=URI:spiffe://local\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run openssl (apt-get install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (key_s, crt_s, ext_s) = (
        key.display().to_string(),
        crt.display().to_string(),
        ext.display().to_string(),
    );
    run(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        &key_s,
    ]);
    run(&[
        "req",
        "-new",
        "-x509",
        "-key",
        &key_s,
        "-out",
        &crt_s,
        "-days",
        "1825",
        "-subj",
        &format!("/C=US/O=SPIFFE/CN={name}"),
        "-config",
        &ext_s,
        "-extensions",
        "v3_req",
    ]);
    (key, crt)
}

/// The lower-case hex SKID of a PEM certificate file.
fn skid_of(crt: &Path) -> String {
    let pem = std::fs::read(crt).unwrap();
    let der = spire_core::pem::decode_certificates(&pem).unwrap();
    spire_core::x509::subject_key_id(&der[0])
        .unwrap()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SKIDs of the certificates in a PEM file.
fn skids_in(pem_file: &Path) -> Vec<String> {
    let pem = std::fs::read(pem_file).unwrap_or_else(|e| panic!("read {pem_file:?}: {e}"));
    spire_core::pem::decode_certificates(&pem)
        .unwrap()
        .iter()
        .map(|der| {
            spire_core::x509::subject_key_id(der)
                .ok()
                .flatten()
                .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
                .unwrap_or_default()
        })
        .collect()
}

/// `api fetch x509 -write` into `out`, then `openssl verify` of the SVID's chain against
/// `root` as the suite's `09-verify-svid-rotation` does.
fn fetch_and_verify(agent: &AgentProcess, out: &Path, root: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let fetched = agent.cli(&["api", "fetch", "x509", "-write", &out.display().to_string()]);
    if !fetched.status.success() {
        return Err(format!(
            "api fetch x509: {}",
            String::from_utf8_lossy(&fetched.stderr)
        ));
    }
    let svid = out.join("svid.0.pem");
    let verified = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(&svid)
        .arg(&svid)
        .output()
        .unwrap();
    if verified.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl verify: {}{}",
            String::from_utf8_lossy(&verified.stdout),
            String::from_utf8_lossy(&verified.stderr)
        ))
    }
}

fn poll(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if start.elapsed() > TIMEOUT => panic!("{what} not within {TIMEOUT:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn tainted_and_revoked_upstream_authority_moves_workloads_to_the_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let sub = |name: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let cas = sub("cas");
    let (old_key, old_crt) = generate_ca(&cas, "old_upstream_ca");
    let (new_key, new_crt) = generate_ca(&cas, "new_upstream_ca");
    let dummy_key = cas.join("dummy_upstream_ca.key");
    let dummy_crt = cas.join("dummy_upstream_ca.crt");
    std::fs::copy(&old_key, &dummy_key).unwrap();
    std::fs::copy(&old_crt, &dummy_crt).unwrap();
    let (old_skid, new_skid) = (skid_of(&old_crt), skid_of(&new_crt));

    let server_dir = sub("server");
    let server = ServerProcess::start_on_free_port(&server_dir, |port| {
        let socket = server_dir.join("api.sock");
        let data_dir = server_dir.join("data");
        let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
        let config = spire_e2e::server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &connection_string,
            extra_server_keys: "",
        })
        .replacen(
            "plugins {\n",
            &format!(
                "plugins {{\n    UpstreamAuthority \"disk\" {{\n        plugin_data {{\n            \
                 key_file_path = \"{}\"\n            cert_file_path = \"{}\"\n        }}\n    \
                 }}\n",
                dummy_key.display(),
                dummy_crt.display()
            ),
            1,
        );
        let path = server_dir.join("server.conf");
        std::fs::write(&path, config).unwrap();
        (path, socket)
    });
    let alias = "spiffe://example.org/node";
    let token = server.generate_join_token(alias);
    let agent = AgentProcess::start(&sub("agent"), &server, Some(&token));
    server.create_uid_entry(alias, "spiffe://example.org/workload", current_uid(), &[]);

    // The workload's chain goes up to the old upstream CA.
    let fetched = sub("fetched");
    poll("the workload SVID under the old upstream CA", || {
        fetch_and_verify(&agent, &fetched, &old_crt)
    });
    let state = server.cli_json(&["localauthority", "x509", "show"]);
    assert_eq!(
        state["active"]["upstream_authority_subject_key_id"].as_str(),
        Some(old_skid.as_str()),
        "{state}"
    );

    // 05: the operator swaps the upstream CA files. 06: prepare signs with the new one.
    std::fs::copy(&new_key, &dummy_key).unwrap();
    std::fs::copy(&new_crt, &dummy_crt).unwrap();
    let bundle = server.cli_json(&["bundle", "show"]);
    assert_eq!(bundle["x509_authorities"].as_array().unwrap().len(), 1);
    let prepared = server.cli_json(&["localauthority", "x509", "prepare"]);
    let prepared_id = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{prepared}"))
        .to_owned();
    let bundle = server.cli_json(&["bundle", "show"]);
    assert_eq!(
        bundle["x509_authorities"].as_array().unwrap().len(),
        2,
        "the new upstream root joins the bundle at prepare: {bundle}"
    );
    let state = server.cli_json(&["localauthority", "x509", "show"]);
    assert_eq!(
        state["prepared"]["upstream_authority_subject_key_id"].as_str(),
        Some(new_skid.as_str()),
        "{state}"
    );
    // 07: activate.
    let activated = server.cli_json(&[
        "localauthority",
        "x509",
        "activate",
        "-authorityID",
        &prepared_id,
    ]);
    assert_eq!(
        activated["activated_authority"]["authority_id"].as_str(),
        Some(prepared_id.as_str())
    );
    let state = server.cli_json(&["localauthority", "x509", "show"]);
    assert_eq!(
        state["old"]["upstream_authority_subject_key_id"].as_str(),
        Some(old_skid.as_str()),
        "{state}"
    );
    // Not tainted yet: the workload keeps its SVID under the old root (it is not due).
    fetch_and_verify(&agent, &fetched, &old_crt).unwrap();
    assert!(fetch_and_verify(&agent, &fetched, &new_crt).is_err());

    // A refusal reads the same from our CLI and upstream's v1.13.3 CLI.
    let upstream_cli = interop_program("SPIRE_UPSTREAM_SERVER");
    let args = [
        "upstreamauthority",
        "taint",
        "-subjectKeyID",
        new_skid.as_str(),
    ];
    let ours = server.cli(&args);
    let theirs = server.cli_with(&upstream_cli, &args);
    assert!(!ours.status.success() && !theirs.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ours.stderr),
        String::from_utf8_lossy(&theirs.stderr),
        "our CLI and upstream's print the refusal alike"
    );
    assert!(
        String::from_utf8_lossy(&ours.stderr)
            .contains("unable to use upstream authority singing current authority"),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );

    // 08: taint the old upstream root through the CLI (upstream's text output).
    let tainted = server.cli_ok(&["upstreamauthority", "taint", "-subjectKeyID", &old_skid]);
    assert_eq!(
        tainted,
        format!("Tainted X.509 upstream authority:\n  Subject Key ID: {old_skid}\n")
    );
    let bundle = server.cli_json(&["bundle", "show"]);
    assert!(
        bundle["x509_authorities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["tainted"] == true),
        "{bundle}"
    );
    // 09: the agent renews the workload's SVID under the new root.
    poll("the workload SVID moving to the new upstream CA", || {
        fetch_and_verify(&agent, &fetched, &new_crt)
    });

    // 10: revoke it, with upstream's CLI (interop) and its text output.
    let revoked = server.cli_with(
        &upstream_cli,
        &["upstreamauthority", "revoke", "-subjectKeyID", &old_skid],
    );
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&revoked.stdout),
        format!("Revoked X.509 upstream authority:\n  Subject Key ID: {old_skid}\n")
    );
    // 11: the workload's bundle holds the new upstream root only.
    poll(
        "the old upstream root leaving the workload's bundle",
        || {
            fetch_and_verify(&agent, &fetched, &new_crt)?;
            let skids = skids_in(&fetched.join("bundle.0.pem"));
            (skids == [new_skid.clone()])
                .then_some(())
                .ok_or_else(|| format!("bundle.0.pem SKIDs {skids:?}"))
        },
    );
    let bundle = server.cli_json(&["bundle", "show"]);
    assert_eq!(
        bundle["x509_authorities"].as_array().unwrap().len(),
        1,
        "{bundle}"
    );
    drop(agent);
    drop(server);
}
