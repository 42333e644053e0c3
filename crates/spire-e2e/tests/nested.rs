//! Nested SPIRE end to end, on the model of upstream's `nested-rotation` and
//! `force-rotation-self-signed` suites: a root server and its agent, a nested server whose
//! `UpstreamAuthority "spire"` gets its SVID from that agent (its entry is `-downstream`),
//! an agent of the nested server and a workload under it. The workload's chain verifies
//! against the ROOT bundle with `openssl verify` and go-spiffe (`conformance/go/cmd/
//! nestedcheck`). Then the root's X.509 authority is rotated by hand (prepare, activate,
//! taint): the nested server rotates its CA away from the tainted root, marks it tainted in
//! its own bundle, its agent renews the workload's SVID, and the workload's chain moves to the
//! new root while the Workload API keeps answering. Revoking the old root at the root server
//! removes it from the nested server's bundle.
//!
//! Run three ways: all ours; an upstream v1.13.3 root server and agent over our nested server
//! and agent; our root server and agent under an upstream nested server and agent. Upstream's
//! binaries come from `. target/interop-deps.env` (scripts/interop-deps.sh builds them).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use spire_e2e::workload::Workload;
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, current_uid, interop_program, server_config,
};

/// Long enough for several 5 s polls and syncs on a loaded 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(240);

/// Which binaries play which part.
struct Programs {
    root_server: PathBuf,
    root_agent: PathBuf,
    nested_server: PathBuf,
    nested_agent: PathBuf,
    /// Whether the nested agent must serve without a gap through the rotation. Ours does;
    /// upstream's agent drops a tainted SVID from its cache before minting the next one, so
    /// its Workload API answers "no identity issued" for a moment (its workloads retry).
    no_gap: bool,
    /// Root server and agent run with `experimental.require_pq_kem = true` (ours only).
    root_pq: bool,
    /// The nested server (server level and its `spire` plugin) and its agent run with
    /// `require_pq_kem = true` (ours only: upstream v1.13.3 names the withdrawn Kyber draft).
    nested_pq: bool,
    /// A second nesting level (a server nested under the nested server, its agent and a
    /// workload), as upstream's `nested-rotation` suite; all-ours run only, to keep it short.
    second_level: bool,
}

impl Programs {
    fn ours() -> Self {
        Self {
            root_server: binary("spire-server"),
            root_agent: binary("spire-agent"),
            nested_server: binary("spire-server"),
            nested_agent: binary("spire-agent"),
            no_gap: true,
            root_pq: true,
            nested_pq: true,
            second_level: true,
        }
    }
}

/// `experimental.require_pq_kem = true` for a server or agent block, or nothing.
fn pq_keys(enabled: bool) -> &'static str {
    if enabled {
        "experimental {\n        require_pq_kem = true\n    }"
    } else {
        ""
    }
}

/// Whether a TLS 1.3 client offering only classic key exchanges (X25519, P-256: OpenSSL 3.0
/// has no ML-KEM) completes a handshake with the server on `port`.
fn accepts_classic_key_exchange(port: u16) -> bool {
    // `timeout`: a handshake that neither completes nor fails must not hang the test.
    let out = Command::new("timeout")
        .args([
            "120",
            "openssl",
            "s_client",
            "-tls1_3",
            "-groups",
            "X25519:P-256",
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run openssl (apt-get install openssl): {e}"));
    out.status.success()
}

/// Checks the key exchange policy of the server on `port`: with `require_pq_kem` a classic-only
/// client is refused (the server's own agent and peers got through, so X25519MLKEM768 works);
/// without it the same client gets in (the control).
fn assert_key_exchange_policy(what: &str, port: u16, require_pq_kem: bool) {
    assert_eq!(
        accepts_classic_key_exchange(port),
        !require_pq_kem,
        "{what} (require_pq_kem = {require_pq_kem}): a client offering only X25519/P-256"
    );
}

/// The PEM bundle `api fetch x509 -write` last wrote next to the SVID (see
/// [`verify_with_openssl`]), as DER certificates.
fn fetched_bundle(dir: &Path) -> Vec<Vec<u8>> {
    let pem = std::fs::read_to_string(dir.join("fetched").join("bundle.0.pem"))
        .unwrap_or_else(|e| panic!("read bundle.0.pem: {e}"));
    pem_certificates(&pem)
}

/// A failing `upstreamauthority` CLI call's stderr, which must contain `expected`.
fn assert_cli_refusal(server: &ServerProcess, args: &[&str], expected: &[&str]) {
    let out = server.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "{args:?}: {part:?} not in {stderr}");
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|e| panic!("workspace root: {e}"))
}

/// The go-spiffe checker, built once per test process.
fn nestedcheck() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out_dir = std::env::temp_dir().join(format!("nestedcheck-{}", std::process::id()));
        std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        let out = out_dir.join("nestedcheck");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("./cmd/nestedcheck")
            .current_dir(workspace_root().join("conformance/go"))
            // GOPROXY=off: never the network; scripts/conformance-deps.sh fills the cache.
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `go` ({e}): install Go 1.24+ and run scripts/conformance-deps.sh \
                     for the go-spiffe module"
                )
            });
        assert!(
            status.success(),
            "go build ./cmd/nestedcheck failed: run scripts/conformance-deps.sh to fill the Go \
             module cache with go-spiffe"
        );
        out
    })
}

/// The nested server's config: the test template plus `UpstreamAuthority "spire"` pointing
/// at the root server through the root agent's Workload API.
fn nested_server_config(
    port: u16,
    dir: &Path,
    root_port: u16,
    root_agent_socket: &Path,
    require_pq_kem: bool,
) -> (PathBuf, PathBuf) {
    let socket = dir.join("api.sock");
    let data_dir = dir.join("data");
    let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
    let config = server_config(&ServerPaths {
        port,
        socket: &socket,
        data_dir: &data_dir,
        keys: &data_dir.join("keys.json"),
        database_type: "sqlite3",
        connection_string: &connection_string,
        extra_server_keys: pq_keys(require_pq_kem),
    })
    .replacen(
        "plugins {\n",
        &format!(
            r#"plugins {{
    UpstreamAuthority "spire" {{
        plugin_data {{
            server_address = "127.0.0.1"
            server_port = "{root_port}"
            workload_api_socket = "{socket}"
            experimental {{
                require_pq_kem = {require_pq_kem}
            }}
        }}
    }}
"#,
            socket = root_agent_socket.display()
        ),
        1,
    );
    let path = dir.join("server.conf");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("write nested config: {e}"));
    (path, socket)
}

fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    spire_core::pem::decode_certificates(pem.as_bytes())
        .unwrap_or_else(|e| panic!("PEM certificates: {e}\n{pem}"))
}

fn skid(der: &[u8]) -> String {
    spire_core::x509::subject_key_id(der)
        .ok()
        .flatten()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

/// Fetches the workload's SVID from `agent` with `api fetch x509 -write` and checks its chain
/// against `roots` with `openssl verify`; `Err` carries why it did not verify. With `no_gap`
/// a failing fetch is a gap in service and fails the test.
fn verify_with_openssl(
    agent: &AgentProcess,
    dir: &Path,
    roots: &[Vec<u8>],
    no_gap: bool,
) -> Result<(), String> {
    let out_dir = dir.join("fetched");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let out_arg = out_dir.display().to_string();
    let out = agent.cli(&["api", "fetch", "x509", "-write", &out_arg]);
    if !no_gap && !out.status.success() {
        return Err(format!(
            "api fetch x509: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    assert!(
        out.status.success(),
        "the Workload API did not answer (a gap in service): {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let chain_pem = std::fs::read_to_string(out_dir.join("svid.0.pem"))
        .unwrap_or_else(|e| panic!("read svid.0.pem: {e}"));
    let chain = pem_certificates(&chain_pem);
    let (leaf, intermediates) = chain.split_first().unwrap_or_else(|| panic!("empty chain"));
    let write = |name: &str, certs: &[Vec<u8>]| {
        let path = out_dir.join(name);
        std::fs::write(
            &path,
            spire_core::pem::encode_certificates(certs.iter().map(Vec::as_slice)),
        )
        .unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    };
    let leaf_path = write("leaf.pem", std::slice::from_ref(leaf));
    let roots_path = write("roots.pem", roots);
    let mut command = Command::new("openssl");
    command.arg("verify").arg("-CAfile").arg(&roots_path);
    if !intermediates.is_empty() {
        command
            .arg("-untrusted")
            .arg(write("intermediates.pem", intermediates));
    }
    let out = command
        .arg(&leaf_path)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (apt-get install openssl): {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// go-spiffe's verdict on the workload's SVID against `roots`.
fn verify_with_go_spiffe(
    agent: &AgentProcess,
    dir: &Path,
    roots: &[Vec<u8>],
) -> Result<(), String> {
    let bundle = dir.join("go-spiffe-roots.pem");
    std::fs::write(
        &bundle,
        spire_core::pem::encode_certificates(roots.iter().map(Vec::as_slice)),
    )
    .unwrap_or_else(|e| panic!("write bundle: {e}"));
    let out = Command::new(nestedcheck())
        .arg("example.org")
        .arg(&bundle)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", agent.socket_path.display()),
        )
        .output()
        .unwrap_or_else(|e| panic!("run nestedcheck: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "go-spiffe: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The root server's X.509 roots as `bundle show` prints them.
fn bundle_roots(server: &ServerProcess) -> Vec<Vec<u8>> {
    pem_certificates(&server.cli_ok(&["bundle", "show"]))
}

/// `(subject key ID, tainted)` of every X.509 authority in `server`'s bundle.
fn bundle_authorities(server: &ServerProcess) -> Vec<(String, bool)> {
    let bundle = server.cli_json(&["bundle", "show"]);
    bundle["x509_authorities"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            use base64::Engine as _;
            let der = base64::engine::general_purpose::STANDARD
                .decode(a["asn1"].as_str().unwrap_or_default())
                .unwrap_or_default();
            (skid(&der), a["tainted"].as_bool().unwrap_or(false))
        })
        .collect()
}

fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(e) if start.elapsed() > timeout => panic!("{what} not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn run_nested(programs: &Programs) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = dir.path();
    let uid = current_uid();
    let sub = |name: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
        path
    };

    // Root server and agent.
    let root = ServerProcess::start_program(
        &programs.root_server,
        &sub("root"),
        pq_keys(programs.root_pq),
    );
    let root_agent_alias = "spiffe://example.org/root-agent";
    let token = root.generate_join_token(root_agent_alias);
    let root_agent = AgentProcess::start_program_at_port(
        &programs.root_agent,
        &sub("root-agent"),
        root.port,
        Some(&token),
        pq_keys(programs.root_pq),
    );
    root.create_uid_entry(
        root_agent_alias,
        "spiffe://example.org/nested-server",
        uid,
        &["-downstream"],
    );
    root_agent.cli_eventually(&["api", "fetch", "x509"], STEP_TIMEOUT);

    // The nested server, its agent and the workload under it.
    let nested_dir = sub("nested");
    let root_agent_socket = root_agent.socket_path.clone();
    let nested =
        ServerProcess::start_program_on_free_port(&programs.nested_server, &nested_dir, |port| {
            nested_server_config(
                port,
                &nested_dir,
                root.port,
                &root_agent_socket,
                programs.nested_pq,
            )
        });
    let nested_agent_alias = "spiffe://example.org/nested-agent";
    let token = nested.generate_join_token(nested_agent_alias);
    let nested_agent = AgentProcess::start_program_at_port(
        &programs.nested_agent,
        &sub("nested-agent"),
        nested.port,
        Some(&token),
        pq_keys(programs.nested_pq),
    );
    nested.create_uid_entry(
        nested_agent_alias,
        "spiffe://example.org/workload",
        uid,
        &[],
    );

    // The nested server's CA chains to the root: its state names the upstream authority.
    let state = nested.cli_json(&["localauthority", "x509", "show"]);
    let upstream_skid = state["active"]["upstream_authority_subject_key_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let root_state = root.cli_json(&["localauthority", "x509", "show"]);
    let old_root_id = root_state["active"]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("root has no active authority: {root_state}"))
        .to_owned();
    assert_eq!(
        upstream_skid, old_root_id,
        "the nested CA must be signed by the root's active authority: {state}"
    );

    // The nested server published its JWT key to the root: the root's bundle has it.
    let jwt_state = nested.cli_json(&["localauthority", "jwt", "show"]);
    let nested_kid = jwt_state["active"]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("nested server has no active JWT key: {jwt_state}"))
        .to_owned();
    poll(
        "the nested JWT key in the root bundle",
        STEP_TIMEOUT,
        || {
            let bundle = root.cli_json(&["bundle", "show"]);
            bundle["jwt_authorities"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k["key_id"] == nested_kid.as_str()))
                .then_some(())
                .ok_or_else(|| bundle.to_string())
        },
    );

    nested_agent.cli_eventually(&["api", "fetch", "x509"], STEP_TIMEOUT);
    // Every hop above went through the servers' TLS listeners: with require_pq_kem only
    // X25519MLKEM768 was possible there (agents, the nested server's plugin, go and rust
    // clients); a classic-only client is refused, and accepted where the policy is off.
    assert_key_exchange_policy("root server", root.port, programs.root_pq);
    assert_key_exchange_policy("nested server", nested.port, programs.nested_pq);
    let work = sub("work");
    let old_roots = bundle_roots(&root);
    poll(
        "the workload's chain verifying against the root bundle",
        STEP_TIMEOUT,
        || verify_with_openssl(&nested_agent, &work, &old_roots, programs.no_gap),
    );
    verify_with_go_spiffe(&nested_agent, &work, &old_roots)
        .unwrap_or_else(|e| panic!("{e}\nnested agent log:\n{}", nested_agent.log()));

    // The second level: an agent of the nested server serves the `-downstream` entry of a
    // server nested under it, whose own agent serves a workload.
    let second = programs.second_level.then(|| {
        let alias = "spiffe://example.org/nested-agent-2";
        let token = nested.generate_join_token(alias);
        let agent = AgentProcess::start_program_at_port(
            &programs.nested_agent,
            &sub("nested-agent-2"),
            nested.port,
            Some(&token),
            pq_keys(programs.nested_pq),
        );
        nested.create_uid_entry(
            alias,
            "spiffe://example.org/nested-server-2",
            uid,
            &["-downstream"],
        );
        agent.cli_eventually(&["api", "fetch", "x509"], STEP_TIMEOUT);
        let server_dir = sub("nested-2");
        let socket = agent.socket_path.clone();
        let server = ServerProcess::start_program_on_free_port(
            &programs.nested_server,
            &server_dir,
            |port| {
                nested_server_config(port, &server_dir, nested.port, &socket, programs.nested_pq)
            },
        );
        let alias = "spiffe://example.org/nested-agent-3";
        let token = server.generate_join_token(alias);
        let workload_agent = AgentProcess::start_program_at_port(
            &programs.nested_agent,
            &sub("nested-agent-3"),
            server.port,
            Some(&token),
            pq_keys(programs.nested_pq),
        );
        server.create_uid_entry(alias, "spiffe://example.org/workload-2", uid, &[]);
        let work = sub("work-2");
        poll(
            "the second-level workload's chain verifying against the root bundle",
            STEP_TIMEOUT,
            // Not served yet is no gap: the entry may still be on its way to the agent.
            || verify_with_openssl(&workload_agent, &work, &old_roots, false),
        );
        verify_with_go_spiffe(&workload_agent, &work, &old_roots)
            .unwrap_or_else(|e| panic!("second level: {e}"));
        // leaf, second-level CA, nested CA. Upstream's subject rule: the signing CA's subject
        // with OU=DOWNSTREAM-<length of the signer's chain>; the nested server's chain is its
        // own CA alone (the root is self-signed), so the second level is DOWNSTREAM-1 again.
        let chain = pem_certificates(
            &std::fs::read_to_string(work.join("fetched").join("svid.0.pem"))
                .unwrap_or_else(|e| panic!("read svid.0.pem: {e}")),
        );
        assert_eq!(chain.len(), 3, "leaf, second-level CA, nested CA");
        for ca in &chain[1..] {
            let pem = spire_core::pem::encode_certificates([ca.as_slice()]);
            let mut openssl = Command::new("openssl")
                .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("run openssl: {e}"));
            {
                use std::io::Write as _;
                let mut stdin = openssl.stdin.take().unwrap_or_else(|| panic!("stdin"));
                stdin
                    .write_all(pem.as_bytes())
                    .unwrap_or_else(|e| panic!("write to openssl: {e}"));
            }
            let out = openssl
                .wait_with_output()
                .unwrap_or_else(|e| panic!("openssl: {e}"));
            let subject = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(subject.contains("OU=DOWNSTREAM-1"), "{subject}");
        }
        (agent, server, workload_agent, work)
    });

    // A workload holds its stream open through the rotation.
    let workload = Workload::new(&nested_agent.socket_path);
    let (stream, first) = workload.open_with(1, STEP_TIMEOUT);

    // Forced rotation at the root: prepare, activate, taint.
    let prepared = root.cli_json(&["localauthority", "x509", "prepare"]);
    let new_root_id = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("prepare returned no authority: {prepared}"))
        .to_owned();
    root.cli_json(&[
        "localauthority",
        "x509",
        "activate",
        "-authorityID",
        &new_root_id,
    ]);
    let new_root: Vec<Vec<u8>> = bundle_roots(&root)
        .into_iter()
        .filter(|der| skid(der) == new_root_id)
        .collect();
    assert_eq!(new_root.len(), 1, "the prepared root is in the root bundle");
    root.cli_json(&[
        "localauthority",
        "x509",
        "taint",
        "-authorityID",
        &old_root_id,
    ]);

    // The nested server follows: the old root is tainted in its bundle ...
    poll(
        "the old root tainted in the nested bundle",
        STEP_TIMEOUT,
        || {
            let authorities = bundle_authorities(&nested);
            authorities
                .iter()
                .any(|(id, tainted)| *id == old_root_id && *tainted)
                .then_some(())
                .ok_or_else(|| format!("{authorities:?}"))
        },
    );
    // ... its CA now chains to the new root ...
    let state = nested.cli_json(&["localauthority", "x509", "show"]);
    assert_eq!(
        state["active"]["upstream_authority_subject_key_id"].as_str(),
        Some(new_root_id.as_str()),
        "{state}\nnested server log:\n{}",
        nested.log()
    );
    // `upstreamauthority taint` on the nested server (its `spire` upstream authority): the
    // root it names is already tainted (the root server drove it), and the root signing the
    // current CA cannot be tainted; both refusals as upstream's.
    assert_cli_refusal(
        &nested,
        &["upstreamauthority", "taint", "-subjectKeyID", &old_root_id],
        &[
            "could not taint X.509 upstream authority",
            "code = Internal",
            "failed to taint upstream authority",
        ],
    );
    assert_cli_refusal(
        &nested,
        &["upstreamauthority", "taint", "-subjectKeyID", &new_root_id],
        &[
            "could not taint X.509 upstream authority",
            "code = InvalidArgument",
            "unable to use upstream authority singing current authority",
        ],
    );
    // ... and the workload's chain moves to the new root with the Workload API answering
    // all along (every poll fetches successfully).
    poll(
        "the workload's chain moving to the new root",
        STEP_TIMEOUT,
        || verify_with_openssl(&nested_agent, &work, &new_root, programs.no_gap),
    );
    verify_with_go_spiffe(&nested_agent, &work, &new_root)
        .unwrap_or_else(|e| panic!("{e}\nnested agent log:\n{}", nested_agent.log()));
    // Two levels down, the taint cascades the same way.
    if let Some((_, server, workload_agent, work)) = &second {
        poll(
            "the second-level workload's chain moving to the new root",
            STEP_TIMEOUT,
            || verify_with_openssl(workload_agent, work, &new_root, programs.no_gap),
        );
        let state = server.cli_json(&["localauthority", "x509", "show"]);
        assert!(
            state["old"]["authority_id"].is_string(),
            "the second level rotated its CA: {state}"
        );
    }
    if programs.no_gap {
        let first = first
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no SVID in the first message"));
        stream.rotation_of(&first);
        assert!(stream.is_open(), "the workload's stream stays open");
    }

    // Until revoked, the tainted old root stays in the bundle the nested agent hands out.
    assert!(
        fetched_bundle(&work)
            .iter()
            .any(|der| skid(der) == old_root_id),
        "the tainted old root is still in the workload's bundle before revocation"
    );

    // Revoking the old root at the root removes it downstream too.
    root.cli_json(&[
        "localauthority",
        "x509",
        "revoke",
        "-authorityID",
        &old_root_id,
    ]);
    poll(
        "the old root gone from the nested bundle",
        STEP_TIMEOUT,
        || {
            let authorities = bundle_authorities(&nested);
            (!authorities.iter().any(|(id, _)| *id == old_root_id))
                .then_some(())
                .ok_or_else(|| format!("{authorities:?}"))
        },
    );
    // ... down to the bundle the nested agent gives its workload.
    poll(
        "the old root gone from the nested workload's bundle",
        STEP_TIMEOUT,
        || {
            verify_with_openssl(&nested_agent, &work, &new_root, programs.no_gap)?;
            let ids: Vec<String> = fetched_bundle(&work).iter().map(|d| skid(d)).collect();
            (!ids.contains(&old_root_id) && ids.contains(&new_root_id))
                .then_some(())
                .ok_or_else(|| format!("bundle.0.pem roots: {ids:?}"))
        },
    );
    // `upstreamauthority revoke` on the nested server for the root already gone: refused
    // (nothing left to revoke), as upstream's.
    assert_cli_refusal(
        &nested,
        &["upstreamauthority", "revoke", "-subjectKeyID", &old_root_id],
        &[
            "could not revoke X.509 upstream authority",
            "failed to revoke X.509 upstream authority",
        ],
    );
    drop(second);
    drop(nested_agent);
    drop(nested);
    drop(root_agent);
    drop(root);
}

#[test]
fn nested_server_chains_to_root_and_follows_forced_rotation() {
    run_nested(&Programs::ours());
}

#[test]
fn our_nested_server_under_upstream_root_server() {
    run_nested(&Programs {
        root_server: interop_program("SPIRE_UPSTREAM_SERVER"),
        root_agent: interop_program("SPIRE_UPSTREAM_AGENT"),
        // Upstream's root keeps Go's default key exchanges (X25519MLKEM768 among them); our
        // nested server and its `spire` plugin require the post-quantum one.
        root_pq: false,
        second_level: false,
        ..Programs::ours()
    });
}

#[test]
fn upstream_nested_server_under_our_root_server() {
    run_nested(&Programs {
        nested_server: interop_program("SPIRE_UPSTREAM_SERVER"),
        nested_agent: interop_program("SPIRE_UPSTREAM_AGENT"),
        no_gap: false,
        // Our root requires X25519MLKEM768 and upstream's nested server (Go's defaults)
        // offers it; upstream's own require_pq_kem names the withdrawn Kyber draft.
        nested_pq: false,
        second_level: false,
        ..Programs::ours()
    });
}

/// Upstream's own nested configurations (the `nested-rotation` suite's server.conf files, in
/// tests/data/nested-rotation, and the `UpstreamAuthority "spire"` sample of upstream's plugin
/// doc with its trailing commas) pass `spire-server validate` with our binary and upstream's.
/// The `/opt/spire` paths are moved to a temporary directory where the x509pop CA bundle
/// exists: our `validate` also loads the plugins' files (upstream's does not, and fails on a
/// missing one only at start).
#[test]
fn upstream_nested_configs_validate_with_both_binaries() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = dir.path();
    let ca = dir.join("agent-cacert.pem");
    let key = spire_core::keys::PrivateKey::generate(spire_core::keys::KeyType::EcP256)
        .unwrap_or_else(|e| panic!("key: {e}"));
    let der = spire_core::x509::self_signed_ca(
        &key,
        &spire_core::x509::CaTemplate::new(
            spire_core::spiffe_id::TrustDomain::new("domain.test").unwrap(),
            spire_core::x509::Validity::from_now(
                time::OffsetDateTime::now_utc(),
                time::Duration::hours(1),
            ),
        ),
    )
    .unwrap_or_else(|e| panic!("CA: {e}"));
    std::fs::write(&ca, spire_core::pem::encode_certificates([der.as_slice()])).unwrap();
    let data = workspace_root().join("crates/spire-e2e/tests/data/nested-rotation");
    let localize = |text: &str| {
        text.replace(
            "/opt/spire/conf/server/agent-cacert.pem",
            &ca.display().to_string(),
        )
        .replace("/opt/spire", &dir.display().to_string())
    };
    let mut configs: Vec<(String, String)> = ["root", "intermediateA", "leafA", "leafB"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(data.join(format!("{name}-server.conf")))
                .unwrap_or_else(|e| panic!("read {name}-server.conf: {e}"));
            (name.to_string(), localize(&text))
        })
        .collect();
    let root = configs[0].1.clone();
    configs.push((
        "plugin doc sample".into(),
        root.replacen(
            "plugins {",
            r#"plugins {
    UpstreamAuthority "spire" {
        plugin_data {
            server_address = "upstream-spire-server",
            server_port = "8081",
            workload_api_socket = "/tmp/spire-agent/public/api.sock"
        }
    }"#,
            1,
        ),
    ));
    for (name, text) in &configs {
        let path = dir.join("server.conf");
        std::fs::write(&path, text).unwrap();
        for program in [
            binary("spire-server"),
            interop_program("SPIRE_UPSTREAM_SERVER"),
        ] {
            let out = Command::new(&program)
                .args(["validate", "-config"])
                .arg(&path)
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success()
                    && stdout.contains("SPIRE server configuration file is valid."),
                "{name} with {}: {stdout}{}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The control: both refuse a config without its trust domain (upstream's validate does not
    // look into plugin_data, so a plugin error would not do).
    let broken = configs[4].1.replace("trust_domain = \"domain.test\"", "");
    assert_ne!(broken, configs[4].1);
    let path = dir.join("server.conf");
    std::fs::write(&path, broken).unwrap();
    for program in [
        binary("spire-server"),
        interop_program("SPIRE_UPSTREAM_SERVER"),
    ] {
        let out = Command::new(&program)
            .args(["validate", "-config"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("file is valid."),
            "{} accepted a config without trust_domain",
            program.display()
        );
    }
}
