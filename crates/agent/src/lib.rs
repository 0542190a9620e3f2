//! The node agent: registers its node and runs the health checks defined on it
//! (TTL, HTTP, TCP), writing only status changes through Raft.
#![forbid(unsafe_code)]

mod checks;
mod liveness;
mod runner;

pub use runner::{Agent, AgentConfig, AgentError, Autopilot, SERVER_SERVICE};
