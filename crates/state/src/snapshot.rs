//! Versioned encodings of commands and state, as stored in the Raft log and snapshots.
//!
//! Every stored blob starts with a one-byte format version so a later release can
//! read what an earlier one wrote and migrate it.

use crate::state::State;

/// Current format of stored commands and snapshots.
pub const FORMAT_VERSION: u8 = 1;

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
    Corrupt(#[from] serde_json::Error),
}

/// A value that could not be encoded. Stored types are plain data with string keys, so this
/// is a bug; it is an error rather than an empty record so nothing undecodable is stored.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a record for storage: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// Encodes any stored value with the version marker.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&FORMAT_VERSION, body)) => Ok(serde_json::from_slice(body)?),
        Some((&version, _)) => Err(DecodeError::UnknownVersion(version)),
    }
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
