//! atoll's HTTP API: Consul's `/v1` endpoints, answered from the local state store and
//! written through Raft.
#![forbid(unsafe_code)]

pub mod acl;
pub mod consul;
pub mod decode;
pub mod error;
pub mod execute;
pub mod extract;
pub mod federate;
pub mod forming;
pub mod marathon;
pub mod metrics;
pub mod query;
pub mod relay;
pub mod serve;
pub mod tls;
pub mod ui;

pub use forming::{ApiSwitch, Forming};
pub use relay::RelayFederation;
pub use serve::{serve, serve_tls, HttpLimits};

use std::sync::Arc;

use atoll_agent::Agent;
use atoll_cluster::{Alone, ClusterHandle, Federation, Store};
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::Router;

/// Largest request body accepted; KV values have their own, smaller limit.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler needs. Cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    agent: Agent,
    version: String,
    events: marathon::events::EventBus,
    facts: NodeFacts,
    federation: Arc<dyn Federation>,
    forwarder: federate::Forwarder,
    acl_cache: atoll_state::AuthorizerCache,
    /// Written by the ACL replication loop alone; read by `/v1/acl/replication`.
    acl_replication: tokio::sync::watch::Sender<consul::acl_replication::ReplicationStatus>,
}

/// What the node was started with, as `/v1/agent/self` and `/v1/agent/host` report it.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// The node's effective settings, shown as `DebugConfig`.
    pub debug_config: serde_json::Value,
    /// A server's `--bootstrap-expect` (0: none).
    pub bootstrap_expect: usize,
    /// The data dir, whose file system `/v1/agent/host` reports (`/` without one).
    pub data_dir: Option<std::path::PathBuf>,
    /// Reloads the HTTPS listener's files on `PUT /v1/agent/reload` (none without HTTPS).
    pub tls_reload: Option<tls::TlsReload>,
    /// Whether ACLs are on, the default policy and the agent's tokens.
    pub acl: Arc<atoll_acl::AclSettings>,
    /// The node's LAN gossip pool: `/v1/agent/members` lists it, coordinates come from it
    /// (`None`: the node runs none; members are then the Raft membership).
    pub lan: Option<Arc<dyn atoll_cluster::LanPool>>,
}

impl ApiContext {
    /// A context over the local agent.
    pub fn new(agent: Agent, version: impl Into<String>) -> Self {
        Self::with_facts(agent, version, NodeFacts::default())
    }

    /// A context over the local agent, with what the node was started with.
    pub fn with_facts(agent: Agent, version: impl Into<String>, facts: NodeFacts) -> Self {
        let federation = Arc::new(Alone::new(
            agent.config().datacenter.clone(),
            agent.cluster().member().server,
        ));
        Self::federated(agent, version, facts, federation)
    }

    /// A context over the local agent in a federation of datacenters.
    pub fn federated(
        agent: Agent,
        version: impl Into<String>,
        facts: NodeFacts,
        federation: Arc<dyn Federation>,
    ) -> Self {
        // Requests to other nodes' HTTP APIs leave from the node's own address.
        let local = agent
            .cluster()
            .member()
            .rpc_addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|addr| addr.ip());
        ApiContext {
            inner: Arc::new(ContextInner {
                agent,
                version: version.into(),
                events: marathon::events::bus(),
                facts,
                federation,
                forwarder: federate::Forwarder::from_address(local),
                acl_cache: atoll_state::AuthorizerCache::default(),
                acl_replication: tokio::sync::watch::Sender::new(Default::default()),
            }),
        }
    }

    /// The other datacenters, as this node knows them.
    pub fn federation(&self) -> &Arc<dyn Federation> {
        &self.inner.federation
    }

    /// The client requests for other datacenters leave through.
    pub fn forwarder(&self) -> &federate::Forwarder {
        &self.inner.forwarder
    }

    /// What the node was started with.
    pub fn facts(&self) -> &NodeFacts {
        &self.inner.facts
    }

    /// The node's LAN gossip pool, if it runs one.
    pub fn lan(&self) -> Option<&Arc<dyn atoll_cluster::LanPool>> {
        self.inner.facts.lan.as_ref()
    }

    /// Marathon's event bus.
    pub fn events(&self) -> &marathon::events::EventBus {
        &self.inner.events
    }

    /// The local agent.
    pub fn agent(&self) -> &Agent {
        &self.inner.agent
    }

    /// The cluster, as every handler sees it.
    pub fn cluster(&self) -> &ClusterHandle {
        self.inner.agent.cluster()
    }

    /// The replicated state.
    pub fn store(&self) -> &Store {
        self.cluster().store()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.agent.config().node
    }

    /// This node's datacenter.
    pub fn datacenter(&self) -> &str {
        &self.inner.agent.config().datacenter
    }

    /// The node's ACL settings.
    pub fn acl(&self) -> &atoll_acl::AclSettings {
        &self.inner.facts.acl
    }

    /// The authorizers of recently seen tokens.
    pub(crate) fn acl_cache(&self) -> &atoll_state::AuthorizerCache {
        &self.inner.acl_cache
    }

    /// How ACL replication from the primary datacenter goes on this node.
    pub(crate) fn acl_replication(
        &self,
    ) -> &tokio::sync::watch::Sender<consul::acl_replication::ReplicationStatus> {
        &self.inner.acl_replication
    }

    /// atoll's version.
    pub fn version(&self) -> &str {
        &self.inner.version
    }
}

/// The whole HTTP API. Marathon's event stream is fed by [`marathon::events::feed`], which
/// the caller runs for the life of the process.
pub fn router(context: ApiContext) -> Router {
    let headers_of = context.clone();
    consul::routes()
        .route(
            "/v1/agent/metrics",
            axum::routing::get(metrics::agent_metrics),
        )
        // A plain map, not a middleware future of its own: parked blocking queries hold it.
        .layer(tower::util::MapResponseLayer::new(move |response| {
            consul_headers(&headers_of, response)
        }))
        .merge(marathon::routes::routes())
        .merge(ui::routes())
        .route("/metrics", axum::routing::get(metrics::prometheus))
        // Routes only: what no route answers is counted without a route template.
        .route_layer(metrics::RouteLayer)
        .fallback(extract::unknown_route)
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Outermost: a request for another datacenter leaves before any handler (or the
        // local Consul headers) sees it.
        .layer(federate::ForwardLayer::new(context.clone()))
        .with_state(context)
}

/// Adds the headers Consul's clients require on every `/v1` answer, errors included.
pub(crate) fn consul_headers(context: &ApiContext, mut response: Response) -> Response {
    let headers = response.headers_mut();
    let known_leader = context.cluster().leader_addr().is_some();
    headers.insert(
        "x-consul-knownleader",
        HeaderValue::from_static(if known_leader { "true" } else { "false" }),
    );
    headers.insert(
        "x-consul-lastcontact",
        HeaderValue::from(context.cluster().last_contact_ms()),
    );
    if !headers.contains_key("x-consul-index") {
        query::set_index(headers, context.store().applied());
    }
    response
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod acl_tests;

#[cfg(test)]
mod proxy_tests;
