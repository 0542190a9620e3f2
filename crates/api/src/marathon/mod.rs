//! Marathon-compatible endpoints (`/v2/...`).

pub mod events;
pub mod groups;
pub mod routes;
pub mod selector;
pub mod subscriptions;
pub mod wire;
