//! The process's own figures, read from `/proc/self` at each scrape, under the names every
//! Prometheus client library uses (`process_*`), so that existing dashboards read them.

use crate::exposition::{Family, Kind};

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    /// Resident memory in bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory in bytes.
    pub virtual_memory_bytes: u64,
    /// User and system CPU time in seconds.
    pub cpu_seconds: f64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`None`: unlimited).
    pub max_fds: Option<u64>,
}

/// Reads the figures; `None` where `/proc` cannot be read (not Linux).
pub fn read() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    let page = rustix::param::page_size() as u64;
    let parsed = parse_stat(&stat)?;
    let boot_time = parse_boot_time(&boot)?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|entries| entries.count() as u64)
        .unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| parse_max_open_files(&limits));
    let ticks = ticks as f64;
    Some(ProcessFigures {
        resident_memory_bytes: parsed.rss_pages * page,
        virtual_memory_bytes: parsed.vsize_bytes,
        cpu_seconds: (parsed.utime + parsed.stime) as f64 / ticks,
        start_time_seconds: boot_time as f64 + parsed.start_ticks as f64 / ticks,
        open_fds,
        max_fds: max_fds.unwrap_or(None),
    })
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Parses `/proc/PID/stat`: the command name (field 2) is in parentheses and may hold
/// spaces and parentheses, so the fields are counted from after its last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime`) of `/proc/stat`, in seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`: `Some(None)` when unlimited.
fn parse_max_open_files(limits: &str) -> Option<Option<u64>> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(None);
    }
    soft.parse().ok().map(Some)
}

/// The figures as the families every Prometheus client library exports.
pub fn families(figures: &ProcessFigures) -> Vec<Family> {
    let mut families = vec![
        Family::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
        )
        .number(&[], figures.resident_memory_bytes as f64),
        Family::new(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
        )
        .number(&[], figures.virtual_memory_bytes as f64),
        Family::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
        )
        .number(&[], figures.cpu_seconds),
        Family::new(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            Kind::Gauge,
        )
        .number(&[], figures.start_time_seconds),
        Family::new(
            "process_open_fds",
            "Number of open file descriptors.",
            Kind::Gauge,
        )
        .number(&[], figures.open_fds as f64),
    ];
    if let Some(max) = figures.max_fds {
        families.push(
            Family::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Kind::Gauge,
            )
            .number(&[], max as f64),
        );
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may set it.
        let stat = "4242 (atoll (dev) x) S 1 4242 4242 0 -1 4194560 2767 0 0 0 \
                    150 37 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                utime: 150,
                stime: 37,
                start_ticks: 123456,
                vsize_bytes: 987654321,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
    }

    #[test]
    fn boot_time_and_fd_limit_are_read() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             127297               127297               processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(Some(1024)));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(None)
        );
    }

    #[test]
    fn this_process_is_read_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let figures = read().expect("/proc/self is readable");
        assert!(figures.resident_memory_bytes > 0);
        assert!(figures.open_fds > 0);
        assert!(figures.start_time_seconds > 1_000_000_000.0);
        assert!(figures.cpu_seconds >= 0.0);
    }
}
