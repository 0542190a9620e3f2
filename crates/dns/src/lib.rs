//! atoll's DNS interface, answering as Consul's does: name parsing and answer building are
//! pure functions over the state; the server module owns the sockets.
#![forbid(unsafe_code)]

pub mod answer;
pub mod name;
pub mod packet;
mod server;

pub use answer::DnsConfig;
pub use server::{DnsServer, DnsServerError};
