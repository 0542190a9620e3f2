//! `/v1/status/*`: Raft leader and peers.

use axum::extract::State;
use axum::response::Response;

use crate::query::json_with_index;
use crate::ApiContext;

/// `GET /v1/status/leader`: the leader's Raft address, or `""` if none is known.
pub async fn leader(State(context): State<ApiContext>) -> Response {
    let leader = context.cluster().leader_addr().unwrap_or_default();
    json_with_index(context.store().applied(), &leader)
}

/// `GET /v1/status/peers`: Raft addresses of the voters.
pub async fn peers(State(context): State<ApiContext>) -> Response {
    json_with_index(context.store().applied(), &context.cluster().peers())
}
