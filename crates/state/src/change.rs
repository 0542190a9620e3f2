//! What an applied entry changed, row by row: the change feed.
//!
//! `State::apply` returns the rows it changed (table, key, old and new value). The store
//! wakes the watchers of the tables they belong to; replaying the same changes onto a copy of
//! the state gives the state `apply` produced (`State::replay`), which is what a subscriber
//! that holds no log (a compute node, another datacenter) will do with them.

use serde::{Deserialize, Serialize};

use crate::acl::{AclPolicy, AclToken};
use crate::model::{Check, KvEntry, Node, ServiceInstance, Session, UserEvent};
use crate::prepared::PreparedQuery;
use crate::table::RowChange;
use crate::workload::{
    Allocation, AppSpec, ComputeNode, Deployment, GroupSpec, TaskFailure, Unplaced,
};

/// A group of tables a blocking query can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Nodes, services and checks.
    Catalog,
    /// Key/value entries and sessions.
    Kv,
    /// Apps, tasks, deployments, compute nodes.
    Workload,
    /// User events.
    Events,
    /// Prepared queries.
    Queries,
    /// ACL tokens, policies and the bootstrap marker.
    Acl,
}

impl Table {
    /// Every table, in the order of [`Table::slot`].
    pub const ALL: [Table; 6] = [
        Table::Catalog,
        Table::Kv,
        Table::Workload,
        Table::Events,
        Table::Queries,
        Table::Acl,
    ];

    /// Position of the table in [`Table::ALL`].
    pub fn slot(self) -> usize {
        self as usize
    }
}

/// One changed row of one table. Keys of grouped tables are (node, id).
///
/// Variants differ in size (a check or an app carries its definition); boxing them would
/// cost an allocation per changed row for entries that change a handful of rows each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A catalog node.
    Node(RowChange<String, Node>),
    /// A service instance.
    Service(RowChange<(String, String), ServiceInstance>),
    /// A health check.
    Check(RowChange<(String, String), Check>),
    /// The last index at which anything about a service name changed.
    ServiceIndex(RowChange<String, u64>),
    /// A KV entry.
    Kv(RowChange<String, KvEntry>),
    /// The index at which a deleted key disappeared.
    KvTombstone(RowChange<String, u64>),
    /// The highest index of the tombstones dropped to bound memory.
    KvReaped {
        /// Before the entry.
        old: u64,
        /// After the entry.
        new: u64,
    },
    /// An app's current version.
    App(RowChange<String, AppSpec>),
    /// An app's kept versions.
    AppHistory(RowChange<String, Vec<AppSpec>>),
    /// The definition the API echoes for one version of an app, keyed (app id, version).
    Definition(RowChange<(String, String), serde_json::Value>),
    /// A task.
    Task(RowChange<String, Allocation>),
    /// A deployment in progress.
    Deployment(RowChange<String, Deployment>),
    /// A compute node's offer.
    ComputeNode(RowChange<String, ComputeNode>),
    /// An app's last task failure.
    LastFailure(RowChange<String, TaskFailure>),
    /// Instances of an app the scheduler could not place.
    Queue(RowChange<String, Unplaced>),
    /// A Marathon event subscriber (callback URL) and when it was registered.
    Subscription(RowChange<String, String>),
    /// A session. Sessions share the KV watch group: a session's end changes the keys it held.
    Session(RowChange<String, Session>),
    /// A stored group.
    Group(RowChange<String, GroupSpec>),
    /// A user event, keyed by its Lamport time.
    Event(RowChange<u64, UserEvent>),
    /// A prepared query, keyed by its id.
    Query(RowChange<String, PreparedQuery>),
    /// An ACL token, keyed by its AccessorID.
    AclToken(RowChange<String, AclToken>),
    /// An ACL policy, keyed by its ID.
    AclPolicy(RowChange<String, AclPolicy>),
    /// The index of the entry that bootstrapped ACLs (0: never).
    AclBootstrapped {
        /// Before the entry.
        old: u64,
        /// After the entry.
        new: u64,
    },
}

impl Change {
    /// The table (watch group) the row belongs to.
    pub fn table(&self) -> Table {
        match self {
            Change::Node(_) | Change::Service(_) | Change::Check(_) | Change::ServiceIndex(_) => {
                Table::Catalog
            }
            Change::Kv(_)
            | Change::KvTombstone(_)
            | Change::KvReaped { .. }
            | Change::Session(_) => Table::Kv,
            Change::App(_)
            | Change::AppHistory(_)
            | Change::Definition(_)
            | Change::Task(_)
            | Change::Deployment(_)
            | Change::ComputeNode(_)
            | Change::LastFailure(_)
            | Change::Queue(_)
            | Change::Subscription(_)
            | Change::Group(_) => Table::Workload,
            Change::Event(_) => Table::Events,
            Change::Query(_) => Table::Queries,
            Change::AclToken(_) | Change::AclPolicy(_) | Change::AclBootstrapped { .. } => {
                Table::Acl
            }
        }
    }
}

/// Whether any of `changes` belongs to `table`.
pub fn touches(changes: &[Change], table: Table) -> bool {
    changes.iter().any(|change| change.table() == table)
}
