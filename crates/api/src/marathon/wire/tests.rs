use atoll_state::{
    Allocation, AppSpec, ConstraintOperator, DockerNetwork, HealthProtocol, PortSpec, Runtime,
    TaskState, UpgradeStrategy,
};
use serde_json::{json, Value};

use super::parse::NOTHING_TO_RUN;
use super::*;

const V1: &str = "2024-05-01T10:00:00.000Z";
const V2: &str = "2024-05-02T10:00:00.000Z";

fn post(body: Value) -> Result<MarathonApp, ValidationError> {
    parse_app(body.to_string().as_bytes(), V1, None)
}

fn put(base: &MarathonApp, body: Value) -> Result<MarathonApp, ValidationError> {
    parse_app(body.to_string().as_bytes(), V2, Some(base))
}

fn app(body: Value) -> MarathonApp {
    match post(body) {
        Ok(app) => app,
        Err(e) => panic!("expected a valid app, got {e}"),
    }
}

fn paths(error: &ValidationError) -> Vec<&str> {
    error.details.iter().map(|(p, _)| p.as_str()).collect()
}

/// `base` with the top-level fields of `overrides` replaced.
fn with(base: &Value, overrides: Value) -> Value {
    let mut out = base.clone();
    if let (Some(out), Value::Object(overrides)) = (out.as_object_mut(), overrides) {
        out.extend(overrides);
    }
    out
}

fn dynamic_tcp() -> PortSpec {
    PortSpec {
        host_port: 0,
        container_port: None,
        protocol: "tcp".into(),
        name: None,
    }
}

#[test]
fn defaults_are_filled_in() {
    let app = app(json!({ "id": "web", "cmd": "python3 -m http.server $PORT0" }));
    assert_eq!(app.id, "/web");
    assert_eq!(app.version, V1);
    assert_eq!(
        app.runtime,
        Runtime::Exec {
            cmd: "python3 -m http.server $PORT0".into()
        }
    );
    assert_eq!(
        (app.cpus, app.mem, app.disk, app.instances),
        (1.0, 128.0, 0.0, 1)
    );
    assert_eq!(app.ports, vec![dynamic_tcp()]);
    assert!(!app.require_ports);
    assert!(app.env.is_empty() && app.labels.is_empty());
    assert!(app.constraints.is_empty() && app.health_checks.is_empty());
    assert_eq!(
        app.upgrade_strategy,
        UpgradeStrategy {
            minimum_health_capacity: 1.0,
            maximum_over_capacity: 1.0
        }
    );
    assert_eq!(app.backoff_seconds, 1.0);
    assert_eq!(app.backoff_factor, 1.15);
    assert_eq!(app.max_launch_delay_seconds, 300.0);

    let d = &app.definition;
    assert_eq!(d["id"], "/web");
    assert_eq!(d["version"], V1);
    assert_eq!(d["cmd"], "python3 -m http.server $PORT0");
    assert_eq!(d["args"], Value::Null);
    assert_eq!(d["container"], Value::Null);
    assert_eq!(d["cpus"], json!(1));
    assert_eq!(d["mem"], json!(128));
    assert_eq!(d["disk"], json!(0));
    assert_eq!(d["instances"], json!(1));
    assert_eq!(d["backoffSeconds"], json!(1));
    assert_eq!(d["backoffFactor"], json!(1.15));
    assert_eq!(d["maxLaunchDelaySeconds"], json!(300));
    assert_eq!(
        d["upgradeStrategy"],
        json!({ "minimumHealthCapacity": 1, "maximumOverCapacity": 1 })
    );
    assert_eq!(
        d["portDefinitions"],
        json!([{ "port": 0, "protocol": "tcp", "labels": {} }])
    );
    assert_eq!(d["networks"], json!([{ "mode": "host" }]));
    assert_eq!(d["requirePorts"], false);
    assert_eq!(d["env"], json!({}));
    assert_eq!(d["labels"], json!({}));
    assert_eq!(d["constraints"], json!([]));
    assert_eq!(d["healthChecks"], json!([]));
    assert_eq!(d["uris"], json!([]));
    assert_eq!(d["fetch"], json!([]));
    assert_eq!(d["gpus"], json!(0));
    assert_eq!(d["secrets"], json!({}));
    assert_eq!(d["ipAddress"], Value::Null);
    assert_eq!(d["killSelection"], "YOUNGEST_FIRST");
}

#[test]
fn given_values_replace_the_defaults() {
    let app = app(json!({
        "id": "/api",
        "cmd": "serve",
        "cpus": 0.25,
        "mem": 64,
        "disk": 10,
        "instances": 3,
        "env": { "MODE": "prod" },
        "labels": { "SERVICE_TAGS": "a,b" },
        "requirePorts": true,
        "portDefinitions": [{ "port": 8080, "protocol": "udp", "name": "dns", "labels": { "x": "y" } }],
        "upgradeStrategy": { "minimumHealthCapacity": 0.5 },
        "backoffSeconds": 2,
        "backoffFactor": 2.0,
        "maxLaunchDelaySeconds": 60,
    }));
    assert_eq!(
        (app.cpus, app.mem, app.disk, app.instances),
        (0.25, 64.0, 10.0, 3)
    );
    assert_eq!(app.env.get("MODE").map(String::as_str), Some("prod"));
    assert!(app.require_ports);
    assert_eq!(
        app.ports,
        vec![PortSpec {
            host_port: 8080,
            container_port: None,
            protocol: "udp".into(),
            name: Some("dns".into()),
        }]
    );
    assert_eq!(app.upgrade_strategy.minimum_health_capacity, 0.5);
    assert_eq!(app.upgrade_strategy.maximum_over_capacity, 1.0);
    assert_eq!(
        (
            app.backoff_seconds,
            app.backoff_factor,
            app.max_launch_delay_seconds
        ),
        (2.0, 2.0, 60.0)
    );
    assert_eq!(app.definition["cpus"], json!(0.25));
    assert_eq!(
        app.definition["portDefinitions"],
        json!([{ "port": 8080, "protocol": "udp", "name": "dns", "labels": { "x": "y" } }])
    );
}

#[test]
fn health_check_defaults_are_filled_in() {
    let app = app(json!({
        "id": "/web",
        "cmd": "serve",
        "healthChecks": [{}, { "protocol": "TCP" }, { "protocol": "COMMAND", "command": { "value": "true" } }],
    }));
    let http = &app.health_checks[0];
    assert_eq!(http.protocol, HealthProtocol::Http);
    assert_eq!(http.path, "/");
    assert_eq!(http.port_index, 0);
    assert_eq!(http.command, None);
    assert_eq!(
        (
            http.grace_period_seconds,
            http.interval_seconds,
            http.timeout_seconds,
            http.max_consecutive_failures
        ),
        (300, 60, 20, 3)
    );
    assert_eq!(app.health_checks[1].protocol, HealthProtocol::Tcp);
    assert_eq!(app.health_checks[2].protocol, HealthProtocol::Command);
    assert_eq!(app.health_checks[2].command.as_deref(), Some("true"));
    assert_eq!(
        app.definition["healthChecks"][0],
        json!({
            "protocol": "HTTP",
            "path": "/",
            "portIndex": 0,
            "gracePeriodSeconds": 300,
            "intervalSeconds": 60,
            "timeoutSeconds": 20,
            "maxConsecutiveFailures": 3,
            "delaySeconds": 15,
            "ignoreHttp1xx": false,
        })
    );
    assert_eq!(
        app.definition["healthChecks"][2]["command"],
        json!({ "value": "true" })
    );
}

#[test]
fn mesos_health_protocols_map_to_plain_ones_and_echo_as_given() {
    let app = app(json!({
        "id": "/web",
        "cmd": "serve",
        "healthChecks": [{ "protocol": "MESOS_HTTP", "path": "/health" }, { "protocol": "mesos_tcp" }],
    }));
    assert_eq!(app.health_checks[0].protocol, HealthProtocol::Http);
    assert_eq!(app.health_checks[0].path, "/health");
    assert_eq!(app.health_checks[1].protocol, HealthProtocol::Tcp);
    assert_eq!(app.definition["healthChecks"][0]["protocol"], "MESOS_HTTP");
    assert_eq!(app.definition["healthChecks"][1]["protocol"], "MESOS_TCP");
}

#[test]
fn docker_bridge_publishes_port_mappings() {
    let app = app(json!({
        "id": "/nginx",
        "container": {
            "type": "DOCKER",
            "docker": {
                "image": "nginx:1.25",
                "network": "BRIDGE",
                "portMappings": [
                    { "containerPort": 80, "hostPort": 0, "servicePort": 10000, "protocol": "tcp", "name": "http" },
                    { "containerPort": 53, "hostPort": 5353, "protocol": "udp,tcp" },
                ],
                "forcePull": true,
                "privileged": false,
                "parameters": [],
            },
            "volumes": [],
        },
    }));
    assert_eq!(
        app.runtime,
        Runtime::Docker {
            image: "nginx:1.25".into(),
            network: DockerNetwork::Bridge,
            cmd: None,
            args: vec![],
            force_pull: true,
        }
    );
    assert_eq!(
        app.ports,
        vec![
            PortSpec {
                host_port: 0,
                container_port: Some(80),
                protocol: "tcp".into(),
                name: Some("http".into()),
            },
            PortSpec {
                host_port: 5353,
                container_port: Some(53),
                protocol: "udp,tcp".into(),
                name: None,
            },
        ]
    );
    let d = &app.definition;
    assert_eq!(d["portDefinitions"], json!([]));
    assert_eq!(d["networks"], json!([{ "mode": "container/bridge" }]));
    assert_eq!(d["container"]["type"], "DOCKER");
    assert_eq!(d["container"]["docker"]["network"], "BRIDGE");
    assert_eq!(d["container"]["docker"]["forcePull"], true);
    let mappings = &d["container"]["docker"]["portMappings"];
    assert_eq!(
        mappings[0],
        json!({ "containerPort": 80, "hostPort": 0, "servicePort": 10000, "protocol": "tcp", "name": "http", "labels": {} })
    );
    assert_eq!(mappings[1]["protocol"], "udp,tcp");
    assert_eq!(&d["container"]["portMappings"], mappings);
}

#[test]
fn marathon_1_5_networks_and_container_port_mappings_are_understood() {
    let app = app(json!({
        "id": "/nginx",
        "networks": [{ "mode": "container/bridge" }],
        "container": {
            "type": "DOCKER",
            "docker": { "image": "nginx" },
            "portMappings": [{ "containerPort": 80 }],
        },
    }));
    assert!(matches!(
        app.runtime,
        Runtime::Docker {
            network: DockerNetwork::Bridge,
            ..
        }
    ));
    assert_eq!(app.ports.len(), 1);
    assert_eq!(app.ports[0].container_port, Some(80));
    assert_eq!(app.ports[0].host_port, 0);
}

#[test]
fn docker_defaults_to_host_networking_with_port_definitions() {
    let app = app(json!({
        "id": "/redis",
        "cmd": "redis-server --port $PORT0",
        "container": { "docker": { "image": "redis" } },
        "portDefinitions": [{ "port": 6379 }],
    }));
    assert_eq!(
        app.runtime,
        Runtime::Docker {
            image: "redis".into(),
            network: DockerNetwork::Host,
            cmd: Some("redis-server --port $PORT0".into()),
            args: vec![],
            force_pull: false,
        }
    );
    assert_eq!(app.ports[0].host_port, 6379);
    assert_eq!(app.ports[0].container_port, None);
    assert_eq!(app.definition["container"]["docker"]["network"], "HOST");
    assert_eq!(
        app.definition["container"]["docker"].get("portMappings"),
        None
    );
    assert_eq!(app.definition["portDefinitions"][0]["port"], 6379);
    assert_eq!(app.definition["cmd"], "redis-server --port $PORT0");
}

#[test]
fn docker_args_override_the_image_arguments() {
    let app = app(json!({
        "id": "/echo",
        "args": ["-text", "hello world"],
        "container": { "type": "DOCKER", "docker": { "image": "hashicorp/http-echo" } },
    }));
    let Runtime::Docker { cmd, args, .. } = &app.runtime else {
        panic!("expected docker, got {:?}", app.runtime);
    };
    assert_eq!(cmd, &None);
    assert_eq!(args, &vec!["-text".to_string(), "hello world".to_string()]);
    assert_eq!(app.definition["args"], json!(["-text", "hello world"]));
    assert_eq!(app.definition["cmd"], Value::Null);
}

#[test]
fn mesos_container_with_an_image_runs_it_and_without_one_is_a_plain_command() {
    let ucr = app(json!({
        "id": "/ucr",
        "container": { "type": "MESOS", "docker": { "image": "busybox" } },
        "cmd": "sleep 100",
    }));
    assert!(matches!(ucr.runtime, Runtime::Docker { .. }));
    assert_eq!(ucr.definition["container"]["type"], "MESOS");

    let plain =
        app(json!({ "id": "/plain", "container": { "type": "MESOS" }, "cmd": "sleep 100" }));
    assert_eq!(
        plain.runtime,
        Runtime::Exec {
            cmd: "sleep 100".into()
        }
    );
    assert_eq!(plain.definition["container"], Value::Null);
}

#[test]
fn exec_args_run_as_one_quoted_command_and_echo_as_args() {
    let app = app(json!({ "id": "/a", "args": ["echo", "hello world", "it's", "$HOME", "a=b"] }));
    assert_eq!(
        app.runtime,
        Runtime::Exec {
            cmd: r#"echo 'hello world' 'it'\''s' '$HOME' a=b"#.into()
        }
    );
    assert_eq!(
        app.definition["args"],
        json!(["echo", "hello world", "it's", "$HOME", "a=b"])
    );
    assert_eq!(app.definition["cmd"], Value::Null);
}

#[test]
fn legacy_ports_and_empty_port_lists() {
    let legacy = app(json!({ "id": "/a", "cmd": "x", "ports": [8080, 0] }));
    assert_eq!(
        legacy.ports.iter().map(|p| p.host_port).collect::<Vec<_>>(),
        vec![8080, 0]
    );
    assert_eq!(legacy.definition["portDefinitions"][0]["port"], 8080);
    assert_eq!(legacy.definition.get("ports"), None);

    let none = app(json!({ "id": "/a", "cmd": "x", "portDefinitions": [] }));
    assert!(none.ports.is_empty());
    let none = app(json!({ "id": "/a", "cmd": "x", "ports": [] }));
    assert!(none.ports.is_empty());

    let bridge_without_mappings = app(json!({
        "id": "/a",
        "container": { "docker": { "image": "x", "network": "BRIDGE" } },
    }));
    assert!(bridge_without_mappings.ports.is_empty());

    // Both forms, agreeing, as an older Marathon answer echoes them.
    let both =
        app(json!({ "id": "/a", "cmd": "x", "ports": [80], "portDefinitions": [{ "port": 80 }] }));
    assert_eq!(both.ports[0].host_port, 80);
}

#[test]
fn constraints_parse_case_insensitively_and_echo_upper_case() {
    let app = app(json!({
        "id": "/a",
        "cmd": "x",
        "constraints": [
            ["hostname", "unique"],
            ["rack", "GROUP_BY", "3"],
            ["rack", "group_by"],
            ["zone", "CLUSTER", "a"],
            ["hostname", "LIKE", "node-[0-9]+"],
            ["hostname", "UNLIKE", "db.*"],
            ["rack", "MAX_PER", 2],
        ],
    }));
    let ops: Vec<(ConstraintOperator, Option<&str>)> = app
        .constraints
        .iter()
        .map(|c| (c.operator, c.value.as_deref()))
        .collect();
    assert_eq!(
        ops,
        vec![
            (ConstraintOperator::Unique, None),
            (ConstraintOperator::GroupBy, Some("3")),
            (ConstraintOperator::GroupBy, None),
            (ConstraintOperator::Cluster, Some("a")),
            (ConstraintOperator::Like, Some("node-[0-9]+")),
            (ConstraintOperator::Unlike, Some("db.*")),
            (ConstraintOperator::MaxPer, Some("2")),
        ]
    );
    assert_eq!(app.constraints[0].field, "hostname");
    assert_eq!(
        app.definition["constraints"][0],
        json!(["hostname", "UNIQUE"])
    );
    assert_eq!(
        app.definition["constraints"][6],
        json!(["rack", "MAX_PER", "2"])
    );
}

#[test]
fn ignored_fields_are_accepted_and_echoed() {
    let app = app(json!({
        "id": "/a",
        "cmd": "x",
        "user": "nobody",
        "executor": "",
        "uris": ["http://example.com/a.tgz"],
        "fetch": [{ "uri": "http://example.com/b.tgz" }],
        "storeUrls": [],
        "dependencies": ["/b"],
        "acceptedResourceRoles": ["*"],
        "residency": null,
        "secrets": {},
        "unreachableStrategy": { "inactiveAfterSeconds": 60, "expungeAfterSeconds": 120 },
        "killSelection": "OLDEST_FIRST",
        "taskKillGracePeriodSeconds": 30,
        "gpus": 0,
        "version": "1999-01-01T00:00:00.000Z",
        "ipAddress": null,
        "readinessChecks": [],
        "tasksRunning": 7,
        "somethingUnknown": true,
    }));
    let d = &app.definition;
    assert_eq!(d["user"], "nobody");
    assert_eq!(d["uris"], json!(["http://example.com/a.tgz"]));
    assert_eq!(d["dependencies"], json!(["/b"]));
    assert_eq!(d["acceptedResourceRoles"], json!(["*"]));
    assert_eq!(d["unreachableStrategy"]["expungeAfterSeconds"], 120);
    assert_eq!(d["killSelection"], "OLDEST_FIRST");
    assert_eq!(d["taskKillGracePeriodSeconds"], 30);
    assert_eq!(
        app.kill_grace_seconds,
        Some(30.0),
        "the typed value the nodes act on"
    );
    assert_eq!(d["version"], V1, "the submitted version is ignored");
    assert_eq!(d.get("tasksRunning"), None);
    assert_eq!(d.get("somethingUnknown"), None);
}

#[test]
fn ids_are_normalized_to_absolute_paths() {
    for (given, expected) in [
        ("web", "/web"),
        ("/web", "/web"),
        ("/web/", "/web"),
        ("prod/web", "/prod/web"),
        ("/prod/eu-1/web-2", "/prod/eu-1/web-2"),
        ("/a/b/c/d", "/a/b/c/d"),
        ("0", "/0"),
    ] {
        assert_eq!(
            app(json!({ "id": given, "cmd": "x" })).id,
            expected,
            "{given}"
        );
    }
    for bad in [
        "",
        "/",
        "Web",
        "/prod//web",
        "/a/../b",
        "./a",
        "-a",
        "a-",
        "a_b",
        "a.b",
        "a b",
    ] {
        let error = post(json!({ "id": bad, "cmd": "x" })).expect_err(bad);
        assert_eq!(paths(&error), vec!["/id"], "{bad}");
    }
    let relative = post(json!({ "id": "/a/../b", "cmd": "x" })).unwrap_err();
    assert!(relative.details[0].1.contains("relative"), "{relative}");
}

#[test]
fn a_valid_id_has_the_same_absolute_form_when_a_path_names_it() {
    for given in ["web", "/web", "/web/", "prod/web", "/prod/eu-1/web-2"] {
        assert_eq!(
            normalize_app_id(given).as_deref(),
            Ok(absolute_app_id(given).as_str()),
            "{given}"
        );
    }
    // A request's path may carry extra slashes at its ends; a definition's id may not.
    assert_eq!(absolute_app_id("//prod/web//"), "/prod/web");
    assert!(normalize_app_id("//prod/web").is_err());
}

#[test]
fn every_validation_error_names_its_field() {
    let exec = json!({ "id": "/a", "cmd": "x" });
    let docker =
        json!({ "id": "/a", "container": { "type": "DOCKER", "docker": { "image": "nginx" } } });
    let bridge = |docker_fields: Value| {
        let mut docker_object = json!({ "image": "nginx", "network": "BRIDGE" });
        if let (Some(o), Value::Object(extra)) = (docker_object.as_object_mut(), docker_fields) {
            o.extend(extra);
        }
        json!({ "id": "/a", "container": { "type": "DOCKER", "docker": docker_object } })
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "cmd": "x" }), "/id"),
        (json!({ "id": 5, "cmd": "x" }), "/id"),
        (json!({ "id": "/a" }), "/"),
        (json!({ "id": "/a", "cmd": "x", "args": ["y"] }), "/"),
        (json!({ "id": "/a", "cmd": 5, "args": ["y"] }), "/cmd"),
        (with(&exec, json!({ "cmd": " " })), "/cmd"),
        (json!({ "id": "/a", "args": ["x", 1] }), "/args(1)"),
        (with(&exec, json!({ "args": "x" })), "/args"),
        (with(&exec, json!({ "cpus": -1 })), "/cpus"),
        (with(&exec, json!({ "cpus": "1" })), "/cpus"),
        (with(&exec, json!({ "mem": -64 })), "/mem"),
        (with(&exec, json!({ "disk": -1 })), "/disk"),
        (with(&exec, json!({ "instances": -1 })), "/instances"),
        (with(&exec, json!({ "instances": 1.5 })), "/instances"),
        (
            with(&exec, json!({ "instances": 5_000_000_000u64 })),
            "/instances",
        ),
        (with(&exec, json!({ "env": { "A": 1 } })), "/env/A"),
        (
            with(&exec, json!({ "env": { "DB": { "secret": "db" } } })),
            "/env/DB",
        ),
        (with(&exec, json!({ "env": [] })), "/env"),
        (with(&exec, json!({ "labels": { "A": true } })), "/labels/A"),
        (with(&exec, json!({ "ports": [70000] })), "/ports(0)"),
        (with(&exec, json!({ "ports": ["80"] })), "/ports(0)"),
        (
            with(
                &exec,
                json!({ "ports": [80], "portDefinitions": [{ "port": 81 }] }),
            ),
            "/ports",
        ),
        (
            with(&exec, json!({ "portDefinitions": [{ "port": -1 }] })),
            "/portDefinitions(0)/port",
        ),
        (
            with(
                &exec,
                json!({ "portDefinitions": [{ "port": 1, "protocol": "sctp" }] }),
            ),
            "/portDefinitions(0)/protocol",
        ),
        (
            with(
                &exec,
                json!({ "portDefinitions": [{ "port": 1, "name": "Bad_Name" }] }),
            ),
            "/portDefinitions(0)/name",
        ),
        (
            with(
                &exec,
                json!({ "portDefinitions": [{ "port": 1, "labels": { "a": 1 } }] }),
            ),
            "/portDefinitions(0)/labels/a",
        ),
        (
            with(&exec, json!({ "portDefinitions": [5] })),
            "/portDefinitions(0)",
        ),
        (
            with(
                &exec,
                json!({ "portDefinitions": [{ "port": 80 }, { "port": 80 }] }),
            ),
            "/portDefinitions",
        ),
        (
            with(
                &exec,
                json!({ "portDefinitions": [{ "port": 0, "name": "a" }, { "port": 0, "name": "a" }] }),
            ),
            "/portDefinitions",
        ),
        (
            with(&exec, json!({ "requirePorts": "yes" })),
            "/requirePorts",
        ),
        (with(&exec, json!({ "container": "DOCKER" })), "/container"),
        (
            with(&exec, json!({ "container": { "type": "RKT" } })),
            "/container/type",
        ),
        (
            json!({ "id": "/a", "container": { "type": "DOCKER", "docker": {} } }),
            "/container/docker/image",
        ),
        (
            json!({ "id": "/a", "container": { "type": "DOCKER" } }),
            "/container/docker/image",
        ),
        (
            json!({ "id": "/a", "container": { "docker": { "image": "" } } }),
            "/container/docker/image",
        ),
        (
            bridge(json!({ "network": "USER" })),
            "/container/docker/network",
        ),
        (
            bridge(json!({ "network": "OVERLAY" })),
            "/container/docker/network",
        ),
        (
            bridge(json!({ "portMappings": [{ "hostPort": 1 }] })),
            "/container/docker/portMappings(0)/containerPort",
        ),
        (
            bridge(json!({ "portMappings": [{ "containerPort": 70000 }] })),
            "/container/docker/portMappings(0)/containerPort",
        ),
        (
            bridge(json!({ "portMappings": [{ "containerPort": 1, "hostPort": -2 }] })),
            "/container/docker/portMappings(0)/hostPort",
        ),
        (
            bridge(json!({ "portMappings": [{ "containerPort": 1, "protocol": "icmp" }] })),
            "/container/docker/portMappings(0)/protocol",
        ),
        (
            bridge(
                json!({ "portMappings": [{ "containerPort": 1, "hostPort": 9 }, { "containerPort": 2, "hostPort": 9 }] }),
            ),
            "/container/docker/portMappings",
        ),
        (
            bridge(json!({ "forcePull": "no" })),
            "/container/docker/forcePull",
        ),
        (
            bridge(json!({ "privileged": true })),
            "/container/docker/privileged",
        ),
        (
            bridge(json!({ "parameters": [{ "key": "cap-add", "value": "NET_ADMIN" }] })),
            "/container/docker/parameters",
        ),
        (
            json!({ "id": "/a", "container": { "docker": { "image": "x", "network": "HOST", "portMappings": [{ "containerPort": 80 }] } } }),
            "/container/docker/portMappings",
        ),
        (
            with(
                &bridge(json!({})),
                json!({ "portDefinitions": [{ "port": 80 }] }),
            ),
            "/portDefinitions",
        ),
        (with(&bridge(json!({})), json!({ "ports": [80] })), "/ports"),
        (
            json!({ "id": "/a", "container": { "docker": { "image": "x" }, "volumes": [{ "containerPath": "/data", "hostPath": "/srv", "mode": "RW" }] } }),
            "/container/volumes",
        ),
        (
            json!({ "id": "/a", "container": {
                "docker": { "image": "x", "network": "BRIDGE", "portMappings": [{ "containerPort": 80 }] },
                "portMappings": [{ "containerPort": 81 }],
            } }),
            "/container/portMappings",
        ),
        (
            with(
                &docker,
                json!({ "networks": [{ "mode": "container", "name": "overlay" }] }),
            ),
            "/networks(0)/mode",
        ),
        (
            with(&docker, json!({ "networks": [{ "mode": "weird" }] })),
            "/networks(0)/mode",
        ),
        (
            with(
                &docker,
                json!({ "networks": [{ "mode": "host" }, { "mode": "host" }] }),
            ),
            "/networks",
        ),
        (with(&docker, json!({ "networks": "host" })), "/networks"),
        (
            json!({ "id": "/a", "networks": [{ "mode": "container/bridge" }], "container": { "docker": { "image": "x", "network": "HOST" } } }),
            "/networks(0)/mode",
        ),
        (
            with(
                &exec,
                json!({ "networks": [{ "mode": "container/bridge" }] }),
            ),
            "/networks(0)/mode",
        ),
        (
            with(&exec, json!({ "constraints": "hostname:UNIQUE" })),
            "/constraints",
        ),
        (
            with(&exec, json!({ "constraints": ["hostname"] })),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["hostname"]] })),
            "/constraints(0)",
        ),
        (
            with(
                &exec,
                json!({ "constraints": [["hostname", "UNIQUE", "x", "y"]] }),
            ),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["", "UNIQUE"]] })),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [[1, "UNIQUE"]] })),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["hostname", "IS", "a"]] })),
            "/constraints(0)",
        ),
        (
            with(
                &exec,
                json!({ "constraints": [["hostname", "UNIQUE", "x"]] }),
            ),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["hostname", "LIKE"]] })),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["hostname", "UNLIKE"]] })),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["rack", "MAX_PER"]] })),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["rack", "MAX_PER", "0"]] })),
            "/constraints(0)",
        ),
        (
            with(
                &exec,
                json!({ "constraints": [["rack", "GROUP_BY", "many"]] }),
            ),
            "/constraints(0)",
        ),
        (
            with(&exec, json!({ "constraints": [["rack", "CLUSTER", true]] })),
            "/constraints(0)",
        ),
        (with(&exec, json!({ "healthChecks": {} })), "/healthChecks"),
        (
            with(&exec, json!({ "healthChecks": [1] })),
            "/healthChecks(0)",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "protocol": "HTTPS" }] })),
            "/healthChecks(0)/protocol",
        ),
        (
            with(
                &exec,
                json!({ "healthChecks": [{ "protocol": "MESOS_HTTPS" }] }),
            ),
            "/healthChecks(0)/protocol",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "protocol": "UDP" }] })),
            "/healthChecks(0)/protocol",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "path": 5 }] })),
            "/healthChecks(0)/path",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "portIndex": 1 }] })),
            "/healthChecks(0)/portIndex",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "portIndex": -1 }] })),
            "/healthChecks(0)/portIndex",
        ),
        (
            with(
                &exec,
                json!({ "portDefinitions": [], "healthChecks": [{ "protocol": "TCP" }] }),
            ),
            "/healthChecks(0)/portIndex",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "port": 8080 }] })),
            "/healthChecks(0)/port",
        ),
        (
            with(
                &exec,
                json!({ "healthChecks": [{ "protocol": "COMMAND" }] }),
            ),
            "/healthChecks(0)/command",
        ),
        (
            with(
                &exec,
                json!({ "healthChecks": [{ "protocol": "COMMAND", "command": { "value": 1 } }] }),
            ),
            "/healthChecks(0)/command/value",
        ),
        (
            with(
                &exec,
                json!({ "healthChecks": [{ "gracePeriodSeconds": -1 }] }),
            ),
            "/healthChecks(0)/gracePeriodSeconds",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "intervalSeconds": 0 }] })),
            "/healthChecks(0)/intervalSeconds",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "timeoutSeconds": 0 }] })),
            "/healthChecks(0)/timeoutSeconds",
        ),
        (
            with(
                &exec,
                json!({ "healthChecks": [{ "maxConsecutiveFailures": "3" }] }),
            ),
            "/healthChecks(0)/maxConsecutiveFailures",
        ),
        (
            with(&exec, json!({ "healthChecks": [{ "ignoreHttp1xx": 1 }] })),
            "/healthChecks(0)/ignoreHttp1xx",
        ),
        (
            with(&exec, json!({ "upgradeStrategy": [] })),
            "/upgradeStrategy",
        ),
        (
            with(
                &exec,
                json!({ "upgradeStrategy": { "minimumHealthCapacity": 1.5 } }),
            ),
            "/upgradeStrategy/minimumHealthCapacity",
        ),
        (
            with(
                &exec,
                json!({ "upgradeStrategy": { "maximumOverCapacity": -0.1 } }),
            ),
            "/upgradeStrategy/maximumOverCapacity",
        ),
        (
            with(&exec, json!({ "backoffSeconds": -1 })),
            "/backoffSeconds",
        ),
        (
            with(&exec, json!({ "backoffFactor": 0.5 })),
            "/backoffFactor",
        ),
        (
            with(&exec, json!({ "maxLaunchDelaySeconds": -1 })),
            "/maxLaunchDelaySeconds",
        ),
        (
            with(
                &exec,
                json!({ "secrets": { "db": { "source": "db-password" } } }),
            ),
            "/secrets",
        ),
        (with(&exec, json!({ "gpus": 1 })), "/gpus"),
        (
            with(&exec, json!({ "ipAddress": { "networkName": "dcos" } })),
            "/ipAddress",
        ),
        (
            with(&exec, json!({ "readinessChecks": [{ "name": "ready" }] })),
            "/readinessChecks",
        ),
        (
            with(&exec, json!({ "killSelection": "RANDOM" })),
            "/killSelection",
        ),
        (with(&exec, json!({ "uris": "http://x" })), "/uris"),
        (with(&exec, json!({ "user": 0 })), "/user"),
        (
            with(&exec, json!({ "taskKillGracePeriodSeconds": -1 })),
            "/taskKillGracePeriodSeconds",
        ),
        (
            with(&exec, json!({ "unreachableStrategy": 5 })),
            "/unreachableStrategy",
        ),
    ];
    for (body, expected) in cases {
        match post(body.clone()) {
            Ok(_) => panic!("{body} should be refused at {expected}"),
            Err(error) => assert_eq!(paths(&error), vec![expected], "{body}: {error}"),
        }
    }
}

#[test]
fn refusals_explain_themselves() {
    let message = |body: Value| {
        let error = post(body).unwrap_err();
        error.details[0].1.clone()
    };
    assert!(
        message(json!({ "id": "/a", "cmd": "x", "env": { "DB": { "secret": "db" } } }))
            .contains("secret")
    );
    assert!(message(json!({ "id": "/a", "cmd": "x", "cpus": -1 })).contains("-1"));
    assert!(message(json!({ "id": "/a", "cmd": "x", "cpus": "1" }))
        .contains("expected a number, got a string"));
    assert!(
        message(json!({ "id": "/a", "cmd": "x", "healthChecks": [{ "portIndex": 3 }] }))
            .contains("1 port")
    );
    assert!(
        message(json!({ "id": "/a", "cmd": "x", "constraints": [["h", "IS", "a"]] }))
            .contains("MAX_PER")
    );
    assert!(
        message(json!({ "id": "/a", "cmd": "x", "healthChecks": [{ "protocol": "HTTPS" }] }))
            .contains("not supported")
    );
    assert_eq!(message(json!({ "id": "/a" })), NOTHING_TO_RUN);
}

#[test]
fn all_problems_are_reported_at_once() {
    let error = post(json!({
        "id": "Bad",
        "cmd": "x",
        "cpus": -1,
        "mem": "lots",
        "healthChecks": [{ "protocol": "HTTPS", "portIndex": 4 }],
    }))
    .unwrap_err();
    assert_eq!(
        paths(&error),
        vec![
            "/id",
            "/cpus",
            "/mem",
            "/healthChecks(0)/protocol",
            "/healthChecks(0)/portIndex"
        ]
    );
}

#[test]
fn malformed_bodies_are_refused_at_the_root() {
    for body in [&b""[..], b"  ", b"{", b"[1]", b"\"app\"", b"null"] {
        let error = parse_app(body, V1, None).unwrap_err();
        assert_eq!(
            paths(&error),
            vec!["/"],
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn validation_error_json_is_marathons_422_body() {
    let error = ValidationError {
        details: vec![
            ("/cpus".into(), "got -1, expected 0 or more".into()),
            ("/id".into(), "is required".into()),
            ("/cpus".into(), "another".into()),
        ],
    };
    assert_eq!(
        error.to_json(),
        json!({
            "message": "Object is not valid",
            "details": [
                { "path": "/cpus", "errors": ["got -1, expected 0 or more", "another"] },
                { "path": "/id", "errors": ["is required"] },
            ],
        })
    );
    assert_eq!(
        error.to_string(),
        "Object is not valid: /cpus: got -1, expected 0 or more; /id: is required; /cpus: another"
    );
}

fn base_app() -> MarathonApp {
    app(json!({
        "id": "/prod/web",
        "args": ["serve", "--port", "$PORT0"],
        "cpus": 0.5,
        "mem": 256,
        "instances": 2,
        "env": { "MODE": "prod" },
        "labels": { "team": "a" },
        "portDefinitions": [{ "port": 0, "name": "http" }, { "port": 9100 }],
        "constraints": [["hostname", "UNIQUE"]],
        "healthChecks": [{ "protocol": "HTTP", "path": "/health", "portIndex": 0 }],
        "upgradeStrategy": { "minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.2 },
        "uris": ["http://example.com/app.tgz"],
    }))
}

#[test]
fn put_keeps_the_fields_the_update_leaves_out() {
    let base = base_app();
    let scaled = put(&base, json!({ "instances": 5 })).unwrap();
    assert_eq!(scaled.instances, 5);
    assert_eq!(scaled.id, "/prod/web");
    assert_eq!(scaled.version, V2);
    assert_eq!(scaled.definition["version"], V2);
    let mut same = scaled.clone();
    same.instances = base.instances;
    same.version = base.version.clone();
    same.definition = base.definition.clone();
    assert_eq!(same, base, "only instances changed");
    assert_eq!(scaled.definition["args"], base.definition["args"]);
    assert_eq!(
        scaled.definition["uris"],
        json!(["http://example.com/app.tgz"])
    );
    assert_eq!(scaled.definition["instances"], 5);

    let relabelled = put(&base, json!({ "labels": { "team": "b" }, "cpus": 1 })).unwrap();
    assert_eq!(relabelled.labels.get("team").map(String::as_str), Some("b"));
    assert_eq!(relabelled.cpus, 1.0);
    assert_eq!(relabelled.mem, 256.0);
    assert_eq!(relabelled.ports, base.ports);
    assert_eq!(relabelled.health_checks, base.health_checks);
}

#[test]
fn put_with_the_path_id_and_nothing_else_changes_nothing_but_the_version() {
    let base = base_app();
    let again = put(&base, json!({ "id": "/prod/web" })).unwrap();
    let mut same = again.clone();
    same.version = base.version.clone();
    same.definition["version"] = json!(base.version);
    assert_eq!(same, base);
}

#[test]
fn put_of_a_new_command_replaces_args_and_the_other_way_round() {
    let base = base_app();
    let with_cmd = put(&base, json!({ "cmd": "serve-v2" })).unwrap();
    assert_eq!(
        with_cmd.runtime,
        Runtime::Exec {
            cmd: "serve-v2".into()
        }
    );
    assert_eq!(with_cmd.definition["args"], Value::Null);
    let with_args = put(&with_cmd, json!({ "args": ["serve-v3"] })).unwrap();
    assert_eq!(
        with_args.runtime,
        Runtime::Exec {
            cmd: "serve-v3".into()
        }
    );
    let legacy_ports = put(&base, json!({ "ports": [7000] })).unwrap();
    assert_eq!(legacy_ports.ports.len(), 1);
    assert_eq!(legacy_ports.ports[0].host_port, 7000);
}

#[test]
fn put_switching_networking_drops_ports_of_the_old_mode() {
    let base = base_app();
    let bridged = put(
        &base,
        json!({
            "args": null,
            "container": { "type": "DOCKER", "docker": {
                "image": "web:2", "network": "BRIDGE", "portMappings": [{ "containerPort": 8080 }],
            } },
        }),
    )
    .unwrap();
    assert_eq!(bridged.ports.len(), 1);
    assert_eq!(bridged.ports[0].container_port, Some(8080));
    assert_eq!(bridged.definition["portDefinitions"], json!([]));

    // Only the image changes: networking and mappings carry over via the container.
    let new_image = put(
        &bridged,
        json!({ "container": { "docker": { "image": "web:3", "network": "BRIDGE", "portMappings": [{ "containerPort": 8080 }] } } }),
    )
    .unwrap();
    assert_eq!(new_image.ports, bridged.ports);

    // Marathon 1.5 style: networks switch alone; the old docker.network must not conflict.
    let host = put(
        &bridged,
        json!({ "networks": [{ "mode": "host" }], "container": {
        "docker": { "image": "web:3" } } }),
    )
    .unwrap();
    assert!(matches!(
        host.runtime,
        Runtime::Docker {
            network: DockerNetwork::Host,
            ..
        }
    ));
    assert_eq!(
        host.ports,
        vec![dynamic_tcp()],
        "back to Marathon's default port"
    );

    let networks_only = put(&bridged, json!({ "networks": [{ "mode": "host" }] }));
    // The mappings of the old container stay, and HOST networking refuses them.
    assert_eq!(
        paths(&networks_only.unwrap_err()),
        vec!["/container/docker/portMappings"]
    );

    // A container without a network keeps the current mode (given as `networks`).
    let keeps = put(&bridged, json!({ "container": { "docker": { "image": "web:4" }, "portMappings": [{ "containerPort": 80 }] } }))
        .unwrap();
    assert!(matches!(
        keeps.runtime,
        Runtime::Docker {
            network: DockerNetwork::Bridge,
            ..
        }
    ));

    // Back to a plain command.
    let plain = put(&bridged, json!({ "container": null, "cmd": "serve" })).unwrap();
    assert_eq!(
        plain.runtime,
        Runtime::Exec {
            cmd: "serve".into()
        }
    );
    assert_eq!(plain.ports, vec![dynamic_tcp()]);
}

#[test]
fn put_is_validated_like_a_post() {
    let base = base_app();
    let error = put(&base, json!({ "cpus": -2, "portDefinitions": [] })).unwrap_err();
    assert_eq!(paths(&error), vec!["/cpus", "/healthChecks(0)/portIndex"]);
}

#[test]
fn put_over_an_app_without_a_stored_definition_uses_its_fields() {
    let mut base = base_app();
    base.definition = Value::Null;
    let scaled = put(&base, json!({ "instances": 1 })).unwrap();
    assert_eq!(scaled.ports, base.ports);
    assert_eq!(scaled.health_checks, base.health_checks);
    assert_eq!(scaled.cpus, base.cpus);
}

#[test]
fn an_echoed_answer_parses_back_to_the_same_app() {
    let bodies = [
        json!({ "id": "/a", "cmd": "x", "healthChecks": [{ "protocol": "TCP" }] }),
        json!({ "id": "/a", "args": ["a b"], "ports": [0, 8000] }),
        json!({ "id": "/b", "container": { "type": "DOCKER", "docker": {
            "image": "nginx", "network": "BRIDGE",
            "portMappings": [{ "containerPort": 80, "servicePort": 10001, "labels": { "VIP_0": "x" } }] } },
            "constraints": [["rack", "group_by", "2"]],
            "healthChecks": [{ "protocol": "MESOS_HTTP", "ignoreHttp1xx": true, "delaySeconds": 3 }] }),
        json!({ "id": "/c", "cmd": "x", "container": { "type": "MESOS", "docker": { "image": "busybox" } } }),
    ];
    for body in bodies {
        let first = app(body);
        // What a client GETs, including status fields, sent back as is.
        let answer = app_json(&first, &[], &|t| t.node.clone(), &|_| None, &[], None, true);
        let second = app(answer);
        assert_eq!(second, first);
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

fn task(id: &str, state: TaskState) -> Allocation {
    Allocation {
        id: id.into(),
        app_id: "/prod/web".into(),
        app_version: V1.into(),
        node: "node-1".into(),
        ports: vec![31000, 31001],
        cpus: 0.5,
        mem: 256.0,
        desired_running: true,
        state,
        message: String::new(),
        staged_at: "2024-05-01T10:00:01.000Z".into(),
        started_at: (state == TaskState::Running).then(|| "2024-05-01T10:00:02.000Z".to_string()),
        health_failures: 0,
        services: vec![],
        create_index: 1,
        modify_index: 1,
    }
}

#[test]
fn app_json_counts_tasks_by_state_and_health() {
    let app = base_app();
    let tasks = vec![
        task("t-staging", TaskState::Staging),
        task("t-starting", TaskState::Starting),
        task("t-healthy", TaskState::Running),
        task("t-sick", TaskState::Running),
        task("t-unknown", TaskState::Running),
        task("t-failed", TaskState::Failed),
        task("t-killed", TaskState::Killed),
    ];
    let healthy = |t: &Allocation| match t.id.as_str() {
        "t-sick" => Some(false),
        "t-unknown" => None,
        // Staging tasks claim health here; only running ones may count.
        _ => Some(true),
    };
    let failure = json!({ "taskId": "t-failed", "state": "TASK_FAILED" });
    let out = app_json(
        &app,
        &tasks,
        &|task| format!("10.0.0.{}", task.node.len()),
        &healthy,
        &[json!({ "id": "d-1" }), json!("d-2")],
        Some(failure.clone()),
        false,
    );
    assert_eq!(out["tasksStaged"], 2);
    assert_eq!(out["tasksRunning"], 3);
    assert_eq!(out["tasksHealthy"], 1);
    assert_eq!(out["tasksUnhealthy"], 1);
    assert_eq!(
        out["deployments"],
        json!([{ "id": "d-1" }, { "id": "d-2" }])
    );
    assert_eq!(out["lastTaskFailure"], failure);
    assert_eq!(out["version"], V1);
    assert_eq!(
        out["versionInfo"],
        json!({ "lastScalingAt": V1, "lastConfigChangeAt": V1 })
    );
    assert_eq!(out["id"], "/prod/web");
    assert_eq!(out["cpus"], json!(0.5));
    assert_eq!(out.get("tasks"), None, "tasks only when embedded");

    let embedded = app_json(
        &app,
        &tasks,
        &|_| "10.0.0.7".into(),
        &healthy,
        &[],
        None,
        true,
    );
    let listed: Vec<&str> = embedded["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![
            "t-staging",
            "t-starting",
            "t-healthy",
            "t-sick",
            "t-unknown"
        ]
    );
    assert_eq!(embedded["tasks"][0]["healthCheckResults"], json!([]));
    assert_eq!(embedded["tasks"][2]["healthCheckResults"][0]["alive"], true);
    assert_eq!(
        embedded["tasks"][3]["healthCheckResults"][0]["alive"],
        false
    );
    assert_eq!(embedded["tasks"][2]["host"], "10.0.0.7");
    assert_eq!(embedded.get("lastTaskFailure"), None);
    assert_eq!(embedded["deployments"], json!([]));
}

#[test]
fn app_json_follows_the_spec_over_a_stale_definition() {
    let mut app = base_app();
    app.instances = 7;
    app.definition["instances"] = json!(2);
    let out = app_json(&app, &[], &|t| t.node.clone(), &|_| None, &[], None, false);
    assert_eq!(out["instances"], 7);

    app.definition = Value::Null;
    let out = app_json(&app, &[], &|t| t.node.clone(), &|_| None, &[], None, false);
    assert_eq!(out["id"], "/prod/web");
    assert_eq!(out["mem"], 256);
    assert_eq!(out["portDefinitions"][1]["port"], 9100);
}

#[test]
fn task_json_has_marathons_shape() {
    let mut running = task("prod_web.instance-1-0", TaskState::Running);
    running.health_failures = 2;
    let out = task_json(&running, "10.0.0.5", &[false]);
    assert_eq!(
        out,
        json!({
            "id": "prod_web.instance-1-0",
            "appId": "/prod/web",
            "host": "10.0.0.5",
            "ports": [31000, 31001],
            "servicePorts": [],
            "slaveId": "node-1",
            "stagedAt": "2024-05-01T10:00:01.000Z",
            "startedAt": "2024-05-01T10:00:02.000Z",
            "version": V1,
            "state": "TASK_RUNNING",
            "healthCheckResults": [{
                "alive": false,
                "taskId": "prod_web.instance-1-0",
                "firstSuccess": null,
                "lastSuccess": null,
                "lastFailure": null,
                "consecutiveFailures": 2,
            }],
            "ipAddresses": [{ "ipAddress": "10.0.0.5", "protocol": "IPv4" }],
            "localVolumes": [],
        })
    );
    let staging = task_json(&task("t", TaskState::Staging), "fd00::1", &[]);
    assert_eq!(staging["state"], "TASK_STAGING");
    assert_eq!(staging["startedAt"], Value::Null);
    assert_eq!(staging["healthCheckResults"], json!([]));
    assert_eq!(staging["ipAddresses"][0]["protocol"], "IPv6");
}

// ---------------------------------------------------------------------------------------
// Service names

fn with_ports(id: &str, ports: usize, labels: &[(&str, &str)]) -> MarathonApp {
    let mut app =
        app(json!({ "id": id, "cmd": "x", "portDefinitions": vec![json!({ "port": 0 }); ports] }));
    app.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    app
}

fn names(app: &AppSpec) -> Vec<String> {
    atoll_workload::naming::service_names(app)
        .into_iter()
        .map(|(_, name, _)| name)
        .collect()
}

#[test]
fn service_names_come_from_the_reversed_app_id() {
    assert_eq!(names(&with_ports("/web", 1, &[])), vec!["web"]);
    assert_eq!(names(&with_ports("/prod/web", 1, &[])), vec!["web-prod"]);
    assert_eq!(
        names(&with_ports("/eu/prod/web", 1, &[])),
        vec!["web-prod-eu"]
    );
}

#[test]
fn further_ports_get_an_index_suffix_unless_named() {
    let app = with_ports("/a/b", 3, &[("SERVICE_2_NAME", "admin")]);
    assert_eq!(
        atoll_workload::naming::service_names(&app),
        vec![
            (0, "b-a".to_string(), vec![]),
            (1, "b-a-1".to_string(), vec![]),
            (2, "admin".to_string(), vec![]),
        ]
    );
    let first_named = with_ports(
        "/a",
        2,
        &[("SERVICE_0_NAME", "front"), ("SERVICE_NAME", "base")],
    );
    assert_eq!(names(&first_named), vec!["front", "base-1"]);
}

#[test]
fn service_name_and_tags_labels_apply_to_every_port() {
    let app = with_ports(
        "/web",
        2,
        &[
            ("SERVICE_NAME", "frontend"),
            ("SERVICE_TAGS", " blue, v2 ,,"),
        ],
    );
    let tags = vec!["blue".to_string(), "v2".to_string()];
    assert_eq!(
        atoll_workload::naming::service_names(&app),
        vec![
            (0, "frontend".to_string(), tags.clone()),
            (1, "frontend-1".to_string(), tags),
        ]
    );
}

#[test]
fn apps_without_ports_have_no_services() {
    assert!(atoll_workload::naming::service_names(&with_ports(
        "/worker",
        0,
        &[("SERVICE_NAME", "w")]
    ))
    .is_empty());
}

#[test]
fn a_command_health_check_whose_command_object_has_no_value_is_refused() {
    // Found by the marathon_app fuzz target: accepted, then echoed as an empty command
    // that the same parser refused.
    let body = br#"{"id": "/c", "cmd": "sleep 1", "portDefinitions": [{"port": 0}],
        "healthChecks": [{"protocol": "COMMAND", "command": {"other": "test -f x"}}]}"#;
    let errors = parse_app(body, V1, None).unwrap_err();
    assert!(
        paths(&errors) == ["/healthChecks(0)/command/value"],
        "{errors}"
    );
}

#[test]
fn huge_and_long_numbers_echo_back_as_the_same_app() {
    // Found by the marathon_app fuzz target: a number too large for an integer is read as a
    // float, and its echo must read back to the very same float.
    for body in [
        r#"{"id": "/big", "cmd": "x", "mem": 100066666666666666666666666660666666660000}"#,
        r#"{"id": "/big", "cmd": "x", "cpus": 0.30000000000000004, "disk": 1e300}"#,
    ] {
        let app = parse_app(body.as_bytes(), V1, None).expect("a valid app");
        let echoed = serde_json::to_vec(&app.definition).unwrap();
        let again = parse_app(&echoed, V1, None).expect("the echo is valid");
        assert_eq!(again, app, "{body}");
    }
}

#[test]
fn an_update_starts_from_the_specs_instances_not_the_echoed_definitions() {
    // A scale by killing tasks lowers the spec's count and leaves the definition alone.
    let mut base = app(json!({"id": "/web", "cmd": "serve", "instances": 3}));
    base.spec.instances = 1;
    assert_eq!(base.definition["instances"], 3);
    let updated = put(&base, json!({"cmd": "serve --fast"})).unwrap();
    assert_eq!(updated.instances, 1);
    assert_eq!(updated.definition["instances"], 1);
    let scaled = put(&base, json!({"instances": 5})).unwrap();
    assert_eq!(scaled.instances, 5);
}
