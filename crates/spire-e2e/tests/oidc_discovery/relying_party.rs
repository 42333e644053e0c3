//! The relying parties we did not write: PyJWT scripts in conformance/python (in the venv
//! of `scripts/conformance-deps.sh`), one process per token (`oidc_rp.py`) or one long-lived
//! process across a rotation (`oidc_rp_long_lived.py`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

/// The venv's Python, with PyJWT.
fn python() -> PathBuf {
    let python = workspace_root().join("target/conformance-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/conformance-deps.sh to install PyJWT (the test command \
         does)",
        python.display()
    );
    python
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Runs the PyJWT relying party: `issuer`, `audience`, `token`, and where to fetch the
/// discovery document when it is not the issuer itself.
fn relying_party(issuer: &str, audience: &str, token: &str, discovery: Option<&str>) -> Output {
    let root = workspace_root();
    let python = python();
    let mut command = Command::new(&python);
    command
        .arg(root.join("conformance/python/oidc_rp.py"))
        .args([issuer, audience, token]);
    if let Some(discovery) = discovery {
        command.arg(discovery);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "PyJWT is missing from {}: run scripts/conformance-deps.sh\n{stderr}",
        python.display()
    );
    out
}

/// The relying party's verdict on a token that must verify: its JSON report.
pub(crate) fn verified(
    issuer: &str,
    audience: &str,
    token: &str,
    discovery: Option<&str>,
) -> serde_json::Value {
    let out = relying_party(issuer, audience, token, discovery);
    assert!(
        out.status.success(),
        "PyJWT refused the token: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The relying party's verdict on a token that must be refused: what it printed (standard
/// output and error).
pub(crate) fn refused(issuer: &str, audience: &str, token: &str) -> String {
    let out = relying_party(issuer, audience, token, None);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "PyJWT accepted a token it must refuse: {printed}"
    );
    printed
}

/// `oidc_rp_long_lived.py`: one PyJWKClient (cache_keys=True) kept across the test.
pub(crate) struct LongLivedRelyingParty {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LongLivedRelyingParty {
    /// Starts the relying party for `issuer` (it fetches the discovery document at once).
    pub(crate) fn start(issuer: &str) -> Self {
        let mut child = Command::new(python())
            .arg(workspace_root().join("conformance/python/oidc_rp_long_lived.py"))
            .arg(issuer)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and reads its JSON answer.
    fn ask(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("the relying party did not answer {command:?} with JSON ({e}): {line:?}")
        })
    }

    /// Verifies `token` for `audience`: `ok`, `kid`, `sub` or `error`, and `fetches`.
    pub(crate) fn verify(&mut self, audience: &str, token: &str) -> serde_json::Value {
        self.ask(&format!("verify {audience} {token}"))
    }

    /// Drops the cached keys and fetches the JWK Set again: `kids` and `fetches`.
    pub(crate) fn forget(&mut self) -> serde_json::Value {
        self.ask("forget")
    }
}

impl Drop for LongLivedRelyingParty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
