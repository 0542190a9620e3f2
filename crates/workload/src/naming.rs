//! How running tasks appear in the catalog (Registrator's conventions, applied natively).

use atoll_driver::registrator::service_tags;
use atoll_state::AppSpec;

/// The catalog services of an app, one per port: `(port index, name, tags)`. The name is
/// the `SERVICE_NAME` label or the app id's segments reversed and joined with `-`
/// (`/prod/web` → `web-prod`); port `i > 0` gets `NAME-i`; a `SERVICE_<i>_NAME` label
/// overrides the name of port `i`. Tags come from the comma-separated `SERVICE_TAGS` label,
/// read as the registrator reads it ([`service_tags`]).
///
/// Ports are numbered by their index in the app definition (not every port has a container
/// port), where the registrator of external containers keys them by container port
/// (`SERVICE_8080_NAME`), as Registrator does.
pub fn service_names(app: &AppSpec) -> Vec<(usize, String, Vec<String>)> {
    let label = |key: &str| {
        app.labels
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let base = label("SERVICE_NAME")
        .map(str::to_string)
        .unwrap_or_else(|| {
            let mut segments: Vec<&str> = app.id.split('/').filter(|s| !s.is_empty()).collect();
            segments.reverse();
            segments.join("-")
        });
    let tags: Vec<String> = label("SERVICE_TAGS").map(service_tags).unwrap_or_default();
    (0..app.ports.len())
        .map(|index| {
            let name = match label(&format!("SERVICE_{index}_NAME")) {
                Some(name) => name.to_string(),
                None if index == 0 => base.clone(),
                None => format!("{base}-{index}"),
            };
            (index, name, tags.clone())
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
            kill_grace_seconds: None,
            dependencies: Vec::new(),
            legacy_definition: serde_json::Value::Null,
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
