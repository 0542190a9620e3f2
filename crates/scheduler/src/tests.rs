use std::collections::BTreeMap;

use crate::ConstraintOperator::{Cluster, GroupBy, Like, MaxPer, Unique, Unlike};
use crate::*;

fn node(name: &str) -> NodeInfo {
    NodeInfo::new(name, 4.0, 4096.0)
}

fn rack_node(name: &str, rack: &str) -> NodeInfo {
    node(name).with_attribute("rack", rack)
}

fn request(app_id: &str, count: u32) -> AppRequest {
    AppRequest {
        app_id: app_id.into(),
        cpus: 0.1,
        mem: 32.0,
        ports: Vec::new(),
        require_ports: false,
        constraints: Vec::new(),
        count,
    }
}

fn constrained(app_id: &str, count: u32, constraint: ConstraintSpec) -> AppRequest {
    AppRequest {
        constraints: vec![constraint],
        ..request(app_id, count)
    }
}

fn constraint(field: &str, operator: ConstraintOperator, value: Option<&str>) -> ConstraintSpec {
    ConstraintSpec::new(field, operator, value)
}

fn allocation(alloc_id: &str, app_id: &str, node: &str) -> Placed {
    Placed {
        alloc_id: alloc_id.into(),
        app_id: app_id.into(),
        node: node.into(),
        cpus: 0.1,
        mem: 32.0,
        ports: Vec::new(),
    }
}

fn chosen_nodes(plan: &Plan) -> Vec<&str> {
    plan.placements
        .iter()
        .map(|placement| placement.node.as_str())
        .collect()
}

/// Instances per node name in the plan.
fn per_node(plan: &Plan) -> BTreeMap<&str, u32> {
    let mut counts = BTreeMap::new();
    for placement in &plan.placements {
        *counts.entry(placement.node.as_str()).or_default() += 1;
    }
    counts
}

/// Instances per rack in the plan, given the nodes' racks.
fn per_rack<'a>(plan: &Plan, nodes: &'a [NodeInfo]) -> BTreeMap<&'a str, u32> {
    let mut counts = BTreeMap::new();
    for placement in &plan.placements {
        let rack = nodes
            .iter()
            .find(|node| node.name == placement.node)
            .and_then(|node| node.attributes.get("rack"))
            .map_or("-", String::as_str);
        *counts.entry(rack).or_default() += 1;
    }
    counts
}

fn only_unplaced(plan: &Plan) -> &Unplaced {
    assert_eq!(plan.unplaced.len(), 1, "{plan:#?}");
    &plan.unplaced[0]
}

fn assert_reason(unplaced: &Unplaced, expected: &str) {
    assert!(
        unplaced.reasons.iter().any(|reason| reason == expected),
        "expected reason {expected:?} in {:#?}",
        unplaced.reasons
    );
}

// Spread and ranking.

#[test]
fn instances_spread_one_per_node_before_any_node_gets_two() {
    let nodes = [node("n1"), node("n2"), node("n3")];
    let plan = plan_placements(&nodes, &[], &[request("web", 6)]);
    assert_eq!(chosen_nodes(&plan), ["n1", "n2", "n3", "n1", "n2", "n3"]);
    assert!(plan.unplaced.is_empty());
}

#[test]
fn least_loaded_node_wins_among_nodes_with_equal_instance_counts() {
    let nodes = [node("a"), node("b"), node("c")];
    let busy = Placed {
        cpus: 2.0,
        ..allocation("x1", "other", "a")
    };
    let fuller = Placed {
        cpus: 1.0,
        ..allocation("x2", "other", "c")
    };
    let plan = plan_placements(&nodes, &[busy, fuller], &[request("web", 3)]);
    assert_eq!(chosen_nodes(&plan), ["b", "c", "a"]);
}

#[test]
fn load_is_the_larger_of_cpu_and_memory_shares() {
    let nodes = [node("a"), node("b")];
    // a: 10% cpu, 50% memory; b: 40% cpu, 0% memory. b is less loaded by its dominant share.
    let on_a = Placed {
        cpus: 0.4,
        mem: 2048.0,
        ..allocation("x1", "other", "a")
    };
    let on_b = Placed {
        cpus: 1.6,
        mem: 0.0,
        ..allocation("x2", "other", "b")
    };
    let plan = plan_placements(&nodes, &[on_a, on_b], &[request("web", 1)]);
    assert_eq!(chosen_nodes(&plan), ["b"]);
}

#[test]
fn existing_instances_of_the_app_steer_new_ones_elsewhere() {
    let nodes = [node("n1"), node("n2")];
    let placed = [allocation("a1", "web", "n1")];
    let plan = plan_placements(&nodes, &placed, &[request("web", 1)]);
    assert_eq!(chosen_nodes(&plan), ["n2"]);
}

#[test]
fn earlier_requests_get_first_pick() {
    let nodes = [NodeInfo::new("small", 1.0, 1024.0), node("large")];
    let big = AppRequest {
        cpus: 3.0,
        ..request("big", 1)
    };
    let plan = plan_placements(&nodes, &[], &[big, request("tiny", 1)]);
    assert_eq!(chosen_nodes(&plan), ["large", "small"]);
}

#[test]
fn a_request_with_count_zero_places_nothing_and_reports_nothing() {
    let plan = plan_placements(&[node("n1")], &[], &[request("web", 0)]);
    assert_eq!(plan, Plan::default());
}

#[test]
fn down_or_draining_nodes_receive_nothing_and_are_reported() {
    let mut nodes: Vec<NodeInfo> = (1..=5)
        .map(|i| NodeInfo::new(format!("node-{i}"), 1.0, 1024.0))
        .collect();
    nodes[0].eligible = false;
    nodes[3].eligible = false;
    let plan = plan_placements(&nodes, &[], &[request("web", 4)]);
    assert_eq!(
        chosen_nodes(&plan),
        ["node-2", "node-3", "node-5", "node-2"]
    );

    let heavy = AppRequest {
        mem: 2048.0,
        ..request("db", 1)
    };
    let plan = plan_placements(&nodes, &[], &[heavy]);
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 1);
    assert_reason(unplaced, "2 of 5 nodes are down or draining");
    assert_reason(
        unplaced,
        "no node has 2048 MiB memory free (largest free: 1024 MiB on node-2)",
    );
}

#[test]
fn an_empty_cluster_says_so() {
    let plan = plan_placements(&[], &[], &[request("web", 2)]);
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 2);
    assert_eq!(unplaced.reasons, ["there are no nodes to place on"]);
}

// Resources.

#[test]
fn memory_is_never_over_committed_and_the_reason_names_the_largest_free_node() {
    let mut nodes = vec![
        NodeInfo::new("node-1", 8.0, 1000.0),
        NodeInfo::new("node-2", 8.0, 4096.0),
        NodeInfo::new("node-3", 8.0, 1800.0),
    ];
    nodes.reverse();
    let placed = [Placed {
        mem: 2596.0,
        ..allocation("a1", "cache", "node-2")
    }];
    let db = AppRequest {
        mem: 4096.0,
        ..request("db", 1)
    };
    let plan = plan_placements(&nodes, &placed, &[db]);
    assert!(plan.placements.is_empty());
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.app_id, "db");
    assert_eq!(
        unplaced.reasons,
        ["no node has 4096 MiB memory free (largest free: 1800 MiB on node-3)"]
    );
}

#[test]
fn cpus_are_never_over_committed_and_the_reason_names_the_largest_free_node() {
    let nodes = [
        NodeInfo::new("node-1", 2.0, 8192.0),
        NodeInfo::new("node-2", 4.0, 8192.0),
    ];
    let placed = [Placed {
        cpus: 1.5,
        ..allocation("a1", "batch", "node-2")
    }];
    let worker = AppRequest {
        cpus: 1.0,
        ..request("worker", 5)
    };
    let plan = plan_placements(&nodes, &placed, &[worker]);
    // node-1 takes 2, node-2 takes 2 (1.5 + 2 = 3.5 of 4), the fifth fits nowhere.
    assert_eq!(
        per_node(&plan),
        BTreeMap::from([("node-1", 2), ("node-2", 2)])
    );
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 1);
    assert_eq!(
        unplaced.reasons,
        ["no node has 1 cpu free (largest free: 0.5 cpus on node-2)"]
    );
}

#[test]
fn fractional_cpus_that_sum_exactly_to_capacity_fit() {
    let nodes = [NodeInfo::new("n1", 1.0, 1024.0)];
    let tenth = AppRequest {
        cpus: 0.1,
        mem: 0.0,
        ..request("web", 11)
    };
    let plan = plan_placements(&nodes, &[], &[tenth]);
    assert_eq!(plan.placements.len(), 10);
    assert_eq!(only_unplaced(&plan).missing, 1);
}

#[test]
fn a_request_split_between_cpu_poor_and_memory_poor_nodes_says_neither_has_both() {
    let nodes = [
        NodeInfo::new("cpu-rich", 8.0, 256.0),
        NodeInfo::new("mem-rich", 0.5, 8192.0),
    ];
    let app = AppRequest {
        cpus: 2.0,
        mem: 1024.0,
        ..request("app", 1)
    };
    let plan = plan_placements(&nodes, &[], &[app]);
    assert_eq!(
        only_unplaced(&plan).reasons,
        ["no node has both 2 cpus and 1024 MiB memory free (1 node short of cpus, 1 node short of memory)"]
    );
}

#[test]
fn invalid_resource_amounts_are_refused_with_a_reason() {
    let broken = AppRequest {
        cpus: f64::NAN,
        mem: -1.0,
        ..request("web", 2)
    };
    let plan = plan_placements(&[node("n1")], &[], &[broken]);
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 2);
    assert_eq!(
        unplaced.reasons,
        [
            "cpus must be a non-negative number, got NaN",
            "mem must be a non-negative number, got -1"
        ]
    );
}

#[test]
fn allocations_on_unknown_nodes_are_ignored() {
    let nodes = [NodeInfo::new("n1", 1.0, 1024.0)];
    let ghost = Placed {
        cpus: 1.0,
        ..allocation("g1", "web", "gone")
    };
    let unique = constrained("web", 1, constraint("hostname", Unique, None));
    let plan = plan_placements(&nodes, &[ghost], &[unique]);
    assert_eq!(chosen_nodes(&plan), ["n1"]);
}

// Constraints.

#[test]
fn unique_hostname_places_at_most_one_instance_per_node() {
    let nodes = [node("n1"), node("n2"), node("n3")];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained("web", 5, constraint("hostname", Unique, None))],
    );
    assert_eq!(chosen_nodes(&plan), ["n1", "n2", "n3"]);
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 2);
    assert_eq!(
        unplaced.reasons,
        ["constraint hostname:UNIQUE allows at most 3 instances on 3 nodes"]
    );
}

#[test]
fn unique_hostname_holds_across_existing_instances_and_repeated_requests() {
    let nodes = [node("n1"), node("n2"), node("n3")];
    let unique = constraint("hostname", Unique, None);
    let plan = plan_placements(
        &nodes,
        &[allocation("a1", "web", "n2")],
        &[
            constrained("web", 1, unique.clone()),
            constrained("web", 1, unique.clone()),
            constrained("web", 1, unique),
        ],
    );
    assert_eq!(chosen_nodes(&plan), ["n1", "n3"]);
    assert_eq!(only_unplaced(&plan).missing, 1);
}

#[test]
fn unique_attribute_places_one_instance_per_value_and_skips_nodes_without_it() {
    let nodes = [
        rack_node("n1", "r1"),
        rack_node("n2", "r1"),
        rack_node("n3", "r2"),
        node("n4"),
    ];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained("web", 3, constraint("rack", Unique, None))],
    );
    assert_eq!(chosen_nodes(&plan), ["n1", "n3"]);
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 1);
    assert_eq!(
        unplaced.reasons,
        [
            "1 of 4 nodes has no rack attribute, which constraint rack:UNIQUE requires",
            "constraint rack:UNIQUE allows at most 2 instances on 2 distinct rack values",
        ]
    );
}

#[test]
fn cluster_with_a_value_uses_only_nodes_with_that_value() {
    let nodes = [
        rack_node("n1", "r1"),
        rack_node("n2", "r2"),
        rack_node("n3", "r1"),
        node("n4"),
    ];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained(
            "web",
            4,
            constraint("rack", Cluster, Some("r1")),
        )],
    );
    assert_eq!(chosen_nodes(&plan), ["n1", "n3", "n1", "n3"]);
}

#[test]
fn cluster_with_a_value_no_node_has_explains_itself() {
    let nodes = [rack_node("n1", "r1"), rack_node("n2", "r2")];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained(
            "web",
            1,
            constraint("rack", Cluster, Some("r9")),
        )],
    );
    assert_eq!(
        only_unplaced(&plan).reasons,
        ["no node satisfies constraint rack:CLUSTER:r9"]
    );
}

#[test]
fn cluster_without_a_value_follows_the_existing_instances() {
    let nodes = [
        rack_node("n1", "r1"),
        rack_node("n2", "r2"),
        rack_node("n3", "r2"),
        rack_node("n4", "r1"),
    ];
    let plan = plan_placements(
        &nodes,
        &[allocation("a1", "web", "n3")],
        &[constrained("web", 3, constraint("rack", Cluster, None))],
    );
    assert_eq!(chosen_nodes(&plan), ["n2", "n2", "n3"]);
}

#[test]
fn cluster_without_a_value_keeps_every_new_instance_with_the_first() {
    let nodes = [
        rack_node("n1", "r1"),
        rack_node("n2", "r2"),
        rack_node("n3", "r1"),
        rack_node("n4", "r2"),
    ];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained("web", 4, constraint("rack", Cluster, None))],
    );
    assert_eq!(per_rack(&plan, &nodes), BTreeMap::from([("r1", 4)]));
}

#[test]
fn cluster_without_a_value_reports_the_value_it_settled_on() {
    let nodes = [rack_node("n1", "r1"), rack_node("n2", "r2")];
    let placed = [Placed {
        mem: 4096.0,
        ..allocation("a1", "web", "n1")
    }];
    let plan = plan_placements(
        &nodes,
        &placed,
        &[constrained("web", 1, constraint("rack", Cluster, None))],
    );
    let unplaced = only_unplaced(&plan);
    assert_reason(
        unplaced,
        "constraint rack:CLUSTER keeps every instance on rack=r1, which rules out 1 of 2 nodes",
    );
    assert_reason(
        unplaced,
        "no node has 32 MiB memory free (largest free: 0 MiB on n1)",
    );
}

#[test]
fn group_by_spreads_evenly_across_values_regardless_of_node_counts() {
    let nodes = [
        rack_node("a1", "r1"),
        rack_node("a2", "r1"),
        rack_node("a3", "r1"),
        rack_node("b1", "r2"),
        rack_node("c1", "r3"),
        rack_node("c2", "r3"),
        node("d1"),
    ];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained("web", 6, constraint("rack", GroupBy, None))],
    );
    assert_eq!(
        per_rack(&plan, &nodes),
        BTreeMap::from([("r1", 2), ("r2", 2), ("r3", 2)])
    );
}

#[test]
fn group_by_evens_out_existing_imbalance_first() {
    let nodes = [
        rack_node("a1", "r1"),
        rack_node("b1", "r2"),
        rack_node("c1", "r3"),
    ];
    let placed = [allocation("x1", "web", "a1"), allocation("x2", "web", "a1")];
    let plan = plan_placements(
        &nodes,
        &placed,
        &[constrained(
            "web",
            4,
            constraint("rack", GroupBy, Some("3")),
        )],
    );
    assert_eq!(chosen_nodes(&plan), ["b1", "c1", "b1", "c1"]);
}

#[test]
fn group_by_keeps_placing_on_other_values_when_the_emptiest_is_full() {
    let nodes = [
        rack_node("a1", "r1"),
        rack_node("b1", "r2").with_attribute("size", "tiny"),
    ];
    let mut nodes = nodes.to_vec();
    nodes[1].cpus = 0.1;
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained("web", 3, constraint("rack", GroupBy, None))],
    );
    assert_eq!(
        per_rack(&plan, &nodes),
        BTreeMap::from([("r1", 2), ("r2", 1)])
    );
}

#[test]
fn like_requires_the_whole_value_to_match() {
    let nodes = [
        rack_node("n1", "r1"),
        rack_node("n2", "r12"),
        rack_node("n3", "r2"),
        rack_node("n4", "r3"),
        node("n5"),
    ];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained(
            "web",
            4,
            constraint("rack", Like, Some("r[12]")),
        )],
    );
    assert_eq!(chosen_nodes(&plan), ["n1", "n3", "n1", "n3"]);
}

#[test]
fn like_on_hostname_matches_node_names() {
    let nodes = [node("db-1"), node("web-1"), node("web-2")];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained(
            "web",
            2,
            constraint("hostname", Like, Some("web-.*")),
        )],
    );
    assert_eq!(chosen_nodes(&plan), ["web-1", "web-2"]);
}

#[test]
fn unlike_excludes_matching_values_and_accepts_nodes_without_the_attribute() {
    let nodes = [rack_node("n1", "r1"), rack_node("n2", "r2"), node("n3")];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained(
            "web",
            4,
            constraint("rack", Unlike, Some("r1|r3")),
        )],
    );
    assert_eq!(chosen_nodes(&plan), ["n2", "n3", "n2", "n3"]);
}

#[test]
fn like_that_matches_nothing_explains_itself() {
    let nodes = [rack_node("n1", "r1"), rack_node("n2", "r2"), node("n3")];
    let plan = plan_placements(
        &nodes,
        &[],
        &[constrained("web", 1, constraint("rack", Like, Some("r9")))],
    );
    assert_eq!(
        only_unplaced(&plan).reasons,
        ["no node satisfies constraint rack:LIKE:r9 (1 without a rack attribute)"]
    );
}

#[test]
fn max_per_caps_instances_per_value() {
    let nodes = [
        rack_node("a1", "r1"),
        rack_node("a2", "r1"),
        rack_node("a3", "r1"),
        rack_node("b1", "r2"),
    ];
    let plan = plan_placements(
        &nodes,
        &[allocation("x1", "web", "a3")],
        &[constrained("web", 5, constraint("rack", MaxPer, Some("2")))],
    );
    assert_eq!(
        per_rack(&plan, &nodes),
        BTreeMap::from([("r1", 1), ("r2", 2)])
    );
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 2);
    assert_eq!(
        unplaced.reasons,
        ["constraint rack:MAX_PER:2 allows at most 4 instances on 2 distinct rack values"]
    );
}

#[test]
fn several_constraints_must_all_hold() {
    let nodes = [
        rack_node("a1", "r1").with_attribute("disk", "ssd"),
        rack_node("a2", "r1").with_attribute("disk", "ssd"),
        rack_node("b1", "r2").with_attribute("disk", "hdd"),
        rack_node("c1", "r3").with_attribute("disk", "ssd"),
    ];
    let app = AppRequest {
        constraints: vec![
            constraint("disk", Cluster, Some("ssd")),
            constraint("rack", Unique, None),
        ],
        ..request("web", 3)
    };
    let plan = plan_placements(&nodes, &[], &[app]);
    assert_eq!(chosen_nodes(&plan), ["a1", "c1"]);
    assert_eq!(
        only_unplaced(&plan).reasons,
        [
            "1 of 4 nodes does not satisfy constraint disk:CLUSTER:ssd",
            "constraint rack:UNIQUE allows at most 2 instances on 2 distinct rack values",
        ]
    );
}

#[test]
fn malformed_constraints_are_refused_with_reasons() {
    let app = AppRequest {
        constraints: vec![
            constraint("rack", Like, None),
            constraint("rack", Unlike, Some("r[1")),
            constraint("rack", MaxPer, Some("two")),
            constraint("rack", GroupBy, Some("x")),
            constraint("", Unique, None),
        ],
        ..request("web", 2)
    };
    let plan = plan_placements(&[rack_node("n1", "r1")], &[], &[app]);
    assert!(plan.placements.is_empty());
    let unplaced = only_unplaced(&plan);
    assert_eq!(unplaced.missing, 2);
    assert_eq!(
        unplaced.reasons,
        [
            "constraint rack:LIKE needs a regular expression",
            "constraint rack:UNLIKE:r[1: unclosed `[` at character 1",
            "constraint rack:MAX_PER:two: the maximum must be a whole number",
            "constraint rack:GROUP_BY:x: the group count must be a whole number",
            "constraint :UNIQUE has an empty field name",
        ]
    );
}

// Ports.

#[test]
fn a_requested_port_is_used_when_free() {
    let app = AppRequest {
        ports: vec![8080, 0],
        ..request("web", 2)
    };
    let plan = plan_placements(&[node("n1"), node("n2")], &[], &[app]);
    let ports: Vec<&[u16]> = plan.placements.iter().map(|p| p.ports.as_slice()).collect();
    assert_eq!(ports, [[8080, 31000], [8080, 31000]]);
}

#[test]
fn a_taken_port_is_replaced_by_a_dynamic_one_unless_required() {
    let mut n1 = node("n1");
    n1.used_ports.insert(8080);
    let app = AppRequest {
        ports: vec![8080],
        ..request("web", 2)
    };
    let plan = plan_placements(std::slice::from_ref(&n1), &[], std::slice::from_ref(&app));
    let ports: Vec<&[u16]> = plan.placements.iter().map(|p| p.ports.as_slice()).collect();
    assert_eq!(ports, [[31000], [31001]]);

    let strict = AppRequest {
        require_ports: true,
        ..app
    };
    let plan = plan_placements(&[n1], &[], &[strict]);
    assert!(plan.placements.is_empty());
    assert_eq!(
        only_unplaced(&plan).reasons,
        ["port 8080 is taken on every node"]
    );
}

#[test]
fn required_ports_allow_one_instance_per_node() {
    let nodes = [node("n1"), node("n2"), node("n3")];
    let placed = [Placed {
        ports: vec![8080],
        ..allocation("a1", "other", "n2")
    }];
    let app = AppRequest {
        ports: vec![8080],
        require_ports: true,
        ..request("web", 3)
    };
    let plan = plan_placements(&nodes, &placed, &[app]);
    assert_eq!(chosen_nodes(&plan), ["n1", "n3"]);
    assert!(plan.placements.iter().all(|p| p.ports == [8080]));
    assert_eq!(
        only_unplaced(&plan).reasons,
        ["port 8080 is taken on every node"]
    );
}

#[test]
fn dynamic_ports_are_the_lowest_free_and_never_handed_out_twice_on_a_node() {
    let mut n1 = node("n1");
    n1.used_ports = [31000, 31002].into();
    let placed = [Placed {
        ports: vec![31003],
        ..allocation("a1", "other", "n1")
    }];
    let app = AppRequest {
        ports: vec![0, 0],
        ..request("web", 2)
    };
    let plan = plan_placements(&[n1], &placed, &[app.clone(), app]);
    let ports: Vec<&[u16]> = plan.placements.iter().map(|p| p.ports.as_slice()).collect();
    assert_eq!(
        ports,
        [
            [31001, 31004],
            [31005, 31006],
            [31007, 31008],
            [31009, 31010]
        ]
    );
}

#[test]
fn a_dynamic_port_never_takes_a_port_requested_later_in_the_same_instance() {
    let app = AppRequest {
        ports: vec![0, 31000],
        require_ports: true,
        ..request("web", 1)
    };
    let plan = plan_placements(&[node("n1")], &[], &[app]);
    assert_eq!(plan.placements[0].ports, [31001, 31000]);
}

#[test]
fn running_out_of_dynamic_ports_is_reported() {
    let mut n1 = node("n1");
    n1.port_ranges = vec![(31000, 31001)];
    let app = AppRequest {
        ports: vec![0],
        ..request("web", 3)
    };
    let plan = plan_placements(&[n1], &[], &[app]);
    assert_eq!(plan.placements.len(), 2);
    assert_eq!(
        only_unplaced(&plan).reasons,
        ["no node has enough free host ports left in its port ranges (1 per instance)"]
    );
}

#[test]
fn a_port_requested_twice_is_refused() {
    let app = AppRequest {
        ports: vec![8080, 0, 8080, 0],
        ..request("web", 1)
    };
    let plan = plan_placements(&[node("n1")], &[], &[app]);
    assert_eq!(
        only_unplaced(&plan).reasons,
        ["port 8080 is requested more than once"]
    );
}

// Determinism.

#[test]
fn the_plan_does_not_depend_on_the_order_of_nodes_or_allocations() {
    let nodes: Vec<NodeInfo> = (0..12)
        .map(|i| rack_node(&format!("n{i:02}"), &format!("r{}", i % 3)))
        .collect();
    let placed: Vec<Placed> = (0..30)
        .map(|i| Placed {
            cpus: 0.1 * f64::from(i % 7),
            mem: 100.0 + f64::from(i),
            ports: vec![31000 + i as u16],
            ..allocation(
                &format!("a{i}"),
                &format!("app{}", i % 4),
                &format!("n{:02}", i % 12),
            )
        })
        .collect();
    let requests = vec![
        constrained("app0", 5, constraint("rack", GroupBy, None)),
        constrained("app1", 8, constraint("hostname", Unique, None)),
        AppRequest {
            ports: vec![0, 8080],
            ..request("app2", 9)
        },
    ];
    let plan = plan_placements(&nodes, &placed, &requests);
    let mut reversed_nodes = nodes.clone();
    reversed_nodes.reverse();
    let mut reversed_placed = placed.clone();
    reversed_placed.reverse();
    reversed_placed.rotate_left(7);
    assert_eq!(
        plan_placements(&reversed_nodes, &reversed_placed, &requests),
        plan
    );
    assert_eq!(plan_placements(&nodes, &placed, &requests), plan);
    assert_eq!(plan.placements.len(), 5 + 8 + 9);
}

#[test]
fn float_sums_do_not_make_the_plan_depend_on_allocation_order() {
    // 0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 differ in the last bit, which decides the load ranking
    // between two otherwise equal nodes unless allocations are summed in a canonical order.
    let nodes = [node("a"), node("b")];
    let on = |alloc_id: &str, node: &str, cpus: f64| Placed {
        cpus,
        mem: 0.0,
        ..allocation(alloc_id, "other", node)
    };
    let placed = vec![
        on("a1", "a", 0.1),
        on("a2", "a", 0.2),
        on("a3", "a", 0.3),
        on("b1", "b", 0.3),
        on("b2", "b", 0.2),
        on("b3", "b", 0.1),
    ];
    let mut reversed = placed.clone();
    reversed.reverse();
    let requests = [request("web", 1)];
    assert_eq!(
        plan_placements(&nodes, &placed, &requests),
        plan_placements(&nodes, &reversed, &requests)
    );
}
