//! The node agent: registers its node and runs the health checks defined on it
//! (TTL, HTTP and HTTPS, TCP, scripts, commands in Docker containers, and commands inside
//! tasks through [`TaskCommands`]), writing only
//! status changes through Raft.
#![forbid(unsafe_code)]

mod checks;
mod liveness;
mod runner;
mod sessions;

pub use checks::{ContainerOutcome, ContainerRun, TaskCommandRun, TaskCommands};
pub use liveness::Autopilot;
pub use runner::{
    Agent, AgentConfig, AgentError, AgentLoops, Loop, SERVER_SERVICE, WAN_JOIN_PORT_META,
};
pub use sessions::{lock_delays, remaining_delay, Sessions, MAX_LOCK_DELAY, TTL_MULTIPLIER};
