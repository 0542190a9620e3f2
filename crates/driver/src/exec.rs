//! The exec driver: a task is `/bin/sh -c CMD`, a child process in its own process group.
//!
//! Each task gets a sandbox directory `<sandbox_root>/<task id>/` (its working directory,
//! also given as `MESOS_SANDBOX`) holding its `stdout` and `stderr` files, as in Mesos. The
//! task inherits the agent's environment, overlaid with [`crate::task_environment`].
//!
//! A task's process group is its unit: stopping signals the whole group, and when the
//! shell exits on its own anything it left behind in the group is killed too.
//!
//! Nothing is persisted: after an agent restart this driver knows no tasks, and processes
//! from before the restart are not re-adopted.

use crate::spec::{sanitize_task_id, task_environment, DriverKind, RunningTask, TaskEvent};
use crate::{DriverError, TaskKind, TaskSpec, EVENT_CHANNEL_CAPACITY};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// File in a task's sandbox holding its process group id.
const PID_FILE: &str = "pid";
/// How long to wait for a process group to go once SIGKILL has been sent.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Runs tasks as child processes of the agent. Cheap to clone; clones share their tasks.
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
    /// The shell's pid, which is also its process group id.
    process_group: i32,
    /// Set by `stop`, so the exit is reported as a requested stop.
    stopping: bool,
    /// Becomes true once the shell has exited and been reaped.
    exited: watch::Receiver<bool>,
}

impl Shared {
    fn tasks(&self) -> MutexGuard<'_, HashMap<String, ExecTask>> {
        // A panic while holding the lock cannot leave the map half-updated: every critical
        // section is a single insert, remove or flag write.
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ExecDriver {
    /// A driver whose task sandboxes live under `sandbox_root` (created when needed).
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

    /// Kills the process groups of exec tasks started by an earlier agent on this sandbox
    /// root that are still running. Exec tasks are children of their agent and cannot be
    /// re-adopted; killing them keeps them from holding ports and running twice once the
    /// tasks are replaced. Returns how many groups were killed.
    pub fn reap_orphans(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.shared.sandbox_root) else {
            return 0;
        };
        let mut reaped = 0;
        for entry in entries.flatten() {
            let pid_file = entry.path().join(PID_FILE);
            let Some(group) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let _ = std::fs::remove_file(&pid_file);
            // Only a process that is still in that sandbox is ours; a reused pid is not.
            let cwd = std::fs::read_link(format!("/proc/{group}/cwd")).ok();
            if group > 1 && cwd.as_deref() == Some(entry.path().as_path()) {
                signal_group(group, Signal::SIGKILL);
                tracing::info!(pid = group, sandbox = %entry.path().display(), "killed an exec task left by an earlier agent");
                reaped += 1;
            }
        }
        reaped
    }

    /// The sandbox directory of a task: its working directory, with `stdout` and `stderr`.
    pub fn sandbox_dir(&self, task_id: &str) -> PathBuf {
        self.shared.sandbox_root.join(sanitize_task_id(task_id))
    }

    /// Subscribes to task events from now on.
    pub fn events(&self) -> broadcast::Receiver<TaskEvent> {
        self.shared.events.subscribe()
    }

    /// The tasks running now.
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

    /// Starts `sh -c CMD` for an exec task; returns once the process exists.
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

        let mut env = task_environment(spec);
        env.entry("MESOS_SANDBOX".into())
            .or_insert_with(|| sandbox.display().to_string());

        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(cmd)
            .current_dir(&sandbox)
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);

        // Spawning is synchronous, so the check and the insert happen under one lock and
        // two concurrent starts of the same task cannot both run it.
        let (exited_tx, exited_rx) = watch::channel(false);
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
                    stopping: false,
                    exited: exited_rx,
                },
            );
            (child, process_group)
        };
        // Recorded so that a later agent can find the group if this one dies without
        // stopping it (see `reap_orphans`).
        if let Err(e) = std::fs::write(sandbox.join(PID_FILE), process_group.to_string()) {
            tracing::warn!(task_id = %spec.task_id, error = %e, "cannot record the task's process group");
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
            let mut child = child;
            let status = child.wait().await;
            // Whatever the shell left behind in its group goes with it. The shell has been
            // reaped, but any survivor keeps the group id from being reused.
            signal_group(process_group, Signal::SIGKILL);
            let stopping = {
                let mut tasks = shared.tasks();
                match tasks.get(&task_id) {
                    Some(task) if task.process_group == process_group => {
                        tasks.remove(&task_id).is_some_and(|task| task.stopping)
                    }
                    _ => false,
                }
            };
            let _ = exited_tx.send(true);
            let (success, message) = describe_exit(&status, stopping);
            tracing::info!(%task_id, %message, "exec task exited");
            let _ = shared.events.send(TaskEvent::Exited {
                task_id,
                success,
                message,
            });
        });
        Ok(())
    }

    /// Stops a task: SIGTERM to its process group, SIGKILL to the group if the shell has
    /// not exited after `grace`. Returns once the shell has exited. Unknown tasks are
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

/// Sends `signal` to every process of a group; a group that is gone already is fine.
fn signal_group(process_group: i32, signal: Signal) {
    match killpg(Pid::from_raw(process_group), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(process_group, %signal, %error, "could not signal process group");
        }
    }
}

fn describe_exit(status: &std::io::Result<ExitStatus>, stopping: bool) -> (bool, String) {
    let prefix = if stopping { "stopped: " } else { "" };
    match status {
        Ok(status) => {
            let what = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => match Signal::try_from(signal) {
                    Ok(name) => format!("killed by signal {signal} ({name})"),
                    Err(_) => format!("killed by signal {signal}"),
                },
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let terminated = ExitStatus::from_raw(15);
        assert_eq!(
            describe_exit(&Ok(terminated), true),
            (false, "stopped: killed by signal 15 (SIGTERM)".into())
        );
    }
}
