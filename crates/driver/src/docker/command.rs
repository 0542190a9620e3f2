//! Commands run in a task's container (`docker exec`), for COMMAND health checks.

use super::DockerDriver;
use crate::exec::joined_output;
use crate::spec::{CommandExit, CommandOutcome, COMMAND_OUTPUT_LIMIT};
use crate::DriverError;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use futures_util::StreamExt;
use std::time::Duration;

/// How long the engine gets to mark a command finished once its output has ended.
const EXEC_SETTLE: Duration = Duration::from_secs(2);

impl DockerDriver {
    /// Runs `sh -c COMMAND` inside a task's container (`docker exec`, with the container's
    /// environment and working directory) and returns how it ended. An image without `sh`
    /// makes the command fail with the engine's explanation as its output. A command still
    /// running after `timeout` is killed through its host pid, when the engine runs on this
    /// host and lets the agent signal it.
    pub async fn run_command(
        &self,
        task_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, DriverError> {
        let container = self
            .list_managed(false, Some(task_id))
            .await?
            .into_iter()
            .find_map(|c| c.id)
            .ok_or_else(|| DriverError::NotRunning {
                task_id: task_id.to_string(),
            })?;
        let command = vec!["sh".into(), "-c".into(), command.into()];
        self.exec(&container, command, timeout, &format!("task {task_id}"))
            .await
    }

    /// Runs `command` (program and arguments) inside the container `container` (`docker
    /// exec`) and returns how it ended; `what` names the container in errors. Killed after
    /// `timeout` as [`DockerDriver::run_command`] says.
    pub async fn exec(
        &self,
        container: &str,
        command: Vec<String>,
        timeout: Duration,
        what: &str,
    ) -> Result<CommandOutcome, DriverError> {
        let docker = &self.inner.docker;
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(command),
            ..Default::default()
        };
        let exec = docker
            .create_exec(container, config)
            .await
            .map_err(|e| DriverError::docker(format!("creating a command in {what}"), e))?;
        let run = async {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            if let StartExecResults::Attached { mut output, .. } =
                docker.start_exec(&exec.id, None).await?
            {
                while let Some(chunk) = output.next().await {
                    let (kept, message) = match chunk? {
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            (&mut stdout, message)
                        }
                        LogOutput::StdErr { message } => (&mut stderr, message),
                        LogOutput::StdIn { .. } => continue,
                    };
                    let room = COMMAND_OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&message[..message.len().min(room)]);
                }
            }
            Ok::<_, EngineError>((stdout, stderr))
        };
        let (stdout, stderr) = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                return Err(DriverError::docker(
                    format!("running a command in {what}"),
                    e,
                ))
            }
            Err(_) => {
                self.kill_exec(container, &exec.id).await;
                return Ok(CommandOutcome {
                    exit: CommandExit::TimedOut,
                    output: format!("timed out after {timeout:?}"),
                });
            }
        };
        // The output ends a moment before the engine records the exit code.
        let deadline = tokio::time::Instant::now() + EXEC_SETTLE;
        loop {
            let inspected = docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| DriverError::docker(format!("inspecting a command in {what}"), e))?;
            match (inspected.running, inspected.exit_code) {
                (Some(false), Some(code)) => {
                    return Ok(CommandOutcome {
                        exit: CommandExit::Code(code),
                        output: joined_output(&stdout, &stderr),
                    })
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    self.kill_exec(container, &exec.id).await;
                    return Ok(CommandOutcome {
                        exit: CommandExit::TimedOut,
                        output: "the engine did not report the command's exit".into(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Kills a command started with `docker exec` (the engine has no call for it): SIGKILL
    /// to the host pid the engine reports, while it reports the command running. The pid is
    /// the engine host's: it is signalled only if that pid here is in the container's
    /// cgroup, so an agent in another pid namespace never kills a stranger.
    async fn kill_exec(&self, container_id: &str, exec_id: &str) {
        let Ok(inspected) = self.inner.docker.inspect_exec(exec_id).await else {
            return;
        };
        let pid = inspected
            .pid
            .and_then(|pid| i32::try_from(pid).ok())
            .filter(|pid| *pid > 1)
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|cgroup| cgroup.contains(container_id))
            });
        if let (Some(true), Some(pid)) = (inspected.running, pid) {
            if let Err(error) = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                tracing::debug!(pid, %error, "cannot kill a timed-out command in a container");
            }
        }
    }
}
