//! The scheduler's input and output types: plain data, converted from the state store by the caller.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Host ports a Mesos agent offers when it is not configured otherwise.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (31000, 32000);

/// The field name that refers to a node's name rather than to one of its attributes.
pub const HOSTNAME_FIELD: &str = "hostname";

/// A compute node as the scheduler sees it: capacity, host ports and attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique node name; also the value of the `hostname` constraint field.
    pub name: String,
    /// Total CPU shares the node offers.
    pub cpus: f64,
    /// Total memory the node offers, MiB.
    pub mem: f64,
    /// Host port ranges that dynamic ports are chosen from, both ends inclusive.
    pub port_ranges: Vec<(u16, u16)>,
    /// Host ports already in use on the node by something other than the listed allocations.
    pub used_ports: BTreeSet<u16>,
    /// Node attributes that constraints refer to (`rack`, `zone`, ...).
    pub attributes: BTreeMap<String, String>,
    /// `false` when the node is down or draining: nothing new is placed on it.
    pub eligible: bool,
}

impl NodeInfo {
    /// An eligible node with the default Mesos port range, no used ports and no attributes.
    pub fn new(name: impl Into<String>, cpus: f64, mem: f64) -> Self {
        Self {
            name: name.into(),
            cpus,
            mem,
            port_ranges: vec![DEFAULT_PORT_RANGE],
            used_ports: BTreeSet::new(),
            attributes: BTreeMap::new(),
            eligible: true,
        }
    }

    /// The same node with one more attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }
}

/// An allocation that already exists: it uses resources and counts towards its app's constraints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    /// Allocation id; used only to order allocations, so the plan does not depend on input order.
    pub alloc_id: String,
    /// The app the allocation is an instance of.
    pub app_id: String,
    /// Name of the node it runs on.
    pub node: String,
    /// CPU shares it holds.
    pub cpus: f64,
    /// Memory it holds, MiB.
    pub mem: f64,
    /// Host ports it holds.
    pub ports: Vec<u16>,
}

/// Marathon's constraint operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOperator {
    /// At most one instance per distinct value of the field.
    Unique,
    /// Only nodes whose field equals the value; without a value, all instances share one value.
    Cluster,
    /// Spread instances evenly across the values of the field.
    GroupBy,
    /// The field must fully match the regular expression in the value.
    Like,
    /// The field must not fully match the regular expression in the value.
    Unlike,
    /// At most N (the value) instances per distinct value of the field.
    MaxPer,
}

impl fmt::Display for ConstraintOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unique => "UNIQUE",
            Self::Cluster => "CLUSTER",
            Self::GroupBy => "GROUP_BY",
            Self::Like => "LIKE",
            Self::Unlike => "UNLIKE",
            Self::MaxPer => "MAX_PER",
        })
    }
}

/// One placement constraint of an app, in Marathon's `[field, operator, value]` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstraintSpec {
    /// `hostname` (the node name) or the name of a node attribute.
    pub field: String,
    /// The operator.
    pub operator: ConstraintOperator,
    /// Operand: regex for LIKE/UNLIKE, count for MAX_PER and GROUP_BY, value for CLUSTER. For
    /// every operator but LIKE and UNLIKE an empty string counts as no value.
    pub value: Option<String>,
}

impl ConstraintSpec {
    /// A constraint from its three parts.
    pub fn new(
        field: impl Into<String>,
        operator: ConstraintOperator,
        value: Option<&str>,
    ) -> Self {
        Self {
            field: field.into(),
            operator,
            value: value.map(str::to_owned),
        }
    }
}

impl fmt::Display for ConstraintSpec {
    /// Marathon's colon form, as users write it: `rack:LIKE:r[12]`, `hostname:UNIQUE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.field, self.operator)?;
        if let Some(value) = &self.value {
            write!(f, ":{value}")?;
        }
        Ok(())
    }
}

/// A request to place `count` new instances of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRequest {
    /// The app the new instances belong to.
    pub app_id: String,
    /// CPU shares per instance.
    pub cpus: f64,
    /// Memory per instance, MiB.
    pub mem: f64,
    /// Host ports per instance: a number asks for that port, `0` for any free port of the node's ranges.
    pub ports: Vec<u16>,
    /// When `true`, non-zero ports are required exactly; otherwise a taken one is replaced by a free one.
    pub require_ports: bool,
    /// Placement constraints, all of which must hold.
    pub constraints: Vec<ConstraintSpec>,
    /// How many new instances to place.
    pub count: u32,
}

/// The scheduler's answer: where to start new instances, and what could not be placed and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// New instances in the order they were chosen (requests in input order).
    pub placements: Vec<Placement>,
    /// Requests that could not be placed in full, in input order.
    pub unplaced: Vec<Unplaced>,
}

/// One new instance of an app on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The app.
    pub app_id: String,
    /// The chosen node's name.
    pub node: String,
    /// Concrete host ports, one per requested port and in the same order.
    pub ports: Vec<u16>,
}

/// The part of a request that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The app.
    pub app_id: String,
    /// How many of the requested instances were not placed.
    pub missing: u32,
    /// Human-readable reasons, never empty.
    pub reasons: Vec<String>,
}
