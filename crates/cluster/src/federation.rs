//! The seam between the edges and the other datacenters.
//!
//! Every datacenter is its own Raft cluster; its servers also belong to one WAN gossip pool
//! shared by the servers of every datacenter. The edges (HTTP API, DNS, CLI) see that pool
//! only through [`Federation`]: which datacenters exist and in what order of distance, where
//! a request for one of them can be sent ([`Route`]), the WAN members and their coordinates,
//! and joining. A request for another datacenter is sent unchanged, its `?dc=` included, to
//! one of the addresses a [`Route`] gives; whoever answers there treats it as its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{ClusterError, Coordinate, Pending};

/// Where requests for a datacenter go.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// The datacenter is this node's own: answer here.
    Local,
    /// No member of the WAN pool belongs to it: Consul's `No path to datacenter`
    /// (HTTP 500, DNS NXDOMAIN).
    Unknown,
    /// It is known, but none of its servers is alive: `Remote DC has no server currently
    /// reachable` (HTTP 500, DNS SERVFAIL).
    Unreachable,
    /// Send the request, unchanged, to one of these, in this order (the first that
    /// answers wins). On a server these are servers of that datacenter; on a compute node,
    /// servers of its own datacenter, which forward it in turn.
    Via(Vec<Relay>),
}

/// One server a request for another datacenter can be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// Its name (`NODE.DC` for a WAN member, the node name for a local server).
    pub name: String,
    /// Its HTTP API.
    pub http_addr: SocketAddr,
    /// Its DNS server (`None`: it serves no DNS).
    pub dns_addr: Option<SocketAddr>,
}

/// A member's state in a gossip pool, numbered as Serf numbers it in Consul's member JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Alive (1).
    Alive,
    /// Leaving (2).
    Leaving,
    /// Left gracefully (3).
    Left,
    /// Failed: it stopped answering probes and did not refute the suspicion (4).
    Failed,
}

impl MemberStatus {
    /// Serf's number for the state, as `/v1/agent/members` reports it.
    pub fn code(self) -> u8 {
        match self {
            MemberStatus::Alive => 1,
            MemberStatus::Leaving => 2,
            MemberStatus::Left => 3,
            MemberStatus::Failed => 4,
        }
    }

    /// The word `atoll members` prints.
    pub fn word(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }
}

/// A member of a gossip pool, as `/v1/agent/members` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolMember {
    /// `NODE.DC` in the WAN pool; the node name in a LAN pool.
    pub name: String,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Consul's tags (`role`, `dc`, `port`, `id`, `vsn`, ..., and atoll's `http`, `dns`).
    pub tags: BTreeMap<String, String>,
    /// Its state as this node sees it.
    pub status: MemberStatus,
}

/// An operation on the gossip keyring of every WAN member (Consul's `consul keyring`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringOperation {
    /// List each member's keys.
    List,
    /// Install this key (base64) beside the others.
    Install(String),
    /// Make this installed key (base64) the one that encrypts.
    Use(String),
    /// Remove this key (base64), which must not be the one that encrypts.
    Remove(String),
}

/// One WAN member's answer to a [`KeyringOperation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringAnswer {
    /// The member (`NODE.DC`).
    pub name: String,
    /// Its datacenter.
    pub datacenter: String,
    /// Its keys after the operation, the primary first (base64); or why it failed or did
    /// not answer.
    pub outcome: Result<Vec<String>, String>,
}

/// The refusal of a keyring operation on a node outside the WAN pool.
pub const KEYRING_NEEDS_WAN: &str =
    "keyring operations need a server whose WAN gossip is on (the keyring is the WAN pool's)";

/// The coordinates of one datacenter's servers in the WAN pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatacenterCoordinates {
    /// The datacenter.
    pub datacenter: String,
    /// `(WAN member name, coordinate)` of each of its servers with a coordinate.
    pub coordinates: Vec<(String, Coordinate)>,
}

/// What the edges may ask about the other datacenters.
pub trait Federation: Send + Sync + 'static {
    /// This node's datacenter.
    fn datacenter(&self) -> &str;

    /// Every known datacenter: this one first, then the others by median round-trip time
    /// to their servers (unknown last), ties in alphabetical order. Datacenters whose
    /// servers have all left are not listed.
    fn datacenters(&self) -> Vec<String>;

    /// Where a request for `dc` goes.
    fn route(&self, dc: &str) -> Route;

    /// The members of the WAN pool (`None` on a node that is not in it: a compute node).
    fn wan_members(&self) -> Option<Vec<PoolMember>>;

    /// WAN coordinates by datacenter, in the order of [`Federation::datacenters`].
    fn wan_coordinates(&self) -> Vec<DatacenterCoordinates>;

    /// Joins the WAN pool through the gossip addresses given (`IP`, `IP:PORT` or
    /// `HOST:PORT`); returns how many were contacted. A node that is not a server is
    /// refused with Consul's `Must be a server to join WAN cluster`.
    fn join_wan<'a>(&'a self, addresses: &'a [String]) -> Pending<'a, usize>;

    /// The servers of this datacenter that a compute node sends the requests only servers
    /// answer to (the keyring's); empty on a server.
    fn local_servers(&self) -> Vec<Relay> {
        Vec::new()
    }

    /// Runs a keyring operation on this member and every live member of the WAN pool (on
    /// this one only with `local_only`); answers each member's outcome, this one first.
    /// Refused on a node outside the WAN pool and on a pool that does not encrypt.
    fn keyring(
        &self,
        operation: KeyringOperation,
        local_only: bool,
    ) -> Pending<'_, Vec<KeyringAnswer>> {
        let _ = (operation, local_only);
        Box::pin(async { Err(ClusterError::Refused(KEYRING_NEEDS_WAN.to_string())) })
    }
}

/// A datacenter on its own: no WAN pool, no other datacenter.
#[derive(Debug, Clone)]
pub struct Alone {
    datacenter: String,
    server: bool,
}

impl Alone {
    /// This node's datacenter, and whether the node is a server.
    pub fn new(datacenter: impl Into<String>, server: bool) -> Self {
        Alone {
            datacenter: datacenter.into(),
            server,
        }
    }
}

impl Federation for Alone {
    fn datacenter(&self) -> &str {
        &self.datacenter
    }

    fn datacenters(&self) -> Vec<String> {
        vec![self.datacenter.clone()]
    }

    fn route(&self, dc: &str) -> Route {
        if dc.is_empty() || dc == self.datacenter {
            Route::Local
        } else {
            Route::Unknown
        }
    }

    fn wan_members(&self) -> Option<Vec<PoolMember>> {
        self.server.then(Vec::new)
    }

    fn wan_coordinates(&self) -> Vec<DatacenterCoordinates> {
        Vec::new()
    }

    fn join_wan<'a>(&'a self, _addresses: &'a [String]) -> Pending<'a, usize> {
        let refusal = if self.server {
            "WAN gossip is not enabled on this server"
        } else {
            "Must be a server to join WAN cluster"
        };
        Box::pin(async move { Err(ClusterError::Refused(refusal.to_string())) })
    }
}
