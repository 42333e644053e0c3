//! Files the binaries keep secrets in (keys, the agent's SVID): written so that a crash never
//! leaves half a file and nobody but the owner can read them.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `path.tmp` with mode 0600, syncs it, renames it over `path`, then syncs the folder,
/// so a crash leaves either the old or the new file, never half of one.
pub fn atomic_write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A leftover temporary file keeps its old mode; force 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // Best effort: some filesystems refuse fsync on folders.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}
