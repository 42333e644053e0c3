//! Telling whether a pid still names the process that opened the connection.
//!
//! A pid alone is not an identity: the caller may exit and its pid be given to another process
//! while the attestors look at `/proc/<pid>`. When a connection is accepted the agent takes a
//! pidfd for the caller's pid (`pidfd_open`, Linux 5.3+): it refers to that process and no
//! other, and becomes readable once the process has exited. A pid is only reused after its
//! process exited, so a pidfd that is not readable after attestation proves the attested pid
//! was the caller throughout. Where `pidfd_open` is not available (older kernels, a seccomp
//! filter), the process start time (field 22 of `/proc/<pid>/stat`, which never changes and
//! which two processes with the same pid cannot share) is read at accept and compared after
//! attestation, as upstream does. A pidfd is one more descriptor per open connection, as
//! upstream's agent (which keeps `/proc/<pid>` open) holds.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use super::Caller;
use crate::plugins::workloadattestor::read_proc_file;

/// What tells, after attestation, whether the caller's pid still names the process that
/// opened the connection.
#[derive(Debug, Clone)]
pub enum Liveness {
    /// A pidfd for the caller, taken when the connection was accepted.
    Pidfd(Arc<OwnedFd>),
    /// The caller's start time in clock ticks since boot, read when the connection was
    /// accepted (where pidfds are not available).
    StartTime(u64),
    /// The caller had already exited when the connection was accepted.
    Gone,
}

impl Liveness {
    /// Takes hold of the process `pid` names now.
    pub(crate) fn track(pid: i32) -> Self {
        let Some(raw) = Pid::from_raw(pid) else {
            return Liveness::Gone;
        };
        match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => Liveness::Pidfd(Arc::new(fd)),
            Err(Errno::SRCH) => Liveness::Gone,
            // ENOSYS (before Linux 5.3), a seccomp filter or no descriptor left: the start
            // time says the same.
            Err(_) => match process_start_time(pid) {
                Ok(start_time) => Liveness::StartTime(start_time),
                Err(_) => Liveness::Gone,
            },
        }
    }
}

/// The start time of `pid` in clock ticks since boot, from `/proc/<pid>/stat`.
pub(crate) fn process_start_time(pid: i32) -> io::Result<u64> {
    let stat = read_proc_file(Path::new(&format!("/proc/{pid}/stat")))?;
    parse_start_time(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat"),
        )
    })
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so counting starts after the last
/// `)`, where field 3 begins.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process behind `pidfd` has exited (its pidfd polls readable), without
/// waiting.
fn has_exited(pidfd: &OwnedFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let ready = poll(&mut fds, Some(&Timespec::default()))?;
    Ok(ready > 0 && !fds[0].revents().is_empty())
}

/// Checks that the caller's pid still names the process that opened the connection.
pub(crate) fn verify_still_alive(caller: &Caller) -> Result<(), String> {
    let pid = caller.process.pid;
    match &caller.liveness {
        Liveness::Gone => Err(format!(
            "caller process {pid} had exited before it was attested"
        )),
        Liveness::Pidfd(pidfd) => match has_exited(pidfd) {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("caller process {pid} exited during attestation")),
            Err(e) => Err(format!("unable to check caller process {pid}: {e}")),
        },
        Liveness::StartTime(expected) => match process_start_time(pid) {
            Ok(now) if now == *expected => Ok(()),
            Ok(_) => Err(format!(
                "pid {pid} was reused by another process during attestation"
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(format!("caller process {pid} exited during attestation"))
            }
            Err(e) => Err(format!("unable to check caller process {pid}: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::workloadattestor::PeerProcess;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("1234 (short) S 1"), None);
    }

    fn caller(pid: i32, liveness: Liveness) -> Caller {
        Caller {
            process: PeerProcess {
                pid,
                uid: 0,
                gid: 0,
            },
            liveness,
        }
    }

    #[test]
    fn a_caller_that_exits_during_attestation_is_refused() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawning sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let liveness = Liveness::track(pid);
        assert!(
            matches!(liveness, Liveness::Pidfd(_)),
            "this kernel has pidfd_open: {liveness:?}"
        );
        let tracked = caller(pid, liveness);
        assert_eq!(verify_still_alive(&tracked), Ok(()));
        child.kill().expect("killing sleep");
        child.wait().expect("reaping sleep");
        // Reaped: its pid may now be given to another process, and the pidfd still says so.
        let err = verify_still_alive(&tracked).unwrap_err();
        assert!(err.contains("exited during attestation"), "{err}");
    }

    #[test]
    fn without_pidfds_a_changed_start_time_is_refused() {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let start_time = process_start_time(pid).expect("own /proc/<pid>/stat");
        assert_eq!(
            verify_still_alive(&caller(pid, Liveness::StartTime(start_time))),
            Ok(())
        );
        let err =
            verify_still_alive(&caller(pid, Liveness::StartTime(start_time + 1))).unwrap_err();
        assert!(err.contains("reused"), "{err}");
        let err = verify_still_alive(&caller(pid, Liveness::Gone)).unwrap_err();
        assert!(err.contains("before it was attested"), "{err}");
    }
}
