//! Marathon-compatible endpoints (`/v2/...`).

pub mod events;
pub mod routes;
pub mod wire;
