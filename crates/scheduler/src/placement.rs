//! Placing one request: candidate nodes in ranked heaps, grouped for GROUP_BY, dropped lazily.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::cluster::{Cluster, NodeIndex};
use crate::diagnosis;
use crate::model::{AppRequest, Placement, Plan, Unplaced};
use crate::rules::{Rule, StaticCheck};

/// Places as many instances of `request` as fit, appending to `plan`.
pub(crate) fn place_request<'a>(
    cluster: &mut Cluster<'a>,
    request: &'a AppRequest,
    plan: &mut Plan,
) {
    if request.count == 0 {
        return;
    }
    let mut problems = validate(request);
    let mut rules = Vec::with_capacity(request.constraints.len());
    for spec in &request.constraints {
        match Rule::compile(spec, cluster) {
            Ok(rule) => rules.push(rule),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        plan.unplaced.push(Unplaced {
            app_id: request.app_id.clone(),
            missing: request.count,
            reasons: problems,
        });
        return;
    }

    let mut instances = vec![0_u32; cluster.nodes.len()];
    for (node, count) in cluster.instances_of(&request.app_id) {
        instances[node as usize] = count;
        for rule in &mut rules {
            rule.record(node, count);
        }
    }
    for rule in &mut rules {
        rule.settle_pin_from_counts();
    }

    let mut search = Search::new(cluster, request, &rules, &instances);
    let mut placed = 0;
    while placed < request.count {
        let Some(choice) = search.next(cluster, request, &rules) else {
            break;
        };
        let node = choice.node;
        cluster.commit(request, node, &choice.ports);
        instances[node as usize] += 1;
        for rule in &mut rules {
            rule.record(node, 1);
            rule.pin_to(node);
        }
        search.reinsert(cluster, request, &rules, &choice, instances[node as usize]);
        plan.placements.push(Placement {
            app_id: request.app_id.clone(),
            node: cluster.node(node).name().to_owned(),
            ports: choice.ports,
        });
        placed += 1;
    }
    if placed < request.count {
        plan.unplaced.push(Unplaced {
            app_id: request.app_id.clone(),
            missing: request.count - placed,
            reasons: diagnosis::explain(cluster, request, &rules),
        });
    }
}

/// Problems with the request itself, independent of the cluster.
fn validate(request: &AppRequest) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in [("cpus", request.cpus), ("mem", request.mem)] {
        if !value.is_finite() || value < 0.0 {
            problems.push(format!("{name} must be a non-negative number, got {value}"));
        }
    }
    let mut seen = HashSet::new();
    let mut repeated = Vec::new();
    for &port in &request.ports {
        if port != 0 && !seen.insert(port) && !repeated.contains(&port) {
            repeated.push(port);
        }
    }
    for port in repeated {
        problems.push(format!("port {port} is requested more than once"));
    }
    problems
}

/// Whether `node` could ever take an instance of `request` during this plan, judged by what
/// cannot change while placing it: node status, static constraints and required ports.
pub(crate) fn passes_static_checks(
    cluster: &Cluster<'_>,
    request: &AppRequest,
    rules: &[Rule<'_>],
    node: NodeIndex,
) -> bool {
    let state = cluster.node(node);
    state.info.eligible
        && rules
            .iter()
            .all(|rule| rule.check_static(node) == StaticCheck::Passes)
        && (!request.require_ports
            || request
                .ports
                .iter()
                .all(|&port| port == 0 || state.port_is_free(port)))
}

/// The host ports `node` would give the next instance, if it can take one right now.
fn try_node(
    cluster: &Cluster<'_>,
    request: &AppRequest,
    rules: &[Rule<'_>],
    node: NodeIndex,
) -> Option<Vec<u16>> {
    let state = cluster.node(node);
    if !state.has_resources_for(request) || !rules.iter().all(|rule| rule.check_dynamic(node)) {
        return None;
    }
    state.assign_ports(request)
}

/// A candidate node's preference: fewest instances of the app, then least loaded, then name.
#[derive(Debug, Clone, Copy)]
struct Rank {
    instances: u32,
    load: f64,
    node: NodeIndex,
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.instances
            .cmp(&other.instances)
            .then(self.load.total_cmp(&other.load))
            .then(self.node.cmp(&other.node))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Rank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Rank {}

/// A group's preference: fewest instances on its GROUP_BY values, then its best node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupRank {
    counts: Vec<u32>,
    best: Rank,
    group: u32,
}

/// Candidate nodes sharing the values of every GROUP_BY field (all candidates when there is none).
#[derive(Debug)]
struct Group {
    /// GROUP_BY value ids, in the order of the request's GROUP_BY rules.
    values: Vec<u32>,
    nodes: BinaryHeap<Reverse<Rank>>,
}

/// The node chosen for the next instance.
#[derive(Debug)]
struct Choice {
    node: NodeIndex,
    group: u32,
    ports: Vec<u16>,
}

/// The candidate structure for one request.
///
/// Every ranking key only grows while a request is placed (instance counts and loads rise) and
/// every refusal is final (resources, ports and constraint slots only shrink), so stored keys are
/// lower bounds: the planner pops the smallest, recomputes it, and either takes it or pushes it back
/// with its true key, and drops a node for the rest of the request the first time it is refused.
#[derive(Debug)]
struct Search {
    /// Indexes of the request's GROUP_BY rules.
    group_rules: Vec<usize>,
    groups: Vec<Group>,
    queue: BinaryHeap<Reverse<GroupRank>>,
}

impl Search {
    fn new(
        cluster: &Cluster<'_>,
        request: &AppRequest,
        rules: &[Rule<'_>],
        instances: &[u32],
    ) -> Self {
        let group_rules: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.groups)
            .map(|(index, _)| index)
            .collect();
        let mut grouping = Grouping::new(&group_rules, rules);
        let mut members: Vec<(Vec<u32>, Vec<Reverse<Rank>>)> = Vec::new();
        for node in 0..cluster.node_count() {
            if !passes_static_checks(cluster, request, rules, node)
                || !cluster.node(node).has_resources_for(request)
            {
                continue;
            }
            let group = grouping.group_of(node, &group_rules, rules, &mut members);
            members[group as usize].1.push(Reverse(Rank {
                instances: instances[node as usize],
                load: cluster.node(node).load(),
                node,
            }));
        }
        let groups: Vec<Group> = members
            .into_iter()
            .map(|(values, nodes)| Group {
                values,
                nodes: BinaryHeap::from(nodes),
            })
            .collect();
        let queue = groups
            .iter()
            .enumerate()
            .filter_map(|(group, members)| {
                let &Reverse(best) = members.nodes.peek()?;
                Some(Reverse(GroupRank {
                    counts: group_counts(&group_rules, rules, &members.values),
                    best,
                    group: group as u32,
                }))
            })
            .collect();
        Self {
            group_rules,
            groups,
            queue,
        }
    }

    /// The best node that can take an instance now, or `None` when no candidate is left.
    fn next(
        &mut self,
        cluster: &Cluster<'_>,
        request: &AppRequest,
        rules: &[Rule<'_>],
    ) -> Option<Choice> {
        loop {
            let Reverse(stored) = self.queue.pop()?;
            let group = &mut self.groups[stored.group as usize];
            let found = loop {
                let Some(&Reverse(best)) = group.nodes.peek() else {
                    break None;
                };
                if let Some(ports) = try_node(cluster, request, rules, best.node) {
                    break Some((best, ports));
                }
                group.nodes.pop();
            };
            let Some(found) = found else {
                // Every node of the group is refused for good: the group leaves the queue.
                continue;
            };
            let current = GroupRank {
                counts: group_counts(&self.group_rules, rules, &group.values),
                best: found.0,
                group: stored.group,
            };
            if current != stored {
                self.queue.push(Reverse(current));
                continue;
            }
            group.nodes.pop();
            return Some(Choice {
                node: found.0.node,
                group: stored.group,
                ports: found.1,
            });
        }
    }

    /// Puts the node just used, and its group, back with their new ranks.
    fn reinsert(
        &mut self,
        cluster: &Cluster<'_>,
        request: &AppRequest,
        rules: &[Rule<'_>],
        choice: &Choice,
        instances: u32,
    ) {
        let group = &mut self.groups[choice.group as usize];
        let state = cluster.node(choice.node);
        if state.has_resources_for(request) {
            group.nodes.push(Reverse(Rank {
                instances,
                load: state.load(),
                node: choice.node,
            }));
        }
        if let Some(&Reverse(best)) = group.nodes.peek() {
            self.queue.push(Reverse(GroupRank {
                counts: group_counts(&self.group_rules, rules, &group.values),
                best,
                group: choice.group,
            }));
        }
    }
}

/// Assigns candidate nodes to groups by their GROUP_BY values, numbering groups in node order.
enum Grouping {
    /// No GROUP_BY: one group holds every candidate.
    Single(Option<u32>),
    /// One GROUP_BY, the common case: group per value id.
    ByValue(Vec<Option<u32>>),
    /// Several GROUP_BYs: group per combination of values.
    ByCombination(HashMap<Vec<u32>, u32>),
}

impl Grouping {
    fn new(group_rules: &[usize], rules: &[Rule<'_>]) -> Self {
        match group_rules {
            [] => Self::Single(None),
            [rule] => Self::ByValue(vec![None; rules[*rule].field.values.len()]),
            _ => Self::ByCombination(HashMap::new()),
        }
    }

    /// The group of `node`, creating it in `members` on first sight.
    fn group_of(
        &mut self,
        node: NodeIndex,
        group_rules: &[usize],
        rules: &[Rule<'_>],
        members: &mut Vec<(Vec<u32>, Vec<Reverse<Rank>>)>,
    ) -> u32 {
        // GROUP_BY refuses nodes without the attribute statically, so every value is present.
        let values = || -> Vec<u32> {
            group_rules
                .iter()
                .filter_map(|&rule| rules[rule].value_of(node))
                .collect()
        };
        let mut create = |values: Vec<u32>| {
            members.push((values, Vec::new()));
            // One group per candidate node at most, so this fits like a node index.
            (members.len() - 1) as u32
        };
        match self {
            Self::Single(group) => *group.get_or_insert_with(|| create(Vec::new())),
            Self::ByValue(groups) => match rules[group_rules[0]].value_of(node) {
                Some(value) => *groups[value as usize].get_or_insert_with(|| create(vec![value])),
                None => create(Vec::new()),
            },
            Self::ByCombination(groups) => {
                let values = values();
                if let Some(&group) = groups.get(&values) {
                    return group;
                }
                let group = create(values.clone());
                groups.insert(values, group);
                group
            }
        }
    }
}

/// The app's instance counts on a group's GROUP_BY values.
fn group_counts(group_rules: &[usize], rules: &[Rule<'_>], values: &[u32]) -> Vec<u32> {
    group_rules
        .iter()
        .zip(values)
        .map(|(&rule, &value)| rules[rule].counts[value as usize])
        .collect()
}
