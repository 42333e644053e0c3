//! A loopback stand-in for an AWS JSON-protocol service (`awsJson1_1`: ACM PCA, KMS) that
//! answers each operation with response bodies the test scripts — for the calls moto 5.2.0
//! does not implement faithfully. Tests fill it with bodies shaped exactly as AWS's API
//! reference documents them (and cite the page); it records every request (operation from
//! `X-Amz-Target`, JSON body, `Authorization`) so a test can check what the plugin sent. It
//! is hand-written because real AWS cannot be reached here; it says nothing about AWS beyond
//! what the test scripts into it.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// One scripted answer: HTTP status and JSON body (errors: `{"__type": ..., "message": ...}`
/// with a 400, as the awsJson1_1 protocol has them).
#[derive(Debug, Clone)]
pub struct ScriptedAnswer {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

/// One request the stand-in served.
#[derive(Debug, Clone)]
pub struct ScriptedRequest {
    /// The action of `X-Amz-Target` (`GetCertificate`, ...).
    pub operation: String,
    /// The JSON body sent.
    pub body: Value,
    /// The `Authorization` header (SigV4).
    pub authorization: String,
}

#[derive(Debug, Default)]
struct State {
    answers: HashMap<String, VecDeque<ScriptedAnswer>>,
    requests: Vec<ScriptedRequest>,
}

/// The stand-in; serves until the test process ends.
#[derive(Debug, Clone)]
pub struct ScriptedAws {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl ScriptedAws {
    /// Starts serving on a free loopback port.
    pub fn start() -> Self {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind stand-in: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let state = Arc::new(Mutex::new(State::default()));
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

    /// Queues `body` (HTTP `status`) as the next answer to `operation`. An operation with
    /// no answer left is answered 500, which fails the test's call loudly.
    pub fn answer(&self, operation: &str, status: u16, body: Value) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.answers
            .entry(operation.to_owned())
            .or_default()
            .push_back(ScriptedAnswer { status, body });
    }

    /// The requests served so far, in order.
    pub fn requests(&self) -> Vec<ScriptedRequest> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.requests.clone()
    }
}

fn serve(stream: std::net::TcpStream, state: &Mutex<State>) {
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
        let mut target = String::new();
        let mut authorization = String::new();
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
                    "x-amz-target" => target = value.trim().to_owned(),
                    "authorization" => authorization = value.trim().to_owned(),
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        let answer = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.requests.push(ScriptedRequest {
                operation: operation.clone(),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                authorization,
            });
            s.answers.get_mut(&operation).and_then(VecDeque::pop_front)
        };
        let (status, text) = match answer {
            Some(a) => (a.status, a.body.to_string()),
            None => (
                500,
                format!(r#"{{"__type":"NotScripted","message":"no answer for {operation}"}}"#),
            ),
        };
        let response = format!(
            "HTTP/1.1 {status} Scripted\r\nContent-Type: application/x-amz-json-1.1\r\n\
             Content-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
