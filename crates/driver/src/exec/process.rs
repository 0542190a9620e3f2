//! Telling one process from another across an agent restart, and waiting for a process
//! that is not our child.
//!
//! A pid alone names a process only until it exits: the kernel hands the number out again.
//! A process is identified by its pid together with its start time (`/proc/<pid>/stat`
//! field 22, clock ticks after boot) and the boot it started in
//! (`/proc/sys/kernel/random/boot_id`), which no other process can share.

use rustix::fd::OwnedFd;
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How often a process is looked up when the kernel offers no pidfd (Linux before 5.3).
const POLL_EVERY: Duration = Duration::from_millis(500);

/// What `/proc/<pid>/stat` says about a process, as far as identifying it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessStat {
    /// Field 3: `R`, `S`, `D`, `Z` (exited, not yet reaped), ...
    pub state: char,
    /// Field 5: the process group id.
    pub process_group: i32,
    /// Field 22: clock ticks after boot when the process started.
    pub start_time: u64,
}

impl ProcessStat {
    /// Whether the process still runs (an exited process waiting for its reaper does not).
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so the fields are counted after the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcessStat> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let process_group = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcessStat {
        state,
        process_group,
        start_time,
    })
}

/// The stat of a running or exited process; `None` when there is no such pid.
pub(crate) fn read_stat(pid: i32) -> Option<ProcessStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This boot's id; empty when the kernel does not say.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

/// Whether the wrapper shell `wrapper` has started the task's shell: one of its children
/// runs another command line than the wrapper's (a forked child that has not yet called
/// `exec` still shows the wrapper's, and still has its signal handlers). True as well when
/// the wrapper has exited or the kernel does not list children, so no caller waits in vain.
pub(crate) fn task_shell_started(wrapper: i32) -> bool {
    if !read_stat(wrapper).is_some_and(|stat| stat.alive()) {
        return true;
    }
    let (Ok(children), Ok(own)) = (
        std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")),
        std::fs::read(format!("/proc/{wrapper}/cmdline")),
    ) else {
        return true;
    };
    children.split_whitespace().any(|child| {
        std::fs::read(format!("/proc/{child}/cmdline")).is_ok_and(|cmdline| cmdline != own)
    })
}

/// A process as recorded when it was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessIdentity {
    /// Its pid, which is also its process group id.
    pub process_group: i32,
    /// Its start time, in clock ticks after boot.
    pub start_time: u64,
    /// The boot it started in.
    pub boot_id: String,
}

/// What a recorded process turned out to be when looked up again.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The very process, still running; the watch reports its exit.
    Running(ExitWatch),
    /// It has exited.
    Gone,
    /// The pid now belongs to another process (or the record is from another boot).
    Reused {
        /// What differs, for the log.
        reason: String,
    },
}

impl ProcessIdentity {
    /// The identity of a process that is running now (right after it was spawned).
    pub fn of(process_group: i32) -> Option<ProcessIdentity> {
        let stat = read_stat(process_group)?;
        Some(ProcessIdentity {
            process_group,
            start_time: stat.start_time,
            boot_id: boot_id(),
        })
    }

    /// Looks the recorded process up. The pidfd is opened before the identity is checked: a
    /// pidfd names the process that held the pid when it was opened, and if that process
    /// still matches the record afterwards it was ours all along (ours started long before).
    pub fn look_up(&self) -> Lookup {
        if self.process_group <= 1 {
            return Lookup::Reused {
                reason: format!("pid {} cannot be a task", self.process_group),
            };
        }
        if self.boot_id != boot_id() {
            return Lookup::Gone;
        }
        let Some(watch) = ExitWatch::open(self.process_group, self.start_time) else {
            return Lookup::Gone;
        };
        let Some(stat) = read_stat(self.process_group) else {
            return Lookup::Gone;
        };
        if stat.start_time != self.start_time {
            return Lookup::Reused {
                reason: format!(
                    "pid {} started at tick {}, the task at tick {}",
                    self.process_group, stat.start_time, self.start_time
                ),
            };
        }
        if !stat.alive() {
            return Lookup::Gone;
        }
        if stat.process_group != self.process_group {
            return Lookup::Reused {
                reason: format!(
                    "pid {} is in process group {}",
                    self.process_group, stat.process_group
                ),
            };
        }
        Lookup::Running(watch)
    }
}

/// Waits for a process that need not be a child of this one.
#[derive(Debug)]
pub(crate) enum ExitWatch {
    /// A pidfd, which becomes readable when the process exits (Linux 5.3 and later).
    Pidfd {
        /// The pidfd.
        fd: AsyncFd<OwnedFd>,
        /// The pid, to poll for should the pidfd fail.
        pid: i32,
        /// Its start time.
        start_time: u64,
    },
    /// Without pidfds: look the process up every [`POLL_EVERY`].
    Poll {
        /// The pid.
        pid: i32,
        /// Its start time, so a reused pid is not mistaken for it.
        start_time: u64,
    },
}

impl ExitWatch {
    /// Starts watching `pid`; `None` when there is no such process. Without a usable pidfd
    /// (an old kernel, no descriptors left) it falls back to polling: failing to watch must
    /// not make a running task look gone. Must be called within a Tokio runtime.
    fn open(pid: i32, start_time: u64) -> Option<ExitWatch> {
        let raw = Pid::from_raw(pid)?;
        let poll = ExitWatch::Poll { pid, start_time };
        match pidfd_open(raw, PidfdFlags::NONBLOCK) {
            // `with_interest` is deprecated for `register_with_interest`, which is unsafe
            // only because a borrowed descriptor could be closed while registered; an
            // `OwnedFd` moved into the `AsyncFd` cannot be, and this crate forbids `unsafe`.
            #[allow(deprecated)]
            Ok(fd) => match AsyncFd::with_interest(fd, Interest::READABLE) {
                Ok(fd) => Some(ExitWatch::Pidfd {
                    fd,
                    pid,
                    start_time,
                }),
                Err(error) => {
                    tracing::debug!(pid, %error, "cannot register a pidfd; polling instead");
                    Some(poll)
                }
            },
            Err(rustix::io::Errno::SRCH) => None,
            Err(errno) => {
                tracing::debug!(pid, error = %errno, "no pidfd; polling instead");
                Some(poll)
            }
        }
    }

    /// Resolves once the process has exited.
    pub async fn exited(self) {
        match self {
            ExitWatch::Pidfd {
                fd,
                pid,
                start_time,
            } => {
                if let Err(error) = fd.readable().await {
                    tracing::warn!(pid, %error, "waiting on a pidfd failed; polling instead");
                    poll_until_gone(pid, start_time).await;
                }
            }
            ExitWatch::Poll { pid, start_time } => poll_until_gone(pid, start_time).await,
        }
    }
}

async fn poll_until_gone(pid: i32, start_time: u64) {
    loop {
        match read_stat(pid) {
            Some(stat) if stat.alive() && stat.start_time == start_time => {
                tokio::time::sleep(POLL_EVERY).await
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a command name holding spaces and a parenthesis.
    const STAT: &str = "4242 (my (odd) task) S 1 4242 4242 0 -1 4194560 139 0 0 0 0 0 0 0 20 0 1 0 987654 2490368 218 18446744073709551615 1 1 0 0 0 0 0 0 65536 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        assert_eq!(
            parse_stat(STAT),
            Some(ProcessStat {
                state: 'S',
                process_group: 4242,
                start_time: 987654,
            })
        );
    }

    #[test]
    fn zombies_are_not_alive_and_garbage_does_not_parse() {
        let zombie = parse_stat(&STAT.replace(") S ", ") Z ")).expect("parses");
        assert!(!zombie.alive());
        assert!(parse_stat(STAT).expect("parses").alive());
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    /// Watches a process with the watch `watch_with` makes, kills the process, and asserts
    /// that the watch sees its exit (and not before).
    async fn watch_a_process_die(watch_with: impl FnOnce(i32, u64) -> ExitWatch) {
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid fits");
        let start_time = read_stat(pid).expect("stat").start_time;
        let watch = watch_with(pid, start_time);
        let exited = tokio::spawn(watch.exited());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!exited.is_finished(), "the process still runs");
        child.kill().expect("kill");
        std::thread::spawn(move || child.wait())
            .join()
            .expect("reaper")
            .expect("wait");
        tokio::time::timeout(Duration::from_secs(5), exited)
            .await
            .expect("the exit is seen")
            .expect("the watch task");
    }

    #[tokio::test]
    async fn exits_are_seen_through_a_pidfd_and_by_polling() {
        watch_a_process_die(|pid, start_time| {
            let watch = ExitWatch::open(pid, start_time).expect("a running process");
            assert!(matches!(watch, ExitWatch::Pidfd { .. }), "{watch:?}");
            watch
        })
        .await;
        watch_a_process_die(|pid, start_time| ExitWatch::Poll { pid, start_time }).await;
    }

    #[test]
    fn own_process_is_identified_and_a_wrong_start_time_is_not_ours() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let _entered = runtime.enter();
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let stat = read_stat(me).expect("own stat");
        let identity = ProcessIdentity {
            process_group: me,
            start_time: stat.start_time,
            boot_id: boot_id(),
        };
        // The test process is not necessarily a group leader, so only the start time and
        // the boot are checked here; the driver's tests cover whole tasks.
        let impostor = ProcessIdentity {
            start_time: stat.start_time + 1,
            ..identity.clone()
        };
        assert!(matches!(impostor.look_up(), Lookup::Reused { .. }));
        let other_boot = ProcessIdentity {
            boot_id: "another boot".into(),
            ..identity
        };
        assert!(matches!(other_boot.look_up(), Lookup::Gone));
    }
}
