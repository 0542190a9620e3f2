//! From request bytes to answer bytes: what both socket loops do between receiving a
//! packet and sending a reply, as a pure function of the packet, the state and the
//! configuration (no sockets, no clock), so it can be tested and fuzzed on its own.

use std::sync::Arc;

use atoll_acl::{AclSettings, Authorizer};
use atoll_cluster::Store;
use atoll_state::AuthorizerCache;
use hickory_proto::op::Message;

use crate::answer::{
    encode_within, format_error, resolve_for, udp_limit, unknown_datacenter, DnsConfig, Resolution,
};

/// Largest message accepted or sent (and the limit of TCP answers).
pub const MAX_MESSAGE: usize = 65_535;
/// Shuffled variants encoded per UDP answer with several records, so cached answers rotate.
pub const UDP_VARIANTS: u64 = 4;
/// The smallest packet that carries a whole DNS header.
pub const HEADER_LEN: usize = 12;

/// How a request came in: it decides the size limit of the answer and how many shuffled
/// variants are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Limited to what the client announces (EDNS) or 512 bytes; truncated with TC.
    Udp,
    /// Up to [`MAX_MESSAGE`]; one variant.
    Tcp,
}

/// What to send back for one request packet.
#[derive(Debug)]
pub enum PacketReply {
    /// Nothing: the packet is too short to carry an id.
    Ignore,
    /// The body does not parse: FORMERR carrying the packet's id (never cached).
    FormatError(Vec<u8>),
    /// The name is outside the domain and recursors are configured: forward the packet.
    Forward,
    /// The name asks for another datacenter (named here): the packet goes there as it is
    /// and the answer comes back unchanged; never cached.
    Remote(String),
    /// A prepared query of this datacenter: run it (off the UDP threads), answer with
    /// [`crate::answer::query_response`] and cache nothing.
    Query(String),
    /// Encoded answers, each within the transport's limit: over UDP up to
    /// [`UDP_VARIANTS`] shufflings of the same answer (the first is sent, all are cached).
    Answers(Vec<Vec<u8>>),
}

/// Answers one request packet from the state in `store` as if ACLs were off (see
/// [`reply_to_packet_for`]).
pub fn reply_to_packet(
    packet: &[u8],
    store: &Store,
    config: &DnsConfig,
    seed: u64,
    transport: Transport,
) -> PacketReply {
    reply_to_packet_for(
        packet,
        store,
        config,
        seed,
        transport,
        &AclSettings::disabled(),
        &AuthorizerCache::default(),
    )
}

/// Answers one request packet from the state in `store`, read once for all variants, with
/// the permissions of the agent's default token under `acl` (anonymous without one; a
/// default token that names no token is allowed nothing), resolved under the same read
/// through `authorizers` (which keeps it while the ACL tables and the default token stay).
/// `seed` picks the shuffle of the first variant; later variants use the next seeds.
pub fn reply_to_packet_for(
    packet: &[u8],
    store: &Store,
    config: &DnsConfig,
    seed: u64,
    transport: Transport,
    acl: &AclSettings,
    authorizers: &AuthorizerCache,
) -> PacketReply {
    if packet.len() < HEADER_LEN {
        return PacketReply::Ignore;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let Ok(request) = Message::from_vec(packet) else {
        return PacketReply::FormatError(format_error(id));
    };
    let (limit, variants) = match transport {
        Transport::Udp => (udp_limit(&request), UDP_VARIANTS),
        Transport::Tcp => (MAX_MESSAGE, 1),
    };
    store.read(|state| {
        let authz = authorizers
            .authorizer(state, acl, None, atoll_state::acl::now_unix_ms())
            .unwrap_or_else(|_| Arc::new(Authorizer::deny_all()));
        let mut encoded = Vec::new();
        for variant in 0..variants {
            match resolve_for(&request, state, config, seed.wrapping_add(variant), &authz) {
                Resolution::Forward => return PacketReply::Forward,
                Resolution::Remote(dc) => return PacketReply::Remote(dc),
                Resolution::Query { name } => return PacketReply::Query(name),
                Resolution::Answer(response) => {
                    let several = response.answers.len() > 1;
                    if let Some(bytes) = encode_within(*response, limit) {
                        encoded.push(bytes);
                    }
                    if !several {
                        break;
                    }
                }
            }
        }
        PacketReply::Answers(encoded)
    })
}

/// The answer to `packet` (which asked for another datacenter) when no route leads there:
/// NXDOMAIN with the SOA, within the transport's limit; FORMERR if it does not parse.
pub fn unknown_datacenter_reply(
    packet: &[u8],
    store: &Store,
    config: &DnsConfig,
    transport: Transport,
) -> Vec<u8> {
    let id = u16::from_be_bytes([
        packet.first().copied().unwrap_or(0),
        packet.get(1).copied().unwrap_or(0),
    ]);
    let Ok(request) = Message::from_vec(packet) else {
        return format_error(id);
    };
    let limit = match transport {
        Transport::Udp => udp_limit(&request),
        Transport::Tcp => MAX_MESSAGE,
    };
    let response = store.read(|state| unknown_datacenter(&request, state, config));
    encode_within(response, limit).unwrap_or_else(|| format_error(id))
}

#[cfg(test)]
mod tests {
    use atoll_state::{Command, Registration, ServiceSpec, State};
    use hickory_proto::op::{MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn config() -> DnsConfig {
        DnsConfig {
            domain: Name::from_ascii("consul.").unwrap(),
            datacenter: "dc1".into(),
            service_ttl: 0,
            node_ttl: 0,
            only_passing: false,
            has_recursors: false,
        }
    }

    /// One node with `count` instances of `web`, each on its own address.
    fn store_with_instances(count: u16) -> Store {
        let mut state = State::default();
        for i in 0..count {
            state.apply(
                u64::from(i) + 1,
                &Command::Register(Box::new(Registration {
                    node: "n1".into(),
                    address: "10.0.0.1".into(),
                    datacenter: "dc1".into(),
                    service: Some(ServiceSpec {
                        id: format!("web-{i}"),
                        name: "web".into(),
                        address: format!("10.1.{}.{}", i / 200, i % 200 + 1),
                        port: 8080,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            );
        }
        Store::new(state, u64::from(count))
    }

    fn request(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        message.to_vec().unwrap()
    }

    #[test]
    fn packets_shorter_than_a_header_are_ignored_and_garbage_gets_formerr_with_its_id() {
        let store = store_with_instances(1);
        let short = reply_to_packet(&[1, 2, 3], &store, &config(), 0, Transport::Udp);
        assert!(matches!(short, PacketReply::Ignore));
        let mut garbage = vec![0xab, 0xcd, 1, 0, 0, 1];
        garbage.extend_from_slice(&[0xff; 20]);
        let PacketReply::FormatError(bytes) =
            reply_to_packet(&garbage, &store, &config(), 0, Transport::Udp)
        else {
            panic!("garbage was not answered with FORMERR");
        };
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.metadata.id, 0xabcd);
        assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn udp_answers_are_shuffled_variants_within_512_bytes_and_tcp_answers_are_whole() {
        let store = store_with_instances(60);
        let packet = request(9, "web.service.consul.", RecordType::A);
        let PacketReply::Answers(udp) =
            reply_to_packet(&packet, &store, &config(), 0, Transport::Udp)
        else {
            panic!("no UDP answer");
        };
        assert_eq!(udp.len() as u64, UDP_VARIANTS);
        for bytes in &udp {
            assert!(bytes.len() <= 512, "{} bytes over UDP", bytes.len());
            let answer = Message::from_vec(bytes).unwrap();
            assert_eq!(answer.metadata.id, 9);
            assert!(answer.metadata.truncation);
        }
        let PacketReply::Answers(tcp) =
            reply_to_packet(&packet, &store, &config(), 0, Transport::Tcp)
        else {
            panic!("no TCP answer");
        };
        assert_eq!(tcp.len(), 1);
        let answer = Message::from_vec(&tcp[0]).unwrap();
        assert_eq!(answer.answers.len(), 60);
        assert!(!answer.metadata.truncation);
    }

    #[test]
    fn a_refused_request_with_several_long_questions_still_fits_in_udp() {
        // Found by the dns_answer fuzz target: the FORMERR for two questions of ~250 bytes each
        // echoed both and came to 526 bytes.
        let store = store_with_instances(1);
        // Three names of 253 bytes on the wire (close to the 255 a name may have), different
        // enough that compression cannot fold them into one another.
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        for (head, tail, qtype) in [
            ("a", "b", RecordType::A),
            ("c", "d", RecordType::SRV),
            ("e", "f", RecordType::AAAA),
        ] {
            let long = format!(
                "{}.{}.web.service.consul.",
                vec![head.repeat(63); 3].join("."),
                tail.repeat(40)
            );
            message.add_query(Query::query(Name::from_ascii(&long).unwrap(), qtype));
        }
        let packet = message.to_vec().unwrap();
        assert!(packet.len() > 512);
        let PacketReply::Answers(answers) =
            reply_to_packet(&packet, &store, &config(), 0, Transport::Udp)
        else {
            panic!("no answer");
        };
        for bytes in &answers {
            assert!(bytes.len() <= 512, "{} bytes over UDP", bytes.len());
            let answer = Message::from_vec(bytes).unwrap();
            assert_eq!(answer.metadata.id, 7);
            assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
        }
    }

    #[test]
    fn names_outside_the_domain_are_forwarded_only_with_recursors() {
        let store = store_with_instances(1);
        let packet = request(3, "example.com.", RecordType::A);
        let refused = reply_to_packet(&packet, &store, &config(), 0, Transport::Udp);
        assert!(matches!(refused, PacketReply::Answers(_)));
        let forwarding = DnsConfig {
            has_recursors: true,
            ..config()
        };
        let forwarded = reply_to_packet(&packet, &store, &forwarding, 0, Transport::Tcp);
        assert!(matches!(forwarded, PacketReply::Forward));
    }
}
