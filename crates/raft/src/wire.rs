//! How messages between nodes are encoded: MessagePack (named fields, so a field added later
//! reads as its default on an older peer), sent over HTTP/2 (one persistent connection per
//! peer, requests multiplexed on it). The listener also reads JSON, the first encoding, and
//! answers in the encoding it was asked in.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The content type of a MessagePack body.
pub(crate) const MSGPACK: &str = "application/msgpack";

/// Encodes a message body.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(128);
    atoll_state::snapshot::encode_into(&mut out, value).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes a message body written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    atoll_state::snapshot::decode_body(body).map_err(|e| e.to_string())
}

/// The encoding a request came in, which its answer uses too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    MessagePack,
    Json,
}

impl Format {
    /// The answer `value` in this encoding.
    pub(crate) fn reply<T: Serialize>(self, value: &T) -> Response {
        let encoded = match self {
            Format::MessagePack => encode(value).map(|body| (MSGPACK, body)),
            Format::Json => serde_json::to_vec(value)
                .map(|body| ("application/json", body))
                .map_err(|e| e.to_string()),
        };
        match encoded {
            Ok((kind, body)) => (
                [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
                body,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        }
    }
}

/// A request body in either encoding, with the encoding it came in.
pub(crate) struct Message<T>(pub T, pub Format);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Message<T> {
    type Rejection = (StatusCode, String);

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let format = match request.headers().get(header::CONTENT_TYPE) {
            Some(kind) if kind.as_bytes() == MSGPACK.as_bytes() => Format::MessagePack,
            _ => Format::Json,
        };
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| (e.status(), e.body_text()))?;
        let value = match format {
            Format::MessagePack => decode(&body),
            Format::Json => serde_json::from_slice(&body).map_err(|e| e.to_string()),
        }
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot decode the request: {e}"),
            )
        })?;
        Ok(Message(value, format))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_state::Command;

    #[test]
    fn a_command_crosses_in_fewer_bytes_than_json() {
        let command = Command::KvSet {
            key: "bench/key-000123".into(),
            value: vec![b'x'; 100],
            flags: 0,
            cas: None,
        };
        let packed = encode(&command).unwrap();
        let json = serde_json::to_vec(&command).unwrap();
        assert!(
            packed.len() * 2 < json.len(),
            "{} vs {}",
            packed.len(),
            json.len()
        );
        assert_eq!(decode::<Command>(&packed).unwrap(), command);
    }
}
