//! Files and folders the binaries keep secrets in (keys, the agent's SVID, the datastore,
//! `data_dir`): written so that a crash never leaves half a file, created so that nobody but
//! the owner (and, where upstream allows it, the owner's group) can read them whatever the
//! umask, and narrowed at start when an operator's copy is more open than upstream's.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The loosest umask either process runs with, as upstream's: group members may read but not
/// write, others get nothing. Files whose mode we do not set ourselves inherit it.
pub const MINIMUM_UMASK: u32 = 0o027;

/// The widest mode a data directory (`data_dir`, the SQLite database's folder) may have:
/// upstream's 0755 under its 0027 umask.
pub const DATA_DIR_MODE: u32 = 0o750;

/// The widest mode of the SQLite database and its `-wal`, `-shm` and `-journal` files:
/// upstream's 0644 under its 0027 umask. The database holds pending join tokens.
pub const DATABASE_FILE_MODE: u32 = 0o640;

/// The widest mode of a log file (`log_file`), as upstream opens it.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Writes `path.tmp` with mode 0600, syncs it, renames it over `path`, then syncs the folder,
/// so a crash leaves either the old or the new file, never half of one.
pub fn atomic_write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = open_with_mode(&tmp, 0o600, OpenOptions::new().write(true).truncate(true))?;
    // A leftover temporary file keeps its old mode; force 0600.
    file.set_permissions(Permissions::from_mode(0o600))?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // Best effort: some filesystems refuse fsync on folders.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates or truncates `path` and writes `data`, for what the CLIs' `-write` flags produce
/// (keys 0600, certificates and bundles 0644, as upstream writes them). A new file gets
/// `mode`; an existing one keeps its mode less what `mode` does not allow, so a key file
/// left 0644 becomes 0600 before the key goes in, and a file someone narrowed stays narrow.
pub fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = open_with_mode(path, mode, OpenOptions::new().write(true).truncate(true))?;
    narrow(path, mode)?;
    file.write_all(data)
}

/// Opens (creating when missing) `path` with `options`, a new file getting at most `mode`.
pub fn open_with_mode(path: &Path, mode: u32, options: &mut OpenOptions) -> std::io::Result<File> {
    options.create(true).mode(mode).open(path)
}

/// Raises the process umask to at least [`MINIMUM_UMASK`], as upstream's `run` commands do
/// first thing, so no file either process creates is writable by its group or open to
/// others. Returns the previous umask when it was looser, for the caller to warn about once
/// its logger is up. (Reading the umask means setting one; the moment in between is at
/// start-up, before anything is created.)
pub fn set_minimum_umask() -> Option<u32> {
    use rustix::fs::Mode;
    let minimum = Mode::from_raw_mode(MINIMUM_UMASK);
    let previous = rustix::process::umask(minimum);
    let wanted = previous | minimum;
    rustix::process::umask(wanted);
    (previous != wanted).then(|| previous.as_raw_mode())
}

/// The warning upstream prints when [`set_minimum_umask`] had to raise the umask.
pub fn umask_warning(previous: u32) -> String {
    format!(
        "Current umask {previous:04o} is too permissive; setting umask {:04o}",
        previous | MINIMUM_UMASK
    )
}

/// Creates `path` and every missing parent, each with exactly `mode` whatever the umask (the
/// Workload API's folders must stay 0755 under the 0027 umask, as upstream creates them
/// before setting it). Folders that exist keep their mode: they are the operator's.
pub fn create_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut level = Some(path);
    while let Some(dir) = level.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(dir);
        level = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, Permissions::from_mode(mode))?,
            // Created by someone else meanwhile: theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the folder `path` holds private state in (`data_dir`) with `mode`, or, when it
/// exists with more permission bits than `mode`, takes the extra bits away and logs a
/// warning naming the folder and its old mode. The filesystem root, the current folder (an
/// unset `data_dir` means `.`) and sticky folders such as `/tmp` are shared, not state: they
/// are never changed.
pub fn ensure_private_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    if !path.exists() {
        return create_dir(path, mode);
    }
    if !path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", path.display()),
        ));
    }
    let canonical = std::fs::canonicalize(path)?;
    let shared = canonical.parent().is_none()
        || std::env::current_dir()
            .is_ok_and(|cwd| std::fs::canonicalize(cwd).ok() == Some(canonical));
    if shared {
        return Ok(());
    }
    match tighten(path, mode) {
        // A folder we do not own (a fresh Kubernetes volume is root's, even with fsGroup):
        // upstream uses it as it is, so do we, and say so.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "Cannot narrow the permissions of {}: this process does not own it; leaving \
                 them as they are",
                path.display()
            );
            Ok(())
        }
        other => other,
    }
}

/// Creates the file `path` empty with at most `mode` when it does not exist (an existing file
/// is neither truncated nor replaced), then [`tighten`]s it, so a program that opens it next
/// (SQLite) never finds it readable by others, not even for an instant.
pub fn create_private_file(path: &Path, mode: u32) -> std::io::Result<()> {
    drop(open_with_mode(path, mode, OpenOptions::new().write(true))?);
    tighten(path, mode)
}

/// Takes away every permission bit of `path` that `mode` does not have, logging a warning
/// with the path and its old mode when there was one to take. Nothing happens when `path`
/// does not exist, already fits, or is a sticky folder such as `/tmp`.
pub fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    const STICKY: u32 = 0o1000;
    if metadata.is_dir() && metadata.permissions().mode() & STICKY != 0 {
        return Ok(());
    }
    if let Some((old, new)) = narrow(path, mode)? {
        tracing::warn!(
            path = %path.display(),
            old_mode = format!("{old:04o}"),
            new_mode = format!("{new:04o}"),
            "Permissions of {} were too open ({old:04o}); tightened to {new:04o}",
            path.display()
        );
    }
    Ok(())
}

/// Clears the read, write and execute bits of `path` that `mode` lacks, keeping setuid,
/// setgid and sticky; returns the old and new bits when anything changed.
fn narrow(path: &Path, mode: u32) -> std::io::Result<Option<(u32, u32)>> {
    let full = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    let old = full & 0o777;
    let new = old & mode;
    if new == old {
        return Ok(None);
    }
    std::fs::set_permissions(path, Permissions::from_mode((full & !0o777) | new))?;
    Ok(Some((old, new)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_too_open_data_dir_is_narrowed_and_a_narrow_one_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&open, DATA_DIR_MODE).unwrap();
        assert_eq!(mode(&open), 0o750);

        let narrow = tmp.path().join("narrow");
        std::fs::create_dir(&narrow).unwrap();
        std::fs::set_permissions(&narrow, std::fs::Permissions::from_mode(0o700)).unwrap();
        ensure_private_dir(&narrow, DATA_DIR_MODE).unwrap();
        assert_eq!(mode(&narrow), 0o700);

        let new = tmp.path().join("a/b/data");
        ensure_private_dir(&new, DATA_DIR_MODE).unwrap();
        assert_eq!(mode(&new) & !DATA_DIR_MODE, 0);
    }

    #[test]
    fn a_sticky_folder_is_left_alone_and_a_file_is_not_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let sticky = tmp.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&sticky, DATA_DIR_MODE).unwrap();
        assert_eq!(mode(&sticky), 0o1777);

        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(ensure_private_dir(&file, DATA_DIR_MODE).is_err());
    }

    #[test]
    fn a_private_file_is_created_narrow_and_an_existing_one_narrowed_not_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let new = tmp.path().join("datastore.sqlite3");
        create_private_file(&new, DATABASE_FILE_MODE).unwrap();
        assert_eq!(mode(&new) & !DATABASE_FILE_MODE, 0);

        let old = tmp.path().join("old.sqlite3");
        std::fs::write(&old, b"rows").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o666)).unwrap();
        create_private_file(&old, DATABASE_FILE_MODE).unwrap();
        assert_eq!(mode(&old), 0o640);
        assert_eq!(std::fs::read(&old).unwrap(), b"rows");

        tighten(&tmp.path().join("absent"), 0o600).unwrap();
    }

    #[test]
    fn every_created_level_gets_exactly_the_mode_and_existing_ones_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let deep = tmp.path().join("a/b/c");
        // 0777 is wider than any umask lets mkdir create: only a chmod gets there.
        create_dir(&deep, 0o777).unwrap();
        for level in [tmp.path().join("a"), tmp.path().join("a/b"), deep] {
            assert_eq!(mode(&level), 0o777, "{}", level.display());
        }
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn the_current_folder_and_setgid_bits_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2775)).unwrap();
        tighten(&shared, DATA_DIR_MODE).unwrap();
        assert_eq!(mode(&shared), 0o2750);
        // An unset data_dir means "."; the process's working folder is never narrowed.
        ensure_private_dir(Path::new("."), 0o700).unwrap();
        ensure_private_dir(Path::new("/"), 0o700).unwrap();
        assert_ne!(mode(Path::new("/")) & 0o005, 0);
    }

    #[test]
    fn written_keys_are_narrowed_and_narrowed_certificates_stay_narrow() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("svid.0.key");
        std::fs::write(&key, b"old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_with_mode(&key, b"new key", 0o600).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"new key");

        let cert = tmp.path().join("svid.0.pem");
        std::fs::write(&cert, b"old").unwrap();
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_with_mode(&cert, b"cert", 0o644).unwrap();
        assert_eq!(mode(&cert), 0o600);
        let fresh = tmp.path().join("bundle.0.pem");
        write_with_mode(&fresh, b"bundle", 0o644).unwrap();
        assert_eq!(mode(&fresh) & !0o644, 0);
    }

    #[test]
    fn the_umask_warning_names_both_masks() {
        assert_eq!(
            umask_warning(0o002),
            "Current umask 0002 is too permissive; setting umask 0027"
        );
    }
}
