//! `atoll catalog services|nodes` and `atoll services`: the catalog for people, as
//! `consul catalog` prints it, and each service's health at a glance.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{json, Value};

use crate::cli::{colour_on_stdout, paint, print_table, request_with_body, text, Colour};
use crate::config::{CatalogCommand, ClientArgs};
use crate::lock_cli::escape;

/// Runs an `atoll catalog` subcommand.
pub async fn run(command: CatalogCommand) -> anyhow::Result<()> {
    match command {
        CatalogCommand::Services { tags, node, client } => {
            services(&client, tags, node.as_deref()).await
        }
        CatalogCommand::Nodes {
            service,
            detailed,
            client,
        } => nodes(&client, service.as_deref(), detailed).await,
    }
}

/// A name that goes into a path: one segment, not empty.
fn checked_name(flag: &str, name: &str) -> anyhow::Result<String> {
    if name.is_empty() || name.contains('/') {
        bail!("{flag} {name:?} is not a name (it must not be empty or hold '/')");
    }
    Ok(escape(name))
}

/// Service name → tags, sorted by name (the tags of one node's services with `node`).
async fn service_tags(
    client: &ClientArgs,
    node: Option<&str>,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let strings = |tags: Option<&Value>| -> Vec<String> {
        let mut tags: Vec<String> = tags
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        tags.sort();
        tags.dedup();
        tags
    };
    let mut out = BTreeMap::new();
    match node {
        None => {
            let (_, services) =
                request_with_body(client, "GET", "/v1/catalog/services", None).await?;
            for (name, tags) in services.as_object().into_iter().flatten() {
                out.insert(name.clone(), strings(Some(tags)));
            }
        }
        Some(node) => {
            let path = format!("/v1/catalog/node/{}", checked_name("--node", node)?);
            let (_, found) = request_with_body(client, "GET", &path, None).await?;
            if found.is_null() {
                bail!("no node named {node:?} (see `atoll catalog nodes`)");
            }
            for instance in found["Services"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, s)| s)
            {
                let tags: &mut Vec<String> = out.entry(text(instance, "Service")).or_default();
                tags.extend(strings(instance.get("Tags")));
                tags.sort();
                tags.dedup();
            }
        }
    }
    Ok(out)
}

async fn services(client: &ClientArgs, tags: bool, node: Option<&str>) -> anyhow::Result<()> {
    let services = service_tags(client, node).await?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&services)?);
        return Ok(());
    }
    if tags {
        print_table(
            services
                .iter()
                .map(|(name, tags)| vec![name.clone(), tags.join(",")])
                .collect(),
        );
    } else {
        for name in services.keys() {
            println!("{name}");
        }
    }
    Ok(())
}

/// `key=value, ...` of a JSON object, sorted by key.
fn pairs(object: &Value) -> String {
    let sorted: BTreeMap<&String, String> = object
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows of `consul catalog nodes` for `nodes` (catalog nodes, or a service's instances,
/// which carry the same node fields), one per node, sorted by name.
fn node_rows(nodes: &[Value], detailed: bool) -> Vec<Vec<String>> {
    let mut header = vec!["Node", "ID", "Address", "DC"];
    if detailed {
        header.extend(["TaggedAddresses", "Meta"]);
    }
    let mut seen = BTreeMap::new();
    for node in nodes {
        let id = text(node, "ID");
        let mut row = vec![
            text(node, "Node"),
            if detailed {
                id
            } else {
                id.chars().take(8).collect()
            },
            text(node, "Address"),
            text(node, "Datacenter"),
        ];
        if detailed {
            row.push(pairs(&node["TaggedAddresses"]));
            let meta = node.get("Meta").or_else(|| node.get("NodeMeta"));
            row.push(pairs(meta.unwrap_or(&Value::Null)));
        }
        seen.entry(text(node, "Node")).or_insert(row);
    }
    std::iter::once(header.into_iter().map(String::from).collect())
        .chain(seen.into_values())
        .collect()
}

async fn nodes(client: &ClientArgs, service: Option<&str>, detailed: bool) -> anyhow::Result<()> {
    let path = match service {
        Some(name) => format!("/v1/catalog/service/{}", checked_name("--service", name)?),
        None => "/v1/catalog/nodes".to_string(),
    };
    let (_, found) = request_with_body(client, "GET", &path, None).await?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    let found = found.as_array().cloned().unwrap_or_default();
    if found.is_empty() {
        eprintln!("No nodes match the given query - try expanding your search.");
        return Ok(());
    }
    print_table(node_rows(&found, detailed));
    Ok(())
}

/// How many instances of a service pass, warn and fail.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Health {
    passing: usize,
    warning: usize,
    critical: usize,
}

/// Counts the instances of `/v1/health/service/NAME`'s answer by their worst check (the
/// node's checks count against every service on it, as in Consul); an instance without
/// checks passes.
fn health_of(instances: &Value) -> Health {
    let mut health = Health::default();
    for instance in instances.as_array().into_iter().flatten() {
        let statuses: Vec<&str> = instance["Checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["Status"].as_str())
            .collect();
        if statuses.iter().any(|s| *s != "passing" && *s != "warning") {
            health.critical += 1;
        } else if statuses.contains(&"warning") {
            health.warning += 1;
        } else {
            health.passing += 1;
        }
    }
    health
}

/// `atoll services`.
pub async fn services_health(client: &ClientArgs) -> anyhow::Result<()> {
    let services = service_tags(client, None).await?;
    let mut rows = Vec::with_capacity(services.len());
    for (name, tags) in services {
        let path = format!("/v1/health/service/{}", escape(&name));
        let (_, instances) = request_with_body(client, "GET", &path, None).await?;
        rows.push((name, tags, health_of(&instances)));
    }
    if client.json {
        let listed: Vec<Value> = rows
            .iter()
            .map(|(name, tags, health)| {
                json!({
                    "Service": name,
                    "Tags": tags,
                    "Passing": health.passing,
                    "Warning": health.warning,
                    "Critical": health.critical,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    let colour = colour_on_stdout();
    let count = |n: usize, c: Colour| {
        if n == 0 {
            n.to_string()
        } else {
            paint(&n.to_string(), c, colour)
        }
    };
    let mut table = vec![["Service", "Tags", "Passing", "Warning", "Critical"]
        .map(String::from)
        .to_vec()];
    for (name, tags, health) in rows {
        table.push(vec![
            name,
            tags.join(","),
            count(health.passing, Colour::Green),
            count(health.warning, Colour::Yellow),
            count(health.critical, Colour::Red),
        ]);
    }
    print_table(table);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_counts_as_its_worst_check() {
        let instances = json!([
            {"Checks": [{"Status": "passing"}, {"Status": "passing"}]},
            {"Checks": [{"Status": "passing"}, {"Status": "warning"}]},
            {"Checks": [{"Status": "warning"}, {"Status": "critical"}]},
            {"Checks": [{"Status": "maintenance"}]},
            {"Checks": []},
        ]);
        assert_eq!(
            health_of(&instances),
            Health {
                passing: 2,
                warning: 1,
                critical: 2
            }
        );
    }

    #[test]
    fn nodes_are_listed_once_with_a_short_id() {
        let instances = vec![
            json!({"Node": "b", "ID": "0123456789ab", "Address": "127.0.0.2",
                   "Datacenter": "dc1", "TaggedAddresses": {"wan": "x"}, "NodeMeta": {"r": "1"}}),
            json!({"Node": "a", "ID": "fedcba987654", "Address": "127.0.0.1",
                   "Datacenter": "dc1"}),
            json!({"Node": "b", "ID": "0123456789ab", "Address": "127.0.0.2",
                   "Datacenter": "dc1"}),
        ];
        let rows = node_rows(&instances, false);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], ["a", "fedcba98", "127.0.0.1", "dc1"]);
        let rows = node_rows(&instances, true);
        assert_eq!(rows[2][4], "wan=x");
        assert_eq!(rows[2][5], "r=1");
    }
}
