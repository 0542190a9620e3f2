//! What pools send each other besides foca's own messages.
//!
//! UDP datagrams start with a type byte: [`FOCA`] (the rest is foca's packet), [`PING`] and
//! [`PONG`] (round-trip measurement, carrying the sender's coordinate), [`LEAVE`] (a member
//! leaving gracefully). TCP connections carry one framed message each way: a big-endian
//! `u32` length, then the body. A body is an [`Exchange`] in MessagePack, whose first field
//! is its version; or [`TYPED`], a type byte ([`KEYRING_REQUEST`], [`KEYRING_ANSWER`]) and
//! the message in MessagePack, whose first field is its version.
//!
//! With encryption, every datagram and every frame's body is sealed whole
//! ([`crate::keyring`]); the length stays plain.

use std::io;

use atoll_cluster::Coordinate;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::keyring::{Crypto, Transport, SEALED};
use crate::NodeId;

/// A foca packet follows.
pub const FOCA: u8 = 0;
/// A [`Ping`] follows.
pub const PING: u8 = 1;
/// A [`Pong`] follows.
pub const PONG: u8 = 2;
/// A [`Leave`] follows.
pub const LEAVE: u8 = 3;

/// The version of [`Exchange`] this build writes and reads.
pub const EXCHANGE_VERSION: u8 = 1;

/// The first byte of a typed frame body; MessagePack never starts with it, so no
/// [`Exchange`] (the body of a frame before typed messages existed) does.
pub const TYPED: u8 = 0xC1;
/// A typed frame holding a [`KeyringRequest`].
pub const KEYRING_REQUEST: u8 = 1;
/// A typed frame holding a [`KeyringAnswer`].
pub const KEYRING_ANSWER: u8 = 2;
/// The version of [`KeyringRequest`] and [`KeyringAnswer`] this build writes and reads.
pub const KEYRING_VERSION: u8 = 1;

/// The largest exchange read (a pool of a few thousand members).
const MAX_EXCHANGE: usize = 16 << 20;

/// A round-trip probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the answer.
    pub seq: u64,
    /// The sender's name.
    pub from: String,
    /// The sender's coordinate.
    pub coordinate: Coordinate,
}

/// The answer to a [`Ping`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's sequence number.
    pub seq: u64,
    /// The answering member's name.
    pub from: String,
    /// The answering member's coordinate.
    pub coordinate: Coordinate,
}

/// A member leaving the pool gracefully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    /// Its name.
    pub name: String,
    /// The start of the identity that leaves (a later identity of the name is not affected).
    pub started: u64,
}

/// The full state one member sends another when joining or in the periodic exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exchange {
    /// [`EXCHANGE_VERSION`].
    pub version: u8,
    /// The sender.
    pub from: NodeId,
    /// Every member the sender knows, as foca holds them (failed ones included).
    pub members: Vec<foca::Member<NodeId>>,
    /// `(name, started)` of the members the sender knows to have left.
    pub left: Vec<(String, u64)>,
    /// The last coordinate the sender knows of each member, its own included.
    pub coordinates: Vec<(String, Coordinate)>,
}

/// A change of the keyring, or a look at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyringOp {
    /// Answer the keys.
    List,
    /// Add this key (base64).
    Install(String),
    /// Make this installed key the primary.
    Use(String),
    /// Remove this key, which must not be the primary.
    Remove(String),
}

impl KeyringOp {
    /// The operation's name, for a log line (never the key).
    pub fn kind(&self) -> &'static str {
        match self {
            KeyringOp::List => "list",
            KeyringOp::Install(_) => "install",
            KeyringOp::Use(_) => "use",
            KeyringOp::Remove(_) => "remove",
        }
    }
}

/// A keyring operation sent to a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringRequest {
    /// [`KEYRING_VERSION`].
    pub version: u8,
    /// The operation.
    pub op: KeyringOp,
}

/// A member's answer to a [`KeyringRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringAnswer {
    /// [`KEYRING_VERSION`].
    pub version: u8,
    /// The member's name.
    pub name: String,
    /// Its keys after the operation, the primary first (in base64).
    pub keys: Vec<String>,
    /// Why the operation failed there.
    pub error: Option<String>,
}

/// What a TCP frame holds.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A state exchange.
    Exchange(Box<Exchange>),
    /// A keyring operation.
    KeyringRequest(KeyringRequest),
    /// The answer to one.
    KeyringAnswer(KeyringAnswer),
}

/// Encodes a datagram: the type byte, then the message.
pub fn datagram<T: Serialize>(kind: u8, message: &T) -> Option<Vec<u8>> {
    let mut out = vec![kind];
    match rmp_serde::encode::write(&mut out, message) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::debug!(error = %e, "cannot encode a gossip datagram");
            None
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn encode_frame(frame: &Frame) -> io::Result<Vec<u8>> {
    let encode = |kind: u8, body: Result<Vec<u8>, rmp_serde::encode::Error>| {
        let body = body.map_err(|e| invalid(e.to_string()))?;
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&[TYPED, kind]);
        out.extend_from_slice(&body);
        io::Result::Ok(out)
    };
    match frame {
        Frame::Exchange(exchange) => {
            rmp_serde::to_vec(exchange).map_err(|e| invalid(e.to_string()))
        }
        Frame::KeyringRequest(request) => encode(KEYRING_REQUEST, rmp_serde::to_vec(request)),
        Frame::KeyringAnswer(answer) => encode(KEYRING_ANSWER, rmp_serde::to_vec(answer)),
    }
}

/// Decodes a frame's (opened) body.
pub fn decode_frame(body: &[u8]) -> io::Result<Frame> {
    let check = |what: &str, version: u8, supported: u8| {
        if version == supported {
            Ok(())
        } else {
            Err(invalid(format!(
                "{what} version {version} is not supported"
            )))
        }
    };
    match body {
        [TYPED, KEYRING_REQUEST, message @ ..] => {
            let request: KeyringRequest = rmp_serde::from_slice(message)
                .map_err(|e| invalid(format!("cannot decode a keyring request: {e}")))?;
            check("keyring request", request.version, KEYRING_VERSION)?;
            Ok(Frame::KeyringRequest(request))
        }
        [TYPED, KEYRING_ANSWER, message @ ..] => {
            let answer: KeyringAnswer = rmp_serde::from_slice(message)
                .map_err(|e| invalid(format!("cannot decode a keyring answer: {e}")))?;
            check("keyring answer", answer.version, KEYRING_VERSION)?;
            Ok(Frame::KeyringAnswer(answer))
        }
        [TYPED, kind, ..] => Err(invalid(format!("unknown frame type {kind}"))),
        _ => {
            let version = body.get(1).copied();
            let exchange: Exchange = rmp_serde::from_slice(body).map_err(|e| {
                invalid(format!(
                    "cannot decode the state (version byte {version:?}): {e}"
                ))
            })?;
            check("state exchange", exchange.version, EXCHANGE_VERSION)?;
            Ok(Frame::Exchange(Box::new(exchange)))
        }
    }
}

/// Writes one frame, sealed when the pool encrypts.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    crypto: &Crypto,
    frame: &Frame,
) -> io::Result<()> {
    let body = match frame {
        Frame::Exchange(_) => crypto.seal(Transport::Frame, encode_frame(frame)?),
        // Only sealed keyring operations are obeyed, even during a rolling enable.
        _ => crypto.seal_always(Transport::Frame, encode_frame(frame)?),
    };
    let length = u32::try_from(body.len()).map_err(|_| invalid("state too large".into()))?;
    out.write_all(&length.to_be_bytes()).await?;
    out.write_all(&body).await?;
    out.flush().await
}

/// Reads one frame; one that is not sealed with an installed key (or not sealed when the
/// pool requires it) is an error.
pub async fn read_frame<R: AsyncRead + Unpin>(input: &mut R, crypto: &Crypto) -> io::Result<Frame> {
    read_frame_sealed(input, crypto)
        .await
        .map(|(frame, _)| frame)
}

/// [`read_frame`], also telling whether the frame came sealed (it may not, only while
/// `verify_incoming` is off).
pub async fn read_frame_sealed<R: AsyncRead + Unpin>(
    input: &mut R,
    crypto: &Crypto,
) -> io::Result<(Frame, bool)> {
    let mut length = [0u8; 4];
    input.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_EXCHANGE {
        return Err(invalid(format!(
            "state of {length} bytes is over the limit"
        )));
    }
    let mut body = vec![0u8; length];
    input.read_exact(&mut body).await?;
    let sealed = body.first() == Some(&SEALED);
    let body = crypto
        .open(Transport::Frame, body)
        .map_err(|refusal| invalid(format!("frame refused: {}", refusal.text())))?;
    decode_frame(&body).map(|frame| (frame, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::{Encryption, Key, Keyring};

    fn crypto(byte: u8) -> Crypto {
        Crypto::new(Some(Encryption {
            keyring: Keyring::new(Key::from_bytes(&[byte; 32]).expect("key")),
            verify_incoming: true,
            verify_outgoing: true,
            file: None,
        }))
    }

    async fn round_trip(from: &Crypto, to: &Crypto, frame: &Frame) -> io::Result<Frame> {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, from, frame).await?;
        read_frame(&mut buffer.as_slice(), to).await
    }

    #[tokio::test]
    async fn frames_round_trip_sealed_and_plain() {
        let request = Frame::KeyringRequest(KeyringRequest {
            version: KEYRING_VERSION,
            op: KeyringOp::Install("a2V5".into()),
        });
        for c in [Crypto::default(), crypto(1)] {
            let Frame::KeyringRequest(back) = round_trip(&c, &c, &request).await.expect("read")
            else {
                panic!("a keyring request");
            };
            assert_eq!(back.op, KeyringOp::Install("a2V5".into()));
        }
        // Another key, no key, or plain traffic to an encrypting member: refused.
        assert!(round_trip(&crypto(1), &crypto(2), &request).await.is_err());
        assert!(round_trip(&crypto(1), &Crypto::default(), &request)
            .await
            .is_err());
        assert!(round_trip(&Crypto::default(), &crypto(1), &request)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_rolling_enable_accepts_plain_frames_and_says_so() {
        let rolling = |outgoing| {
            Crypto::new(Some(Encryption {
                keyring: Keyring::new(Key::from_bytes(&[1; 32]).expect("key")),
                verify_incoming: false,
                verify_outgoing: outgoing,
                file: None,
            }))
        };
        let request = Frame::KeyringRequest(KeyringRequest {
            version: KEYRING_VERSION,
            op: KeyringOp::List,
        });
        // Keyring operations are sealed even when verify_outgoing is off.
        for (from, sealed) in [
            (Crypto::default(), false),
            (rolling(false), true),
            (crypto(1), true),
        ] {
            let mut buffer = Vec::new();
            write_frame(&mut buffer, &from, &request)
                .await
                .expect("written");
            let (_, was_sealed) = read_frame_sealed(&mut buffer.as_slice(), &rolling(true))
                .await
                .expect("accepted");
            assert_eq!(was_sealed, sealed);
        }
        let exchange = Frame::Exchange(Box::new(Exchange {
            version: EXCHANGE_VERSION,
            from: NodeId {
                name: "a".into(),
                addr: "127.0.0.1:1".parse().expect("address"),
                started: 1,
                bump: 0,
                tags: Default::default(),
            },
            members: Vec::new(),
            left: Vec::new(),
            coordinates: Vec::new(),
        }));
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &rolling(false), &exchange)
            .await
            .expect("written");
        let (_, was_sealed) = read_frame_sealed(&mut buffer.as_slice(), &rolling(true))
            .await
            .expect("accepted");
        assert!(!was_sealed, "state goes plain with verify_outgoing off");
    }

    #[test]
    fn unknown_types_and_versions_are_refused() {
        assert!(decode_frame(&[TYPED, 9, 0x90]).is_err());
        let newer = KeyringAnswer {
            version: KEYRING_VERSION + 1,
            name: "s1.dc1".into(),
            keys: Vec::new(),
            error: None,
        };
        let mut body = vec![TYPED, KEYRING_ANSWER];
        body.extend(rmp_serde::to_vec(&newer).expect("encoded"));
        let error = decode_frame(&body).expect_err("a newer version");
        assert!(error.to_string().contains("version 2"), "{error}");
    }
}
