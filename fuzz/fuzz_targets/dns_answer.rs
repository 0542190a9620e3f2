//! A raw DNS request, answered from a small catalog by the same function the UDP and TCP
//! socket loops call. Every answer must parse back, carry the request's id and fit the
//! transport's size limit; only a configured recursor may take a request elsewhere.
#![no_main]

use std::sync::OnceLock;

use atoll_dns::answer::udp_limit;
use atoll_dns::packet::{reply_to_packet, PacketReply, Transport, HEADER_LEN, MAX_MESSAGE};
use atoll_dns::DnsConfig;
use atoll_cluster::Store;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    store: Store,
    without_recursors: DnsConfig,
    with_recursors: DnsConfig,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        store: Store::new(atoll_fuzz::catalog_state(), 100),
        without_recursors: atoll_fuzz::dns_config(false),
        with_recursors: atoll_fuzz::dns_config(true),
    })
}

fn check_reply(packet: &[u8], reply: &PacketReply, transport: Transport, config: &DnsConfig) {
    if packet.len() < HEADER_LEN {
        assert!(
            matches!(reply, PacketReply::Ignore),
            "short packet answered"
        );
        return;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    match reply {
        PacketReply::Ignore => panic!("a packet with a whole header was ignored"),
        PacketReply::FormatError(bytes) => {
            let answer = Message::from_vec(bytes).expect("FORMERR parses back");
            assert_eq!(answer.metadata.id, id);
            assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
        }
        PacketReply::Forward => {
            assert!(config.has_recursors, "forwarded without a recursor");
        }
        PacketReply::Remote(dc) => {
            assert_ne!(dc, &config.datacenter, "its own datacenter sent elsewhere");
        }
        PacketReply::Query(name) => {
            // Run by the server: the request's one question names that query.
            let request = Message::from_vec(packet).expect("a request run as a query parses");
            let asked = request.queries[0].name.to_lowercase();
            let first = asked.iter().next().map(String::from_utf8_lossy);
            assert_eq!(first.as_deref(), Some(name.as_str()), "{asked} ran query {name}");
        }
        PacketReply::Answers(answers) => {
            let request = Message::from_vec(packet).expect("an answered request parses");
            assert!(!answers.is_empty(), "a request that parses got no answer");
            let limit = match transport {
                Transport::Udp => udp_limit(&request),
                Transport::Tcp => MAX_MESSAGE,
            };
            for bytes in answers {
                assert!(
                    bytes.len() <= limit,
                    "answer of {} bytes over the limit of {limit}",
                    bytes.len()
                );
                let answer = Message::from_vec(bytes).expect("an answer parses back");
                assert_eq!(
                    answer.metadata.id, id,
                    "answer id differs from the request's"
                );
                assert_eq!(answer.metadata.message_type, MessageType::Response);
                // Several long questions may not fit beside the header: then none is echoed.
                if !(answer.queries.is_empty() && request.queries.len() > 1) {
                    assert_eq!(answer.queries, request.queries, "question not echoed");
                }
            }
        }
    }
}

fuzz_target!(|packet: &[u8]| {
    let fixture = fixture();
    for config in [&fixture.without_recursors, &fixture.with_recursors] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let reply = reply_to_packet(packet, &fixture.store, config, 7, transport);
            check_reply(packet, &reply, transport, config);
        }
    }
});
