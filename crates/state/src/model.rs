//! The rows of the state store: nodes, service instances, checks and KV entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The id of the node-level health check every node carries (Consul's name for it).
pub const NODE_HEALTH_CHECK_ID: &str = "serfHealth";

/// Health of a check, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// The check succeeds.
    Passing,
    /// The check reports a degraded but usable instance.
    Warning,
    /// The check fails; the instance must not receive traffic.
    Critical,
}

impl CheckStatus {
    /// The lowercase name Consul uses on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    /// Parses Consul's lowercase status names.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// A machine in the datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique node name.
    pub name: String,
    /// Address other nodes and DNS answers use for it.
    pub address: String,
    /// Datacenter the node belongs to.
    pub datacenter: String,
    /// Extra addresses by purpose (`lan`, `wan`).
    pub tagged_addresses: BTreeMap<String, String>,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Raft index that created the row.
    pub create_index: u64,
    /// Raft index that last changed the row.
    pub modify_index: u64,
}

/// One registered instance of a service on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// Node the instance runs on.
    pub node: String,
    /// Instance id, unique per node.
    pub id: String,
    /// Service name, shared by all instances.
    pub name: String,
    /// Tags used for filtering (DNS and `?tag=`).
    pub tags: Vec<String>,
    /// Address of the instance; empty means "the node's address".
    pub address: String,
    /// Port of the instance.
    pub port: u16,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Consul's anti-entropy flag, kept for compatibility.
    pub enable_tag_override: bool,
    /// Extra addresses of the instance by purpose (`lan`, `wan`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// Raft index that created the row.
    pub create_index: u64,
    /// Raft index that last changed the row.
    pub modify_index: u64,
}

/// One tagged address of a service instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddress {
    /// The address.
    pub address: String,
    /// The port.
    pub port: u16,
}

impl ServiceInstance {
    /// The address traffic goes to: the instance's own, or its node's.
    pub fn effective_address<'a>(&'a self, node: &'a Node) -> &'a str {
        if self.address.is_empty() {
            &node.address
        } else {
            &self.address
        }
    }
}

/// What the agent runs to decide a check's status. Stored with the check so that
/// the definition survives restarts and is the same on every server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDefinition {
    /// HTTP URL to GET (2xx passing, 429 warning, anything else critical).
    pub http: Option<String>,
    /// HTTP method, default GET.
    pub method: Option<String>,
    /// Extra request headers.
    pub header: BTreeMap<String, Vec<String>>,
    /// `host:port` to open a TCP connection to.
    pub tcp: Option<String>,
    /// Time to live for a TTL check, in milliseconds.
    pub ttl_ms: Option<u64>,
    /// Run interval for HTTP, TCP and task command checks, in milliseconds.
    pub interval_ms: Option<u64>,
    /// Per-run timeout, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Deregister the service once the check has been critical this long, in milliseconds.
    pub deregister_critical_after_ms: Option<u64>,
    /// The original text of the durations, echoed back by the agent API.
    pub interval_text: String,
    /// The original TTL text.
    pub ttl_text: String,
    /// The original timeout text.
    pub timeout_text: String,
    /// A command run in a task's context (Marathon's COMMAND health checks): exit status 0
    /// is passing, anything else critical. The node runner defines these for the tasks it
    /// runs; the Consul API does not accept them (script checks are refused there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_command: Option<TaskCommand>,
    /// A script check's program and arguments, run on the node (Consul's `Args`; its old
    /// `Script` is kept as `["/bin/sh", "-c", SCRIPT]`). With `docker_container_id`, the
    /// arguments given to the shell inside the container instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A Docker check: the container the command runs in (`docker exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_container_id: Option<String>,
    /// A Docker check's shell (default `/bin/sh`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shell: String,
    /// The body an HTTP check sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// An HTTPS check accepts any certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
    /// The name an HTTPS check sends (SNI) and verifies, instead of the URL's host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tls_server_name: String,
    /// Consecutive successes before the status becomes passing or warning.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub success_before_passing: u32,
    /// Consecutive failures before the status becomes critical.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures_before_critical: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A command a check runs inside a task, through the driver that runs the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCommand {
    /// The task to run it in (on the check's node).
    pub task_id: String,
    /// The command, run as `sh -c COMMAND`.
    pub command: String,
}

/// What decides a check's status: the one reading of a definition's fields, in the order
/// of precedence the agent and the API share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind<'a> {
    /// Passing while updates keep coming within the time to live (milliseconds).
    Ttl(u64),
    /// An HTTP request to this URL.
    Http(&'a str),
    /// A TCP connection to this `host:port`.
    Tcp(&'a str),
    /// A command run in a task.
    TaskCommand(&'a TaskCommand),
    /// A program run on the node, with its arguments.
    Script(&'a [String]),
    /// A command run in a container through the Docker engine: `SHELL -c ARGS...`.
    Docker {
        /// The container.
        container: &'a str,
        /// The shell (empty: `/bin/sh`).
        shell: &'a str,
        /// What follows `-c`.
        args: &'a [String],
    },
    /// Nothing runs it: its status is whatever was last written (catalog checks, `serfHealth`).
    Static,
}

impl CheckKind<'_> {
    /// The kind as Consul names it in a check's `Type` (empty for a static check).
    pub fn consul_type(self) -> &'static str {
        match self {
            CheckKind::Ttl(_) => "ttl",
            CheckKind::Http(_) => "http",
            CheckKind::Tcp(_) => "tcp",
            CheckKind::TaskCommand(_) | CheckKind::Script(_) => "script",
            CheckKind::Docker { .. } => "docker",
            CheckKind::Static => "",
        }
    }

    /// Whether the agent probes it on an interval.
    pub fn is_probed(self) -> bool {
        matches!(
            self,
            CheckKind::Http(_)
                | CheckKind::Tcp(_)
                | CheckKind::TaskCommand(_)
                | CheckKind::Script(_)
                | CheckKind::Docker { .. }
        )
    }

    /// Whether it runs a command chosen by whoever registered it (script and Docker
    /// checks), which an agent runs only when script checks are enabled.
    pub fn runs_script(self) -> bool {
        matches!(self, CheckKind::Script(_) | CheckKind::Docker { .. })
    }
}

impl CheckDefinition {
    /// What kind of check this is. A definition naming several (which the API refuses)
    /// counts as the first of TTL, HTTP, TCP, task command, Docker, script.
    pub fn kind(&self) -> CheckKind<'_> {
        if let Some(ttl) = self.ttl_ms {
            CheckKind::Ttl(ttl)
        } else if let Some(url) = &self.http {
            CheckKind::Http(url)
        } else if let Some(address) = &self.tcp {
            CheckKind::Tcp(address)
        } else if let Some(command) = &self.task_command {
            CheckKind::TaskCommand(command)
        } else if let Some(container) = &self.docker_container_id {
            CheckKind::Docker {
                container,
                shell: &self.shell,
                args: &self.args,
            }
        } else if !self.args.is_empty() {
            CheckKind::Script(&self.args)
        } else {
            CheckKind::Static
        }
    }
}

/// A health check on a node or on one service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Node the check belongs to.
    pub node: String,
    /// Check id, unique per node.
    pub check_id: String,
    /// Human-readable name.
    pub name: String,
    /// Current status.
    pub status: CheckStatus,
    /// Operator notes.
    pub notes: String,
    /// Output of the last run.
    pub output: String,
    /// Service instance the check guards; empty for node-level checks.
    pub service_id: String,
    /// Name of that service, denormalised as Consul does.
    pub service_name: String,
    /// Tags of that service, denormalised as Consul does.
    pub service_tags: Vec<String>,
    /// How the agent runs the check.
    pub definition: CheckDefinition,
    /// Raft index that created the row.
    pub create_index: u64,
    /// Raft index that last changed the row.
    pub modify_index: u64,
}

/// A user event (`PUT /v1/event/fire/NAME`), kept in the replicated state so that every node
/// lists it. The last [`MAX_USER_EVENTS`] are kept, as each Consul agent keeps its last 256.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// The event's id (a UUID chosen by the node that fired it).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Regex of the node names that process it (empty: all).
    pub node_filter: String,
    /// Regex of the service names a node must run to process it (empty: any).
    pub service_filter: String,
    /// Regex of the tags that service must carry (empty: any).
    pub tag_filter: String,
    /// Its position among events, 1 for the first (Consul's Lamport time); set by `apply`.
    pub ltime: u64,
}

/// How many user events the state keeps.
pub const MAX_USER_EVENTS: usize = 256;

/// A key/value entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// Raw value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u64,
    /// The session holding the key's lock, if one does (`?acquire=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// How many times the lock was acquired by a new holder.
    #[serde(default)]
    pub lock_index: u64,
    /// Raft index that created the row.
    pub create_index: u64,
    /// Raft index that last changed the row.
    pub modify_index: u64,
}

/// What happens to the keys a session holds when it is invalidated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// The keys stay, unlocked (their `Session` cleared).
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

impl SessionBehavior {
    /// The name Consul uses on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

/// A service check a session is tied to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCheckRef {
    /// The check id (on the session's node).
    pub id: String,
    /// Consul Enterprise's namespace; kept and echoed, otherwise unused.
    #[serde(default)]
    pub namespace: String,
}

/// A Consul session: a lease on a node, tied to health checks, that can hold KV locks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session's id (a UUID).
    pub id: String,
    /// Free-form name.
    pub name: String,
    /// The node the session belongs to.
    pub node: String,
    /// The deprecated `Checks` field, as left after Consul's default-check fixup.
    #[serde(default)]
    pub checks: Vec<String>,
    /// Node checks whose turning critical (or removal) invalidates the session.
    #[serde(default)]
    pub node_checks: Vec<String>,
    /// Service checks (on the same node) that invalidate it likewise.
    #[serde(default)]
    pub service_checks: Vec<ServiceCheckRef>,
    /// After invalidation, how long its keys cannot be acquired, in nanoseconds.
    pub lock_delay_ns: u64,
    /// What happens to its keys when it is invalidated.
    pub behavior: SessionBehavior,
    /// The TTL as the client gave it (empty: none); the leader expires the session when it
    /// is not renewed within twice this.
    #[serde(default)]
    pub ttl: String,
    /// The TTL in nanoseconds; 0 for none.
    #[serde(default)]
    pub ttl_ns: u64,
    /// Raft index that created the row.
    pub create_index: u64,
    /// Raft index that last changed the row.
    pub modify_index: u64,
}

impl Session {
    /// Whether the check `check_id` (on the session's node) is tied to the session.
    pub fn is_tied_to(&self, check_id: &str) -> bool {
        self.checks.iter().any(|c| c == check_id)
            || self.node_checks.iter().any(|c| c == check_id)
            || self.service_checks.iter().any(|c| c.id == check_id)
    }

    /// Every check id tied to the session.
    pub fn check_ids(&self) -> impl Iterator<Item = &str> {
        self.checks
            .iter()
            .chain(&self.node_checks)
            .map(String::as_str)
            .chain(self.service_checks.iter().map(|c| c.id.as_str()))
    }
}
