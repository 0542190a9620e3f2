//! atoll's metrics: instruments updated with atomics on the hot paths (no lock, no
//! allocation once a series exists), the node's instruments, the process's figures, and
//! the Prometheus text format a scrape is written in.
#![forbid(unsafe_code)]

pub mod exposition;
pub mod node;
pub mod process;
pub mod registry;

pub use exposition::{encode_text, Family, Kind, Series, Value, TEXT_CONTENT_TYPE};
pub use node::{node, DnsTransport, NodeMetrics};
pub use registry::{Counter, Gauge, Histogram, HistogramSnapshot};
