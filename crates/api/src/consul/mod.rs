//! Consul-compatible endpoints, grouped as Consul groups them.

pub mod acl;
pub mod acl_replication;
pub(crate) mod agent;
mod agent_info;
mod catalog;
mod coordinate;
mod event;
pub mod filter;
mod health;
pub mod input;
mod keyring;
mod kv;
mod listing;
mod maintenance;
mod near;
mod operator;
pub mod prepared;
mod session;
mod status;
pub mod txn;
mod ui_summary;
mod vet;
mod wan;
pub mod wire;

use axum::routing::{delete, get, put};
use axum::Router;

use crate::ApiContext;

/// Routes of every `/v1` endpoint.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/v1/agent/self", get(agent_info::self_info))
        .route("/v1/agent/host", get(agent_info::host))
        .route("/v1/agent/version", get(agent_info::version))
        .route("/v1/agent/reload", put(agent_info::reload))
        .route("/v1/agent/token/{kind}", put(agent_info::token))
        .route("/v1/agent/maintenance", put(maintenance::node))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(maintenance::service),
        )
        .route(
            "/v1/agent/health/service/id/{id}",
            get(maintenance::health_by_id),
        )
        .route(
            "/v1/agent/health/service/name/{name}",
            get(maintenance::health_by_name),
        )
        .route("/v1/event/fire/{name}", put(event::fire))
        .route("/v1/event/list", get(event::list))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/service/{id}", get(agent::service))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/service/register", put(agent::register_service))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(agent::deregister_service),
        )
        .route("/v1/agent/check/register", put(agent::register_check))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(agent::deregister_check),
        )
        .route("/v1/agent/check/pass/{id}", put(agent::pass))
        .route("/v1/agent/check/warn/{id}", put(agent::warn))
        .route("/v1/agent/check/fail/{id}", put(agent::fail))
        .route("/v1/agent/check/update/{id}", put(agent::update))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/catalog/datacenters", get(wan::datacenters))
        .route(
            "/v1/coordinate/datacenters",
            get(wan::coordinate_datacenters),
        )
        .route("/v1/coordinate/nodes", get(coordinate::nodes))
        .route("/v1/coordinate/node/{node}", get(coordinate::node))
        .route("/v1/agent/join/{address}", put(wan::join))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog::node_services),
        )
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/checks/{name}", get(health::service_checks))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/state/{state}", get(health::state))
        .route(
            "/v1/kv",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", put(txn::apply))
        .route("/v1/internal/ui/services", get(ui_summary::services))
        .route(
            "/v1/internal/ui/compute-nodes",
            get(ui_summary::compute_nodes),
        )
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/agent/leave", put(operator::leave))
        .route("/v1/agent/force-leave/{node}", put(operator::force_leave))
        .route(
            "/v1/operator/raft/configuration",
            get(operator::configuration),
        )
        .route("/v1/operator/raft/peer", delete(operator::remove_peer))
        .route("/v1/operator/raft/storage", get(operator::storage))
        .route(
            "/v1/operator/keyring",
            get(keyring::list)
                .post(keyring::install)
                .put(keyring::use_key)
                .delete(keyring::remove),
        )
        .route("/v1/query", get(prepared::list).post(prepared::create))
        .route(
            "/v1/query/{id}",
            get(prepared::get)
                .put(prepared::update)
                .delete(prepared::delete),
        )
        .route("/v1/query/{id}/execute", get(prepared::execute))
        .route("/v1/query/{id}/explain", get(prepared::explain))
        .route(
            prepared::EXECUTE_REMOTE_PATH,
            axum::routing::post(prepared::execute_remote),
        )
        .route("/v1/acl/bootstrap", put(acl::bootstrap))
        .route("/v1/acl/token", put(acl::create_token))
        .route("/v1/acl/token/self", get(acl::token_self))
        .route(
            "/v1/acl/token/{id}",
            get(acl::read_token)
                .put(acl::update_token)
                .delete(acl::delete_token),
        )
        .route("/v1/acl/token/{id}/clone", put(acl::clone_token))
        .route("/v1/acl/tokens", get(acl::list_tokens))
        .route("/v1/acl/policy", put(acl::create_policy))
        .route(
            "/v1/acl/policy/{id}",
            get(acl::read_policy)
                .put(acl::update_policy)
                .delete(acl::delete_policy),
        )
        .route("/v1/acl/policy/name/{name}", get(acl::read_policy_named))
        .route("/v1/acl/policies", get(acl::list_policies))
        .route("/v1/acl/replication", get(acl_replication::status))
        .route(
            acl_replication::REPLICATE_PATH,
            get(acl_replication::replication_data),
        )
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
}
