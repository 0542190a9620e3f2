//! The seam between the edges and the LAN gossip pool of a datacenter.
//!
//! Every node of a datacenter (servers, compute nodes, `atoll dev`) gossips with the others
//! in one LAN pool. The leader turns what its pool view says about a member (alive, failed,
//! left) into the member's `serfHealth` check; the API lists the pool's members and serves
//! the Vivaldi coordinates the pool measured. They see the pool only through [`LanPool`].

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::{Coordinate, MemberStatus, PoolMember};

/// The members of a LAN pool as one node sees them: this node first, then the others by
/// name.
pub type LanMembers = Arc<Vec<PoolMember>>;

/// What the edges may ask of the node's LAN gossip pool.
pub trait LanPool: Send + Sync + std::fmt::Debug + 'static {
    /// The members now, and every later change (failed and left members until reaped).
    fn members(&self) -> watch::Receiver<LanMembers>;

    /// This node's coordinate.
    fn coordinate(&self) -> Coordinate;

    /// The last coordinate known of each member, this node's included, by node name.
    fn coordinates(&self) -> BTreeMap<String, Coordinate>;

    /// A hint that the member `node` may be gone (a connection from it closed): the pool
    /// checks it now instead of at its next probe, and fails it if its process is gone.
    fn check_gone(&self, node: &str);
}

/// Each member's status by node name, from a pool's member list.
pub fn statuses(members: &[PoolMember]) -> BTreeMap<String, MemberStatus> {
    members
        .iter()
        .map(|member| (member.name.clone(), member.status))
        .collect()
}
