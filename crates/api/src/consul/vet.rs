//! What a catalog write, a transaction or a listing of checks needs the caller's token to
//! allow, as Consul 1.10 decides it: a node needs `node:*` on its name, a service instance
//! `service:*` on its service's name, a check `service:*` on the service it guards or, for a
//! node-level check, `node:*` on its node.

use atoll_acl::{Access, Resource, Segment};
use atoll_state::{
    CatalogVerb, Check, CheckSpec, Deregistration, KvVerb, Registration, State, TxnKv, TxnOp,
};

use crate::acl::Authz;
use crate::error::ApiError;

/// The name of the service an instance id on `node` belongs to, from what is being
/// registered first, then from the state.
fn service_name<'a>(
    state: &'a State,
    registration: Option<&'a Registration>,
    node: &str,
    id: &str,
) -> Option<&'a str> {
    registration
        .and_then(|r| r.service.as_ref())
        .filter(|s| s.id == id)
        .map(|s| s.name.as_str())
        .or_else(|| state.service(node, id).map(|s| s.name.as_str()))
}

/// What writing (or reading) `check` on `node` needs: its service's rule, else the node's.
fn check_resource<'a>(
    state: &'a State,
    registration: Option<&'a Registration>,
    node: &'a str,
    check: &'a CheckSpec,
) -> Resource<'a> {
    if check.service_id.is_empty() {
        return Resource::Named(Segment::Node, node);
    }
    match service_name(state, registration, node, &check.service_id) {
        Some(name) => Resource::Named(Segment::Service, name),
        // An unknown service: the state refuses the registration; the node decides.
        None => Resource::Named(Segment::Node, node),
    }
}

/// A registration (catalog or agent): `node:write` unless it leaves the node row alone,
/// `service:write` on its service, and each check as [`check_resource`] says.
pub(crate) fn registration(
    authz: &Authz,
    state: &State,
    registration: &Registration,
) -> Result<(), ApiError> {
    if !registration.skip_node_update {
        authz.require_write(Segment::Node, &registration.node)?;
    }
    if let Some(service) = &registration.service {
        authz.require_write(Segment::Service, &service.name)?;
    }
    for check in &registration.checks {
        let resource = check_resource(state, Some(registration), &registration.node, check);
        authz.require(resource, Access::Write)?;
    }
    Ok(())
}

/// A deregistration: a whole node needs `node:write`, a service instance `service:write` on
/// its service, a check what the check's service (or node) needs.
pub(crate) fn deregistration(
    authz: &Authz,
    state: &State,
    deregistration: &Deregistration,
) -> Result<(), ApiError> {
    let node = deregistration.node.as_str();
    let resource = match (&deregistration.service_id, &deregistration.check_id) {
        (Some(id), _) => match service_name(state, None, node, id) {
            Some(name) => Resource::Named(Segment::Service, name),
            None => Resource::Named(Segment::Node, node),
        },
        (None, Some(id)) => state
            .checks_on_node(node)
            .find(|c| &c.check_id == id)
            .map_or(Resource::Named(Segment::Node, node), check_of),
        (None, None) => Resource::Named(Segment::Node, node),
    };
    authz.require(resource, Access::Write)
}

/// What a stored check belongs to: its service, or its node for a node-level check.
pub(crate) fn check_of(check: &Check) -> Resource<'_> {
    if check.service_id.is_empty() {
        Resource::Named(Segment::Node, &check.node)
    } else {
        Resource::Named(Segment::Service, &check.service_name)
    }
}

/// Whether the caller may see a stored check: `node:read` on its node and, for a service's
/// check, `service:read` on the service.
pub(crate) fn reads_check(authz: &Authz, check: &Check) -> bool {
    authz.reads_node(&check.node)
        && (check.service_id.is_empty() || authz.reads(Segment::Service, &check.service_name))
}

/// Every operation of a transaction, checked before anything is applied: KV operations by
/// key (a tree delete needs write on all under its prefix), catalog operations by their
/// node, service or check. The first denied operation refuses the whole transaction.
pub(crate) fn transaction(authz: &Authz, state: &State, ops: &[TxnOp]) -> Result<(), ApiError> {
    for op in ops {
        let access = if op.is_write() {
            Access::Write
        } else {
            Access::Read
        };
        let allowed = match op {
            TxnOp::Kv(TxnKv {
                verb: KvVerb::DeleteTree,
                key,
                ..
            }) => authz
                .authorizer()
                .allows_all_under(Segment::Key, key, Access::Write),
            TxnOp::Kv(kv) => authz.allows(Resource::Named(Segment::Key, &kv.key), access),
            TxnOp::Node { node, .. } => {
                authz.allows(Resource::Named(Segment::Node, &node.node), access)
            }
            TxnOp::Service {
                verb,
                node,
                service,
                ..
            } => {
                // A read or delete names the instance by id; its service is in the state.
                let name = match verb {
                    CatalogVerb::Set | CatalogVerb::Cas => Some(service.name.as_str()),
                    _ => service_name(state, None, node, &service.id),
                };
                match name {
                    Some(name) => authz.allows(Resource::Named(Segment::Service, name), access),
                    None => authz.allows(Resource::Named(Segment::Node, node), access),
                }
            }
            TxnOp::Check { node, check, .. } => {
                authz.allows(check_resource(state, None, node, check), access)
            }
        };
        if !allowed {
            return Err(authz.denied());
        }
    }
    Ok(())
}
