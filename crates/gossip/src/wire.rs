//! What pools send each other besides foca's own messages.
//!
//! UDP datagrams start with a type byte: [`FOCA`] (the rest is foca's packet), [`PING`] and
//! [`PONG`] (round-trip measurement, carrying the sender's coordinate), [`LEAVE`] (a member
//! leaving gracefully). TCP connections carry one framed [`Exchange`] each way: a
//! big-endian `u32` length, then the MessagePack body, whose first field is its version.

use std::io;

use atoll_cluster::Coordinate;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Writes one exchange.
pub async fn write_exchange<W: AsyncWrite + Unpin>(
    out: &mut W,
    exchange: &Exchange,
) -> io::Result<()> {
    let body =
        rmp_serde::to_vec(exchange).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let length = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "state too large"))?;
    out.write_all(&length.to_be_bytes()).await?;
    out.write_all(&body).await?;
    out.flush().await
}

/// Reads one exchange.
pub async fn read_exchange<R: AsyncRead + Unpin>(input: &mut R) -> io::Result<Exchange> {
    let mut length = [0u8; 4];
    input.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_EXCHANGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("state of {length} bytes is over the limit"),
        ));
    }
    let mut body = vec![0u8; length];
    input.read_exact(&mut body).await?;
    let version = body.get(1).copied();
    let exchange: Exchange = rmp_serde::from_slice(&body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot decode the state (version byte {version:?}): {e}"),
        )
    })?;
    if exchange.version != EXCHANGE_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "state exchange version {} is not supported",
                exchange.version
            ),
        ));
    }
    Ok(exchange)
}
