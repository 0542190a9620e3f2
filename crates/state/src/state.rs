//! The deterministic state machine: tables plus `apply`. No clocks, I/O or randomness here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::{
    CheckSpec, Command, Deregistration, Outcome, Registration, Rejection, ServiceSpec,
};
use crate::model::{Check, CheckStatus, KvEntry, Node, ServiceInstance};

/// Tombstones kept for deleted KV keys before the oldest are folded into one index.
const MAX_KV_TOMBSTONES: usize = 16_384;

/// The tables a change can touch; blocking queries watch one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Touched {
    /// Nodes, services or checks changed.
    pub catalog: bool,
    /// KV changed.
    pub kv: bool,
    /// Apps, tasks, deployments or compute nodes changed.
    pub workload: bool,
}

/// Last-modified Raft index of each table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIndexes {
    /// Nodes table.
    pub nodes: u64,
    /// Services table.
    pub services: u64,
    /// Checks table.
    pub checks: u64,
    /// KV table.
    pub kv: u64,
    /// Apps, tasks, deployments, compute nodes.
    #[serde(default)]
    pub workload: u64,
}

impl TableIndexes {
    /// Index of the whole catalog (nodes, services, checks).
    pub fn catalog(&self) -> u64 {
        self.nodes.max(self.services).max(self.checks)
    }
}

/// The replicated state. Equal logs give equal states.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Service instances by node, then id.
    pub services: BTreeMap<String, BTreeMap<String, ServiceInstance>>,
    /// Checks by node, then check id.
    pub checks: BTreeMap<String, BTreeMap<String, Check>>,
    /// KV entries by key.
    pub kv: BTreeMap<String, KvEntry>,
    /// Index at which a deleted key disappeared, so prefix watchers see deletions.
    pub kv_tombstones: BTreeMap<String, u64>,
    /// Highest index of tombstones dropped to bound memory; counts for every prefix.
    pub kv_reaped_index: u64,
    /// Per-table indexes.
    pub indexes: TableIndexes,
    /// Last index at which anything about a service name changed (instances, their checks,
    /// their node). Kept for deleted names too, so watchers see the removal.
    pub service_indexes: BTreeMap<String, u64>,
    /// Workloads: apps, tasks, deployments, compute nodes.
    #[serde(default)]
    pub workload: crate::workload_apply::WorkloadTables,
    /// Derived: (node, id) of every instance of a service name. Rebuilt on restore.
    #[serde(skip)]
    by_name: HashMap<String, BTreeSet<(String, String)>>,
}

impl State {
    /// Rebuilds derived indexes after deserialising a snapshot.
    pub fn rebuild_derived(&mut self) {
        self.by_name.clear();
        for (node, services) in &self.services {
            for (id, service) in services {
                self.by_name
                    .entry(service.name.clone())
                    .or_default()
                    .insert((node.clone(), id.clone()));
            }
        }
    }

    /// Applies one command at Raft index `index`. Returns the outcome and the tables touched.
    pub fn apply(&mut self, index: u64, command: &Command) -> (Outcome, Touched) {
        match command {
            Command::Register(registration) => self.register(index, registration),
            Command::Deregister(deregistration) => self.deregister(index, deregistration),
            Command::UpdateCheck {
                node,
                check_id,
                status,
                output,
            } => self.update_check(index, node, check_id, *status, output),
            Command::KvSet {
                key,
                value,
                flags,
                cas,
            } => self.kv_set(index, key, value, *flags, *cas),
            Command::KvDelete { key, recurse, cas } => self.kv_delete(index, key, *recurse, *cas),
            Command::PutApp { .. }
            | Command::CreateApp { .. }
            | Command::DeleteApp { .. }
            | Command::RegisterCompute(_)
            | Command::Place { .. }
            | Command::StopTasks { .. }
            | Command::UpdateTask { .. }
            | Command::TaskHealth { .. }
            | Command::FinishDeployment { .. } => self.apply_workload(index, command),
        }
    }

    fn register(&mut self, index: u64, registration: &Registration) -> (Outcome, Touched) {
        let touched = Touched {
            catalog: true,
            ..Touched::default()
        };
        if registration.node.is_empty() {
            return (rejected_invalid("Node name is missing"), Touched::default());
        }
        // Validate everything before the first write so a rejection changes nothing.
        let node_exists = self.nodes.contains_key(&registration.node);
        if !node_exists && registration.address.is_empty() {
            return (rejected_invalid("Address is missing"), Touched::default());
        }
        let service_id = registration.service.as_ref().map(|s| s.id.as_str());
        for check in &registration.checks {
            if check.check_id.is_empty() {
                return (rejected_invalid("CheckID is missing"), Touched::default());
            }
            if !check.service_id.is_empty()
                && Some(check.service_id.as_str()) != service_id
                && self
                    .service(&registration.node, &check.service_id)
                    .is_none()
            {
                return (
                    Outcome::Rejected(Rejection::NotFound(format!(
                        "Unknown service ID {:?} for check ID {:?}",
                        check.service_id, check.check_id
                    ))),
                    Touched::default(),
                );
            }
        }

        let node_changed = self.upsert_node(index, registration);
        if node_changed {
            self.touch_services_of_node(index, &registration.node);
        }
        if let Some(spec) = &registration.service {
            self.upsert_service(index, service_instance(&registration.node, spec, index));
            if registration.replace_service_checks {
                let keep: BTreeSet<&str> = registration
                    .checks
                    .iter()
                    .map(|c| c.check_id.as_str())
                    .collect();
                let stale: Vec<String> = self
                    .checks
                    .get(&registration.node)
                    .into_iter()
                    .flat_map(|checks| checks.values())
                    .filter(|c| c.service_id == spec.id && !keep.contains(c.check_id.as_str()))
                    .map(|c| c.check_id.clone())
                    .collect();
                for check_id in stale {
                    self.remove_check(index, &registration.node, &check_id);
                }
            }
        }
        for check in &registration.checks {
            self.upsert_check(index, &registration.node, check);
        }
        (Outcome::Done, touched)
    }

    fn upsert_node(&mut self, index: u64, registration: &Registration) -> bool {
        let existing = self.nodes.get(&registration.node);
        if registration.skip_node_update && existing.is_some() {
            return false;
        }
        let address = if registration.address.is_empty() {
            existing.map(|n| n.address.clone()).unwrap_or_default()
        } else {
            registration.address.clone()
        };
        let mut node = Node {
            name: registration.node.clone(),
            address,
            datacenter: registration.datacenter.clone(),
            tagged_addresses: registration.tagged_addresses.clone(),
            meta: registration.node_meta.clone(),
            create_index: index,
            modify_index: index,
        };
        if let Some(existing) = existing {
            node.create_index = existing.create_index;
            node.modify_index = existing.modify_index;
            if *existing == node {
                return false;
            }
            node.modify_index = index;
        }
        self.nodes.insert(node.name.clone(), node);
        self.indexes.nodes = index;
        true
    }

    pub(crate) fn upsert_service(&mut self, index: u64, mut instance: ServiceInstance) {
        let services = self.services.entry(instance.node.clone()).or_default();
        if let Some(existing) = services.get(&instance.id) {
            instance.create_index = existing.create_index;
            instance.modify_index = existing.modify_index;
            if *existing == instance {
                return;
            }
            instance.modify_index = index;
            if existing.name != instance.name {
                let old_name = existing.name.clone();
                self.unindex_name(&old_name, &instance.node, &instance.id);
                self.service_indexes.insert(old_name, index);
            }
        }
        self.by_name
            .entry(instance.name.clone())
            .or_default()
            .insert((instance.node.clone(), instance.id.clone()));
        self.service_indexes.insert(instance.name.clone(), index);
        // Checks carry the service's name and tags, as Consul denormalises them.
        if let Some(checks) = self.checks.get_mut(&instance.node) {
            for check in checks.values_mut() {
                if check.service_id == instance.id
                    && (check.service_name != instance.name || check.service_tags != instance.tags)
                {
                    check.service_name = instance.name.clone();
                    check.service_tags = instance.tags.clone();
                    check.modify_index = index;
                    self.indexes.checks = index;
                }
            }
        }
        self.services
            .entry(instance.node.clone())
            .or_default()
            .insert(instance.id.clone(), instance);
        self.indexes.services = index;
    }

    pub(crate) fn upsert_check(&mut self, index: u64, node: &str, spec: &CheckSpec) {
        let (service_name, service_tags) = if spec.service_id.is_empty() {
            (String::new(), Vec::new())
        } else {
            self.service(node, &spec.service_id)
                .map(|s| (s.name.clone(), s.tags.clone()))
                .unwrap_or_default()
        };
        let existing = self.checks.get(node).and_then(|c| c.get(&spec.check_id));
        let status = spec
            .status
            .or(existing.map(|c| c.status))
            .unwrap_or(CheckStatus::Critical);
        let output = if spec.status.is_none() && spec.output.is_empty() {
            existing.map(|c| c.output.clone()).unwrap_or_default()
        } else {
            spec.output.clone()
        };
        let mut check = Check {
            node: node.to_string(),
            check_id: spec.check_id.clone(),
            name: spec.name.clone(),
            status,
            notes: spec.notes.clone(),
            output,
            service_id: spec.service_id.clone(),
            service_name,
            service_tags,
            definition: spec.definition.clone(),
            create_index: index,
            modify_index: index,
        };
        if let Some(existing) = existing {
            check.create_index = existing.create_index;
            check.modify_index = existing.modify_index;
            if *existing == check {
                return;
            }
            check.modify_index = index;
            if existing.service_id != check.service_id {
                let old = existing.service_id.clone();
                self.touch_service_id(index, node, &old);
            }
        }
        self.touch_service_id(index, node, &check.service_id.clone());
        if check.service_id.is_empty() {
            self.touch_services_of_node(index, node);
        }
        self.checks
            .entry(node.to_string())
            .or_default()
            .insert(check.check_id.clone(), check);
        self.indexes.checks = index;
    }

    fn deregister(&mut self, index: u64, request: &Deregistration) -> (Outcome, Touched) {
        let touched = Touched {
            catalog: true,
            ..Touched::default()
        };
        if request.node.is_empty() {
            return (rejected_invalid("Node name is missing"), Touched::default());
        }
        if let Some(check_id) = &request.check_id {
            self.remove_check(index, &request.node, check_id);
        }
        if let Some(service_id) = &request.service_id {
            self.remove_service(index, &request.node, service_id);
        }
        if request.check_id.is_none() && request.service_id.is_none() {
            let service_ids: Vec<String> = self
                .services
                .get(&request.node)
                .map(|s| s.keys().cloned().collect())
                .unwrap_or_default();
            for service_id in service_ids {
                self.remove_service(index, &request.node, &service_id);
            }
            if let Some(checks) = self.checks.remove(&request.node) {
                if !checks.is_empty() {
                    self.indexes.checks = index;
                }
            }
            if self.nodes.remove(&request.node).is_some() {
                self.indexes.nodes = index;
            }
        }
        (Outcome::Done, touched)
    }

    pub(crate) fn remove_service(&mut self, index: u64, node: &str, service_id: &str) {
        let Some(instance) = self
            .services
            .get_mut(node)
            .and_then(|services| services.remove(service_id))
        else {
            return;
        };
        if self.services.get(node).is_some_and(|s| s.is_empty()) {
            self.services.remove(node);
        }
        self.unindex_name(&instance.name, node, service_id);
        self.service_indexes.insert(instance.name.clone(), index);
        self.indexes.services = index;
        let check_ids: Vec<String> = self
            .checks
            .get(node)
            .into_iter()
            .flat_map(|c| c.values())
            .filter(|c| c.service_id == service_id)
            .map(|c| c.check_id.clone())
            .collect();
        for check_id in check_ids {
            self.remove_check(index, node, &check_id);
        }
    }

    fn remove_check(&mut self, index: u64, node: &str, check_id: &str) {
        let Some(check) = self
            .checks
            .get_mut(node)
            .and_then(|checks| checks.remove(check_id))
        else {
            return;
        };
        if self.checks.get(node).is_some_and(|c| c.is_empty()) {
            self.checks.remove(node);
        }
        self.indexes.checks = index;
        if check.service_id.is_empty() {
            self.touch_services_of_node(index, node);
        } else {
            self.touch_service_id(index, node, &check.service_id);
        }
    }

    fn update_check(
        &mut self,
        index: u64,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> (Outcome, Touched) {
        let Some(check) = self.checks.get_mut(node).and_then(|c| c.get_mut(check_id)) else {
            return (
                Outcome::Rejected(Rejection::NotFound(format!(
                    "Unknown check ID {check_id:?}"
                ))),
                Touched::default(),
            );
        };
        if check.status == status && check.output == output {
            return (Outcome::Done, Touched::default());
        }
        check.status = status;
        check.output = output.to_string();
        check.modify_index = index;
        let service_id = check.service_id.clone();
        self.indexes.checks = index;
        if service_id.is_empty() {
            self.touch_services_of_node(index, node);
        } else {
            self.touch_service_id(index, node, &service_id);
        }
        (
            Outcome::Done,
            Touched {
                catalog: true,
                ..Touched::default()
            },
        )
    }

    fn kv_set(
        &mut self,
        index: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: Option<u64>,
    ) -> (Outcome, Touched) {
        if key.is_empty() {
            return (rejected_invalid("Missing key name"), Touched::default());
        }
        let existing = self.kv.get(key);
        if !cas_holds(existing, cas) {
            return (Outcome::Condition(false), Touched::default());
        }
        let create_index = existing.map(|e| e.create_index).unwrap_or(index);
        self.kv.insert(
            key.to_string(),
            KvEntry {
                key: key.to_string(),
                value: value.to_vec(),
                flags,
                create_index,
                modify_index: index,
            },
        );
        self.kv_tombstones.remove(key);
        self.indexes.kv = index;
        let outcome = if cas.is_some() {
            Outcome::Condition(true)
        } else {
            Outcome::Done
        };
        (
            outcome,
            Touched {
                kv: true,
                ..Touched::default()
            },
        )
    }

    fn kv_delete(
        &mut self,
        index: u64,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> (Outcome, Touched) {
        let touched = Touched {
            kv: true,
            ..Touched::default()
        };
        if recurse {
            let doomed: Vec<String> = self
                .kv
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(k, _)| k.clone())
                .collect();
            if doomed.is_empty() {
                return (Outcome::Done, Touched::default());
            }
            for k in doomed {
                self.kv.remove(&k);
                self.bury(index, k);
            }
            self.indexes.kv = index;
            return (Outcome::Done, touched);
        }
        let existing = self.kv.get(key);
        if !cas_holds(existing, cas) {
            return (Outcome::Condition(false), Touched::default());
        }
        let outcome = if cas.is_some() {
            Outcome::Condition(true)
        } else {
            Outcome::Done
        };
        if self.kv.remove(key).is_none() {
            return (outcome, Touched::default());
        }
        self.bury(index, key.to_string());
        self.indexes.kv = index;
        (outcome, touched)
    }

    fn bury(&mut self, index: u64, key: String) {
        self.kv_tombstones.insert(key, index);
        if self.kv_tombstones.len() > MAX_KV_TOMBSTONES {
            // Drop the oldest tombstone; its index then counts for every prefix, which can
            // only cause an early (allowed) wake-up, never a missed one.
            if let Some((oldest_key, oldest_index)) = self
                .kv_tombstones
                .iter()
                .min_by_key(|(_, i)| **i)
                .map(|(k, i)| (k.clone(), *i))
            {
                self.kv_tombstones.remove(&oldest_key);
                self.kv_reaped_index = self.kv_reaped_index.max(oldest_index);
            }
        }
    }

    fn unindex_name(&mut self, name: &str, node: &str, id: &str) {
        if let Some(set) = self.by_name.get_mut(name) {
            set.remove(&(node.to_string(), id.to_string()));
            if set.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    fn touch_service_id(&mut self, index: u64, node: &str, service_id: &str) {
        if service_id.is_empty() {
            return;
        }
        if let Some(name) = self.service(node, service_id).map(|s| s.name.clone()) {
            self.service_indexes.insert(name, index);
        }
    }

    fn touch_services_of_node(&mut self, index: u64, node: &str) {
        let names: BTreeSet<String> = self
            .services
            .get(node)
            .into_iter()
            .flat_map(|s| s.values())
            .map(|s| s.name.clone())
            .collect();
        for name in names {
            self.service_indexes.insert(name, index);
        }
    }

    // ----- reads -----

    /// One service instance.
    pub fn service(&self, node: &str, id: &str) -> Option<&ServiceInstance> {
        self.services.get(node).and_then(|s| s.get(id))
    }

    /// Every instance of a service name, in (node, id) order.
    pub fn instances_of(&self, name: &str) -> Vec<&ServiceInstance> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(node, id)| self.service(node, id))
            .collect()
    }

    /// Index that changes whenever anything about a service name changes.
    pub fn service_index(&self, name: &str) -> u64 {
        self.service_indexes.get(name).copied().unwrap_or(0)
    }

    /// Checks that decide an instance's health: its own plus its node's.
    pub fn checks_for_instance<'a>(&'a self, instance: &'a ServiceInstance) -> Vec<&'a Check> {
        self.checks
            .get(&instance.node)
            .into_iter()
            .flat_map(|c| c.values())
            .filter(|c| c.service_id.is_empty() || c.service_id == instance.id)
            .collect()
    }

    /// All checks on a node.
    pub fn checks_on_node(&self, node: &str) -> impl Iterator<Item = &Check> {
        self.checks.get(node).into_iter().flat_map(|c| c.values())
    }

    /// All checks in the datacenter.
    pub fn all_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values().flat_map(|c| c.values())
    }

    /// The status of a node's own liveness check (`serfHealth`), if it has one.
    pub fn node_health(&self, node: &str) -> Option<CheckStatus> {
        self.checks
            .get(node)
            .and_then(|checks| checks.get(crate::model::NODE_HEALTH_CHECK_ID))
            .map(|check| check.status)
    }

    /// Whether a node has failed: its liveness check is critical. A failed node's tasks are
    /// lost and nothing new is placed on it.
    pub fn node_failed(&self, node: &str) -> bool {
        self.node_health(node) == Some(CheckStatus::Critical)
    }

    /// Whether a node is down for the workloads: gone from the catalog, or failed.
    pub fn node_down(&self, node: &str) -> bool {
        !self.nodes.contains_key(node) || self.node_failed(node)
    }

    /// Whether a task counts as healthy (Marathon's `healthy` and what the upgrade strategy
    /// counts): running, and each of its service instances passing. `warning` is not
    /// healthy: Marathon's health checks know only alive or not.
    pub fn task_healthy(&self, task: &crate::workload::Allocation) -> bool {
        task.state == crate::workload::TaskState::Running
            && task.services.iter().all(|id| {
                self.service(&task.node, id).is_some_and(|s| {
                    aggregate_status(self.checks_for_instance(s)) == CheckStatus::Passing
                })
            })
    }

    /// All instances on a node.
    pub fn services_on_node(&self, node: &str) -> impl Iterator<Item = &ServiceInstance> {
        self.services.get(node).into_iter().flat_map(|s| s.values())
    }

    /// All service names with the union of their tags.
    pub fn service_names(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for services in self.services.values() {
            for service in services.values() {
                names
                    .entry(service.name.as_str())
                    .or_default()
                    .extend(service.tags.iter().map(String::as_str));
            }
        }
        names
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn kv_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// Index a KV read of `prefix` (or one key, `exact`) reports: the newest change to any
    /// matching key, deletions included.
    pub fn kv_index(&self, prefix: &str, exact: bool) -> u64 {
        let mut index = self.kv_reaped_index;
        if exact {
            index = index
                .max(self.kv.get(prefix).map(|e| e.modify_index).unwrap_or(0))
                .max(self.kv_tombstones.get(prefix).copied().unwrap_or(0));
        } else {
            index = index.max(
                self.kv_prefix(prefix)
                    .map(|e| e.modify_index)
                    .max()
                    .unwrap_or(0),
            );
            index = index.max(
                self.kv_tombstones
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(_, i)| *i)
                    .max()
                    .unwrap_or(0),
            );
        }
        index
    }
}

/// Whether a KV check-and-set condition holds: `None` always; `Some(0)` only for an absent
/// key; `Some(i)` only when the key's modify index is `i`.
fn cas_holds(existing: Option<&KvEntry>, cas: Option<u64>) -> bool {
    match (cas, existing) {
        (None, _) => true,
        (Some(cas), None) => cas == 0,
        (Some(cas), Some(entry)) => entry.modify_index == cas,
    }
}

/// The catalog row of a service spec registered on `node` at `index`: the one conversion,
/// for agent registrations and for the services of a running task alike.
pub(crate) fn service_instance(node: &str, spec: &ServiceSpec, index: u64) -> ServiceInstance {
    ServiceInstance {
        node: node.to_string(),
        id: spec.id.clone(),
        name: spec.name.clone(),
        tags: spec.tags.clone(),
        address: spec.address.clone(),
        port: spec.port,
        meta: spec.meta.clone(),
        enable_tag_override: spec.enable_tag_override,
        create_index: index,
        modify_index: index,
    }
}

fn rejected_invalid(message: &str) -> Outcome {
    Outcome::Rejected(Rejection::Invalid(message.to_string()))
}

/// The one place that decides an instance's health: the worst of its checks
/// (its own and its node's); no checks means passing.
pub fn aggregate_status<'a>(checks: impl IntoIterator<Item = &'a Check>) -> CheckStatus {
    checks
        .into_iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(CheckStatus::Passing)
}
