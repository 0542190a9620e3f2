//! Why the rest of a request could not be placed, in words an operator can act on.
//!
//! Runs only when a request comes up short, over the cluster as the plan has left it. Each node is
//! charged to the first check it fails, in the order the planner applies them: node status, static
//! constraints, constraint slots, required ports, cpus and memory, free host ports.

use std::collections::BTreeSet;

use crate::cluster::{Cluster, NodeIndex};
use crate::model::{AppRequest, HOSTNAME_FIELD};
use crate::rules::{Rule, StaticCheck};

/// Tallies of where nodes dropped out.
#[derive(Debug, Default)]
struct Tally {
    down: usize,
    /// Per rule: nodes without the attribute, nodes whose value is refused.
    lacking: Vec<usize>,
    mismatched: Vec<usize>,
    /// Per rule: nodes refused because the app's instances fill the value (or sit elsewhere).
    blocked: Vec<usize>,
    /// Per rule: values of nodes that passed every static check.
    usable_values: Vec<BTreeSet<u32>>,
    /// Per required port, in request order: nodes where it is taken.
    port_taken: Vec<usize>,
    /// Nodes that reached the resource check, and how they failed it.
    resource_checked: usize,
    short_cpus: usize,
    short_mem: usize,
    short_any: usize,
    most_cpus_free: Option<(f64, NodeIndex)>,
    most_mem_free: Option<(f64, NodeIndex)>,
    /// Nodes that reached the dynamic port check, and how many failed it.
    port_checked: usize,
    out_of_ports: usize,
}

/// Human-readable reasons why no node can take another instance of `request`; never empty.
pub(crate) fn explain(
    cluster: &Cluster<'_>,
    request: &AppRequest,
    rules: &[Rule<'_>],
) -> Vec<String> {
    let total = cluster.nodes.len();
    if total == 0 {
        return vec!["there are no nodes to place on".to_owned()];
    }
    let required_ports: Vec<u16> = if request.require_ports {
        request
            .ports
            .iter()
            .copied()
            .filter(|&port| port != 0)
            .collect()
    } else {
        Vec::new()
    };
    let mut tally = Tally {
        lacking: vec![0; rules.len()],
        mismatched: vec![0; rules.len()],
        blocked: vec![0; rules.len()],
        usable_values: vec![BTreeSet::new(); rules.len()],
        port_taken: vec![0; required_ports.len()],
        ..Tally::default()
    };
    for node in 0..cluster.node_count() {
        charge(cluster, request, rules, &required_ports, node, &mut tally);
    }

    let mut reasons = Vec::new();
    if tally.down > 0 {
        reasons.push(format!(
            "{} of {total} nodes {} down or draining",
            tally.down,
            is_are(tally.down)
        ));
    }
    for (index, rule) in rules.iter().enumerate() {
        static_reason(
            rule,
            tally.lacking[index],
            tally.mismatched[index],
            total,
            &mut reasons,
        );
    }
    for (index, rule) in rules.iter().enumerate() {
        if tally.blocked[index] > 0 {
            reasons.push(slot_reason(
                rule,
                &tally.usable_values[index],
                tally.blocked[index],
                total,
            ));
        }
    }
    for (index, port) in required_ports.iter().enumerate() {
        let taken = tally.port_taken[index];
        if taken > 0 {
            reasons.push(format!(
                "port {port} is taken on {}",
                every_or_some(taken, total)
            ));
        }
    }
    resource_reasons(cluster, request, &tally, total, &mut reasons);
    if tally.out_of_ports > 0 {
        if tally.out_of_ports == tally.port_checked {
            reasons.push(format!(
                "no node has enough free host ports left in its port ranges ({} per instance)",
                request.ports.len()
            ));
        } else {
            reasons.push(format!(
                "{} of {total} nodes {} no free host ports left in their port ranges",
                tally.out_of_ports,
                has_have(tally.out_of_ports)
            ));
        }
    }
    if reasons.is_empty() {
        reasons.push("no node can take another instance".to_owned());
    }
    reasons
}

/// Charges `node` to the first check it fails.
fn charge(
    cluster: &Cluster<'_>,
    request: &AppRequest,
    rules: &[Rule<'_>],
    required_ports: &[u16],
    node: NodeIndex,
    tally: &mut Tally,
) {
    let state = cluster.node(node);
    if !state.info.eligible {
        tally.down += 1;
        return;
    }
    for (index, rule) in rules.iter().enumerate() {
        match rule.check_static(node) {
            StaticCheck::Passes => {}
            StaticCheck::LacksAttribute => {
                tally.lacking[index] += 1;
                return;
            }
            StaticCheck::Mismatches => {
                tally.mismatched[index] += 1;
                return;
            }
        }
    }
    for (index, rule) in rules.iter().enumerate() {
        if let Some(value) = rule.value_of(node) {
            tally.usable_values[index].insert(value);
        }
    }
    if let Some(index) = rules.iter().position(|rule| !rule.check_dynamic(node)) {
        tally.blocked[index] += 1;
        return;
    }
    for (index, &port) in required_ports.iter().enumerate() {
        if !state.port_is_free(port) {
            tally.port_taken[index] += 1;
            return;
        }
    }
    tally.resource_checked += 1;
    let cpus_free = state.cpus_free().max(0.0);
    let mem_free = state.mem_free().max(0.0);
    // Nodes come in name order, so a strict comparison leaves ties with the first name.
    if tally
        .most_cpus_free
        .is_none_or(|(most, _)| cpus_free > most)
    {
        tally.most_cpus_free = Some((cpus_free, node));
    }
    if tally.most_mem_free.is_none_or(|(most, _)| mem_free > most) {
        tally.most_mem_free = Some((mem_free, node));
    }
    let short_cpus = !state.has_cpus_for(request);
    let short_mem = !state.has_mem_for(request);
    tally.short_cpus += usize::from(short_cpus);
    tally.short_mem += usize::from(short_mem);
    if short_cpus || short_mem {
        tally.short_any += 1;
        return;
    }
    tally.port_checked += 1;
    if state.assign_ports(request).is_none() {
        tally.out_of_ports += 1;
    }
}

fn static_reason(
    rule: &Rule<'_>,
    lacking: usize,
    mismatched: usize,
    total: usize,
    reasons: &mut Vec<String>,
) {
    let spec = rule.spec;
    let field = rule.field_name();
    let excluded = lacking + mismatched;
    if excluded == 0 {
        return;
    }
    let (subject, has, does) = if excluded == total {
        ("no node".to_owned(), "has", "satisfies")
    } else if excluded == 1 {
        (format!("1 of {total} nodes"), "has", "does not satisfy")
    } else {
        (
            format!("{excluded} of {total} nodes"),
            "have",
            "do not satisfy",
        )
    };
    reasons.push(if mismatched == 0 {
        let article = if excluded == total { "a" } else { "no" };
        format!("{subject} {has} {article} {field} attribute, which constraint {spec} requires")
    } else if lacking == 0 {
        format!("{subject} {does} constraint {spec}")
    } else {
        format!("{subject} {does} constraint {spec} ({lacking} without a {field} attribute)")
    });
}

/// Why a UNIQUE, MAX_PER or value-less CLUSTER constraint refused `blocked` nodes.
fn slot_reason(
    rule: &Rule<'_>,
    usable_values: &BTreeSet<u32>,
    blocked: usize,
    total: usize,
) -> String {
    let spec = rule.spec;
    let field = rule.field_name();
    if let Some(limit) = rule.limit {
        let values = usable_values.len();
        let most = u64::from(limit) * values as u64;
        let instances = if most == 1 { "instance" } else { "instances" };
        let place = if field == HOSTNAME_FIELD {
            plural(values, "node")
        } else {
            format!(
                "{values} distinct {field} {}",
                if values == 1 { "value" } else { "values" }
            )
        };
        return format!("constraint {spec} allows at most {most} {instances} on {place}");
    }
    let pinned = rule
        .pinned
        .and_then(|value| rule.field.values.get(value as usize))
        .copied()
        .unwrap_or_default();
    format!(
        "constraint {spec} keeps every instance on {field}={pinned}, which rules out {blocked} of {total} nodes"
    )
}

fn resource_reasons(
    cluster: &Cluster<'_>,
    request: &AppRequest,
    tally: &Tally,
    total: usize,
    reasons: &mut Vec<String>,
) {
    let checked = tally.resource_checked;
    if checked == 0 || tally.short_any == 0 {
        return;
    }
    let cpus = cpus_text(request.cpus);
    let mem = format!("{} MiB", amount_text(request.mem));
    let name = |node: NodeIndex| cluster.node(node).name().to_owned();
    let all_short_cpus = tally.short_cpus == checked;
    let all_short_mem = tally.short_mem == checked;
    if all_short_mem {
        if let Some((free, node)) = tally.most_mem_free {
            reasons.push(format!(
                "no node has {mem} memory free (largest free: {} MiB on {})",
                amount_text(free),
                name(node)
            ));
        }
    }
    if all_short_cpus {
        if let Some((free, node)) = tally.most_cpus_free {
            reasons.push(format!(
                "no node has {cpus} free (largest free: {} on {})",
                cpus_text(free),
                name(node)
            ));
        }
    }
    if all_short_cpus || all_short_mem {
        return;
    }
    if tally.short_any == checked {
        reasons.push(format!(
            "no node has both {cpus} and {mem} memory free ({} short of cpus, {} short of memory)",
            plural(tally.short_cpus, "node"),
            plural(tally.short_mem, "node"),
        ));
        return;
    }
    if tally.short_cpus > 0 {
        reasons.push(format!(
            "{} of {total} nodes {} less than {cpus} free",
            tally.short_cpus,
            has_have(tally.short_cpus)
        ));
    }
    if tally.short_mem > 0 {
        reasons.push(format!(
            "{} of {total} nodes {} less than {mem} memory free",
            tally.short_mem,
            has_have(tally.short_mem)
        ));
    }
}

fn is_are(count: usize) -> &'static str {
    if count == 1 {
        "is"
    } else {
        "are"
    }
}

fn has_have(count: usize) -> &'static str {
    if count == 1 {
        "has"
    } else {
        "have"
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn every_or_some(count: usize, total: usize) -> String {
    if count == total {
        "every node".to_owned()
    } else {
        format!("{count} of {total} nodes")
    }
}

/// An amount rounded to two decimals, without trailing zeros: `1800`, `0.25`.
pub(crate) fn amount_text(value: f64) -> String {
    let rounded = (value * 100.0).round() / 100.0;
    // `-0` would read oddly in a message.
    format!("{}", rounded + 0.0)
}

fn cpus_text(value: f64) -> String {
    let text = amount_text(value);
    if text == "1" {
        "1 cpu".to_owned()
    } else {
        format!("{text} cpus")
    }
}
