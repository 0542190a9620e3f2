//! The node's drivers, the translation from a placed task to a driver's task spec, the
//! [`Report`]s their starts, stops and exits send to the task runner, and Marathon's COMMAND
//! health checks run in tasks through them.

use std::path::Path;
use std::time::Duration;

use atoll_agent::{ContainerOutcome, ContainerRun, TaskCommandRun, TaskCommands};
use atoll_driver::{
    CommandExit, CommandOutcome, Driver, DriverError, ExecDriver, PortBinding, TaskEvent, TaskKind,
    TaskSpec,
};
use atoll_state::{Allocation, AppSpec, CheckStatus, DockerNetwork, Runtime, TaskCommand};
use tokio::sync::mpsc;

/// What a driver task reported, for the node's task runner: the outcome of a start or stop
/// made through [`Drivers`], or a task's exit.
#[derive(Debug)]
pub(crate) enum Report {
    Started {
        id: String,
    },
    StartFailed {
        id: String,
        message: String,
    },
    Stopped {
        id: String,
    },
    Exited {
        id: String,
        success: bool,
        message: String,
    },
}

/// The file in the data dir holding the node's id, which labels its containers.
const NODE_ID_FILE: &str = "node-id";

/// This node's id: random on its first start, then kept in the data dir, so that a
/// restarted agent finds its containers again while a namesake node of another cluster
/// sharing the engine (its own data dir) never takes them for its own.
fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let id = format!("{:032x}", rand::random::<u128>());
    // Written whole, then renamed: a crash leaves no half-written id behind.
    let temporary = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
    std::fs::write(&temporary, format!("{id}\n"))?;
    std::fs::rename(&temporary, &path)?;
    Ok(id)
}

/// The drivers this node offers: `exec` always, `docker` when an engine answers.
#[derive(Clone)]
pub struct Drivers {
    exec: Driver,
    docker: Option<Driver>,
    engine: Option<atoll_driver::DockerDriver>,
}

impl Drivers {
    /// Sets up the exec driver under `data_dir`, adopting the exec tasks an earlier agent
    /// left running there, and connects to the Docker engine if present (whose driver finds
    /// its running containers by their labels: the node's name and its id kept in
    /// `data_dir`, so nodes sharing an engine keep to their own containers).
    pub async fn detect(data_dir: &Path, node: &str) -> Drivers {
        let exec_driver = ExecDriver::new(data_dir.join("tasks"));
        let adopted = exec_driver.adopt().await;
        if !adopted.is_empty() {
            tracing::info!(count = adopted.len(), tasks = ?adopted, "re-adopted exec tasks");
        }
        let exec = Driver::Exec(exec_driver);
        let node_id = match node_id(data_dir) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, file = NODE_ID_FILE, "no node id for Docker labels; containers are told apart by node name only");
                None
            }
        };
        let docker = match atoll_driver::DockerDriver::connect(atoll_driver::DockerConfig {
            node: Some(node.to_string()),
            node_id,
            ..Default::default()
        })
        .await
        {
            Ok(driver) => Some(driver),
            Err(e) => {
                tracing::info!(error = %e, "docker driver unavailable");
                None
            }
        };
        Drivers {
            exec,
            docker: docker.clone().map(Driver::Docker),
            engine: docker,
        }
    }

    /// The Docker engine, when there is one (for external containers).
    pub fn docker_engine(&self) -> Option<atoll_driver::DockerDriver> {
        self.engine.clone()
    }

    /// Names of the drivers offered, for the scheduler.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec!["exec".to_string()];
        if self.docker.is_some() {
            names.push("docker".to_string());
        }
        names
    }

    fn all(&self) -> impl Iterator<Item = &Driver> {
        std::iter::once(&self.exec).chain(self.docker.iter())
    }

    fn for_runtime(&self, runtime: &Runtime) -> Option<&Driver> {
        match runtime {
            Runtime::Exec { .. } => Some(&self.exec),
            Runtime::Docker { .. } => self.docker.as_ref(),
        }
    }

    /// Ids of the tasks the drivers are running now (re-adoption after a restart).
    pub async fn running(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for driver in self.all() {
            match driver.running().await {
                Ok(tasks) => ids.extend(tasks.into_iter().map(|t| t.task_id)),
                Err(e) => tracing::warn!(error = %e, "cannot list running tasks"),
            }
        }
        ids
    }

    /// Forwards every driver's exit events as reports.
    pub(crate) fn forward_exits(&self, reports: mpsc::UnboundedSender<Report>) {
        for driver in self.all() {
            let mut events = driver.events();
            let reports = reports.clone();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(TaskEvent::Exited {
                            task_id,
                            success,
                            message,
                        }) => {
                            if reports
                                .send(Report::Exited {
                                    id: task_id,
                                    success,
                                    message,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(TaskEvent::Running { .. }) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                missed,
                                "driver events lagged; the runner re-checks running tasks"
                            );
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
    }

    /// Starts a task in the background; reports `Started` or `StartFailed`.
    pub(crate) fn start(
        &self,
        app: &AppSpec,
        task: &Allocation,
        host: &str,
        reports: mpsc::UnboundedSender<Report>,
    ) {
        let id = task.id.clone();
        let Some(driver) = self.for_runtime(&app.runtime).cloned() else {
            let _ = reports.send(Report::StartFailed {
                id,
                message: "no docker engine on this node".into(),
            });
            return;
        };
        let spec = task_spec(app, task, host);
        tokio::spawn(async move {
            let report = match driver.start(&spec).await {
                Ok(()) => Report::Started { id },
                Err(e) => Report::StartFailed {
                    id,
                    message: e.to_string(),
                },
            };
            let _ = reports.send(report);
        });
    }

    /// Stops a task in the background (with the driver of `runtime`, or whichever runs it);
    /// reports `Stopped`.
    pub(crate) fn stop(
        &self,
        runtime: Option<&Runtime>,
        id: &str,
        grace: Duration,
        reports: mpsc::UnboundedSender<Report>,
    ) {
        let drivers: Vec<Driver> = match runtime.and_then(|r| self.for_runtime(r)) {
            Some(driver) => vec![driver.clone()],
            None => self.all().cloned().collect(),
        };
        let id = id.to_string();
        tokio::spawn(async move {
            for driver in drivers {
                if let Err(e) = driver.stop(&id, grace).await {
                    tracing::debug!(task = %id, error = %e, "stop");
                }
            }
            let _ = reports.send(Report::Stopped { id });
        });
    }

    /// Runs a COMMAND health check in a task, through whichever driver runs it.
    pub async fn run_command_check(
        &self,
        check: &TaskCommand,
        timeout: Duration,
    ) -> (CheckStatus, String) {
        for driver in self.all() {
            match driver
                .run_command(&check.task_id, &check.command, timeout)
                .await
            {
                Ok(outcome) => return command_check_status(&outcome),
                Err(DriverError::NotRunning { .. }) => continue,
                Err(e) => return (CheckStatus::Critical, e.to_string()),
            }
        }
        (
            CheckStatus::Critical,
            format!("task {} is not running on this node", check.task_id),
        )
    }
}

impl TaskCommands for Drivers {
    fn run(&self, check: &TaskCommand, timeout: Duration) -> TaskCommandRun {
        let drivers = self.clone();
        let check = check.clone();
        Box::pin(async move { drivers.run_command_check(&check, timeout).await })
    }

    fn run_in_container(
        &self,
        container: &str,
        command: Vec<String>,
        timeout: Duration,
    ) -> ContainerRun {
        let engine = self.engine.clone();
        let container = container.to_string();
        Box::pin(async move {
            let Some(engine) = engine else {
                return ContainerOutcome::Failed(
                    "this node has no Docker engine to run the check in".to_string(),
                );
            };
            let what = format!("container {container}");
            match engine.exec(&container, command, timeout, &what).await {
                Ok(CommandOutcome {
                    exit: CommandExit::Code(code),
                    output,
                }) => ContainerOutcome::Exited { code, output },
                Ok(CommandOutcome {
                    exit: CommandExit::TimedOut,
                    ..
                }) => ContainerOutcome::TimedOut,
                Ok(CommandOutcome { exit, output }) => {
                    ContainerOutcome::Failed(format!("{exit}: {output}"))
                }
                Err(e) => ContainerOutcome::Failed(e.to_string()),
            }
        })
    }
}

/// Marathon's reading of a COMMAND check: exit status 0 is healthy, anything else
/// (another status, a signal, a timeout) is not. The output says how it ended, then what
/// the command printed.
pub fn command_check_status(outcome: &CommandOutcome) -> (CheckStatus, String) {
    let status = if outcome.success() {
        CheckStatus::Passing
    } else {
        CheckStatus::Critical
    };
    let printed = outcome.output.trim_end();
    let output = match (&outcome.exit, printed.is_empty()) {
        (_, true) => outcome.exit.to_string(),
        // The driver says how long it waited.
        (CommandExit::TimedOut, false) => printed.to_string(),
        (exit, false) => format!("{exit}: {printed}"),
    };
    (status, output)
}

/// The driver's view of a placed task.
pub fn task_spec(app: &AppSpec, task: &Allocation, host: &str) -> TaskSpec {
    let kind = match &app.runtime {
        Runtime::Exec { cmd } => TaskKind::Exec { cmd: cmd.clone() },
        Runtime::Docker {
            image,
            network,
            cmd,
            args,
            force_pull,
        } => TaskKind::Docker {
            image: image.clone(),
            network: match network {
                DockerNetwork::Bridge => atoll_driver::DockerNetwork::Bridge,
                DockerNetwork::Host => atoll_driver::DockerNetwork::Host,
            },
            cmd: cmd.clone(),
            args: args.clone(),
            force_pull: *force_pull,
        },
    };
    TaskSpec {
        task_id: task.id.clone(),
        app_id: app.id.clone(),
        app_version: app.version.clone(),
        kind,
        env: app.env.clone(),
        labels: app.labels.clone(),
        ports: app
            .ports
            .iter()
            .zip(&task.ports)
            .map(|(spec, host_port)| PortBinding {
                host_port: *host_port,
                container_port: spec.container_port,
                protocol: spec.protocol.clone(),
            })
            .collect(),
        cpus: app.cpus,
        mem_mb: app.mem,
        host: host.to_string(),
        stop_grace: stop_grace(Some(app)),
    }
}

/// How long a stopping task gets between SIGTERM and SIGKILL unless its app says otherwise.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// The longest grace period honoured: Marathon sets no bound, but a stop must end.
const MAX_STOP_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Time between SIGTERM and SIGKILL: the app's `taskKillGracePeriodSeconds` (at most a
/// day), else [`STOP_GRACE`]. The same for a stop asked by the platform and for the
/// container's own stop timeout.
pub(crate) fn stop_grace(app: Option<&AppSpec>) -> Duration {
    app.and_then(AppSpec::kill_grace_seconds)
        .map(|s| Duration::try_from_secs_f64(s).map_or(MAX_STOP_GRACE, |d| d.min(MAX_STOP_GRACE)))
        .unwrap_or(STOP_GRACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_kept_in_the_data_dir_and_differs_between_data_dirs() {
        let root = std::env::temp_dir().join(format!("atoll-node-id-{}", std::process::id()));
        let (first, second) = (root.join("first"), root.join("second"));
        let id = node_id(&first).expect("create an id");
        assert_eq!(id.len(), 32);
        assert_eq!(node_id(&first).expect("read it back"), id);
        assert_ne!(node_id(&second).expect("another data dir"), id);
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    fn outcome(exit: CommandExit, output: &str) -> CommandOutcome {
        CommandOutcome {
            exit,
            output: output.into(),
        }
    }

    #[test]
    fn only_exit_status_zero_passes_a_command_check() {
        assert_eq!(
            command_check_status(&outcome(CommandExit::Code(0), "")),
            (CheckStatus::Passing, "exit status 0".into())
        );
        assert_eq!(
            command_check_status(&outcome(CommandExit::Code(0), "all good\n")),
            (CheckStatus::Passing, "exit status 0: all good".into())
        );
        // Unlike Consul's script checks, exit status 1 is not a warning: Marathon knows
        // only healthy and unhealthy.
        assert_eq!(
            command_check_status(&outcome(CommandExit::Code(1), "")).0,
            CheckStatus::Critical
        );
        assert_eq!(
            command_check_status(&outcome(CommandExit::Code(126), "exec: \"sh\": not found")),
            (
                CheckStatus::Critical,
                "exit status 126: exec: \"sh\": not found".into()
            )
        );
        assert_eq!(
            command_check_status(&outcome(CommandExit::Signal(9), "")),
            (CheckStatus::Critical, "killed by signal 9".into())
        );
        assert_eq!(
            command_check_status(&outcome(CommandExit::TimedOut, "timed out after 1s")),
            (CheckStatus::Critical, "timed out after 1s".into())
        );
    }
}
