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

use crate::drivers::{stop_grace, Drivers, Report, STOP_GRACE};
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
    /// Attributes for constraints.
    pub attributes: BTreeMap<String, String>,
    /// Dynamic port range.
    pub port_range: (u16, u16),
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
        let known: HashSet<&str> = mine.iter().map(|t| t.id.as_str()).collect();
        for task in &mine {
            if busy.contains(&task.id) {
                continue;
            }
            if task.desired_running && task.state == TaskState::Staging {
                if running.contains(&task.id) {
                    report(
                        cluster.as_ref(),
                        task,
                        TaskState::Running,
                        "re-adopted".into(),
                        apps.get(&task.id),
                        &config,
                    )
                    .await;
                    continue;
                }
                let Some(app) = apps.get(&task.id) else {
                    report(
                        cluster.as_ref(),
                        task,
                        TaskState::Failed,
                        "app version not found".into(),
                        None,
                        &config,
                    )
                    .await;
                    continue;
                };
                busy.insert(task.id.clone());
                drivers.start(app, task, &config.address, reports_tx.clone());
            } else if !task.desired_running {
                busy.insert(task.id.clone());
                drivers.stop(
                    app_runtime(apps.get(&task.id)),
                    &task.id,
                    stop_grace(apps.get(&task.id)),
                    reports_tx.clone(),
                );
            } else if task.state == TaskState::Running && !running.contains(&task.id) {
                report(
                    cluster.as_ref(),
                    task,
                    TaskState::Failed,
                    "task is no longer running".into(),
                    None,
                    &config,
                )
                .await;
            } else if task.state == TaskState::Running {
                if let Some(app) = apps.get(&task.id) {
                    let failures = health_failures(&store, task, app, &mut critical_since);
                    if failures.in_a_row != task.health_failures {
                        let command = Command::TaskHealth {
                            id: task.id.clone(),
                            failures: failures.in_a_row,
                        };
                        if let Err(e) = cluster.write(command).await {
                            tracing::debug!(task = %task.id, error = %e, "health failures not recorded");
                        }
                    }
                    if failures.exhausted {
                        tracing::warn!(task = %task.id, "health checks failed too many times; killing");
                        busy.insert(task.id.clone());
                        drivers.stop(
                            Some(&app.runtime),
                            &task.id,
                            stop_grace(Some(app)),
                            reports_tx.clone(),
                        );
                        report(
                            cluster.as_ref(),
                            task,
                            TaskState::Failed,
                            "health checks failed".into(),
                            None,
                            &config,
                        )
                        .await;
                    }
                }
            }
        }
        // Orphans: running here but no longer placed here (e.g. replaced while this node was lost).
        for id in running
            .iter()
            .filter(|id| !known.contains(id.as_str()) && !busy.contains(*id))
            .cloned()
            .collect::<Vec<_>>()
        {
            tracing::info!(task = %id, "stopping orphaned task");
            busy.insert(id.clone());
            drivers.stop(None, &id, STOP_GRACE, reports_tx.clone());
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
        (TaskState::Running, Some(app)) => services_for(app, task, &config.address),
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

/// The service instances (and checks) of a running task: one per port. A check guards the
/// service of its port; a COMMAND check, which probes no port, guards the first one, and
/// the agent runs its command in the task through the node's drivers.
pub fn services_for(
    app: &AppSpec,
    task: &Allocation,
    address: &str,
) -> Vec<(ServiceSpec, Vec<CheckSpec>)> {
    service_names(app)
        .into_iter()
        .filter_map(|(index, name, tags)| {
            let port = *task.ports.get(index)?;
            let id = format!("{}:{}", task.id, index);
            let mut meta = BTreeMap::new();
            meta.insert("marathon_app_id".to_string(), app.id.clone());
            meta.insert("marathon_task_id".to_string(), task.id.clone());
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
                    address: String::new(),
                    port,
                    meta,
                    enable_tag_override: false,
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
        use crate::drivers::{stop_grace, task_spec};
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
        let services = services_for(&app, &task(vec![31000, 31001]), "10.0.0.7");
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
}
