//! AWS test components: moto (the AWS API emulator, installed by scripts/cloud-deps.sh) on
//! loopback with its request recorder, the fixtures its APIs are filled with (EC2 instances
//! with tags, security groups and an instance profile; Secrets Manager secrets; an ACM
//! Private CA; an EKS cluster and its node group's Auto Scaling group) and the signed instance identity
//! documents, and a loopback EC2 instance metadata service (IMDSv2 tokens, optional IMDSv1
//! only mode) that serves them. Only the IMDS is hand-written: it cannot run here otherwise.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// The setup script run in moto's venv.
const SETUP_SCRIPT: &str = include_str!("aws_setup.py");
/// The ACM Private CA setup script run in moto's venv.
const PCA_SETUP_SCRIPT: &str = include_str!("pca_setup.py");
/// The EKS cluster / node group / Auto Scaling group setup script run in moto's venv.
const EKS_SETUP_SCRIPT: &str = include_str!("eks_setup.py");

fn env_program(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run scripts/cloud-deps.sh and source target/cloud-deps.env (the \
             test command does both)"
        )
    });
    assert!(
        path.exists(),
        "{var}={} does not exist: run scripts/cloud-deps.sh",
        path.display()
    );
    path
}

/// A moto server on a loopback port; killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    port: u16,
}

impl Moto {
    /// Starts `moto_server` (`SPIRE_TEST_MOTO`) and waits until it answers.
    pub fn start(dir: &Path) -> Self {
        let program = env_program("SPIRE_TEST_MOTO");
        let port = crate::free_port();
        let log = std::fs::File::create(dir.join("moto.log"))
            .unwrap_or_else(|e| panic!("create moto.log: {e}"));
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("clone log: {e}"));
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Where moto's request recorder writes (see `start_recording`).
            .env("MOTO_RECORDER_FILEPATH", dir.join("moto_recording.jsonl"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn moto_server: {e}"));
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        crate::eventually("moto answers", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        moto
    }

    /// Creates the fixtures (see `aws_setup.py`) and returns them as JSON.
    pub fn setup(&self, dir: &Path) -> Value {
        self.run_setup(dir, "aws_setup.py", SETUP_SCRIPT)
    }

    /// Creates the ACM Private CA fixture (see `pca_setup.py`) and returns it as JSON.
    pub fn setup_pca(&self, dir: &Path) -> Value {
        self.run_setup(dir, "pca_setup.py", PCA_SETUP_SCRIPT)
    }

    /// Creates EKS cluster `cluster` whose node group's Auto Scaling group holds `members`
    /// (see `eks_setup.py`) and returns it as JSON.
    pub fn setup_eks(&self, dir: &Path, cluster: &str, members: &[&str]) -> Value {
        let mut args = vec![cluster];
        args.extend_from_slice(members);
        self.run_script(dir, "eks_setup.py", EKS_SETUP_SCRIPT, &args)
    }

    /// Runs a fixture script (boto3 against this moto) in moto's venv; its stdout is JSON.
    fn run_setup(&self, dir: &Path, name: &str, text: &str) -> Value {
        self.run_script(dir, name, text, &[])
    }

    /// Runs a fixture script with `args` after the endpoint and `dir`.
    fn run_script(&self, dir: &Path, name: &str, text: &str, args: &[&str]) -> Value {
        let python = env_program("SPIRE_TEST_CLOUD_PYTHON");
        let script = dir.join(name);
        std::fs::write(&script, text).unwrap_or_else(|e| panic!("write script: {e}"));
        let out = Command::new(python)
            .arg(&script)
            .arg(&self.endpoint)
            .arg(dir)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        assert!(
            out.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("fixture JSON: {e}"))
    }

    /// Starts moto's request recorder: from now on every AWS request moto serves is kept,
    /// with its headers and body, for [`Self::recorded_requests`].
    pub fn start_recording(&self) {
        self.moto_api("POST", "/moto-api/recorder/reset-recording");
        self.moto_api("POST", "/moto-api/recorder/start-recording");
    }

    /// The requests recorded since [`Self::start_recording`]: JSON objects with `method`,
    /// `url`, `headers` and `body` (`body_encoded`: base64).
    pub fn recorded_requests(&self) -> Vec<Value> {
        self.moto_api("GET", "/moto-api/recorder/download-recording")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("recording {l:?}: {e}")))
            .collect()
    }

    /// The requests recorded since [`Self::start_recording`], read as AWS calls.
    pub fn recorded_calls(&self) -> Vec<AwsCall> {
        self.recorded_requests()
            .iter()
            .map(AwsCall::from_recording)
            .collect()
    }

    /// One call of moto's own API (plain HTTP/1.1 on loopback); returns the body.
    fn moto_api(&self, method: &str, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connect to moto: {e}"));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap_or_else(|e| panic!("write to moto: {e}"));
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("read from moto: {e}"));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "moto {method} {path}: {head}"
        );
        body.to_owned()
    }

    /// The environment a plugin needs to reach moto: endpoint and (any) credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "AKIDSPIRESERVER".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "server-secret".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One AWS request moto served.
#[derive(Debug)]
pub struct AwsCall {
    /// The SigV4 signing name (`ec2`, `sts`, `eks`, ...).
    pub service: String,
    /// The Query `Action`, the JSON protocol's `X-Amz-Target` action, else (REST) the URL
    /// path.
    pub operation: String,
    /// The access key ID the request was signed with.
    pub key_id: String,
    /// Whether it carried `X-Amz-Security-Token` (temporary credentials).
    pub session_token: bool,
    /// The body, decoded.
    pub body: String,
}

impl AwsCall {
    /// Reads one entry of moto's recording.
    pub fn from_recording(r: &Value) -> Self {
        let header = |name: &str| {
            r["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_owned)
        };
        let authorization = header("authorization").unwrap_or_default();
        // `Credential=<key>/<date>/<region>/<service>/aws4_request`.
        let credential = authorization
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split(',').next())
            .unwrap_or_default();
        let scope: Vec<&str> = credential.split('/').collect();
        let body = if r["body_encoded"] == true {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(r["body"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("recorded body is not base64: {e}"));
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            r["body"].as_str().unwrap_or_default().to_owned()
        };
        let operation = body
            .split('&')
            .find_map(|p| p.strip_prefix("Action="))
            .map(str::to_owned)
            .or_else(|| {
                // JSON protocol: `X-Amz-Target: <prefix>.<Action>`.
                header("x-amz-target").and_then(|t| t.rsplit('.').next().map(str::to_owned))
            })
            .unwrap_or_else(|| {
                let url = r["url"].as_str().unwrap_or_default();
                let path = url.splitn(4, '/').nth(3).unwrap_or_default();
                format!("/{}", path.split('?').next().unwrap_or_default())
            });
        Self {
            service: scope.get(3).copied().unwrap_or_default().to_owned(),
            operation,
            key_id: scope.first().copied().unwrap_or_default().to_owned(),
            session_token: header("x-amz-security-token").is_some(),
            body,
        }
    }
}

/// Writes an executable script into `dir` that runs `program` with `env` set, for starting
/// a server pointed at moto (our lints forbid changing this process's environment).
pub fn with_env(dir: &Path, program: &Path, env: &[(String, String)]) -> PathBuf {
    let name = program
        .file_name()
        .map_or_else(|| "program".into(), |n| n.to_string_lossy());
    let wrapper = dir.join(format!("{name}-with-aws-env"));
    let assignments: String = env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    let script = format!(
        "#!/bin/sh\n{assignments}exec '{}' \"$@\"\n",
        program.display()
    );
    let written = Command::new("/bin/sh")
        .args([
            "-c",
            "printf '%s' \"$2\" > \"$1\" && chmod 755 \"$1\"",
            "sh",
        ])
        .arg(&wrapper)
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("write {}: {e}", wrapper.display()));
    assert!(written.status.success(), "write {}", wrapper.display());
    wrapper
}

/// What the loopback IMDS serves and has seen.
#[derive(Debug, Default)]
pub struct ImdsState {
    /// `dynamic/instance-identity/document`.
    pub document: String,
    /// `dynamic/instance-identity/signature`.
    pub signature: String,
    /// `dynamic/instance-identity/rsa2048`.
    pub rsa2048: String,
    /// Whether IMDSv2 tokens are offered (else `PUT /latest/api/token` answers 404).
    pub v2: bool,
    /// Tokens handed out.
    pub tokens: Vec<String>,
    /// GETs served without a token (IMDSv1).
    pub v1_gets: usize,
    /// GETs served with a valid token.
    pub v2_gets: usize,
}

/// A loopback instance metadata service; stops with the test process.
pub struct FakeImds {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Served documents and counters.
    pub state: Arc<Mutex<ImdsState>>,
}

impl FakeImds {
    /// Serves `doc` (`{"document","signature","rsa2048"}`), with IMDSv2 when `v2`.
    pub fn start(doc: &Value, v2: bool) -> Self {
        let field = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
        let state = Arc::new(Mutex::new(ImdsState {
            document: field("document"),
            signature: field("signature"),
            rsa2048: field("rsa2048"),
            v2,
            ..ImdsState::default()
        }));
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind IMDS: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    /// Replaces the served document.
    pub fn serve(&self, doc: &Value) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.document = doc["document"].as_str().unwrap_or_default().to_owned();
        s.signature = doc["signature"].as_str().unwrap_or_default().to_owned();
        s.rsa2048 = doc["rsa2048"].as_str().unwrap_or_default().to_owned();
    }
}

fn serve(stream: std::net::TcpStream, state: &Mutex<ImdsState>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut token = None;
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "x-aws-ec2-metadata-token" => token = Some(value.trim().to_owned()),
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, answer) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            answer(&mut s, &method, &path, token.as_deref())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(
    s: &mut ImdsState,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (&'static str, String) {
    if method == "PUT" && path == "/latest/api/token" {
        if !s.v2 {
            return ("404 Not Found", String::new());
        }
        let token = format!("token-{}", s.tokens.len() + 1);
        s.tokens.push(token.clone());
        return ("200 OK", token);
    }
    if method != "GET" {
        return ("405 Method Not Allowed", String::new());
    }
    match token {
        Some(t) if s.tokens.iter().any(|k| k == t) => s.v2_gets += 1,
        Some(_) => return ("401 Unauthorized", String::new()),
        None if s.v2 => return ("401 Unauthorized", String::new()),
        None => s.v1_gets += 1,
    }
    match path {
        "/latest/dynamic/instance-identity/document" => ("200 OK", s.document.clone()),
        "/latest/dynamic/instance-identity/signature" => ("200 OK", s.signature.clone()),
        "/latest/dynamic/instance-identity/rsa2048" => ("200 OK", s.rsa2048.clone()),
        _ => ("404 Not Found", String::new()),
    }
}

/// Polls `check` until it returns `Some`, failing after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
