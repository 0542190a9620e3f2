//! atoll's DNS interface, answering as Consul's does: name parsing and answer building are
//! pure functions over the state; the server module owns the sockets.
#![forbid(unsafe_code)]

pub mod answer;
mod metrics;
pub mod name;
pub mod packet;
pub mod query;
mod server;

pub use answer::DnsConfig;
pub use query::{
    NoQueries, PreparedQueries, QueryAnswer, QueryFailure, QueryInstance, QueryPending,
};
pub use server::{DnsServer, DnsServerError};
