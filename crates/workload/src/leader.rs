//! The control loop on the leader: keeps every app at its desired instances and version.
//!
//! Each round copies what it needs out of the state ([`ControlView`], under the store's read
//! lock), then decides without the lock ([`decide`]: tasks lost with their node, tasks to
//! start through the scheduler, extra or outdated tasks to stop within the upgrade strategy,
//! finished deployments) and commits the decisions as Raft entries. Placements are re-checked
//! at apply. `decide` is a pure function of the view, the restart backoffs, the time and a
//! source of task ids, so its arithmetic is unit-tested (`leader/tests.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use atoll_cluster::ClusterHandle;
use atoll_scheduler as scheduler;
use atoll_state::groups;
use atoll_state::{
    Allocation, AppSpec, Command, ConstraintOperator, State, Table, TaskState, Unplaced,
    WorkloadTables,
};
use tokio::time::Instant;

/// Rounds run at least this often (backoff expiry needs a clock tick).
const ROUND: Duration = Duration::from_millis(500);

/// Node attribute marking which drivers a node offers; apps are constrained to nodes
/// offering theirs.
const DRIVER_ATTRIBUTE: &str = "atoll.driver";

/// Restart delay bookkeeping of one app.
#[derive(Debug, Default, Clone, PartialEq)]
struct Backoff {
    failures: u32,
    seen_failure: Option<String>,
    until: Option<Instant>,
}

/// The restart backoff of every app, kept by the loop from round to round (not replicated:
/// a new leader starts without delays, as Marathon's does).
#[derive(Debug, Default)]
pub struct Backoffs(HashMap<String, Backoff>);

impl Backoffs {
    /// Until when new tasks of `app_id` wait, if they do.
    pub fn until(&self, app_id: &str) -> Option<Instant> {
        self.0.get(app_id).and_then(|b| b.until)
    }
}

/// What one round of the control loop reads: the workload tables (without the version
/// history) and, decided once with the state's own definitions, which nodes are down and
/// which tasks are healthy.
#[derive(Debug, Clone, Default)]
pub struct ControlView {
    /// Apps, tasks, deployments, compute nodes, failures and the queue.
    pub workload: WorkloadTables,
    /// Nodes holding tasks or offering compute that are down ([`State::node_down`]).
    pub down: BTreeSet<String>,
    /// Ids of the tasks that are healthy ([`State::task_healthy`]).
    pub healthy: BTreeSet<String>,
}

impl ControlView {
    /// Copies the view out of the state.
    pub fn capture(state: &State) -> Self {
        let tables = &state.workload;
        let workload = WorkloadTables {
            apps: tables.apps.clone(),
            history: Default::default(),
            definitions: Default::default(),
            tasks: tables.tasks.clone(),
            deployments: tables.deployments.clone(),
            compute: tables.compute.clone(),
            last_failures: tables.last_failures.clone(),
            queue: tables.queue.clone(),
            subscriptions: Default::default(),
            groups: Default::default(),
        };
        let down = tables
            .tasks
            .values()
            .map(|t| t.node.as_str())
            .chain(tables.compute.keys().map(String::as_str))
            .filter(|node| state.node_down(node))
            .map(str::to_string)
            .collect();
        let healthy = tables
            .tasks
            .values()
            .filter(|t| state.task_healthy(t))
            .map(|t| t.id.clone())
            .collect();
        ControlView {
            workload,
            down,
            healthy,
        }
    }

    fn healthy(&self, task: &Allocation) -> bool {
        self.healthy.contains(&task.id)
    }

    fn down(&self, node: &str) -> bool {
        self.down.contains(node)
    }
}

/// Current time as RFC 3339, for timestamps written into entries.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn new_task_id(app_id: &str, random: u64) -> String {
    let prefix = app_id.trim_start_matches('/').replace('/', "_");
    format!("{prefix}.instance-{random:016x}")
}

/// Runs the control loop for as long as the process lives; acts only while leading.
pub async fn run(cluster: ClusterHandle) {
    let store = cluster.store().clone();
    let mut workload = store.watch(Table::Workload);
    let mut catalog = store.watch(Table::Catalog);
    let mut backoffs = Backoffs::default();
    loop {
        tokio::select! {
            _ = workload.changed() => {}
            _ = catalog.changed() => {}
            _ = tokio::time::sleep(ROUND) => {}
        }
        if !cluster.is_leader() {
            continue;
        }
        let view = store.read(ControlView::capture);
        let commands = decide(
            &view,
            &mut backoffs,
            Instant::now(),
            &now_rfc3339(),
            &mut rand::random::<u64>,
        );
        if commands.is_empty() {
            continue;
        }
        // One round, one entry.
        let command = match <[Command; 1]>::try_from(commands) {
            Ok([one]) => one,
            Err(several) => Command::Batch(several),
        };
        if let Err(e) = cluster.write(command).await {
            tracing::warn!(error = %e, "control loop write failed");
        }
    }
}

/// One round's decisions, in the order they are applied (written as one batched entry when
/// there are several): tasks lost with their node
/// (alone: the next round sees them gone), then stops, the placement plan (when it or the
/// queue changes) and finished deployments. `now` drives the restart backoff, `at` stamps
/// the entries and `random` names new tasks.
pub fn decide(
    view: &ControlView,
    backoffs: &mut Backoffs,
    now: Instant,
    at: &str,
    random: &mut dyn FnMut() -> u64,
) -> Vec<Command> {
    let mut commands = Vec::new();
    let tables = &view.workload;

    // Tasks whose node is gone: lost (this also drops their services).
    for task in tables.tasks.values() {
        if view.down(&task.node) {
            commands.push(Command::UpdateTask {
                id: task.id.clone(),
                state: TaskState::Lost,
                message: format!("node {} lost", task.node),
                at: at.to_string(),
                services: vec![],
            });
        }
    }
    if !commands.is_empty() {
        return commands;
    }

    let mut requests = Vec::new();
    let mut stops: Vec<(String, String)> = Vec::new();
    let order = StepOrder::of(view);
    // Tasks of removed apps are stopped when their deployment step comes (dependents before
    // what they depend on); tasks of a removed app no deployment holds are stopped at once.
    for task in tables.tasks.values() {
        if task.desired_running
            && !tables.apps.contains_key(&task.app_id)
            && !order.held.contains(task.app_id.as_str())
        {
            stops.push((task.id.clone(), "app removed".into()));
        }
    }
    for app in tables.apps.values() {
        // Its deployment's step has not come: it waits for the apps it depends on.
        if order.held.contains(app.id.as_str()) {
            continue;
        }
        let backoff = backoffs.0.entry(app.id.clone()).or_default();
        // A task lost with its node is not the app's fault: replaced at once, as Nomad does.
        if let Some(failure) = tables
            .last_failures
            .get(&app.id)
            .filter(|f| f.state != TaskState::Lost)
        {
            if backoff.seen_failure.as_deref() != Some(failure.timestamp.as_str()) {
                backoff.seen_failure = Some(failure.timestamp.clone());
                backoff.failures += 1;
                let delay = (app.backoff_seconds
                    * app
                        .backoff_factor
                        .powi(backoff.failures.saturating_sub(1) as i32))
                .min(app.max_launch_delay_seconds)
                .max(0.0);
                backoff.until = Some(now + Duration::from_secs_f64(delay));
            }
        }
        let live: Vec<&Allocation> = tables
            .tasks_of(&app.id)
            .filter(|t| t.desired_running)
            .collect();
        let current: Vec<&Allocation> = live
            .iter()
            .copied()
            .filter(|t| t.app_version == app.version)
            .collect();
        let old: Vec<&Allocation> = live
            .iter()
            .copied()
            .filter(|t| t.app_version != app.version)
            .collect();
        let target = app.instances as usize;
        if current.len() >= target && current.iter().all(|t| view.healthy(t)) && !current.is_empty()
        {
            backoff.failures = 0;
        }
        let in_backoff = backoff.until.is_some_and(|until| until > now);
        let mut to_start = 0usize;
        // An upgrade lasts until the last old task is gone, not merely asked to stop: until
        // then the upgrade strategy's bounds apply.
        let upgrading = tables
            .tasks_of(&app.id)
            .any(|t| t.app_version != app.version);
        if !upgrading {
            if current.len() < target && !in_backoff {
                to_start = target - current.len();
            }
            if current.len() > target {
                let mut extra = current.clone();
                extra.sort_by_key(|t| std::cmp::Reverse(t.create_index));
                for task in extra.into_iter().take(current.len() - target) {
                    stops.push((task.id.clone(), "scaled down".into()));
                }
            }
        } else {
            let strategy = app.upgrade_strategy;
            let max_total =
                target + (target as f64 * strategy.maximum_over_capacity).floor() as usize;
            let min_healthy = (target as f64 * strategy.minimum_health_capacity).ceil() as usize;
            // Tasks still stopping occupy capacity until they are gone.
            let occupying = tables.tasks_of(&app.id).count();
            if !in_backoff {
                to_start = target
                    .saturating_sub(current.len())
                    .min(max_total.saturating_sub(occupying));
            }
            let healthy = live.iter().filter(|t| view.healthy(t)).count();
            let mut killable = healthy.saturating_sub(min_healthy);
            let mut stopped = 0;
            for task in &old {
                // An unhealthy old task costs no capacity; a healthy one only while enough
                // others stay healthy.
                if view.healthy(task) {
                    if killable == 0 {
                        continue;
                    }
                    killable -= 1;
                }
                stops.push((
                    task.id.clone(),
                    format!("upgrading to version {}", app.version),
                ));
                stopped += 1;
            }
            // Every task healthy, no room to start one and none may stop
            // (minimumHealthCapacity 1 without over-capacity): replace one at a time, as
            // Marathon does, since waiting cannot change anything.
            if to_start == 0
                && stopped == 0
                && healthy == live.len()
                && occupying == live.len()
                && !in_backoff
            {
                if let Some(task) = old.first() {
                    stops.push((
                        task.id.clone(),
                        format!("upgrading to version {}", app.version),
                    ));
                }
            }
        }
        if to_start > 0 {
            requests.push((app, to_start));
        }
    }
    // Tasks of deleted apps are already marked to stop by the delete itself.
    for (id, reason) in stops {
        commands.push(Command::StopTasks {
            ids: vec![id],
            scale: false,
            reason,
        });
    }

    // The plan, with what it could not place; the queue is written only when it changes.
    let (allocations, unplaced) = if requests.is_empty() {
        (Vec::new(), BTreeMap::new())
    } else {
        place(view, &requests, at, random)
    };
    if !allocations.is_empty() || !unplaced.iter().eq(tables.queue.iter()) {
        commands.push(Command::Place {
            allocations,
            unplaced,
        });
    }

    // Deployments that have converged.
    for deployment in tables.deployments.values() {
        let done = match tables.apps.get(&deployment.app_id) {
            _ if !deployment.steps.is_empty() => order.finished.contains(deployment.id.as_str()),
            None => tables.tasks_of(&deployment.app_id).next().is_none(),
            Some(app) => {
                let live: Vec<&Allocation> = tables
                    .tasks_of(&app.id)
                    .filter(|t| t.desired_running)
                    .collect();
                let stopping = tables.tasks_of(&app.id).any(|t| !t.desired_running);
                live.len() == app.instances as usize
                    && !stopping
                    && live
                        .iter()
                        .all(|t| t.app_version == app.version && view.healthy(t))
            }
        };
        if done {
            commands.push(Command::FinishDeployment {
                id: deployment.id.clone(),
            });
        }
    }
    commands
}

/// Where the deployments of several apps are: the apps whose step has not come yet, and
/// the deployments whose every step is done.
struct StepOrder<'a> {
    held: BTreeSet<&'a str>,
    finished: BTreeSet<&'a str>,
}

impl<'a> StepOrder<'a> {
    fn of(view: &'a ControlView) -> Self {
        let tables = &view.workload;
        let healthy = |task: &Allocation| view.healthy(task);
        let mut order = StepOrder {
            held: BTreeSet::new(),
            finished: BTreeSet::new(),
        };
        for deployment in tables.deployments.values() {
            let current = groups::current_step(tables, &deployment.steps, &healthy);
            if current == deployment.steps.len() {
                order.finished.insert(deployment.id.as_str());
            }
            for step in deployment.steps.iter().skip(current + 1) {
                order.held.extend(step.iter().map(|a| a.app_id.as_str()));
            }
        }
        order
    }
}

fn operator(op: ConstraintOperator) -> scheduler::ConstraintOperator {
    match op {
        ConstraintOperator::Unique => scheduler::ConstraintOperator::Unique,
        ConstraintOperator::Cluster => scheduler::ConstraintOperator::Cluster,
        ConstraintOperator::GroupBy => scheduler::ConstraintOperator::GroupBy,
        ConstraintOperator::Like => scheduler::ConstraintOperator::Like,
        ConstraintOperator::Unlike => scheduler::ConstraintOperator::Unlike,
        ConstraintOperator::MaxPer => scheduler::ConstraintOperator::MaxPer,
    }
}

fn place(
    view: &ControlView,
    requests: &[(&AppSpec, usize)],
    at: &str,
    random: &mut dyn FnMut() -> u64,
) -> (Vec<Allocation>, BTreeMap<String, Unplaced>) {
    let tables = &view.workload;
    let nodes: Vec<scheduler::NodeInfo> = tables
        .compute
        .values()
        .map(|c| scheduler::NodeInfo {
            name: c.node.clone(),
            cpus: c.cpus,
            mem: c.mem,
            port_ranges: vec![c.port_range],
            used_ports: c.busy_ports.iter().copied().collect::<BTreeSet<u16>>(),
            attributes: c
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(
                    c.drivers
                        .iter()
                        .map(|d| (format!("{DRIVER_ATTRIBUTE}.{d}"), "true".to_string())),
                )
                .collect(),
            eligible: !view.down(&c.node),
        })
        .collect();
    let placed: Vec<scheduler::Placed> = tables
        .tasks
        .values()
        .map(|t| scheduler::Placed {
            alloc_id: t.id.clone(),
            app_id: t.app_id.clone(),
            node: t.node.clone(),
            cpus: t.cpus,
            mem: t.mem,
            ports: t.ports.clone(),
        })
        .collect();
    let app_requests: Vec<scheduler::AppRequest> = requests
        .iter()
        .map(|(app, count)| scheduler::AppRequest {
            app_id: app.id.clone(),
            cpus: app.cpus,
            mem: app.mem,
            ports: app.ports.iter().map(|p| p.host_port).collect(),
            require_ports: app.require_ports,
            constraints: app
                .constraints
                .iter()
                .map(|c| scheduler::ConstraintSpec {
                    field: c.field.clone(),
                    operator: operator(c.operator),
                    value: c.value.clone(),
                })
                .chain(std::iter::once(scheduler::ConstraintSpec {
                    field: format!("{DRIVER_ATTRIBUTE}.{}", driver_name(app)),
                    operator: scheduler::ConstraintOperator::Cluster,
                    value: Some("true".to_string()),
                }))
                .collect(),
            count: *count as u32,
        })
        .collect();
    // Timed for the metrics only: what the plan holds never depends on the clock.
    let planning = Instant::now();
    let plan = scheduler::plan_placements(&nodes, &placed, &app_requests);
    let metrics = &atoll_metrics::node().scheduler;
    metrics.plan_duration.observe_duration(planning.elapsed());
    metrics.placements.add(plan.placements.len() as u64);
    let apps: BTreeMap<&str, &AppSpec> =
        requests.iter().map(|(a, _)| (a.id.as_str(), *a)).collect();
    let allocations = plan
        .placements
        .into_iter()
        .filter_map(|p| {
            let app = apps.get(p.app_id.as_str())?;
            Some(Allocation {
                id: new_task_id(&app.id, random()),
                app_id: app.id.clone(),
                app_version: app.version.clone(),
                node: p.node,
                ports: p.ports,
                cpus: app.cpus,
                mem: app.mem,
                desired_running: true,
                state: TaskState::Staging,
                message: String::new(),
                staged_at: at.to_string(),
                started_at: None,
                health_failures: 0,
                services: vec![],
                create_index: 0,
                modify_index: 0,
            })
        })
        .collect();
    let unplaced = plan
        .unplaced
        .into_iter()
        .map(|u| {
            let waiting = Unplaced {
                count: u.missing,
                reasons: u.reasons,
            };
            (u.app_id, waiting)
        })
        .collect();
    (allocations, unplaced)
}

/// The driver an app needs.
pub fn driver_name(app: &AppSpec) -> &'static str {
    match app.runtime {
        atoll_state::Runtime::Exec { .. } => "exec",
        atoll_state::Runtime::Docker { .. } => "docker",
    }
}

#[cfg(test)]
mod tests;
