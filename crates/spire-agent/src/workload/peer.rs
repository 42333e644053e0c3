//! Telling whether a pid still names the process that opened the connection.
//!
//! A pid alone is not an identity: the caller may exit and its pid be given to another process
//! while the attestors look at `/proc/<pid>`. The start time of a process (field 22 of
//! `/proc/<pid>/stat`) never changes and two processes with the same pid cannot share it, so
//! comparing it before and after attestation tells whether the attested process is the caller.

use std::io;

use super::Caller;

/// The start time of `pid` in clock ticks since boot, from `/proc/<pid>/stat`.
pub(crate) fn process_start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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

/// Checks that the caller's pid still names the process that opened the connection.
pub(crate) fn verify_still_alive(caller: &Caller) -> Result<(), String> {
    let pid = caller.process.pid;
    let Some(expected) = caller.start_time else {
        return Err(format!(
            "caller process {pid} had exited before it was attested"
        ));
    };
    match process_start_time(pid) {
        Ok(now) if now == expected => Ok(()),
        Ok(_) => Err(format!(
            "pid {pid} was reused by another process during attestation"
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("caller process {pid} exited during attestation"))
        }
        Err(e) => Err(format!("unable to check caller process {pid}: {e}")),
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

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_refused() {
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let start_time = process_start_time(pid).ok();
        assert!(
            start_time.is_some(),
            "own /proc/<pid>/stat must be readable"
        );
        let process = PeerProcess {
            pid,
            uid: 0,
            gid: 0,
        };
        let caller = Caller {
            process,
            start_time,
        };
        assert_eq!(verify_still_alive(&caller), Ok(()));

        let recycled = Caller {
            process,
            start_time: start_time.map(|t| t + 1),
        };
        let err = verify_still_alive(&recycled).unwrap_err();
        assert!(err.contains("reused"), "{err}");

        let gone = Caller {
            process,
            start_time: None,
        };
        assert!(verify_still_alive(&gone).is_err());
    }
}
