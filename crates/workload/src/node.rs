//! The task runner of a compute node: starts the tasks placed on this node through their
//! driver, stops the ones asked to stop (and orphans nobody asked for), reports every state
//! change through Raft, registers running tasks' services in that same entry, and kills
//! tasks whose health checks keep failing.
//!
//! After an agent restart the tasks the drivers still run (containers found by their
//! labels, exec tasks adopted from their sandbox records) are kept, not started again:
//! reported `Running` if they were still staging, stopped if the state no longer places
//! them here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use atoll_cluster::{Cluster, ClusterHandle};
use atoll_state::{
    Allocation, AppSpec, CheckDefinition, CheckSpec, CheckStatus, Command, ComputeNode,
    DockerNetwork, HealthCheckSpec, HealthProtocol, Runtime, ServiceSpec, State, Table,
    TaskCommand, TaskState,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::drivers::{stop_grace, Drivers, Report};
use crate::leader::now_rfc3339;
use crate::naming::service_names;

/// Inclusive range dynamic host ports come from (as Mesos's default).
pub use atoll_scheduler::DEFAULT_PORT_RANGE;
/// How much longer than the longest grace period a drain waits for its tasks to stop.
const DRAIN_MARGIN: Duration = Duration::from_secs(15);
/// How often host ports held by other processes are looked up.
const PORT_SCAN_EVERY: Duration = Duration::from_secs(5);
/// Rounds run at least this often (health-failure timing).
const ROUND: Duration = Duration::from_millis(500);

/// Identity and capacity of this compute node.
#[derive(Debug, Clone)]
pub struct NodeRunnerConfig {
    /// Node name.
    pub node: String,
    /// Node address (HOST, check targets).
    pub address: String,
    /// Address of the Docker engine's host, where Docker tasks publish their ports: the node
    /// address unless the engine runs elsewhere (a compute node in a container of its host's
    /// engine).
    pub docker_address: String,
    /// Attributes for constraints.
    pub attributes: BTreeMap<String, String>,
    /// Dynamic port range.
    pub port_range: (u16, u16),
}

impl NodeRunnerConfig {
    /// Where a task of `app` is reached: a Docker task on its engine's host, an exec task
    /// on this node.
    pub fn task_address(&self, app: &AppSpec) -> &str {
        match app.runtime {
            Runtime::Docker { .. } => &self.docker_address,
            Runtime::Exec { .. } => &self.address,
        }
    }
}

/// Runs the node's task runner until the process ends.
pub async fn run(cluster: ClusterHandle, config: NodeRunnerConfig, drivers: Drivers) {
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    drivers.forward_exits(reports_tx.clone());
    let mut last_port_scan = Instant::now() - PORT_SCAN_EVERY;
    let mut compute = ComputeNode {
        node: config.node.clone(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0),
        mem: total_memory_mib(),
        port_range: config.port_range,
        attributes: config.attributes.clone(),
        drivers: drivers.names(),
        busy_ports: Vec::new(),
    };
    loop {
        match cluster
            .write(Command::RegisterCompute(compute.clone()))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                tracing::info!(error = %e, "waiting to register compute resources");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // Tasks already running (re-adopted after an agent restart) are not started again.
    let mut running: HashSet<String> = drivers.running().await.into_iter().collect();
    let mut busy: HashSet<String> = HashSet::new();
    let mut critical_since: HashMap<String, Instant> = HashMap::new();
    let store = cluster.store().clone();
    let mut workload = store.watch(Table::Workload);
    let mut catalog = store.watch(Table::Catalog);
    loop {
        let (mine, apps) = store.read(|state| tasks_and_apps(state, &config.node));
        let health = running_health(&store, &mine, &apps, &running, &mut critical_since);
        let actions = decide(&mine, &apps, &running, &busy, &health);
        for action in actions {
            match action {
                Action::Report { id, state, message } => {
                    if let Some(task) = mine.iter().find(|t| t.id == id) {
                        let app = (state == TaskState::Running)
                            .then(|| apps.get(&id))
                            .flatten();
                        report(cluster.as_ref(), task, state, message, app, &config).await;
                    }
                }
                Action::Start { id } => {
                    if let (Some(task), Some(app)) =
                        (mine.iter().find(|t| t.id == id), apps.get(&id))
                    {
                        busy.insert(id.clone());
                        let host = config.task_address(app);
                        drivers.start(app, task, host, reports_tx.clone());
                    }
                }
                Action::Stop { id } => {
                    if known_task(&mine, &id) {
                        tracing::debug!(task = %id, "stopping");
                    } else {
                        tracing::info!(task = %id, "stopping orphaned task");
                    }
                    busy.insert(id.clone());
                    let app = apps.get(&id);
                    drivers.stop(app_runtime(app), &id, stop_grace(app), reports_tx.clone());
                }
                Action::RecordHealth { id, failures } => {
                    let command = Command::TaskHealth {
                        id: id.clone(),
                        failures,
                    };
                    if let Err(e) = cluster.write(command).await {
                        tracing::debug!(task = %id, error = %e, "health failures not recorded");
                    }
                }
            }
        }
        if last_port_scan.elapsed() >= PORT_SCAN_EVERY {
            last_port_scan = Instant::now();
            let ours: HashSet<u16> = mine.iter().flat_map(|t| t.ports.iter().copied()).collect();
            let busy: Vec<u16> = listening_ports()
                .into_iter()
                .filter(|p| {
                    (config.port_range.0..=config.port_range.1).contains(p) && !ours.contains(p)
                })
                .collect();
            if busy != compute.busy_ports {
                compute.busy_ports = busy;
                if let Err(e) = cluster
                    .write(Command::RegisterCompute(compute.clone()))
                    .await
                {
                    tracing::debug!(error = %e, "could not report busy ports");
                }
            }
        }
        tokio::select! {
            _ = workload.changed() => {}
            _ = catalog.changed() => {}
            _ = tokio::time::sleep(ROUND) => {}
            Some(event) = reports.recv() => {
                let task = |id: &str| store.read(|s| s.workload.tasks.get(id).cloned());
                match event {
                    Report::Started { id } => {
                        busy.remove(&id);
                        running.insert(id.clone());
                        if let Some(task) = task(&id) {
                            let app = apps.get(&id).cloned();
                            report(cluster.as_ref(), &task, TaskState::Running, String::new(), app.as_ref(), &config).await;
                        }
                    }
                    Report::StartFailed { id, message } => {
                        busy.remove(&id);
                        if let Some(task) = task(&id) {
                            report(cluster.as_ref(), &task, TaskState::Failed, message, None, &config).await;
                        }
                    }
                    Report::Stopped { id } => {
                        busy.remove(&id);
                        running.remove(&id);
                        critical_since.remove(&id);
                        if let Some(task) = task(&id) {
                            report(cluster.as_ref(), &task, TaskState::Killed, "stopped".into(), None, &config).await;
                        }
                    }
                    Report::Exited { id, success, message } => {
                        running.remove(&id);
                        critical_since.remove(&id);
                        if busy.contains(&id) {
                            continue;
                        }
                        if let Some(task) = task(&id) {
                            let state = if success { TaskState::Finished } else { TaskState::Failed };
                            report(cluster.as_ref(), &task, state, message, None, &config).await;
                        }
                    }
                }
            }
        }
    }
}

/// What the task runner does in a round, decided by [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Report the task in `state` (a running one with its app's services).
    Report {
        /// The task.
        id: String,
        /// Its new state.
        state: TaskState,
        /// Why.
        message: String,
    },
    /// Start the task through its app's driver.
    Start {
        /// The task.
        id: String,
    },
    /// Stop it (with its app's driver and kill grace when the task is known here; an
    /// orphan, with every driver and the default grace).
    Stop {
        /// The task.
        id: String,
    },
    /// Record how many health checks it failed in a row.
    RecordHealth {
        /// The task.
        id: String,
        /// Failures in a row.
        failures: u32,
    },
}

fn known_task(mine: &[Allocation], id: &str) -> bool {
    mine.iter().any(|t| t.id == id)
}

/// One round of the task runner, as a pure function of the tasks placed on this node, the
/// app version of each, the tasks the drivers run, the tasks with a start or stop in flight
/// (left alone), and the health of the running ones:
/// - staging and wanted: reported running if a driver already runs it (re-adopted), failed
///   if its app version is gone, else started;
/// - not wanted: stopped;
/// - running here by the state but not by the drivers: failed;
/// - running: its failures in a row recorded when they changed, and killed (stopped and
///   reported failed) once they are exhausted;
/// - run by a driver but not placed here (an orphan): stopped.
fn decide(
    mine: &[Allocation],
    apps: &HashMap<String, AppSpec>,
    running: &HashSet<String>,
    busy: &HashSet<String>,
    health: &HashMap<String, Failures>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let report = |id: &str, state, message: &str| Action::Report {
        id: id.to_string(),
        state,
        message: message.to_string(),
    };
    for task in mine.iter().filter(|t| !busy.contains(&t.id)) {
        let id = task.id.clone();
        if task.desired_running && task.state == TaskState::Staging {
            if running.contains(&id) {
                actions.push(report(&id, TaskState::Running, "re-adopted"));
            } else if !apps.contains_key(&id) {
                actions.push(report(&id, TaskState::Failed, "app version not found"));
            } else {
                actions.push(Action::Start { id });
            }
        } else if !task.desired_running {
            actions.push(Action::Stop { id });
        } else if task.state == TaskState::Running && !running.contains(&id) {
            actions.push(report(&id, TaskState::Failed, "task is no longer running"));
        } else if task.state == TaskState::Running {
            let Some(failures) = health.get(&id) else {
                continue;
            };
            if failures.in_a_row != task.health_failures {
                actions.push(Action::RecordHealth {
                    id: id.clone(),
                    failures: failures.in_a_row,
                });
            }
            if failures.exhausted {
                tracing::warn!(task = %id, "health checks failed too many times; killing");
                actions.push(Action::Stop { id: id.clone() });
                actions.push(report(&id, TaskState::Failed, "health checks failed"));
            }
        }
    }
    let mut orphans: Vec<&String> = running
        .iter()
        .filter(|id| !known_task(mine, id) && !busy.contains(*id))
        .collect();
    orphans.sort();
    actions.extend(
        orphans
            .into_iter()
            .map(|id| Action::Stop { id: id.clone() }),
    );
    actions
}

/// The health of each running task whose app has health checks, from the state's checks
/// and this node's record of when each went critical.
fn running_health(
    store: &atoll_cluster::Store,
    mine: &[Allocation],
    apps: &HashMap<String, AppSpec>,
    running: &HashSet<String>,
    critical_since: &mut HashMap<String, Instant>,
) -> HashMap<String, Failures> {
    mine.iter()
        .filter(|t| t.state == TaskState::Running && running.contains(&t.id))
        .filter_map(|task| {
            let app = apps.get(&task.id)?;
            Some((
                task.id.clone(),
                health_failures(store, task, app, critical_since),
            ))
        })
        .collect()
}

/// The tasks placed on `node`, and the app version each one runs, by task id.
fn tasks_and_apps(state: &State, node: &str) -> (Vec<Allocation>, HashMap<String, AppSpec>) {
    let mine: Vec<Allocation> = state.workload.tasks_on(node).cloned().collect();
    let apps: HashMap<String, AppSpec> = mine
        .iter()
        .filter_map(|t| {
            state
                .workload
                .history
                .get(&t.app_id)
                .and_then(|h| h.iter().rev().find(|a| a.version == t.app_version))
                .map(|a| (t.id.clone(), a.clone()))
        })
        .collect();
    (mine, apps)
}

/// The last step of a graceful leave: stops every task this node runs, all at once, each
/// with its app's kill grace period, and returns once they are gone (or the longest grace
/// plus a margin has passed). The node has already left the catalog, so the leader
/// replaces its tasks on other nodes.
pub async fn drain(cluster: &dyn Cluster, drivers: &Drivers, node: &str) {
    let (_, apps) = cluster.store().read(|state| tasks_and_apps(state, node));
    let running = drivers.running().await;
    if running.is_empty() {
        return;
    }
    tracing::info!(
        tasks = running.len(),
        "draining: stopping every task of this node"
    );
    let (stopped_tx, mut stopped) = mpsc::unbounded_channel();
    let mut longest = Duration::ZERO;
    for id in &running {
        let grace = stop_grace(apps.get(id));
        longest = longest.max(grace);
        drivers.stop(app_runtime(apps.get(id)), id, grace, stopped_tx.clone());
    }
    drop(stopped_tx);
    let all_stopped = async { while stopped.recv().await.is_some() {} };
    if tokio::time::timeout(longest + DRAIN_MARGIN, all_stopped)
        .await
        .is_err()
    {
        tracing::warn!("draining: some tasks did not stop in time");
    }
}

fn app_runtime(app: Option<&AppSpec>) -> Option<&Runtime> {
    app.map(|a| &a.runtime)
}

/// A running task's health as its checks have told it since its grace period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failures {
    /// Checks failed in a row (Marathon's `consecutiveFailures`): one per interval while
    /// critical, at most `maxConsecutiveFailures`.
    in_a_row: u32,
    /// Critical for `maxConsecutiveFailures` intervals: kill and replace it.
    exhausted: bool,
}

fn health_failures(
    store: &atoll_cluster::Store,
    task: &Allocation,
    app: &AppSpec,
    critical_since: &mut HashMap<String, Instant>,
) -> Failures {
    let healthy = Failures {
        in_a_row: 0,
        exhausted: false,
    };
    let Some(check) = app
        .health_checks
        .iter()
        .max_by_key(|c| c.max_consecutive_failures)
    else {
        return healthy;
    };
    let critical = store.read(|state| any_check_critical(state, task));
    if !critical {
        critical_since.remove(&task.id);
        return healthy;
    }
    let now = Instant::now();
    let since = *critical_since.entry(task.id.clone()).or_insert(now);
    // Time since the task started; when that is unknown (no or an unreadable start time, or
    // one in the future), since this node first saw it critical, so a task is never spared
    // for good by a bad timestamp.
    let started = task
        .started_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_else(|| now.duration_since(since));
    // Failures inside the grace period do not count, as in Marathon.
    if started <= Duration::from_secs(check.grace_period_seconds) {
        return healthy;
    }
    let interval = check.interval_seconds.max(1);
    let intervals = now.duration_since(since).as_secs() / interval;
    let max = check.max_consecutive_failures;
    let in_a_row = u32::try_from(intervals + 1).unwrap_or(u32::MAX);
    Failures {
        in_a_row: if max > 0 { in_a_row.min(max) } else { in_a_row },
        exhausted: max > 0 && intervals >= u64::from(max),
    }
}

fn any_check_critical(state: &State, task: &Allocation) -> bool {
    task.services.iter().any(|id| {
        state
            .checks_on_node(&task.node)
            .any(|c| &c.service_id == id && c.status == CheckStatus::Critical)
    })
}

async fn report(
    cluster: &dyn Cluster,
    task: &Allocation,
    state: TaskState,
    message: String,
    app: Option<&AppSpec>,
    config: &NodeRunnerConfig,
) {
    let services = match (state, app) {
        (TaskState::Running, Some(app)) => {
            services_for(app, task, config.task_address(app), &config.address)
        }
        _ => Vec::new(),
    };
    let command = Command::UpdateTask {
        id: task.id.clone(),
        state,
        message,
        at: now_rfc3339(),
        services,
    };
    if let Err(e) = cluster.write(command).await {
        tracing::warn!(task = %task.id, error = %e, "could not report task state");
    }
}

/// The service instances (and checks) of a running task at `address`: one per port. A
/// check guards the service of its port; a COMMAND check, which probes no port, guards the
/// first one, and the agent runs its command in the task through the node's drivers. An
/// instance names its address only when it is not the node's (`node_address`).
pub fn services_for(
    app: &AppSpec,
    task: &Allocation,
    address: &str,
    node_address: &str,
) -> Vec<(ServiceSpec, Vec<CheckSpec>)> {
    let service_address = if address == node_address {
        String::new()
    } else {
        address.to_string()
    };
    service_names(app)
        .into_iter()
        .filter_map(|(index, name, tags)| {
            let port = *task.ports.get(index)?;
            let id = format!("{}:{}", task.id, index);
            let mut meta = BTreeMap::new();
            meta.insert(atoll_state::APP_ID_META.to_string(), app.id.clone());
            meta.insert(atoll_state::TASK_ID_META.to_string(), task.id.clone());
            let checks = app
                .health_checks
                .iter()
                .enumerate()
                .filter(|(_, c)| guarded_port(c) == index)
                .filter_map(|(n, c)| {
                    let mut definition = CheckDefinition {
                        interval_ms: Some(c.interval_seconds.max(1) * 1000),
                        timeout_ms: Some(c.timeout_seconds.max(1) * 1000),
                        interval_text: format!("{}s", c.interval_seconds.max(1)),
                        timeout_text: format!("{}s", c.timeout_seconds.max(1)),
                        ..Default::default()
                    };
                    match c.protocol {
                        HealthProtocol::Http => {
                            definition.http = Some(format!("http://{address}:{port}{}", c.path))
                        }
                        HealthProtocol::Tcp => definition.tcp = Some(format!("{address}:{port}")),
                        HealthProtocol::Command => {
                            definition.task_command = Some(TaskCommand {
                                task_id: task.id.clone(),
                                // Validated when the app was submitted.
                                command: c.command.clone()?,
                            })
                        }
                    }
                    Some(CheckSpec {
                        check_id: format!("marathon:{}:{n}", task.id),
                        name: format!("Marathon health check {n} of {}", app.id),
                        status: None,
                        notes: String::new(),
                        output: String::new(),
                        service_id: id.clone(),
                        definition,
                    })
                })
                .collect();
            Some((
                ServiceSpec {
                    id,
                    name,
                    tags,
                    address: service_address.clone(),
                    port,
                    meta,
                    enable_tag_override: false,
                    tagged_addresses: Default::default(),
                },
                checks,
            ))
        })
        .collect()
}

/// The port index whose service a health check guards.
fn guarded_port(check: &HealthCheckSpec) -> usize {
    match check.protocol {
        HealthProtocol::Command => 0,
        HealthProtocol::Http | HealthProtocol::Tcp => check.port_index,
    }
}

/// Whether a docker app publishes ports on the host (bridge) or uses the host's network.
pub fn uses_bridge(app: &AppSpec) -> bool {
    matches!(
        app.runtime,
        Runtime::Docker {
            network: DockerNetwork::Bridge,
            ..
        }
    )
}

fn total_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0).floor())
        .unwrap_or(1024.0)
}

/// TCP and UDP ports with a listening or bound socket on this host (from /proc/net).
fn listening_ports() -> Vec<u16> {
    let mut ports = std::collections::BTreeSet::new();
    for (file, listening_state) in [
        ("tcp", Some("0A")),
        ("tcp6", Some("0A")),
        ("udp", None),
        ("udp6", None),
    ] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            if listening_state.is_some_and(|s| s != *state) {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use atoll_state::{PortSpec, UpgradeStrategy};

    use super::*;

    fn check(
        protocol: HealthProtocol,
        port_index: usize,
        command: Option<&str>,
    ) -> HealthCheckSpec {
        HealthCheckSpec {
            protocol,
            path: "/health".into(),
            port_index,
            command: command.map(str::to_string),
            grace_period_seconds: 5,
            interval_seconds: 2,
            timeout_seconds: 3,
            max_consecutive_failures: 3,
        }
    }

    fn app(ports: usize, health_checks: Vec<HealthCheckSpec>) -> AppSpec {
        AppSpec {
            id: "/prod/web".into(),
            version: "v1".into(),
            runtime: Runtime::Exec {
                cmd: "serve".into(),
            },
            cpus: 0.1,
            mem: 16.0,
            disk: 0.0,
            instances: 1,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: (0..ports)
                .map(|_| PortSpec {
                    host_port: 0,
                    container_port: None,
                    protocol: "tcp".into(),
                    name: None,
                })
                .collect(),
            require_ports: false,
            constraints: vec![],
            health_checks,
            upgrade_strategy: UpgradeStrategy {
                minimum_health_capacity: 1.0,
                maximum_over_capacity: 1.0,
            },
            backoff_seconds: 1.0,
            backoff_factor: 1.15,
            max_launch_delay_seconds: 300.0,
            kill_grace_seconds: None,
            dependencies: Vec::new(),
            legacy_definition: serde_json::Value::Null,
        }
    }

    fn task(ports: Vec<u16>) -> Allocation {
        Allocation {
            id: "prod_web.instance-1".into(),
            app_id: "/prod/web".into(),
            app_version: "v1".into(),
            node: "n1".into(),
            ports,
            cpus: 0.1,
            mem: 16.0,
            desired_running: true,
            state: TaskState::Running,
            message: String::new(),
            staged_at: String::new(),
            started_at: None,
            health_failures: 0,
            services: vec![],
            create_index: 1,
            modify_index: 1,
        }
    }

    #[test]
    fn the_kill_grace_period_is_the_apps_for_every_stop() {
        use crate::drivers::{stop_grace, task_spec, STOP_GRACE};
        let mut web = app(0, vec![]);
        assert_eq!(stop_grace(Some(&web)), STOP_GRACE);
        assert_eq!(stop_grace(None), STOP_GRACE);
        web.kill_grace_seconds = Some(30.0);
        assert_eq!(stop_grace(Some(&web)), Duration::from_secs(30));
        // The container's own stop timeout is the same as a stop the platform asks for.
        assert_eq!(
            task_spec(&web, &task(vec![]), "h").stop_grace,
            Duration::from_secs(30)
        );
        // Bounded, and never a panic on a huge value.
        web.kill_grace_seconds = Some(1e300);
        assert_eq!(stop_grace(Some(&web)), Duration::from_secs(24 * 3600));
        // An app stored before the typed field carries it in its definition only.
        web.kill_grace_seconds = None;
        web.legacy_definition = serde_json::json!({ "taskKillGracePeriodSeconds": 12 });
        assert_eq!(stop_grace(Some(&web)), Duration::from_secs(12));
    }

    #[test]
    fn command_checks_run_in_the_task_and_guard_its_first_service() {
        let app = app(
            2,
            vec![
                check(HealthProtocol::Http, 1, None),
                check(HealthProtocol::Command, 1, Some("test -f healthy")),
            ],
        );
        let services = services_for(&app, &task(vec![31000, 31001]), "10.0.0.7", "10.0.0.7");
        assert_eq!(services.len(), 2);
        let (first, first_checks) = &services[0];
        assert_eq!(first.id, "prod_web.instance-1:0");
        assert_eq!(first_checks.len(), 1);
        let command = &first_checks[0];
        assert_eq!(command.check_id, "marathon:prod_web.instance-1:1");
        assert_eq!(command.service_id, "prod_web.instance-1:0");
        assert_eq!(
            command.definition.task_command,
            Some(TaskCommand {
                task_id: "prod_web.instance-1".into(),
                command: "test -f healthy".into(),
            })
        );
        assert_eq!(command.definition.interval_ms, Some(2000));
        assert_eq!(command.definition.timeout_ms, Some(3000));
        assert_eq!(command.definition.http, None);
        assert_eq!(command.definition.kind().consul_type(), "script");

        let (_, second_checks) = &services[1];
        assert_eq!(second_checks.len(), 1);
        assert_eq!(
            second_checks[0].definition.http.as_deref(),
            Some("http://10.0.0.7:31001/health")
        );
        assert_eq!(second_checks[0].definition.task_command, None);
    }

    #[test]
    fn docker_tasks_on_an_engine_elsewhere_are_advertised_and_probed_there() {
        let config = NodeRunnerConfig {
            node: "compute1".into(),
            address: "172.28.0.21".into(),
            docker_address: "172.28.0.1".into(),
            attributes: BTreeMap::new(),
            port_range: DEFAULT_PORT_RANGE,
        };
        let mut web = app(1, vec![check(HealthProtocol::Tcp, 0, None)]);
        assert_eq!(config.task_address(&web), "172.28.0.21");
        let exec = services_for(
            &web,
            &task(vec![31000]),
            config.task_address(&web),
            "172.28.0.21",
        );
        assert_eq!(
            exec[0].0.address, "",
            "an exec task is at its node's address"
        );

        web.runtime = Runtime::Docker {
            image: "web:1".into(),
            network: DockerNetwork::Bridge,
            cmd: None,
            args: vec![],
            force_pull: false,
        };
        let host = config.task_address(&web);
        assert_eq!(host, "172.28.0.1");
        let docker = services_for(&web, &task(vec![31000]), host, &config.address);
        let (service, checks) = &docker[0];
        assert_eq!(service.address, "172.28.0.1");
        assert_eq!(
            checks[0].definition.tcp.as_deref(),
            Some("172.28.0.1:31000")
        );
    }

    fn placed(id: &str, state: TaskState, desired_running: bool) -> Allocation {
        let mut task = task(vec![]);
        task.id = id.into();
        task.state = state;
        task.desired_running = desired_running;
        task
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    fn reported(id: &str, state: TaskState, message: &str) -> Action {
        Action::Report {
            id: id.into(),
            state,
            message: message.into(),
        }
    }

    #[test]
    fn a_round_starts_adopts_stops_and_fails_what_the_state_and_drivers_say() {
        let mine = vec![
            placed("new", TaskState::Staging, true),
            placed("adopted", TaskState::Staging, true),
            placed("no-app", TaskState::Staging, true),
            placed("unwanted", TaskState::Running, false),
            placed("vanished", TaskState::Running, true),
            placed("in-flight", TaskState::Staging, true),
        ];
        let apps: HashMap<String, AppSpec> =
            ["new", "adopted", "unwanted", "vanished", "in-flight"]
                .iter()
                .map(|id| (id.to_string(), app(0, vec![])))
                .collect();
        let running = set(&["adopted", "unwanted", "orphan-b", "orphan-a", "busy-orphan"]);
        let busy = set(&["in-flight", "busy-orphan"]);
        let actions = decide(&mine, &apps, &running, &busy, &HashMap::new());
        assert_eq!(
            actions,
            vec![
                Action::Start { id: "new".into() },
                reported("adopted", TaskState::Running, "re-adopted"),
                reported("no-app", TaskState::Failed, "app version not found"),
                Action::Stop {
                    id: "unwanted".into()
                },
                reported("vanished", TaskState::Failed, "task is no longer running"),
                Action::Stop {
                    id: "orphan-a".into()
                },
                Action::Stop {
                    id: "orphan-b".into()
                },
            ]
        );
    }

    #[test]
    fn a_round_records_health_failures_and_kills_once_they_are_exhausted() {
        let mut healthy = placed("ok", TaskState::Running, true);
        healthy.health_failures = 0;
        let mut failing = placed("failing", TaskState::Running, true);
        failing.health_failures = 1;
        let mut exhausted = placed("exhausted", TaskState::Running, true);
        exhausted.health_failures = 3;
        let mine = vec![healthy, failing, exhausted];
        let apps: HashMap<String, AppSpec> = ["ok", "failing", "exhausted"]
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    app(1, vec![check(HealthProtocol::Http, 0, None)]),
                )
            })
            .collect();
        let running = set(&["ok", "failing", "exhausted"]);
        let failures = |in_a_row, exhausted| Failures {
            in_a_row,
            exhausted,
        };
        let health: HashMap<String, Failures> = [
            ("ok".to_string(), failures(0, false)),
            ("failing".to_string(), failures(2, false)),
            ("exhausted".to_string(), failures(3, true)),
        ]
        .into_iter()
        .collect();
        let actions = decide(&mine, &apps, &running, &HashSet::new(), &health);
        assert_eq!(
            actions,
            vec![
                Action::RecordHealth {
                    id: "failing".into(),
                    failures: 2
                },
                Action::Stop {
                    id: "exhausted".into()
                },
                reported("exhausted", TaskState::Failed, "health checks failed"),
            ]
        );
    }
}
