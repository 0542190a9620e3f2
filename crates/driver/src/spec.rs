//! What a driver is asked to run and what it reports back, plus the pure helpers that turn a
//! spec into a task's environment and names.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Everything a driver needs to run one app instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique id of this instance, e.g. `prod_web.instance-3-17`.
    pub task_id: String,
    /// The Marathon app id, e.g. `/prod/web`.
    pub app_id: String,
    /// The app version this instance runs.
    pub app_version: String,
    /// How to run it.
    pub kind: TaskKind,
    /// The user's environment; it wins over the variables the driver adds.
    pub env: BTreeMap<String, String>,
    /// The user's labels (container labels for docker; kept for reference by exec).
    pub labels: BTreeMap<String, String>,
    /// Ports allocated to this instance, in the app's port order (`PORT0` first).
    pub ports: Vec<PortBinding>,
    /// CPU shares; docker turns it into a CPU quota (`nano_cpus`), 0 means no limit.
    pub cpus: f64,
    /// Memory in MiB; docker turns it into a hard limit, 0 means no limit.
    pub mem_mb: f64,
    /// The node's address, given to the task as `HOST`.
    pub host: String,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
}

/// How a task is run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// A shell command on the node, run as `sh -c CMD`.
    Exec {
        /// The command line.
        cmd: String,
    },
    /// A Docker container.
    Docker {
        /// Image reference, e.g. `nginx:1.27` or `registry:5000/team/app@sha256:...`.
        image: String,
        /// Container network.
        network: DockerNetwork,
        /// A shell command: the entrypoint becomes `/bin/sh -c` and this its argument, so
        /// the image must contain `/bin/sh`. Not allowed together with `args`.
        cmd: Option<String>,
        /// Arguments given to the image's entrypoint (Docker's `Cmd`).
        args: Vec<String>,
        /// Pull the image even when it is present locally.
        force_pull: bool,
    },
}

/// Docker network mode (Marathon's `BRIDGE` and `HOST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DockerNetwork {
    /// Docker's default bridge; host ports are published to container ports.
    Bridge,
    /// The node's network namespace; the task binds its host ports itself.
    Host,
}

/// One port allocated to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// The port on the node (what `PORTn` says).
    pub host_port: u16,
    /// The port inside the container (bridge networking; missing or 0 means the host port,
    /// as in Marathon); for other tasks, the port the app declared, if any. Non-zero values
    /// also give the task `PORT_<container_port>`.
    pub container_port: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// Which driver runs (or ran) a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriverKind {
    /// [`crate::ExecDriver`].
    Exec,
    /// [`crate::DockerDriver`].
    Docker,
}

/// A task a driver is running now, as it reports it after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    /// The task's id.
    pub task_id: String,
    /// The app it belongs to.
    pub app_id: String,
    /// The app version it runs.
    pub app_version: String,
    /// The driver running it.
    pub kind: DriverKind,
}

/// A change in a task's life, reported by its driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEvent {
    /// The task has started (sent by `start` once it succeeds).
    Running {
        /// The task's id.
        task_id: String,
        /// Where it runs: a process id or a container id and name.
        details: String,
    },
    /// The task is no longer running, whether it exited on its own, was killed from
    /// outside, or was stopped through the driver.
    Exited {
        /// The task's id.
        task_id: String,
        /// Whether it exited with status 0.
        success: bool,
        /// Exit code or signal, and any reason the runtime gave.
        message: String,
    },
}

/// Bytes of a command's output kept in a [`CommandOutcome`] (Consul keeps 4 KiB of a check's
/// output too).
pub const COMMAND_OUTPUT_LIMIT: usize = 4096;

/// How a command run in a task's context ended (Marathon's COMMAND health checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// How it ended.
    pub exit: CommandExit,
    /// What it printed, stdout before stderr, cut to [`COMMAND_OUTPUT_LIMIT`] bytes.
    pub output: String,
}

impl CommandOutcome {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.exit == CommandExit::Code(0)
    }
}

/// The end of a command run in a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandExit {
    /// It exited with this status.
    Code(i64),
    /// It was killed by this signal.
    Signal(i32),
    /// It was still running when its time was up, and was killed.
    TimedOut,
}

impl std::fmt::Display for CommandExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandExit::Code(code) => write!(f, "exit status {code}"),
            CommandExit::Signal(signal) => write!(f, "killed by signal {signal}"),
            CommandExit::TimedOut => write!(f, "timed out"),
        }
    }
}

impl TaskEvent {
    /// The task this event is about.
    pub fn task_id(&self) -> &str {
        match self {
            TaskEvent::Running { task_id, .. } | TaskEvent::Exited { task_id, .. } => task_id,
        }
    }
}

/// Makes a task id safe as a file name and as part of a container name: characters other
/// than ASCII letters, digits, `_`, `.` and `-` become `_`, and so does a leading `.`.
pub fn sanitize_task_id(task_id: &str) -> String {
    let mut safe: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.starts_with('.') {
        safe.replace_range(0..1, "_");
    }
    if safe.is_empty() {
        safe.push('_');
    }
    safe
}

/// The environment a task gets: what Marathon and Mesos give an app, overlaid with the
/// user's `env` (which wins).
///
/// `PORT0..PORTn`, `PORT` (= `PORT0`) and `PORTS` carry host ports; `PORT_<port>` maps each
/// non-zero `container_port` to its host port. Docker tasks also get
/// `MARATHON_APP_DOCKER_IMAGE`. Each user label `KEY` becomes `MARATHON_APP_LABEL_KEY` (key
/// upper-cased, other characters `_`) and `MARATHON_APP_LABELS` lists those keys.
pub fn task_environment(spec: &TaskSpec) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut put = |key: String, value: String| {
        env.insert(key, value);
    };
    put("MESOS_TASK_ID".into(), spec.task_id.clone());
    put("MARATHON_APP_ID".into(), spec.app_id.clone());
    put("MARATHON_APP_VERSION".into(), spec.app_version.clone());
    put(
        "MARATHON_APP_RESOURCE_CPUS".into(),
        marathon_number(spec.cpus),
    );
    put(
        "MARATHON_APP_RESOURCE_MEM".into(),
        marathon_number(spec.mem_mb),
    );
    put("HOST".into(), spec.host.clone());
    if let TaskKind::Docker { image, .. } = &spec.kind {
        put("MARATHON_APP_DOCKER_IMAGE".into(), image.clone());
    }

    for (index, port) in spec.ports.iter().enumerate() {
        put(format!("PORT{index}"), port.host_port.to_string());
        if let Some(container_port) = port.container_port.filter(|p| *p != 0) {
            put(format!("PORT_{container_port}"), port.host_port.to_string());
        }
    }
    if let Some(first) = spec.ports.first() {
        put("PORT".into(), first.host_port.to_string());
    }
    if !spec.ports.is_empty() {
        let list: Vec<String> = spec.ports.iter().map(|p| p.host_port.to_string()).collect();
        put("PORTS".into(), list.join(","));
    }

    let mut label_names = Vec::new();
    for (key, value) in &spec.labels {
        let name = env_name(key);
        if name.is_empty() {
            continue;
        }
        put(format!("MARATHON_APP_LABEL_{name}"), value.clone());
        label_names.push(name);
    }
    if !label_names.is_empty() {
        put("MARATHON_APP_LABELS".into(), label_names.join(" "));
    }

    for (key, value) in &spec.env {
        put(key.clone(), value.clone());
    }
    env
}

/// Marathon prints resources as JVM doubles: `1.0`, `0.5`, `128.0`.
fn marathon_number(value: f64) -> String {
    if value.fract() == 0.0 && value.is_finite() {
        format!("{value:.1}")
    } else {
        value.to_string()
    }
}

/// An environment variable name from a label key: upper case, anything else `_`.
fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: TaskKind) -> TaskSpec {
        TaskSpec {
            task_id: "prod_web.instance-3-17".into(),
            app_id: "/prod/web".into(),
            app_version: "2024-05-01T10:00:00.000Z".into(),
            kind,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: vec![
                PortBinding {
                    host_port: 31000,
                    container_port: Some(8080),
                    protocol: "tcp".into(),
                },
                PortBinding {
                    host_port: 31001,
                    container_port: None,
                    protocol: "udp".into(),
                },
            ],
            cpus: 0.5,
            mem_mb: 128.0,
            host: "10.0.0.7".into(),
            stop_grace: Duration::from_secs(3),
        }
    }

    #[test]
    fn environment_carries_marathon_and_mesos_variables() {
        let env = task_environment(&spec(TaskKind::Exec { cmd: "true".into() }));
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("PORT0"), Some("31000"));
        assert_eq!(get("PORT1"), Some("31001"));
        assert_eq!(get("PORT"), Some("31000"));
        assert_eq!(get("PORTS"), Some("31000,31001"));
        assert_eq!(get("PORT_8080"), Some("31000"));
        assert_eq!(get("HOST"), Some("10.0.0.7"));
        assert_eq!(get("MARATHON_APP_ID"), Some("/prod/web"));
        assert_eq!(
            get("MARATHON_APP_VERSION"),
            Some("2024-05-01T10:00:00.000Z")
        );
        assert_eq!(get("MESOS_TASK_ID"), Some("prod_web.instance-3-17"));
        assert_eq!(get("MARATHON_APP_RESOURCE_CPUS"), Some("0.5"));
        assert_eq!(get("MARATHON_APP_RESOURCE_MEM"), Some("128.0"));
        assert_eq!(get("MARATHON_APP_DOCKER_IMAGE"), None);
    }

    #[test]
    fn environment_without_ports_has_no_port_variables() {
        let mut s = spec(TaskKind::Exec { cmd: "true".into() });
        s.ports.clear();
        let env = task_environment(&s);
        assert!(env.keys().all(|k| !k.starts_with("PORT")), "{env:?}");
    }

    #[test]
    fn user_environment_wins_over_generated_variables() {
        let mut s = spec(TaskKind::Exec { cmd: "true".into() });
        s.env.insert("HOST".into(), "override".into());
        s.env.insert("EXTRA".into(), "1".into());
        let env = task_environment(&s);
        assert_eq!(env.get("HOST").map(String::as_str), Some("override"));
        assert_eq!(env.get("EXTRA").map(String::as_str), Some("1"));
    }

    #[test]
    fn docker_tasks_get_their_image_and_labels_become_variables() {
        let mut s = spec(TaskKind::Docker {
            image: "nginx:1.27".into(),
            network: DockerNetwork::Bridge,
            cmd: None,
            args: vec![],
            force_pull: false,
        });
        s.labels.insert("team".into(), "web".into());
        s.labels.insert("traefik.enable".into(), "true".into());
        let env = task_environment(&s);
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("MARATHON_APP_DOCKER_IMAGE"), Some("nginx:1.27"));
        assert_eq!(get("MARATHON_APP_LABEL_TEAM"), Some("web"));
        assert_eq!(get("MARATHON_APP_LABEL_TRAEFIK_ENABLE"), Some("true"));
        assert_eq!(get("MARATHON_APP_LABELS"), Some("TEAM TRAEFIK_ENABLE"));
    }

    #[test]
    fn sanitized_task_ids_are_safe_names() {
        assert_eq!(
            sanitize_task_id("prod_web.instance-3-17"),
            "prod_web.instance-3-17"
        );
        assert_eq!(sanitize_task_id("a/b c:d"), "a_b_c_d");
        assert_eq!(sanitize_task_id(".."), "_.");
        assert_eq!(sanitize_task_id("../etc"), "_._etc");
        assert_eq!(sanitize_task_id(""), "_");
        assert_eq!(sanitize_task_id("é"), "_");
    }
}
