//! The HTTP API before this node is part of a cluster, and the switch to the full API.
//!
//! A node binds its HTTP port first and serves from then on. Until it has joined a cluster
//! and registered itself (a server waiting for its `--bootstrap-expect` peers, a client
//! waiting for a server, a whole cluster restarting) it answers the way Consul does while
//! there is no leader: `/v1/status/leader` is `""` (even once Raft knows a leader, so that a
//! named leader always means the whole API works), `/v1/status/peers` lists the peers this
//! node knows, `/v1/agent/self` and `/v1/agent/members` describe what it knows, and every
//! other `/v1` request is a 500 "No cluster leader" that clients retry. Marathon's
//! paths answer 503 except `/ping`; `/metrics` answers what the node knows (without the
//! state's sizes). Once [`ApiSwitch::install`] is called every request
//! goes to the full API.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use atoll_cluster::ClusterHandle;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::consul::agent::{member_value, SERF_ALIVE};
use crate::error::ApiError;

/// Why a request cannot be answered yet.
const NO_LEADER: &str = "No cluster leader";

/// What the not-yet-joined API knows about this node.
#[derive(Clone)]
pub struct Forming {
    /// The cluster handle (started, maybe not yet part of a cluster).
    pub cluster: ClusterHandle,
    /// atoll's version.
    pub version: String,
    /// Notified by `PUT /v1/agent/leave` before the node has joined: the node should exit.
    pub leave: Arc<Notify>,
}

/// Serves the forming API until the full one is installed.
#[derive(Clone)]
pub struct ApiSwitch {
    full: Arc<OnceLock<Router>>,
}

impl ApiSwitch {
    /// The router to serve from the moment the HTTP port is bound, and its switch.
    pub fn new(forming: Forming) -> (Router, ApiSwitch) {
        let switch = ApiSwitch {
            full: Arc::new(OnceLock::new()),
        };
        let before = forming_routes().with_state(forming);
        let full = switch.full.clone();
        let router = Router::new().fallback_service(tower::service_fn(move |request: Request| {
            let target = full.get().cloned().unwrap_or_else(|| before.clone());
            async move { Ok::<_, Infallible>(target.oneshot(request).await.into_response()) }
        }));
        (router, switch)
    }

    /// From now on every request goes to `router`. Only the first call has an effect.
    pub fn install(&self, router: Router) {
        let _ = self.full.set(router);
    }
}

fn forming_routes() -> Router<Forming> {
    Router::new()
        .route("/v1/status/leader", get(leader))
        .route("/v1/status/peers", get(peers))
        .route("/v1/agent/self", get(self_info))
        .route("/v1/agent/members", get(members))
        .route("/v1/agent/leave", put(leave))
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/metrics",
            get(|State(forming): State<Forming>| async move {
                crate::metrics::forming_metrics(&forming.cluster, &forming.version)
            }),
        )
        .fallback(not_yet)
}

/// Consul's headers, with no leader known (yet) to this node's API.
fn consul_answer(forming: &Forming, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("x-consul-knownleader", HeaderValue::from_static("false"));
    headers.insert(
        "x-consul-index",
        HeaderValue::from(forming.cluster.store().applied().max(1)),
    );
    headers.insert(
        "x-consul-lastcontact",
        HeaderValue::from(forming.cluster.last_contact_ms()),
    );
    response
}

async fn leader(State(forming): State<Forming>) -> Response {
    consul_answer(&forming, Json("").into_response())
}

async fn peers(State(forming): State<Forming>) -> Response {
    let peers = forming.cluster.peers();
    consul_answer(&forming, Json(peers).into_response())
}

async fn self_info(State(forming): State<Forming>) -> Response {
    let member = forming.cluster.member();
    let body = json!({
        "Config": {
            "Datacenter": member.datacenter,
            "PrimaryDatacenter": member.datacenter,
            "NodeName": member.name,
            "NodeID": "",
            "Server": member.server,
            "Revision": "",
            "Version": forming.version,
        },
        "Member": member_value(forming.cluster.node_id(), member, &forming.version, SERF_ALIVE),
        "Meta": {},
    });
    consul_answer(&forming, Json(body).into_response())
}

async fn members(State(forming): State<Forming>) -> Response {
    let mut members: Vec<_> = forming
        .cluster
        .members()
        .iter()
        .map(|(id, member, _)| member_value(*id, member, &forming.version, SERF_ALIVE))
        .collect();
    if members.is_empty() {
        let own = forming.cluster.member();
        members.push(member_value(
            forming.cluster.node_id(),
            own,
            &forming.version,
            SERF_ALIVE,
        ));
    }
    consul_answer(&forming, Json(members).into_response())
}

/// A node that has not joined has nothing to hand over: it just stops.
async fn leave(State(forming): State<Forming>) -> Response {
    forming.leave.notify_one();
    consul_answer(&forming, Json(true).into_response())
}

async fn not_yet(State(forming): State<Forming>, request: Request) -> Response {
    let path = request.uri().path();
    if path.starts_with("/v2/") {
        let body =
            json!({ "message": format!("{NO_LEADER}: this node has not joined a cluster yet") });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let error = ApiError::with_status(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{NO_LEADER}: this node has not joined a cluster yet"),
    );
    consul_answer(&forming, error.into_response())
}
