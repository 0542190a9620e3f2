//! Requests for another datacenter: sent unchanged to a server that can answer them, and
//! the answer passed back.
//!
//! A layer before every handler looks at the request's `?dc=` (and, for
//! `PUT /v1/catalog/register` and `deregister`, at the body's `Datacenter`, as Consul does).
//! When it names another datacenter, [`Federation::route`](atoll_cluster::Federation::route)
//! says where the request goes: the relays are tried in order until one can be connected
//! to, the request (method, path, query, headers, the body already read) is sent to it, and
//! its answer (status, headers, `X-Consul-Index` among them, body) becomes this one. Whoever
//! answers there treats its own datacenter as local; a compute node's relays are the
//! servers of its own datacenter, which forward once more.
//!
//! A node that holds no key/value table (a compute node) sends every request for keys or
//! sessions ([`needs_key_table`]) to the server its cluster names the same way
//! ([`to_key_server`]), through the same client.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use atoll_cluster::{ClusterError, Relay, Route};
use atoll_state::Table;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::decode::{normalize_name, parse_duration};
use crate::error::{is_marathon_path, ApiError};
use crate::marathon::routes::MarathonError;
use crate::query::Query;
use crate::ApiContext;

/// Consul's answer for a datacenter no WAN member belongs to.
pub const NO_PATH: &str = "No path to datacenter";
/// Consul's answer for a known datacenter none of whose servers answers.
pub const NO_SERVER: &str = "Remote DC has no server currently reachable";

/// How long one relay may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(650);
/// How long all relays together may take before the datacenter counts as unreachable.
const REACH_BUDGET: Duration = Duration::from_secs(2);
/// How long bytes sent to a relay may stay unacknowledged before its connection is closed.
const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_millis(1500);
/// How long a relay that accepted a request may take to answer one that does not block.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a blocking query's wait (and its jitter) for the trip there and back.
const BLOCKING_MARGIN: Duration = Duration::from_secs(5);
/// Default and longest wait of a blocking query (as `query.rs`).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Counts the relays a request went through, so that a misrouted one cannot circle.
const HOPS_HEADER: &str = "x-atoll-forwarded";
/// A compute node's relay forwards once more: two hops are the most a request needs.
const MAX_HOPS: u32 = 2;
/// Headers that belong to one connection, not to the request or answer.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// The HTTP client requests to other datacenters leave through: one pool of kept-alive
/// connections per node.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::from_address(None)
    }
}

impl Forwarder {
    /// A forwarder whose connections leave from `local` when it is an address of this
    /// machine (a node bound to one address speaks from it, so that what reaches another
    /// node's HTTP API comes from the node's own address, as its other traffic does); from
    /// the address the system picks otherwise.
    pub fn from_address(local: Option<std::net::IpAddr>) -> Self {
        let local =
            local.filter(|ip| !ip.is_unspecified() && std::net::UdpSocket::bind((*ip, 0)).is_ok());
        let mut connector = HttpConnector::new();
        connector.set_local_address(local);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        // A kept-alive connection to a datacenter whose link was cut would otherwise take a
        // request and hold it until the answer timeout: bytes unacknowledged for this long
        // close it, and idle connections are probed so a dead one is found before it is used.
        connector.set_tcp_user_timeout(Some(UNACKNOWLEDGED_LIMIT));
        connector.set_keepalive(Some(Duration::from_secs(2)));
        connector.set_keepalive_interval(Some(Duration::from_secs(1)));
        connector.set_keepalive_retries(Some(2));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Forwarder { client }
    }

    /// Sends one request to another node's HTTP API and reads the whole answer; the caller
    /// bounds the time the exchange may take.
    pub async fn call(
        &self,
        node: std::net::SocketAddr,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{node}{path_and_query}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The paths whose `?dc=` is answered by the local node whatever it names.
fn always_local(path: &str) -> bool {
    path.starts_with("/v1/agent/")
        || matches!(
            path,
            "/v1/catalog/datacenters" | "/v1/coordinate/datacenters" | "/v1/event/list"
        )
}

/// The datacenter `?dc=` names, when the path can be forwarded.
fn requested_datacenter(uri: &Uri) -> Option<String> {
    let path = uri.path();
    let forwardable = (path.starts_with("/v1/") && !always_local(path))
        || path == "/v2"
        || path.starts_with("/v2/");
    if !forwardable {
        return None;
    }
    let raw = uri.query()?;
    if !raw.contains("dc=") {
        return None;
    }
    Query::parse(Some(raw))
        .get("dc")
        .filter(|dc| !dc.is_empty())
        .map(str::to_string)
}

/// Whether the body of this request may name the datacenter it is for (Consul's catalog
/// registration and deregistration).
fn names_datacenter_in_body(method: &Method, path: &str) -> bool {
    method == Method::PUT && matches!(path, "/v1/catalog/register" | "/v1/catalog/deregister")
}

/// The `Datacenter` a JSON body names (any case, underscores ignored, as Consul decodes).
fn body_datacenter(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .as_object()?
        .iter()
        .find(|(key, _)| normalize_name(key) == "datacenter")
        .and_then(|(_, value)| value.as_str())
        .filter(|dc| !dc.is_empty())
        .map(str::to_string)
}

/// Whether a request writes ACL policies or tokens (the bootstrap aside, which a secondary
/// refuses itself).
fn is_acl_write(method: &Method, path: &str) -> bool {
    matches!(*method, Method::PUT | Method::POST | Method::DELETE)
        && (path == "/v1/acl/policy"
            || path.starts_with("/v1/acl/policy/")
            || path == "/v1/acl/token"
            || path.starts_with("/v1/acl/token/"))
}

/// Where an ACL write made in a secondary datacenter is carried out: the primary for
/// policies and global tokens (as Consul forwards them there), here (`None`) for local
/// tokens: a new token whose body says `Local`, or a change to (or clone of) a token this
/// datacenter holds as local.
fn acl_write_target(
    context: &ApiContext,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<String> {
    let primary = context.acl().primary_datacenter.clone();
    let Some(rest) = path.strip_prefix("/v1/acl/token") else {
        return Some(primary);
    };
    let local = match rest.trim_start_matches('/').split('/').next() {
        Some("") | None => *method == Method::PUT && body_says_local(body),
        Some(accessor_id) => context.store().read(|state| {
            state
                .acl_tokens
                .get(accessor_id)
                .is_some_and(|token| token.local)
        }),
    };
    (!local).then_some(primary)
}

/// Whether a token's JSON body sets `Local` (any case, underscores ignored).
fn body_says_local(body: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return false;
    };
    fields
        .iter()
        .any(|(key, value)| normalize_name(key) == "local" && value.as_bool() == Some(true))
}

/// Puts [`Forwarding`] before the router's handlers.
#[derive(Clone)]
pub struct ForwardLayer {
    context: ApiContext,
}

impl ForwardLayer {
    /// Forwards for the node of `context`.
    pub fn new(context: ApiContext) -> Self {
        ForwardLayer { context }
    }
}

impl<S> Layer<S> for ForwardLayer {
    type Service = Forwarding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Forwarding {
            inner,
            context: self.context.clone(),
        }
    }
}

/// Sends a request for another datacenter there; others go to `inner` as they are, their
/// future not boxed again.
#[derive(Clone)]
pub struct Forwarding<S> {
    inner: S,
    context: ApiContext,
}

impl<S> Service<Request> for Forwarding<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let own = self.context.datacenter();
        let named = requested_datacenter(request.uri());
        let foreign = named
            .as_deref()
            .is_some_and(|dc| dc != own && self.context.federation().route(dc) != Route::Local);
        // Keys and sessions live on the servers only where this node holds none.
        let to_server = !foreign
            && needs_key_table(request.uri().path())
            && !self.context.cluster().holds(Table::Kv);
        let look_in_body =
            named.is_none() && names_datacenter_in_body(request.method(), request.uri().path());
        // In a secondary datacenter, policies and global tokens are written in the primary.
        let acl_write = !foreign
            && self.context.acl().replicates_into(own)
            && is_acl_write(request.method(), request.uri().path());
        if !foreign && !look_in_body && !acl_write && !to_server {
            return Either::Left(self.inner.call(request));
        }
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        let context = self.context.clone();
        Either::Right(Box::pin(async move {
            let (parts, body) = request.into_parts();
            // The server read the whole body already: this only takes it out of its box.
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let path = parts.uri.path().to_string();
                    return Ok(failure(&path, StatusCode::BAD_REQUEST, e.to_string()));
                }
            };
            if to_server {
                return Ok(to_key_server(&context, Request::from_parts(parts, body)).await);
            }
            let dc = if acl_write {
                acl_write_target(&context, &parts.method, parts.uri.path(), &body)
            } else {
                match named {
                    Some(dc) => Some(dc),
                    None => body_datacenter(&body).filter(|dc| {
                        dc != context.datacenter() && context.federation().route(dc) != Route::Local
                    }),
                }
            };
            match dc {
                Some(dc) => Ok(forward(&context, &dc, Request::from_parts(parts, body)).await),
                None => {
                    let mut inner = inner;
                    let request = Request::from_parts(parts, Body::from(body));
                    inner.call(request).await
                }
            }
        }))
    }
}

/// An error answer in the shape of the API `path` belongs to: Consul's plain text, or
/// Marathon's `{"message"}` (as [`crate::execute::Refusal`] maps to it).
fn failure(path: &str, status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    if is_marathon_path(path) {
        let status = match status {
            StatusCode::INTERNAL_SERVER_ERROR => StatusCode::SERVICE_UNAVAILABLE,
            other => other,
        };
        return MarathonError::new(status, message).into_response();
    }
    ApiError::plain(status, message).into_response()
}

/// How long a relay that accepted `uri` may take to answer: a blocking query its wait, the
/// remote side's jitter and a margin; anything else a fixed bound.
fn answer_timeout(uri: &Uri) -> Duration {
    let query = Query::parse(uri.query());
    let blocking = query
        .get("index")
        .and_then(|index| index.parse::<u64>().ok())
        .is_some_and(|index| index > 0);
    if !blocking {
        return ANSWER_TIMEOUT;
    }
    let wait = query
        .get("wait")
        .and_then(parse_duration)
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT);
    wait + wait / 16 + BLOCKING_MARGIN
}

/// Sends `request` to the datacenter `dc` and answers with what comes back: the other
/// datacenter's answer as it is, or this node's refusal with the headers Consul's clients
/// expect on every `/v1` answer.
pub async fn forward(context: &ApiContext, dc: &str, request: Request<Bytes>) -> Response {
    let path = request.uri().path().to_string();
    match forward_or_refuse(context, dc, request).await {
        Ok(answer) => answer,
        Err(refusal) if is_marathon_path(&path) => refusal,
        Err(refusal) => crate::consul_headers(context, refusal),
    }
}

/// Sends a `GET` for `path_and_query` with `token` to the datacenter `dc` (as a request
/// naming it would go) and reads the whole answer: its status and body, or this node's
/// refusal (`No path to datacenter`, an unreachable one) as a 500 and its text.
pub async fn fetch(
    context: &ApiContext,
    dc: &str,
    path_and_query: &str,
    token: Option<&str>,
) -> (StatusCode, Bytes) {
    let mut request = Request::new(Bytes::new());
    *request.method_mut() = Method::GET;
    match path_and_query.parse::<Uri>() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(e) => return (StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
    }
    if let Some(value) = token.and_then(|token| HeaderValue::from_str(token).ok()) {
        request
            .headers_mut()
            .insert(HeaderName::from_static("x-consul-token"), value);
    }
    let answer = forward_or_refuse(context, dc, request)
        .await
        .unwrap_or_else(|refusal| refusal);
    let status = answer.status();
    match answer.into_body().collect().await {
        Ok(collected) => (status, collected.to_bytes()),
        Err(e) => (StatusCode::BAD_GATEWAY, Bytes::from(e.to_string())),
    }
}

/// Consul's answer when a client agent knows no server to send a request to.
pub const NO_KNOWN_SERVERS: &str = "No known Consul servers";

/// Sends a request only servers answer (the gossip keyring's), made to a compute node, to a
/// server of its own datacenter, and answers with what comes back.
pub async fn forward_to_servers(context: &ApiContext, request: Request<Bytes>) -> Response {
    let path = request.uri().path().to_string();
    let relays = context.federation().local_servers();
    let hops = hops_of(&request);
    let answer = if relays.is_empty() || hops >= MAX_HOPS {
        Err(failure(
            &path,
            StatusCode::INTERNAL_SERVER_ERROR,
            NO_KNOWN_SERVERS,
        ))
    } else {
        send(context.forwarder(), &relays, request, hops + 1)
            .await
            .map_err(|unanswered| refusal_for(&path, context.datacenter(), unanswered))
    };
    match answer {
        Ok(answer) => answer,
        Err(refusal) => crate::consul_headers(context, refusal),
    }
}

/// Whether the answer to a request for `path` reads or writes keys or sessions (the
/// key/value table), which a compute node does not hold.
pub fn needs_key_table(path: &str) -> bool {
    path == "/v1/kv"
        || path.starts_with("/v1/kv/")
        || path.starts_with("/v1/session/")
        || path == "/v1/txn"
        || path == "/v1/snapshot"
}

/// Sends a request that needs keys or sessions, made to a node that holds none, to the
/// server [`Cluster::server_http`](atoll_cluster::Cluster::server_http) names, and answers
/// with the server's answer as it is: status, headers (`X-Consul-Index` among them) and
/// body. A blocking query waits there. No server known or none reachable: Consul's answer
/// for no leader, within the connect budget.
pub async fn to_key_server(context: &ApiContext, request: Request<Bytes>) -> Response {
    let path = request.uri().path().to_string();
    let hops = hops_of(&request);
    let servers = match context.cluster().server_http() {
        // A request that already came through a node goes no further (a misconfigured
        // server naming a node that holds no keys would send it round).
        Some(addr) if hops < MAX_HOPS => server_relays(&addr).await,
        _ => Vec::new(),
    };
    let answer = if servers.is_empty() {
        Err(Unanswered::NoServer)
    } else {
        let request = with_default_token(context, session_on_this_node(context.node(), request));
        send(context.forwarder(), &servers, request, hops + 1).await
    };
    let refusal = match answer {
        Ok(answer) => return answer,
        Err(Unanswered::NoServer) => {
            tracing::debug!(%path, server = ?context.cluster().server_http(), "no server reachable for keys and sessions");
            failure(
                &path,
                StatusCode::INTERNAL_SERVER_ERROR,
                ClusterError::NoLeader.to_string(),
            )
        }
        Err(Unanswered::Failed(server, reason)) => failure(
            &path,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "rpc error forwarding to server {server}: {reason}; the request may still be applied"
            ),
        ),
    };
    crate::consul_headers(context, refusal)
}

/// The addresses of the server `addr` (`host:port`) names: itself when it is an address,
/// else what the name resolves to (none when it does not resolve in time).
async fn server_relays(addr: &str) -> Vec<Relay> {
    let relay = |http_addr| Relay {
        name: addr.to_string(),
        http_addr,
        dns_addr: None,
    };
    if let Ok(http_addr) = addr.parse::<std::net::SocketAddr>() {
        return vec![relay(http_addr)];
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Ok(Ok(found)) => found.take(2).map(relay).collect(),
        Ok(Err(e)) => {
            tracing::debug!(server = addr, error = %e, "cannot resolve the server");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// A request that carries no token is made with the node's default token, as this node
/// would answer it itself (and as a Consul client agent fills it in before forwarding).
fn with_default_token(context: &ApiContext, mut request: Request<Bytes>) -> Request<Bytes> {
    let settings = context.acl();
    if !settings.enabled
        || crate::acl::request_token(request.headers(), request.uri().query()).is_some()
    {
        return request;
    }
    let default = settings.default_token();
    if let Some(value) = default.and_then(|token| HeaderValue::from_str(&token).ok()) {
        request
            .headers_mut()
            .insert(HeaderName::from_static("x-consul-token"), value);
    }
    request
}

/// A session created through a node that holds no sessions belongs to that node, as one
/// created through a Consul client agent does: a `PUT /v1/session/create` that names no
/// `Node` names this one before it goes to the server (which would otherwise fill in its
/// own name).
fn session_on_this_node(node: &str, request: Request<Bytes>) -> Request<Bytes> {
    if request.method() != Method::PUT || request.uri().path() != "/v1/session/create" {
        return request;
    }
    let (parts, body) = request.into_parts();
    let body = with_node(&body, node).unwrap_or(body);
    Request::from_parts(parts, body)
}

/// `body` (a session to create, or empty) naming `node` when it names none; `None` when
/// it names one already or is not a JSON object (the server then answers it as it is).
pub(crate) fn with_node(body: &[u8], node: &str) -> Option<Bytes> {
    let mut fields = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice(body).ok()? {
            serde_json::Value::Object(fields) => fields,
            _ => return None,
        }
    };
    let named = fields.iter().any(|(key, value)| {
        normalize_name(key) == "node" && value.as_str().is_some_and(|n| !n.is_empty())
    });
    if named {
        return None;
    }
    fields.retain(|key, _| normalize_name(key) != "node");
    fields.insert("Node".into(), serde_json::Value::String(node.into()));
    serde_json::to_vec(&fields).ok().map(Bytes::from)
}

/// How many nodes forwarded a request already.
fn hops_of(request: &Request<Bytes>) -> u32 {
    request
        .headers()
        .get(HOPS_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u32>().ok())
        .unwrap_or(0)
}

/// The answer when no relay answered a request for `dc`.
fn refusal_for(path: &str, dc: &str, unanswered: Unanswered) -> Response {
    match unanswered {
        Unanswered::NoServer => failure(path, StatusCode::INTERNAL_SERVER_ERROR, NO_SERVER),
        Unanswered::Failed(relay, reason) => failure(
            path,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rpc error forwarding to datacenter {dc} through {relay}: {reason}"),
        ),
    }
}

async fn forward_or_refuse(
    context: &ApiContext,
    dc: &str,
    request: Request<Bytes>,
) -> Result<Response, Response> {
    let path = request.uri().path().to_string();
    let hops = hops_of(&request);
    let relays = match context.federation().route(dc) {
        // The layer serves a datacenter routed here itself; a caller that did not ask first
        // gets Consul's answer for a datacenter it cannot forward to.
        Route::Local | Route::Unknown => {
            return Err(failure(&path, StatusCode::INTERNAL_SERVER_ERROR, NO_PATH))
        }
        Route::Unreachable => {
            return Err(failure(&path, StatusCode::INTERNAL_SERVER_ERROR, NO_SERVER))
        }
        Route::Via(relays) => relays,
    };
    if hops >= MAX_HOPS {
        tracing::debug!(
            dc,
            hops,
            "a forwarded request came back: not forwarded again"
        );
        return Err(failure(&path, StatusCode::INTERNAL_SERVER_ERROR, NO_PATH));
    }
    send(context.forwarder(), &relays, request, hops + 1)
        .await
        .map_err(|unanswered| refusal_for(&path, dc, unanswered))
}

/// Why no answer came back.
#[derive(Debug)]
enum Unanswered {
    /// No relay could be connected to in time.
    NoServer,
    /// A relay took the request but gave no answer (its name, the reason). Not retried
    /// elsewhere: it may have acted on it.
    Failed(String, String),
}

async fn send(
    forwarder: &Forwarder,
    relays: &[Relay],
    request: Request<Bytes>,
    hops: u32,
) -> Result<Response, Unanswered> {
    let started = Instant::now();
    let timeout = answer_timeout(request.uri());
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    for relay in relays {
        // Another attempt must be able to fail to connect within the budget.
        if started.elapsed() + CONNECT_TIMEOUT > REACH_BUDGET {
            break;
        }
        let uri = match format!("http://{}{}", relay.http_addr, path_and_query).parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                tracing::debug!(relay = %relay.name, error = %e, "cannot address a relay");
                continue;
            }
        };
        let mut outgoing = hyper::Request::new(Full::new(body.clone()));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) && name.as_str() != HOPS_HEADER {
                outgoing.headers_mut().append(name.clone(), value.clone());
            }
        }
        outgoing.headers_mut().insert(
            HeaderName::from_static(HOPS_HEADER),
            HeaderValue::from(hops),
        );
        let deadline = Instant::now() + timeout;
        let answer =
            match tokio::time::timeout_at(deadline, forwarder.client.request(outgoing)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) if e.is_connect() => {
                    tracing::debug!(relay = %relay.name, error = %e, "relay not reachable");
                    continue;
                }
                // A read that failed before any answer can go to the next relay: nothing
                // was changed, whether or not the relay saw it.
                Ok(Err(e)) if parts.method == Method::GET || parts.method == Method::HEAD => {
                    tracing::debug!(relay = %relay.name, error = %e, "relay gave no answer");
                    continue;
                }
                Ok(Err(e)) => return Err(Unanswered::Failed(relay.name.clone(), e.to_string())),
                Err(_) => {
                    return Err(Unanswered::Failed(
                        relay.name.clone(),
                        format!("no answer within {}s", timeout.as_secs()),
                    ))
                }
            };
        return pass_back(answer, deadline)
            .await
            .map_err(|reason| Unanswered::Failed(relay.name.clone(), reason));
    }
    Err(Unanswered::NoServer)
}

/// The relay's answer as this node's: its status, headers and body. An event stream goes
/// through as it comes; any other body is read within the deadline.
async fn pass_back(
    answer: hyper::Response<hyper::body::Incoming>,
    deadline: Instant,
) -> Result<Response, String> {
    let (mut parts, body) = answer.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let streaming = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    if streaming {
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    match tokio::time::timeout_at(deadline, body.collect()).await {
        Ok(Ok(collected)) => Ok(Response::from_parts(
            parts,
            Body::from(collected.to_bytes()),
        )),
        Ok(Err(e)) => Err(format!("cannot read its answer: {e}")),
        Err(_) => Err("its answer did not finish in time".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::net::SocketAddr;
    use std::sync::Arc;

    use atoll_agent::{Agent, AgentConfig};
    use atoll_cluster::{
        ClusterError, Coordinate, DatacenterCoordinates, Federation, MemberStatus, MemoryCluster,
        Pending, PoolMember,
    };
    use axum::http::HeaderMap;

    use super::*;
    use crate::{router, serve, HttpLimits, NodeFacts};

    /// A federation whose routes are fixed by the test.
    struct Fixed {
        datacenter: String,
        routes: HashMap<String, Route>,
    }

    impl Federation for Fixed {
        fn datacenter(&self) -> &str {
            &self.datacenter
        }

        fn datacenters(&self) -> Vec<String> {
            let mut names: Vec<String> = self.routes.keys().cloned().collect();
            names.sort();
            names.insert(0, self.datacenter.clone());
            names
        }

        fn route(&self, dc: &str) -> Route {
            if dc == self.datacenter {
                return Route::Local;
            }
            self.routes.get(dc).cloned().unwrap_or(Route::Unknown)
        }

        fn wan_members(&self) -> Option<Vec<PoolMember>> {
            let addr: SocketAddr = "127.0.0.1:8302".parse().unwrap();
            let tags = BTreeMap::from([
                ("role".to_string(), "consul".to_string()),
                ("dc".to_string(), self.datacenter.clone()),
            ]);
            Some(vec![PoolMember {
                name: format!("s1.{}", self.datacenter),
                addr,
                tags,
                status: MemberStatus::Alive,
            }])
        }

        fn wan_coordinates(&self) -> Vec<DatacenterCoordinates> {
            vec![DatacenterCoordinates {
                datacenter: "dc2".into(),
                coordinates: vec![("s1.dc2".into(), Coordinate::default())],
            }]
        }

        fn join_wan<'a>(&'a self, addresses: &'a [String]) -> Pending<'a, usize> {
            Box::pin(async move {
                if addresses.iter().any(|a| a.starts_with("127.")) {
                    Ok(addresses.len())
                } else {
                    Err(ClusterError::Refused("cannot reach it".into()))
                }
            })
        }
    }

    fn relay(name: &str, http_addr: SocketAddr) -> Relay {
        Relay {
            name: name.into(),
            http_addr,
            dns_addr: None,
        }
    }

    /// An address nothing listens on.
    async fn dead_addr() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// Starts the API of a one-node datacenter `dc` routing as `routes` say, on a loopback port.
    async fn start(dc: &str, listener: tokio::net::TcpListener, routes: HashMap<String, Route>) {
        let federation = Arc::new(Fixed {
            datacenter: dc.into(),
            routes,
        });
        start_with(dc, listener, federation).await;
    }

    async fn start_with(
        dc: &str,
        listener: tokio::net::TcpListener,
        federation: Arc<dyn Federation>,
    ) {
        start_with_facts(dc, listener, federation, NodeFacts::default()).await;
    }

    async fn start_with_facts(
        dc: &str,
        listener: tokio::net::TcpListener,
        federation: Arc<dyn Federation>,
        facts: NodeFacts,
    ) {
        let cluster = Arc::new(MemoryCluster::new("n1", dc));
        cluster.set_leader(true);
        let (agent, loops) = Agent::start(
            cluster,
            AgentConfig {
                node: "n1".into(),
                address: "127.0.0.1".into(),
                datacenter: dc.into(),
                server_port: Some(8300),
                node_meta: Default::default(),
                heartbeat_ttl: Duration::from_secs(5),
                autopilot: Default::default(),
                enable_script_checks: false,
                lan: None,
            },
            None,
        )
        .await
        .unwrap();
        loops.spawn();
        let context = ApiContext::federated(agent, "test", facts, federation);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // The server lives as long as the test's runtime.
        std::mem::forget(stop);
        tokio::spawn(serve(
            listener,
            router(context),
            HttpLimits::default(),
            stopped,
        ));
    }

    async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// dc1 and dc2, each routing to the other; returns their addresses.
    async fn two_datacenters() -> (SocketAddr, SocketAddr) {
        let (l1, a1) = listener().await;
        let (l2, a2) = listener().await;
        let dead = dead_addr().await;
        start(
            "dc1",
            l1,
            HashMap::from([
                ("dc2".into(), Route::Via(vec![relay("s1.dc2", a2)])),
                ("dc3".into(), Route::Unreachable),
                ("dc4".into(), Route::Via(vec![relay("s1.dc4", dead)])),
                (
                    "dc5".into(),
                    Route::Via(vec![relay("dead.dc5", dead), relay("s1.dc5", a2)]),
                ),
                // A route that leads back here: the hop count must stop it.
                ("dc6".into(), Route::Via(vec![relay("s1.dc6", a1)])),
            ]),
        )
        .await;
        start(
            "dc2",
            l2,
            HashMap::from([
                ("dc1".into(), Route::Via(vec![relay("s1.dc1", a1)])),
                ("dc5".into(), Route::Local),
            ]),
        )
        .await;
        (a1, a2)
    }

    async fn call(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[test]
    fn acl_writes_are_told_apart_and_local_bodies_found() {
        for (method, path, write) in [
            (Method::PUT, "/v1/acl/policy", true),
            (Method::DELETE, "/v1/acl/policy/p1", true),
            (Method::PUT, "/v1/acl/token", true),
            (Method::PUT, "/v1/acl/token/t1/clone", true),
            (Method::GET, "/v1/acl/token/t1", false),
            (Method::GET, "/v1/acl/policies", false),
            (Method::PUT, "/v1/acl/bootstrap", false),
            (Method::PUT, "/v1/acl/tokens", false),
            (Method::PUT, "/v1/kv/acl/token", false),
        ] {
            assert_eq!(is_acl_write(&method, path), write, "{method} {path}");
        }
        assert!(body_says_local(br#"{"Local": true}"#));
        assert!(body_says_local(br#"{"local": true, "Description": "x"}"#));
        assert!(!body_says_local(br#"{"Local": false}"#));
        assert!(!body_says_local(br#"{"Local": "true"}"#));
        assert!(!body_says_local(b"not json"));
        assert!(!body_says_local(b""));
    }

    #[tokio::test]
    async fn the_token_travels_with_a_request_and_is_checked_in_the_other_datacenter() {
        use atoll_acl::{AclSettings, AgentTokens, Authorizer, DefaultPolicy};
        let (l1, a1) = listener().await;
        let (l2, a2) = listener().await;
        let routes = |dc: &str, to: SocketAddr| {
            Arc::new(Fixed {
                datacenter: dc.into(),
                routes: HashMap::from([(
                    if dc == "dc1" { "dc2" } else { "dc1" }.to_string(),
                    Route::Via(vec![relay("s1", to)]),
                )]),
            })
        };
        // dc1 has no ACLs; dc2 denies by default and knows the token.
        start_with("dc1", l1, routes("dc1", a2)).await;
        let facts = NodeFacts {
            acl: Arc::new(AclSettings::enabled(
                DefaultPolicy::Deny,
                AgentTokens::default(),
            )),
            ..NodeFacts::default()
        };
        start_with_facts("dc2", l2, routes("dc2", a1), facts).await;
        crate::acl::test_tokens::install("dc2-token", Authorizer::management());

        let (status, _, body) = call(a1, "PUT", "/v1/kv/k?dc=dc2", "v").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::FORBIDDEN, "Permission denied")
        );
        let (status, _, _) = call(a1, "PUT", "/v1/kv/k?dc=dc2&token=dc2-token", "v").await;
        assert_eq!(status, StatusCode::OK);
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request = hyper::Request::builder()
            .uri(format!("http://{a1}/v1/kv/k?dc=dc2&raw"))
            .header("x-consul-token", "dc2-token")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_request_for_another_datacenter_is_answered_there() {
        let (dc1, dc2) = two_datacenters().await;
        let (status, _, body) = call(dc1, "PUT", "/v1/kv/where?dc=dc2", "two").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "true"));
        // Written in dc2, not in dc1.
        let (status, _, _) = call(dc1, "GET", "/v1/kv/where", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, local_headers, body) = call(dc2, "GET", "/v1/kv/where?raw", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "two"));
        // The answer is dc2's, headers included.
        let (status, headers, body) = call(dc1, "GET", "/v1/kv/where?dc=dc2&raw", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "two"));
        assert_eq!(headers["x-consul-index"], local_headers["x-consul-index"]);
        assert!(headers.contains_key("x-consul-knownleader"));
        assert!(headers.contains_key("x-consul-lastcontact"));
        // Naming its own datacenter, a node answers itself.
        let (status, _, body) = call(dc2, "GET", "/v1/kv/where?dc=dc2&raw", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "two"));
        // An error there is the error here.
        let (status, _, _) = call(dc1, "GET", "/v1/kv/missing?dc=dc2", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_blocking_query_blocks_in_the_other_datacenter() {
        let (dc1, dc2) = two_datacenters().await;
        call(dc2, "PUT", "/v1/kv/watched", "a").await;
        let (_, headers, _) = call(dc1, "GET", "/v1/kv/watched?dc=dc2", "").await;
        let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
        let waiting = tokio::spawn(async move {
            call(
                dc1,
                "GET",
                &format!("/v1/kv/watched?dc=dc2&raw&index={index}&wait=20s"),
                "",
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the query must wait for a change");
        call(dc2, "PUT", "/v1/kv/watched", "b").await;
        let (status, headers, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "b"));
        let after: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
        assert!(after > index);
    }

    #[tokio::test]
    async fn unknown_and_unreachable_datacenters_get_consuls_answers() {
        let (dc1, _) = two_datacenters().await;
        let (status, headers, body) = call(dc1, "GET", "/v1/kv/k?dc=nowhere", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, NO_PATH)
        );
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let (status, _, body) = call(dc1, "GET", "/v1/kv/k?dc=dc3", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, NO_SERVER)
        );
        // A relay that refuses connections: the same answer, well within the budget.
        let started = Instant::now();
        let (status, _, body) = call(dc1, "GET", "/v1/kv/k?dc=dc4", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, NO_SERVER)
        );
        assert!(started.elapsed() < REACH_BUDGET);
        // The next relay answers when the first cannot be reached.
        let (status, _, _) = call(dc1, "PUT", "/v1/kv/k?dc=dc5", "v").await;
        assert_eq!(status, StatusCode::OK);
        // A route that comes back stops after two hops.
        let (status, _, body) = call(dc1, "GET", "/v1/kv/k?dc=dc6", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, NO_PATH)
        );
        // Marathon's shape for Marathon's paths.
        let (status, _, body) = call(dc1, "GET", "/v2/apps?dc=nowhere", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["message"], NO_PATH);
    }

    #[tokio::test]
    async fn a_compute_node_goes_through_a_server_of_its_own_datacenter() {
        let (dc1, dc2) = two_datacenters().await;
        let relays = Arc::new(crate::RelayFederation::new("dc1"));
        relays.learn_servers(&[(
            1,
            atoll_cluster::Member {
                name: "s1".into(),
                http_addr: dc1.to_string(),
                server: true,
                datacenter: "dc1".into(),
                ..Default::default()
            },
            true,
        )]);
        let (listener, client) = listener().await;
        start_with("dc1", listener, relays).await;
        call(dc2, "PUT", "/v1/kv/far", "away").await;
        // Client, then dc1's server, then dc2.
        let (status, _, body) = call(client, "GET", "/v1/kv/far?dc=dc2&raw", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "away"));
        // The server tells what it cannot reach.
        let (status, _, body) = call(client, "GET", "/v1/kv/far?dc=nowhere", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, NO_PATH)
        );
        let (status, _, body) = call(client, "GET", "/v1/kv/far?dc=dc3", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, NO_SERVER)
        );
        // Its own datacenter stays local.
        let (status, _, _) = call(client, "GET", "/v1/kv/far?dc=dc1", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_registration_naming_another_datacenter_is_registered_there() {
        let (dc1, dc2) = two_datacenters().await;
        let body = r#"{"Datacenter":"dc2","Node":"remote","Address":"10.0.0.2",
            "Service":{"Service":"web","Port":80}}"#;
        let (status, _, _) = call(dc1, "PUT", "/v1/catalog/register", body).await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, here) = call(dc1, "GET", "/v1/catalog/service/web", "").await;
        assert_eq!(here, "[]");
        let (_, _, there) = call(dc2, "GET", "/v1/catalog/service/web", "").await;
        let there: serde_json::Value = serde_json::from_str(&there).unwrap();
        assert_eq!(there[0]["Node"], "remote");
        assert_eq!(there[0]["Datacenter"], "dc2");
        let (_, _, through) = call(dc1, "GET", "/v1/catalog/service/web?dc=dc2", "").await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&through).unwrap(),
            there
        );
        // And deregistered there.
        let body = r#"{"datacenter":"dc2","Node":"remote"}"#;
        let (status, _, _) = call(dc1, "PUT", "/v1/catalog/deregister", body).await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, there) = call(dc2, "GET", "/v1/catalog/service/web", "").await;
        assert_eq!(there, "[]");
        // A local registration still works, and an unknown datacenter is Consul's 500.
        let body = r#"{"Node":"local","Address":"10.0.0.1"}"#;
        let (status, _, _) = call(dc1, "PUT", "/v1/catalog/register", body).await;
        assert_eq!(status, StatusCode::OK);
        let body = r#"{"Datacenter":"nowhere","Node":"x","Address":"10.0.0.3"}"#;
        let (status, _, text) = call(dc1, "PUT", "/v1/catalog/register", body).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, NO_PATH)
        );
    }

    #[tokio::test]
    async fn marathon_requests_are_forwarded_too() {
        let (dc1, dc2) = two_datacenters().await;
        let app = r#"{"id":"/remote","cmd":"sleep 100","instances":0}"#;
        let (status, _, _) = call(dc1, "POST", "/v2/apps?dc=dc2", app).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _, _) = call(dc2, "GET", "/v2/apps/remote", "").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = call(dc1, "GET", "/v2/apps/remote", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, body) = call(dc1, "GET", "/v2/apps/remote?dc=dc2", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("/remote"));
    }

    #[tokio::test]
    async fn the_federations_own_endpoints_answer_locally() {
        let (dc1, _) = two_datacenters().await;
        // Never forwarded, whatever `?dc=` says.
        let (status, _, body) = call(dc1, "GET", "/v1/catalog/datacenters?dc=dc2", "").await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<String> = serde_json::from_str(&body).unwrap();
        assert_eq!(names[0], "dc1");
        assert!(names.contains(&"dc2".to_string()));
        let (_, _, body) = call(dc1, "GET", "/v1/coordinate/datacenters", "").await;
        let areas: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(areas[0]["Datacenter"], "dc1");
        assert_eq!(areas[1]["Datacenter"], "dc2");
        assert_eq!(areas[1]["AreaID"], "WAN");
        assert_eq!(areas[1]["Coordinates"][0]["Node"], "s1.dc2");
        assert_eq!(areas[1]["Coordinates"][0]["Coord"]["Error"], 1.5);
        let (_, _, body) = call(dc1, "GET", "/v1/agent/members?wan=1&dc=dc2", "").await;
        let members: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(members[0]["Name"], "s1.dc1");
        assert_eq!(members[0]["Port"], 8302);
        assert_eq!(members[0]["Status"], 1);
        assert_eq!(members[0]["Tags"]["role"], "consul");
        assert_eq!(members[0]["DelegateCur"], 4);
        let (status, _, _) = call(dc1, "GET", "/v1/agent/members?wan=1&segment=a", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // The LAN list is the Raft membership's, not the WAN pool's.
        let (_, _, body) = call(dc1, "GET", "/v1/agent/members", "").await;
        let members: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(members[0]["Name"], "n1");
        let (status, _, body) = call(dc1, "PUT", "/v1/agent/join/127.0.0.9?wan=1", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        let (status, _, body) = call(dc1, "PUT", "/v1/agent/join/10.9.9.9?wan=1", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot reach it")
        );
        let (status, _, body) = call(dc1, "PUT", "/v1/agent/join/127.0.0.9", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("--retry-join"));
    }
}
