//! Logging setup (`log_level`, `log_format`, `log_file`, `log_source_location`) and the
//! handle logger.v1 uses to change the level at run time.
//!
//! Levels are upstream's (logrus) names, case-insensitive: panic, fatal, error, warn (or
//! warning), info, debug, trace. panic and fatal log like error. Lines have logrus's shape
//! ([`logrus`]). Logs go to stdout, as upstream's do, or are appended to `log_file` when it
//! is set; SIGUSR2 reopens that file ([`reopen_log_file_on_sigusr2`]) for logrotate.

mod logrus;
mod reopen;
mod subsystem;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

pub use logrus::{LogFormat, LogrusLayer};

/// A field holding a JSON object whose members the logger writes as top-level fields: for
/// entries whose field names are only known at run time (the server's audit log).
pub const DYNAMIC_FIELDS: &str = "logrus_fields";
pub use reopen::{ReopenableFile, ReopenableWriter};

/// Why logging could not be set up or a level not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// Not one of upstream's level names.
    #[error("unknown log level {0:?}; use panic, fatal, error, warn, info, debug or trace")]
    UnknownLevel(String),
    /// Not text or json.
    #[error("unknown logger format: {0:?}; use \"text\" or \"json\"")]
    UnknownFormat(String),
    /// The log file could not be opened for appending.
    #[error("could not open log file {path}: {message}")]
    File {
        /// The path given.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// A global logger was already installed in this process.
    #[error("logging is already initialized in this process")]
    AlreadyInitialized,
    /// The running logger refused the new level.
    #[error("could not change the log level: {0}")]
    Reload(String),
}

/// Upstream's name for a level, lowercase (`warning` becomes `warn`), or `None` if unknown.
pub fn canonical_level(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_lowercase().as_str() {
        "panic" => Some("panic"),
        "fatal" => Some("fatal"),
        "error" => Some("error"),
        "warn" | "warning" => Some("warn"),
        "info" => Some("info"),
        "debug" => Some("debug"),
        "trace" => Some("trace"),
        _ => None,
    }
}

/// At debug level, HTTP/2 frames and every SQL statement would drown the process's own
/// messages; upstream's debug log does not show them either.
fn quiet_dependencies() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::INFO)
        .with_target("hyper", LevelFilter::INFO)
        .with_target("hyper_util", LevelFilter::INFO)
        .with_target("tower", LevelFilter::INFO)
        .with_target("rustls", LevelFilter::INFO)
        .with_target("sqlx", LevelFilter::WARN)
}

fn level_filter(canonical: &str) -> LevelFilter {
    match canonical {
        "panic" | "fatal" | "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    }
}

type Reloader = Box<dyn Fn(LevelFilter) -> Result<(), String> + Send + Sync>;

struct Inner {
    /// The configured level; a configuration reload changes it.
    configured: Mutex<&'static str>,
    current: Mutex<&'static str>,
    reload: Option<Reloader>,
    /// `log_file`, when logs go to a file.
    file: Option<Arc<ReopenableFile>>,
}

/// Changes and resets the running log level (what logger.v1's SetLogLevel, ResetLogLevel and
/// GetLogger act on). Cloning shares the same logger.
///
/// `LogLevelHandle::default()` is not connected to any logger: it remembers the level it is
/// given (starting at `info`) so code and tests that need a handle work without logging.
#[derive(Clone)]
pub struct LogLevelHandle {
    inner: Arc<Inner>,
}

impl Default for LogLevelHandle {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                configured: Mutex::new("info"),
                current: Mutex::new("info"),
                reload: None,
                file: None,
            }),
        }
    }
}

impl std::fmt::Debug for LogLevelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevelHandle")
            .field("configured", &self.configured())
            .field("current", &self.get())
            .finish()
    }
}

impl LogLevelHandle {
    /// The current level, lowercase (`info`, `debug`, ...).
    pub fn get(&self) -> String {
        (*self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
        .to_owned()
    }

    /// The level from the configuration, which `reset` returns to.
    pub fn configured(&self) -> String {
        (*self
            .inner
            .configured
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
        .to_owned()
    }

    /// Sets the running level; `level` is an upstream level name, any case.
    pub fn set(&self, level: &str) -> Result<(), LoggingError> {
        let canonical =
            canonical_level(level).ok_or_else(|| LoggingError::UnknownLevel(level.to_owned()))?;
        self.apply(canonical)
    }

    /// Returns to the configured level.
    pub fn reset(&self) -> Result<(), LoggingError> {
        let configured = *self
            .inner
            .configured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.apply(configured)
    }

    /// A configuration reload's new `log_level`: it becomes the configured level (what
    /// `logger reset` returns to) and the running one.
    pub fn set_configured(&self, level: &str) -> Result<(), LoggingError> {
        let canonical =
            canonical_level(level).ok_or_else(|| LoggingError::UnknownLevel(level.to_owned()))?;
        self.apply(canonical)?;
        *self
            .inner
            .configured
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = canonical;
        Ok(())
    }

    /// The log file in use; `None` when logs go to stdout.
    pub fn log_file_path(&self) -> Option<std::path::PathBuf> {
        self.inner.file.as_ref().map(|f| f.path())
    }

    /// A configuration reload's new `log_file`: logs go to `path` from now on (SIGUSR2
    /// reopens it). `Ok(false)` when logs go to stdout, which only a restart changes. When
    /// `path` cannot be opened the old file stays in use.
    pub fn switch_log_file(&self, path: &Path) -> Result<bool, LoggingError> {
        match &self.inner.file {
            Some(file) => file.switch_to(path).map(|()| true),
            None => Ok(false),
        }
    }

    /// Reopens `log_file` (after logrotate moved it away); `Ok(false)` when logs go to
    /// stdout. On an error the old file stays in use.
    pub fn reopen_log_file(&self) -> Result<bool, LoggingError> {
        match &self.inner.file {
            Some(file) => file.reopen().map(|()| true),
            None => Ok(false),
        }
    }

    fn apply(&self, canonical: &'static str) -> Result<(), LoggingError> {
        let mut current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(reload) = &self.inner.reload {
            reload(level_filter(canonical)).map_err(LoggingError::Reload)?;
        }
        *current = canonical;
        Ok(())
    }
}

/// Builds a subscriber writing to `writer` at `level` in `format` (`""`, `text` or `json`),
/// and the handle that changes its level. `init` installs one globally; tests can use this
/// with `tracing::subscriber::with_default`.
pub fn build(
    level: &str,
    format: &str,
    writer: BoxMakeWriter,
    source_location: bool,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogLevelHandle), LoggingError> {
    build_with_file(level, format, writer, source_location, None)
}

fn build_with_file(
    level: &str,
    format: &str,
    writer: BoxMakeWriter,
    source_location: bool,
    file: Option<Arc<ReopenableFile>>,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogLevelHandle), LoggingError> {
    let configured =
        canonical_level(level).ok_or_else(|| LoggingError::UnknownLevel(level.to_owned()))?;
    let format =
        LogFormat::parse(format).ok_or_else(|| LoggingError::UnknownFormat(format.to_owned()))?;
    let (filter, handle) = reload::Layer::new(level_filter(configured));
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(LogrusLayer::new(format, writer, source_location).with_filter(quiet_dependencies()));
    let reload: Reloader = Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
    let level_handle = LogLevelHandle {
        inner: Arc::new(Inner {
            configured: Mutex::new(configured),
            current: Mutex::new(configured),
            reload: Some(reload),
            file,
        }),
    };
    Ok((subscriber, level_handle))
}

/// Installs the process-wide logger: `level` and `format` as in `server.conf` or `agent.conf`, appending to
/// `file` when given (otherwise stdout). Call once, after the configuration is resolved.
pub fn init(
    level: &str,
    format: &str,
    file: Option<&Path>,
) -> Result<LogLevelHandle, LoggingError> {
    init_with_source_location(level, format, file, false)
}

/// Like [`init`], adding the source file and module to every line (`log_source_location`).
pub fn init_with_source_location(
    level: &str,
    format: &str,
    file: Option<&Path>,
    source_location: bool,
) -> Result<LogLevelHandle, LoggingError> {
    let file = file.map(ReopenableFile::open).transpose()?;
    let writer = match &file {
        None => BoxMakeWriter::new(std::io::stdout),
        Some(file) => BoxMakeWriter::new(ReopenableWriter(file.clone())),
    };
    let (subscriber, handle) = build_with_file(level, format, writer, source_location, file)?;
    subscriber
        .try_init()
        .map_err(|_| LoggingError::AlreadyInitialized)?;
    Ok(handle)
}

/// Reopens `log_file` on every SIGUSR2 until `cancel` fires, as upstream does for
/// logrotate's `postrotate kill -USR2`. A failed reopen is logged and the old file kept.
/// Returns at once when logs go to stdout.
pub async fn reopen_log_file_on_sigusr2(handle: LogLevelHandle, cancel: CancellationToken) {
    let Some(file) = handle.inner.file.clone() else {
        return;
    };
    let mut signals =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
            Ok(signals) => signals,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGUSR2; log_file will not be reopened");
                return;
            }
        };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = signals.recv() => {
                if received.is_none() {
                    return;
                }
                match file.reopen() {
                    Ok(()) => tracing::info!(path = %file.path().display(), "Log file reopened"),
                    Err(e) => tracing::error!(error = %e, "failed to rotate log after signal"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn level_changes_apply_to_the_running_logger() {
        let buf = Buffer::default();
        let out = buf.clone();
        let (subscriber, handle) = build(
            "INFO",
            "text",
            BoxMakeWriter::new(move || out.clone()),
            false,
        )
        .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("hidden-1");
            tracing::info!("shown-1");
            handle.set("Debug").unwrap();
            assert_eq!(handle.get(), "debug");
            tracing::debug!("shown-2");
            handle.reset().unwrap();
            assert_eq!(handle.get(), "info");
            tracing::debug!("hidden-2");
            handle.set("warning").unwrap();
            assert_eq!(handle.get(), "warn");
            tracing::info!("hidden-3");
            tracing::warn!("shown-3");
        });
        let text = buf.text();
        for shown in ["shown-1", "shown-2", "shown-3"] {
            assert!(text.contains(shown), "{shown} missing from {text}");
        }
        for hidden in ["hidden-1", "hidden-2", "hidden-3"] {
            assert!(!text.contains(hidden), "{hidden} leaked into {text}");
        }
    }

    #[test]
    fn json_format_writes_one_object_per_line() {
        let buf = Buffer::default();
        let out = buf.clone();
        let (subscriber, _handle) = build(
            "info",
            "JSON",
            BoxMakeWriter::new(move || out.clone()),
            false,
        )
        .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(trust_domain = "example.org", "Starting");
        });
        let text = buf.text();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "info");
        assert_eq!(line["msg"], "Starting");
        assert_eq!(line["trust_domain"], "example.org");
    }

    #[test]
    fn bad_levels_and_formats_are_refused() {
        let err = build("loud", "text", BoxMakeWriter::new(std::io::sink), false).err();
        assert_eq!(err, Some(LoggingError::UnknownLevel("loud".into())));
        let err = build("info", "xml", BoxMakeWriter::new(std::io::sink), false).err();
        assert_eq!(err, Some(LoggingError::UnknownFormat("xml".into())));
        let handle = LogLevelHandle::default();
        assert!(handle.set("nope").is_err());
        assert_eq!(handle.get(), "info");
    }

    #[test]
    fn default_handle_remembers_levels() {
        let handle = LogLevelHandle::default();
        handle.set("TRACE").unwrap();
        assert_eq!(handle.clone().get(), "trace");
        handle.reset().unwrap();
        assert_eq!(handle.get(), "info");
    }
}
