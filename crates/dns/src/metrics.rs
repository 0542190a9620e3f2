//! Counting answered queries: the query type is read from the request's question and the
//! response code from the answer's header, straight from the bytes, so a cached answer is
//! counted without parsing either message.

use atoll_metrics::DnsTransport;
use tokio::time::Instant;

use crate::packet::{Transport, HEADER_LEN};

/// Records that `answer` is sent for `request`, which arrived at `started`. Called just
/// before the answer leaves, so a client that has it finds it counted.
pub(crate) fn count(request: &[u8], answer: &[u8], transport: Transport, started: Instant) {
    let rcode = answer.get(3).map_or(0, |flags| flags & 0x0f);
    let transport = match transport {
        Transport::Udp => DnsTransport::Udp,
        Transport::Tcp => DnsTransport::Tcp,
    };
    atoll_metrics::node().dns.observe(
        question_type(request),
        rcode,
        transport,
        started.elapsed().as_secs_f64(),
    );
}

/// The type of the request's first question, if it has one that can be read.
pub(crate) fn question_type(request: &[u8]) -> Option<u16> {
    let questions = u16::from_be_bytes([*request.get(4)?, *request.get(5)?]);
    if questions == 0 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = *request.get(at)? as usize;
        match len {
            0 => break,
            // A question's name is not compressed; anything else is unreadable here.
            1..=63 => at += 1 + len,
            _ => return None,
        }
    }
    Some(u16::from_be_bytes([
        *request.get(at + 1)?,
        *request.get(at + 2)?,
    ]))
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn request(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        message.to_vec().unwrap()
    }

    #[test]
    fn the_question_type_is_read_from_the_bytes() {
        assert_eq!(
            question_type(&request("web.service.consul.", RecordType::SRV)),
            Some(33)
        );
        assert_eq!(question_type(&request(".", RecordType::AAAA)), Some(28));
        let mut empty = request("web.service.consul.", RecordType::A);
        empty[5] = 0;
        assert_eq!(question_type(&empty), None);
        let whole = request("web.service.consul.", RecordType::A);
        // The class (the last two bytes) is not needed; any shorter cut loses the type.
        for cut in 0..whole.len() - 2 {
            // A truncated request is read as far as it goes, never past its end.
            assert_eq!(question_type(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(question_type(&whole), Some(1));
    }
}
