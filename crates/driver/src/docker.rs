//! The docker driver: a task is a container, created and watched through the Docker Engine
//! API.
//!
//! Containers are named `atoll-<task id>` and labelled with [`LABEL_TASK_ID`],
//! [`LABEL_APP_ID`], [`LABEL_APP_VERSION`], [`LABEL_MANAGED`] (and [`LABEL_NODE`] when the
//! driver is given a node name), so a restarted agent finds them with [`DockerDriver::running`].
//!
//! One background task follows the engine's event stream. It reports the exit of managed
//! containers as [`TaskEvent::Exited`] and then removes them (the message carries the exit
//! code and the last lines of output), and it reports external containers for the
//! [`crate::registrator`]. When the stream ends (the daemon restarted, the socket broke) it
//! reconnects with backoff, resynchronises from the container list and reports what changed
//! meanwhile.

use crate::exec::joined_output;
use crate::registrator::{self, ExternalEvent};
use crate::spec::{
    sanitize_task_id, task_environment, CommandExit, CommandOutcome, DriverKind, RunningTask,
    TaskEvent, COMMAND_OUTPUT_LIMIT,
};
use crate::{DockerNetwork, DriverError, TaskKind, TaskSpec, EVENT_CHANNEL_CAPACITY};
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum,
    EventMessage, ExecConfig, HostConfig, PortBinding as EnginePortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Label holding the task id of a container started by atoll.
pub const LABEL_TASK_ID: &str = "atoll.task_id";
/// Label holding the app id of a container started by atoll.
pub const LABEL_APP_ID: &str = "atoll.app_id";
/// Label holding the app version of a container started by atoll.
pub const LABEL_APP_VERSION: &str = "atoll.app_version";
/// Label `atoll.managed=true` marks every container started by atoll.
pub const LABEL_MANAGED: &str = "atoll.managed";
/// Label naming the node whose agent started the container (set when configured).
pub const LABEL_NODE: &str = "atoll.node";

/// First wait before reconnecting to the event stream; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How many reported exits are remembered, so events replayed after a reconnect are not
/// reported twice.
const REMEMBERED_EXITS: usize = 1024;
/// Lines of output quoted in an exit message.
const EXIT_OUTPUT_LINES: &str = "3";
const EXIT_OUTPUT_MAX_CHARS: usize = 300;
/// How long to wait for a removal someone else started.
const REMOVAL_WAIT: Duration = Duration::from_secs(30);
/// How long the engine gets to mark a command finished once its output has ended.
const EXEC_SETTLE: Duration = Duration::from_secs(2);

/// How the docker driver reaches the engine and marks its containers.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Engine address (`unix:///var/run/docker.sock`, `tcp://host:2375`); `None` uses the
    /// local default socket.
    pub host: Option<String>,
    /// When set, containers are also labelled `atoll.node=<node>` and the driver only sees
    /// containers with that label, so several agents can share one engine.
    pub node: Option<String>,
    /// Upper bound for pulling one image.
    pub pull_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            node: None,
            pull_timeout: Duration::from_secs(600),
        }
    }
}

/// Runs tasks as Docker containers. Cheap to clone; the event follower stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct DockerDriver {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    config: DockerConfig,
    task_events: broadcast::Sender<TaskEvent>,
    external_events: broadcast::Sender<ExternalEvent>,
    follower: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl DockerDriver {
    /// Connects to the engine (negotiating the API version down to the engine's) and starts
    /// following its events.
    pub async fn connect(config: DockerConfig) -> Result<Self, DriverError> {
        let docker = match &config.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|e| DriverError::docker("connecting", e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| DriverError::docker("asking the engine for its API version", e))?;

        let (task_events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let (external_events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let mut follower = EventFollower {
            docker: docker.clone(),
            node: config.node.clone(),
            task_events: task_events.clone(),
            external_events: external_events.clone(),
            tasks: HashMap::new(),
            externals: HashSet::new(),
            reported_exits: VecDeque::new(),
        };
        // The first sync happens before anyone can subscribe, so every change after
        // `connect` returns is reported as an event.
        let since = events_since_now();
        follower
            .resync(true)
            .await
            .map_err(|e| DriverError::docker("listing containers", e))?;
        let follower = tokio::spawn(follower.run(since));
        Ok(DockerDriver {
            inner: Arc::new(Inner {
                docker,
                config,
                task_events,
                external_events,
                follower,
            }),
        })
    }

    /// The engine client, for callers that need more than the driver offers.
    pub fn engine(&self) -> &Docker {
        &self.inner.docker
    }

    /// The container name used for a task.
    pub fn container_name(task_id: &str) -> String {
        format!("atoll-{}", sanitize_task_id(task_id))
    }

    /// Subscribes to task events from now on.
    pub fn events(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.task_events.subscribe()
    }

    pub(crate) fn external_event_sender(&self) -> &broadcast::Sender<ExternalEvent> {
        &self.inner.external_events
    }

    /// Starts a container for a docker task; returns once the engine has started it.
    ///
    /// The image is pulled when it is missing locally (or always, with `force_pull`); a
    /// leftover stopped container of the same task is removed first.
    pub async fn start(&self, spec: &TaskSpec) -> Result<(), DriverError> {
        let TaskKind::Docker {
            image,
            cmd,
            args,
            force_pull,
            ..
        } = &spec.kind
        else {
            return Err(invalid(spec, "the docker driver runs only docker tasks"));
        };
        validate(spec, cmd.as_deref(), args)?;
        self.ensure_image(image, *force_pull).await?;

        for existing in self.list_managed(true, Some(&spec.task_id)).await? {
            let Some(id) = existing.id else { continue };
            if existing.state == Some(ContainerSummaryStateEnum::RUNNING) {
                return Err(DriverError::AlreadyRunning {
                    task_id: spec.task_id.clone(),
                });
            }
            tracing::debug!(task_id = %spec.task_id, container = %id, "removing leftover container");
            remove_container(&self.inner.docker, &id)
                .await
                .map_err(|e| DriverError::docker("removing a leftover container", e))?;
        }

        let name = Self::container_name(&spec.task_id);
        let body = container_body(spec, self.inner.config.node.as_deref());
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = self
            .inner
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DriverError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: format!("creating container {name}: {}", engine_message(&e)),
            })?;
        if let Err(e) = self.inner.docker.start_container(&created.id, None).await {
            if let Err(cleanup) = remove_container(&self.inner.docker, &created.id).await {
                tracing::warn!(container = %created.id, error = %cleanup, "could not remove a container that failed to start");
            }
            return Err(DriverError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: format!("starting container {name}: {}", engine_message(&e)),
            });
        }
        let short_id: String = created.id.chars().take(12).collect();
        tracing::info!(task_id = %spec.task_id, container = %short_id, %image, "docker task started");
        let _ = self.inner.task_events.send(TaskEvent::Running {
            task_id: spec.task_id.clone(),
            details: format!("container {short_id} ({name})"),
        });
        Ok(())
    }

    /// Stops a task's container (SIGTERM, SIGKILL after `grace`) and removes it. A task with
    /// no container is already stopped.
    pub async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), DriverError> {
        let containers = self.list_managed(true, Some(task_id)).await?;
        if containers.is_empty() {
            tracing::debug!(task_id, "stop: no container for task");
        }
        for container in containers {
            let Some(id) = container.id else { continue };
            tracing::info!(task_id, container = %id, ?grace, "stopping docker task");
            // The engine answers a stop only after the grace period, which may outlast the
            // client's default request timeout.
            let patient = self
                .inner
                .docker
                .clone()
                .with_timeout(grace + Duration::from_secs(60));
            let options = StopContainerOptions {
                t: Some(i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX)),
                signal: None,
            };
            match patient.stop_container(&id, Some(options)).await {
                Ok(()) => {}
                Err(e) if matches!(status_code(&e), Some(304 | 404)) => {}
                Err(e) => return Err(DriverError::docker(format!("stopping {id}"), e)),
            }
            remove_container(&self.inner.docker, &id)
                .await
                .map_err(|e| DriverError::docker(format!("removing {id}"), e))?;
        }
        Ok(())
    }

    /// The managed containers running now, for re-adoption after an agent restart.
    pub async fn running(&self) -> Result<Vec<RunningTask>, DriverError> {
        let mut running: Vec<RunningTask> = self
            .list_managed(false, None)
            .await?
            .into_iter()
            .filter_map(|container| {
                let labels = container.labels?;
                let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
                Some(RunningTask {
                    task_id: labels.get(LABEL_TASK_ID)?.clone(),
                    app_id: label(LABEL_APP_ID),
                    app_version: label(LABEL_APP_VERSION),
                    kind: DriverKind::Docker,
                })
            })
            .collect();
        running.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(running)
    }

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
        let docker = &self.inner.docker;
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec!["sh".into(), "-c".into(), command.into()]),
            ..Default::default()
        };
        let exec = docker
            .create_exec(&container, config)
            .await
            .map_err(|e| DriverError::docker(format!("creating a command in task {task_id}"), e))?;
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
                    format!("running a command in task {task_id}"),
                    e,
                ))
            }
            Err(_) => {
                self.kill_exec(&container, &exec.id).await;
                return Ok(CommandOutcome {
                    exit: CommandExit::TimedOut,
                    output: format!("timed out after {timeout:?}"),
                });
            }
        };
        // The output ends a moment before the engine records the exit code.
        let deadline = tokio::time::Instant::now() + EXEC_SETTLE;
        loop {
            let inspected = docker.inspect_exec(&exec.id).await.map_err(|e| {
                DriverError::docker(format!("inspecting a command in task {task_id}"), e)
            })?;
            match (inspected.running, inspected.exit_code) {
                (Some(false), Some(code)) => {
                    return Ok(CommandOutcome {
                        exit: CommandExit::Code(code),
                        output: joined_output(&stdout, &stderr),
                    })
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    self.kill_exec(&container, &exec.id).await;
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

    async fn list_managed(
        &self,
        all: bool,
        task_id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, DriverError> {
        list_managed(
            &self.inner.docker,
            self.inner.config.node.as_deref(),
            all,
            task_id,
        )
        .await
        .map_err(|e| DriverError::docker("listing containers", e))
    }

    /// Makes sure the image is present, pulling it when missing or when forced.
    async fn ensure_image(&self, image: &str, force_pull: bool) -> Result<(), DriverError> {
        let docker = &self.inner.docker;
        let present = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if status_code(&e) == Some(404) => false,
            Err(e) => return Err(DriverError::docker(format!("inspecting image {image}"), e)),
        };
        if present && !force_pull {
            return Ok(());
        }
        tracing::info!(%image, "pulling image");
        match self.pull(image).await {
            Ok(()) => Ok(()),
            Err(reason) if present => {
                tracing::warn!(%image, %reason, "pull failed, using the local image");
                Ok(())
            }
            Err(reason) => Err(DriverError::ImageUnavailable {
                image: image.to_string(),
                reason,
            }),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), String> {
        let (from_image, tag) = split_image_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..Default::default()
        };
        let docker = self.inner.docker.clone();
        let pulling = async move {
            let mut progress = std::pin::pin!(docker.create_image(Some(options), None, None));
            while let Some(step) = progress.next().await {
                match step {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail {
                            return Err(detail.message.unwrap_or_else(|| "pull failed".into()));
                        }
                    }
                    Err(e) => return Err(engine_message(&e)),
                }
            }
            Ok(())
        };
        let limit = self.inner.config.pull_timeout;
        tokio::time::timeout(limit, pulling)
            .await
            .unwrap_or_else(|_| Err(format!("pull did not finish within {limit:?}")))
    }
}

fn invalid(spec: &TaskSpec, reason: impl Into<String>) -> DriverError {
    DriverError::InvalidSpec {
        task_id: spec.task_id.clone(),
        reason: reason.into(),
    }
}

fn validate(spec: &TaskSpec, cmd: Option<&str>, args: &[String]) -> Result<(), DriverError> {
    if cmd.is_some() && !args.is_empty() {
        return Err(invalid(spec, "cmd and args cannot both be given"));
    }
    for port in &spec.ports {
        if protocols(&port.protocol).is_empty() {
            return Err(invalid(
                spec,
                format!(
                    "unknown protocol {:?} for port {}",
                    port.protocol, port.host_port
                ),
            ));
        }
    }
    Ok(())
}

/// Marathon allows `tcp`, `udp` and `udp,tcp`.
fn protocols(protocol: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    for part in protocol.split(',').map(str::trim) {
        match part.to_ascii_lowercase().as_str() {
            "tcp" | "" => found.push("tcp"),
            "udp" => found.push("udp"),
            _ => return Vec::new(),
        }
    }
    found.dedup();
    found
}

/// The engine's create request for a task (pure, so it is tested without an engine).
fn container_body(spec: &TaskSpec, node: Option<&str>) -> ContainerCreateBody {
    let TaskKind::Docker {
        image,
        network,
        cmd,
        args,
        ..
    } = &spec.kind
    else {
        return ContainerCreateBody::default();
    };

    let env = task_environment(spec)
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();

    // atoll's own labels go last, so a user label cannot disguise a container.
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_TASK_ID.into(), spec.task_id.clone());
    labels.insert(LABEL_APP_ID.into(), spec.app_id.clone());
    labels.insert(LABEL_APP_VERSION.into(), spec.app_version.clone());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    if let Some(node) = node {
        labels.insert(LABEL_NODE.into(), node.into());
    }

    let mut exposed_ports = Vec::new();
    let mut port_bindings: BTreeMap<String, Vec<EnginePortBinding>> = BTreeMap::new();
    if *network == DockerNetwork::Bridge {
        for port in &spec.ports {
            // As in Marathon, a missing or zero container port means the host port.
            let container_port = port
                .container_port
                .filter(|p| *p != 0)
                .unwrap_or(port.host_port);
            for protocol in protocols(&port.protocol) {
                let key = format!("{container_port}/{protocol}");
                if !exposed_ports.contains(&key) {
                    exposed_ports.push(key.clone());
                }
                port_bindings
                    .entry(key)
                    .or_default()
                    .push(EnginePortBinding {
                        // Published on the node's own address, which is where the catalog
                        // and DNS send clients.
                        host_ip: Some(publish_ip(&spec.host)),
                        host_port: Some(port.host_port.to_string()),
                    });
            }
        }
    }

    let (entrypoint, command) = match (cmd, args.is_empty()) {
        (Some(cmd), _) => (
            Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
            Some(vec![cmd.clone()]),
        ),
        (None, false) => (None, Some(args.clone())),
        (None, true) => (None, None),
    };

    let host_config = HostConfig {
        network_mode: Some(
            match network {
                DockerNetwork::Bridge => "bridge",
                DockerNetwork::Host => "host",
            }
            .into(),
        ),
        port_bindings: (!port_bindings.is_empty()).then(|| {
            port_bindings
                .into_iter()
                .map(|(key, bindings)| (key, Some(bindings)))
                .collect()
        }),
        memory: (spec.mem_mb > 0.0).then_some((spec.mem_mb * 1024.0 * 1024.0) as i64),
        nano_cpus: (spec.cpus > 0.0).then_some((spec.cpus * 1e9) as i64),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(image.clone()),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        entrypoint,
        cmd: command,
        stop_timeout: i64::try_from(spec.stop_grace.as_secs()).ok(),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Splits an image reference into what the pull API wants: the name, and the tag (Docker
/// pulls every tag when none is given, so `latest` is made explicit). A digest reference
/// is passed whole.
fn split_image_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => {
            let colon = name_start + colon;
            (
                image[..colon].to_string(),
                Some(image[colon + 1..].to_string()),
            )
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

fn managed_filters(node: Option<&str>, task_id: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut labels = vec![format!("{LABEL_MANAGED}=true")];
    if let Some(node) = node {
        labels.push(format!("{LABEL_NODE}={node}"));
    }
    if let Some(task_id) = task_id {
        labels.push(format!("{LABEL_TASK_ID}={task_id}"));
    }
    HashMap::from([("label".to_string(), labels)])
}

async fn list_managed(
    docker: &Docker,
    node: Option<&str>,
    all: bool,
    task_id: Option<&str>,
) -> Result<Vec<ContainerSummary>, EngineError> {
    let options = ListContainersOptions {
        all,
        filters: Some(managed_filters(node, task_id)),
        ..Default::default()
    };
    docker.list_containers(Some(options)).await
}

/// Force-removes a container with its anonymous volumes and returns once it is gone. One
/// already gone is fine; one being removed by someone else (the event follower, after an
/// exit) is waited for.
pub(crate) async fn remove_container(docker: &Docker, id: &str) -> Result<(), EngineError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) if status_code(&e) == Some(409) && engine_message(&e).contains("in progress") => {
            let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
            while tokio::time::Instant::now() < deadline {
                match docker.inspect_container(id, None).await {
                    Err(gone) if status_code(&gone) == Some(404) => return Ok(()),
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn status_code(error: &EngineError) -> Option<u16> {
    match error {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own words when it gave some, else the client error.
pub(crate) fn engine_message(error: &EngineError) -> String {
    match error {
        EngineError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

/// Follows the engine's container events; the only owner of what it has seen running.
struct EventFollower {
    docker: Docker,
    node: Option<String>,
    task_events: broadcast::Sender<TaskEvent>,
    external_events: broadcast::Sender<ExternalEvent>,
    /// Managed containers seen running: container id to task id.
    tasks: HashMap<String, String>,
    /// External containers reported as started.
    externals: HashSet<String>,
    /// Containers whose exit was reported, oldest first.
    reported_exits: VecDeque<String>,
}

impl EventFollower {
    /// Follows the event stream from `since`; when it ends, waits, resynchronises from the
    /// container list and follows again from just before the resync.
    async fn run(mut self, mut since: String) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let options = EventsOptions {
                since: Some(since),
                until: None,
                filters: Some(HashMap::from([
                    ("type".to_string(), vec!["container".to_string()]),
                    (
                        "event".to_string(),
                        vec!["start".to_string(), "die".to_string()],
                    ),
                ])),
            };
            let docker = self.docker.clone();
            let mut stream = std::pin::pin!(docker.events(Some(options)));
            loop {
                match stream.next().await {
                    Some(Ok(event)) => {
                        backoff = INITIAL_BACKOFF;
                        self.handle(event).await;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "docker event stream failed, reconnecting");
                        break;
                    }
                    None => {
                        tracing::info!("docker event stream ended, reconnecting");
                        break;
                    }
                }
            }
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                since = events_since_now();
                match self.resync(false).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, ?backoff, "docker resync failed, retrying");
                    }
                }
            }
        }
    }

    fn is_ours(&self, labels: &HashMap<String, String>) -> bool {
        labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
            && match &self.node {
                Some(node) => labels.get(LABEL_NODE) == Some(node),
                None => true,
            }
    }

    async fn handle(&mut self, event: EventMessage) {
        let Some(actor) = event.actor else { return };
        let (Some(id), Some(attributes)) = (actor.id, actor.attributes) else {
            return;
        };
        let action = event.action.unwrap_or_default();
        if attributes.get(LABEL_MANAGED).map(String::as_str) == Some("true") {
            if !self.is_ours(&attributes) {
                return;
            }
            let Some(task_id) = attributes.get(LABEL_TASK_ID).cloned() else {
                return;
            };
            match action.as_str() {
                "start" if !self.reported_exits.contains(&id) => {
                    self.tasks.insert(id, task_id);
                }
                "die" if self.tasks.remove(&id).is_some() => {
                    let exit_code = attributes
                        .get("exitCode")
                        .and_then(|code| code.parse::<i64>().ok());
                    self.report_exit(&id, task_id, exit_code).await;
                }
                _ => {}
            }
            return;
        }
        match action.as_str() {
            "start" if !self.externals.contains(&id) => {
                match registrator::inspect_external(&self.docker, &id).await {
                    Ok(Some(service)) => {
                        tracing::info!(container = %service.container_name, "external service container started");
                        self.externals.insert(id);
                        let _ = self.external_events.send(ExternalEvent::Started(service));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(container = %id, %error, "could not inspect a started container");
                    }
                }
            }
            "die" if self.externals.remove(&id) => {
                let _ = self
                    .external_events
                    .send(ExternalEvent::Stopped { container_id: id });
            }
            _ => {}
        }
    }

    /// Compares the engine's containers with what was seen, reports the difference (except
    /// on the first sync, where callers read the state themselves) and removes exited
    /// managed containers.
    async fn resync(&mut self, first_sync: bool) -> Result<(), EngineError> {
        let containers = list_managed(&self.docker, self.node.as_deref(), true, None).await?;
        let mut running = HashMap::new();
        let mut exited = Vec::new();
        for container in containers {
            let task_id = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_TASK_ID).cloned());
            let (Some(id), Some(task_id)) = (container.id, task_id) else {
                continue;
            };
            match container.state {
                Some(
                    ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::RESTARTING
                    | ContainerSummaryStateEnum::PAUSED,
                ) => {
                    running.insert(id, task_id);
                }
                Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                    exited.push((id, task_id));
                }
                // Being created by a start in progress, or being removed.
                _ => {}
            }
        }
        let previously = std::mem::replace(&mut self.tasks, running);
        for (id, task_id) in exited {
            if !first_sync && previously.contains_key(&id) {
                self.report_exit(&id, task_id, None).await;
            } else if let Err(error) = remove_container(&self.docker, &id).await {
                tracing::warn!(container = %id, %error, "could not remove an exited container");
            }
        }
        for (id, task_id) in previously {
            if !self.tasks.contains_key(&id) && !self.reported_exits.contains(&id) {
                self.remember_exit(id);
                let _ = self.task_events.send(TaskEvent::Exited {
                    task_id,
                    success: false,
                    message: "container disappeared while the engine's event stream was down"
                        .into(),
                });
            }
        }

        let all_running = self
            .docker
            .list_containers(Some(ListContainersOptions::default()))
            .await?;
        let mut externals = HashSet::new();
        for container in all_running {
            let Some(id) = container.id else { continue };
            let managed = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_MANAGED))
                .is_some_and(|value| value == "true");
            if managed {
                continue;
            }
            if self.externals.contains(&id) {
                externals.insert(id);
                continue;
            }
            if let Some(service) = registrator::inspect_external(&self.docker, &id).await? {
                externals.insert(id);
                if !first_sync {
                    let _ = self.external_events.send(ExternalEvent::Started(service));
                }
            }
        }
        for gone in self.externals.difference(&externals) {
            let _ = self.external_events.send(ExternalEvent::Stopped {
                container_id: gone.clone(),
            });
        }
        self.externals = externals;
        Ok(())
    }

    /// Reports a managed container's exit with what the engine knows about it, then
    /// removes the container.
    async fn report_exit(&mut self, id: &str, task_id: String, exit_code: Option<i64>) {
        self.remember_exit(id.to_string());
        let mut exit_code = exit_code;
        let mut notes = Vec::new();
        if let Ok(info) = self.docker.inspect_container(id, None).await {
            if let Some(state) = info.state {
                exit_code = exit_code.or(state.exit_code);
                if state.oom_killed == Some(true) {
                    notes.push("out of memory".to_string());
                }
                if let Some(error) = state.error.filter(|e| !e.is_empty()) {
                    notes.push(error);
                }
                if state.status == Some(ContainerStateStatusEnum::RUNNING) {
                    // Restarted by someone else since the event; it is not gone.
                    self.tasks.insert(id.to_string(), task_id);
                    return;
                }
            }
        }
        let mut message = match exit_code {
            Some(code) => format!("exited with code {code}"),
            None => "exited".to_string(),
        };
        if !notes.is_empty() {
            message.push_str(&format!(" ({})", notes.join("; ")));
        }
        let output = self.last_output(id).await;
        if !output.is_empty() {
            message.push_str(&format!("; last output: {output}"));
        }
        tracing::info!(%task_id, container = %id, %message, "docker task exited");
        let _ = self.task_events.send(TaskEvent::Exited {
            task_id,
            success: exit_code == Some(0),
            message,
        });
        if let Err(error) = remove_container(&self.docker, id).await {
            tracing::warn!(container = %id, %error, "could not remove an exited container");
        }
    }

    fn remember_exit(&mut self, id: String) {
        if self.reported_exits.len() >= REMEMBERED_EXITS {
            self.reported_exits.pop_front();
        }
        self.reported_exits.push_back(id);
    }

    /// The last few lines a container printed, on one line, shortened.
    async fn last_output(&self, id: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: EXIT_OUTPUT_LINES.to_string(),
            ..Default::default()
        };
        let docker = self.docker.clone();
        let collect = async move {
            let mut text = String::new();
            let mut logs = std::pin::pin!(docker.logs(id, Some(options)));
            while let Some(Ok(chunk)) = logs.next().await {
                text.push_str(&String::from_utf8_lossy(chunk.as_ref()));
            }
            text
        };
        let text = tokio::time::timeout(Duration::from_secs(5), collect)
            .await
            .unwrap_or_default();
        let joined = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        if joined.chars().count() > EXIT_OUTPUT_MAX_CHARS {
            let mut short: String = joined.chars().take(EXIT_OUTPUT_MAX_CHARS).collect();
            short.push('…');
            short
        } else {
            joined
        }
    }
}

/// The engine's `since` for a subscription made after a resync that starts now. It reaches
/// one second back, so nothing between listing and subscribing is lost (and a little clock
/// skew is absorbed); events seen twice are recognised by the follower.
fn events_since_now() -> String {
    let since_epoch = (SystemTime::now() - Duration::from_secs(1))
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )
}

/// The address bridge ports are published on: the node's address when it is an IP
/// address, else every address.
fn publish_ip(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => "0.0.0.0".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortBinding;

    fn docker_spec(network: DockerNetwork, cmd: Option<&str>, args: &[&str]) -> TaskSpec {
        TaskSpec {
            task_id: "prod_web.instance-3-17".into(),
            app_id: "/prod/web".into(),
            app_version: "v1".into(),
            kind: TaskKind::Docker {
                image: "example/web:1.0".into(),
                network,
                cmd: cmd.map(String::from),
                args: args.iter().map(|a| a.to_string()).collect(),
                force_pull: false,
            },
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            labels: BTreeMap::from([
                ("team".to_string(), "web".to_string()),
                (LABEL_TASK_ID.to_string(), "spoofed".to_string()),
            ]),
            ports: vec![
                PortBinding {
                    host_port: 31000,
                    container_port: Some(8080),
                    protocol: "tcp".into(),
                },
                PortBinding {
                    host_port: 31001,
                    container_port: Some(53),
                    protocol: "udp,tcp".into(),
                },
            ],
            cpus: 0.25,
            mem_mb: 64.0,
            host: "10.0.0.7".into(),
            stop_grace: Duration::from_secs(5),
        }
    }

    #[test]
    fn bridge_container_publishes_ports_and_carries_labels_and_limits() {
        let spec = docker_spec(DockerNetwork::Bridge, None, &["serve", "--port=8080"]);
        let body = container_body(&spec, Some("node-1"));
        let labels = body.labels.clone().unwrap_or_default();
        assert_eq!(labels[LABEL_TASK_ID], "prod_web.instance-3-17");
        assert_eq!(labels[LABEL_APP_ID], "/prod/web");
        assert_eq!(labels[LABEL_APP_VERSION], "v1");
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_NODE], "node-1");
        assert_eq!(labels["team"], "web");
        assert_eq!(
            body.exposed_ports,
            Some(vec!["8080/tcp".into(), "53/udp".into(), "53/tcp".into()])
        );
        let host = body.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        let bindings = host.port_bindings.unwrap_or_default();
        let binding = |key: &str| {
            bindings[key].as_ref().map(|b| {
                b.iter()
                    .map(|b| {
                        (
                            b.host_ip.clone().unwrap_or_default(),
                            b.host_port.clone().unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            binding("8080/tcp"),
            Some(vec![("10.0.0.7".into(), "31000".into())])
        );
        assert_eq!(
            binding("53/udp"),
            Some(vec![("10.0.0.7".into(), "31001".into())])
        );
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(250_000_000));
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, Some(vec!["serve".into(), "--port=8080".into()]));
        let env = body.env.unwrap_or_default();
        for expected in [
            "PORT0=31000",
            "PORT_8080=31000",
            "PORT_53=31001",
            "GREETING=hi",
        ] {
            assert!(
                env.contains(&expected.to_string()),
                "{expected} missing from {env:?}"
            );
        }
    }

    #[test]
    fn shell_command_overrides_the_entrypoint() {
        let spec = docker_spec(DockerNetwork::Host, Some("echo $PORT0"), &[]);
        let body = container_body(&spec, None);
        assert_eq!(body.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
        assert_eq!(body.cmd, Some(vec!["echo $PORT0".into()]));
        let host = body.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.port_bindings, None);
        assert_eq!(body.exposed_ports, None);
        assert!(!body.labels.unwrap_or_default().contains_key(LABEL_NODE));
    }

    #[test]
    fn specs_that_cannot_run_are_rejected() {
        let both = docker_spec(DockerNetwork::Bridge, Some("x"), &["y"]);
        assert!(validate(&both, Some("x"), &["y".into()]).is_err());
        let fine = docker_spec(DockerNetwork::Bridge, None, &[]);
        assert!(validate(&fine, None, &[]).is_ok());
        let mut bad_protocol = docker_spec(DockerNetwork::Host, None, &[]);
        bad_protocol.ports[0].protocol = "sctp".into();
        assert!(validate(&bad_protocol, None, &[]).is_err());
    }

    #[test]
    fn bridge_port_without_container_port_maps_to_the_same_port() {
        let mut spec = docker_spec(DockerNetwork::Bridge, None, &[]);
        spec.ports[0].container_port = Some(0);
        spec.ports[1].container_port = None;
        let body = container_body(&spec, None);
        assert_eq!(
            body.exposed_ports,
            Some(vec![
                "31000/tcp".into(),
                "31001/udp".into(),
                "31001/tcp".into()
            ])
        );
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        let split = |s| split_image_reference(s);
        assert_eq!(split("busybox"), ("busybox".into(), Some("latest".into())));
        assert_eq!(
            split("busybox-web:missing"),
            ("busybox-web".into(), Some("missing".into()))
        );
        assert_eq!(
            split("registry:5000/team/app"),
            ("registry:5000/team/app".into(), Some("latest".into()))
        );
        assert_eq!(
            split("registry:5000/team/app:1.2"),
            ("registry:5000/team/app".into(), Some("1.2".into()))
        );
        assert_eq!(split("app@sha256:abc"), ("app@sha256:abc".into(), None));
    }

    #[test]
    fn container_names_are_prefixed_and_sanitized() {
        assert_eq!(
            DockerDriver::container_name("prod_web.instance-3-17"),
            "atoll-prod_web.instance-3-17"
        );
        assert_eq!(DockerDriver::container_name("a/b"), "atoll-a_b");
    }
}
