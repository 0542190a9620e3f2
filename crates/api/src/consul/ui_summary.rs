//! `/v1/internal/ui/*`: the summaries the web UI reads, one request for a whole page
//! instead of one per service or node. `services` has the shape of Consul's endpoint of the
//! same name; `compute-nodes` is atoll's own (Consul has no compute nodes).

use std::collections::{BTreeMap, BTreeSet};

use atoll_state::{CheckStatus, State, Table};
use axum::extract::{RawQuery, State as Context};
use axum::response::Response;
use serde::Serialize;

use crate::acl::Authz;
use crate::error::ApiError;
use crate::query::{blocking, json_with_index, Query, ReadOptions};
use crate::ApiContext;
use atoll_acl::Segment;

/// One service of `GET /v1/internal/ui/services`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSummary {
    name: String,
    datacenter: String,
    /// Every tag of any instance, sorted.
    tags: Vec<String>,
    /// The nodes the instances are on, sorted.
    nodes: Vec<String>,
    instance_count: usize,
    /// Counted as Consul counts them: each instance's own checks and its node's.
    checks_passing: usize,
    checks_warning: usize,
    checks_critical: usize,
    kind: String,
    external_sources: Vec<String>,
    /// The Marathon apps whose tasks registered instances of it, sorted (atoll's own).
    apps: Vec<String>,
}

/// One compute node of `GET /v1/internal/ui/compute-nodes`: what it offers and what the
/// tasks placed on it hold.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ComputeSummary {
    node: String,
    cpus: f64,
    cpus_used: f64,
    mem: f64,
    mem_used: f64,
    /// The dynamic port range, inclusive.
    port_range: [u16; 2],
    ports_total: usize,
    /// Host ports of its tasks and ports in the range held by something else.
    ports_used: usize,
    ports_free: usize,
    tasks: usize,
    drivers: Vec<String>,
    attributes: BTreeMap<String, String>,
}

/// The services of the datacenter with their instance and check counts, by name.
pub fn service_summaries(state: &State, datacenter: &str) -> Vec<ServiceSummary> {
    let mut by_name: BTreeMap<&str, ServiceSummary> = BTreeMap::new();
    let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut nodes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut apps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for instance in state.services.values().flat_map(|s| s.values()) {
        let summary = by_name
            .entry(&instance.name)
            .or_insert_with(|| ServiceSummary {
                name: instance.name.clone(),
                datacenter: datacenter.to_string(),
                tags: Vec::new(),
                nodes: Vec::new(),
                instance_count: 0,
                checks_passing: 0,
                checks_warning: 0,
                checks_critical: 0,
                kind: String::new(),
                external_sources: Vec::new(),
                apps: Vec::new(),
            });
        summary.instance_count += 1;
        for check in state.checks_for_instance(instance) {
            match check.status {
                CheckStatus::Passing => summary.checks_passing += 1,
                CheckStatus::Warning => summary.checks_warning += 1,
                CheckStatus::Critical => summary.checks_critical += 1,
            }
        }
        tags.entry(&instance.name)
            .or_default()
            .extend(instance.tags.iter().map(String::as_str));
        nodes
            .entry(&instance.name)
            .or_default()
            .insert(&instance.node);
        if let Some(app) = instance.meta.get(atoll_state::APP_ID_META) {
            apps.entry(&instance.name).or_default().insert(app);
        }
    }
    by_name
        .into_iter()
        .map(|(name, mut summary)| {
            summary.tags = owned(tags.remove(name));
            summary.nodes = owned(nodes.remove(name));
            summary.apps = owned(apps.remove(name));
            summary
        })
        .collect()
}

fn owned(names: Option<BTreeSet<&str>>) -> Vec<String> {
    names
        .unwrap_or_default()
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// Every compute node with its capacity and what is placed on it, by name.
pub fn compute_summaries(state: &State) -> Vec<ComputeSummary> {
    state
        .workload
        .compute
        .values()
        .map(|node| {
            let (low, high) = node.port_range;
            let range = low..=high;
            let mut cpus_used = 0.0;
            let mut mem_used = 0.0;
            let mut tasks = 0;
            let mut held: BTreeSet<u16> = BTreeSet::new();
            for task in state.workload.tasks_on(&node.node) {
                cpus_used += task.cpus;
                mem_used += task.mem;
                tasks += 1;
                held.extend(task.ports.iter().copied());
            }
            held.extend(node.busy_ports.iter().copied());
            let ports_total = range.clone().count();
            let ports_used = held.iter().filter(|port| range.contains(port)).count();
            ComputeSummary {
                node: node.node.clone(),
                cpus: node.cpus,
                cpus_used,
                mem: node.mem,
                mem_used,
                port_range: [low, high],
                ports_total,
                ports_used,
                ports_free: ports_total - ports_used,
                tasks,
                drivers: node.drivers.clone(),
                attributes: node.attributes.clone(),
            }
        })
        .collect()
}

/// `GET /v1/internal/ui/services` (blocking on the catalog): the services the caller may
/// read.
pub async fn services(
    Context(context): Context<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let datacenter = context.datacenter().to_string();
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let mut summaries = service_summaries(state, &datacenter);
        summaries.retain(|s| authz.reads(Segment::Service, &s.name));
        (state.indexes.catalog(), summaries)
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/internal/ui/compute-nodes` (blocking on the workload tables): the nodes the
/// caller may read.
pub async fn compute_nodes(
    Context(context): Context<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let (index, body) = blocking(&context, &options, Table::Workload, |state| {
        let mut summaries = compute_summaries(state);
        summaries.retain(|s| authz.reads_node(&s.node));
        (state.indexes.workload, summaries)
    })
    .await?;
    Ok(json_with_index(index, &body))
}

#[cfg(test)]
mod tests {
    use atoll_state::{Allocation, Check, CheckDefinition, ComputeNode, ServiceInstance};

    use super::*;

    fn instance(node: &str, id: &str, name: &str, tags: &[&str]) -> ServiceInstance {
        ServiceInstance {
            node: node.into(),
            id: id.into(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            enable_tag_override: false,
            tagged_addresses: BTreeMap::new(),
            create_index: 1,
            modify_index: 1,
        }
    }

    fn check(node: &str, id: &str, service_id: &str, status: CheckStatus) -> Check {
        Check {
            node: node.into(),
            check_id: id.into(),
            name: id.into(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: service_id.into(),
            service_name: String::new(),
            service_tags: Vec::new(),
            definition: CheckDefinition::default(),
            create_index: 1,
            modify_index: 1,
        }
    }

    fn task(id: &str, node: &str, cpus: f64, mem: f64, ports: &[u16]) -> Allocation {
        // Through the row's serialized form: only what the summary reads is spelled out.
        serde_json::from_value(serde_json::json!({
            "id": id, "app_id": "/web", "app_version": "v1", "node": node, "ports": ports,
            "cpus": cpus, "mem": mem, "desired_running": true, "state": "Running",
            "message": "", "staged_at": "", "started_at": null, "health_failures": 0,
            "services": [], "create_index": 1, "modify_index": 1,
        }))
        .expect("a task row")
    }

    #[test]
    fn services_count_instances_nodes_tags_and_checks_with_the_nodes_own() {
        let mut state = State::default();
        for (node, id, tags) in [("n1", "web-1", ["a", "b"]), ("n2", "web-2", ["b", "c"])] {
            state
                .services
                .insert(node.into(), id.into(), instance(node, id, "web", &tags));
        }
        state.services.insert(
            "n1".into(),
            "db-1".into(),
            instance("n1", "db-1", "db", &[]),
        );
        let checks = [
            check("n1", "serfHealth", "", CheckStatus::Passing),
            check("n2", "serfHealth", "", CheckStatus::Critical),
            check("n1", "web-1-probe", "web-1", CheckStatus::Warning),
            check("n2", "web-2-probe", "web-2", CheckStatus::Passing),
        ];
        for c in checks {
            state.checks.insert(c.node.clone(), c.check_id.clone(), c);
        }

        let summaries = service_summaries(&state, "dc1");
        let names: Vec<&str> = summaries.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        let web = &summaries[1];
        assert_eq!(web.instance_count, 2);
        assert_eq!(web.nodes, ["n1", "n2"]);
        assert_eq!(web.tags, ["a", "b", "c"]);
        // n1: its serfHealth (passing) and web-1's warning; n2: critical serfHealth, passing probe.
        assert_eq!(
            (web.checks_passing, web.checks_warning, web.checks_critical),
            (2, 1, 1)
        );
        let db = &summaries[0];
        assert_eq!(
            (db.instance_count, db.checks_passing, db.checks_critical),
            (1, 1, 0)
        );
        assert_eq!(db.datacenter, "dc1");
    }

    #[test]
    fn compute_nodes_report_what_their_tasks_and_others_hold() {
        let mut state = State::default();
        state.workload.compute.insert(
            "n1".into(),
            ComputeNode {
                node: "n1".into(),
                cpus: 4.0,
                mem: 2048.0,
                port_range: (31000, 31009),
                attributes: BTreeMap::new(),
                drivers: vec!["exec".into()],
                busy_ports: vec![31005],
            },
        );
        state
            .workload
            .tasks
            .insert("t1".into(), task("t1", "n1", 1.5, 512.0, &[31000, 31001]));
        // A port outside the dynamic range (asked for explicitly) is not counted in it.
        state
            .workload
            .tasks
            .insert("t2".into(), task("t2", "n1", 0.5, 128.0, &[8080]));
        state
            .workload
            .tasks
            .insert("t3".into(), task("t3", "n2", 1.0, 64.0, &[31002]));

        let summaries = compute_summaries(&state);
        assert_eq!(summaries.len(), 1);
        let n1 = &summaries[0];
        assert_eq!((n1.cpus_used, n1.mem_used, n1.tasks), (2.0, 640.0, 2));
        assert_eq!(n1.port_range, [31000, 31009]);
        assert_eq!((n1.ports_total, n1.ports_used, n1.ports_free), (10, 3, 7));
    }
}
