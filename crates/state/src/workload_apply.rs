//! Applying workload commands: apps, task placement and lifecycle, deployments. Task state
//! and service registration change in the same entry, so a task is in DNS exactly while it
//! runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::command::{Command, GroupUpdate, Outcome, Rejection};
use crate::groups::{self, DependencyGraph};
use crate::state::State;
use crate::table::{Grouped, Rows};
use crate::workload::{
    Allocation, AppSpec, ComputeNode, Deployment, DeploymentAction, GroupSpec, TaskFailure,
    TaskState, Unplaced, FIT_EPSILON, STOP_APPLICATION,
};

/// Old versions kept per app for `/v2/apps/{id}/versions`.
pub const VERSIONS_KEPT: usize = 20;

/// The workload tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadTables {
    /// Current version of each app.
    pub apps: Rows<String, AppSpec>,
    /// Earlier versions of each app, oldest first (the current one included).
    pub history: Rows<String, Vec<AppSpec>>,
    /// The Marathon definition of each kept version, by app id then version: the API's copy
    /// for echoing it back. Nothing here reads it; it lives and goes with its version.
    #[serde(default)]
    pub definitions: Grouped<String, String, serde_json::Value>,
    /// Live tasks by id (terminal tasks are removed when reported).
    pub tasks: Rows<String, Allocation>,
    /// Deployments in progress.
    pub deployments: Rows<String, Deployment>,
    /// Compute nodes and what they offer.
    pub compute: Rows<String, ComputeNode>,
    /// Last task failure per app.
    pub last_failures: Rows<String, TaskFailure>,
    /// Instances the scheduler could not place at its last try, per app, with its reasons.
    #[serde(default)]
    pub queue: Rows<String, Unplaced>,
    /// Marathon's event subscribers: callback URL to when it was registered.
    #[serde(default)]
    pub subscriptions: Rows<String, String>,
    /// Groups created explicitly (`/v2/groups`), by id; groups above apps exist without a
    /// record.
    #[serde(default)]
    pub groups: Rows<String, GroupSpec>,
}

impl WorkloadTables {
    /// Tasks of one app.
    pub fn tasks_of<'a>(&'a self, app_id: &'a str) -> impl Iterator<Item = &'a Allocation> + 'a {
        self.tasks.values().filter(move |t| t.app_id == app_id)
    }

    /// Tasks placed on one node.
    pub fn tasks_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Allocation> + 'a {
        self.tasks.values().filter(move |t| t.node == node)
    }

    /// Moves the definitions an older release stored inside its apps (current and kept
    /// versions) to the definitions table, as a snapshot of that release is loaded.
    pub(crate) fn move_legacy_definitions(&mut self) {
        let ids: Vec<String> = self
            .apps
            .keys()
            .chain(self.history.keys())
            .cloned()
            .collect();
        for id in ids {
            if let Some(app) = self.apps.get_mut(&id) {
                let definition = app.take_legacy_definition();
                let version = app.version.clone();
                if !definition.is_null() {
                    self.definitions.insert(id.clone(), version, definition);
                }
            }
            let mut moved = Vec::new();
            if let Some(history) = self.history.get_mut(&id) {
                for kept in history.iter_mut() {
                    let definition = kept.take_legacy_definition();
                    if !definition.is_null() {
                        moved.push((kept.version.clone(), definition));
                    }
                }
            }
            for (version, definition) in moved {
                if self.definitions.row(&id, &version).is_none() {
                    self.definitions.insert(id.clone(), version, definition);
                }
            }
        }
    }

    /// Moves the rows changed since the last drain into `changes`.
    pub(crate) fn drain_into(&mut self, changes: &mut Vec<Change>) {
        changes.extend(self.apps.drain().into_iter().map(Change::App));
        changes.extend(self.history.drain().into_iter().map(Change::AppHistory));
        changes.extend(self.definitions.drain().into_iter().map(Change::Definition));
        changes.extend(self.tasks.drain().into_iter().map(Change::Task));
        changes.extend(self.deployments.drain().into_iter().map(Change::Deployment));
        changes.extend(self.compute.drain().into_iter().map(Change::ComputeNode));
        changes.extend(
            self.last_failures
                .drain()
                .into_iter()
                .map(Change::LastFailure),
        );
        changes.extend(self.queue.drain().into_iter().map(Change::Queue));
        changes.extend(
            self.subscriptions
                .drain()
                .into_iter()
                .map(Change::Subscription),
        );
        changes.extend(self.groups.drain().into_iter().map(Change::Group));
    }

    /// Replays one changed workload row; other tables' changes are not for these tables.
    pub(crate) fn replay(&mut self, change: Change) {
        match change {
            Change::App(row) => self.apps.put_row(row.key, row.new),
            Change::AppHistory(row) => self.history.put_row(row.key, row.new),
            Change::Definition(row) => self.definitions.put_row(row.key, row.new),
            Change::Task(row) => self.tasks.put_row(row.key, row.new),
            Change::Deployment(row) => self.deployments.put_row(row.key, row.new),
            Change::ComputeNode(row) => self.compute.put_row(row.key, row.new),
            Change::LastFailure(row) => self.last_failures.put_row(row.key, row.new),
            Change::Queue(row) => self.queue.put_row(row.key, row.new),
            Change::Subscription(row) => self.subscriptions.put_row(row.key, row.new),
            Change::Group(row) => self.groups.put_row(row.key, row.new),
            Change::Node(_)
            | Change::Service(_)
            | Change::Check(_)
            | Change::ServiceIndex(_)
            | Change::Kv(_)
            | Change::KvTombstone(_)
            | Change::KvReaped { .. }
            | Change::Session(_)
            | Change::Event(_)
            | Change::Query(_)
            | Change::AclToken(_)
            | Change::AclPolicy(_)
            | Change::AclBootstrapped { .. } => {}
        }
    }
}

impl State {
    pub(crate) fn apply_workload(&mut self, index: u64, command: &Command) -> Outcome {
        match command {
            Command::PutApp {
                app,
                deployment,
                definition,
            } => self.put_app(index, app, deployment.as_ref(), definition),
            Command::CreateApp {
                app,
                deployment,
                definition,
            } => {
                if self.workload.apps.contains_key(&app.id) {
                    Outcome::Rejected(Rejection::Conflict(format!(
                        "An app with id [{}] already exists.",
                        app.id
                    )))
                } else {
                    self.put_app(index, app, deployment.as_ref(), definition)
                }
            }
            Command::DeleteApp { app_id, deployment } => {
                self.delete_app(index, app_id, deployment.as_ref())
            }
            Command::RegisterCompute(node) => {
                if self.workload.compute.get(&node.node) != Some(node) {
                    self.workload
                        .compute
                        .insert(node.node.clone(), node.clone());
                }
                Outcome::Done
            }
            Command::Place {
                allocations,
                unplaced,
            } => self.place(index, allocations, unplaced),
            Command::StopTasks { ids, scale, reason } => self.stop_tasks(ids, *scale, reason),
            Command::UpdateTask {
                id,
                state,
                message,
                at,
                services,
            } => self.update_task(index, id, *state, message, at, services),
            Command::TaskHealth { id, failures } => self.task_health(index, id, *failures),
            Command::FinishDeployment { id } => {
                self.workload.deployments.remove(id);
                Outcome::Done
            }
            Command::Subscribe { callback_url, at } => {
                if !self.workload.subscriptions.contains_key(callback_url) {
                    self.workload
                        .subscriptions
                        .insert(callback_url.clone(), at.clone());
                }
                Outcome::Done
            }
            Command::Unsubscribe { callback_url } => {
                self.workload.subscriptions.remove(callback_url);
                Outcome::Done
            }
            Command::PutGroup(update) => self.put_group(index, update),
            Command::DeleteGroup { id, deployment } => {
                self.delete_group(index, id, deployment.as_ref())
            }
            _ => Outcome::Done,
        }
    }

    fn put_app(
        &mut self,
        index: u64,
        app: &AppSpec,
        deployment: Option<&Deployment>,
        definition: &serde_json::Value,
    ) -> Outcome {
        if app.id.is_empty() || !app.id.starts_with('/') {
            return Outcome::Rejected(Rejection::Invalid(format!("invalid app id {:?}", app.id)));
        }
        if !app.dependencies.is_empty() {
            let mut graph = DependencyGraph::of(&self.workload);
            graph.apps.insert(app.id.clone(), app.dependencies.clone());
            if let Err(e) = graph
                .check_known([app.id.as_str()])
                .and(graph.levels().map(drop))
            {
                return Outcome::Rejected(Rejection::Invalid(e.to_string()));
            }
        }
        self.store_app(app, definition);
        // A new deployment of an app supersedes the one in progress.
        self.workload.deployments.retain(|_, d| !d.affects(&app.id));
        self.start_deployment(index, deployment);
        Outcome::Done
    }

    /// Writes an app's version, its definition and its kept history.
    fn store_app(&mut self, app: &AppSpec, definition: &serde_json::Value) {
        // An entry written by an older release carries the definition inside the app.
        let mut app = app.clone();
        let legacy = app.take_legacy_definition();
        let definition = if definition.is_null() {
            legacy
        } else {
            definition.clone()
        };
        if !definition.is_null() {
            self.workload
                .definitions
                .insert(app.id.clone(), app.version.clone(), definition);
        }
        let app = &app;
        self.workload.apps.insert(app.id.clone(), app.clone());
        let mut history = self
            .workload
            .history
            .get(&app.id)
            .cloned()
            .unwrap_or_default();
        history.retain(|old| old.version != app.version);
        history.push(app.clone());
        if history.len() > VERSIONS_KEPT {
            let excess = history.len() - VERSIONS_KEPT;
            history.drain(..excess);
        }
        // Definitions go with the versions they belong to.
        let dropped: Vec<String> = self
            .workload
            .definitions
            .get(&app.id)
            .into_iter()
            .flat_map(|versions| versions.keys())
            .filter(|version| !history.iter().any(|kept| &kept.version == *version))
            .cloned()
            .collect();
        for version in dropped {
            self.workload.definitions.remove(&app.id, &version);
        }
        self.workload.history.insert(app.id.clone(), history);
    }

    /// Records a deployment as started at `index`.
    fn start_deployment(&mut self, index: u64, deployment: Option<&Deployment>) {
        if let Some(deployment) = deployment {
            let mut deployment = deployment.clone();
            deployment.create_index = index;
            self.workload
                .deployments
                .insert(deployment.id.clone(), deployment);
        }
    }

    /// Drops an app's rows (not its tasks).
    fn drop_app_rows(&mut self, app_id: &str) -> bool {
        if self.workload.apps.remove(app_id).is_none() {
            return false;
        }
        self.workload.history.remove(app_id);
        self.workload.definitions.remove_group(&app_id.to_string());
        self.workload.last_failures.remove(app_id);
        self.workload.queue.remove(app_id);
        true
    }

    /// Writes a group tree in one deployment (see [`Command::PutGroup`]). Apps a removal
    /// drops keep their tasks: the control loop stops them when the deployment reaches
    /// their step, so an app stops before the apps it depends on.
    fn put_group(&mut self, index: u64, update: &GroupUpdate) -> Outcome {
        let invalid = |message: String| Outcome::Rejected(Rejection::Invalid(message));
        let before = DependencyGraph::of(&self.workload);
        if update.create && before.group_exists(&update.id) {
            return Outcome::Rejected(Rejection::Conflict(format!(
                "Group {} is already created. Use PUT to change this group.",
                update.id
            )));
        }
        let written = update
            .groups
            .iter()
            .map(|g| g.id.as_str())
            .chain(update.apps.iter().map(|(a, _)| a.id.as_str()));
        for id in written
            .clone()
            .chain(update.remove.iter().map(String::as_str))
        {
            if !id.starts_with('/') || !groups::is_under(id, &update.id) {
                return invalid(format!("'{id}' is not below group '{}'", update.id));
            }
        }
        let mut after = before.clone();
        for removed in &update.remove {
            after.apps.retain(|id, _| !groups::is_under(id, removed));
            after.groups.retain(|id, _| !groups::is_under(id, removed));
        }
        for group in &update.groups {
            after
                .groups
                .insert(group.id.clone(), group.dependencies.clone());
        }
        for (app, _) in &update.apps {
            after.apps.insert(app.id.clone(), app.dependencies.clone());
        }
        for (app, _) in &update.apps {
            if after.group_exists(&app.id) {
                return invalid(format!(
                    "'{}' is both an app and a group; ids of apps and groups must differ",
                    app.id
                ));
            }
        }
        if let Err(e) = after.check_known(written) {
            return invalid(e.to_string());
        }
        let levels = match after.levels() {
            Ok(levels) => levels,
            Err(e) => return invalid(e.to_string()),
        };
        let stop_levels = before.levels().unwrap_or_default();

        let action = |action: &str, app_id: &str| DeploymentAction {
            action: action.to_string(),
            app_id: app_id.to_string(),
        };
        let mut actions = Vec::new();
        for app_id in before.apps.keys() {
            if !after.apps.contains_key(app_id) {
                actions.push(action(STOP_APPLICATION, app_id));
            }
        }
        for (app, _) in &update.apps {
            let name = match self.workload.apps.get(&app.id) {
                None => Some("StartApplication"),
                Some(current) if current.version != app.version => Some("RestartApplication"),
                Some(current) if current.instances != app.instances => Some("ScaleApplication"),
                Some(_) => None,
            };
            if let Some(name) = name {
                actions.push(action(name, &app.id));
            }
        }

        for action in actions.iter().filter(|a| a.action == STOP_APPLICATION) {
            self.drop_app_rows(&action.app_id);
        }
        let dropped: Vec<String> = self
            .workload
            .groups
            .keys()
            .filter(|id| !after.groups.contains_key(*id))
            .cloned()
            .collect();
        for id in dropped {
            self.workload.groups.remove(&id);
        }
        for group in &update.groups {
            if self.workload.groups.get(&group.id) != Some(group) {
                self.workload.groups.insert(group.id.clone(), group.clone());
            }
        }
        for (app, definition) in &update.apps {
            if self.workload.apps.get(&app.id) != Some(app) {
                self.store_app(app, definition);
            }
        }
        // A deployment of an app supersedes the ones in progress for it.
        self.workload
            .deployments
            .retain(|_, d| !actions.iter().any(|a| d.affects(&a.app_id)));
        if actions.is_empty() {
            return Outcome::Done;
        }
        let deployment = update.deployment.clone().map(|mut deployment| {
            deployment.steps = groups::order_steps(actions, &stop_levels, &levels);
            deployment
        });
        self.start_deployment(index, deployment.as_ref());
        Outcome::Done
    }

    fn delete_group(&mut self, index: u64, id: &str, deployment: Option<&Deployment>) -> Outcome {
        if !DependencyGraph::of(&self.workload).group_exists(id) {
            return Outcome::Rejected(Rejection::NotFound(format!("Group '{id}' does not exist")));
        }
        let update = GroupUpdate {
            id: id.to_string(),
            create: false,
            groups: Vec::new(),
            apps: Vec::new(),
            remove: vec![id.to_string()],
            deployment: deployment.cloned(),
        };
        self.put_group(index, &update)
    }

    fn delete_app(&mut self, index: u64, app_id: &str, deployment: Option<&Deployment>) -> Outcome {
        if !self.drop_app_rows(app_id) {
            return Outcome::Rejected(Rejection::NotFound(format!(
                "App '{app_id}' does not exist"
            )));
        }
        self.workload.deployments.retain(|_, d| !d.affects(app_id));
        let ids: Vec<String> = self
            .workload
            .tasks_of(app_id)
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            if let Some(task) = self.workload.tasks.get_mut(&id) {
                task.desired_running = false;
                task.modify_index = index;
            }
        }
        self.start_deployment(index, deployment);
        Outcome::Done
    }

    /// Whether `allocation` still fits its node: the node offers compute, is not failed, and
    /// has the cpus, memory and ports free.
    fn fits(&self, allocation: &Allocation, pending: &[Allocation]) -> bool {
        let Some(node) = self.workload.compute.get(&allocation.node) else {
            return false;
        };
        if self.node_failed(&allocation.node) {
            return false;
        }
        let placed = self
            .workload
            .tasks_on(&allocation.node)
            .chain(pending.iter().filter(|p| p.node == allocation.node));
        let mut cpus = allocation.cpus;
        let mut mem = allocation.mem;
        let mut ports = BTreeSet::new();
        for task in placed {
            cpus += task.cpus;
            mem += task.mem;
            ports.extend(task.ports.iter().copied());
        }
        // A port may be asked for once, and only if no other task on the node holds it.
        let mut asked = BTreeSet::new();
        cpus <= node.cpus + FIT_EPSILON
            && mem <= node.mem + FIT_EPSILON
            && allocation
                .ports
                .iter()
                .all(|p| asked.insert(*p) && !ports.contains(p))
    }

    fn task_health(&mut self, index: u64, id: &str, failures: u32) -> Outcome {
        if let Some(task) = self.workload.tasks.get_mut(id) {
            if task.health_failures != failures {
                task.health_failures = failures;
                task.modify_index = index;
            }
        }
        Outcome::Done
    }

    fn place(
        &mut self,
        index: u64,
        allocations: &[Allocation],
        unplaced: &BTreeMap<String, Unplaced>,
    ) -> Outcome {
        // The queue becomes the plan's, for the apps that still exist.
        let queue: BTreeMap<String, Unplaced> = unplaced
            .iter()
            .filter(|(app_id, _)| self.workload.apps.contains_key(*app_id))
            .map(|(app_id, waiting)| (app_id.clone(), waiting.clone()))
            .collect();
        self.workload
            .queue
            .retain(|app_id, _| queue.contains_key(app_id));
        for (app_id, waiting) in queue {
            if self.workload.queue.get(&app_id) != Some(&waiting) {
                self.workload.queue.insert(app_id, waiting);
            }
        }
        let mut accepted: Vec<Allocation> = Vec::new();
        for allocation in allocations {
            let current = self
                .workload
                .apps
                .get(&allocation.app_id)
                .map(|a| a.version.as_str());
            if current != Some(allocation.app_version.as_str())
                || self.workload.tasks.contains_key(&allocation.id)
            {
                continue;
            }
            if self.fits(allocation, &accepted) {
                accepted.push(allocation.clone());
            }
        }
        for mut allocation in accepted {
            allocation.create_index = index;
            allocation.modify_index = index;
            allocation.state = TaskState::Staging;
            allocation.desired_running = true;
            allocation.services.clear();
            self.workload
                .tasks
                .insert(allocation.id.clone(), allocation);
        }
        Outcome::Done
    }

    fn stop_tasks(&mut self, ids: &[String], scale: bool, reason: &str) -> Outcome {
        let mut found = 0;
        for id in ids {
            let Some(task) = self.workload.tasks.get(id) else {
                continue;
            };
            found += 1;
            if !task.desired_running {
                continue;
            }
            let app_id = task.app_id.clone();
            if let Some(task) = self.workload.tasks.get_mut(id) {
                task.desired_running = false;
                task.message = reason.to_string();
            }
            if scale {
                if let Some(app) = self.workload.apps.get_mut(&app_id) {
                    app.instances = app.instances.saturating_sub(1);
                }
            }
        }
        if found == 0 {
            return Outcome::Rejected(Rejection::NotFound(format!("Task(s) {ids:?} not found")));
        }
        Outcome::Done
    }

    fn update_task(
        &mut self,
        index: u64,
        id: &str,
        state: TaskState,
        message: &str,
        at: &str,
        services: &[(crate::command::ServiceSpec, Vec<crate::command::CheckSpec>)],
    ) -> Outcome {
        let Some(task) = self.workload.tasks.get(id).cloned() else {
            // A late report about a task already gone: nothing to do.
            return Outcome::Done;
        };
        if task.state == state && task.message == message {
            return Outcome::Done;
        }
        if state.is_terminal() {
            self.deregister_task_services(index, &task.node, &task.services);
            if matches!(state, TaskState::Failed | TaskState::Lost)
                || (state == TaskState::Finished && task.desired_running)
            {
                self.workload.last_failures.insert(
                    task.app_id.clone(),
                    TaskFailure {
                        task_id: task.id.clone(),
                        state,
                        message: message.to_string(),
                        host: task.node.clone(),
                        timestamp: at.to_string(),
                        version: task.app_version.clone(),
                    },
                );
            }
            self.workload.tasks.remove(id);
            return Outcome::Done;
        }
        let mut updated = task.clone();
        if state == TaskState::Running
            && task.state != TaskState::Running
            && task.desired_running
            && self.nodes.contains_key(&task.node)
        {
            self.register_task_services(index, &task.node, services);
            updated
                .services
                .extend(services.iter().map(|(service, _)| service.id.clone()));
            updated.started_at = Some(at.to_string());
        }
        updated.state = state;
        updated.message = message.to_string();
        updated.modify_index = index;
        self.workload.tasks.insert(id.to_string(), updated);
        Outcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Runtime, UpgradeStrategy};

    fn app(id: &str) -> AppSpec {
        AppSpec {
            id: id.into(),
            version: "v1".into(),
            runtime: Runtime::Exec {
                cmd: "sleep 1000".into(),
            },
            cpus: 0.1,
            mem: 16.0,
            disk: 0.0,
            instances: 1,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            require_ports: false,
            constraints: Vec::new(),
            health_checks: Vec::new(),
            upgrade_strategy: UpgradeStrategy {
                minimum_health_capacity: 1.0,
                maximum_over_capacity: 1.0,
            },
            backoff_seconds: 1.0,
            backoff_factor: 1.15,
            max_launch_delay_seconds: 3600.0,
            kill_grace_seconds: None,
            dependencies: Vec::new(),
            legacy_definition: serde_json::Value::Null,
        }
    }

    fn waiting(count: u32, reason: &str) -> Unplaced {
        Unplaced {
            count,
            reasons: vec![reason.to_string()],
        }
    }

    fn workload_changed(changes: &[Change]) -> bool {
        crate::change::touches(changes, crate::change::Table::Workload)
    }

    fn place(state: &mut State, index: u64, unplaced: &[(&str, Unplaced)]) -> Vec<Change> {
        let command = Command::Place {
            allocations: Vec::new(),
            unplaced: unplaced
                .iter()
                .map(|(id, w)| (id.to_string(), w.clone()))
                .collect(),
        };
        state.apply(index, &command).1
    }

    fn group_update(id: &str, create: bool, apps: Vec<AppSpec>, remove: &[&str]) -> Command {
        Command::PutGroup(Box::new(GroupUpdate {
            id: id.into(),
            create,
            groups: vec![GroupSpec {
                id: id.into(),
                version: "v1".into(),
                dependencies: Vec::new(),
            }],
            apps: apps
                .into_iter()
                .map(|a| (a, serde_json::Value::Null))
                .collect(),
            remove: remove.iter().map(|r| r.to_string()).collect(),
            deployment: Some(Deployment {
                id: "d".into(),
                app_id: id.into(),
                version: "v1".into(),
                action: "UpdateGroup".into(),
                create_index: 0,
                previous: None,
                steps: Vec::new(),
            }),
        }))
    }

    fn depending(id: &str, on: &[&str]) -> AppSpec {
        let mut spec = app(id);
        spec.dependencies = on.iter().map(|d| d.to_string()).collect();
        spec
    }

    fn steps(state: &State) -> Vec<Vec<(String, String)>> {
        state.workload.deployments["d"]
            .steps
            .iter()
            .map(|s| {
                s.iter()
                    .map(|a| (a.action.clone(), a.app_id.clone()))
                    .collect()
            })
            .collect()
    }

    fn action(name: &str, app: &str) -> (String, String) {
        (name.to_string(), app.to_string())
    }

    #[test]
    fn a_group_is_written_in_one_deployment_ordered_by_its_dependencies() {
        let mut state = State::default();
        let apps = vec![
            depending("/g/web", &["/g/db"]),
            app("/g/db"),
            depending("/g/api", &["/g/web"]),
        ];
        assert_eq!(
            state.apply(1, &group_update("/g", true, apps, &[])).0,
            Outcome::Done
        );
        assert_eq!(
            steps(&state),
            vec![
                vec![action("StartApplication", "/g/db")],
                vec![action("StartApplication", "/g/web")],
                vec![action("StartApplication", "/g/api")],
            ]
        );
        assert!(state.workload.groups.contains_key("/g"));
        // Creating it again is a conflict that changes nothing.
        let before = state.clone();
        let (outcome, changes) = state.apply(2, &group_update("/g", true, vec![], &[]));
        assert!(matches!(outcome, Outcome::Rejected(Rejection::Conflict(_))));
        assert!(changes.is_empty() && state == before);
        // Removing the group stops the dependents first; the tasks are left to the loop.
        let (outcome, _) = state.apply(
            3,
            &Command::DeleteGroup {
                id: "/g".into(),
                deployment: before.workload.deployments.get("d").cloned(),
            },
        );
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(
            steps(&state),
            vec![
                vec![action(STOP_APPLICATION, "/g/api")],
                vec![action(STOP_APPLICATION, "/g/web")],
                vec![action(STOP_APPLICATION, "/g/db")],
            ]
        );
        assert!(state.workload.apps.is_empty() && state.workload.groups.is_empty());
        let (outcome, _) = state.apply(
            4,
            &Command::DeleteGroup {
                id: "/g".into(),
                deployment: None,
            },
        );
        assert!(matches!(outcome, Outcome::Rejected(Rejection::NotFound(_))));
    }

    #[test]
    fn unknown_and_circular_dependencies_are_refused_and_change_nothing() {
        let mut state = State::default();
        let refused = [
            group_update("/g", true, vec![depending("/g/a", &["/nope"])], &[]),
            group_update(
                "/g",
                true,
                vec![depending("/g/a", &["/g/b"]), depending("/g/b", &["/g/a"])],
                &[],
            ),
            group_update("/g", true, vec![app("/elsewhere/a")], &[]),
            Command::PutApp {
                app: Box::new(depending("/solo", &["/nope"])),
                deployment: None,
                definition: serde_json::Value::Null,
            },
        ];
        for command in refused {
            let before = state.clone();
            let (outcome, changes) = state.apply(1, &command);
            assert!(
                matches!(outcome, Outcome::Rejected(Rejection::Invalid(_))),
                "{outcome:?}"
            );
            assert!(changes.is_empty() && state == before);
        }
    }

    #[test]
    fn an_update_writes_only_what_changes() {
        let mut state = State::default();
        let apps = vec![app("/g/a"), app("/g/b")];
        state.apply(1, &group_update("/g", true, apps, &[]));
        state.workload.deployments.clear();
        // a scaled (same version), b removed, c new; a depends on nothing.
        let mut scaled = app("/g/a");
        scaled.instances = 3;
        let update = group_update("/g", false, vec![scaled, app("/g/c")], &["/g/b"]);
        assert_eq!(state.apply(2, &update).0, Outcome::Done);
        assert_eq!(
            steps(&state),
            vec![
                vec![action(STOP_APPLICATION, "/g/b")],
                vec![
                    action("ScaleApplication", "/g/a"),
                    action("StartApplication", "/g/c")
                ],
            ]
        );
        // Nothing changes: no deployment.
        state.workload.deployments.clear();
        let same = group_update("/g", false, vec![], &[]);
        assert_eq!(state.apply(3, &same).0, Outcome::Done);
        assert!(state.workload.deployments.is_empty());
    }

    #[test]
    fn creating_an_app_that_exists_is_a_conflict_that_changes_nothing() {
        let mut state = State::default();
        let create = |version: &str| {
            let mut spec = app("/web");
            spec.version = version.to_string();
            Command::CreateApp {
                app: Box::new(spec),
                deployment: None,
                definition: serde_json::Value::Null,
            }
        };
        assert_eq!(state.apply(1, &create("v1")).0, Outcome::Done);
        let before = state.clone();
        let (outcome, changes) = state.apply(2, &create("v2"));
        assert_eq!(
            outcome,
            Outcome::Rejected(Rejection::Conflict(
                "An app with id [/web] already exists.".into()
            ))
        );
        assert!(changes.is_empty());
        assert!(state == before, "a refused create changed the state");
        // Replacing (PUT) is still allowed, and a deleted id can be created again.
        let mut spec = app("/web");
        spec.version = "v3".into();
        let put = Command::PutApp {
            app: Box::new(spec),
            deployment: None,
            definition: serde_json::Value::Null,
        };
        assert_eq!(state.apply(3, &put).0, Outcome::Done);
        let delete = Command::DeleteApp {
            app_id: "/web".into(),
            deployment: None,
        };
        assert_eq!(state.apply(4, &delete).0, Outcome::Done);
        assert_eq!(state.apply(5, &create("v4")).0, Outcome::Done);
        assert_eq!(state.workload.apps["/web"].version, "v4");
    }

    #[test]
    fn definitions_live_and_go_with_their_versions() {
        let mut state = State::default();
        let put = |version: &str| {
            let mut spec = app("/web");
            spec.version = version.to_string();
            Command::PutApp {
                app: Box::new(spec),
                deployment: None,
                definition: serde_json::json!({ "id": "/web", "version": version }),
            }
        };
        for i in 0..(VERSIONS_KEPT + 2) {
            state.apply(i as u64 + 1, &put(&format!("v{i:02}")));
        }
        let kept: Vec<&String> = state.workload.definitions["/web"].keys().collect();
        assert_eq!(
            kept.len(),
            VERSIONS_KEPT,
            "definitions of dropped versions remain"
        );
        assert_eq!(kept[0], "v02");
        let versions: Vec<&String> = state.workload.history["/web"]
            .iter()
            .map(|a| &a.version)
            .collect();
        assert_eq!(kept, versions);
        // A scale by killing tasks changes the typed count, never the definition.
        let before = state.workload.definitions.clone();
        let mut task = properties::allocation(1, 0, 1, 0, 0.1, 16.0, Vec::new());
        task.id = "web.1".into();
        task.app_id = "/web".into();
        state.workload.tasks.insert(task.id.clone(), task);
        let stop = Command::StopTasks {
            ids: vec!["web.1".into()],
            scale: true,
            reason: "killed".into(),
        };
        state.apply(100, &stop);
        assert_eq!(state.workload.apps["/web"].instances, 0);
        assert_eq!(state.workload.definitions, before);
        state.apply(
            101,
            &Command::DeleteApp {
                app_id: "/web".into(),
                deployment: None,
            },
        );
        assert!(state.workload.definitions.is_empty());
    }

    /// What a release that kept the definition inside the app wrote: an app with a
    /// `definition` field and no typed kill grace.
    fn legacy_app_json(version: &str) -> serde_json::Value {
        let mut spec = serde_json::to_value(app("/old")).unwrap();
        spec["version"] = version.into();
        spec.as_object_mut().unwrap().remove("kill_grace_seconds");
        spec["definition"] = serde_json::json!({ "id": "/old", "taskKillGracePeriodSeconds": 9, "version": version });
        spec
    }

    #[test]
    fn an_entry_of_an_older_release_moves_its_definition_to_the_table() {
        let command: Command = serde_json::from_value(serde_json::json!({
            "PutApp": { "app": legacy_app_json("v1"), "deployment": null }
        }))
        .unwrap();
        let mut state = State::default();
        assert_eq!(state.apply(1, &command).0, Outcome::Done);
        let stored = &state.workload.apps["/old"];
        assert_eq!(stored.kill_grace_seconds, Some(9.0));
        assert!(stored.legacy_definition.is_null());
        assert_eq!(
            state.workload.definitions.row(&"/old".into(), &"v1".into()),
            Some(
                &serde_json::json!({ "id": "/old", "taskKillGracePeriodSeconds": 9, "version": "v1" })
            )
        );
        // Written again, the app carries no definition of its own.
        let encoded = serde_json::to_value(stored).unwrap();
        assert!(encoded.get("definition").is_none());
    }

    #[test]
    fn a_snapshot_of_an_older_release_loads_with_its_definitions_moved() {
        let mut tables = serde_json::to_value(State::default()).unwrap();
        tables["workload"]["apps"] = serde_json::json!({ "/old": legacy_app_json("v2") });
        tables["workload"]["history"] =
            serde_json::json!({ "/old": [legacy_app_json("v1"), legacy_app_json("v2")] });
        let state = load_without(tables, "definitions");
        let versions: Vec<&String> = state.workload.definitions["/old"].keys().collect();
        assert_eq!(versions, vec!["v1", "v2"]);
        assert_eq!(state.workload.apps["/old"].kill_grace_seconds, Some(9.0));
        assert!(state.workload.history["/old"]
            .iter()
            .all(|kept| kept.legacy_definition.is_null() && kept.kill_grace_seconds == Some(9.0)));
    }

    #[test]
    fn event_subscriptions_are_registered_once_and_removed_and_replay() {
        let mut state = State::default();
        let subscribe = |url: &str, at: &str| Command::Subscribe {
            callback_url: url.into(),
            at: at.into(),
        };
        let (outcome, changes) = state.apply(1, &subscribe("http://a/cb", "t1"));
        assert_eq!(outcome, Outcome::Done);
        assert!(workload_changed(&changes));
        let mut copy = State::default();
        copy.replay(1, &changes);
        assert_eq!(copy.workload.subscriptions, state.workload.subscriptions);
        // Registering it again keeps the first registration and changes no row.
        let (_, changes) = state.apply(2, &subscribe("http://a/cb", "t2"));
        assert!(changes.is_empty());
        assert_eq!(state.workload.subscriptions["http://a/cb"], "t1");
        state.apply(3, &subscribe("http://b/cb", "t3"));
        let gone = Command::Unsubscribe {
            callback_url: "http://a/cb".into(),
        };
        state.apply(4, &gone);
        let (outcome, changes) = state.apply(5, &gone);
        assert_eq!(outcome, Outcome::Done);
        assert!(changes.is_empty());
        assert_eq!(
            state.workload.subscriptions.keys().collect::<Vec<_>>(),
            vec!["http://b/cb"]
        );
    }

    /// The state a snapshot of `tables` loads as when it lacks workload table `missing`, as one
    /// written by a release before that table.
    fn load_without(mut tables: serde_json::Value, missing: &str) -> State {
        tables["workload"].as_object_mut().unwrap().remove(missing);
        let bytes = crate::snapshot::encode(&tables).unwrap();
        crate::snapshot::decode_state(&bytes).unwrap()
    }

    #[test]
    fn a_snapshot_without_subscriptions_loads_with_none() {
        let tables = serde_json::to_value(State::default()).unwrap();
        let state = load_without(tables, "subscriptions");
        assert!(state.workload.subscriptions.is_empty());
    }

    #[test]
    fn the_queue_is_replaced_by_each_plan_and_follows_its_apps() {
        let mut state = State::default();
        for (index, id) in [(1, "/web"), (2, "/db")] {
            let put = Command::PutApp {
                app: Box::new(app(id)),
                deployment: None,
                definition: serde_json::Value::Null,
            };
            state.apply(index, &put);
        }
        let touched = place(
            &mut state,
            3,
            &[
                ("/web", waiting(2, "not enough memory")),
                ("/gone", waiting(1, "app deleted meanwhile")),
            ],
        );
        assert!(workload_changed(&touched));
        assert_eq!(
            state.workload.queue.keys().collect::<Vec<_>>(),
            vec!["/web"]
        );
        assert_eq!(state.workload.queue["/web"].count, 2);

        // The same queue again changes nothing; a new plan replaces it.
        let touched = place(&mut state, 4, &[("/web", waiting(2, "not enough memory"))]);
        assert!(!workload_changed(&touched));
        place(&mut state, 5, &[("/db", waiting(1, "no port free"))]);
        assert_eq!(state.workload.queue.keys().collect::<Vec<_>>(), vec!["/db"]);

        // Deleting an app takes it out of the queue; an empty plan empties it.
        state.apply(
            6,
            &Command::DeleteApp {
                app_id: "/db".into(),
                deployment: None,
            },
        );
        assert!(state.workload.queue.is_empty());
        place(&mut state, 7, &[("/web", waiting(1, "x"))]);
        place(&mut state, 8, &[]);
        assert!(state.workload.queue.is_empty());
    }

    #[test]
    fn task_health_records_failures_of_known_tasks_only() {
        let mut state = State::default();
        let put = Command::PutApp {
            app: Box::new(app("/web")),
            deployment: None,
            definition: serde_json::Value::Null,
        };
        state.apply(1, &put);
        let mut task = properties::allocation(1, 0, 1, 0, 0.1, 16.0, Vec::new());
        task.id = "web.1".into();
        task.app_id = "/web".into();
        state.workload.tasks.insert(task.id.clone(), task);
        let health = |failures| Command::TaskHealth {
            id: "web.1".into(),
            failures,
        };
        assert!(!state.apply(2, &health(2)).1.is_empty());
        assert_eq!(state.workload.tasks["web.1"].health_failures, 2);
        assert_eq!(state.workload.tasks["web.1"].modify_index, 2);
        // The same count again, or an unknown task, changes nothing.
        assert!(state.apply(3, &health(2)).1.is_empty());
        let unknown = Command::TaskHealth {
            id: "gone".into(),
            failures: 1,
        };
        assert!(state.apply(4, &unknown).1.is_empty());
        assert!(!state.apply(5, &health(0)).1.is_empty());
        assert_eq!(state.workload.tasks["web.1"].health_failures, 0);
    }

    mod properties {
        use super::*;
        use crate::command::{Registration, ServiceSpec};
        use crate::workload::ComputeNode;
        use proptest::prelude::*;

        const NODES: [&str; 3] = ["n0", "n1", "n2"];
        const APPS: [&str; 3] = ["/a0", "/a1", "/a2"];

        /// The cluster every sequence starts from: three catalog nodes offering 2 cpus,
        /// 128 MiB and six ports each.
        fn cluster() -> Vec<Command> {
            NODES
                .iter()
                .flat_map(|node| {
                    [
                        Command::Register(Box::new(Registration {
                            node: node.to_string(),
                            address: "10.0.0.1".into(),
                            datacenter: "dc1".into(),
                            ..Default::default()
                        })),
                        Command::RegisterCompute(ComputeNode {
                            node: node.to_string(),
                            cpus: 2.0,
                            mem: 128.0,
                            port_range: (31000, 31005),
                            attributes: BTreeMap::new(),
                            drivers: vec!["exec".into()],
                            busy_ports: Vec::new(),
                        }),
                    ]
                })
                .collect()
        }

        pub(super) fn allocation(
            task: usize,
            app: usize,
            version: u8,
            node: usize,
            cpus: f64,
            mem: f64,
            ports: Vec<u16>,
        ) -> Allocation {
            Allocation {
                id: format!("t{task}"),
                app_id: APPS[app].into(),
                app_version: format!("v{version}"),
                node: NODES[node].into(),
                ports,
                cpus,
                mem,
                desired_running: true,
                state: TaskState::Staging,
                message: String::new(),
                staged_at: String::new(),
                started_at: None,
                health_failures: 0,
                services: Vec::new(),
                create_index: 0,
                modify_index: 0,
            }
        }

        fn command() -> impl Strategy<Value = Command> {
            // Few task ids and weights towards placing and reporting, so that sequences
            // often run a task through placement, running and an end.
            let task = 0usize..4;
            let app_index = 0usize..APPS.len();
            prop_oneof![
                2 => (app_index.clone(), 1u8..3).prop_map(|(a, v)| {
                    let mut spec = app(APPS[a]);
                    spec.version = format!("v{v}");
                    Command::PutApp {
                        app: Box::new(spec),
                        deployment: None,
                        definition: serde_json::json!({ "version": v }),
                    }
                }),
                1 => app_index.clone().prop_map(|a| Command::DeleteApp {
                    app_id: APPS[a].into(),
                    deployment: None
                }),
                3 => (
                    prop::collection::vec(
                        (
                            task.clone(),
                            app_index.clone(),
                            1u8..3,
                            0usize..NODES.len(),
                            prop::sample::select(vec![0.5, 1.0, 1.5]),
                            prop::sample::select(vec![16.0, 64.0, 100.0]),
                            prop::collection::vec(31000u16..31006, 0..3)
                        ),
                        0..4,
                    ),
                    prop::collection::btree_map(
                        app_index.clone().prop_map(|a| APPS[a].to_string()),
                        (1u32..4).prop_map(|c| waiting(c, "full")),
                        0..3
                    ),
                )
                    .prop_map(|(allocations, unplaced)| Command::Place {
                        allocations: allocations
                            .into_iter()
                            .map(|(t, a, v, n, c, m, p)| allocation(t, a, v, n, c, m, p))
                            .collect(),
                        unplaced,
                    }),
                4 => (
                    task.clone(),
                    prop::sample::select(vec![
                        TaskState::Running,
                        TaskState::Failed,
                        TaskState::Finished,
                        TaskState::Killed,
                        TaskState::Lost
                    ])
                )
                    .prop_map(|(t, state)| Command::UpdateTask {
                        id: format!("t{t}"),
                        state,
                        message: format!("{state:?}"),
                        at: "2026-01-01T00:00:00Z".into(),
                        services: vec![(
                            ServiceSpec {
                                id: format!("svc-t{t}"),
                                name: "svc".into(),
                                port: 31000,
                                ..Default::default()
                            },
                            Vec::new(),
                        )],
                    }),
                1 => (prop::collection::vec(task.clone(), 1..3), any::<bool>()).prop_map(
                    |(ids, scale)| Command::StopTasks {
                        ids: ids.into_iter().map(|t| format!("t{t}")).collect(),
                        scale,
                        reason: "test".into(),
                    }
                ),
                1 => (task, 0u32..4).prop_map(|(t, failures)| Command::TaskHealth {
                    id: format!("t{t}"),
                    failures
                }),
            ]
        }

        /// What must hold after every entry, whatever the sequence.
        fn check_invariants(state: &State) -> Result<(), TestCaseError> {
            for node in NODES {
                let offered = &state.workload.compute[node];
                let tasks: Vec<&Allocation> = state.workload.tasks_on(node).collect();
                let cpus: f64 = tasks.iter().map(|t| t.cpus).sum();
                let mem: f64 = tasks.iter().map(|t| t.mem).sum();
                prop_assert!(
                    cpus <= offered.cpus + FIT_EPSILON,
                    "{node}: {cpus} cpus placed"
                );
                prop_assert!(mem <= offered.mem + FIT_EPSILON, "{node}: {mem} MiB placed");
                let mut ports = BTreeSet::new();
                for port in tasks.iter().flat_map(|t| t.ports.iter()) {
                    prop_assert!(ports.insert(*port), "{node}: port {port} given twice");
                }
            }
            for app_id in state.workload.queue.keys() {
                prop_assert!(
                    state.workload.apps.contains_key(app_id),
                    "queue names deleted app {app_id}"
                );
            }
            // A task's service is in the catalog exactly while the task is running.
            for node in NODES {
                for service in state.services_on_node(node) {
                    let owner = state
                        .workload
                        .tasks
                        .values()
                        .find(|t| t.services.contains(&service.id));
                    prop_assert!(
                        owner.is_some_and(|t| t.state == TaskState::Running && t.node == node),
                        "service {} on {node} without a running task",
                        service.id
                    );
                }
            }
            for task in state.workload.tasks.values() {
                if task.state == TaskState::Running {
                    for id in &task.services {
                        prop_assert!(
                            state.service(&task.node, id).is_some(),
                            "running {} lost service {id}",
                            task.id
                        );
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn workload_entries_keep_the_tables_consistent_and_deterministic(
                commands in prop::collection::vec(command(), 1..40)
            ) {
                let mut state = State::default();
                let mut replay = State::default();
                let mut fed = State::default();
                let setup = cluster();
                for (index, command) in setup.iter().chain(commands.iter()).enumerate() {
                    let index = index as u64 + 1;
                    let (_, changes) = state.apply(index, command);
                    replay.apply(index, command);
                    // The change feed carries every workload and catalog row it touched.
                    fed.replay(index, &changes);
                    prop_assert_eq!(&fed, &state);
                    if index as usize >= setup.len() {
                        check_invariants(&state)?;
                    }
                }
                prop_assert_eq!(state, replay);
            }
        }
    }
}
