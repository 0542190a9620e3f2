//! The cluster as the planner tracks it while it places: free resources and ports per node, and
//! where each app's instances are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use crate::model::{AppRequest, NodeInfo, Placed, HOSTNAME_FIELD};

/// Slack for float sums: the same as `apply`'s, so what is planned is what is applied.
pub(crate) use atoll_state::FIT_EPSILON as EPSILON;

/// Index of a node in [`Cluster::nodes`]; nodes are sorted by name, so index order is name order.
pub(crate) type NodeIndex = u32;

/// A node and what is already committed on it, existing allocations and this plan's placements.
#[derive(Debug)]
pub(crate) struct NodeState<'a> {
    pub(crate) info: &'a NodeInfo,
    /// Capacity with nonsense (NaN, negative) read as zero.
    pub(crate) cpus: f64,
    pub(crate) mem: f64,
    pub(crate) cpus_used: f64,
    pub(crate) mem_used: f64,
    /// Offered host port ranges, sorted and merged.
    pub(crate) port_ranges: Vec<(u16, u16)>,
    /// Ports in use: the node's own list, existing allocations and this plan's placements.
    pub(crate) ports_used: BTreeSet<u16>,
}

impl NodeState<'_> {
    pub(crate) fn name(&self) -> &str {
        &self.info.name
    }

    pub(crate) fn cpus_free(&self) -> f64 {
        self.cpus - self.cpus_used
    }

    pub(crate) fn mem_free(&self) -> f64 {
        self.mem - self.mem_used
    }

    pub(crate) fn has_cpus_for(&self, request: &AppRequest) -> bool {
        self.cpus_used + request.cpus <= self.cpus + EPSILON
    }

    pub(crate) fn has_mem_for(&self, request: &AppRequest) -> bool {
        self.mem_used + request.mem <= self.mem + EPSILON
    }

    pub(crate) fn has_resources_for(&self, request: &AppRequest) -> bool {
        self.has_cpus_for(request) && self.has_mem_for(request)
    }

    /// Share of the node in use, by its most used resource: 0 is idle, 1 is full.
    pub(crate) fn load(&self) -> f64 {
        fn share(used: f64, capacity: f64) -> f64 {
            if capacity > 0.0 {
                used / capacity
            } else {
                1.0
            }
        }
        share(self.cpus_used, self.cpus).max(share(self.mem_used, self.mem))
    }

    /// Whether a requested host port is free; the ranges only bound dynamically chosen ports.
    pub(crate) fn port_is_free(&self, port: u16) -> bool {
        !self.ports_used.contains(&port)
    }

    /// Concrete host ports for one instance of `request`, or `None` if the node cannot provide them.
    ///
    /// Requested ports are kept when free; a taken one fails the node under `require_ports` and is
    /// otherwise replaced, like a `0`, by the lowest free port of the node's ranges.
    pub(crate) fn assign_ports(&self, request: &AppRequest) -> Option<Vec<u16>> {
        let mut ports = Vec::with_capacity(request.ports.len());
        for &port in &request.ports {
            if port != 0 && self.port_is_free(port) {
                ports.push(port);
            } else if port != 0 && request.require_ports {
                return None;
            } else {
                ports.push(0);
            }
        }
        let dynamic = ports.iter().filter(|&&port| port == 0).count();
        if dynamic == 0 {
            return Some(ports);
        }
        let free: Vec<u16> = self.free_ports(&ports).take(dynamic).collect();
        if free.len() < dynamic {
            return None;
        }
        for (slot, port) in ports.iter_mut().filter(|port| **port == 0).zip(free) {
            *slot = port;
        }
        Some(ports)
    }

    /// Free ports of the node's ranges in ascending order, skipping `also_taken`.
    fn free_ports<'s>(&'s self, also_taken: &'s [u16]) -> impl Iterator<Item = u16> + 's {
        self.port_ranges.iter().flat_map(move |&(low, high)| {
            let mut used = self.ports_used.range(low..=high).copied().peekable();
            (low..=high).filter(move |port| {
                // `used` is ascending like the candidates, so each used port is passed over once.
                while used.next_if(|used_port| used_port < port).is_some() {}
                if used.next_if_eq(port).is_some() {
                    return false;
                }
                !also_taken.contains(port)
            })
        })
    }

    fn commit(&mut self, cpus: f64, mem: f64, ports: &[u16]) {
        self.cpus_used += cpus;
        self.mem_used += mem;
        self.ports_used
            .extend(ports.iter().copied().filter(|&port| port != 0));
    }
}

/// For one constraint field, which value each node has, with values numbered densely.
#[derive(Debug)]
pub(crate) struct FieldIndex<'a> {
    /// Per node, the id of its value, or `None` when the node lacks the attribute.
    pub(crate) node_values: Vec<Option<u32>>,
    /// Value text by id; ids are given in node-name order.
    pub(crate) values: Vec<&'a str>,
}

/// Everything the planner knows and has decided so far.
#[derive(Debug)]
pub(crate) struct Cluster<'a> {
    pub(crate) nodes: Vec<NodeState<'a>>,
    index_by_name: HashMap<&'a str, NodeIndex>,
    fields: HashMap<&'a str, Rc<FieldIndex<'a>>>,
    /// Per app, how many instances (existing and planned) each node runs.
    instances: HashMap<String, BTreeMap<NodeIndex, u32>>,
}

/// Reads a resource amount defensively: NaN and negative amounts count as nothing.
fn amount(value: f64) -> f64 {
    if value.is_nan() || value < 0.0 {
        0.0
    } else {
        value
    }
}

/// Sorts ranges and merges overlapping or touching ones; a range whose low end is above its high
/// end offers nothing.
fn merge_ranges(ranges: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut sorted: Vec<(u16, u16)> = ranges
        .iter()
        .copied()
        .filter(|(low, high)| low <= high)
        .collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(sorted.len());
    for (low, high) in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(low) <= u32::from(last.1) + 1 => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    merged
}

impl<'a> Cluster<'a> {
    /// The cluster with every existing allocation applied. Node names are expected to be unique;
    /// of duplicates, the first listed is used. Allocations on unknown nodes are ignored.
    pub(crate) fn new(nodes: &'a [NodeInfo], placed: &'a [Placed]) -> Self {
        let mut sorted: Vec<&NodeInfo> = nodes.iter().collect();
        // Stable, so among duplicate names the first listed comes first and is kept.
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.dedup_by(|later, earlier| later.name == earlier.name);
        let nodes: Vec<NodeState<'a>> = sorted
            .into_iter()
            .map(|info| NodeState {
                info,
                cpus: amount(info.cpus),
                mem: amount(info.mem),
                cpus_used: 0.0,
                mem_used: 0.0,
                port_ranges: merge_ranges(&info.port_ranges),
                ports_used: info.used_ports.clone(),
            })
            .collect();
        let index_by_name = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.info.name.as_str(), index as NodeIndex))
            .collect();
        let mut cluster = Self {
            nodes,
            index_by_name,
            fields: HashMap::new(),
            instances: HashMap::new(),
        };

        // Float sums depend on the order of their terms; a canonical order keeps the plan
        // independent of the order the allocations were listed in.
        let mut placed: Vec<&Placed> = placed.iter().collect();
        placed.sort_by(|a, b| {
            (&a.alloc_id, &a.app_id, &a.node, &a.ports)
                .cmp(&(&b.alloc_id, &b.app_id, &b.node, &b.ports))
                .then(a.cpus.total_cmp(&b.cpus))
                .then(a.mem.total_cmp(&b.mem))
        });
        for allocation in placed {
            let Some(&node) = cluster.index_by_name.get(allocation.node.as_str()) else {
                continue;
            };
            cluster.nodes[node as usize].commit(
                amount(allocation.cpus),
                amount(allocation.mem),
                &allocation.ports,
            );
            *cluster
                .instances
                .entry(allocation.app_id.clone())
                .or_default()
                .entry(node)
                .or_default() += 1;
        }
        cluster
    }

    /// Number of nodes, as a [`NodeIndex`] bound.
    pub(crate) fn node_count(&self) -> NodeIndex {
        // More than four billion nodes cannot be held in memory.
        self.nodes.len() as NodeIndex
    }

    pub(crate) fn node(&self, index: NodeIndex) -> &NodeState<'a> {
        &self.nodes[index as usize]
    }

    /// The value of `field` on every node, built once per field and shared between requests.
    pub(crate) fn field(&mut self, field: &'a str) -> Rc<FieldIndex<'a>> {
        if let Some(index) = self.fields.get(field) {
            return Rc::clone(index);
        }
        let index = Rc::new(if field == HOSTNAME_FIELD {
            FieldIndex {
                node_values: (0..self.node_count()).map(Some).collect(),
                values: self
                    .nodes
                    .iter()
                    .map(|node| node.info.name.as_str())
                    .collect(),
            }
        } else {
            let mut ids: HashMap<&'a str, u32> = HashMap::new();
            let mut values = Vec::new();
            let node_values = self
                .nodes
                .iter()
                .map(|node| {
                    let value = node.info.attributes.get(field)?.as_str();
                    Some(*ids.entry(value).or_insert_with(|| {
                        values.push(value);
                        // At most one new value per node, so this fits like a node index.
                        (values.len() - 1) as u32
                    }))
                })
                .collect();
            FieldIndex {
                node_values,
                values,
            }
        });
        self.fields.insert(field, Rc::clone(&index));
        index
    }

    /// Where the app's instances run: node and count, in node order.
    pub(crate) fn instances_of(&self, app_id: &str) -> impl Iterator<Item = (NodeIndex, u32)> + '_ {
        self.instances
            .get(app_id)
            .into_iter()
            .flat_map(|nodes| nodes.iter().map(|(&node, &count)| (node, count)))
    }

    /// Records a new instance of `request`'s app on `node` with the given host ports.
    pub(crate) fn commit(&mut self, request: &AppRequest, node: NodeIndex, ports: &[u16]) {
        self.nodes[node as usize].commit(request.cpus, request.mem, ports);
        *self
            .instances
            .entry(request.app_id.clone())
            .or_default()
            .entry(node)
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_sorted_and_merged() {
        assert_eq!(
            merge_ranges(&[(40, 50), (10, 20), (21, 30), (25, 27), (60, 59)]),
            vec![(10, 30), (40, 50)]
        );
        assert_eq!(
            merge_ranges(&[(65535, 65535), (0, 65535)]),
            vec![(0, 65535)]
        );
    }

    #[test]
    fn free_ports_skip_used_and_reserved_ports_across_ranges() {
        let mut info = NodeInfo::new("n", 1.0, 1.0);
        info.port_ranges = vec![(100, 102), (200, 201)];
        info.used_ports = [100, 102, 200].into();
        let nodes = [info];
        let cluster = Cluster::new(&nodes, &[]);
        let free: Vec<u16> = cluster.node(0).free_ports(&[101]).collect();
        assert_eq!(free, vec![201]);
        let free: Vec<u16> = cluster.node(0).free_ports(&[]).collect();
        assert_eq!(free, vec![101, 201]);
    }
}
