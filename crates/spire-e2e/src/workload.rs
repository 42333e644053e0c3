//! A workload as the tests see one: a small gRPC client on an agent's Workload API socket
//! that holds FetchX509SVID streams open and reports what the wire carries, so a test
//! thread can run CLIs, stop servers or swap binaries while the streams stay open.
//!
//! Every end-to-end test that watches a stream uses this one client (ours, upstream's agent
//! and the HA failover alike), so "the workload saw it" means the same thing everywhere.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use spire_core::x509::{X509Svid, certificate_serial_hex, certificate_validity};
use spire_proto::workload::X509svidRequest;
use spire_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use time::OffsetDateTime;
use tonic::transport::{Channel, Endpoint, Uri};

/// A gRPC channel over the unix socket at `socket` (the Workload API or an admin socket),
/// as go-spiffe dials `unix://` addresses.
pub async fn unix_channel(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// `message` as a request carrying the `workload.spiffe.io: true` header every Workload API
/// call needs (without it the agent refuses the call, as upstream's does).
pub fn with_security_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

/// One X509-SVID as a workload received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// The SPIFFE ID the response names (checked against the certificate's URI SAN).
    pub spiffe_id: String,
    /// The leaf's serial number in hex: changes on every rotation.
    pub serial: String,
    /// The leaf's notBefore.
    pub not_before: OffsetDateTime,
    /// The leaf's notAfter.
    pub not_after: OffsetDateTime,
}

/// What an open FetchX509SVID stream delivered.
#[derive(Debug)]
pub enum Event {
    /// A response: the SVIDs in the order the agent sent them.
    Update(Vec<Svid>),
    /// The stream ended with this status (`Ok` when it closed cleanly).
    Ended(tonic::Code, String),
}

/// The SVIDs of one response, each checked for what a workload needs: a parsable chain whose
/// SPIFFE ID is the one named, a key and a bundle. A malformed response is a test failure.
fn parse_response(response: &spire_proto::workload::X509svidResponse) -> Result<Vec<Svid>, String> {
    response
        .svids
        .iter()
        .map(|svid| {
            let parsed = X509Svid::parse_der_chain(&svid.x509_svid)
                .map_err(|e| format!("{}: unparsable X509-SVID: {e}", svid.spiffe_id))?;
            let validity = certificate_validity(parsed.leaf_der())
                .map_err(|e| format!("{}: no validity: {e}", svid.spiffe_id))?;
            if parsed.spiffe_id().as_str() != svid.spiffe_id {
                return Err(format!(
                    "the response names {} but the certificate is {}",
                    svid.spiffe_id,
                    parsed.spiffe_id()
                ));
            }
            if svid.x509_svid_key.is_empty() {
                return Err(format!("{} has no key", svid.spiffe_id));
            }
            if svid.bundle.is_empty() {
                return Err(format!("{} has no bundle", svid.spiffe_id));
            }
            Ok(Svid {
                spiffe_id: svid.spiffe_id.clone(),
                serial: certificate_serial_hex(parsed.leaf_der())
                    .map_err(|e| format!("{}: no serial: {e}", svid.spiffe_id))?,
                not_before: validity.not_before,
                not_after: validity.not_after,
            })
        })
        .collect()
}

/// A workload holding FetchX509SVID streams open on an agent's socket; a task per stream
/// forwards what arrives.
pub struct Workload {
    runtime: tokio::runtime::Runtime,
    socket: PathBuf,
}

impl Workload {
    /// A workload that will dial the Workload API at `socket`.
    pub fn new(socket: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("start the workload's runtime: {e}"));
        Self {
            runtime,
            socket: socket.to_path_buf(),
        }
    }

    /// Opens a FetchX509SVID stream (with the security header) whose events arrive on the
    /// returned [`Stream`], ending with one [`Event::Ended`]. A refused dial ends it with
    /// `Unavailable`.
    pub fn watch(&self) -> Stream {
        let (tx, rx) = mpsc::channel();
        let socket = self.socket.clone();
        self.runtime.spawn(async move {
            let channel = match unix_channel(socket).await {
                Ok(channel) => channel,
                Err(e) => {
                    let _ = tx.send(Event::Ended(tonic::Code::Unavailable, e.to_string()));
                    return;
                }
            };
            let mut client = SpiffeWorkloadApiClient::new(channel);
            let mut stream = match client
                .fetch_x509svid(with_security_header(X509svidRequest {}))
                .await
            {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = tx.send(Event::Ended(status.code(), status.message().to_owned()));
                    return;
                }
            };
            loop {
                let event = match stream.message().await {
                    Ok(Some(response)) => match parse_response(&response) {
                        Ok(svids) => Event::Update(svids),
                        Err(e) => Event::Ended(tonic::Code::DataLoss, e),
                    },
                    Ok(None) => Event::Ended(tonic::Code::Ok, String::new()),
                    Err(status) => Event::Ended(status.code(), status.message().to_owned()),
                };
                let ended = matches!(event, Event::Ended(..));
                if tx.send(event).is_err() || ended {
                    return;
                }
            }
        });
        Stream { events: rx }
    }

    /// A stream on which a message with `count` SVIDs arrived, and that message: the agent
    /// mints them on its next sync. One stream is held and waited on; it is dialled again
    /// only when it ends (a stream with no identity yet ends PermissionDenied).
    pub fn open_with(&self, count: usize, timeout: Duration) -> (Stream, Vec<Svid>) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let stream = self.watch();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match stream.events.recv_timeout(left) {
                    Ok(Event::Update(svids)) if svids.len() == count => return (stream, svids),
                    Ok(Event::Update(svids)) => last = Some(Event::Update(svids)),
                    Ok(ended @ Event::Ended(..)) => {
                        last = Some(ended);
                        break;
                    }
                    Err(_) => {
                        panic!("no stream with {count} SVIDs after {timeout:?}; last: {last:?}")
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no stream with {count} SVIDs after {timeout:?}; last: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The receiving end of one open stream.
pub struct Stream {
    events: mpsc::Receiver<Event>,
}

impl Stream {
    /// The next event, failing the test after `timeout`.
    pub fn next(&self, timeout: Duration) -> Event {
        self.events
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no FetchX509SVID message within {timeout:?}: {e}"))
    }

    /// Whether the stream is still open: no [`Event::Ended`] is waiting (updates that are
    /// are consumed).
    pub fn is_open(&self) -> bool {
        loop {
            match self.events.try_recv() {
                Ok(Event::Update(_)) => {}
                Ok(Event::Ended(..)) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    /// Skips updates until one satisfies `wanted`, failing on the stream's end or after
    /// `timeout`; returns it.
    pub fn update_where(&self, timeout: Duration, wanted: impl Fn(&[Svid]) -> bool) -> Vec<Svid> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Update(svids)) if wanted(&svids) => return svids,
                Ok(Event::Update(_)) => {}
                Ok(Event::Ended(code, message)) => {
                    panic!(
                        "the workload's stream ended ({code:?}: {message}) before the awaited update"
                    )
                }
                Err(e) => {
                    panic!("no awaited update on the workload's stream within {timeout:?}: {e}")
                }
            }
        }
    }

    /// Waits for a rotation of `old`: an update in which the SVID for `old`'s SPIFFE ID has
    /// another serial, arriving before `old` expires (the point of rotating at half-life).
    pub fn rotation_of(&self, old: &Svid) -> Svid {
        let until_expiry = (old.not_after - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let update = self.update_where(until_expiry, |svids| {
            svids
                .iter()
                .any(|s| s.spiffe_id == old.spiffe_id && s.serial != old.serial)
        });
        let new = update
            .into_iter()
            .find(|s| s.spiffe_id == old.spiffe_id)
            .unwrap_or_else(|| panic!("no {} in the update", old.spiffe_id));
        assert!(
            OffsetDateTime::now_utc() < old.not_after,
            "the new SVID came after the old one expired: {old:?} -> {new:?}"
        );
        assert!(new.not_after > old.not_after, "{old:?} -> {new:?}");
        new
    }
}
