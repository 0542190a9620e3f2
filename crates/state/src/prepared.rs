//! Consul's prepared queries: the stored definition, the checks `apply` makes before it
//! stores one, and the pure steps of running one (resolving an id or name, rendering a
//! template, filtering and ordering the instances, choosing the datacenters to fail over to).
//!
//! Nothing here reads a clock, a socket or a random source: the shuffle takes its seed and
//! the failover order takes the datacenters by distance, so every step is unit-tested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Rejection};
use crate::model::{Check, CheckStatus, Node, ServiceInstance};
use crate::state::{aggregate_status, State};
use crate::table::Rows;

/// The only template type Consul knows.
pub const TEMPLATE_NAME_PREFIX_MATCH: &str = "name_prefix_match";

/// How deep into the ordered results the node a query is near is looked for (Consul's cap).
const NEAR_SEARCH_DEPTH: usize = 10;

/// A stored prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreparedQuery {
    /// The query's id (a UUID chosen by the proposer).
    pub id: String,
    /// Its name (empty: reachable by id only, or the catch-all template).
    pub name: String,
    /// A session the query lives as long as (empty: none).
    pub session: String,
    /// The token stored with it (ACLs are disabled: kept and shown, never checked).
    pub token: String,
    /// What it selects.
    pub service: ServiceQuery,
    /// DNS options.
    pub dns: QueryDns,
    /// Template options (empty type: not a template).
    pub template: QueryTemplate,
    /// Raft index that created the row.
    pub create_index: u64,
    /// Raft index that last changed the row.
    pub modify_index: u64,
}

/// The service part of a prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceQuery {
    /// The service name.
    pub service: String,
    /// Where to look when this datacenter has no instance.
    pub failover: QueryFailover,
    /// Checks that do not count for the instances' health.
    pub ignore_check_ids: Vec<String>,
    /// Only passing instances (else passing and warning ones).
    pub only_passing: bool,
    /// The node results are sorted near (`_agent`: the asking agent's node).
    pub near: String,
    /// Tags each instance must carry (`!tag`: must not carry), without regard to case.
    pub tags: Vec<String>,
    /// Node metadata each instance's node must have.
    pub node_meta: BTreeMap<String, String>,
    /// Service metadata each instance must have.
    pub service_meta: BTreeMap<String, String>,
    /// Only Connect-capable instances.
    pub connect: bool,
}

/// Failover options of a prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryFailover {
    /// How many of the nearest other datacenters to try.
    pub nearest_n: u32,
    /// Datacenters to try after those, in order.
    pub datacenters: Vec<String>,
}

/// DNS options of a prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryDns {
    /// The TTL of DNS answers, a Go duration (empty: the agent's service TTL).
    pub ttl: String,
}

/// Template options of a prepared query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryTemplate {
    /// `name_prefix_match`, or empty for a query that is no template.
    #[serde(rename = "type")]
    pub kind: String,
    /// A regular expression matched against the name asked for (`${match(N)}`).
    pub regexp: String,
    /// Drop tags that render empty.
    pub remove_empty_tags: bool,
}

impl PreparedQuery {
    /// Whether the query is a template.
    pub fn is_template(&self) -> bool {
        !self.template.kind.is_empty()
    }
}

impl State {
    /// Stores a new prepared query after the checks [`State::check_query`] makes.
    pub(crate) fn create_query(&mut self, index: u64, query: &PreparedQuery) -> Outcome {
        if query.id.is_empty() {
            return invalid("Missing prepared query ID".to_string());
        }
        if self.queries.contains_key(&query.id) {
            return Outcome::Rejected(Rejection::Conflict(format!(
                "Prepared query ID '{}' is taken",
                query.id
            )));
        }
        if let Err(message) = self.check_query(query) {
            return invalid(message);
        }
        let stored = PreparedQuery {
            create_index: index,
            modify_index: index,
            ..query.clone()
        };
        self.queries.insert(stored.id.clone(), stored);
        Outcome::Done
    }

    /// Replaces an existing prepared query, keeping its create index.
    pub(crate) fn update_query(&mut self, index: u64, query: &PreparedQuery) -> Outcome {
        let Some(existing) = self.queries.get(&query.id) else {
            return missing_query(&query.id);
        };
        if let Err(message) = self.check_query(query) {
            return invalid(message);
        }
        let stored = PreparedQuery {
            create_index: existing.create_index,
            modify_index: index,
            ..query.clone()
        };
        self.queries.insert(stored.id.clone(), stored);
        Outcome::Done
    }

    /// Removes a prepared query.
    pub(crate) fn delete_query(&mut self, id: &str) -> Outcome {
        match self.queries.remove(id) {
            Some(_) => Outcome::Done,
            None => missing_query(id),
        }
    }

    /// Removes the prepared queries bound to a session that ended.
    pub(crate) fn delete_session_queries(&mut self, session: &str) {
        self.queries.retain(|_, query| query.session != session);
    }

    /// What Consul checks before it stores a query, with its messages: a service name, a
    /// name that is no other query's name or id, at most one catch-all template, a session
    /// that exists, and a template that compiles and renders.
    fn check_query(&self, query: &PreparedQuery) -> Result<(), String> {
        if query.service.service.is_empty() {
            return Err("Must provide a Service name to query".to_string());
        }
        let others = || self.queries.values().filter(|other| other.id != query.id);
        if !query.name.is_empty() {
            if others().any(|other| other.name.eq_ignore_ascii_case(&query.name)) {
                return Err(format!(
                    "name '{}' aliases an existing query name",
                    query.name
                ));
            }
            if others().any(|other| other.id.eq_ignore_ascii_case(&query.name)) {
                return Err(format!(
                    "name '{}' aliases an existing query ID",
                    query.name
                ));
            }
        } else if query.is_template() && others().any(|o| o.is_template() && o.name.is_empty()) {
            return Err("a prepared query template already exists with an empty name".to_string());
        }
        if !query.session.is_empty() && !self.sessions.contains_key(&query.session) {
            return Err(format!("invalid session {:?}", query.session));
        }
        if query.is_template() {
            render(query, &query.name)
                .map_err(|e| format!("Invalid prepared query template: {e}"))?;
        }
        Ok(())
    }
}

fn invalid(message: String) -> Outcome {
    Outcome::Rejected(Rejection::Invalid(message))
}

fn missing_query(id: &str) -> Outcome {
    Outcome::Rejected(Rejection::NotFound(format!(
        "Cannot modify non-existent prepared query: '{id}'"
    )))
}

/// Finds the query an execute or explain names: the query with that id, else the query
/// with that name (without regard to case), else the template whose name is the longest
/// prefix of it (the empty-named template matching any name).
pub fn resolve<'a>(
    queries: &'a Rows<String, PreparedQuery>,
    id_or_name: &str,
) -> Option<&'a PreparedQuery> {
    if let Some(query) = queries.get(id_or_name) {
        return Some(query);
    }
    if id_or_name.is_empty() {
        // An empty name only reaches the catch-all template.
        return queries
            .values()
            .find(|q| q.is_template() && q.name.is_empty());
    }
    let wanted = id_or_name.to_lowercase();
    if let Some(query) = queries
        .values()
        .find(|q| !q.name.is_empty() && q.name.to_lowercase() == wanted)
    {
        return Some(query);
    }
    queries
        .values()
        .filter(|q| q.is_template() && wanted.starts_with(&q.name.to_lowercase()))
        .max_by_key(|q| q.name.len())
}

/// The query as it runs for `name`: a template has `${...}` in its service fields replaced
/// (`name.full`, `name.prefix`, `name.suffix`, `match(N)`, `agent.segment`); any other query
/// is returned as it is.
pub fn render(query: &PreparedQuery, name: &str) -> Result<PreparedQuery, String> {
    if !query.is_template() {
        return Ok(query.clone());
    }
    if query.template.kind != TEMPLATE_NAME_PREFIX_MATCH {
        return Err(format!("Bad Template.Type '{}'", query.template.kind));
    }
    let matches = if query.template.regexp.is_empty() {
        Vec::new()
    } else {
        let pattern =
            regex::Regex::new(&query.template.regexp).map_err(|e| format!("Bad Regexp: {e}"))?;
        pattern
            .captures(name)
            .map(|captures| {
                captures
                    .iter()
                    .map(|group| group.map_or_else(String::new, |m| m.as_str().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let prefix = query.name.as_str();
    let suffix = if name.len() >= prefix.len() && name.is_char_boundary(prefix.len()) {
        &name[prefix.len()..]
    } else {
        ""
    };
    let variables = Variables {
        full: name,
        prefix,
        suffix,
        matches: &matches,
    };
    let fill = |text: &str| interpolate(text, &variables);
    let fill_all = |texts: &[String]| texts.iter().map(|t| fill(t)).collect::<Result<Vec<_>, _>>();
    let fill_map = |map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(key, value)| Ok((key.clone(), fill(value)?)))
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    let service = &query.service;
    let mut tags = fill_all(&service.tags)?;
    if query.template.remove_empty_tags {
        tags.retain(|tag| !tag.is_empty());
    }
    Ok(PreparedQuery {
        service: ServiceQuery {
            service: fill(&service.service)?,
            failover: QueryFailover {
                nearest_n: service.failover.nearest_n,
                datacenters: fill_all(&service.failover.datacenters)?,
            },
            ignore_check_ids: fill_all(&service.ignore_check_ids)?,
            only_passing: service.only_passing,
            near: fill(&service.near)?,
            tags,
            node_meta: fill_map(&service.node_meta)?,
            service_meta: fill_map(&service.service_meta)?,
            connect: service.connect,
        },
        ..query.clone()
    })
}

/// What a template's `${...}` can name.
struct Variables<'a> {
    full: &'a str,
    prefix: &'a str,
    suffix: &'a str,
    matches: &'a [String],
}

/// Replaces each `${expression}` of `text`; `$${` is a literal `${`.
fn interpolate(text: &str, variables: &Variables<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("Bad format '{text}': unclosed '${{'"));
        };
        out.push_str(&evaluate(after[..end].trim(), variables, text)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn evaluate(expression: &str, variables: &Variables<'_>, text: &str) -> Result<String, String> {
    match expression {
        "name.full" => return Ok(variables.full.to_string()),
        "name.prefix" => return Ok(variables.prefix.to_string()),
        "name.suffix" => return Ok(variables.suffix.to_string()),
        // Consul Enterprise's network segment; there are none.
        "agent.segment" => return Ok(String::new()),
        _ => {}
    }
    let argument = expression
        .strip_prefix("match")
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix('('))
        .and_then(|rest| rest.strip_suffix(')'))
        .map(str::trim);
    match argument.map(str::parse::<usize>) {
        Some(Ok(group)) => Ok(variables.matches.get(group).cloned().unwrap_or_default()),
        Some(Err(_)) => Err(format!(
            "Bad format '{text}': match() takes the number of a group, not {:?}",
            argument.unwrap_or_default()
        )),
        None => Err(format!(
            "Bad format '{text}': unknown variable or function '{expression}'"
        )),
    }
}

/// One instance a query selected, with its node and every check that guards it.
#[derive(Debug, Clone)]
pub struct Selected<'a> {
    /// The instance's node.
    pub node: &'a Node,
    /// The instance.
    pub instance: &'a ServiceInstance,
    /// Its checks and its node's.
    pub checks: Vec<&'a Check>,
}

/// The instances of this datacenter a (rendered) query selects, in the catalog's order:
/// healthy enough (passing, plus warning unless `OnlyPassing`, the `IgnoreCheckIDs` not
/// counting), with every wanted tag and none of the `!tag`s (without regard to case), and
/// the node and service metadata asked for. There are no Connect-capable instances, so a
/// `Connect` query selects none.
pub fn select<'a>(state: &'a State, service: &ServiceQuery) -> Vec<Selected<'a>> {
    if service.connect {
        return Vec::new();
    }
    let mut wanted = Vec::new();
    let mut refused = Vec::new();
    for tag in &service.tags {
        let tag = tag.to_lowercase();
        match tag.strip_prefix('!') {
            Some(not) => refused.push(not.to_string()),
            None => wanted.push(tag),
        }
    }
    let has = |instance: &ServiceInstance, tag: &str| {
        instance.tags.iter().any(|t| t.to_lowercase() == tag)
    };
    let meta_matches = |have: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
        want.iter().all(|(key, value)| have.get(key) == Some(value))
    };
    let mut selected = Vec::new();
    for instance in state.instances_of(&service.service) {
        let Some(node) = state.nodes.get(&instance.node) else {
            continue;
        };
        if !wanted.iter().all(|tag| has(instance, tag))
            || refused.iter().any(|tag| has(instance, tag))
            || !meta_matches(&node.meta, &service.node_meta)
            || !meta_matches(&instance.meta, &service.service_meta)
        {
            continue;
        }
        let checks = state.checks_for_instance(instance);
        let counted = checks
            .iter()
            .copied()
            .filter(|check| !service.ignore_check_ids.contains(&check.check_id));
        let healthy = match aggregate_status(counted) {
            CheckStatus::Passing => true,
            CheckStatus::Warning => !service.only_passing,
            CheckStatus::Critical => false,
        };
        if healthy {
            selected.push(Selected {
                node,
                instance,
                checks,
            });
        }
    }
    selected
}

/// A deterministic Fisher–Yates shuffle driven by `seed` (splitmix64).
pub fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        items.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

/// After the distance sort, Consul swaps the instance on the node the query is near (found
/// among the first ten, without regard to case) into first place.
pub fn put_near_node_first<T>(items: &mut [T], near: &str, node_of: impl Fn(&T) -> &str) {
    if near.is_empty() {
        return;
    }
    let found = items
        .iter()
        .take(NEAR_SEARCH_DEPTH)
        .position(|item| node_of(item).eq_ignore_ascii_case(near));
    if let Some(at) = found {
        items.swap(0, at);
    }
}

/// The datacenters a query with no local result fails over to, in order: the first
/// `NearestN` of the other datacenters (nearest first), then those of `Datacenters` not
/// chosen yet. A listed datacenter that is not among the others (unknown, or this one) is
/// skipped.
pub fn failover_targets(others_by_distance: &[String], failover: &QueryFailover) -> Vec<String> {
    let mut targets: Vec<String> = others_by_distance
        .iter()
        .take(failover.nearest_n as usize)
        .cloned()
        .collect();
    for dc in &failover.datacenters {
        if others_by_distance.contains(dc) && !targets.contains(dc) {
            targets.push(dc.clone());
        }
    }
    targets
}

#[cfg(test)]
#[path = "prepared_tests.rs"]
mod tests;
