//! From request bytes to answer bytes: what both socket loops do between receiving a
//! packet and sending a reply, as a pure function of the packet, the state and the
//! configuration (no sockets, no clock), so it can be tested and fuzzed on its own.

use atoll_state::Store;
use hickory_proto::op::Message;

use crate::answer::{encode_within, format_error, resolve, udp_limit, DnsConfig, Resolution};

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
    /// Encoded answers, each within the transport's limit: over UDP up to
    /// [`UDP_VARIANTS`] shufflings of the same answer (the first is sent, all are cached).
    Answers(Vec<Vec<u8>>),
}

/// Answers one request packet from the state in `store`, read once for all variants.
/// `seed` picks the shuffle of the first variant; later variants use the next seeds.
pub fn reply_to_packet(
    packet: &[u8],
    store: &Store,
    config: &DnsConfig,
    seed: u64,
    transport: Transport,
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
        let mut encoded = Vec::new();
        for variant in 0..variants {
            match resolve(&request, state, config, seed.wrapping_add(variant)) {
                Resolution::Forward => return PacketReply::Forward,
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
