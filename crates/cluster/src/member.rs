//! What the Raft membership records about each node.

use serde::{Deserialize, Serialize};

/// A node of the cluster as Raft's membership stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node name (as in the catalog).
    pub name: String,
    /// `IP:PORT` of its Raft/RPC listener.
    pub rpc_addr: String,
    /// `IP:PORT` of its HTTP API.
    pub http_addr: String,
    /// Whether it is a server (voter) rather than a client (learner).
    pub server: bool,
    /// Its datacenter.
    pub datacenter: String,
    /// `IP:PORT` of its DNS server; empty in entries written before it was recorded. Last,
    /// with a default, so that those still decode.
    #[serde(default)]
    pub dns_addr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The member as releases before `dns_addr` wrote it.
    #[derive(Serialize)]
    struct Previous {
        name: String,
        rpc_addr: String,
        http_addr: String,
        server: bool,
        datacenter: String,
    }

    #[test]
    fn a_member_written_before_dns_addr_still_decodes() {
        let previous = Previous {
            name: "n1".into(),
            rpc_addr: "10.0.0.1:8300".into(),
            http_addr: "10.0.0.1:8500".into(),
            server: true,
            datacenter: "dc1".into(),
        };
        let expected = Member {
            name: "n1".into(),
            rpc_addr: "10.0.0.1:8300".into(),
            http_addr: "10.0.0.1:8500".into(),
            server: true,
            datacenter: "dc1".into(),
            dns_addr: String::new(),
        };
        // MessagePack with field names (format version 2) and JSON (version 1).
        let packed = rmp_serde::to_vec_named(&previous).unwrap();
        assert_eq!(rmp_serde::from_slice::<Member>(&packed).unwrap(), expected);
        let json = serde_json::to_vec(&previous).unwrap();
        assert_eq!(serde_json::from_slice::<Member>(&json).unwrap(), expected);
        // And the new field travels.
        let current = Member {
            dns_addr: "10.0.0.1:8600".into(),
            ..expected
        };
        let packed = rmp_serde::to_vec_named(&current).unwrap();
        assert_eq!(rmp_serde::from_slice::<Member>(&packed).unwrap(), current);
    }
}
