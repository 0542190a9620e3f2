//! Gossip membership pools: SWIM (through `foca`) over UDP, with joins and a periodic
//! full state exchange over TCP on the same port, round-trip measurements feeding Vivaldi
//! coordinates, and [`GossipFederation`], the servers' view of the other datacenters
//! through the WAN pool.

#![forbid(unsafe_code)]

pub mod federation;
mod identity;
mod pool;
mod profile;
mod wire;

pub use federation::GossipFederation;
pub use identity::NodeId;
pub use pool::{GossipError, Pool, PoolConfig, View};
pub use profile::Profile;
