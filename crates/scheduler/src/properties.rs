//! Property tests: invariants of every plan, checked on the final state by code independent of the
//! planner's own bookkeeping.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;

use crate::*;

const APPS: [&str; 3] = ["a0", "a1", "a2"];
const FIELDS: [&str; 3] = ["hostname", "rack", "zone"];
/// Generated amounts are multiples of 1/4, exact in binary, so sums need no real slack; kept
/// separate from the planner's epsilon so that a too-generous one is caught.
const SLACK: f64 = 1e-9;
const PATTERNS: [&str; 6] = ["r[01]", "n.*", "r0|r2", "z?1", "n[0-3]", "(r|z)1"];

#[derive(Debug, Clone)]
struct Scenario {
    nodes: Vec<NodeInfo>,
    placed: Vec<Placed>,
    requests: Vec<AppRequest>,
    /// Constraints per app; every request of an app carries its app's constraints.
    constraints: BTreeMap<String, Vec<ConstraintSpec>>,
}

fn constraint() -> impl Strategy<Value = ConstraintSpec> {
    let operator = select(vec![
        ConstraintOperator::Unique,
        ConstraintOperator::Cluster,
        ConstraintOperator::GroupBy,
        ConstraintOperator::Like,
        ConstraintOperator::Unlike,
        ConstraintOperator::MaxPer,
    ]);
    (
        select(FIELDS.to_vec()),
        operator,
        0_usize..PATTERNS.len(),
        any::<bool>(),
    )
        .prop_map(|(field, operator, pick, flag)| {
            let value = match operator {
                ConstraintOperator::Unique => None,
                ConstraintOperator::Cluster if flag => None,
                ConstraintOperator::Cluster => Some(["n1", "r1", "z1"][pick % 3]),
                ConstraintOperator::GroupBy => flag.then_some("2"),
                ConstraintOperator::Like | ConstraintOperator::Unlike => Some(PATTERNS[pick]),
                ConstraintOperator::MaxPer => Some(if flag { "1" } else { "2" }),
            };
            ConstraintSpec::new(field, operator, value)
        })
}

fn port() -> impl Strategy<Value = u16> {
    select(vec![8080_u16, 8081, 31000, 31001, 31002])
}

fn nodes() -> impl Strategy<Value = Vec<NodeInfo>> {
    let node = (
        0_u32..=16,
        0_u32..=16,
        0_u16..4,
        prop::collection::btree_set(port(), 0..3),
        prop::option::of(select(vec!["r0", "r1", "r2"])),
        prop::option::of(select(vec!["z0", "z1"])),
        prop::bool::weighted(0.85),
    );
    prop::collection::vec(node, 0..8).prop_map(|parts| {
        parts
            .into_iter()
            .enumerate()
            .map(
                |(index, (cpus, mem, width, used_ports, rack, zone, eligible))| {
                    let mut node = NodeInfo::new(
                        format!("n{index}"),
                        f64::from(cpus) * 0.5,
                        f64::from(mem) * 256.0,
                    );
                    node.port_ranges = vec![(31000, 31000 + width)];
                    node.used_ports = used_ports;
                    node.eligible = eligible;
                    if let Some(rack) = rack {
                        node.attributes.insert("rack".into(), rack.into());
                    }
                    if let Some(zone) = zone {
                        node.attributes.insert("zone".into(), zone.into());
                    }
                    node
                },
            )
            .collect()
    })
}

fn placed() -> impl Strategy<Value = Vec<Placed>> {
    let allocation = (
        0_usize..10,
        0_usize..APPS.len(),
        0_u32..=4,
        0_u32..=4,
        prop::collection::vec(port(), 0..2),
    );
    prop::collection::vec(allocation, 0..8).prop_map(|parts| {
        parts
            .into_iter()
            .enumerate()
            .map(|(index, (node, app, cpus, mem, ports))| Placed {
                alloc_id: format!("p{index}"),
                app_id: APPS[app].into(),
                node: format!("n{node}"),
                cpus: f64::from(cpus) * 0.5,
                mem: f64::from(mem) * 256.0,
                ports,
            })
            .collect()
    })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let request = (
        0_usize..APPS.len(),
        0_u32..=8,
        0_u32..=8,
        prop::collection::vec(select(vec![0_u16, 0, 8080, 8081, 31001]), 0..3),
        any::<bool>(),
        0_u32..6,
    );
    (
        nodes(),
        placed(),
        prop::array::uniform3(prop::collection::vec(constraint(), 0..3)),
        prop::collection::vec(request, 0..5),
    )
        .prop_map(|(nodes, placed, app_constraints, requests)| {
            let constraints: BTreeMap<String, Vec<ConstraintSpec>> = APPS
                .iter()
                .zip(app_constraints)
                .map(|(app, constraints)| ((*app).to_owned(), constraints))
                .collect();
            let requests = requests
                .into_iter()
                .map(|(app, cpus, mem, ports, require_ports, count)| {
                    let mut seen = BTreeSet::new();
                    let ports = ports
                        .into_iter()
                        .filter(|&port| port == 0 || seen.insert(port))
                        .collect();
                    AppRequest {
                        app_id: APPS[app].into(),
                        cpus: f64::from(cpus) * 0.25,
                        mem: f64::from(mem) * 128.0,
                        ports,
                        require_ports,
                        constraints: constraints[APPS[app]].clone(),
                        count,
                    }
                })
                .collect();
            Scenario {
                nodes,
                placed,
                requests,
                constraints,
            }
        })
}

/// What one request got: its placements and, if it came up short, its `Unplaced` entry.
struct Outcome<'p> {
    request: &'p AppRequest,
    placements: Vec<Placement>,
    unplaced: Option<Unplaced>,
    /// Everything placed by this request and the ones before it.
    placed_so_far: Vec<(Placement, &'p AppRequest)>,
}

/// Plans every prefix of the requests; requests are placed one after another, so each prefix's
/// plan must extend the previous one, and the difference is what the last request got.
fn outcomes(scenario: &Scenario) -> Vec<Outcome<'_>> {
    let mut previous = Plan::default();
    let mut so_far = Vec::new();
    let mut outcomes = Vec::new();
    for (index, request) in scenario.requests.iter().enumerate() {
        let plan = plan_placements(
            &scenario.nodes,
            &scenario.placed,
            &scenario.requests[..=index],
        );
        assert_eq!(
            plan.placements[..previous.placements.len()],
            previous.placements[..]
        );
        assert_eq!(
            plan.unplaced[..previous.unplaced.len()],
            previous.unplaced[..]
        );
        let placements = plan.placements[previous.placements.len()..].to_vec();
        let new_unplaced = &plan.unplaced[previous.unplaced.len()..];
        assert!(new_unplaced.len() <= 1);
        so_far.extend(
            placements
                .iter()
                .cloned()
                .map(|placement| (placement, request)),
        );
        outcomes.push(Outcome {
            request,
            placements,
            unplaced: new_unplaced.first().cloned(),
            placed_so_far: so_far.clone(),
        });
        previous = plan;
    }
    outcomes
}

/// The cluster after existing allocations and `new` placements, recomputed from scratch.
struct Usage<'s> {
    nodes: BTreeMap<&'s str, &'s NodeInfo>,
    cpus: BTreeMap<&'s str, f64>,
    mem: BTreeMap<&'s str, f64>,
    ports: BTreeMap<&'s str, BTreeSet<u16>>,
    /// Instances per (app, node), existing and new.
    instances: BTreeMap<(String, String), u32>,
}

impl<'s> Usage<'s> {
    fn new(scenario: &'s Scenario, new: &[(Placement, &AppRequest)]) -> Self {
        let nodes: BTreeMap<&str, &NodeInfo> = scenario
            .nodes
            .iter()
            .map(|node| (node.name.as_str(), node))
            .collect();
        let mut usage = Usage {
            cpus: nodes.keys().map(|&name| (name, 0.0)).collect(),
            mem: nodes.keys().map(|&name| (name, 0.0)).collect(),
            ports: nodes
                .iter()
                .map(|(&name, node)| (name, node.used_ports.clone()))
                .collect(),
            instances: BTreeMap::new(),
            nodes,
        };
        for allocation in &scenario.placed {
            let Some((&name, _)) = usage.nodes.get_key_value(allocation.node.as_str()) else {
                continue;
            };
            *usage.cpus.get_mut(name).unwrap() += allocation.cpus;
            *usage.mem.get_mut(name).unwrap() += allocation.mem;
            usage.ports.get_mut(name).unwrap().extend(&allocation.ports);
            *usage
                .instances
                .entry((allocation.app_id.clone(), name.to_owned()))
                .or_default() += 1;
        }
        for (placement, request) in new {
            let (&name, _) = usage.nodes.get_key_value(placement.node.as_str()).unwrap();
            *usage.cpus.get_mut(name).unwrap() += request.cpus;
            *usage.mem.get_mut(name).unwrap() += request.mem;
            usage.ports.get_mut(name).unwrap().extend(&placement.ports);
            *usage
                .instances
                .entry((request.app_id.clone(), name.to_owned()))
                .or_default() += 1;
        }
        usage
    }

    /// The value of `field` on `node`.
    fn value<'n>(node: &'n NodeInfo, field: &str) -> Option<&'n str> {
        if field == HOSTNAME_FIELD {
            Some(&node.name)
        } else {
            node.attributes.get(field).map(String::as_str)
        }
    }

    /// The app's instances per value of `field`, in the order values first appear by node name.
    fn per_value(&self, app: &str, field: &str) -> Vec<(&'s str, u32)> {
        let mut counts: Vec<(&str, u32)> = Vec::new();
        for (name, node) in &self.nodes {
            let Some(value) = Self::value(node, field) else {
                continue;
            };
            let here = self
                .instances
                .get(&(app.to_owned(), (*name).to_owned()))
                .copied()
                .unwrap_or(0);
            match counts.iter_mut().find(|(seen, _)| *seen == value) {
                Some((_, count)) => *count += here,
                None => counts.push((value, here)),
            }
        }
        counts
    }

    fn count_on_value(&self, app: &str, field: &str, value: &str) -> u32 {
        self.per_value(app, field)
            .into_iter()
            .find(|(seen, _)| *seen == value)
            .map_or(0, |(_, count)| count)
    }

    /// Could `node` take one more instance of `request`, judged independently of the planner?
    fn could_take(&self, node: &NodeInfo, request: &AppRequest) -> bool {
        let name = node.name.as_str();
        if !node.eligible
            || self.cpus[name] + request.cpus > node.cpus + SLACK
            || self.mem[name] + request.mem > node.mem + SLACK
        {
            return false;
        }
        for constraint in &request.constraints {
            let value = Self::value(node, &constraint.field);
            let allowed = match (constraint.operator, value) {
                (ConstraintOperator::Unlike, None) => true,
                (_, None) => false,
                (ConstraintOperator::Like, Some(value)) => full_match(constraint, value),
                (ConstraintOperator::Unlike, Some(value)) => !full_match(constraint, value),
                (ConstraintOperator::GroupBy, Some(_)) => true,
                (ConstraintOperator::Unique, Some(value)) => {
                    self.count_on_value(&request.app_id, &constraint.field, value) == 0
                }
                (ConstraintOperator::MaxPer, Some(value)) => {
                    let limit: u32 = constraint.value.as_deref().unwrap().parse().unwrap();
                    self.count_on_value(&request.app_id, &constraint.field, value) < limit
                }
                (ConstraintOperator::Cluster, Some(value)) => match &constraint.value {
                    Some(wanted) => value == wanted,
                    None => {
                        // The value with the most instances, ties to the first by node name.
                        let counts = self.per_value(&request.app_id, &constraint.field);
                        let most = counts.iter().map(|(_, count)| *count).max().unwrap_or(0);
                        most == 0
                            || counts.iter().find(|(_, count)| *count == most).unwrap().0 == value
                    }
                },
            };
            if !allowed {
                return false;
            }
        }
        let used = &self.ports[name];
        let mut taken: BTreeSet<u16> = BTreeSet::new();
        let mut dynamic = 0;
        for &port in &request.ports {
            if port != 0 && !used.contains(&port) {
                taken.insert(port);
            } else if port != 0 && request.require_ports {
                return false;
            } else {
                dynamic += 1;
            }
        }
        let free = node
            .port_ranges
            .iter()
            .flat_map(|&(low, high)| low..=high)
            .collect::<BTreeSet<u16>>()
            .into_iter()
            .filter(|port| !used.contains(port) && !taken.contains(port))
            .count();
        free >= dynamic
    }
}

fn full_match(constraint: &ConstraintSpec, value: &str) -> bool {
    Pattern::new(constraint.value.as_deref().unwrap())
        .unwrap()
        .is_full_match(value)
}

/// The scenario with cpu amounts in tenths, which binary floats cannot hold exactly, so that sums
/// depend on the order of their terms.
fn with_inexact_cpus(mut scenario: Scenario) -> Scenario {
    scenario.nodes.iter_mut().for_each(|node| node.cpus *= 0.2);
    scenario
        .placed
        .iter_mut()
        .for_each(|allocation| allocation.cpus *= 0.2);
    scenario
        .requests
        .iter_mut()
        .for_each(|request| request.cpus *= 0.4);
    scenario
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_never_over_commit_cpus_memory_or_ports(scenario in scenario()) {
        let outcomes = outcomes(&scenario);
        let all = outcomes.last().map(|outcome| outcome.placed_so_far.clone()).unwrap_or_default();
        let before = Usage::new(&scenario, &[]);
        let after = Usage::new(&scenario, &all);
        let mut handed_out: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
        for (placement, request) in &all {
            let node = after.nodes[placement.node.as_str()];
            let name = node.name.as_str();
            prop_assert!(node.eligible, "placed on down node {name}");
            prop_assert!(after.cpus[name] <= node.cpus + SLACK, "cpus over-committed on {name}");
            prop_assert!(after.mem[name] <= node.mem + SLACK, "memory over-committed on {name}");
            prop_assert_eq!(placement.ports.len(), request.ports.len());
            for (&given, &asked) in placement.ports.iter().zip(&request.ports) {
                prop_assert!(!before.ports[name].contains(&given), "port {} already in use on {}", given, name);
                prop_assert!(handed_out.entry(name).or_default().insert(given), "port {} handed out twice on {}", given, name);
                if request.require_ports && asked != 0 {
                    prop_assert_eq!(given, asked);
                }
                if given != asked {
                    prop_assert!(node.port_ranges.iter().any(|&(low, high)| low <= given && given <= high));
                }
            }
        }
    }

    #[test]
    fn constraints_hold_in_the_final_assignment(scenario in scenario()) {
        let outcomes = outcomes(&scenario);
        let all = outcomes.last().map(|outcome| outcome.placed_so_far.clone()).unwrap_or_default();
        let before = Usage::new(&scenario, &[]);
        let after = Usage::new(&scenario, &all);
        for (app, constraints) in &scenario.constraints {
            let new: Vec<&NodeInfo> = all
                .iter()
                .filter(|(placement, _)| &placement.app_id == app)
                .map(|(placement, _)| after.nodes[placement.node.as_str()])
                .collect();
            for constraint in constraints {
                let field = constraint.field.as_str();
                let mut new_values = BTreeSet::new();
                for node in &new {
                    let value = Usage::value(node, field);
                    match constraint.operator {
                        ConstraintOperator::Unlike => {
                            prop_assert!(value.is_none_or(|value| !full_match(constraint, value)));
                        }
                        ConstraintOperator::Like => {
                            prop_assert!(value.is_some_and(|value| full_match(constraint, value)));
                        }
                        _ => prop_assert!(value.is_some(), "{} lacks {}", node.name, field),
                    }
                    if let Some(value) = value {
                        new_values.insert(value);
                    }
                }
                for &value in &new_values {
                    let count = after.count_on_value(app, field, value);
                    match (constraint.operator, constraint.value.as_deref()) {
                        (ConstraintOperator::Unique, _) => prop_assert_eq!(count, 1, "{}={}", field, value),
                        (ConstraintOperator::MaxPer, Some(limit)) => {
                            prop_assert!(count <= limit.parse::<u32>().unwrap(), "{} on {}={}", count, field, value);
                        }
                        (ConstraintOperator::Cluster, Some(wanted)) => prop_assert_eq!(value, wanted),
                        _ => {}
                    }
                }
                if constraint.operator == ConstraintOperator::Cluster && constraint.value.is_none() {
                    prop_assert!(new_values.len() <= 1, "{:?} split over {:?}", constraint, new_values);
                    let existing: BTreeSet<&str> = before
                        .per_value(app, field)
                        .into_iter()
                        .filter(|(_, count)| *count > 0)
                        .map(|(value, _)| value)
                        .collect();
                    if existing.len() == 1 && !new_values.is_empty() {
                        prop_assert_eq!(&existing, &new_values);
                    }
                }
            }
        }
    }

    #[test]
    fn the_plan_depends_only_on_the_content_of_the_input(
        (scenario, placed, nodes) in scenario().prop_map(with_inexact_cpus).prop_flat_map(|scenario| {
            let placed = Just(scenario.placed.clone()).prop_shuffle();
            let nodes = Just(scenario.nodes.clone()).prop_shuffle();
            (Just(scenario), placed, nodes)
        })
    ) {
        let plan = plan_placements(&scenario.nodes, &scenario.placed, &scenario.requests);
        prop_assert_eq!(&plan_placements(&scenario.nodes, &scenario.placed, &scenario.requests), &plan);
        prop_assert_eq!(&plan_placements(&nodes, &placed, &scenario.requests), &plan);
    }

    #[test]
    fn every_shortfall_is_counted_and_explained(scenario in scenario()) {
        for outcome in outcomes(&scenario) {
            let missing = outcome.unplaced.as_ref().map_or(0, |unplaced| unplaced.missing);
            prop_assert_eq!(outcome.placements.len() as u32 + missing, outcome.request.count);
            prop_assert!(outcome.placements.iter().all(|placement| placement.app_id == outcome.request.app_id));
            if let Some(unplaced) = &outcome.unplaced {
                prop_assert_eq!(&unplaced.app_id, &outcome.request.app_id);
                prop_assert!(unplaced.missing > 0);
                prop_assert!(!unplaced.reasons.is_empty());
                prop_assert!(unplaced.reasons.iter().all(|reason| !reason.trim().is_empty()));
            }
        }
    }

    #[test]
    fn a_request_comes_up_short_only_when_no_node_can_take_another_instance(scenario in scenario()) {
        for outcome in outcomes(&scenario) {
            if outcome.unplaced.is_none() {
                continue;
            }
            let usage = Usage::new(&scenario, &outcome.placed_so_far);
            for node in &scenario.nodes {
                prop_assert!(
                    !usage.could_take(node, outcome.request),
                    "{} could take another {} ({:?})",
                    node.name,
                    outcome.request.app_id,
                    outcome.unplaced
                );
            }
        }
    }
}
