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
    /// `IP:PORT` of its LAN gossip pool (UDP and TCP); empty when it runs none or in
    /// entries written before it was recorded. Last, with a default, so that those decode.
    #[serde(default)]
    pub lan_addr: String,
}

/// A node's id as Consul shows it (a UUID, version 4 layout), derived from its name so that
/// every node computes the same one for a member (the members' `id` tag, `NodeID`).
pub fn node_uuid(name: &str) -> String {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    let fnv1a = |seed: u64, bytes: &[u8]| {
        bytes.iter().fold(seed, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (high, low) = (
        fnv1a(FNV_OFFSET, name.as_bytes()),
        fnv1a(FNV_OFFSET.rotate_left(32), name.as_bytes()),
    );
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc << 60)) | (0x8 << 60);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
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
            lan_addr: String::new(),
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

    /// The member as releases before `lan_addr` wrote it.
    #[derive(Serialize)]
    struct WithDns {
        name: String,
        rpc_addr: String,
        http_addr: String,
        server: bool,
        datacenter: String,
        dns_addr: String,
    }

    #[test]
    fn a_member_written_before_lan_addr_still_decodes() {
        let previous = WithDns {
            name: "n1".into(),
            rpc_addr: "10.0.0.1:8300".into(),
            http_addr: "10.0.0.1:8500".into(),
            server: false,
            datacenter: "dc1".into(),
            dns_addr: "10.0.0.1:8600".into(),
        };
        let expected = Member {
            name: "n1".into(),
            rpc_addr: "10.0.0.1:8300".into(),
            http_addr: "10.0.0.1:8500".into(),
            server: false,
            datacenter: "dc1".into(),
            dns_addr: "10.0.0.1:8600".into(),
            lan_addr: String::new(),
        };
        let packed = rmp_serde::to_vec_named(&previous).unwrap();
        assert_eq!(rmp_serde::from_slice::<Member>(&packed).unwrap(), expected);
        let json = serde_json::to_vec(&previous).unwrap();
        assert_eq!(serde_json::from_slice::<Member>(&json).unwrap(), expected);
        let current = Member {
            lan_addr: "10.0.0.1:8301".into(),
            ..expected
        };
        let packed = rmp_serde::to_vec_named(&current).unwrap();
        assert_eq!(rmp_serde::from_slice::<Member>(&packed).unwrap(), current);
    }
}
