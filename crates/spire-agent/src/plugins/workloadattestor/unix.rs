//! WorkloadAttestor `unix`: selectors from the calling process's user, groups and, when
//! enabled, binary (upstream's `doc/plugin_agent_workloadattestor_unix.md`).
//!
//! Everything is read from `/proc/<pid>` and the account files `/etc/passwd` and `/etc/group`;
//! the uid and gid are the process's effective ones, as upstream reports them.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use spire_core::selector::Selector;

use super::{AttestError, PeerProcess, WorkloadAttestor};

/// The plugin name and selector type.
pub const PLUGIN_NAME: &str = "unix";

/// `plugin_data` of `WorkloadAttestor "unix"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnixAttestorConfig {
    /// Adds `unix:path` and `unix:sha256` selectors; the agent must be able to read
    /// `/proc/<pid>/exe` (root or the workload's user), otherwise attestation fails.
    pub discover_workload_path: bool,
    /// The largest binary `unix:sha256` hashes: 0 means no limit, a negative value never
    /// hashes (a workload could otherwise make the agent hash huge files).
    pub workload_size_limit: i64,
}

/// The `unix` workload attestor.
#[derive(Debug, Clone)]
pub struct UnixAttestor {
    config: UnixAttestorConfig,
    proc_root: PathBuf,
    users: Arc<AccountFile>,
    groups: Arc<AccountFile>,
}

impl UnixAttestor {
    /// An attestor reading the host's `/proc`, `/etc/passwd` and `/etc/group`.
    pub fn new(config: UnixAttestorConfig) -> Self {
        Self {
            config,
            proc_root: PathBuf::from("/proc"),
            users: Arc::new(AccountFile::new(PathBuf::from("/etc/passwd"))),
            groups: Arc::new(AccountFile::new(PathBuf::from("/etc/group"))),
        }
    }

    /// Reads the account names from other files than `/etc/passwd` and `/etc/group` (tests,
    /// or an agent whose host's files are mounted elsewhere).
    #[must_use]
    pub fn with_account_files(mut self, passwd: PathBuf, group: PathBuf) -> Self {
        self.users = Arc::new(AccountFile::new(passwd));
        self.groups = Arc::new(AccountFile::new(group));
        self
    }

    /// Whether attestation hashes the workload's binary (`unix:sha256`): only with
    /// `discover_workload_path`, and a negative `workload_size_limit` turns it off.
    fn hashes_binary(&self) -> bool {
        self.config.discover_workload_path && self.config.workload_size_limit >= 0
    }

    /// The selectors of `pid`, synchronously (file reads and hashing).
    fn selectors(&self, pid: i32) -> Result<Vec<Selector>, AttestError> {
        let proc_dir = self.proc_root.join(pid.to_string());
        let status_path = proc_dir.join("status");
        let status = super::read_proc_file(&status_path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                AttestError::ProcessGone(format!("process {pid} not found"))
            } else {
                AttestError::Internal(format!(
                    "failed to get process: {}: {e}",
                    status_path.display()
                ))
            }
        })?;
        let ids = ProcessIds::parse(&status)
            .map_err(|e| AttestError::Internal(format!("{}: {e}", status_path.display())))?;
        let users = self.users.accounts();
        let groups = self.groups.accounts();

        let mut values = vec![format!("uid:{}", ids.uid)];
        if let Some(name) = lookup(&users, ids.uid) {
            values.push(format!("user:{name}"));
        }
        values.push(format!("gid:{}", ids.gid));
        if let Some(name) = lookup(&groups, ids.gid) {
            values.push(format!("group:{name}"));
        }
        for gid in &ids.supplementary_gids {
            values.push(format!("supplementary_gid:{gid}"));
            if let Some(name) = lookup(&groups, *gid) {
                values.push(format!("supplementary_group:{name}"));
            }
        }

        if self.config.discover_workload_path {
            let exe = proc_dir.join("exe");
            let path = std::fs::read_link(&exe).map_err(|e| {
                AttestError::Internal(format!("path lookup: {}: {e}", exe.display()))
            })?;
            values.push(format!("path:{}", path.display()));
            if self.hashes_binary() {
                // Hash through /proc/<pid>/exe: it is the binary even when the workload runs
                // in another mount namespace or the path was replaced since.
                let digest = sha256_digest(&exe, self.config.workload_size_limit)
                    .map_err(AttestError::Internal)?;
                values.push(format!("sha256:{digest}"));
            }
        }

        values
            .into_iter()
            .map(|value| {
                Selector::new(PLUGIN_NAME, value)
                    .map_err(|e| AttestError::Internal(format!("invalid selector: {e}")))
            })
            .collect()
    }
}

#[async_trait]
impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        PLUGIN_NAME
    }

    async fn attest(&self, peer: PeerProcess) -> Result<Vec<Selector>, AttestError> {
        // Without hashing, attestation is a few reads of `/proc` and of the account files,
        // which the kernel answers from memory in microseconds: done in place, they cost
        // less than handing them to a blocking thread and back, on every Workload API call.
        if !self.hashes_binary() {
            return self.selectors(peer.pid);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.selectors(peer.pid))
            .await
            .map_err(|e| AttestError::Internal(format!("unix attestation task failed: {e}")))?
    }
}

/// The ids of `/proc/<pid>/status`: effective uid and gid and the supplementary groups.
#[derive(Debug, PartialEq, Eq)]
struct ProcessIds {
    uid: u32,
    gid: u32,
    supplementary_gids: Vec<u32>,
}

impl ProcessIds {
    fn parse(status: &str) -> Result<Self, String> {
        let mut uid = None;
        let mut gid = None;
        let mut supplementary_gids = Vec::new();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim() {
                "Uid" => uid = Some(effective_id(value, "Uid")?),
                "Gid" => gid = Some(effective_id(value, "Gid")?),
                "Groups" => {
                    supplementary_gids = value
                        .split_whitespace()
                        .map(|g| g.parse().map_err(|_| format!("bad Groups value {g:?}")))
                        .collect::<Result<_, _>>()?;
                }
                _ => {}
            }
        }
        Ok(Self {
            uid: uid.ok_or("UIDs lookup: no Uid line")?,
            gid: gid.ok_or("GIDs lookup: no Gid line")?,
            supplementary_gids,
        })
    }
}

/// The effective id of a `Uid:`/`Gid:` line (real, effective, saved, filesystem); the real
/// one when only one is given, as upstream.
fn effective_id(value: &str, key: &str) -> Result<u32, String> {
    let ids: Vec<&str> = value.split_whitespace().collect();
    let id = match ids.as_slice() {
        [] => return Err(format!("{key} lookup: no ids for process")),
        [only] => *only,
        [_, effective, ..] => *effective,
    };
    id.parse()
        .map_err(|_| format!("{key} lookup: bad id {id:?}"))
}

/// A passwd or group file, read again only when it changed on disk (its inode, size or
/// modification time): every Workload API call looks names up, and these files rarely change.
#[derive(Debug)]
struct AccountFile {
    path: PathBuf,
    cached: Mutex<Option<(FileStamp, Accounts)>>,
}

/// The `(id, name)` pairs of an account file, shared by the calls that read them.
type Accounts = Arc<[(u32, String)]>;

/// What tells that a file changed: a replaced file (as `useradd` and `vipw` write them) has
/// another inode; one edited in place another size or modification time.
type FileStamp = (u64, u64, i64, i64);

impl AccountFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
        }
    }

    /// The file's `(id, name)` pairs; none when it cannot be read.
    fn accounts(&self) -> Accounts {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Arc::from([]);
        };
        let stamp = (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, accounts)) = cached.as_ref()
            && *known == stamp
        {
            return Arc::clone(accounts);
        }
        let accounts: Accounts = read_accounts(&self.path).into();
        *cached = Some((stamp, Arc::clone(&accounts)));
        accounts
    }
}

/// `(id, name)` pairs of a passwd or group file (`name:password:id:...`); an unreadable file
/// gives no names, as a failed lookup does upstream (the name selectors are left out).
fn read_accounts(path: &Path) -> Vec<(u32, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse().ok()?;
            (!name.is_empty()).then(|| (id, name.to_owned()))
        })
        .collect()
}

/// The first name for `id`, as getpwuid/getgrgid answer.
fn lookup(accounts: &[(u32, String)], id: u32) -> Option<&str> {
    accounts
        .iter()
        .find(|(account_id, _)| *account_id == id)
        .map(|(_, name)| name.as_str())
}

/// The lowercase hex SHA-256 of the file at `path`, refusing files over `limit` bytes when
/// `limit` is positive.
fn sha256_digest(path: &Path, limit: i64) -> Result<String, String> {
    let fail = |e: io::Error| format!("SHA256 digest: {}: {e}", path.display());
    let mut file = File::open(path).map_err(fail)?;
    if limit > 0 {
        let size = file.metadata().map_err(fail)?.len();
        if i64::try_from(size).map_or(true, |size| size > limit) {
            return Err(format!(
                "SHA256 digest: workload {} exceeds size limit ({size} > {limit})",
                path.display()
            ));
        }
    }
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer).map_err(fail)?;
        if read == 0 {
            break;
        }
        context.update(buffer.get(..read).unwrap_or_default());
    }
    Ok(hex::encode(context.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_pid() -> i32 {
        i32::try_from(std::process::id()).unwrap()
    }

    fn id_command(flag: &str) -> String {
        let out = std::process::Command::new("id").arg(flag).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn values(selectors: &[Selector], prefix: &str) -> Vec<String> {
        selectors
            .iter()
            .inspect(|s| assert_eq!(s.kind, "unix"))
            .filter_map(|s| s.value.strip_prefix(prefix).map(str::to_owned))
            .collect()
    }

    #[tokio::test]
    async fn current_process_gets_its_uid_gid_and_names() {
        let attestor = UnixAttestor::new(UnixAttestorConfig::default());
        let peer = PeerProcess {
            pid: own_pid(),
            uid: 0,
            gid: 0,
        };
        let selectors = attestor.attest(peer).await.unwrap();
        assert_eq!(values(&selectors, "uid:"), vec![id_command("-u")]);
        assert_eq!(values(&selectors, "gid:"), vec![id_command("-g")]);
        // `id -un` fails when the uid has no passwd entry; then no user selector either.
        let user = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        if user.status.success() {
            let name = String::from_utf8(user.stdout).unwrap().trim().to_owned();
            assert_eq!(values(&selectors, "user:"), vec![name]);
        }
        assert!(values(&selectors, "path:").is_empty());
        assert!(values(&selectors, "sha256:").is_empty());
    }

    #[tokio::test]
    async fn discovered_path_and_digest_are_the_running_binary() {
        let attestor = UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: true,
            workload_size_limit: 0,
        });
        let peer = PeerProcess {
            pid: own_pid(),
            uid: 0,
            gid: 0,
        };
        let selectors = attestor.attest(peer).await.unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(values(&selectors, "path:"), vec![exe.display().to_string()]);
        let bytes = std::fs::read(&exe).unwrap();
        let expected = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &bytes,
        ));
        assert_eq!(values(&selectors, "sha256:"), vec![expected]);
    }

    #[tokio::test]
    async fn size_limit_refuses_big_binaries_and_negative_skips_hashing() {
        let peer = PeerProcess {
            pid: own_pid(),
            uid: 0,
            gid: 0,
        };
        let limited = UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: true,
            workload_size_limit: 1,
        });
        let err = limited.attest(peer).await.unwrap_err();
        assert!(err.to_string().contains("exceeds size limit"), "{err}");

        let no_hash = UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: true,
            workload_size_limit: -1,
        });
        let selectors = no_hash.attest(peer).await.unwrap();
        assert_eq!(values(&selectors, "path:").len(), 1);
        assert!(values(&selectors, "sha256:").is_empty());
    }

    #[tokio::test]
    async fn dead_pid_is_process_gone() {
        let attestor = UnixAttestor::new(UnixAttestorConfig::default());
        let peer = PeerProcess {
            pid: i32::MAX,
            uid: 0,
            gid: 0,
        };
        let err = attestor.attest(peer).await.unwrap_err();
        assert!(matches!(err, AttestError::ProcessGone(_)), "{err}");
    }

    #[test]
    fn own_status_file_parses() {
        let status = super::super::read_proc_file(Path::new("/proc/self/status")).unwrap();
        assert!(ProcessIds::parse(&status).is_ok(), "{status}");
    }

    #[test]
    fn status_gives_effective_ids_and_groups_with_names() {
        let status =
            "Name:\tnginx\nUid:\t1000\t33\t33\t33\nGid:\t1000\t34\t34\t34\nGroups:\t4 2000 \n";
        let ids = ProcessIds::parse(status).unwrap();
        assert_eq!(
            ids,
            ProcessIds {
                uid: 33,
                gid: 34,
                supplementary_gids: vec![4, 2000]
            }
        );
        assert!(ProcessIds::parse("Name:\tx\n").is_err());
    }

    #[tokio::test]
    async fn names_come_from_account_files() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        let group = dir.path().join("group");
        let uid = id_command("-u");
        let gid = id_command("-g");
        std::fs::write(
            &passwd,
            format!("# comment\nworkload:x:{uid}:{gid}::/:/bin/sh\n"),
        )
        .unwrap();
        std::fs::write(&group, format!("wl-group:x:{gid}:\n")).unwrap();
        let attestor = UnixAttestor::new(UnixAttestorConfig::default())
            .with_account_files(passwd.clone(), group.clone());
        let peer = PeerProcess {
            pid: own_pid(),
            uid: 0,
            gid: 0,
        };
        let selectors = attestor.attest(peer).await.unwrap();
        assert_eq!(values(&selectors, "user:"), vec!["workload".to_owned()]);
        assert_eq!(values(&selectors, "group:"), vec!["wl-group".to_owned()]);

        // The files are read once and kept, but a change is seen on the next call: a file
        // replaced by rename (as useradd writes it), and one rewritten in place.
        let renamed = dir.path().join("passwd.new");
        std::fs::write(&renamed, format!("renamed:x:{uid}:{gid}::/:/bin/sh\n")).unwrap();
        std::fs::rename(&renamed, &passwd).unwrap();
        std::fs::write(&group, format!("edited-in-place:x:{gid}:\n")).unwrap();
        let selectors = attestor.attest(peer).await.unwrap();
        assert_eq!(values(&selectors, "user:"), vec!["renamed".to_owned()]);
        assert_eq!(
            values(&selectors, "group:"),
            vec!["edited-in-place".to_owned()]
        );

        // A file that goes away gives no names (and no failure), as before.
        std::fs::remove_file(&group).unwrap();
        let selectors = attestor.attest(peer).await.unwrap();
        assert!(values(&selectors, "group:").is_empty());
        assert_eq!(values(&selectors, "gid:"), vec![gid]);
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let config: UnixAttestorConfig =
            serde_json::from_str(r#"{"discover_workload_path": true}"#).unwrap();
        assert!(config.discover_workload_path);
        assert_eq!(config.workload_size_limit, 0);
        assert!(serde_json::from_str::<UnixAttestorConfig>(r#"{"workload_path": 1}"#).is_err());
    }
}
