//! Bytes read back as a snapshot's state, through the decoder the state machine uses on
//! start and on install. Arbitrary bytes give an error, never a panic; a decoded state
//! encodes back to itself, answers DNS, and takes further commands without panicking.
#![no_main]

use std::sync::OnceLock;

use atoll_dns::answer::{resolve, Resolution};
use atoll_dns::DnsConfig;
use atoll_state::snapshot::{decode_state, encode_state};
use atoll_state::Command;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    config: DnsConfig,
    requests: Vec<Message>,
    commands: Vec<Command>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut requests = Vec::new();
        for (name, qtype) in [
            ("web.service.consul.", RecordType::SRV),
            ("v1.web.service.consul.", RecordType::A),
            ("many.service.consul.", RecordType::ANY),
            ("alpha.node.consul.", RecordType::AAAA),
            ("consul.", RecordType::SOA),
        ] {
            let mut request = Message::new(1, MessageType::Query, OpCode::Query);
            if let Ok(name) = Name::from_ascii(name) {
                request.add_query(Query::query(name, qtype));
            }
            requests.push(request);
        }
        Fixture {
            config: atoll_fuzz::dns_config(false),
            requests,
            commands: atoll_fuzz::sample_commands(),
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(mut state) = decode_state(bytes) else {
        return;
    };
    let encoded = encode_state(&state).expect("a decoded state encodes");
    let again = decode_state(&encoded).expect("a re-encoded snapshot decodes");
    // A float read as NaN (any resource figure) is never equal to itself, so a state holding
    // one differs from its copy as a value; it must still encode to the same bytes.
    assert!(
        again == state || encode_state(&again).ok().as_ref() == Some(&encoded),
        "snapshot changed on re-encoding"
    );
    let fixture = fixture();
    for request in &fixture.requests {
        if let Resolution::Answer(answer) = resolve(request, &state, &fixture.config, 3) {
            assert_eq!(answer.metadata.id, request.metadata.id);
        }
    }
    let next = state
        .indexes
        .catalog()
        .max(state.indexes.kv)
        .max(state.indexes.workload);
    for (i, command) in fixture.commands.iter().enumerate() {
        state.apply(next.saturating_add(i as u64 + 1), command);
    }
});
