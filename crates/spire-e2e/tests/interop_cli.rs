//! The server CLI, compared with upstream's command by command: one script touching every
//! command group (`entry` with every flag and `-data`, `agent`, `bundle` in PEM and spiffe
//! formats, `token`, `x509 mint`, `jwt mint`, `localauthority`, `logger`, `healthcheck`),
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
}

/// The agents' alias.
const NODE: &str = "spiffe://example.org/node";

/// Parses the script (format in its header).
fn script() -> Vec<Step> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/server-cli.script");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
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
            }
        })
        .collect()
}

/// One way of running the script.
struct Run {
    name: &'static str,
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
        let mut vars = HashMap::new();
        vars.insert("dir".to_owned(), dir.display().to_string());
        vars.insert("agent".to_owned(), agent_id);
        Self {
            name,
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
            if outcome == reference {
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
