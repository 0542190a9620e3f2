//! Task drivers: how a compute node runs an app instance.
//!
//! Two drivers share one vocabulary ([`TaskSpec`] in, [`TaskEvent`] out):
//!
//! - [`ExecDriver`] runs `sh -c CMD` in a process group of its own, with its output in a
//!   per-task sandbox directory (Mesos' command executor), and records each task there so
//!   a restarted agent can adopt the tasks still running.
//! - [`DockerDriver`] runs a container through the Docker Engine API (Mesos' docker
//!   containerizer), labelled so a restarted agent can find its containers again.
//!
//! [`Driver`] dispatches to either. Both add the environment Marathon apps expect
//! (`PORT0`, `PORTS`, `HOST`, `MARATHON_APP_ID`, ...; see [`task_environment`]), and both
//! run commands in a task's context for Marathon's COMMAND health checks
//! ([`Driver::run_command`]).
//!
//! The [`registrator`] module is separate on purpose: it does not run tasks, it reports
//! containers started *outside* atoll that ask to be registered with `SERVICE_*` labels or
//! environment variables, the way Registrator did. It sits on top of the docker driver's
//! public API only: the driver reports every container it did not start as a raw
//! [`ContainerEvent`] (started or stopped, by id), lists them
//! ([`DockerDriver::unmanaged_containers`]) and inspects them
//! ([`DockerDriver::inspect_container`]); the registrator decides which of them are services.
//!
//! Events are delivered on `tokio::sync::broadcast` channels. Subscribe first, then read the
//! current state (`running()`, `unmanaged_containers()`, the registrator's
//! [`registrator::ExternalContainers::list`]): anything that changes after the subscription
//! is seen as an event, and anything before it is in the state you read. A receiver that
//! falls behind by more than the channel capacity gets `Lagged`; it should then
//! resynchronise the same way.
#![forbid(unsafe_code)]

/// The Docker Engine client the docker driver uses, re-exported so callers share its version.
pub use bollard;

mod docker;
mod error;
mod exec;
pub mod registrator;
mod spec;

pub use docker::{ContainerEvent, DockerConfig, DockerDriver, LABEL_APP_ID, LABEL_APP_VERSION};
pub use docker::{LABEL_MANAGED, LABEL_NODE, LABEL_NODE_ID, LABEL_TASK_ID};
pub use error::DriverError;
pub use exec::ExecDriver;
pub use spec::{
    sanitize_task_id, task_environment, CommandExit, CommandOutcome, DockerNetwork, DriverKind,
    PortBinding, RunningTask, TaskEvent, TaskKind, TaskSpec, COMMAND_OUTPUT_LIMIT,
};

use std::time::Duration;
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it sees `Lagged`.
pub(crate) const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// One of the task drivers, chosen per task by its [`TaskKind`].
#[derive(Clone)]
pub enum Driver {
    /// Child processes on the node.
    Exec(ExecDriver),
    /// Docker containers.
    Docker(DockerDriver),
}

impl Driver {
    /// Which driver this is.
    pub fn kind(&self) -> DriverKind {
        match self {
            Driver::Exec(_) => DriverKind::Exec,
            Driver::Docker(_) => DriverKind::Docker,
        }
    }

    /// Starts a task; returns once it is running, or with the reason it could not start.
    pub async fn start(&self, spec: &TaskSpec) -> Result<(), DriverError> {
        match self {
            Driver::Exec(driver) => driver.start(spec).await,
            Driver::Docker(driver) => driver.start(spec).await,
        }
    }

    /// Stops a task: SIGTERM, then SIGKILL once `grace` has passed. Stopping a task this
    /// driver does not know (already gone) is not an error.
    pub async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), DriverError> {
        match self {
            Driver::Exec(driver) => driver.stop(task_id, grace).await,
            Driver::Docker(driver) => driver.stop(task_id, grace).await,
        }
    }

    /// The tasks this driver is running now, for re-adoption after an agent restart.
    pub async fn running(&self) -> Result<Vec<RunningTask>, DriverError> {
        match self {
            Driver::Exec(driver) => Ok(driver.running()),
            Driver::Docker(driver) => driver.running().await,
        }
    }

    /// Runs `sh -c COMMAND` in a running task's context (the task's environment and working
    /// directory, inside its container for docker) and returns how it ended; a command
    /// still running after `timeout` is killed. [`DriverError::NotRunning`] when this driver
    /// does not run the task.
    pub async fn run_command(
        &self,
        task_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, DriverError> {
        match self {
            Driver::Exec(driver) => driver.run_command(task_id, command, timeout).await,
            Driver::Docker(driver) => driver.run_command(task_id, command, timeout).await,
        }
    }

    /// Subscribes to task events (started, exited) from now on.
    pub fn events(&self) -> broadcast::Receiver<TaskEvent> {
        match self {
            Driver::Exec(driver) => driver.events(),
            Driver::Docker(driver) => driver.events(),
        }
    }
}
