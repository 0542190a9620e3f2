//! What Consul's listing endpoints share: `?filter=` (an expression over each element of
//! the answer), `?node-meta=key:value` (repeatable, all must match the element's node) and
//! `?near=` (nearest first).

use atoll_state::State as CatalogState;
use serde::Serialize;
use serde_json::Value;

use super::filter::{Filter, Shape};
use std::collections::BTreeMap;

use super::near::{sort_by_distance, Coordinate, Coordinates};
use crate::error::ApiError;
use crate::query::Query;

/// The listing options of one request, parsed and checked before any state is read.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    filter: Option<Filter>,
    node_meta: Vec<(String, String)>,
    near: Option<String>,
    /// The coordinates known when the request came, taken only with `?near=`.
    coordinates: BTreeMap<String, Coordinate>,
}

impl Coordinates for BTreeMap<String, Coordinate> {
    fn coordinate(&self, node: &str) -> Option<Coordinate> {
        self.get(node).cloned()
    }
}

impl Listing {
    /// `?filter=` alone, for the endpoints that take no other listing option.
    pub(crate) fn filter_only(query: &Query, shape: &'static Shape) -> Result<Self, ApiError> {
        let filter = match query.get("filter") {
            None | Some("") => None,
            Some(text) => Some(
                Filter::compile(text, shape)
                    .map_err(|error| ApiError::field("filter", error.consul_message()))?,
            ),
        };
        Ok(Listing {
            filter,
            ..Listing::default()
        })
    }

    /// `?filter=`, `?node-meta=` and `?near=` (`_agent` is this node), with the
    /// coordinates of the node's LAN pool to sort by.
    pub(crate) fn parse(
        query: &Query,
        context: &crate::ApiContext,
        shape: &'static Shape,
    ) -> Result<Self, ApiError> {
        let near = match query.get("near") {
            None | Some("") => None,
            Some("_agent") => Some(context.node().to_string()),
            Some(node) => Some(node.to_string()),
        };
        let coordinates = match near {
            Some(_) => super::coordinate::known(context),
            None => BTreeMap::new(),
        };
        Ok(Listing {
            node_meta: node_meta_filter(query)?,
            near,
            coordinates,
            ..Listing::filter_only(query, shape)?
        })
    }

    /// Whether `node` carries every `?node-meta=` pair.
    pub(crate) fn node_matches(&self, state: &CatalogState, node: &str) -> bool {
        node_matches(state, node, &self.node_meta)
    }

    /// The rows nearest `?near=` first (unchanged without it).
    pub(crate) fn nearest<T>(&self, rows: Vec<T>, node_of: impl Fn(&T) -> &str) -> Vec<T> {
        match &self.near {
            None => rows,
            Some(origin) => sort_by_distance(rows, origin, &self.coordinates, node_of),
        }
    }

    /// The answer as JSON, without the elements `?filter=` rejects.
    pub(crate) fn answer(&self, rows: impl Serialize) -> Value {
        let mut answer = serde_json::to_value(rows).unwrap_or_default();
        if let Some(filter) = &self.filter {
            filter.retain(&mut answer);
        }
        answer
    }
}

/// Parses `?node-meta=key:value` filters (repeatable).
pub(crate) fn node_meta_filter(query: &Query) -> Result<Vec<(String, String)>, ApiError> {
    query
        .all("node-meta")
        .into_iter()
        .map(|pair| {
            pair.split_once(':')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    ApiError::field(
                        "node-meta",
                        format!("Invalid node-meta filter {pair:?}: expected key:value"),
                    )
                })
        })
        .collect()
}

/// Whether `node` exists and carries every pair of `filter` (an empty filter takes all).
pub(crate) fn node_matches(state: &CatalogState, node: &str, filter: &[(String, String)]) -> bool {
    filter.is_empty()
        || state
            .nodes
            .get(node)
            .is_some_and(|n| filter.iter().all(|(k, v)| n.meta.get(k) == Some(v)))
}
