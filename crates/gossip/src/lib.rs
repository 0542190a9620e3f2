//! Gossip membership pools: SWIM (through `foca`) over UDP, with joins and a periodic
//! full state exchange over TCP on the same port, round-trip measurements feeding Vivaldi
//! coordinates, and [`GossipFederation`], the servers' view of the other datacenters
//! through the WAN pool, and [`GossipLan`], a datacenter's LAN pool as the edges see it.

#![forbid(unsafe_code)]

pub mod federation;
mod identity;
pub mod keyring;
mod lan;
mod pool;
mod profile;
mod wire;

pub use federation::GossipFederation;
pub use identity::NodeId;
pub use keyring::{Encryption, Key, Keyring, KeyringError};
pub use lan::GossipLan;
pub use pool::{GossipError, KeyringReply, Pool, PoolConfig, View};
pub use profile::Profile;
pub use wire::KeyringOp;
