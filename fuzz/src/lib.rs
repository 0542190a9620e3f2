//! Fixtures shared by atoll's fuzz targets and the program that writes their seed corpora:
//! a small catalog (built with the same commands the server applies), the DNS
//! configuration, a Marathon app, and samples of every stored Raft record.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use atoll_api::marathon::wire::{parse_app, MarathonApp};
use atoll_dns::DnsConfig;
use atoll_cluster::Member;
use atoll_raft::TypeConfig;
use atoll_state::{
    Allocation, AppSpec, CheckSpec, CheckStatus, Command, ComputeNode, Deployment, Deregistration,
    PreparedQuery, QueryDns, QueryFailover, QueryTemplate, Registration, ServiceQuery, ServiceSpec,
    State, TaskState, Unplaced,
};
use hickory_proto::rr::Name;
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};

/// The datacenter of the fixtures.
pub const DATACENTER: &str = "dc1";
/// The version given to apps parsed by the Marathon target.
pub const APP_VERSION: &str = "2026-01-01T00:00:00.000Z";
/// Instances of the `many` service: enough that a UDP answer must be truncated.
pub const MANY_INSTANCES: u16 = 60;

/// DNS as `atoll dev` serves it: domain `consul.`, datacenter `dc1`.
pub fn dns_config(has_recursors: bool) -> DnsConfig {
    DnsConfig {
        domain: Name::from_ascii("consul.").unwrap_or_else(|_| Name::root()),
        datacenter: DATACENTER.into(),
        service_ttl: 0,
        node_ttl: 0,
        only_passing: false,
        has_recursors,
    }
}

fn check(id: &str, service: &str, status: CheckStatus) -> CheckSpec {
    CheckSpec {
        check_id: id.into(),
        name: id.into(),
        service_id: service.into(),
        status: Some(status),
        ..Default::default()
    }
}

fn service(id: &str, name: &str, tags: &[&str], address: &str, port: u16) -> ServiceSpec {
    ServiceSpec {
        id: id.into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: address.into(),
        port,
        ..Default::default()
    }
}

fn registration(
    node: &str,
    address: &str,
    service: Option<ServiceSpec>,
    checks: Vec<CheckSpec>,
) -> Command {
    Command::Register(Box::new(Registration {
        node: node.into(),
        address: address.into(),
        datacenter: DATACENTER.into(),
        service,
        checks,
        ..Default::default()
    }))
}

/// The registrations of the fixture catalog, in the order they are applied: nodes with IPv4,
/// IPv6 and non-IP addresses, a node whose `serfHealth` is critical, services with tags,
/// ports and own addresses, passing, warning and failing checks, and one service with
/// [`MANY_INSTANCES`] instances.
pub fn catalog_commands() -> Vec<Command> {
    let mut commands = vec![
        registration(
            "alpha",
            "10.0.0.1",
            Some(service("web-1", "web", &["primary", "v1"], "", 8080)),
            vec![
                check("serfHealth", "", CheckStatus::Passing),
                check("service:web-1", "web-1", CheckStatus::Passing),
            ],
        ),
        registration(
            "beta",
            "10.0.0.2",
            Some(service("web-2", "web", &["v2"], "10.1.0.2", 8081)),
            vec![
                check("serfHealth", "", CheckStatus::Passing),
                check("service:web-2", "web-2", CheckStatus::Warning),
            ],
        ),
        registration(
            "gamma",
            "fd00::3",
            Some(service("web-3", "web", &["v1"], "fd00::33", 8082)),
            vec![check("service:web-3", "web-3", CheckStatus::Critical)],
        ),
        registration(
            "beta",
            "10.0.0.2",
            Some(service("db", "db", &["primary"], "db.example", 5432)),
            vec![],
        ),
        registration(
            "down",
            "10.0.0.9",
            Some(service("api", "api", &[], "", 9000)),
            vec![check("serfHealth", "", CheckStatus::Critical)],
        ),
        registration("named", "host.example", None, vec![]),
    ];
    for i in 0..MANY_INSTANCES {
        commands.push(registration(
            "alpha",
            "10.0.0.1",
            Some(service(
                &format!("many-{i}"),
                "many",
                &["bulk"],
                &format!("10.2.{}.{}", i / 200, i % 200 + 1),
                10_000 + i,
            )),
            vec![],
        ));
    }
    commands
}

/// The fixture catalog, built by applying [`catalog_commands`] as the state machine does.
pub fn catalog_state() -> State {
    let mut state = State::default();
    for (index, command) in catalog_commands().iter().enumerate() {
        state.apply(index as u64 + 1, command);
    }
    state
}

/// The catalog with a compute node whose CPU figure is NaN: what a snapshot's bytes can say,
/// though no API accepts it.
pub fn nan_state() -> State {
    let mut state = catalog_state();
    state.apply(
        1_000,
        &Command::RegisterCompute(ComputeNode {
            node: "nan".into(),
            cpus: f64::NAN,
            mem: 1024.0,
            port_range: (31_000, 31_010),
            attributes: BTreeMap::new(),
            drivers: vec!["exec".into()],
            busy_ports: Vec::new(),
        }),
    );
    state
}

/// A Marathon app definition with ports, a health check, constraints and labels.
pub const BASE_APP_JSON: &str = r#"{
  "id": "/shop/web",
  "cmd": "python3 -m http.server $PORT0",
  "cpus": 0.25,
  "mem": 64,
  "instances": 2,
  "portDefinitions": [{"port": 0, "name": "http"}],
  "constraints": [["hostname", "UNIQUE"]],
  "labels": {"tier": "front"},
  "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0,
                    "intervalSeconds": 5, "maxConsecutiveFailures": 3}],
  "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5}
}"#;

/// The current app a `PUT` updates in the Marathon target ([`BASE_APP_JSON`]).
pub fn base_app() -> Option<MarathonApp> {
    parse_app(BASE_APP_JSON.as_bytes(), APP_VERSION, None).ok()
}

fn allocation(app: &AppSpec) -> Allocation {
    Allocation {
        id: "shop_web.instance-1-1".into(),
        app_id: app.id.clone(),
        app_version: app.version.clone(),
        node: "alpha".into(),
        ports: vec![31_000],
        cpus: 0.25,
        mem: 64.0,
        desired_running: true,
        state: TaskState::Staging,
        message: String::new(),
        staged_at: APP_VERSION.into(),
        started_at: None,
        health_failures: 0,
        services: vec![],
        create_index: 0,
        modify_index: 0,
    }
}

/// ACL commands: a bootstrap, a policy and a token holding it.
fn acl_commands() -> Vec<Command> {
    use atoll_state::acl::{AclBootstrap, AclPolicy, AclToken, PolicyLink, Secret};
    vec![
        Command::AclBootstrap(Box::new(AclBootstrap {
            accessor_id: "6a1f7c2e-0d3b-4e5f-8a9b-0c1d2e3f4a5b".into(),
            secret_id: Secret::new("0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"),
            create_time: APP_VERSION.into(),
            reset_index: None,
        })),
        Command::AclPolicySet {
            policy: Box::new(AclPolicy {
                id: "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f".into(),
                name: "config-writers".into(),
                rules: "key_prefix \"config/\" { policy = \"write\" }\nservice \"\" { policy = \"read\" }".into(),
                ..Default::default()
            }),
            create: true,
        },
        Command::AclTokenSet {
            token: Box::new(AclToken {
                accessor_id: "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a".into(),
                secret_id: Secret::new("3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b"),
                description: "config writer".into(),
                policies: vec![PolicyLink {
                    id: String::new(),
                    name: "config-writers".into(),
                }],
                create_time: APP_VERSION.into(),
                ..Default::default()
            }),
            create: true,
        },
    ]
}

/// One command of every kind, with plausible contents.
pub fn sample_commands() -> Vec<Command> {
    let mut commands = catalog_commands();
    commands.truncate(6);
    commands.push(Command::Deregister(Deregistration {
        node: "beta".into(),
        service_id: Some("db".into()),
        check_id: None,
    }));
    commands.push(Command::UpdateCheck {
        node: "alpha".into(),
        check_id: "service:web-1".into(),
        status: CheckStatus::Critical,
        output: "connection refused".into(),
    });
    commands.push(Command::KvSet {
        key: "config/web/threads".into(),
        value: b"8".to_vec(),
        flags: 42,
        cas: Some(0),
    });
    commands.push(Command::KvDelete {
        key: "config/".into(),
        recurse: true,
        cas: None,
    });
    commands.extend(acl_commands());
    commands.push(Command::RegisterCompute(ComputeNode {
        node: "alpha".into(),
        cpus: 4.0,
        mem: 8192.0,
        port_range: (31_000, 32_000),
        attributes: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
        drivers: vec!["exec".into(), "docker".into()],
        busy_ports: vec![31_005],
    }));
    if let Some(app) = base_app() {
        let deployment = Deployment {
            id: "0f0e0d0c-0b0a-0908-0706-050403020100".into(),
            app_id: app.id.clone(),
            version: app.version.clone(),
            action: "StartApplication".into(),
            create_index: 0,
            previous: None,
            steps: Vec::new(),
        };
        commands.push(Command::Place {
            allocations: vec![allocation(&app)],
            unplaced: BTreeMap::from([(
                app.id.clone(),
                Unplaced {
                    count: 1,
                    reasons: vec!["no node has 64 MiB free".into()],
                },
            )]),
        });
        commands.push(Command::UpdateTask {
            id: "shop_web.instance-1-1".into(),
            state: TaskState::Running,
            message: "started".into(),
            at: APP_VERSION.into(),
            services: vec![(
                service(
                    "shop_web.instance-1-1:31000",
                    "web-shop",
                    &["http"],
                    "",
                    31_000,
                ),
                vec![],
            )],
        });
        commands.push(Command::TaskHealth {
            id: "shop_web.instance-1-1".into(),
            failures: 2,
        });
        commands.push(Command::StopTasks {
            ids: vec!["shop_web.instance-1-1".into()],
            scale: true,
            reason: "killed by request".into(),
        });
        commands.push(Command::FinishDeployment {
            id: deployment.id.clone(),
        });
        // A second create of the same id: refused as a conflict.
        commands.push(Command::CreateApp {
            app: Box::new(app.spec.clone()),
            deployment: None,
            definition: app.definition.clone(),
        });
        commands.push(Command::DeleteApp {
            app_id: app.id.clone(),
            deployment: Some(deployment.clone()),
        });
        commands.insert(
            11,
            Command::PutApp {
                app: Box::new(app.spec),
                deployment: Some(deployment),
                definition: app.definition,
            },
        );
    }
    // Prepared queries: a template, its update, and a delete of an unknown id (refused).
    let template = PreparedQuery {
        id: "8c3f7a2e-1d4b-4e6f-9a0b-2c5d7e9f1a3b".into(),
        name: "geo-db-".into(),
        service: ServiceQuery {
            service: "${match(1)}".into(),
            failover: QueryFailover {
                nearest_n: 2,
                datacenters: vec!["dc2".into()],
            },
            tags: vec!["primary".into(), "!canary".into()],
            ..Default::default()
        },
        dns: QueryDns { ttl: "10s".into() },
        template: QueryTemplate {
            kind: "name_prefix_match".into(),
            regexp: r"^geo-db-(.*?)$".into(),
            remove_empty_tags: true,
        },
        ..Default::default()
    };
    commands.push(Command::QueryCreate(Box::new(template.clone())));
    commands.push(Command::QueryUpdate(Box::new(PreparedQuery {
        service: ServiceQuery {
            only_passing: true,
            ..template.service.clone()
        },
        ..template
    })));
    commands.push(Command::QueryDelete {
        id: "no-such-query".into(),
    });
    // A round of the control loop as one entry.
    commands.push(Command::Batch(vec![
        Command::TaskHealth {
            id: "shop_web.instance-1-1".into(),
            failures: 0,
        },
        Command::KvSet {
            key: "config/web/threads".into(),
            value: b"16".to_vec(),
            flags: 0,
            cas: None,
        },
    ]));
    commands
}

fn member(name: &str, port: u16, server: bool) -> Member {
    Member {
        name: name.into(),
        rpc_addr: format!("127.0.0.1:{port}"),
        http_addr: format!("127.0.0.1:{}", port + 200),
        server,
        datacenter: DATACENTER.into(),
        dns_addr: format!("127.0.0.1:{}", port + 300),
 lan_addr: String::new(),
    }
}

fn membership() -> Membership<u64, Member> {
    let nodes = BTreeMap::from([
        (1, member("s1", 8300, true)),
        (2, member("s2", 8301, true)),
        (3, member("s3", 8302, true)),
        (4, member("c1", 8303, false)),
    ]);
    Membership::new(vec![[1, 2, 3].into_iter().collect()], nodes)
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Raft log entries as the log store writes them: a blank entry, a membership change, and
/// one entry per sample command.
pub fn sample_entries() -> Vec<Entry<TypeConfig>> {
    let mut entries = vec![
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    for (i, command) in sample_commands().into_iter().enumerate() {
        entries.push(Entry {
            log_id: log_id(2, i as u64 + 3),
            payload: EntryPayload::Normal(command),
        });
    }
    entries
}

/// The other records of the log store: a vote, and a committed log id.
pub fn sample_vote() -> Vote<u64> {
    Vote::new_committed(2, 1)
}

/// The metadata stored next to a snapshot.
pub fn sample_snapshot_meta() -> SnapshotMeta<u64, Member> {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 70)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
        snapshot_id: "1-70-1".into(),
    }
}

/// A state as a snapshot holds it: the catalog plus KV, an app, a compute node and a task.
pub fn snapshot_state() -> State {
    let mut state = catalog_state();
    let start = 1_000;
    for (i, command) in sample_commands().iter().skip(6).enumerate() {
        if matches!(
            command,
            Command::StopTasks { .. } | Command::DeleteApp { .. } | Command::KvDelete { .. }
        ) {
            continue;
        }
        state.apply(start + i as u64, command);
    }
    state
}
