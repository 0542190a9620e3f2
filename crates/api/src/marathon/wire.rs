//! Marathon's JSON shapes for `/v2/apps` and `/v2/tasks`: app definitions parsed and
//! validated into [`AppSpec`](atoll_state::AppSpec), and apps and tasks rendered the way
//! Marathon's clients read them. Pure functions over plain data; the handlers live in
//! `routes`.
//!
//! Split by concern: `parse` reads and validates a definition with the error-collecting
//! `reader` (every problem reported with its path), `merge` applies `PUT`'s update
//! semantics, `render` writes apps and tasks back out, `app` pairs a spec with the
//! definition the API echoes, `id` holds the app id rule and `error` the refusals.

mod app;
mod error;
mod group;
mod id;
mod merge;
mod parse;
mod reader;
mod render;

pub use app::MarathonApp;
pub use error::{PutAppError, ValidationError};
pub use group::{parse_group, GroupBody, GroupRequest};
pub(crate) use id::absolute_app_id;
pub use id::{normalize_app_id, resolve_id};
pub use merge::parse_app_put;
pub use parse::parse_app;

pub use render::{app_json, task_json};

#[cfg(test)]
mod tests;
