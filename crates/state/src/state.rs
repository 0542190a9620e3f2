//! The deterministic state machine: tables plus `apply`. No clocks, I/O or randomness here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::command::{
    CheckSpec, Command, Deregistration, Outcome, Registration, Rejection, ServiceSpec,
};
use crate::model::{
    Check, CheckStatus, KvEntry, Node, ServiceInstance, Session, UserEvent, MAX_USER_EVENTS,
};
use crate::prepared::PreparedQuery;
use crate::table::{Grouped, Rows};

/// Tombstones kept for deleted KV keys before the oldest are folded into one index.
const MAX_KV_TOMBSTONES: usize = 16_384;

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
    /// Sessions.
    #[serde(default)]
    pub sessions: u64,
    /// User events.
    #[serde(default)]
    pub events: u64,
    /// Prepared queries.
    #[serde(default)]
    pub queries: u64,
    /// ACL tokens, policies and the bootstrap marker.
    #[serde(default)]
    pub acl: u64,
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
    pub nodes: Rows<String, Node>,
    /// Service instances by node, then id.
    pub services: Grouped<String, String, ServiceInstance>,
    /// Checks by node, then check id.
    pub checks: Grouped<String, String, Check>,
    /// KV entries by key.
    pub kv: Rows<String, KvEntry>,
    /// Index at which a deleted key disappeared, so prefix watchers see deletions.
    pub kv_tombstones: Rows<String, u64>,
    /// Highest index of tombstones dropped to bound memory; counts for every prefix.
    pub kv_reaped_index: u64,
    /// Per-table indexes.
    pub indexes: TableIndexes,
    /// Last index at which anything about a service name changed (instances, their checks,
    /// their node). Kept for deleted names too, so watchers see the removal.
    pub service_indexes: Rows<String, u64>,
    /// Workloads: apps, tasks, deployments, compute nodes.
    #[serde(default)]
    pub workload: crate::workload_apply::WorkloadTables,
    /// Consul sessions by id.
    #[serde(default)]
    pub sessions: Rows<String, Session>,
    /// The last user events, by Lamport time.
    #[serde(default)]
    pub events: Rows<u64, UserEvent>,
    /// Prepared queries by id.
    #[serde(default)]
    pub queries: Rows<String, PreparedQuery>,
    /// ACL tokens by AccessorID.
    #[serde(default)]
    pub acl_tokens: Rows<String, crate::acl::AclToken>,
    /// ACL policies by ID.
    #[serde(default)]
    pub acl_policies: Rows<String, crate::acl::AclPolicy>,
    /// Index of the entry that bootstrapped ACLs (0: never).
    #[serde(default)]
    pub acl_bootstrap_index: u64,
    /// Derived: the AccessorID of each token's SecretID. Rebuilt on restore.
    #[serde(skip)]
    pub(crate) acl_secrets: HashMap<String, String>,
    /// Derived: (node, id) of every instance of a service name. Rebuilt on restore.
    #[serde(skip)]
    pub(crate) by_name: HashMap<String, BTreeSet<(String, String)>>,
    /// Derived: the ids of each node's sessions. Rebuilt on restore.
    #[serde(skip)]
    pub(crate) sessions_by_node: HashMap<String, BTreeSet<String>>,
    /// Derived: the keys each session holds. Rebuilt on restore.
    #[serde(skip)]
    pub(crate) held_keys: HashMap<String, BTreeSet<String>>,
}

impl State {
    /// A copy of the state without the key/value table and the sessions (what a compute
    /// node holds: keys and sessions stay on the servers). Derived indexes of what is kept
    /// are copied; those of keys and sessions are empty.
    pub fn without_kv(&self) -> State {
        State {
            nodes: self.nodes.clone(),
            services: self.services.clone(),
            checks: self.checks.clone(),
            kv: Default::default(),
            kv_tombstones: Default::default(),
            kv_reaped_index: 0,
            indexes: self.indexes.clone(),
            service_indexes: self.service_indexes.clone(),
            workload: self.workload.clone(),
            sessions: Default::default(),
            events: self.events.clone(),
            queries: self.queries.clone(),
            acl_tokens: self.acl_tokens.clone(),
            acl_policies: self.acl_policies.clone(),
            acl_bootstrap_index: self.acl_bootstrap_index,
            acl_secrets: self.acl_secrets.clone(),
            by_name: self.by_name.clone(),
            sessions_by_node: Default::default(),
            held_keys: Default::default(),
        }
    }

    /// Brings a state decoded from a snapshot to this release's shape (definitions stored
    /// inside apps by older releases move to their table) and rebuilds derived indexes.
    pub fn after_load(&mut self) {
        self.workload.move_legacy_definitions();
        // A load is not an entry: what it moved is not reported as changes.
        self.drain_changes();
        self.rebuild_derived();
    }

    /// Rebuilds derived indexes after deserialising a snapshot.
    fn rebuild_derived(&mut self) {
        self.by_name.clear();
        for (node, services) in &self.services {
            for (id, service) in services {
                self.by_name
                    .entry(service.name.clone())
                    .or_default()
                    .insert((node.clone(), id.clone()));
            }
        }
        self.sessions_by_node.clear();
        for (id, session) in &self.sessions {
            self.sessions_by_node
                .entry(session.node.clone())
                .or_default()
                .insert(id.clone());
        }
        self.rebuild_acl_secrets();
        self.held_keys.clear();
        for (key, entry) in &self.kv {
            if let Some(session) = &entry.session {
                self.held_keys
                    .entry(session.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
    }

    /// Applies one command at Raft index `index`. Returns the outcome and every row it
    /// changed; the table indexes move exactly for the tables whose rows changed.
    pub fn apply(&mut self, index: u64, command: &Command) -> (Outcome, Vec<Change>) {
        let reaped = self.kv_reaped_index;
        let bootstrapped = self.acl_bootstrap_index;
        let outcome = self.apply_command(index, command);
        let mut changes = self.drain_changes();
        if self.kv_reaped_index != reaped {
            changes.push(Change::KvReaped {
                old: reaped,
                new: self.kv_reaped_index,
            });
        }
        if self.acl_bootstrap_index != bootstrapped {
            changes.push(Change::AclBootstrapped {
                old: bootstrapped,
                new: self.acl_bootstrap_index,
            });
        }
        for change in &changes {
            self.bump_index(index, change);
        }
        (outcome, changes)
    }

    /// Applies one command; its changes stay noted in the tables until drained.
    fn apply_command(&mut self, index: u64, command: &Command) -> Outcome {
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
            | Command::FinishDeployment { .. }
            | Command::Subscribe { .. }
            | Command::Unsubscribe { .. }
            | Command::PutGroup(_)
            | Command::DeleteGroup { .. } => self.apply_workload(index, command),
            Command::Batch(commands) => self.apply_batch(index, commands),
            Command::SessionCreate(session) => self.create_session(index, session),
            Command::SessionDestroy { id } => {
                self.invalidate_session(index, id);
                Outcome::Done
            }
            Command::KvAcquire {
                key,
                value,
                flags,
                session,
            } => self.kv_acquire(index, key, value, *flags, session),
            Command::KvRelease {
                key,
                value,
                flags,
                session,
            } => self.kv_release(index, key, value, *flags, session),
            Command::Txn(ops) => self.apply_txn(index, ops),
            Command::FireEvent(event) => self.fire_event(event),
            Command::QueryCreate(query) => self.create_query(index, query),
            Command::QueryUpdate(query) => self.update_query(index, query),
            Command::QueryDelete { id } => self.delete_query(id),
            Command::AclBootstrap(bootstrap) => self.acl_bootstrap(index, bootstrap),
            Command::AclTokenSet { token, create } => self.acl_token_set(index, token, *create),
            Command::AclTokenDelete { accessor_id } => self.acl_token_delete(index, accessor_id),
            Command::AclPolicySet { policy, create } => self.acl_policy_set(index, policy, *create),
            Command::AclPolicyDelete { id } => self.acl_policy_delete(index, id),
            Command::AclReplicate(replication) => self.acl_replicate(index, replication),
        }
    }

    /// Applies each command of a batch in order, each with its own outcome.
    fn apply_batch(&mut self, index: u64, commands: &[Command]) -> Outcome {
        if commands.iter().any(|c| matches!(c, Command::Batch(_))) {
            return rejected_invalid("a batch cannot hold a batch");
        }
        // Each sub-command's changes join the entry's: they are drained once, at the end.
        Outcome::Each(
            commands
                .iter()
                .map(|command| self.apply_command(index, command))
                .collect(),
        )
    }

    /// The rows changed since the last drain, table by table.
    fn drain_changes(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        changes.extend(self.nodes.drain().into_iter().map(Change::Node));
        changes.extend(self.services.drain().into_iter().map(Change::Service));
        changes.extend(self.checks.drain().into_iter().map(Change::Check));
        changes.extend(
            self.service_indexes
                .drain()
                .into_iter()
                .map(Change::ServiceIndex),
        );
        changes.extend(self.kv.drain().into_iter().map(Change::Kv));
        changes.extend(
            self.kv_tombstones
                .drain()
                .into_iter()
                .map(Change::KvTombstone),
        );
        changes.extend(self.sessions.drain().into_iter().map(Change::Session));
        changes.extend(self.events.drain().into_iter().map(Change::Event));
        changes.extend(self.queries.drain().into_iter().map(Change::Query));
        changes.extend(self.acl_tokens.drain().into_iter().map(Change::AclToken));
        changes.extend(self.acl_policies.drain().into_iter().map(Change::AclPolicy));
        self.workload.drain_into(&mut changes);
        changes
    }

    /// Moves the index of the table a changed row belongs to.
    fn bump_index(&mut self, index: u64, change: &Change) {
        let indexes = &mut self.indexes;
        match change {
            Change::Node(_) => indexes.nodes = index,
            Change::Service(_) => indexes.services = index,
            Change::Check(_) => indexes.checks = index,
            Change::Kv(_) => indexes.kv = index,
            Change::Session(_) => indexes.sessions = index,
            Change::Event(_) => indexes.events = index,
            Change::Query(_) => indexes.queries = index,
            Change::AclToken(_) | Change::AclPolicy(_) | Change::AclBootstrapped { .. } => {
                indexes.acl = index
            }
            // These accompany a change of the rows above.
            Change::ServiceIndex(_) | Change::KvTombstone(_) | Change::KvReaped { .. } => {}
            Change::App(_)
            | Change::AppHistory(_)
            | Change::Definition(_)
            | Change::Task(_)
            | Change::Deployment(_)
            | Change::ComputeNode(_)
            | Change::LastFailure(_)
            | Change::Queue(_)
            | Change::Subscription(_)
            | Change::Group(_) => indexes.workload = index,
        }
    }

    /// Replays the changes of the entry at `index` made on another copy of the state: the
    /// result equals what applying that entry gave there.
    pub fn replay(&mut self, index: u64, changes: &[Change]) {
        for change in changes {
            match change.clone() {
                Change::Node(row) => self.nodes.put_row(row.key, row.new),
                Change::Service(row) => {
                    let (node, id) = &row.key;
                    if let Some(old) = &row.old {
                        self.unindex_name(&old.name, node, id);
                    }
                    if let Some(new) = &row.new {
                        self.by_name
                            .entry(new.name.clone())
                            .or_default()
                            .insert((node.clone(), id.clone()));
                    }
                    self.services.put_row(row.key, row.new);
                }
                Change::Check(row) => self.checks.put_row(row.key, row.new),
                Change::ServiceIndex(row) => self.service_indexes.put_row(row.key, row.new),
                Change::Kv(row) => {
                    let old = row.old.as_ref().and_then(|e| e.session.as_deref());
                    let new = row.new.as_ref().and_then(|e| e.session.as_deref());
                    index_holder(&mut self.held_keys, &row.key, old, new);
                    self.kv.put_row(row.key, row.new)
                }
                Change::Session(row) => {
                    if let Some(old) = &row.old {
                        unindex(&mut self.sessions_by_node, &old.node, &row.key);
                    }
                    if let Some(new) = &row.new {
                        self.sessions_by_node
                            .entry(new.node.clone())
                            .or_default()
                            .insert(row.key.clone());
                    }
                    self.sessions.put_row(row.key, row.new)
                }
                Change::KvTombstone(row) => self.kv_tombstones.put_row(row.key, row.new),
                Change::KvReaped { new, .. } => self.kv_reaped_index = new,
                Change::Event(row) => self.events.put_row(row.key, row.new),
                Change::Query(row) => self.queries.put_row(row.key, row.new),
                Change::AclToken(row) => {
                    self.index_acl_secret(row.old.as_ref(), row.new.as_ref());
                    self.acl_tokens.put_row(row.key, row.new)
                }
                Change::AclPolicy(row) => self.acl_policies.put_row(row.key, row.new),
                Change::AclBootstrapped { new, .. } => self.acl_bootstrap_index = new,
                other => self.workload.replay(other),
            }
            self.bump_index(index, change);
        }
    }

    /// Records a user event at the next Lamport time, keeping the last [`MAX_USER_EVENTS`].
    fn fire_event(&mut self, event: &UserEvent) -> Outcome {
        if event.name.is_empty() {
            return rejected_invalid("Missing name");
        }
        // Events are only ever dropped from the front, so the last one keeps the clock.
        let ltime = self.events.keys().next_back().map_or(1, |last| last + 1);
        self.events.insert(
            ltime,
            UserEvent {
                ltime,
                ..event.clone()
            },
        );
        while self.events.len() > MAX_USER_EVENTS {
            let Some(oldest) = self.events.keys().next().copied() else {
                break;
            };
            self.events.remove(&oldest);
        }
        Outcome::Done
    }

    pub(crate) fn register(&mut self, index: u64, registration: &Registration) -> Outcome {
        if registration.node.is_empty() {
            return rejected_invalid("Node name is missing");
        }
        // Validate everything before the first write so a rejection changes nothing.
        let node_exists = self.nodes.contains_key(&registration.node);
        if !node_exists && registration.address.is_empty() {
            return rejected_invalid("Address is missing");
        }
        let service_id = registration.service.as_ref().map(|s| s.id.as_str());
        for check in &registration.checks {
            if check.check_id.is_empty() {
                return rejected_invalid("CheckID is missing");
            }
            if !check.service_id.is_empty()
                && Some(check.service_id.as_str()) != service_id
                && self
                    .service(&registration.node, &check.service_id)
                    .is_none()
            {
                return Outcome::Rejected(Rejection::NotFound(format!(
                    "Unknown service ID {:?} for check ID {:?}",
                    check.service_id, check.check_id
                )));
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
                    .checks_on_node(&registration.node)
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
        Outcome::Done
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
        true
    }

    fn upsert_service(&mut self, index: u64, mut instance: ServiceInstance) {
        if let Some(existing) = self.services.row(&instance.node, &instance.id) {
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
        let stale: Vec<String> = self
            .checks_on_node(&instance.node)
            .filter(|check| {
                check.service_id == instance.id
                    && (check.service_name != instance.name || check.service_tags != instance.tags)
            })
            .map(|check| check.check_id.clone())
            .collect();
        for check_id in stale {
            if let Some(check) = self.checks.get_mut(&instance.node, &check_id) {
                check.service_name = instance.name.clone();
                check.service_tags = instance.tags.clone();
                check.modify_index = index;
            }
        }
        self.services
            .insert(instance.node.clone(), instance.id.clone(), instance);
    }

    fn upsert_check(&mut self, index: u64, node: &str, spec: &CheckSpec) {
        let (service_name, service_tags) = if spec.service_id.is_empty() {
            (String::new(), Vec::new())
        } else {
            self.service(node, &spec.service_id)
                .map(|s| (s.name.clone(), s.tags.clone()))
                .unwrap_or_default()
        };
        let existing = self.check(node, &spec.check_id);
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
        let critical = check.status == CheckStatus::Critical;
        self.checks
            .insert(node.to_string(), check.check_id.clone(), check);
        if critical {
            self.invalidate_tied_sessions(index, node, &spec.check_id);
        }
    }

    pub(crate) fn deregister(&mut self, index: u64, request: &Deregistration) -> Outcome {
        if request.node.is_empty() {
            return rejected_invalid("Node name is missing");
        }
        if let Some(check_id) = &request.check_id {
            self.remove_check(index, &request.node, check_id);
        }
        if let Some(service_id) = &request.service_id {
            self.remove_service(index, &request.node, service_id);
        }
        if request.check_id.is_none() && request.service_id.is_none() {
            let service_ids: Vec<String> = self
                .services_on_node(&request.node)
                .map(|s| s.id.clone())
                .collect();
            for service_id in service_ids {
                self.remove_service(index, &request.node, &service_id);
            }
            self.invalidate_node_sessions(index, &request.node);
            self.checks.remove_group(&request.node);
            self.nodes.remove(&request.node);
        }
        Outcome::Done
    }

    fn remove_service(&mut self, index: u64, node: &str, service_id: &str) {
        let Some(instance) = self
            .services
            .remove(&node.to_string(), &service_id.to_string())
        else {
            return;
        };
        self.unindex_name(&instance.name, node, service_id);
        self.service_indexes.insert(instance.name.clone(), index);
        let check_ids: Vec<String> = self
            .checks_on_node(node)
            .filter(|c| c.service_id == service_id)
            .map(|c| c.check_id.clone())
            .collect();
        for check_id in check_ids {
            self.remove_check(index, node, &check_id);
        }
    }

    fn remove_check(&mut self, index: u64, node: &str, check_id: &str) {
        let Some(check) = self.checks.remove(&node.to_string(), &check_id.to_string()) else {
            return;
        };
        self.invalidate_tied_sessions(index, node, check_id);
        if check.service_id.is_empty() {
            self.touch_services_of_node(index, node);
        } else {
            self.touch_service_id(index, node, &check.service_id);
        }
    }

    /// Registers a task's services, each with its checks, on the task's node as it starts
    /// running: the catalog's half of "a task's services are in the catalog exactly while
    /// the task is running" (the workload's half records their ids on the task).
    pub(crate) fn register_task_services(
        &mut self,
        index: u64,
        node: &str,
        services: &[(ServiceSpec, Vec<CheckSpec>)],
    ) {
        for (service, checks) in services {
            self.upsert_service(index, service_instance(node, service, index));
            for check in checks {
                self.upsert_check(index, node, check);
            }
        }
    }

    /// Deregisters a task's services, with their checks, from the task's node as it stops
    /// running. Ids no longer registered (deregistered by hand meanwhile) are skipped.
    pub(crate) fn deregister_task_services(
        &mut self,
        index: u64,
        node: &str,
        service_ids: &[String],
    ) {
        for service_id in service_ids {
            self.remove_service(index, node, service_id);
        }
    }

    fn update_check(
        &mut self,
        index: u64,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Outcome {
        let Some(current) = self.check(node, check_id) else {
            return Outcome::Rejected(Rejection::NotFound(format!(
                "Unknown check ID {check_id:?}"
            )));
        };
        if current.status == status && current.output == output {
            return Outcome::Done;
        }
        let service_id = current.service_id.clone();
        if let Some(check) = self
            .checks
            .get_mut(&node.to_string(), &check_id.to_string())
        {
            check.status = status;
            check.output = output.to_string();
            check.modify_index = index;
        }
        if status == CheckStatus::Critical {
            self.invalidate_tied_sessions(index, node, check_id);
        }
        if service_id.is_empty() {
            self.touch_services_of_node(index, node);
        } else {
            self.touch_service_id(index, node, &service_id);
        }
        Outcome::Done
    }

    pub(crate) fn kv_set(
        &mut self,
        index: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: Option<u64>,
    ) -> Outcome {
        if key.is_empty() {
            return rejected_invalid("Missing key name");
        }
        let existing = self.kv.get(key);
        if !cas_holds(existing, cas) {
            return Outcome::Condition(false);
        }
        // A plain write keeps the key's lock and lock index, as Consul's does.
        let entry = KvEntry {
            key: key.to_string(),
            value: value.to_vec(),
            flags,
            session: existing.and_then(|e| e.session.clone()),
            lock_index: existing.map_or(0, |e| e.lock_index),
            create_index: existing.map_or(index, |e| e.create_index),
            modify_index: index,
        };
        self.put_kv(entry);
        self.kv_tombstones.remove(key);
        if cas.is_some() {
            Outcome::Condition(true)
        } else {
            Outcome::Done
        }
    }

    pub(crate) fn kv_delete(
        &mut self,
        index: u64,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Outcome {
        if recurse {
            let doomed: Vec<String> = self.kv_prefix(key).map(|e| e.key.clone()).collect();
            for k in doomed {
                self.remove_kv(&k);
                self.bury(index, k);
            }
            return Outcome::Done;
        }
        let existing = self.kv.get(key);
        if !cas_holds(existing, cas) {
            return Outcome::Condition(false);
        }
        if self.remove_kv(key).is_some() {
            self.bury(index, key.to_string());
        }
        if cas.is_some() {
            Outcome::Condition(true)
        } else {
            Outcome::Done
        }
    }

    /// Writes a KV row, keeping the derived index of held keys.
    pub(crate) fn put_kv(&mut self, entry: KvEntry) {
        let old = self.kv.get(&entry.key).and_then(|e| e.session.clone());
        index_holder(
            &mut self.held_keys,
            &entry.key,
            old.as_deref(),
            entry.session.as_deref(),
        );
        self.kv.insert(entry.key.clone(), entry);
    }

    /// Deletes a KV row, keeping the derived index of held keys.
    pub(crate) fn remove_kv(&mut self, key: &str) -> Option<KvEntry> {
        let removed = self.kv.remove(key)?;
        index_holder(&mut self.held_keys, key, removed.session.as_deref(), None);
        Some(removed)
    }

    pub(crate) fn bury(&mut self, index: u64, key: String) {
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
            .services_on_node(node)
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

    /// One check.
    pub fn check(&self, node: &str, check_id: &str) -> Option<&Check> {
        self.checks.get(node).and_then(|c| c.get(check_id))
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

    /// The address a task is reached at on its host ports: the address its service instances
    /// were registered at on one of those ports (a Docker task publishes them at its compute
    /// node's Docker address, which need not be the node's), else its node's; `None` for a
    /// task whose node is gone.
    pub fn task_address(&self, task: &crate::workload::Allocation) -> Option<&str> {
        task.services
            .iter()
            .filter_map(|id| self.service(&task.node, id))
            .find(|s| !s.address.is_empty() && task.ports.contains(&s.port))
            .map(|s| s.address.as_str())
            .or_else(|| self.nodes.get(&task.node).map(|n| n.address.as_str()))
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

/// Moves `key` from the keys `old` holds to those `new` holds (either may be none).
fn index_holder(
    held: &mut HashMap<String, BTreeSet<String>>,
    key: &str,
    old: Option<&str>,
    new: Option<&str>,
) {
    if old == new {
        return;
    }
    if let Some(old) = old {
        unindex(held, old, key);
    }
    if let Some(new) = new {
        held.entry(new.to_string())
            .or_default()
            .insert(key.to_string());
    }
}

/// Removes `member` from the set under `group`, dropping the set once empty.
pub(crate) fn unindex(map: &mut HashMap<String, BTreeSet<String>>, group: &str, member: &str) {
    if let Some(set) = map.get_mut(group) {
        set.remove(member);
        if set.is_empty() {
            map.remove(group);
        }
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
fn service_instance(node: &str, spec: &ServiceSpec, index: u64) -> ServiceInstance {
    ServiceInstance {
        node: node.to_string(),
        id: spec.id.clone(),
        name: spec.name.clone(),
        tags: spec.tags.clone(),
        address: spec.address.clone(),
        port: spec.port,
        meta: spec.meta.clone(),
        enable_tag_override: spec.enable_tag_override,
        tagged_addresses: spec.tagged_addresses.clone(),
        create_index: index,
        modify_index: index,
    }
}

pub(crate) fn rejected_invalid(message: &str) -> Outcome {
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
