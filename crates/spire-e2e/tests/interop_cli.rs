//! The server CLI, compared with upstream's command by command: one script touching every
//! command group (`entry` with every flag and `-data`, `agent`, `bundle` in PEM and spiffe
//! formats, `token`, `x509 mint`, `jwt mint`, `localauthority`, `logger`, `healthcheck`,
//! `federation` with both endpoint profiles, trust domain bundles and `-data`),
//! run four ways on four fresh servers, each with one attested agent (upstream's v1.13.3
//! agent in all four, so that no run's agent reports a version the reference server could
//! not record: SPIRE 1.15's `agent_version` is checked in `entry_attributes.rs`):
//!
//! | run          | CLI        | server     |
//! |--------------|------------|------------|
//! | `reference`  | upstream's | upstream's |
//! | `ours`       | ours       | ours       |
//! | `theirs→ours`| upstream's | ours       |
//! | `ours→theirs`| ours       | upstream's |
//!
//! Every step's exit code, standard output and standard error (pretty and `-output json`) must
//! equal the reference's once what is random per server is normalised: join tokens and other
//! UUIDs, keys, certificates, JWTs, authority IDs, serial numbers, timestamps and the temp
//! folder; and the fields our wire carries from the newer sdk (v1.15: `wit_authorities`,
//! `agent_version`) are dropped while empty. Everything else, field names, order, spacing,
//! messages, is compared as is.
//!
//! The upstream binaries come from `scripts/interop-deps.sh` (the test command runs it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: failures should be loud"
)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use regex::Regex;
use spire_e2e::{AgentProcess, ServerProcess, binary, interop_program};

/// One line of `tests/data/server-cli.script`: a CLI invocation, with what to keep of it.
struct Step {
    /// The line as written (without `(refused)`), naming the step in reports.
    line: String,
    args: Vec<String>,
    /// Stores the string at this JSON pointer of the step's output as a variable.
    capture: Option<(String, String)>,
    /// Writes the step's standard output to this file in `{dir}`.
    save: Option<String>,
    /// The step is expected to fail.
    refused: bool,
    /// Our server answers this step with other words or codes than upstream's (see
    /// [`FEDERATION_SCRIPT`]): where our server serves it, only the exit code is compared.
    server_differs: bool,
}

/// The agents' alias.
const NODE: &str = "spiffe://example.org/node";

/// The `federation` steps, in the script's format, run after the script's: relationships with
/// both endpoint profiles, trust domain bundles from a PEM file, from a SPIFFE bundle file
/// (`other.jwks`, saved by the script) and inline in `-data` documents, the server's refusals
/// (a duplicate, the server's own trust domain, a plain-HTTP URL, a bundle of another trust
/// domain, relationships that do not exist), and the CLI's own. Relationships are created
/// last so that no earlier step sees their bundles; `refresh` is only run for a trust domain
/// without a relationship, since a real refresh would depend on the network.
///
/// Steps marked `(server differs)` get other words from our trust domain API than from
/// upstream's: for a duplicate relationship both answer `Internal`, upstream with its SQLite
/// driver's text ("datastore-sql: UNIQUE constraint failed:
/// federated_trust_domains.trust_domain"), ours naming the trust domain. Our CLI prints what
/// it is given exactly as upstream's does (the `ours→theirs` run compares it in full), so
/// only the exit code is compared where our server answers.
const FEDERATION_SCRIPT: &str = "
federation list
federation list -output json
federation create -trustDomain fed-web.org -bundleEndpointURL https://fed-web.org/bundle -bundleEndpointProfile https_web
federation create -trustDomain fed-spiffe.org -bundleEndpointURL https://fed-spiffe.org:8443/bundle -bundleEndpointProfile https_spiffe -endpointSpiffeID spiffe://fed-spiffe.org/spire/server -output json
federation create -trustDomain fed-pem.org -bundleEndpointURL https://fed-pem.org/bundle -bundleEndpointProfile https_web -trustDomainBundlePath {dir}/other.pem -output json
federation create -trustDomain fed-jwks.org -bundleEndpointURL https://fed-jwks.org/bundle -bundleEndpointProfile https_spiffe -endpointSpiffeID spiffe://fed-jwks.org/server -trustDomainBundlePath {dir}/other.jwks -trustDomainBundleFormat spiffe
federation create -trustDomain fed-web.org -bundleEndpointURL https://fed-web.org/bundle -bundleEndpointProfile https_web (refused) (server differs)
federation create -trustDomain fed-web.org -bundleEndpointURL https://fed-web.org/bundle -bundleEndpointProfile https_web -output json (server differs)
federation create -trustDomain example.org -bundleEndpointURL https://example.org/bundle -bundleEndpointProfile https_web (refused)
federation create -trustDomain fed-http.org -bundleEndpointURL http://fed-http.org/bundle -bundleEndpointProfile https_web (refused)
federation create -trustDomain fed-other.org -bundleEndpointURL https://fed-other.org/bundle -bundleEndpointProfile https_spiffe -endpointSpiffeID spiffe://other.org/server -trustDomainBundlePath {dir}/other.pem (refused)
federation create -trustDomain fed-bad.org -bundleEndpointURL https://fed-bad.org/bundle -bundleEndpointProfile https_spiffe (refused)
federation create -trustDomain fed-bad.org -bundleEndpointURL https://fed-bad.org/bundle -bundleEndpointProfile https_web -trustDomainBundlePath {dir}/entries.json (refused)
federation create -data {dir}/relationships.json (refused)
federation create -data {dir}/relationships.json -output json (server differs)
federation create -data {dir}/relationships.json -trustDomain fed-x.org (refused)
federation create -data {dir}/bad-relationships.json (refused)
federation create (refused)
federation list
federation list -output json
federation show -trustDomain fed-spiffe.org
federation show -trustDomain fed-pem.org -output json
federation show -trustDomain spiffe://fed-jwks.org -output json
federation show -trustDomain nowhere.org (refused)
federation show (refused)
bundle list -id spiffe://fed-pem.org
bundle list -id spiffe://fed-data-3.org -format spiffe
federation update -trustDomain fed-web.org -bundleEndpointURL https://fed-web.org/v2 -bundleEndpointProfile https_spiffe -endpointSpiffeID spiffe://fed-web.org/server
federation update -trustDomain fed-spiffe.org -bundleEndpointURL https://fed-spiffe.org/v2 -bundleEndpointProfile https_web -output json
federation update -data {dir}/update-relationships.json (refused)
federation update -data {dir}/update-relationships.json -output json
federation update -trustDomain nowhere.org -bundleEndpointURL https://nowhere.org/bundle -bundleEndpointProfile https_web (refused)
federation show -trustDomain fed-web.org
federation list
federation delete -id fed-web.org
federation delete -id spiffe://fed-spiffe.org -output json
federation delete -id fed-web.org (refused)
federation delete -id fed-web.org -output json
federation delete (refused)
federation refresh -id spiffe://nowhere.org (refused)
federation refresh -id spiffe://nowhere.org -output json (refused)
federation refresh (refused)
federation list
";

/// A CA certificate of upstream's federation CLI tests (valid until 9999), inline in
/// `relationships.json`.
const FEDERATION_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBKjCB0aADAgECAgEBMAoGCCqGSM49BAMCMAAwIhgPMDAwMTAxMDEwMDAwMDBa\nGA85OTk5MTIzMTIzNTk1OVowADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHyv\nsCk5yi+yhSzNu5aquQwvm8a1Wh+qw1fiHAkhDni+wq+g3TQWxYlV51TCPH030yXs\nRxvujD4hUUaIQrXk4KKjODA2MA8GA1UdEwEB/wQFMAMBAf8wIwYDVR0RAQH/BBkw\nF4YVc3BpZmZlOi8vZG9tYWluMS50ZXN0MAoGCCqGSM49BAMCA0gAMEUCIA2dO09X\nmakw2ekuHKWC4hBhCkpr5qY4bI8YUcXfxg/1AiEA67kMyH7bQnr7OVLUrL+b9ylA\ndZglS5kKnYigmwDh+/U=\n-----END CERTIFICATE-----\n";

/// `federation create -data`: both profiles and inline bundles in both formats (the
/// endpoint ID spelled `endpointSpiffeID` once, which Go's decoder matches without case).
fn relationships_json() -> String {
    serde_json::json!({"federationRelationships": [
        {"trustDomain": "fed-data-1.org", "bundleEndpointURL": "https://fed-data-1.org/bundle",
         "bundleEndpointProfile": "https_web"},
        {"trustDomain": "fed-data-2.org", "bundleEndpointURL": "https://fed-data-2.org/bundle",
         "bundleEndpointProfile": "https_spiffe", "endpointSpiffeID": "spiffe://fed-data-2.org/server",
         "trustDomainBundle": FEDERATION_PEM, "trustDomainBundleFormat": "pem"},
        {"trustDomain": "fed-data-3.org", "bundleEndpointURL": "https://fed-data-3.org/bundle",
         "bundleEndpointProfile": "https_spiffe", "endpointSPIFFEID": "spiffe://fed-data-3.org/server",
         "trustDomainBundleFormat": "spiffe",
         "trustDomainBundle": {"keys": [{"use": "jwt-svid", "kty": "EC", "kid": "KID", "crv": "P-256",
             "x": "fK-wKTnKL7KFLM27lqq5DC-bxrVaH6rDV-IcCSEOeL4",
             "y": "wq-g3TQWxYlV51TCPH030yXsRxvujD4hUUaIQrXk4KI"}]}},
        {"trustDomain": "fed-data-4.org", "bundleEndpointURL": "ftp://fed-data-4.org/bundle",
         "bundleEndpointProfile": "https_web"}
    ]})
    .to_string()
}

/// `federation create -data` that the CLI refuses: its second item has no URL.
const BAD_RELATIONSHIPS_JSON: &str = r#"{"federationRelationships": [
  {"trustDomain": "fed-ok.org", "bundleEndpointURL": "https://fed-ok.org/bundle", "bundleEndpointProfile": "https_web"},
  {"trustDomain": "fed-no-url.org", "bundleEndpointProfile": "https_web"}
]}"#;

/// `federation update -data`: one relationship changed, one that does not exist.
const UPDATE_RELATIONSHIPS_JSON: &str = r#"{"federationRelationships": [
  {"trustDomain": "fed-data-1.org", "bundleEndpointURL": "https://fed-data-1.org/v2",
   "bundleEndpointProfile": "https_spiffe", "endpointSPIFFEID": "spiffe://fed-data-1.org/server"},
  {"trustDomain": "fed-missing.org", "bundleEndpointURL": "https://fed-missing.org/bundle",
   "bundleEndpointProfile": "https_web"}
]}"#;

/// Parses the script (format in its header), then [`FEDERATION_SCRIPT`].
fn script() -> Vec<Step> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/server-cli.script");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = format!("{text}\n{FEDERATION_SCRIPT}");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (line, server_differs) = match line.strip_suffix("(server differs)") {
                Some(rest) => (rest.trim(), true),
                None => (line, false),
            };
            let (line, refused) = match line.strip_suffix("(refused)") {
                Some(rest) => (rest.trim(), true),
                None => (line, false),
            };
            let (command, capture) = match line.split_once("=>") {
                Some((command, capture)) => {
                    let (var, pointer) = capture.trim().split_once('=').unwrap_or_else(|| {
                        panic!("{}: `=> NAME=/pointer` expected in: {line}", path.display())
                    });
                    (command, Some((var.to_owned(), pointer.to_owned())))
                }
                None => (line, None),
            };
            let (command, save) = match command.split_once(" > ") {
                Some((command, file)) => (command, Some(file.trim().to_owned())),
                None => (command, None),
            };
            Step {
                line: line.to_owned(),
                args: command.split_whitespace().map(str::to_owned).collect(),
                capture,
                save,
                refused,
                server_differs,
            }
        })
        .collect()
}

/// One way of running the script.
struct Run {
    name: &'static str,
    /// Whether the server is ours (else upstream's).
    our_server: bool,
    cli: PathBuf,
    server: ServerProcess,
    _agent: AgentProcess,
    dir: PathBuf,
    vars: HashMap<String, String>,
}

/// What a step printed, normalised.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn start(
        name: &'static str,
        cli: &Path,
        server_program: &Path,
        root: &Path,
        other_pem: &str,
    ) -> Self {
        let dir = root.join(name.replace('→', "-to-"));
        std::fs::create_dir_all(&dir).unwrap();
        let server_dir = dir.join("server");
        std::fs::create_dir(&server_dir).unwrap();
        let server = ServerProcess::start_program(server_program, &server_dir, "");
        let token = server.generate_join_token(NODE);
        let agent_dir = dir.join("agent");
        std::fs::create_dir(&agent_dir).unwrap();
        let agent = AgentProcess::start_program_at_port(
            &interop_program("SPIRE_UPSTREAM_AGENT"),
            &agent_dir,
            server.port,
            Some(&token),
            "",
        );
        agent.cli_eventually(&["healthcheck"], Duration::from_secs(60));
        let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
        std::fs::write(dir.join("other.pem"), other_pem).unwrap();
        std::fs::write(dir.join("entries.json"), ENTRIES_JSON).unwrap();
        std::fs::write(dir.join("more-entries.json"), MORE_ENTRIES_JSON).unwrap();
        std::fs::write(dir.join("update.json"), UPDATE_JSON).unwrap();
        std::fs::write(dir.join("relationships.json"), relationships_json()).unwrap();
        std::fs::write(dir.join("bad-relationships.json"), BAD_RELATIONSHIPS_JSON).unwrap();
        std::fs::write(
            dir.join("update-relationships.json"),
            UPDATE_RELATIONSHIPS_JSON,
        )
        .unwrap();
        let mut vars = HashMap::new();
        vars.insert("dir".to_owned(), dir.display().to_string());
        vars.insert("agent".to_owned(), agent_id);
        Self {
            name,
            our_server: server_program == binary("spire-server"),
            cli: cli.to_path_buf(),
            server,
            _agent: agent,
            dir,
            vars,
        }
    }

    fn substitute(&self, arg: &str) -> String {
        let mut out = arg.to_owned();
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    fn run(&mut self, step: &Step, normaliser: &Normaliser) -> Outcome {
        let args: Vec<String> = step.args.iter().map(|a| self.substitute(a)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.server.cli_with(&self.cli, &args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.success(),
            !step.refused,
            "{}: `{}` {}:\n{stdout}{}",
            self.name,
            step.line,
            if step.refused {
                "succeeded, but the script expects a refusal"
            } else {
                "failed"
            },
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((var, pointer)) = &step.capture {
            let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
                panic!("{}: {}: not JSON ({e}): {stdout}", self.name, step.line)
            });
            let value = json
                .pointer(pointer)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_else(|| {
                    panic!("{}: {}: no {pointer} in {stdout}", self.name, step.line)
                });
            self.vars.insert(var.clone(), value.to_owned());
        }
        if let Some(file) = &step.save {
            std::fs::write(self.dir.join(file), &stdout).unwrap();
        }
        let root = self.dir.display().to_string();
        Outcome {
            code: out.status.code(),
            stdout: normaliser.normalise(&stdout, &root),
            stderr: normaliser.normalise(&String::from_utf8_lossy(&out.stderr), &root),
        }
    }
}

const ENTRIES_JSON: &str = r#"{"entries": [
  {"entry_id": "e-data-1", "spiffe_id": "spiffe://example.org/data-1", "parent_id": "spiffe://example.org/node",
   "selectors": [{"type": "unix", "value": "uid:3000"}], "x509_svid_ttl": 900, "jwt_svid_ttl": 90,
   "dns_names": ["data.example.org"], "hint": "data", "federates_with": ["spiffe://other.org"]},
  {"entry_id": "e-data-2", "spiffe_id": "spiffe://example.org/data-2", "parent_id": "spiffe://example.org/node",
   "selectors": [{"type": "unix", "value": "uid:3001"}, {"type": "unix", "value": "gid:3001"}], "admin": true},
  {"spiffe_id": "spiffe://example.org/data-bad", "parent_id": "spiffe://example.org/node", "selectors": []}
]}"#;

const MORE_ENTRIES_JSON: &str = r#"{"entries": [
  {"entry_id": "e-data-3", "spiffe_id": "spiffe://example.org/data-3", "parent_id": "spiffe://example.org/node",
   "selectors": [{"type": "unix", "value": "uid:3003"}], "store_svid": true, "expires_at": 1893456000}
]}"#;

const UPDATE_JSON: &str = r#"{"entries": [
  {"entry_id": "e-data-1", "spiffe_id": "spiffe://example.org/data-1", "parent_id": "spiffe://example.org/node",
   "selectors": [{"type": "unix", "value": "uid:3100"}], "x509_svid_ttl": 1000},
  {"entry_id": "e-missing", "spiffe_id": "spiffe://example.org/missing", "parent_id": "spiffe://example.org/node",
   "selectors": [{"type": "unix", "value": "uid:1"}]},
  {"spiffe_id": "spiffe://example.org/no-id", "parent_id": "spiffe://example.org/node",
   "selectors": [{"type": "unix", "value": "uid:2"}]}
]}"#;

/// Replaces what is random per server or per run with numbered placeholders, in the order
/// first seen, so that two outputs compare equal exactly when they differ only there.
struct Normaliser {
    /// Pattern, placeholder name, and whether equal values share a number (IDs and keys do,
    /// so that one appearing twice is seen to be the same; times do not, since two steps a
    /// second apart are no difference).
    rules: Vec<(Regex, &'static str, bool)>,
    /// Fields newer than upstream v1.13.3 that our wire (sdk v1.15) carries, dropped when
    /// empty: `"wit_authorities":[]`, `"agent_version":""`.
    newer_fields: Regex,
}

impl Normaliser {
    fn new() -> Self {
        let rule = |pattern: &str, name: &'static str| (Regex::new(pattern).unwrap(), name, true);
        let unnumbered =
            |pattern: &str, name: &'static str| (Regex::new(pattern).unwrap(), name, false);
        Self {
            rules: vec![
                rule(
                    r"-----BEGIN [A-Z ]+-----[\s\S]*?-----END [A-Z ]+-----",
                    "pem",
                ),
                rule(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", "jwt"),
                rule(
                    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                    "uuid",
                ),
                rule(r"\b[0-9a-f]{40}\b", "hex"),
                rule(r"[A-Za-z0-9+/_-]{40,}={0,2}", "base64"),
                rule(r"\b[A-Za-z0-9]{32}\b", "kid"),
                rule(r"\b\d{20,}\b", "serial"),
                unnumbered(
                    r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?( ?[+-]\d{2}:?\d{2}| ?Z)?( [A-Z]{3,4})?",
                    "time",
                ),
                unnumbered(r"\b1[7-9]\d{8}\b", "unix"),
            ],
            newer_fields: Regex::new(r#""(wit_authorities|agent_version)":(\[\]|""),"#).unwrap(),
        }
    }

    fn normalise(&self, text: &str, root: &str) -> String {
        let mut out = self
            .newer_fields
            .replace_all(&text.replace(root, "<dir>"), "")
            .into_owned();
        for (pattern, name, numbered) in &self.rules {
            if !numbered {
                out = pattern.replace_all(&out, format!("<{name}>")).into_owned();
                continue;
            }
            let mut seen: Vec<String> = Vec::new();
            out = pattern
                .replace_all(&out, |caps: &regex::Captures<'_>| {
                    let found = caps[0].to_owned();
                    let index = seen.iter().position(|s| *s == found).unwrap_or_else(|| {
                        seen.push(found);
                        seen.len() - 1
                    });
                    format!("<{name}{}>", index + 1)
                })
                .into_owned();
        }
        out
    }
}

/// A throwaway CA certificate for `spiffe://other.org`'s bundle, the same in every run.
fn other_org_pem(dir: &Path) -> String {
    let key = dir.join("other.key");
    let cert = dir.join("other.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/O=Other", "-days", "2"])
        .args(["-addext", "subjectAltName=URI:spiffe://other.org"])
        .args(["-addext", "basicConstraints=critical,CA:true"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (Debian package openssl): {e}"));
    assert!(out.status.success(), "openssl req: {out:?}");
    std::fs::read_to_string(cert).unwrap()
}

/// The lines where `got` and `want` differ, for the failure message.
fn line_diff(want: &str, got: &str) -> String {
    let (want, got): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    for i in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(i).copied(), got.get(i).copied());
        if w != g {
            let _ = writeln!(
                out,
                "    line {}:\n      upstream: {w:?}\n      here:     {g:?}",
                i + 1
            );
        }
    }
    out
}

#[test]
fn server_cli_matches_upstreams_command_by_command() {
    let upstream_server = interop_program("SPIRE_UPSTREAM_SERVER");
    // Our binary is both our CLI and our server.
    let ours = binary("spire-server");
    let root = tempfile::tempdir().unwrap();
    let other_pem = other_org_pem(root.path());
    let mut runs = [
        Run::start(
            "reference",
            &upstream_server,
            &upstream_server,
            root.path(),
            &other_pem,
        ),
        Run::start("ours", &ours, &ours, root.path(), &other_pem),
        Run::start(
            "theirs→ours",
            &upstream_server,
            &ours,
            root.path(),
            &other_pem,
        ),
        Run::start(
            "ours→theirs",
            &ours,
            &upstream_server,
            root.path(),
            &other_pem,
        ),
    ];
    let normaliser = Normaliser::new();
    let mut differences = Vec::new();
    for step in &script() {
        let outcomes: Vec<Outcome> = runs
            .iter_mut()
            .map(|run| run.run(step, &normaliser))
            .collect();
        let reference = &outcomes[0];
        for (run, outcome) in runs.iter().zip(&outcomes).skip(1) {
            if outcome == reference
                || (step.server_differs && run.our_server && outcome.code == reference.code)
            {
                continue;
            }
            let mut report = format!("[{}] `{}`:", run.name, step.line);
            if outcome.code != reference.code {
                let _ = write!(
                    report,
                    "\n  exit code: upstream {:?}, here {:?}",
                    reference.code, outcome.code
                );
            }
            if outcome.stdout != reference.stdout {
                let _ = write!(
                    report,
                    "\n  stdout:\n{}",
                    line_diff(&reference.stdout, &outcome.stdout)
                );
            }
            if outcome.stderr != reference.stderr {
                let _ = write!(
                    report,
                    "\n  stderr:\n{}",
                    line_diff(&reference.stderr, &outcome.stderr)
                );
            }
            differences.push(report);
        }
    }
    assert!(
        differences.is_empty(),
        "{} difference(s) from upstream's CLI and server:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
