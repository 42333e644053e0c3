//! The standard `process_*` series that upstream's Prometheus endpoint serves from the Go
//! client's process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! …), read from `/proc/self` at every scrape with the same names, types and units, so
//! dashboards built on them keep working. As upstream's, they carry no prefix and no labels
//! and only the Prometheus endpoint has them (go-metrics' sinks never see them).

use std::fmt::Write as _;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 in the Linux ABI,
/// as the Go client assumes too).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ProcessStats {
    /// User plus system CPU time, seconds.
    cpu_seconds: f64,
    /// Resident set size, bytes.
    resident_bytes: f64,
    /// Virtual memory size, bytes.
    virtual_bytes: f64,
    /// Start time, seconds since the Unix epoch.
    start_time: f64,
    /// Open file descriptors.
    open_fds: Option<f64>,
    /// The soft limit on open file descriptors.
    max_fds: Option<f64>,
    /// The soft limit on the address space, bytes.
    virtual_max_bytes: Option<f64>,
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 onwards), so a name with
/// spaces or parentheses cannot shift them.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = stat.rfind(')').map(|i| &stat[i + 1..])?;
    Some(after.split_whitespace().collect())
}

/// The soft limit of `name` in `/proc/<pid>/limits` (`unlimited` as the Go client reports
/// it: the largest uint64).
fn soft_limit(limits: &str, name: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let value = line[name.len()..].split_whitespace().next()?;
    if value == "unlimited" {
        #[allow(clippy::cast_precision_loss, reason = "as the Go client reports it")]
        return Some(u64::MAX as f64);
    }
    value.parse().ok()
}

impl ProcessStats {
    /// Parses the contents of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits`
    /// and `/proc/stat`; `open_fds` is counted by the caller.
    fn parse(
        stat: &str,
        status: &str,
        limits: &str,
        system_stat: &str,
        open_fds: Option<usize>,
    ) -> Option<Self> {
        let fields = stat_fields(stat)?;
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let boot_time: f64 = system_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let resident_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        #[allow(clippy::cast_precision_loss, reason = "descriptor counts")]
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
            resident_bytes: resident_kb * 1024.0,
            virtual_bytes: field(23)?,
            start_time: boot_time + field(22)? / USER_HZ,
            open_fds: open_fds.map(|n| n as f64),
            max_fds: soft_limit(limits, "Max open files"),
            virtual_max_bytes: soft_limit(limits, "Max address space"),
        })
    }

    /// This process now, or `None` without a readable `/proc`.
    pub(super) fn read() -> Option<Self> {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
        Self::parse(
            &read("/proc/self/stat")?,
            &read("/proc/self/status").unwrap_or_default(),
            &read("/proc/self/limits").unwrap_or_default(),
            &read("/proc/stat")?,
            open_fds,
        )
    }

    /// The series in the text exposition format, with the Go client's help texts.
    pub(super) fn exposition(&self) -> String {
        let series: [(&str, &str, &str, Option<f64>); 7] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                Some(self.cpu_seconds),
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                self.max_fds,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                Some(self.resident_bytes),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                Some(self.start_time),
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                Some(self.virtual_bytes),
            ),
            (
                "process_virtual_memory_max_bytes",
                "gauge",
                "Maximum amount of virtual memory available in bytes.",
                self.virtual_max_bytes,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in series {
            let Some(value) = value else { continue };
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        out
    }
}

/// The `process_*` series of this process (empty without a readable `/proc`).
pub fn exposition() -> String {
    ProcessStats::read()
        .map(|s| s.exposition())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (spire agent) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 120 0 0 20 0 9 0 123400 734003200 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\n\
Max address space         unlimited            unlimited            bytes\n\
Max open files            1024                 524288               files\n";

    #[test]
    fn stat_fields_survive_a_command_name_with_spaces_and_parentheses() {
        let stat = STAT.replace("(spire agent)", "(a) b (c)");
        let s = ProcessStats::parse(
            &stat,
            "VmRSS:\t  8192 kB\n",
            LIMITS,
            "btime 1700000000\n",
            Some(12),
        )
        .unwrap();
        assert!((s.cpu_seconds - 3.7).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn the_series_have_the_go_clients_names_units_and_types() {
        let s = ProcessStats::parse(
            STAT,
            "Name:\tspire-agent\nVmRSS:\t  8192 kB\n",
            LIMITS,
            "cpu 1 2 3\nbtime 1700000000\n",
            Some(12),
        )
        .unwrap();
        let text = s.exposition();
        assert!(
            text.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.7\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("process_resident_memory_bytes 8388608\n"),
            "{text}"
        );
        assert!(
            text.contains("process_virtual_memory_bytes 734003200\n"),
            "{text}"
        );
        assert!(
            text.contains("process_start_time_seconds 1700001234\n"),
            "{text}"
        );
        assert!(text.contains("process_open_fds 12\n"), "{text}");
        assert!(text.contains("process_max_fds 1024\n"), "{text}");
        assert!(
            text.contains("process_virtual_memory_max_bytes 18446744073709552000\n"),
            "{text}"
        );
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let s = ProcessStats::read().expect("/proc/self is readable on Linux");
        assert!(
            s.resident_bytes > 0.0 && s.virtual_bytes >= s.resident_bytes,
            "{s:?}"
        );
        assert!(s.open_fds.is_some_and(|n| n >= 3.0), "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time <= now + 1.0 && s.start_time > now - 86_400.0 * 365.0,
            "{s:?}"
        );
    }
}
