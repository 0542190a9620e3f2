//! Prepared queries over DNS (`NAME.query[.DC].DOMAIN`): what the server needs from whoever
//! runs them. Running one may fail over to other datacenters over HTTP, so it is a future
//! the server awaits on the tokio runtime, never on a UDP thread, and its answers are never
//! cached.

use std::future::Future;
use std::pin::Pin;

/// A prepared query's result, as DNS answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryAnswer {
    /// The query's `DNS.TTL` in seconds, when it sets one.
    pub ttl: Option<u32>,
    /// The datacenter the instances are in.
    pub datacenter: String,
    /// The instances, in the order the query gave them.
    pub instances: Vec<QueryInstance>,
}

/// One instance of a prepared query's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryInstance {
    /// Its node's name.
    pub node: String,
    /// Its node's address.
    pub node_address: String,
    /// Its own address (empty: the node's).
    pub address: String,
    /// Its port.
    pub port: u16,
}

/// Why a prepared query gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryFailure {
    /// No query has that id or name (NXDOMAIN).
    NotFound,
    /// Anything else (SERVFAIL).
    Failed(String),
}

/// A prepared query being run.
pub type QueryPending<'a> =
    Pin<Box<dyn Future<Output = Result<QueryAnswer, QueryFailure>> + Send + 'a>>;

/// Runs prepared queries for the DNS server.
pub trait PreparedQueries: Send + Sync + 'static {
    /// Runs the query `name` (an id or a name) of this datacenter, failing over as it says.
    fn execute<'a>(&'a self, name: &'a str) -> QueryPending<'a>;
}

/// For a DNS server without prepared queries: every query fails (SERVFAIL).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoQueries;

impl PreparedQueries for NoQueries {
    fn execute<'a>(&'a self, _name: &'a str) -> QueryPending<'a> {
        Box::pin(async {
            Err(QueryFailure::Failed(
                "prepared queries are not served".into(),
            ))
        })
    }
}
