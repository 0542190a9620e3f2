//! The changes the state machine applies: each one is the payload of one Raft log entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::acl::{AclBootstrap, AclPolicy, AclReplication, AclToken};
use crate::model::{CheckDefinition, CheckStatus, ServiceAddress, Session, UserEvent};
use crate::prepared::PreparedQuery;
use crate::txn::{TxnOp, TxnOutcome};
use crate::workload::{
    Allocation, AppSpec, ComputeNode, Deployment, GroupSpec, TaskState, Unplaced,
};

/// One change to the replicated state. Validated at the edge, re-checked by `apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Upsert a node and, optionally, one service instance and checks on it.
    Register(Box<Registration>),
    /// Remove a check, a service instance (with its checks) or a whole node.
    Deregister(Deregistration),
    /// Change the status/output of an existing check.
    UpdateCheck {
        /// Node holding the check.
        node: String,
        /// The check.
        check_id: String,
        /// New status.
        status: CheckStatus,
        /// New output.
        output: String,
    },
    /// Write a KV entry, optionally only if its modify index matches (`cas`).
    KvSet {
        /// The key.
        key: String,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Client flags.
        flags: u64,
        /// Check-and-set index: 0 = only if absent.
        cas: Option<u64>,
    },
    /// Create or replace an app's current version (and start its deployment).
    PutApp {
        /// The new version.
        app: Box<AppSpec>,
        /// The deployment rolling it out, if any.
        deployment: Option<Deployment>,
        /// The definition the API echoes for this version (opaque here); `Null` for none.
        #[serde(default)]
        definition: serde_json::Value,
    },
    /// Create an app (`POST /v2/apps`) and start its deployment; rejected with
    /// [`Rejection::Conflict`] when an app with that id exists, so of two concurrent creates
    /// of one id exactly one succeeds.
    CreateApp {
        /// The first version.
        app: Box<AppSpec>,
        /// The deployment starting it.
        deployment: Option<Deployment>,
        /// The definition the API echoes for this version (opaque here); `Null` for none.
        #[serde(default)]
        definition: serde_json::Value,
    },
    /// Remove an app; its tasks are asked to stop.
    DeleteApp {
        /// The app.
        app_id: String,
        /// The deployment stopping it.
        deployment: Option<Deployment>,
    },
    /// Record what a compute node offers.
    RegisterCompute(ComputeNode),
    /// Place new tasks (a scheduler plan); each is re-checked against the node's free
    /// resources and skipped if it no longer fits.
    Place {
        /// New allocations, in state `Staging`.
        allocations: Vec<Allocation>,
        /// What the scheduler could not place, per app, and why: replaces the recorded
        /// queue (`/v2/queue`), so every node can tell.
        #[serde(default)]
        unplaced: BTreeMap<String, Unplaced>,
    },
    /// Ask tasks to stop; with `scale`, the app's instance count drops by as many.
    StopTasks {
        /// Task ids.
        ids: Vec<String>,
        /// Also lower the app's `instances`.
        scale: bool,
        /// Why (kept as the failure message when relevant).
        reason: String,
    },
    /// A node reports a task's state. `Running` registers its services (given here) in the
    /// same entry; a terminal state deregisters them and removes the task.
    UpdateTask {
        /// Task id.
        id: String,
        /// New state.
        state: TaskState,
        /// Driver message.
        message: String,
        /// Timestamp from the reporter (RFC 3339).
        at: String,
        /// Services (and their checks) to register when it starts running.
        services: Vec<(ServiceSpec, Vec<CheckSpec>)>,
    },
    /// How many health checks in a row a running task has failed (Marathon's
    /// `consecutiveFailures`), as its node counts them.
    TaskHealth {
        /// Task id.
        id: String,
        /// Failures in a row; 0 once it passes again.
        failures: u32,
    },
    /// Register a Marathon event subscriber (`POST /v2/eventSubscriptions`); registering a
    /// URL already registered changes nothing.
    Subscribe {
        /// The URL events are posted to.
        callback_url: String,
        /// When it was registered (RFC 3339), chosen by the proposer.
        at: String,
    },
    /// Remove a Marathon event subscriber; an unknown URL is a no-op.
    Unsubscribe {
        /// The URL given at registration.
        callback_url: String,
    },
    /// A deployment has converged (or was cancelled).
    FinishDeployment {
        /// Deployment id.
        id: String,
    },
    /// Delete a key, or every key under a prefix.
    KvDelete {
        /// The key or prefix.
        key: String,
        /// Delete every key starting with `key`.
        recurse: bool,
        /// Check-and-set index for a single key.
        cas: Option<u64>,
    },
    /// Several commands in one entry, applied in order as if each were its own entry (one
    /// refused does not stop the others), each with its own outcome ([`Outcome::Each`]).
    /// The control loop writes each round as one batch, and concurrent writes are proposed
    /// together as one. A batch holds no batch.
    Batch(Vec<Command>),
    /// Create a session (its id chosen by the proposer). Refused when the id is taken, its
    /// node is not registered, or one of its checks is missing from the node or critical.
    SessionCreate(Box<Session>),
    /// Invalidate a session (destroyed, or its TTL ran out): the keys it holds are released
    /// or deleted, as its behavior says, in this entry. Unknown ids are a no-op.
    SessionDestroy {
        /// The session.
        id: String,
    },
    /// Take a key's lock for a session (`?acquire=`): `Condition(true)` when it holds the
    /// lock afterwards (the value is written), `Condition(false)` when another session does.
    KvAcquire {
        /// The key.
        key: String,
        /// The value written with the lock.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Client flags.
        flags: u64,
        /// The session taking the lock.
        session: String,
    },
    /// Give up a key's lock (`?release=`): `Condition(true)` when the session held it (the
    /// value is written and the lock cleared), else `Condition(false)`.
    KvRelease {
        /// The key.
        key: String,
        /// The value written with the release.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Client flags.
        flags: u64,
        /// The session giving it up.
        session: String,
    },
    /// A Consul transaction (`PUT /v1/txn`): its operations applied in order, all or none
    /// ([`Outcome::Txn`]).
    Txn(Vec<TxnOp>),
    /// Create or change a group tree (`POST`/`PUT /v2/groups`) in one deployment: the
    /// groups and apps given are written, the ids in `remove` go with everything below them.
    /// `apply` checks the dependencies of what is written (unknown or circular ones are
    /// refused with [`Rejection::Invalid`]) and orders the deployment's steps by them.
    PutGroup(Box<GroupUpdate>),
    /// Remove a group and every app and group below it; the deployment stops the apps,
    /// dependents first.
    DeleteGroup {
        /// The group.
        id: String,
        /// The deployment stopping its apps (its steps are filled in by `apply`).
        deployment: Option<Deployment>,
    },
    /// Record a user event; `apply` gives it the next Lamport time and drops the oldest
    /// beyond the last [`crate::model::MAX_USER_EVENTS`].
    FireEvent(Box<UserEvent>),
    /// Store a new prepared query (its id chosen by the proposer). Refused when the id is
    /// taken, or the definition fails Consul's checks (a service name; a name that is no
    /// other query's name or id; one catch-all template; an existing session; a template
    /// that compiles).
    QueryCreate(Box<PreparedQuery>),
    /// Replace an existing prepared query (same checks as [`Command::QueryCreate`]).
    QueryUpdate(Box<PreparedQuery>),
    /// Remove a prepared query; an unknown id is refused.
    QueryDelete {
        /// The query.
        id: String,
    },
    /// Bootstrap ACLs: the first management token. Refused with [`Rejection::Conflict`]
    /// once done, unless the command carries the reset index of the last bootstrap.
    AclBootstrap(Box<AclBootstrap>),
    /// Create (`create`) or update an ACL token. Its policies, given by ID or by name,
    /// must exist; an update may not change the SecretID, Local or the expiration.
    AclTokenSet {
        /// The token (AccessorID and SecretID chosen by the proposer on create).
        token: Box<AclToken>,
        /// Create: refused when the AccessorID is taken. Update: refused when it is not.
        create: bool,
    },
    /// Delete an ACL token (not the anonymous one); an unknown AccessorID is a no-op.
    AclTokenDelete {
        /// The token's AccessorID.
        accessor_id: String,
    },
    /// Create (`create`) or update an ACL policy; `apply` parses its rules (refusing rules
    /// that do not parse) and stores them with the text.
    AclPolicySet {
        /// The policy.
        policy: Box<AclPolicy>,
        /// Create: refused when the ID is taken. Update: refused when it is not.
        create: bool,
    },
    /// Delete an ACL policy (not the builtin global-management one); an unknown ID is a
    /// no-op.
    AclPolicyDelete {
        /// The policy's ID.
        id: String,
    },
    /// Replication from the primary datacenter, written by the leader of another one: the
    /// policies and global tokens that changed or went upstream, in one entry. Local tokens
    /// are never touched.
    AclReplicate(Box<AclReplication>),
}

/// A change to a group tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupUpdate {
    /// The group the request names.
    pub id: String,
    /// Refuse with [`Rejection::Conflict`] when the group exists (`POST`).
    pub create: bool,
    /// Group records to write.
    pub groups: Vec<GroupSpec>,
    /// Apps to write, each with the definition the API echoes for it.
    pub apps: Vec<(AppSpec, serde_json::Value)>,
    /// App and group ids to remove, with everything below them.
    pub remove: Vec<String>,
    /// The deployment rolling it out; `apply` fills in its steps from what changes.
    pub deployment: Option<Deployment>,
}

/// Catalog registration, shaped after Consul's `/v1/catalog/register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter of the node.
    pub datacenter: String,
    /// Tagged addresses of the node.
    pub tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    pub node_meta: BTreeMap<String, String>,
    /// Leave an existing node row untouched.
    pub skip_node_update: bool,
    /// Service instance to upsert.
    pub service: Option<ServiceSpec>,
    /// Checks to upsert.
    pub checks: Vec<CheckSpec>,
    /// Remove the service's checks that are not in `checks` (agent re-registration).
    pub replace_service_checks: bool,
}

/// A service instance as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Instance id.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address; empty = node's.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Consul's tag-override flag.
    pub enable_tag_override: bool,
    /// Tagged addresses of the instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
}

/// A check as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// Check id.
    pub check_id: String,
    /// Name.
    pub name: String,
    /// Initial status; `None` keeps an existing check's status, new checks start critical.
    pub status: Option<CheckStatus>,
    /// Notes.
    pub notes: String,
    /// Output.
    pub output: String,
    /// Service instance guarded, empty for a node check.
    pub service_id: String,
    /// How to run it.
    pub definition: CheckDefinition,
}

/// What to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deregistration {
    /// Node.
    pub node: String,
    /// Remove only this service instance (and its checks).
    pub service_id: Option<String>,
    /// Remove only this check.
    pub check_id: Option<String>,
}

/// What applying a command returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The change was applied (or was a no-op).
    Done,
    /// A conditional write: whether its condition held.
    Condition(bool),
    /// The command was rejected against current state; nothing changed.
    Rejected(Rejection),
    /// A batch's outcomes, one per command, in order.
    Each(Vec<Outcome>),
    /// A transaction's results, or its failed operations (then nothing was applied).
    Txn(TxnOutcome),
}

/// Why `apply` refused a command. The edge maps these to status codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The command contradicts current state.
    #[error("{0}")]
    Invalid(String),
    /// What the command would create already exists.
    #[error("{0}")]
    Conflict(String),
    /// Something the command relies on in other rows does not hold (a session's node or
    /// checks, the session of a lock). Consul answers these with its error text as a 500,
    /// which its clients match on.
    #[error("{0}")]
    Precondition(String),
}
