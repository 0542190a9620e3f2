//! Consul's transactions (`PUT /v1/txn`): KV, node, service and check operations applied in
//! one entry, in order, each seeing the effects of those before it. Either every operation
//! applies or none does: when one fails, the tables are put back as they were before the
//! transaction (earlier commands of the same batch keep their changes).
//!
//! Every operation runs even after one failed, as Consul runs them, so the answer lists each
//! failing operation with its index and Consul's error text.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::{CheckSpec, Deregistration, Outcome, Registration, ServiceSpec};
use crate::model::{Check, CheckStatus, KvEntry, Node, ServiceInstance, Session};
use crate::prepared::PreparedQuery;
use crate::state::State;
use crate::table::{Grouped, Rows};

/// Consul's KV verbs inside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvVerb {
    /// Write the value (the key's lock is kept).
    Set,
    /// Write the value only if the key's modify index is `index` (0: only if absent).
    Cas,
    /// Take the key's lock for `session` and write the value.
    Lock,
    /// Give up the key's lock held by `session` and write the value.
    Unlock,
    /// Read the key; an error when it is absent.
    Get,
    /// Read every key under the prefix.
    GetTree,
    /// Read the key; an empty entry when it is absent.
    GetOrEmpty,
    /// Fail unless the key's modify index is `index`.
    CheckIndex,
    /// Fail unless the key's lock is held by `session` (none: unlocked).
    CheckSession,
    /// Fail if the key exists.
    CheckNotExists,
    /// Delete the key.
    Delete,
    /// Delete every key under the prefix.
    DeleteTree,
    /// Delete the key only if its modify index is `index`.
    DeleteCas,
}

impl KvVerb {
    /// Every verb with its name on the wire.
    pub const ALL: [(KvVerb, &'static str); 13] = [
        (KvVerb::Set, "set"),
        (KvVerb::Cas, "cas"),
        (KvVerb::Lock, "lock"),
        (KvVerb::Unlock, "unlock"),
        (KvVerb::Get, "get"),
        (KvVerb::GetTree, "get-tree"),
        (KvVerb::GetOrEmpty, "get-or-empty"),
        (KvVerb::CheckIndex, "check-index"),
        (KvVerb::CheckSession, "check-session"),
        (KvVerb::CheckNotExists, "check-not-exists"),
        (KvVerb::Delete, "delete"),
        (KvVerb::DeleteTree, "delete-tree"),
        (KvVerb::DeleteCas, "delete-cas"),
    ];

    /// Whether the verb can change the state (Consul's `isWrite`).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            KvVerb::Set
                | KvVerb::Cas
                | KvVerb::Lock
                | KvVerb::Unlock
                | KvVerb::Delete
                | KvVerb::DeleteTree
                | KvVerb::DeleteCas
        )
    }
}

/// Consul's node, service and check verbs inside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogVerb {
    /// Create or replace the row.
    Set,
    /// Create or replace the row only if its modify index is `index` (0: only if absent).
    Cas,
    /// Read the row; an error when it is absent.
    Get,
    /// Delete the row (absent: nothing to do).
    Delete,
    /// Delete the row only if it exists with modify index `index`.
    DeleteCas,
}

impl CatalogVerb {
    /// Every verb with its name on the wire.
    pub const ALL: [(CatalogVerb, &'static str); 5] = [
        (CatalogVerb::Set, "set"),
        (CatalogVerb::Cas, "cas"),
        (CatalogVerb::Get, "get"),
        (CatalogVerb::Delete, "delete"),
        (CatalogVerb::DeleteCas, "delete-cas"),
    ];
}

/// One KV operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnKv {
    /// The verb.
    pub verb: KvVerb,
    /// The key (a prefix for the tree verbs).
    pub key: String,
    /// The value written.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Client flags written.
    pub flags: u64,
    /// The modify index compared by `cas`, `check-index` and `delete-cas`.
    pub index: u64,
    /// The session of `lock`, `unlock` and `check-session`.
    pub session: String,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// On a KV key or prefix.
    Kv(TxnKv),
    /// On a catalog node: `node` holds its name and, to write, its fields (no service or
    /// checks).
    Node {
        /// The verb.
        verb: CatalogVerb,
        /// The node.
        node: Registration,
        /// The modify index compared by `cas` and `delete-cas`.
        index: u64,
    },
    /// On a service instance of a node.
    Service {
        /// The verb.
        verb: CatalogVerb,
        /// The node.
        node: String,
        /// The instance (its id alone for `get` and the deletes).
        service: ServiceSpec,
        /// The modify index compared by `cas` and `delete-cas`.
        index: u64,
    },
    /// On a check of a node.
    Check {
        /// The verb.
        verb: CatalogVerb,
        /// The node.
        node: String,
        /// The check (its id alone for `get` and the deletes).
        check: Box<CheckSpec>,
        /// The modify index compared by `cas` and `delete-cas`.
        index: u64,
    },
}

impl TxnOp {
    /// Whether the operation can change the state: a transaction of reads alone is answered
    /// from a node's own state, without an entry.
    pub fn is_write(&self) -> bool {
        match self {
            TxnOp::Kv(op) => op.verb.is_write(),
            TxnOp::Node { verb, .. } | TxnOp::Service { verb, .. } | TxnOp::Check { verb, .. } => {
                *verb != CatalogVerb::Get
            }
        }
    }

    fn touches_catalog(&self) -> bool {
        !matches!(self, TxnOp::Kv(_))
    }
}

/// What one operation returned (Consul's `TxnResult`). KV entries written or checked come
/// without their value; those read, with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    /// A KV entry.
    Kv(KvEntry),
    /// A node.
    Node(Node),
    /// A service instance.
    Service(ServiceInstance),
    /// A check (boxed: a check carries its definition).
    Check(Box<Check>),
}

/// A failed operation: its position in the transaction and Consul's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    /// Index of the operation in the transaction.
    pub op_index: usize,
    /// Why it failed.
    pub what: String,
}

/// The answer to a transaction: its results when every operation succeeded (and was
/// applied), else the failures and nothing applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOutcome {
    /// Results of the operations, in order (empty when any failed).
    pub results: Vec<TxnResult>,
    /// The failed operations (empty when it applied).
    pub errors: Vec<TxnError>,
}

type OpResult = Result<Vec<TxnResult>, String>;

/// The tables a transaction can change, as they were before it, to put back if it fails.
/// The maps are persistent, so a copy is cheap; the derived index of service names is
/// copied only when the transaction writes to the catalog.
struct Checkpoint {
    nodes: Rows<String, Node>,
    services: Grouped<String, String, ServiceInstance>,
    checks: Grouped<String, String, Check>,
    service_indexes: Rows<String, u64>,
    kv: Rows<String, KvEntry>,
    kv_tombstones: Rows<String, u64>,
    kv_reaped_index: u64,
    sessions: Rows<String, Session>,
    /// A node removed ends its sessions, and with them their prepared queries.
    queries: Rows<String, PreparedQuery>,
    catalog: Option<CatalogDerived>,
    held_keys: HashMap<String, BTreeSet<String>>,
}

struct CatalogDerived {
    by_name: HashMap<String, BTreeSet<(String, String)>>,
    sessions_by_node: HashMap<String, BTreeSet<String>>,
}

impl State {
    /// Applies a transaction at `index`: every operation in order, all of them or none.
    pub(crate) fn apply_txn(&mut self, index: u64, ops: &[TxnOp]) -> Outcome {
        let checkpoint = ops
            .iter()
            .any(TxnOp::is_write)
            .then(|| self.checkpoint(ops.iter().any(|op| op.is_write() && op.touches_catalog())));
        let outcome = collect(ops.iter().map(|op| {
            if op.is_write() {
                self.write_txn_op(index, op)
            } else {
                self.read_txn_op(op)
            }
        }));
        if !outcome.errors.is_empty() {
            if let Some(checkpoint) = checkpoint {
                self.restore(checkpoint);
            }
        }
        Outcome::Txn(outcome)
    }

    /// Answers a transaction of reads alone from this state (writes among them fail).
    pub fn read_txn(&self, ops: &[TxnOp]) -> TxnOutcome {
        collect(ops.iter().map(|op| {
            if op.is_write() {
                Err("a read-only transaction cannot write".to_string())
            } else {
                self.read_txn_op(op)
            }
        }))
    }

    fn checkpoint(&self, catalog: bool) -> Checkpoint {
        Checkpoint {
            nodes: self.nodes.clone(),
            services: self.services.clone(),
            checks: self.checks.clone(),
            service_indexes: self.service_indexes.clone(),
            kv: self.kv.clone(),
            kv_tombstones: self.kv_tombstones.clone(),
            kv_reaped_index: self.kv_reaped_index,
            sessions: self.sessions.clone(),
            queries: self.queries.clone(),
            catalog: catalog.then(|| CatalogDerived {
                by_name: self.by_name.clone(),
                sessions_by_node: self.sessions_by_node.clone(),
            }),
            held_keys: self.held_keys.clone(),
        }
    }

    fn restore(&mut self, checkpoint: Checkpoint) {
        self.nodes = checkpoint.nodes;
        self.services = checkpoint.services;
        self.checks = checkpoint.checks;
        self.service_indexes = checkpoint.service_indexes;
        self.kv = checkpoint.kv;
        self.kv_tombstones = checkpoint.kv_tombstones;
        self.kv_reaped_index = checkpoint.kv_reaped_index;
        self.sessions = checkpoint.sessions;
        self.queries = checkpoint.queries;
        if let Some(catalog) = checkpoint.catalog {
            self.by_name = catalog.by_name;
            self.sessions_by_node = catalog.sessions_by_node;
        }
        self.held_keys = checkpoint.held_keys;
    }

    fn read_txn_op(&self, op: &TxnOp) -> OpResult {
        match op {
            TxnOp::Kv(op) => self.read_kv(op),
            TxnOp::Node { node, .. } => match self.nodes.get(&node.node) {
                Some(found) => Ok(vec![TxnResult::Node(found.clone())]),
                None => Err(format!("node {:?} doesn't exist", node.node)),
            },
            TxnOp::Service { node, service, .. } => match self.service(node, &service.id) {
                Some(found) => Ok(vec![TxnResult::Service(found.clone())]),
                None => Err(format!(
                    "service {:?} on node {node:?} doesn't exist",
                    service.id
                )),
            },
            TxnOp::Check { node, check, .. } => match self.check(node, &check.check_id) {
                Some(found) => Ok(vec![TxnResult::Check(Box::new(found.clone()))]),
                None => Err(format!(
                    "check {:?} on node {node:?} doesn't exist",
                    check.check_id
                )),
            },
        }
    }

    fn read_kv(&self, op: &TxnKv) -> OpResult {
        let key = &op.key;
        let existing = self.kv.get(key);
        match op.verb {
            KvVerb::Get => existing
                .map(|entry| vec![TxnResult::Kv(entry.clone())])
                .ok_or_else(|| format!("key {key:?} doesn't exist")),
            KvVerb::GetOrEmpty => Ok(vec![TxnResult::Kv(existing.cloned().unwrap_or_else(
                || KvEntry {
                    key: key.clone(),
                    value: Vec::new(),
                    flags: op.flags,
                    session: (!op.session.is_empty()).then(|| op.session.clone()),
                    lock_index: 0,
                    create_index: 0,
                    modify_index: op.index,
                },
            ))]),
            KvVerb::GetTree => Ok(self
                .kv_prefix(key)
                .map(|entry| TxnResult::Kv(entry.clone()))
                .collect()),
            KvVerb::CheckIndex => match existing {
                None => Err(format!("failed to check index, key {key:?} doesn't exist")),
                Some(entry) if entry.modify_index != op.index => Err(format!(
                    "failed index check for key {key:?}, current modify index {} != {}",
                    entry.modify_index, op.index
                )),
                Some(entry) => Ok(vec![without_value(entry)]),
            },
            KvVerb::CheckSession => match existing {
                None => Err(format!(
                    "failed to check session, key {key:?} doesn't exist"
                )),
                Some(entry) if entry.session.as_deref().unwrap_or_default() != op.session => {
                    Err(format!(
                        "failed session check for key {key:?}, current session {:?} != {:?}",
                        entry.session.as_deref().unwrap_or_default(),
                        op.session
                    ))
                }
                Some(entry) => Ok(vec![without_value(entry)]),
            },
            KvVerb::CheckNotExists => match existing {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(Vec::new()),
            },
            _ => Err(format!("unknown KV read verb {:?}", op.verb)),
        }
    }

    fn write_txn_op(&mut self, index: u64, op: &TxnOp) -> OpResult {
        match op {
            TxnOp::Kv(op) => self.write_kv(index, op),
            TxnOp::Node {
                verb,
                node,
                index: cas,
            } => self.write_node(index, *verb, node, *cas),
            TxnOp::Service {
                verb,
                node,
                service,
                index: cas,
            } => self.write_service(index, *verb, node, service, *cas),
            TxnOp::Check {
                verb,
                node,
                check,
                index: cas,
            } => self.write_check(index, *verb, node, check, *cas),
        }
    }

    fn write_kv(&mut self, index: u64, op: &TxnKv) -> OpResult {
        let key = &op.key;
        let outcome = match op.verb {
            KvVerb::Set => self.kv_set(index, key, &op.value, op.flags, None),
            KvVerb::Cas => self.kv_set(index, key, &op.value, op.flags, Some(op.index)),
            KvVerb::Lock => self.kv_acquire(index, key, &op.value, op.flags, &op.session),
            KvVerb::Unlock => self.kv_release(index, key, &op.value, op.flags, &op.session),
            KvVerb::Delete => self.kv_delete(index, key, false, None),
            KvVerb::DeleteTree => self.kv_delete(index, key, true, None),
            // Consul's delete-cas of an absent key succeeds: there is nothing to delete.
            KvVerb::DeleteCas if !self.kv.contains_key(key) => Outcome::Done,
            KvVerb::DeleteCas => self.kv_delete(index, key, false, Some(op.index)),
            _ => return Err(format!("unknown KV write verb {:?}", op.verb)),
        };
        match outcome {
            Outcome::Rejected(rejection) => return Err(rejection.to_string()),
            Outcome::Condition(false) => {
                return Err(match op.verb {
                    KvVerb::Cas => format!("failed to set key {key:?}, index is stale"),
                    KvVerb::Lock => format!("failed to lock key {key:?}, lock is already held"),
                    KvVerb::Unlock => format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                ),
                    _ => format!("failed to delete key {key:?}, index is stale"),
                })
            }
            _ => {}
        }
        let written = matches!(
            op.verb,
            KvVerb::Set | KvVerb::Cas | KvVerb::Lock | KvVerb::Unlock
        );
        Ok(match self.kv.get(key) {
            Some(entry) if written => vec![without_value(entry)],
            _ => Vec::new(),
        })
    }

    fn write_node(
        &mut self,
        index: u64,
        verb: CatalogVerb,
        node: &Registration,
        cas: u64,
    ) -> OpResult {
        let name = node.node.clone();
        let target = CatalogTarget {
            current: self.nodes.get(&name).map(|n| n.modify_index),
            named: format!("node {name:?}"),
            register: Registration {
                service: None,
                checks: Vec::new(),
                skip_node_update: false,
                replace_service_checks: false,
                ..node.clone()
            },
            deregister: whole_node(&name),
        };
        self.write_catalog(
            index,
            verb,
            cas,
            target,
            |_| Ok(()),
            |state| state.nodes.get(&name).map(|n| TxnResult::Node(n.clone())),
        )
    }

    fn write_service(
        &mut self,
        index: u64,
        verb: CatalogVerb,
        node: &str,
        service: &ServiceSpec,
        cas: u64,
    ) -> OpResult {
        let id = &service.id;
        let target = CatalogTarget {
            current: self.service(node, id).map(|s| s.modify_index),
            named: format!("service {id:?} on node {node:?}"),
            register: Registration {
                node: node.to_string(),
                skip_node_update: true,
                service: Some(service.clone()),
                ..Default::default()
            },
            deregister: Deregistration {
                service_id: Some(id.clone()),
                ..whole_node(node)
            },
        };
        self.write_catalog(
            index,
            verb,
            cas,
            target,
            |state| node_exists(state, node),
            |state| {
                state
                    .service(node, id)
                    .map(|s| TxnResult::Service(s.clone()))
            },
        )
    }

    fn write_check(
        &mut self,
        index: u64,
        verb: CatalogVerb,
        node: &str,
        check: &CheckSpec,
        cas: u64,
    ) -> OpResult {
        let id = &check.check_id;
        let target = CatalogTarget {
            current: self.check(node, id).map(|c| c.modify_index),
            named: format!("check {id:?} on node {node:?}"),
            register: Registration {
                node: node.to_string(),
                skip_node_update: true,
                // A check written without a status is critical, as Consul's are.
                checks: vec![CheckSpec {
                    status: Some(check.status.unwrap_or(CheckStatus::Critical)),
                    ..check.clone()
                }],
                ..Default::default()
            },
            deregister: Deregistration {
                check_id: Some(id.clone()),
                ..whole_node(node)
            },
        };
        let service_id = &check.service_id;
        let valid = |state: &State| {
            node_exists(state, node)?;
            if !service_id.is_empty() && state.service(node, service_id).is_none() {
                return Err("Missing service registration".to_string());
            }
            Ok(())
        };
        self.write_catalog(index, verb, cas, target, valid, |state| {
            state
                .check(node, id)
                .map(|c| TxnResult::Check(Box::new(c.clone())))
        })
    }

    /// A catalog write: the verb's condition on the row's modify index, then the
    /// registration (after `valid`, answering the row as `read` finds it) or the
    /// deregistration (of a row that exists).
    fn write_catalog(
        &mut self,
        index: u64,
        verb: CatalogVerb,
        cas: u64,
        target: CatalogTarget,
        valid: impl FnOnce(&State) -> Result<(), String>,
        read: impl FnOnce(&State) -> Option<TxnResult>,
    ) -> OpResult {
        let CatalogTarget { current, named, .. } = &target;
        match verb {
            CatalogVerb::Cas if !cas_holds(*current, cas) => {
                Err(format!("failed to set {named}, index is stale"))
            }
            CatalogVerb::DeleteCas if *current != Some(cas) => {
                Err(format!("failed to delete {named}, index is stale"))
            }
            CatalogVerb::Set | CatalogVerb::Cas => {
                valid(self)?;
                refused(self.register(index, &target.register))?;
                Ok(read(self).into_iter().collect())
            }
            CatalogVerb::Get => Err(format!("{named}: not a write")),
            CatalogVerb::Delete | CatalogVerb::DeleteCas => {
                if current.is_some() {
                    refused(self.deregister(index, &target.deregister))?;
                }
                Ok(Vec::new())
            }
        }
    }
}

/// The row a catalog write targets: its modify index (absent: `None`), how Consul's errors
/// name it, and the registration and deregistration that write it.
struct CatalogTarget {
    current: Option<u64>,
    named: String,
    register: Registration,
    deregister: Deregistration,
}

fn node_exists(state: &State, node: &str) -> Result<(), String> {
    if state.nodes.contains_key(node) {
        Ok(())
    } else {
        Err("Missing node registration".to_string())
    }
}

/// Gathers the operations' results, or their errors when any failed.
fn collect(results: impl Iterator<Item = OpResult>) -> TxnOutcome {
    let mut outcome = TxnOutcome::default();
    for (op_index, result) in results.enumerate() {
        match result {
            Ok(results) => outcome.results.extend(results),
            Err(what) => outcome.errors.push(TxnError { op_index, what }),
        }
    }
    if !outcome.errors.is_empty() {
        outcome.results.clear();
    }
    outcome
}

/// A KV entry as written or checked operations return it: without its value.
fn without_value(entry: &KvEntry) -> TxnResult {
    TxnResult::Kv(KvEntry {
        value: Vec::new(),
        ..entry.clone()
    })
}

/// Consul's catalog check-and-set: 0 only for an absent row, else its modify index.
fn cas_holds(current: Option<u64>, cas: u64) -> bool {
    match current {
        None => cas == 0,
        Some(modify_index) => modify_index == cas,
    }
}

fn whole_node(node: &str) -> Deregistration {
    Deregistration {
        node: node.to_string(),
        service_id: None,
        check_id: None,
    }
}

fn refused(outcome: Outcome) -> Result<(), String> {
    match outcome {
        Outcome::Rejected(rejection) => Err(rejection.to_string()),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "txn_tests.rs"]
mod tests;
