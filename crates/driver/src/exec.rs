//! The exec driver: a task is `/bin/sh -c CMD`, a process group of its own on the node.
//!
//! Each task gets a sandbox directory `<sandbox_root>/<task id>/` (its working directory,
//! also given as `MESOS_SANDBOX`) holding its `stdout` and `stderr` files, as in Mesos. The
//! task inherits the agent's environment, overlaid with [`crate::task_environment`].
//!
//! A task's process group is its unit: stopping signals the whole group (SIGTERM, then
//! SIGKILL after the grace period), and when the task's shell exits on its own anything it
//! left behind in the group is killed too.
//!
//! # Surviving an agent restart
//!
//! The task's shell runs under a small wrapper shell, the leader of the process group,
//! which writes the shell's exit status to `exit_status` in the sandbox when it ends. The
//! wrapper traps SIGTERM (the task's shell gets the default disposition back), so a
//! SIGTERM to the group reaches the task while the wrapper waits to record how it ended.
//!
//! Next to it, `task.json` records the task (ids, environment) and the wrapper's pid with
//! that process's start time and boot id. A restarted agent calls [`ExecDriver::adopt`]: a
//! record whose process still runs, started at the same tick of the same boot, is adopted,
//! so [`ExecDriver::running`] lists it and [`ExecDriver::stop`] stops it like any other
//! task. A pid that now belongs to another process is never signalled; its record, and
//! the records of tasks that ended while no agent watched, are removed.
//!
//! An adopted task is not a child of this agent and cannot be waited for; its exit is seen
//! through a pidfd (or, on kernels without pidfds, by looking it up periodically) and its
//! exit status read from `exit_status`. When the wrapper itself was killed (SIGKILL to the
//! group) there is no status to read, and the exit is reported as a failure saying so.

mod process;
mod record;

use crate::spec::{
    sanitize_task_id, task_environment, CommandExit, CommandOutcome, DriverKind, RunningTask,
    TaskEvent, COMMAND_OUTPUT_LIMIT,
};
use crate::{DriverError, TaskKind, TaskSpec, EVENT_CHANNEL_CAPACITY};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use process::{Lookup, ProcessIdentity};
use record::{read_exit_status, RecordError, TaskRecord, EXIT_STATUS_FILE};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

/// How long to wait for a process group to go once SIGKILL has been sent.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long `start` waits at most for the wrapper shell to start the task's shell.
const SHELL_START_WAIT: Duration = Duration::from_secs(2);

/// The wrapper shell: runs the task's command (`$1`) in a shell of its own and writes that
/// shell's exit status to the file `$2`.
///
/// Its SIGTERM, SIGINT and SIGHUP traps only note the signal. A trap is a handler, not an
/// ignored signal, so the task's shell gets the default dispositions back; and a shell runs
/// a trap only once its foreground command has finished, so the status is written even
/// when the whole group was signalled. A signal that arrives before the task's shell is
/// forked is seen between the two commands, and the task is then not started at all (its
/// status is what the signal would have made it). A signal that reaches the forked child
/// before it has become the task's shell would be lost, so `start` returns only once the
/// task's shell runs.
///
/// Before anything else the wrapper reads one line from its stdin, a pipe from the agent,
/// which writes `go` there only once `task.json` records the wrapper. An agent killed
/// between spawning the wrapper and recording it closes the pipe by dying: the wrapper
/// reads end-of-file and exits without starting the task, so no task runs that a restarted
/// agent could not adopt (it would start the task again next to the unknown one).
const WRAPPER: &str = concat!(
    "atoll_signal=; trap 'atoll_signal=15' TERM; trap 'atoll_signal=2' INT; trap 'atoll_signal=1' HUP; ",
    r#"atoll_go=; read -r atoll_go; exec </dev/null; "#,
    r#"if [ -n "$atoll_signal" ]; then status=$((128 + atoll_signal)); "#,
    r#"elif [ "$atoll_go" = go ]; then /bin/sh -c "$1"; status=$?; "#,
    r#"else exit 125; fi; "#,
    r#"echo "$status" > "$2"; exit "$status""#,
);
/// What the wrapper says before it starts the task (see [`WRAPPER`]).
const GO: &[u8] = b"go\n";
/// The wrapper's `$0`, as `ps` shows it.
const WRAPPER_NAME: &str = "atoll-exec";

/// Runs tasks as process groups on the node. Cheap to clone; clones share their tasks.
#[derive(Clone)]
pub struct ExecDriver {
    shared: Arc<Shared>,
}

struct Shared {
    sandbox_root: PathBuf,
    /// The running tasks by id; the lock is never held across an `.await`.
    tasks: Mutex<HashMap<String, ExecTask>>,
    events: broadcast::Sender<TaskEvent>,
}

struct ExecTask {
    app_id: String,
    app_version: String,
    /// The wrapper shell's pid, which is also the task's process group id.
    process_group: i32,
    /// The task's environment, which commands run in the task get too.
    env: Arc<BTreeMap<String, String>>,
    /// Set by `stop`, so the exit is reported as a requested stop.
    stopping: bool,
    /// Becomes true once the wrapper shell has exited.
    exited: watch::Receiver<bool>,
}

impl Shared {
    fn tasks(&self) -> MutexGuard<'_, HashMap<String, ExecTask>> {
        // A panic while holding the lock cannot leave the map half-updated: every critical
        // section is a single insert, remove or flag write.
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reports the end of a task whose wrapper has exited: kills whatever is left of its
    /// process group, forgets it (here and in its sandbox) and sends `Exited`, described by
    /// `describe` from whether a stop was asked for.
    fn finish(
        &self,
        task_id: String,
        process_group: i32,
        sandbox: &Path,
        exited: watch::Sender<bool>,
        describe: impl FnOnce(bool) -> (bool, String),
    ) {
        // The wrapper is gone, but any survivor keeps the group id from being reused.
        signal_group(process_group, Signal::SIGKILL);
        TaskRecord::remove(sandbox);
        let stopping = {
            let mut tasks = self.tasks();
            match tasks.get(&task_id) {
                Some(task) if task.process_group == process_group => {
                    tasks.remove(&task_id).is_some_and(|task| task.stopping)
                }
                _ => false,
            }
        };
        let _ = exited.send(true);
        let (success, message) = describe(stopping);
        tracing::info!(%task_id, %message, "exec task exited");
        let _ = self.events.send(TaskEvent::Exited {
            task_id,
            success,
            message,
        });
    }
}

impl ExecDriver {
    /// A driver whose task sandboxes live under `sandbox_root` (created when needed). Tasks
    /// an earlier agent left there are taken over with [`ExecDriver::adopt`].
    pub fn new(sandbox_root: impl Into<PathBuf>) -> Self {
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        ExecDriver {
            shared: Arc::new(Shared {
                sandbox_root: sandbox_root.into(),
                tasks: Mutex::new(HashMap::new()),
                events,
            }),
        }
    }

    /// Adopts the tasks an earlier agent started under this sandbox root that still run:
    /// from now on they are listed by [`ExecDriver::running`], stopped by
    /// [`ExecDriver::stop`], and their exit is reported as an event. Records of tasks that
    /// have ended, or whose pid now belongs to another process, are removed; such a process
    /// is never signalled. Returns the ids of the adopted tasks.
    pub async fn adopt(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.shared.sandbox_root) else {
            return Vec::new();
        };
        let mut adopted = Vec::new();
        for entry in entries.flatten() {
            let sandbox = entry.path();
            let record = match TaskRecord::read(&sandbox) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(error @ RecordError::Invalid { .. }) => {
                    tracing::warn!(%error, "removing a damaged task record");
                    TaskRecord::remove(&sandbox);
                    continue;
                }
                // Kept for a later agent that can read it: its task may still run.
                Err(error) => {
                    tracing::warn!(%error, "cannot adopt a task from this record");
                    continue;
                }
            };
            if self.sandbox_dir(&record.task_id) != sandbox {
                tracing::warn!(task_id = %record.task_id, sandbox = %sandbox.display(), "removing a task record found in another task's sandbox");
                TaskRecord::remove(&sandbox);
                continue;
            }
            match record.identity().look_up() {
                Lookup::Running(watch) => {
                    if self.watch_adopted(&record, sandbox, watch) {
                        adopted.push(record.task_id);
                    }
                }
                Lookup::Gone => {
                    tracing::info!(task_id = %record.task_id, "exec task ended while no agent watched it");
                    TaskRecord::remove(&sandbox);
                }
                Lookup::Reused { reason } => {
                    tracing::info!(task_id = %record.task_id, %reason, "exec task is gone and its pid belongs to another process; not touching it");
                    TaskRecord::remove(&sandbox);
                }
            }
        }
        adopted.sort();
        adopted
    }

    /// Takes over a running task from its record; false if a task of that id is known.
    fn watch_adopted(
        &self,
        record: &TaskRecord,
        sandbox: PathBuf,
        watch: process::ExitWatch,
    ) -> bool {
        let process_group = record.process_group;
        let (exited_tx, exited_rx) = watch::channel(false);
        {
            let mut tasks = self.shared.tasks();
            if tasks.contains_key(&record.task_id) {
                return false;
            }
            tasks.insert(
                record.task_id.clone(),
                ExecTask {
                    app_id: record.app_id.clone(),
                    app_version: record.app_version.clone(),
                    process_group,
                    env: Arc::new(record.env.clone()),
                    stopping: false,
                    exited: exited_rx,
                },
            );
        }
        tracing::info!(task_id = %record.task_id, pid = process_group, "re-adopted an exec task started by an earlier agent");
        let shared = Arc::clone(&self.shared);
        let task_id = record.task_id.clone();
        tokio::spawn(async move {
            watch.exited().await;
            let recorded = read_exit_status(&sandbox);
            shared.finish(task_id, process_group, &sandbox, exited_tx, |stopping| {
                describe_recorded_exit(recorded, stopping)
            });
        });
        true
    }

    /// The sandbox directory of a task: its working directory, with `stdout` and `stderr`.
    pub fn sandbox_dir(&self, task_id: &str) -> PathBuf {
        self.shared.sandbox_root.join(sanitize_task_id(task_id))
    }

    /// Subscribes to task events from now on.
    pub fn events(&self) -> broadcast::Receiver<TaskEvent> {
        self.shared.events.subscribe()
    }

    /// The tasks running now, started by this driver or adopted.
    pub fn running(&self) -> Vec<RunningTask> {
        let mut running: Vec<RunningTask> = self
            .shared
            .tasks()
            .iter()
            .map(|(task_id, task)| RunningTask {
                task_id: task_id.clone(),
                app_id: task.app_id.clone(),
                app_version: task.app_version.clone(),
                kind: DriverKind::Exec,
            })
            .collect();
        running.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        running
    }

    /// Starts `sh -c CMD` for an exec task; returns once the task's shell runs.
    pub async fn start(&self, spec: &TaskSpec) -> Result<(), DriverError> {
        let TaskKind::Exec { cmd } = &spec.kind else {
            return Err(DriverError::InvalidSpec {
                task_id: spec.task_id.clone(),
                reason: "the exec driver runs only exec tasks".into(),
            });
        };
        if self.shared.tasks().contains_key(&spec.task_id) {
            return Err(DriverError::AlreadyRunning {
                task_id: spec.task_id.clone(),
            });
        }

        let sandbox = self.sandbox_dir(&spec.task_id);
        tokio::fs::create_dir_all(&sandbox)
            .await
            .map_err(|e| DriverError::io(format!("creating sandbox {}", sandbox.display()), e))?;
        let stdout = open_log(&sandbox.join("stdout")).await?;
        let stderr = open_log(&sandbox.join("stderr")).await?;
        let exit_file = sandbox.join(EXIT_STATUS_FILE);
        match tokio::fs::remove_file(&exit_file).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DriverError::io(
                    format!("removing {}", exit_file.display()),
                    e,
                ))
            }
        }

        let mut env = task_environment(spec);
        env.entry("MESOS_SANDBOX".into())
            .or_insert_with(|| sandbox.display().to_string());

        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg(WRAPPER_NAME)
            .arg(cmd)
            .arg(&exit_file)
            .current_dir(&sandbox)
            .envs(&env)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);

        // Spawning is synchronous, so the check and the insert happen under one lock and
        // two concurrent starts of the same task cannot both run it.
        let (exited_tx, exited_rx) = watch::channel(false);
        let env = Arc::new(env);
        let (child, process_group) = {
            let mut tasks = self.shared.tasks();
            if tasks.contains_key(&spec.task_id) {
                return Err(DriverError::AlreadyRunning {
                    task_id: spec.task_id.clone(),
                });
            }
            let child = command
                .spawn()
                .map_err(|e| DriverError::io(format!("spawning task {}", spec.task_id), e))?;
            let Some(process_group) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
                return Err(DriverError::StartFailed {
                    task_id: spec.task_id.clone(),
                    reason: "the process exited before its id could be read".into(),
                });
            };
            tasks.insert(
                spec.task_id.clone(),
                ExecTask {
                    app_id: spec.app_id.clone(),
                    app_version: spec.app_version.clone(),
                    process_group,
                    env: Arc::clone(&env),
                    stopping: false,
                    exited: exited_rx,
                },
            );
            (child, process_group)
        };
        // Written before the exit watcher exists, so the watcher's removal always comes
        // after it. The wrapper has not been waited for yet, so its /proc entry is there.
        let recorded = ProcessIdentity::of(process_group)
            .ok_or_else(|| std::io::Error::other("the process has no /proc entry"))
            .and_then(|identity| {
                TaskRecord::new(
                    &spec.task_id,
                    &spec.app_id,
                    &spec.app_version,
                    &identity,
                    (*env).clone(),
                )
                .write(&sandbox)
            });
        if let Err(error) = recorded {
            tracing::warn!(task_id = %spec.task_id, %error, "cannot record the task; it will not be re-adopted after an agent restart");
        }
        let mut child = child;
        // Only now, with the wrapper recorded, may it start the task (see `WRAPPER`).
        if let Some(mut go) = child.stdin.take() {
            if let Err(error) = go.write_all(GO).await {
                // The wrapper is gone already; its exit is reported by the watcher below.
                tracing::debug!(task_id = %spec.task_id, %error, "cannot tell the wrapper to start the task");
            }
        }
        tracing::info!(task_id = %spec.task_id, pid = process_group, "exec task started");
        // Sent before the watcher exists, so Running always precedes Exited.
        let _ = self.shared.events.send(TaskEvent::Running {
            task_id: spec.task_id.clone(),
            details: format!("pid {process_group}, sandbox {}", sandbox.display()),
        });

        let shared = Arc::clone(&self.shared);
        let task_id = spec.task_id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            shared.finish(task_id, process_group, &sandbox, exited_tx, |stopping| {
                describe_exit(&status, stopping)
            });
        });
        // See `WRAPPER`: until the task's shell runs, a stop's SIGTERM could be lost.
        let deadline = tokio::time::Instant::now() + SHELL_START_WAIT;
        while !process::task_shell_started(process_group) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Stops a task: SIGTERM to its process group, SIGKILL to the group if the wrapper
    /// shell has not exited after `grace`. Returns once it has exited. Unknown tasks are
    /// already stopped.
    pub async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), DriverError> {
        let (process_group, mut exited) = {
            let mut tasks = self.shared.tasks();
            let Some(task) = tasks.get_mut(task_id) else {
                tracing::debug!(task_id, "stop: exec task not running");
                return Ok(());
            };
            task.stopping = true;
            (task.process_group, task.exited.clone())
        };
        tracing::info!(task_id, pid = process_group, ?grace, "stopping exec task");
        signal_group(process_group, Signal::SIGTERM);
        let stopped_in_grace = tokio::time::timeout(grace, exited.wait_for(|done| *done))
            .await
            .is_ok();
        if stopped_in_grace {
            // The watcher already killed anything left in the group.
            return Ok(());
        }
        tracing::info!(task_id, "exec task ignored SIGTERM, sending SIGKILL");
        signal_group(process_group, Signal::SIGKILL);
        let killed = tokio::time::timeout(KILL_WAIT, exited.wait_for(|done| *done))
            .await
            .is_ok();
        if killed {
            Ok(())
        } else {
            Err(DriverError::io(
                format!("stopping task {task_id}"),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "process group still running after SIGKILL",
                ),
            ))
        }
    }

    /// Runs `sh -c COMMAND` in a task's context (its sandbox as working directory, its
    /// environment) and returns how it ended. A command still running after `timeout` is
    /// killed with everything it started.
    pub async fn run_command(
        &self,
        task_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, DriverError> {
        let env = self
            .shared
            .tasks()
            .get(task_id)
            .map(|task| Arc::clone(&task.env))
            .ok_or_else(|| DriverError::NotRunning {
                task_id: task_id.to_string(),
            })?;
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .current_dir(self.sandbox_dir(task_id))
            .envs(env.iter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DriverError::io(format!("running a command in task {task_id}"), e))?;
        let process_group = child.id().and_then(|pid| i32::try_from(pid).ok());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finished = tokio::time::timeout(timeout, async {
            tokio::join!(read_limited(stdout), read_limited(stderr), child.wait())
        })
        .await;
        match finished {
            Ok((stdout, stderr, Ok(status))) => Ok(CommandOutcome {
                exit: match (status.code(), status.signal()) {
                    (Some(code), _) => CommandExit::Code(i64::from(code)),
                    (None, Some(signal)) => CommandExit::Signal(signal),
                    (None, None) => CommandExit::Code(-1),
                },
                output: joined_output(&stdout, &stderr),
            }),
            Ok((_, _, Err(e))) => Err(DriverError::io(
                format!("waiting for a command in task {task_id}"),
                e,
            )),
            Err(_) => {
                if let Some(group) = process_group {
                    signal_group(group, Signal::SIGKILL);
                }
                let _ = tokio::time::timeout(KILL_WAIT, child.wait()).await;
                Ok(CommandOutcome {
                    exit: CommandExit::TimedOut,
                    output: format!("timed out after {timeout:?}"),
                })
            }
        }
    }
}

async fn open_log(path: &Path) -> Result<std::fs::File, DriverError> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| DriverError::io(format!("opening {}", path.display()), e))?;
    Ok(file.into_std().await)
}

/// Reads a pipe to its end, keeping the first [`COMMAND_OUTPUT_LIMIT`] bytes (reading on,
/// so the writer never blocks on a full pipe).
async fn read_limited(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buffer = [0u8; 4096];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let room = COMMAND_OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..read.min(room)]);
    }
    kept
}

/// A command's output for a check: stdout, then stderr, within the limit.
pub(crate) fn joined_output(stdout: &[u8], stderr: &[u8]) -> String {
    let mut bytes = stdout.to_vec();
    bytes.extend_from_slice(stderr);
    bytes.truncate(COMMAND_OUTPUT_LIMIT);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sends `signal` to every process of a group; a group that is gone already is fine.
fn signal_group(process_group: i32, signal: Signal) {
    match killpg(Pid::from_raw(process_group), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(process_group, %signal, %error, "could not signal process group");
        }
    }
}

/// Describes the exit of a wrapper this agent waited for.
fn describe_exit(status: &std::io::Result<ExitStatus>, stopping: bool) -> (bool, String) {
    let prefix = if stopping { "stopped: " } else { "" };
    match status {
        Ok(status) => {
            let what = match (status.code(), status.signal()) {
                (Some(code), _) => describe_code(code),
                (None, Some(signal)) => describe_signal(signal),
                (None, None) => format!("ended with status {status}"),
            };
            (status.success(), format!("{prefix}{what}"))
        }
        Err(error) => (
            false,
            format!("{prefix}could not wait for the process: {error}"),
        ),
    }
}

/// Describes the exit of an adopted task from the status its wrapper recorded, if any.
fn describe_recorded_exit(recorded: Option<i32>, stopping: bool) -> (bool, String) {
    let prefix = if stopping { "stopped: " } else { "" };
    match recorded {
        Some(code) => (code == 0, format!("{prefix}{}", describe_code(code))),
        None => (
            false,
            format!(
                "{prefix}ended without recording an exit status (its wrapper shell was killed); \
                 it was started by an earlier agent, so the status is unknown"
            ),
        ),
    }
}

/// An exit code as a shell reports it: above 128 it usually means death by signal `code - 128`.
fn describe_code(code: i32) -> String {
    match code
        .checked_sub(128)
        .filter(|signal| *signal > 0)
        .and_then(|signal| Signal::try_from(signal).ok())
    {
        Some(signal) => format!("exited with code {code} (128 + {signal})"),
        None => format!("exited with code {code}"),
    }
}

fn describe_signal(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(name) => format!("killed by signal {signal} ({name})"),
        Err(_) => format!("killed by signal {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn exits_are_described_by_code_or_signal() {
        let ok = ExitStatus::from_raw(0);
        assert_eq!(
            describe_exit(&Ok(ok), false),
            (true, "exited with code 0".into())
        );
        let failed = ExitStatus::from_raw(3 << 8);
        assert_eq!(
            describe_exit(&Ok(failed), false),
            (false, "exited with code 3".into())
        );
        let terminated = ExitStatus::from_raw(143 << 8);
        assert_eq!(
            describe_exit(&Ok(terminated), true),
            (
                false,
                "stopped: exited with code 143 (128 + SIGTERM)".into()
            )
        );
        let killed = ExitStatus::from_raw(9);
        assert_eq!(
            describe_exit(&Ok(killed), true),
            (false, "stopped: killed by signal 9 (SIGKILL)".into())
        );
    }

    #[test]
    fn recorded_exits_are_described_and_a_missing_status_is_a_failure() {
        assert_eq!(
            describe_recorded_exit(Some(0), false),
            (true, "exited with code 0".into())
        );
        assert_eq!(
            describe_recorded_exit(Some(137), false),
            (false, "exited with code 137 (128 + SIGKILL)".into())
        );
        let (success, message) = describe_recorded_exit(None, true);
        assert!(!success);
        assert!(message.starts_with("stopped: "), "{message}");
        assert!(message.contains("status is unknown"), "{message}");
        assert_eq!(describe_code(255), "exited with code 255");
    }

    fn write_record(driver: &ExecDriver, task_id: &str, identity: &ProcessIdentity) -> PathBuf {
        let sandbox = driver.sandbox_dir(task_id);
        std::fs::create_dir_all(&sandbox).expect("sandbox");
        TaskRecord::new(task_id, "/test/exec", "v1", identity, BTreeMap::new())
            .write(&sandbox)
            .expect("record");
        sandbox
    }

    #[tokio::test]
    async fn a_pid_now_held_by_another_process_is_neither_adopted_nor_signalled() {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = ExecDriver::new(root.path());
        // A process in a group of its own, as a task's wrapper is, but started after the
        // recorded task: its start time differs from the record's.
        let mut other = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(other.id()).expect("pid fits");
        let identity = ProcessIdentity::of(pid).expect("identity");
        let recorded = ProcessIdentity {
            start_time: identity.start_time.saturating_sub(1),
            ..identity.clone()
        };
        let sandbox = write_record(&driver, "test_exec.reused-1", &recorded);

        assert!(driver.adopt().await.is_empty());
        assert!(driver.running().is_empty());
        assert!(
            TaskRecord::read(&sandbox).expect("read").is_none(),
            "the stale record is removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(other.try_wait().expect("try_wait").is_none(), "left alone");

        // The same record with the process's real start time is adopted, so the refusal
        // above was the start time's doing.
        write_record(&driver, "test_exec.reused-1", &identity);
        assert_eq!(driver.adopt().await, vec!["test_exec.reused-1".to_string()]);
        driver
            .stop("test_exec.reused-1", Duration::from_secs(5))
            .await
            .expect("stop");
        let status = other.wait().expect("wait");
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn records_of_ended_tasks_are_removed() {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = ExecDriver::new(root.path());
        let mut ended = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(ended.id()).expect("pid fits");
        let identity = ProcessIdentity::of(pid).expect("identity");
        ended.wait().expect("wait");
        let sandbox = write_record(&driver, "test_exec.ended-1", &identity);
        assert!(driver.adopt().await.is_empty());
        assert!(TaskRecord::read(&sandbox).expect("read").is_none());
    }

    /// Runs the wrapper on `cmd` in `dir` as `start` does, its stdin fed `input` (then
    /// closed); returns its exit code.
    fn run_wrapper(dir: &Path, cmd: &str, input: &[u8]) -> Option<i32> {
        use std::io::Write;
        let mut wrapper = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg(WRAPPER_NAME)
            .arg(cmd)
            .arg(dir.join(EXIT_STATUS_FILE))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn");
        let mut stdin = wrapper.stdin.take().expect("piped stdin");
        stdin.write_all(input).expect("write");
        drop(stdin);
        wrapper.wait().expect("wait").code()
    }

    #[test]
    fn a_wrapper_whose_agent_died_before_recording_it_never_starts_the_task() {
        // The agent is killed between spawning the wrapper and writing `task.json`: its end
        // of the pipe closes without `go`. Were the task started, it would run unrecorded,
        // and the restarted agent would start the same task a second time beside it.
        let dir = tempfile::tempdir().expect("temp dir");
        let code = run_wrapper(dir.path(), "touch started; sleep 300", b"");
        assert_eq!(code, Some(125));
        assert!(
            !dir.path().join("started").exists(),
            "the task must not run"
        );
        assert!(
            !dir.path().join(EXIT_STATUS_FILE).exists(),
            "no exit status for a task that never ran"
        );

        // Told to go, the wrapper runs the task, with stdin no longer the agent's pipe, and
        // records its status.
        let code = run_wrapper(dir.path(), "touch started; read -r line; exit 3", GO);
        assert_eq!(code, Some(3));
        assert!(dir.path().join("started").exists());
        assert_eq!(
            read_exit_status(dir.path()),
            Some(3),
            "the task's status is recorded"
        );
    }

    #[test]
    fn command_output_is_joined_and_limited() {
        assert_eq!(joined_output(b"out\n", b"err\n"), "out\nerr\n");
        let long = vec![b'x'; COMMAND_OUTPUT_LIMIT];
        assert_eq!(
            joined_output(&long, b"err").len(),
            COMMAND_OUTPUT_LIMIT,
            "stderr beyond the limit is dropped"
        );
    }
}
