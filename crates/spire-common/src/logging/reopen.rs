//! `log_file` that can be reopened: logrotate moves the file away and sends SIGUSR2, and the
//! process continues in a new file at the configured path, as upstream's reopenable log
//! file does. Without the reopen the process would keep writing into the rotated file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

use super::LoggingError;

/// The open log file and the path it is reopened from.
#[derive(Debug)]
pub struct ReopenableFile {
    path: Mutex<PathBuf>,
    file: Mutex<File>,
}

impl ReopenableFile {
    /// Opens `path` for appending (created 0640 when missing).
    pub fn open(path: &Path) -> Result<Arc<Self>, LoggingError> {
        Ok(Arc::new(Self {
            path: Mutex::new(path.to_path_buf()),
            file: Mutex::new(open_append(path)?),
        }))
    }

    /// Opens the path again and writes there from now on. When it cannot be opened, the old
    /// file is kept (logging goes on) and the error says why.
    pub fn reopen(&self) -> Result<(), LoggingError> {
        let fresh = open_append(&self.path())?;
        *self.lock() = fresh;
        Ok(())
    }

    /// Opens `path` and writes there from now on, reopening it on later calls to
    /// [`ReopenableFile::reopen`] (a configuration reload changed `log_file`). When it cannot
    /// be opened, the old file is kept.
    pub fn switch_to(&self, path: &Path) -> Result<(), LoggingError> {
        let fresh = open_append(path)?;
        *self.lock() = fresh;
        *self.path.lock().unwrap_or_else(PoisonError::into_inner) = path.to_path_buf();
        Ok(())
    }

    /// The configured path.
    pub fn path(&self) -> PathBuf {
        self.path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn open_append(path: &Path) -> Result<File, LoggingError> {
    let mut options = OpenOptions::new();
    let append = options.append(true);
    crate::fs::open_with_mode(path, crate::fs::LOG_FILE_MODE, append).map_err(|e| {
        LoggingError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    })
}

/// The writer a log line gets: the file, locked for the one `write_all` of the line.
pub struct LockedFile<'a>(MutexGuard<'a, File>);

impl Write for LockedFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Hands the current file to the log layer.
#[derive(Debug, Clone)]
pub struct ReopenableWriter(pub Arc<ReopenableFile>);

impl<'a> MakeWriter<'a> for ReopenableWriter {
    type Writer = LockedFile<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LockedFile(self.0.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_continues_in_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spire.log");
        let file = ReopenableFile::open(&path).unwrap();
        let writer = ReopenableWriter(file.clone());
        writer.make_writer().write_all(b"before\n").unwrap();
        let rotated = dir.path().join("spire.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        writer.make_writer().write_all(b"still old\n").unwrap();
        file.reopen().unwrap();
        writer.make_writer().write_all(b"after\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "before\nstill old\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("spire.log");
        let file = ReopenableFile::open(&path).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        let err = file.reopen().unwrap_err();
        assert!(matches!(err, LoggingError::File { .. }), "{err}");
        let writer = ReopenableWriter(file);
        writer.make_writer().write_all(b"kept\n").unwrap();
    }
}
