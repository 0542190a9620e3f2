//! The identity a member gossips about itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One incarnation of a member: its name, where it gossips, when this process started, how
/// often it renewed itself since, and its tags. Two identities with the same name are the
/// same member: the one that started later (or renewed more often) replaces the other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// The member's name (`NODE.DC` in the WAN pool).
    pub name: String,
    /// Its gossip address (UDP and TCP).
    pub addr: SocketAddr,
    /// When the process started, in milliseconds since the Unix epoch.
    pub started: u64,
    /// Bumped each time the member rejoins after the pool declared it failed.
    pub bump: u16,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

impl NodeId {
    /// Whether this identity replaces `other` (of the same name).
    pub fn newer_than(&self, other: &NodeId) -> bool {
        (self.started, self.bump) > (other.started, other.bump)
    }
}

impl foca::Identity for NodeId {
    /// Members are told apart by name: a new identity under a known name replaces the old.
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.newer_than(adversary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(started: u64, bump: u16) -> NodeId {
        NodeId {
            name: "s1.dc1".into(),
            addr: "127.0.0.1:8302".parse().expect("address"),
            started,
            bump,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn a_later_start_or_a_renewal_wins() {
        assert!(id(2, 0).win_addr_conflict(&id(1, 5)));
        assert!(!id(1, 5).win_addr_conflict(&id(2, 0)));
        let renewed = id(1, 0).renew().expect("renewable");
        assert_eq!(renewed.bump, 1);
        assert!(renewed.win_addr_conflict(&id(1, 0)));
        assert_eq!(renewed.addr(), "s1.dc1");
    }
}
