//! atoll's placement scheduler: decides which node each new app instance runs on.
//!
//! [`plan_placements`] is a pure function of a snapshot — nodes, existing allocations and the
//! requests to place — with no I/O, clock or randomness: the same input always gives the same
//! [`Plan`], whatever order the existing allocations are listed in.
//!
//! # Algorithm
//!
//! 1. Nodes are sorted by name and existing allocations are applied in a canonical order, giving
//!    each node its used cpus, memory and host ports and each app its instances per node.
//! 2. Requests are placed one after another, in the order given, so earlier requests have first
//!    pick. For a request, constraints are compiled once: for every field a constraint names, the
//!    node's value is interned, and LIKE/UNLIKE/CLUSTER are decided once per distinct value rather
//!    than per node.
//! 3. Every node that passes the checks that cannot change while the request is placed (node up,
//!    static constraints, required ports, room for one instance) enters a min-heap ranked by
//!    (instances of this app on the node, load, name), where load is the larger of the used cpu and
//!    memory shares. With GROUP_BY, nodes are split into one heap per field value and the value with
//!    the fewest instances is served first.
//! 4. Each instance takes the top of the heap after re-checking it (resources, UNIQUE and MAX_PER
//!    slots, the value a value-less CLUSTER settled on, free ports). Ranks only grow and refusals are
//!    final while one request is placed, so a refused node is dropped for the rest of the request
//!    and a stale rank is simply recomputed and pushed back. Placing costs O(log n) per instance
//!    after one O(n) pass per request.
//! 5. If a request comes up short, every node is charged to the first check it fails and the
//!    tallies become the reasons in [`Unplaced`].
//!
//! # Semantics
//!
//! Constraints follow Marathon. `hostname` is the node name; any other field is a node attribute.
//! A node without the attribute fails UNIQUE, CLUSTER, GROUP_BY, MAX_PER and LIKE, and passes
//! UNLIKE. LIKE and UNLIKE match the whole value against a regular expression from the subset
//! described in [`pattern`]. GROUP_BY prefers the value with the fewest instances but, unlike
//! Marathon, still places on other values when that one is full rather than stalling. A value-less
//! CLUSTER follows the value the app's existing instances are on, or the first placement's value.
//!
//! A requested host port is used when it is free on the node. With `require_ports` requested ports
//! are mandatory; without it a taken one is replaced by a free port from the node's port ranges,
//! and `0` always asks for the lowest free port of those ranges. No port is handed out twice on a
//! node.
#![forbid(unsafe_code)]

mod cluster;
mod diagnosis;
mod model;
pub mod pattern;
mod placement;
mod rules;

pub use model::{
    AppRequest, ConstraintOperator, ConstraintSpec, NodeInfo, Placed, Placement, Plan, Unplaced,
    DEFAULT_PORT_RANGE, HOSTNAME_FIELD,
};
pub use pattern::{Pattern, PatternError};

/// Chooses nodes for the new instances in `requests`, given the cluster's `nodes` and the
/// allocations already `placed` on them; see the crate documentation for the rules it follows.
pub fn plan_placements(nodes: &[NodeInfo], placed: &[Placed], requests: &[AppRequest]) -> Plan {
    let mut cluster = cluster::Cluster::new(nodes, placed);
    let mut plan = Plan::default();
    for request in requests {
        placement::place_request(&mut cluster, request, &mut plan);
    }
    plan
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
