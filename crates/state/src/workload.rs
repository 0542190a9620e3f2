//! Workloads: app definitions (Marathon's model), their instances placed on nodes
//! (allocations), and deployments.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The service meta key naming the app a task's catalog instance belongs to.
pub const APP_ID_META: &str = "marathon_app_id";
/// The service meta key naming the task a catalog instance belongs to.
pub const TASK_ID_META: &str = "marathon_task_id";

/// How an app's instances run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Runtime {
    /// A child process running `cmd` through `sh -c` (Marathon's default "mesos" container).
    Exec {
        /// Shell command.
        cmd: String,
    },
    /// A Docker container.
    Docker {
        /// Image reference, which must be present locally or pullable.
        image: String,
        /// `BRIDGE` publishes `port_mappings`; `HOST` uses the host's network.
        network: DockerNetwork,
        /// Command override (`cmd`), run with `sh -c`.
        cmd: Option<String>,
        /// Argument override (`args`).
        args: Vec<String>,
        /// Pull even if present.
        force_pull: bool,
    },
}

/// Docker network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DockerNetwork {
    /// Own network namespace, ports published on the host.
    Bridge,
    /// The host's network namespace.
    Host,
}

/// One port of an app: a host port (0 = pick one from the range), and for bridge
/// containers the container port it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Requested host port; 0 means dynamic.
    pub host_port: u16,
    /// Port inside the container (bridge networking only).
    pub container_port: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Optional name.
    pub name: Option<String>,
}

/// A placement constraint, Marathon's `[field, operator, value]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// `hostname` or a node attribute name.
    pub field: String,
    /// The operator.
    pub operator: ConstraintOperator,
    /// Operand (regex for LIKE/UNLIKE, count for GROUP_BY/MAX_PER, value for CLUSTER).
    pub value: Option<String>,
}

/// Marathon's constraint operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOperator {
    /// At most one instance per distinct field value.
    Unique,
    /// All instances on nodes whose field equals the value (or one common value).
    Cluster,
    /// Spread evenly across the field's values.
    GroupBy,
    /// Field matches the regex.
    Like,
    /// Field does not match the regex.
    Unlike,
    /// At most N instances per field value.
    MaxPer,
}

/// How an instance's health is checked (Marathon's `healthChecks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    /// `HTTP`, `TCP` or `COMMAND`.
    pub protocol: HealthProtocol,
    /// HTTP path.
    pub path: String,
    /// Which of the app's ports to probe.
    pub port_index: usize,
    /// Command for `COMMAND` checks.
    pub command: Option<String>,
    /// Failures ignored after start.
    pub grace_period_seconds: u64,
    /// Seconds between probes.
    pub interval_seconds: u64,
    /// Seconds before a probe fails.
    pub timeout_seconds: u64,
    /// Consecutive failures before the instance is killed (0 = never).
    pub max_consecutive_failures: u32,
}

/// Health check protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthProtocol {
    /// HTTP GET, 200–399 passes.
    Http,
    /// TCP connect.
    Tcp,
    /// Shell command, exit 0 passes.
    Command,
}

/// Rolling upgrade bounds, as fractions of `instances`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpgradeStrategy {
    /// Fraction of instances that must stay healthy during an upgrade.
    pub minimum_health_capacity: f64,
    /// Fraction of extra instances allowed during an upgrade.
    pub maximum_over_capacity: f64,
}

/// Slack for float resource sums (`0.1 + 0.2` cpus fit in `0.3`), far below any real request.
/// The one tolerance of "fits": the scheduler plans with it and `apply` re-checks with it, so
/// a plan is never skipped at apply for a rounding difference.
pub const FIT_EPSILON: f64 = 1e-6;

/// One version of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// Absolute id, `/group/name`.
    pub id: String,
    /// Version timestamp (RFC 3339), assigned when the definition was submitted.
    pub version: String,
    /// How it runs.
    pub runtime: Runtime,
    /// CPU shares.
    pub cpus: f64,
    /// Memory in MiB.
    pub mem: f64,
    /// Disk in MiB.
    pub disk: f64,
    /// Desired instance count.
    pub instances: u32,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels (also drive service names and tags).
    pub labels: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Requested host ports must be exactly those.
    pub require_ports: bool,
    /// Placement constraints.
    pub constraints: Vec<Constraint>,
    /// Health checks.
    pub health_checks: Vec<HealthCheckSpec>,
    /// Rolling upgrade bounds.
    pub upgrade_strategy: UpgradeStrategy,
    /// First restart delay, seconds.
    pub backoff_seconds: f64,
    /// Growth factor of the restart delay.
    pub backoff_factor: f64,
    /// Cap of the restart delay, seconds.
    pub max_launch_delay_seconds: f64,
    /// Seconds between the stop signal and the kill when the platform stops a task
    /// (`taskKillGracePeriodSeconds`); `None` leaves it to the node's default. See
    /// [`AppSpec::kill_grace_seconds`].
    #[serde(default)]
    pub kill_grace_seconds: Option<f64>,
    /// Absolute ids of the apps and groups this app depends on (Marathon's
    /// `dependencies`): a deployment starts it only after them, and stops it before them.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// The Marathon definition as releases before the definitions table stored it inside
    /// the app. Read only to move it there when an old entry or snapshot is loaded, so it
    /// is `Null` (and not written) in the state and in every new entry; a decoded old
    /// record encodes back unchanged.
    #[serde(
        default,
        rename = "definition",
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub legacy_definition: serde_json::Value,
}

impl AppSpec {
    /// The app's kill grace period, seconds, if it sets one. Apps stored before the typed
    /// field existed carry it only in their (legacy) definition, which is read for them.
    pub fn kill_grace_seconds(&self) -> Option<f64> {
        self.kill_grace_seconds
            .or_else(|| {
                self.legacy_definition
                    .get("taskKillGracePeriodSeconds")
                    .and_then(serde_json::Value::as_f64)
            })
            .filter(|s| s.is_finite() && *s >= 0.0)
    }

    /// Takes the definition an older release stored inside the app, first copying what the
    /// platform acts on out of it into the typed fields.
    pub(crate) fn take_legacy_definition(&mut self) -> serde_json::Value {
        self.kill_grace_seconds = self.kill_grace_seconds();
        std::mem::take(&mut self.legacy_definition)
    }
}

/// Where an allocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Placed, not yet started by its node.
    Staging,
    /// The driver is starting it.
    Starting,
    /// Running.
    Running,
    /// Exited with success.
    Finished,
    /// Exited with failure or could not start.
    Failed,
    /// Stopped on request.
    Killed,
    /// Its node was lost.
    Lost,
}

impl TaskState {
    /// Whether the task has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost
        )
    }

    /// Marathon's/Mesos's name for it.
    pub fn mesos_name(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Lost => "TASK_LOST",
        }
    }
}

/// One instance of an app placed on a node (Marathon's task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Task id, `app_id-with-underscores.instance-N-INDEX`.
    pub id: String,
    /// The app.
    pub app_id: String,
    /// The app version it runs.
    pub app_version: String,
    /// Node it is placed on.
    pub node: String,
    /// Host ports, one per app port.
    pub ports: Vec<u16>,
    /// CPU reserved.
    pub cpus: f64,
    /// Memory reserved (MiB).
    pub mem: f64,
    /// Whether it should run; `false` asks its node to stop it.
    pub desired_running: bool,
    /// Current state as its node reported it.
    pub state: TaskState,
    /// Why it is in that state (driver message).
    pub message: String,
    /// When it was placed (RFC 3339, from the proposer).
    pub staged_at: String,
    /// When it started running.
    pub started_at: Option<String>,
    /// Consecutive health-check failures reported by the node.
    pub health_failures: u32,
    /// Service instance ids registered for it (on `node`), removed with it.
    pub services: Vec<String>,
    /// Raft index that created the row.
    pub create_index: u64,
    /// Raft index that last changed the row.
    pub modify_index: u64,
}

/// What a compute node offers to the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeNode {
    /// Node name.
    pub node: String,
    /// CPU shares.
    pub cpus: f64,
    /// Memory in MiB.
    pub mem: f64,
    /// Inclusive range dynamic host ports come from.
    pub port_range: (u16, u16),
    /// Attributes for constraints (`--node-attr`).
    pub attributes: BTreeMap<String, String>,
    /// Drivers it offers (`exec`, `docker`).
    pub drivers: Vec<String>,
    /// Ports in its dynamic range held by something other than atoll's tasks.
    #[serde(default)]
    pub busy_ports: Vec<u16>,
}

/// A change being rolled out for one app (Marathon's deployment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Deployment id (UUID-like).
    pub id: String,
    /// The app.
    pub app_id: String,
    /// Target version.
    pub version: String,
    /// `StartApplication`, `ScaleApplication`, `RestartApplication`, `StopApplication`.
    pub action: String,
    /// Raft index that created it.
    pub create_index: u64,
    /// The app as it was before, which cancelling the deployment restores (none for a new
    /// app: cancelling removes it).
    #[serde(default)]
    pub previous: Option<Box<AppSpec>>,
    /// For a deployment of several apps (a group's), its steps in order: the actions of a
    /// step run together, and a step starts once the one before it is done. Empty for a
    /// deployment of one app, whose one action is `action` on `app_id`.
    #[serde(default)]
    pub steps: Vec<Vec<DeploymentAction>>,
}

impl Deployment {
    /// The apps it changes.
    pub fn affected_apps(&self) -> Vec<&str> {
        if self.steps.is_empty() {
            return vec![self.app_id.as_str()];
        }
        let mut apps: Vec<&str> = self
            .steps
            .iter()
            .flatten()
            .map(|a| a.app_id.as_str())
            .collect();
        apps.sort_unstable();
        apps.dedup();
        apps
    }

    /// Whether it changes app `app_id`.
    pub fn affects(&self, app_id: &str) -> bool {
        if self.steps.is_empty() {
            return self.app_id == app_id;
        }
        self.steps.iter().flatten().any(|a| a.app_id == app_id)
    }

    /// Its steps, a deployment of one app being one step of one action.
    pub fn plan(&self) -> Vec<Vec<DeploymentAction>> {
        if self.steps.is_empty() {
            vec![vec![DeploymentAction {
                action: self.action.clone(),
                app_id: self.app_id.clone(),
            }]]
        } else {
            self.steps.clone()
        }
    }
}

/// One action of a deployment step: Marathon's `{"action": ..., "app": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentAction {
    /// `StartApplication`, `ScaleApplication`, `RestartApplication` or `StopApplication`.
    pub action: String,
    /// The app.
    pub app_id: String,
}

/// Marathon's action that stops and removes an app.
pub const STOP_APPLICATION: &str = "StopApplication";

/// A group of apps (Marathon's groups), stored when created explicitly so that an empty
/// group is listed until deleted; groups above an app's id exist implicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// Absolute id (`/prod/db`).
    pub id: String,
    /// When it was last changed (RFC 3339).
    pub version: String,
    /// Absolute ids of the apps and groups every app below it depends on.
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// The last task failure of an app, as Marathon reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The task.
    pub task_id: String,
    /// Its state.
    pub state: TaskState,
    /// Why.
    pub message: String,
    /// Node.
    pub host: String,
    /// When (RFC 3339, from the reporter).
    pub timestamp: String,
    /// App version.
    pub version: String,
}

/// Instances of an app the scheduler could not place, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Unplaced {
    /// How many instances wait.
    pub count: u32,
    /// One human-readable reason per kind of refusal.
    pub reasons: Vec<String>,
}
