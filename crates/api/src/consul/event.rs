//! `/v1/event/*`: user events. An event is written through Raft, so every node holds the
//! last [`atoll_state::MAX_USER_EVENTS`]; a node lists those its filters select it for, as a
//! Consul agent keeps only the events it processed.

use crate::extract::Path;
use atoll_scheduler::Pattern;
use atoll_state::{Command, State as CatalogState, Table, UserEvent};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use base64::Engine;
use serde::Serialize;

use crate::acl::Authz;
use crate::error::ApiError;
use crate::execute::new_id;
use crate::execute::write;
use crate::query::{blocking_until, json_with_index, local_query, Query, ReadOptions};
use crate::ApiContext;
use atoll_acl::Segment;

/// Consul's limit on a user event (name and payload), from Serf's.
const MAX_EVENT_BYTES: usize = 512;

/// An event as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    payload: Option<String>,
    node_filter: &'a str,
    service_filter: &'a str,
    tag_filter: &'a str,
    version: u8,
    #[serde(rename = "LTime")]
    ltime: u64,
}

impl<'a> EventJson<'a> {
    fn new(event: &'a UserEvent) -> Self {
        EventJson {
            id: &event.id,
            name: &event.name,
            payload: (!event.payload.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&event.payload)),
            node_filter: &event.node_filter,
            service_filter: &event.service_filter,
            tag_filter: &event.tag_filter,
            version: 1,
            ltime: event.ltime,
        }
    }
}

/// A filter as Go's `regexp.MatchString` applies it: matching anywhere in the text unless
/// anchored with `^` or `$`.
fn search_pattern(source: &str) -> Result<Pattern, String> {
    let start = if source.starts_with('^') { "" } else { ".*" };
    let end = if source.ends_with('$') && !source.ends_with("\\$") {
        ""
    } else {
        ".*"
    };
    Pattern::new(&format!("{start}(?:{source}){end}")).map_err(|e| e.to_string())
}

fn matches(pattern: &str, text: &str) -> bool {
    pattern.is_empty() || search_pattern(pattern).is_ok_and(|p| p.is_full_match(text))
}

/// Whether `node` processes `event`: its name matches the node filter and, with a service
/// filter, it runs a service whose name matches (and, with a tag filter, one of whose tags
/// matches).
fn processed_by(state: &CatalogState, node: &str, event: &UserEvent) -> bool {
    if !matches(&event.node_filter, node) {
        return false;
    }
    if event.service_filter.is_empty() {
        return true;
    }
    state.services_on_node(node).any(|service| {
        matches(&event.service_filter, &service.name)
            && (event.tag_filter.is_empty()
                || service.tags.iter().any(|t| matches(&event.tag_filter, t)))
    })
}

/// Consul's index of an event list: the last event's id folded to a number (its two halves
/// xored), 1 when there is none. It is not monotonic; a blocking query waits while it is
/// the one the client sent.
fn list_index(last_id: Option<&str>) -> u64 {
    let Some(id) = last_id else { return 1 };
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    let half = |range: std::ops::Range<usize>| {
        hex.get(range)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    (half(0..16) ^ half(16..32)).max(1)
}

/// `PUT /v1/event/fire/:name` (body: the payload; `?node=`, `?service=`, `?tag=`: regexes).
pub async fn fire(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = local_query(raw.as_deref(), &context)?;
    if name.is_empty() {
        return Err(ApiError::field("name", "Missing name"));
    }
    authz.require_write(Segment::Event, &name)?;
    let filter = |field: &str| -> Result<String, ApiError> {
        let text = query.get(field).unwrap_or_default();
        if !text.is_empty() {
            search_pattern(text).map_err(|e| {
                ApiError::field(field, format!("Invalid {field} filter {text:?}: {e}"))
            })?;
        }
        Ok(text.to_string())
    };
    let event = UserEvent {
        id: new_id(),
        name,
        payload: body.to_vec(),
        node_filter: filter("node")?,
        service_filter: filter("service")?,
        tag_filter: filter("tag")?,
        ltime: 0,
    };
    if !event.tag_filter.is_empty() && event.service_filter.is_empty() {
        return Err(ApiError::field(
            "tag",
            "Cannot provide tag filter without service filter",
        ));
    }
    if event.name.len() + event.payload.len() > MAX_EVENT_BYTES {
        return Err(ApiError::field(
            "payload",
            format!("User event exceeds the limit of {MAX_EVENT_BYTES} bytes (name and payload)"),
        ));
    }
    let id = event.id.clone();
    write(&context, Command::FireEvent(Box::new(event.clone()))).await?;
    let ltime = context.store().read(|state| {
        state
            .events
            .values()
            .rev()
            .find(|e| e.id == id)
            .map_or(0, |e| e.ltime)
    });
    let fired = UserEvent { ltime, ..event };
    Ok(json_with_index(
        context.store().applied(),
        &EventJson::new(&fired),
    ))
}

/// `GET /v1/event/list` (`?name=`; blocking with `?index=` and `?wait=`).
pub async fn list(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let mut options = ReadOptions::parse(&query, &context)?;
    // Events are the local agent's, as in Consul: no read goes to the leader.
    options.mode = None;
    let name = query.get("name").unwrap_or_default().to_string();
    let node = context.node().to_string();
    let (index, body) = blocking_until(
        &context,
        &options,
        Table::Events,
        |state| {
            let events: Vec<EventJson> = state
                .events
                .values()
                .filter(|e| name.is_empty() || e.name == name)
                .filter(|e| processed_by(state, &node, e))
                .filter(|e| authz.reads(Segment::Event, &e.name))
                .map(EventJson::new)
                .collect();
            let index = list_index(events.last().map(|e| e.id));
            (index, serde_json::to_value(events).unwrap_or_default())
        },
        |index, wanted| index != wanted,
    )
    .await?;
    Ok(json_with_index(index, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_anywhere_unless_anchored() {
        assert!(matches("", "anything"));
        assert!(matches("web", "my-web-1"));
        assert!(matches("^web", "web-1"));
        assert!(!matches("^web", "my-web"));
        assert!(matches("b$", "web"));
        assert!(!matches("^we$", "web"));
        assert!(matches("a|z", "xyz"));
    }

    #[test]
    fn the_list_index_folds_the_last_id_and_is_one_without_events() {
        assert_eq!(list_index(None), 1);
        let id = "00000000-0000-0001-0000-000000000003";
        assert_eq!(list_index(Some(id)), 1 ^ 3);
        assert_ne!(
            list_index(Some("b54fe110-7af5-cafc-d1fb-afc8ba432b1c")),
            list_index(Some("b54fe110-7af5-cafc-d1fb-afc8ba432b1d"))
        );
    }
}
