//! WorkloadAttestor plugins turn the calling process (its pid) into selectors.

pub mod containerinfo;
pub mod docker;
pub mod external;
pub mod k8s;
pub mod unix;

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use async_trait::async_trait;
use spire_core::selector::Selector;

/// Why a workload could not be attested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The process is gone or was replaced while attesting (gRPC PermissionDenied/Unavailable).
    #[error("{0}")]
    ProcessGone(String),
    /// Anything else (gRPC Internal).
    #[error("{0}")]
    Internal(String),
}

/// The caller as the Workload API socket reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProcess {
    /// Process ID from SO_PEERCRED.
    pub pid: i32,
    /// Effective user ID from SO_PEERCRED.
    pub uid: u32,
    /// Effective group ID from SO_PEERCRED.
    pub gid: u32,
}

/// Produces selectors for a process.
#[async_trait]
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// The plugin name, which is also the selector type (`unix`).
    fn name(&self) -> &'static str;
    /// Selectors of the calling process.
    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError>;
}

/// Reads a `/proc` file whole, in one read and a second that sees its end; every read of
/// `/proc/<pid>` in the agent goes through here. procfs files report a size of 0, so
/// `fs::read_to_string` would stat the file, probe with 32 bytes and grow from there: eight
/// reads for a status file, on every Workload API call.
pub(crate) fn read_proc_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut buf = vec![0_u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn proc_files_and_longer_ones_are_read_whole() {
        let status = read_proc_file(Path::new("/proc/self/status")).unwrap();
        assert!(status.contains("\nUid:"), "{status}");
        assert!(status.ends_with('\n'));
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("long");
        let text: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&long, &text).unwrap();
        assert_eq!(read_proc_file(&long).unwrap(), text);
        assert_eq!(
            read_proc_file(&dir.path().join("gone")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
