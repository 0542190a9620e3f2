//! Versioned encodings of commands and state, as stored in the Raft log and snapshots.
//!
//! Every stored blob starts with a one-byte format version so a later release can
//! read what an earlier one wrote and migrate it.

use crate::model::{Check, KvEntry, Node, ServiceInstance};
use crate::state::State;
use crate::table::{Grouped, Rows};

/// Current format of stored commands and snapshots: MessagePack with field names, so a
/// field added later (with a serde default) still reads what an earlier release wrote.
/// Version 3 is version 2's encoding with the ACL tables and commands: a release that knows
/// only version 2 would read such a snapshot and silently drop the tokens and policies, so
/// the new number makes it refuse the record (and the data dir) instead. Version 4 is
/// version 3's encoding with `Command::AclReplicate`, which a release knowing only version 3
/// could not decode: it refuses the data dir at start rather than stopping at that entry.
pub const FORMAT_VERSION: u8 = 4;

/// MessagePack with the ACL tables, before ACL replication. Still read; no longer written.
pub const FORMAT_BEFORE_REPLICATION: u8 = 3;

/// MessagePack before the ACL tables. Still read; no longer written.
pub const FORMAT_BEFORE_ACL: u8 = 2;

/// The first format: JSON. Still read; no longer written.
pub const FORMAT_JSON: u8 = 1;

/// Failure to decode a stored blob.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The blob is empty.
    #[error("stored record is empty")]
    Empty,
    /// The version byte is from a newer release.
    #[error("stored record has format version {0}, this build reads up to {FORMAT_VERSION}")]
    UnknownVersion(u8),
    /// The body does not parse.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        DecodeError::Corrupt(e.to_string())
    }
}

impl From<rmp_serde::decode::Error> for DecodeError {
    fn from(e: rmp_serde::decode::Error) -> Self {
        DecodeError::Corrupt(e.to_string())
    }
}

/// A value that could not be encoded. Stored types are plain data, so this is a bug; it is
/// an error rather than an empty record so nothing undecodable is stored.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a record for storage: {0}")]
pub struct EncodeError(String);

impl From<serde_json::Error> for EncodeError {
    fn from(e: serde_json::Error) -> Self {
        EncodeError(e.to_string())
    }
}

impl From<rmp_serde::encode::Error> for EncodeError {
    fn from(e: rmp_serde::encode::Error) -> Self {
        EncodeError(e.to_string())
    }
}

/// Encodes any stored value with the version marker.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![FORMAT_VERSION];
    encode_into(&mut out, value)?;
    Ok(out)
}

/// Appends `value`'s body in the current format (no version byte) to `out`: for messages
/// between nodes, whose version travels with the connection rather than each value.
pub fn encode_into<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
    value.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())?;
    Ok(())
}

/// Decodes a body written by [`encode_into`].
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    Ok(rmp_serde::from_slice(body)?)
}

/// Decodes a value written by [`encode`], in this format or an earlier one.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&FORMAT_VERSION | &FORMAT_BEFORE_REPLICATION | &FORMAT_BEFORE_ACL, body)) => {
            decode_body(body)
        }
        Some((&FORMAT_JSON, body)) => Ok(serde_json::from_slice(body)?),
        Some((&version, _)) => Err(DecodeError::UnknownVersion(version)),
    }
}

/// Encodes a value in the first format (JSON): what an earlier release wrote, for tests that
/// the previous format still loads.
pub fn encode_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![FORMAT_JSON];
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// First byte of a state snapshot written in parts (see [`state_parts`]). Snapshots of
/// earlier releases start with a record's [`FORMAT_VERSION`] and hold the whole state as one
/// record; [`decode_state`] reads both. A release that does not know this byte refuses it as
/// an unknown format version.
pub const STATE_IN_PARTS: u8 = 0x80;

/// Rows of one table per part: a part is a record of a few hundred KiB to a few MiB.
const PART_ROWS: usize = 4096;

/// One part of a state snapshot, as written ([`PartOut`] borrows the rows) and read back.
/// The first is the head, the last the end; each is a record of its own ([`encode`]).
#[derive(serde::Deserialize)]
enum PartIn {
    /// The state without the rows of its four large tables, which follow in parts.
    Head(Box<State>),
    Nodes(Vec<(String, Node)>),
    Services(Vec<((String, String), ServiceInstance)>),
    Checks(Vec<((String, String), Check)>),
    Kv(Vec<(String, KvEntry)>),
    /// How many parts came before it: a snapshot that lost parts does not load.
    End {
        parts: u64,
    },
}

/// [`PartIn`] as written: same variants in the same order, rows by reference.
#[derive(serde::Serialize)]
enum PartOut<'a> {
    Head(&'a State),
    Nodes(Vec<(&'a String, &'a Node)>),
    Services(Vec<((&'a String, &'a String), &'a ServiceInstance)>),
    Checks(Vec<((&'a String, &'a String), &'a Check)>),
    Kv(Vec<(&'a String, &'a KvEntry)>),
    End { parts: u64 },
}

/// The records of a snapshot of `state`, in order, each encoded only when the iterator
/// reaches it: a head (the state without the rows of nodes, services, checks and KV), the
/// rows of those tables [`PART_ROWS`] at a time, and an end that counts the parts. So a
/// snapshot is written as it is encoded, never held whole in memory, and read back one
/// part at a time ([`decode_state_parts`]).
pub fn state_parts(state: &State) -> impl Iterator<Item = Result<Vec<u8>, EncodeError>> + '_ {
    let head = std::iter::once_with(move || {
        let mut head = state.replicated_copy();
        head.nodes = Rows::default();
        head.services = Grouped::default();
        head.checks = Grouped::default();
        head.kv = Rows::default();
        encode(&PartOut::Head(&head))
    });
    let nodes = chunks(state.nodes.iter()).map(|rows| encode(&PartOut::Nodes(rows)));
    let services = chunks(grouped_rows(&state.services)).map(|r| encode(&PartOut::Services(r)));
    let checks = chunks(grouped_rows(&state.checks)).map(|rows| encode(&PartOut::Checks(rows)));
    let kv = chunks(state.kv.iter()).map(|rows| encode(&PartOut::Kv(rows)));
    let end = std::iter::once_with(move || {
        encode(&PartOut::End {
            parts: part_count(state),
        })
    });
    head.chain(nodes)
        .chain(services)
        .chain(checks)
        .chain(kv)
        .chain(end)
}

/// How many parts [`state_parts`] writes before the end.
fn part_count(state: &State) -> u64 {
    let chunks_of = |rows: usize| rows.div_ceil(PART_ROWS) as u64;
    1 + chunks_of(state.nodes.len())
        + chunks_of(state.services.values().map(|rows| rows.len()).sum())
        + chunks_of(state.checks.values().map(|rows| rows.len()).sum())
        + chunks_of(state.kv.len())
}

/// The rows of a grouped table as ((group, key), value), in order.
fn grouped_rows<'a, V>(
    table: &'a Grouped<String, String, V>,
) -> impl Iterator<Item = ((&'a String, &'a String), &'a V)> + 'a {
    table
        .iter()
        .flat_map(|(group, rows)| rows.iter().map(move |(key, value)| ((group, key), value)))
}

/// Consecutive runs of up to [`PART_ROWS`] items.
fn chunks<T>(mut items: impl Iterator<Item = T>) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        let chunk: Vec<T> = items.by_ref().take(PART_ROWS).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

/// Rebuilds a state from the records [`state_parts`] wrote, in order.
pub fn decode_state_parts<B: AsRef<[u8]>>(
    parts: impl IntoIterator<Item = B>,
) -> Result<State, DecodeError> {
    let mut parts = parts.into_iter();
    let mut state = match parts.next().map(|part| decode::<PartIn>(part.as_ref())) {
        Some(Ok(PartIn::Head(head))) => *head,
        Some(Err(e)) => return Err(e),
        _ => return Err(malformed("the snapshot does not start with its head")),
    };
    // Parts before the one at hand, the head included.
    for (counted, part) in (1u64..).zip(parts) {
        match decode::<PartIn>(part.as_ref())? {
            PartIn::Head(_) => return Err(malformed("the snapshot has a second head")),
            PartIn::Nodes(rows) => {
                for (key, row) in rows {
                    state.nodes.put_row(key, Some(row));
                }
            }
            PartIn::Services(rows) => {
                for (key, row) in rows {
                    state.services.put_row(key, Some(row));
                }
            }
            PartIn::Checks(rows) => {
                for (key, row) in rows {
                    state.checks.put_row(key, Some(row));
                }
            }
            PartIn::Kv(rows) => {
                for (key, row) in rows {
                    state.kv.put_row(key, Some(row));
                }
            }
            PartIn::End { parts } if parts == counted => {
                state.after_load();
                return Ok(state);
            }
            PartIn::End { parts } => {
                return Err(malformed(&format!(
                    "the snapshot has {counted} parts before its end, which counts {parts}"
                )))
            }
        }
    }
    Err(malformed("the snapshot ends before its last part"))
}

/// A snapshot whose records decode but do not fit together.
fn malformed(what: &str) -> DecodeError {
    DecodeError::Corrupt(what.to_string())
}

/// Encodes the whole state for a snapshot as one blob ([`STATE_IN_PARTS`], then each record
/// of [`state_parts`] after its length as 4 bytes, little-endian): the form a snapshot
/// travels in to a follower.
pub fn encode_state(state: &State) -> Result<Vec<u8>, EncodeError> {
    let mut parts = Vec::new();
    for part in state_parts(state) {
        parts.push(part?);
    }
    Ok(join_state_parts(&parts))
}

/// The blob of [`encode_state`] made of records [`state_parts`] wrote.
pub fn join_state_parts<B: AsRef<[u8]>>(parts: &[B]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.as_ref().len() + 4).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(STATE_IN_PARTS);
    for part in parts {
        let part = part.as_ref();
        let size = u32::try_from(part.len()).expect("a part is far below 4 GiB");
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The records of a blob of [`encode_state`], or `None` for a snapshot of an earlier
/// release (one record holding the whole state).
pub fn split_state_parts(bytes: &[u8]) -> Option<Result<Vec<&[u8]>, DecodeError>> {
    let (&STATE_IN_PARTS, mut rest) = bytes.split_first()? else {
        return None;
    };
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let Some((size, tail)) = rest.split_first_chunk::<4>() else {
            return Some(Err(malformed("the snapshot is cut inside a part's length")));
        };
        let size = u32::from_le_bytes(*size) as usize;
        if tail.len() < size {
            return Some(Err(malformed("the snapshot is cut inside a part")));
        }
        let (part, tail) = tail.split_at(size);
        parts.push(part);
        rest = tail;
    }
    Some(Ok(parts))
}

/// Decodes a snapshot's state, in parts ([`encode_state`]) or whole (earlier releases), and
/// rebuilds its derived indexes.
pub fn decode_state(bytes: &[u8]) -> Result<State, DecodeError> {
    match split_state_parts(bytes) {
        Some(parts) => decode_state_parts(parts?),
        None => {
            let mut state: State = decode(bytes)?;
            state.after_load();
            Ok(state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Registration, ServiceSpec};

    /// A state with more rows than one part holds in each large table, plus a tombstone.
    fn large_state() -> State {
        let mut state = State::default();
        let mut index = 1;
        for i in 0..(PART_ROWS + 10) {
            index += 1;
            state.apply(
                index,
                &Command::KvSet {
                    key: format!("k/{i:06}"),
                    value: vec![(i % 251) as u8; 20],
                    flags: i as u64,
                    cas: None,
                },
            );
        }
        for i in 0..(PART_ROWS + 3) {
            index += 1;
            state.apply(
                index,
                &Command::Register(Box::new(Registration {
                    node: format!("node-{}", i % 7),
                    address: "10.0.0.1".into(),
                    service: Some(ServiceSpec {
                        id: format!("web-{i}"),
                        name: format!("web-{}", i % 3),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            );
        }
        index += 1;
        state.apply(
            index,
            &Command::KvDelete {
                key: "k/000001".into(),
                recurse: false,
                cas: None,
            },
        );
        state
    }

    #[test]
    fn a_state_in_parts_decodes_to_the_same_state() {
        let state = large_state();
        let parts: Vec<Vec<u8>> = state_parts(&state).map(Result::unwrap).collect();
        // Head, 2 of services, 2 of KV (nodes and checks fit in one or none), end.
        assert!(parts.len() >= 6, "{} parts", parts.len());
        let restored = decode_state_parts(&parts).unwrap();
        assert_eq!(restored, state);
        assert_eq!(restored.instances_of("web-1"), state.instances_of("web-1"));
        let blob = encode_state(&state).unwrap();
        assert_eq!(blob[0], STATE_IN_PARTS);
        assert_eq!(decode_state(&blob).unwrap(), state);
    }

    #[test]
    fn a_replicated_copy_snapshots_as_the_state_and_rebuilds_its_indexes() {
        let state = large_state();
        let mut copy = state.replicated_copy();
        assert_eq!(
            encode_state(&copy).unwrap(),
            encode_state(&state).unwrap(),
            "the same snapshot"
        );
        assert!(
            copy.instances_of("web-1").is_empty(),
            "no derived index copied"
        );
        copy.after_load();
        assert_eq!(copy, state);
        assert_eq!(copy.instances_of("web-1"), state.instances_of("web-1"));
    }

    #[test]
    fn a_snapshot_of_the_previous_format_still_loads() {
        // What releases before the parts wrote: version 1, the whole state as one JSON record.
        let state = large_state();
        let mut old = vec![1u8];
        serde_json::to_writer(&mut old, &state).unwrap();
        let restored = decode_state(&old).unwrap();
        assert_eq!(restored, state);
        assert_eq!(restored.instances_of("web-2"), state.instances_of("web-2"));
    }

    #[test]
    fn a_snapshot_missing_a_part_or_cut_short_is_refused() {
        let state = large_state();
        let mut parts: Vec<Vec<u8>> = state_parts(&state).map(Result::unwrap).collect();
        let whole = join_state_parts(&parts);
        assert!(
            decode_state(&whole[..whole.len() - 3]).is_err(),
            "cut inside a part"
        );
        let end = parts.pop().unwrap();
        assert!(decode_state_parts(&parts).is_err(), "no end");
        parts.remove(2);
        parts.push(end);
        assert!(decode_state_parts(&parts).is_err(), "a part lost");
        assert!(decode_state_parts(&parts[1..]).is_err(), "no head");
    }

    #[test]
    fn a_snapshot_of_an_unknown_format_is_refused() {
        let mut blob = encode_state(&State::default()).unwrap();
        blob[0] = STATE_IN_PARTS + 1;
        assert!(matches!(
            decode_state(&blob),
            Err(DecodeError::UnknownVersion(v)) if v == STATE_IN_PARTS + 1
        ));
    }
}
