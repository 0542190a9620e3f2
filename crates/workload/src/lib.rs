//! Workloads: the leader's control loop that keeps apps at their desired state, and the
//! node's task runner that starts and stops tasks through drivers and reports them.
#![forbid(unsafe_code)]

mod drivers;
pub mod leader;
pub mod naming;
pub mod node;
pub mod registrator;
pub use drivers::Drivers;

pub use leader::now_rfc3339;
