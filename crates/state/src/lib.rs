//! atoll's replicated state: the catalog (nodes, service instances, checks) and KV,
//! the commands that change it, and the watches that blocking queries wait on.
//!
//! Everything here is deterministic: the same log applied in the same order gives the
//! same state on every server.
#![forbid(unsafe_code)]

pub mod command;
pub mod model;
pub mod snapshot;
mod state;
mod store;
pub mod workload;
mod workload_apply;

pub use command::{
    CheckSpec, Command, Deregistration, Outcome, Registration, Rejection, ServiceSpec,
};
pub use model::{
    Check, CheckDefinition, CheckStatus, KvEntry, Node, ServiceInstance, TaskCommand,
    NODE_HEALTH_CHECK_ID,
};
pub use state::{aggregate_status, State, TableIndexes, Touched};
pub use store::{Store, Table};
pub use workload::{
    Allocation, AppSpec, ComputeNode, Constraint, ConstraintOperator, Deployment, DockerNetwork,
    HealthCheckSpec, HealthProtocol, PortSpec, Runtime, TaskFailure, TaskState, Unplaced,
    UpgradeStrategy, FIT_EPSILON,
};
pub use workload_apply::WorkloadTables;

#[cfg(test)]
mod tests;
