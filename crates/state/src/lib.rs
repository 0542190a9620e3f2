//! atoll's replicated state: the catalog (nodes, service instances, checks), KV and the
//! workloads, the commands that change it, and the rows each command changed.
//!
//! Everything here is deterministic: the same log applied in the same order gives the
//! same state on every server.
#![forbid(unsafe_code)]

pub mod acl;
pub mod acl_cache;
pub mod change;
pub mod command;
pub mod groups;
pub mod model;
pub mod prepared;
mod session_apply;
pub mod snapshot;
mod state;
pub mod table;
mod txn;
pub mod workload;
mod workload_apply;

pub use acl_cache::AuthorizerCache;
pub use change::{Change, Table};
pub use command::{
    CheckSpec, Command, Deregistration, GroupUpdate, Outcome, Registration, Rejection, ServiceSpec,
};
pub use model::{
    Check, CheckDefinition, CheckKind, CheckStatus, KvEntry, Node, ServiceAddress, ServiceCheckRef,
    ServiceInstance, Session, SessionBehavior, TaskCommand, UserEvent, MAX_USER_EVENTS,
    NODE_HEALTH_CHECK_ID,
};
pub use prepared::{PreparedQuery, QueryDns, QueryFailover, QueryTemplate, ServiceQuery};
pub use state::{aggregate_status, State, TableIndexes};
pub use table::{Grouped, RowChange, Rows};
pub use txn::{CatalogVerb, KvVerb, TxnError, TxnKv, TxnOp, TxnOutcome, TxnResult};
pub use workload::{
    Allocation, AppSpec, ComputeNode, Constraint, ConstraintOperator, Deployment, DeploymentAction,
    DockerNetwork, GroupSpec, HealthCheckSpec, HealthProtocol, PortSpec, Runtime, TaskFailure,
    TaskState, Unplaced, UpgradeStrategy, APP_ID_META, FIT_EPSILON, STOP_APPLICATION, TASK_ID_META,
};
pub use workload_apply::{WorkloadTables, VERSIONS_KEPT};

#[cfg(test)]
mod acl_tests;
#[cfg(test)]
mod tests;
