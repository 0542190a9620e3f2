//! How running tasks appear in the catalog (Registrator's conventions, applied natively).

use atoll_state::AppSpec;

/// Service name, tags and port index of each port of an app: the app id's segments
/// reversed and joined with `-` (`/prod/web` → `web-prod`) or the `SERVICE_NAME` label;
/// the first port gets the name, port `i` gets `NAME-i` unless `SERVICE_<i>_NAME` is set;
/// tags come from `SERVICE_TAGS` (comma-separated).
pub fn service_names(app: &AppSpec) -> Vec<(usize, String, Vec<String>)> {
    let base = app.labels.get("SERVICE_NAME").cloned().unwrap_or_else(|| {
        let mut segments: Vec<&str> = app.id.split('/').filter(|s| !s.is_empty()).collect();
        segments.reverse();
        segments.join("-")
    });
    let tags: Vec<String> = app
        .labels
        .get("SERVICE_TAGS")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    (0..app.ports.len())
        .map(|i| {
            let name = app
                .labels
                .get(&format!("SERVICE_{i}_NAME"))
                .cloned()
                .unwrap_or_else(|| {
                    if i == 0 {
                        base.clone()
                    } else {
                        format!("{base}-{i}")
                    }
                });
            (i, name, tags.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use atoll_state::{PortSpec, Runtime, UpgradeStrategy};

    use super::*;

    fn app(id: &str, ports: usize, labels: &[(&str, &str)]) -> AppSpec {
        AppSpec {
            id: id.into(),
            version: "v".into(),
            runtime: Runtime::Exec { cmd: "true".into() },
            cpus: 0.1,
            mem: 16.0,
            disk: 0.0,
            instances: 1,
            env: BTreeMap::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: (0..ports)
                .map(|_| PortSpec {
                    host_port: 0,
                    container_port: None,
                    protocol: "tcp".into(),
                    name: None,
                })
                .collect(),
            require_ports: false,
            constraints: vec![],
            health_checks: vec![],
            upgrade_strategy: UpgradeStrategy {
                minimum_health_capacity: 1.0,
                maximum_over_capacity: 1.0,
            },
            backoff_seconds: 1.0,
            backoff_factor: 1.15,
            max_launch_delay_seconds: 300.0,
            definition: serde_json::Value::Null,
        }
    }

    #[test]
    fn names_follow_registrator_conventions() {
        assert_eq!(service_names(&app("/web", 1, &[]))[0].1, "web");
        assert_eq!(service_names(&app("/prod/web", 1, &[]))[0].1, "web-prod");
        let names = service_names(&app(
            "/a/b/c",
            3,
            &[("SERVICE_2_NAME", "admin"), ("SERVICE_TAGS", "x, y,,")],
        ));
        let just: Vec<&str> = names.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(just, vec!["c-b-a", "c-b-a-1", "admin"]);
        assert_eq!(names[0].2, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(
            service_names(&app("/web", 1, &[("SERVICE_NAME", "front")]))[0].1,
            "front"
        );
        assert!(service_names(&app("/web", 0, &[])).is_empty());
    }
}
