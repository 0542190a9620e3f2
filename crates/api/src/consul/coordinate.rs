//! `/v1/coordinate/nodes` and `/v1/coordinate/node/:node`: the Vivaldi coordinates of the
//! datacenter's nodes, as this node's LAN gossip pool measured and heard them (not stored
//! in Raft, so two nodes may answer slightly different values).

use std::collections::BTreeMap;

use atoll_cluster::Coordinate;
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use crate::acl::Authz;
use crate::error::ApiError;
use crate::extract::Path;
use crate::query::json_with_index;
use crate::ApiContext;

/// The coordinates known here, by node name (none without a LAN pool).
pub(crate) fn known(context: &ApiContext) -> BTreeMap<String, Coordinate> {
    context
        .lan()
        .map(|lan| lan.coordinates())
        .unwrap_or_default()
}

fn entry(node: &str, coordinate: &Coordinate) -> Value {
    json!({ "Node": node, "Segment": "", "Coord": coordinate })
}

/// `GET /v1/coordinate/nodes`: every node with a coordinate that the caller may read, by
/// name.
pub async fn nodes(State(context): State<ApiContext>, authz: Authz) -> Response {
    let entries: Vec<Value> = known(&context)
        .iter()
        .filter(|(node, coordinate)| authz.reads_node(node) && coordinate.is_valid())
        .map(|(node, coordinate)| entry(node, coordinate))
        .collect();
    json_with_index(context.store().applied(), &entries)
}

/// `GET /v1/coordinate/node/:node`: that node's coordinate, as a list of one (404 when the
/// node has none).
pub async fn node(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let coordinate = known(&context)
        .remove(&node)
        .filter(|coordinate| coordinate.is_valid() && authz.reads_node(&node));
    match coordinate {
        Some(coordinate) => Ok(json_with_index(
            context.store().applied(),
            &[entry(&node, &coordinate)],
        )),
        None => Err(ApiError::not_found(format!(
            "no coordinate for node {node:?}"
        ))),
    }
}
