//! Marathon-compatible endpoints (`/v2/...`).

pub mod events;
pub mod routes;
pub mod selector;
pub mod subscriptions;
pub mod wire;
