//! Versioned encodings of commands and state, as stored in the Raft log and snapshots.
//!
//! Every stored blob starts with a one-byte format version so a later release can
//! read what an earlier one wrote and migrate it.

use crate::state::State;

/// Current format of stored commands and snapshots: MessagePack with field names, so a
/// field added later (with a serde default) still reads what an earlier release wrote.
pub const FORMAT_VERSION: u8 = 2;

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
        Some((&FORMAT_VERSION, body)) => decode_body(body),
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

/// Encodes the whole state for a snapshot.
pub fn encode_state(state: &State) -> Result<Vec<u8>, EncodeError> {
    encode(state)
}

/// Decodes a snapshot's state and rebuilds its derived indexes.
pub fn decode_state(bytes: &[u8]) -> Result<State, DecodeError> {
    let mut state: State = decode(bytes)?;
    state.after_load();
    Ok(state)
}
