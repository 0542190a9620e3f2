//! Writes the seed corpora of the fuzz targets into `corpus/<target>/` (or the directory
//! given as the first argument): DNS queries of every name form atoll answers, Consul
//! registration bodies and KV writes as the README and the tests send them, Marathon app
//! definitions from the end-to-end tests, and Raft entries, votes, log ids, snapshot
//! metadata and snapshots encoded by the code the log store and state machine use.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a seed_corpus     # from fuzz/
//!
//! It is built as a libFuzzer binary, like the targets, so it shares their instrumented
//! build (a plain binary would need every dependency built a second time); it does its
//! work in libFuzzer's initialization and exits. `SEED_CORPUS_DIR` overrides the output
//! directory. The output is deterministic, so regenerating changes only what the code
//! changed.
#![no_main]
// Initialization exits the process, so the (empty) fuzz function is never reached.
#![allow(unreachable_code)]

use std::io;
use std::path::{Path, PathBuf};

use atoll_state::snapshot::{encode, encode_state};
use atoll_state::State;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use openraft::LogId;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn query(id: u16, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    if let Ok(name) = Name::from_ascii(name) {
        message.add_query(Query::query(name, qtype));
    }
    message
}

fn dns_seeds(dir: &Path) -> io::Result<()> {
    let forms = [
        ("service-a", "web.service.consul.", RecordType::A),
        ("service-srv", "web.service.consul.", RecordType::SRV),
        ("service-aaaa", "web.service.consul.", RecordType::AAAA),
        ("service-any", "web.service.consul.", RecordType::ANY),
        ("service-tag", "v1.web.service.consul.", RecordType::A),
        ("service-dc", "web.service.dc1.consul.", RecordType::SRV),
        (
            "service-tag-dc",
            "primary.web.service.dc1.consul.",
            RecordType::A,
        ),
        (
            "service-foreign-dc",
            "web.service.dc2.consul.",
            RecordType::A,
        ),
        ("service-missing", "nothing.service.consul.", RecordType::A),
        (
            "service-mixed-case",
            "V1.Web.Service.Consul.",
            RecordType::A,
        ),
        (
            "service-name-address",
            "db.service.consul.",
            RecordType::SRV,
        ),
        ("service-node-down", "api.service.consul.", RecordType::A),
        ("service-many", "many.service.consul.", RecordType::A),
        ("service-many-srv", "many.service.consul.", RecordType::SRV),
        ("rfc2782", "_web._v1.service.consul.", RecordType::SRV),
        ("rfc2782-tcp", "_web._tcp.service.consul.", RecordType::SRV),
        ("rfc2782-dc", "_web._primary.dc1.consul.", RecordType::SRV),
        ("rfc2782-short", "_web._v2.consul.", RecordType::SRV),
        ("node", "alpha.node.consul.", RecordType::A),
        ("node-dc", "alpha.node.dc1.consul.", RecordType::A),
        ("node-v6", "gamma.node.consul.", RecordType::AAAA),
        ("node-hostname", "named.node.consul.", RecordType::A),
        ("node-missing", "nobody.node.consul.", RecordType::A),
        ("addr-v4", "0a000001.addr.dc1.consul.", RecordType::A),
        (
            "addr-v6",
            "fd000000000000000000000000000033.addr.dc1.consul.",
            RecordType::AAAA,
        ),
        ("apex-soa", "consul.", RecordType::SOA),
        ("apex-ns", "consul.", RecordType::NS),
        ("unknown-form", "what.ever.consul.", RecordType::A),
        ("outside", "example.com.", RecordType::A),
        ("root", ".", RecordType::NS),
    ];
    for (i, (file, name, qtype)) in forms.iter().enumerate() {
        let message = query(0x1000 + i as u16, name, *qtype);
        write(dir, file, &message.to_vec().map_err(io::Error::other)?)?;
    }
    let mut edns = query(0x2000, "many.service.consul.", RecordType::SRV);
    let mut options = Edns::new();
    options.set_max_payload(4096);
    edns.set_edns(options);
    write(dir, "edns-large", &edns.to_vec().map_err(io::Error::other)?)?;
    let mut two = query(0x2001, "web.service.consul.", RecordType::A);
    if let Ok(name) = Name::from_ascii("db.service.consul.") {
        two.add_query(Query::query(name, RecordType::A));
    }
    write(
        dir,
        "two-questions",
        &two.to_vec().map_err(io::Error::other)?,
    )?;
    let none = Message::new(0x2002, MessageType::Query, OpCode::Query);
    write(
        dir,
        "no-question",
        &none.to_vec().map_err(io::Error::other)?,
    )?;
    let mut status = query(0x2003, "web.service.consul.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    write(
        dir,
        "opcode-status",
        &status.to_vec().map_err(io::Error::other)?,
    )?;
    let mut response = query(0x2004, "web.service.consul.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    write(
        dir,
        "a-response",
        &response.to_vec().map_err(io::Error::other)?,
    )?;
    write(
        dir,
        "header-only",
        &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
    )?;
    Ok(())
}

const CONSUL_BODIES: &[(&str, &str)] = &[
    (
        "readme-service",
        r#"{"Name": "web", "ID": "web1", "Address": "127.0.0.2", "Port": 8080, "Check": {"TTL": "30s"}}"#,
    ),
    (
        "service-checks",
        r#"{"Name": "api", "Tags": ["v1", "primary"], "Port": 9000, "Meta": {"Owner": "team"}, "EnableTagOverride": true,
            "Checks": [{"HTTP": "http://127.0.0.1:9000/health", "Interval": "10s", "Timeout": "1s", "Method": "HEAD",
                        "Header": {"X-Probe": ["1"]}},
                       {"TCP": "127.0.0.1:9000", "Interval": "5s", "DeregisterCriticalServiceAfter": "1m"}]}"#,
    ),
    (
        "service-snake-case",
        r#"{"name": "cache", "id": "cache-1", "port": 6379,
            "check": {"ttl": 15000000000, "deregister_critical_service_after": "90s", "status": "passing"}}"#,
    ),
    ("service-bad-port", r#"{"Name": "web", "Port": "eighty"}"#),
    (
        "service-script-check",
        r#"{"ID": "bad-1", "Name": "bad", "Port": 1, "Check": {"Args": ["/bin/true"], "Interval": "10s"}}"#,
    ),
    ("service-kind", r#"{"Name": "gw", "Kind": "mesh-gateway"}"#),
    (
        "check-ttl",
        r#"{"Name": "disk-check", "TTL": "10s", "Notes": "free space"}"#,
    ),
    (
        "check-for-service",
        r#"{"Name": "web health", "CheckID": "web-http", "ServiceID": "web-1", "HTTP": "https://127.0.0.1:8080/", "Interval": "1m30s"}"#,
    ),
    ("check-no-name", r#"{"TTL": "10s"}"#),
    ("check-truncated", r#"{"Name": "c", "TTL": 10"#),
    (
        "check-update",
        r#"{"Status": "warning", "Output": "disk 91% full"}"#,
    ),
    ("check-update-bogus", r#"{"Status": "bogus"}"#),
    (
        "catalog-register",
        r#"{"Datacenter": "dc1", "Node": "b-node", "Address": "127.0.0.7", "TaggedAddresses": {"lan": "127.0.0.7"},
            "NodeMeta": {"rack": "r2"},
            "Service": {"ID": "redis1", "Service": "redis", "Tags": ["primary"], "Address": "127.0.0.8", "Port": 8000},
            "Check": {"Node": "b-node", "CheckID": "service:redis1", "Name": "Redis health", "Status": "passing",
                      "ServiceID": "redis1", "Definition": {"TCP": "127.0.0.8:8000", "Interval": "5s"}}}"#,
    ),
    (
        "catalog-register-checks",
        r#"{"Node": "alpha", "Address": "10.0.0.1", "SkipNodeUpdate": true,
            "Checks": [{"CheckID": "mem", "Status": "critical", "Output": "oom"}, {"Name": "load"}]}"#,
    ),
    ("catalog-register-no-address", r#"{"Node": "no-address"}"#),
    ("catalog-register-no-node", r#"{"Address": "127.0.0.9"}"#),
    (
        "catalog-register-foreign-dc",
        r#"{"Datacenter": "dc2", "Node": "far", "Address": "10.9.9.9"}"#,
    ),
    (
        "catalog-deregister-service",
        r#"{"Datacenter": "dc1", "Node": "beta", "ServiceID": "web-2"}"#,
    ),
    ("catalog-deregister-node", r#"{"Node": "gamma"}"#),
    (
        "catalog-deregister-check",
        r#"{"Node": "alpha", "CheckID": "service:web-1"}"#,
    ),
    ("kv-put", "some/key\nv"),
    ("kv-put-flags-cas", "config/web/threads?flags=42&cas=0\n8"),
    ("kv-delete-recurse", "config/?recurse\n"),
    ("kv-cas-recurse", "config/?recurse&cas=3\n"),
    ("kv-acquire", "locks/leader?acquire=abc\nme"),
    ("kv-bad-flags", "shape?flags=-1\nhello"),
    ("kv-dc", "shape?dc=dc1&flags=7\n{\"json\": true}"),
    ("empty-object", "{}"),
    ("not-json", "{"),
    ("empty", ""),
];

const MARATHON_APPS: &[(&str, &str)] = &[
    (
        "readme-docker",
        r#"{"id": "/prod/web", "instances": 3, "cpus": 0.1, "mem": 32,
 "container": {"type": "DOCKER", "docker": {"image": "my-web:v1", "network": "BRIDGE",
               "portMappings": [{"containerPort": 8080, "hostPort": 0}]}},
 "healthChecks": [{"protocol": "HTTP", "path": "/", "intervalSeconds": 2}]}"#,
    ),
    (
        "exec-site",
        r#"{"id": "/e2e/site", "cmd": "exec /bin/busybox httpd -f -p 127.0.0.1:$PORT0 -h /srv/www", "instances": 2,
 "cpus": 0.1, "mem": 16, "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
 "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 5, "intervalSeconds": 1,
                   "timeoutSeconds": 1, "maxConsecutiveFailures": 3}]}"#,
    ),
    (
        "docker-args",
        r#"{"id": "/e2e/docker-httpd", "cmd": null, "args": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
 "container": {"type": "DOCKER", "docker": {"image": "atoll-e2e-busybox:latest", "network": "BRIDGE"},
               "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]},
 "instances": 1, "cpus": 0.1, "mem": 32}"#,
    ),
    (
        "env-ports-labels",
        r#"{"id": "/e2e/env", "cmd": "env > out && exec sleep 600", "instances": 1, "cpus": 0.05, "mem": 16,
 "portDefinitions": [{"port": 0}, {"port": 0}, {"port": 0}],
 "labels": {"SERVICE_TAGS": "blue, e2e", "SERVICE_2_NAME": "e2e-admin"}, "env": {"GREETING": "hello world"}}"#,
    ),
    (
        "command-check",
        r#"{"id": "/e2e/checked", "cmd": "touch healthy && exec httpd -f -p 127.0.0.1:$PORT0", "instances": 1,
 "cpus": 0.1, "mem": 16, "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
 "healthChecks": [{"protocol": "COMMAND", "command": {"value": "test -f healthy"}, "gracePeriodSeconds": 2,
                   "intervalSeconds": 1, "timeoutSeconds": 2, "maxConsecutiveFailures": 2}]}"#,
    ),
    (
        "deployment",
        r#"{"id": "/e2e/rolling", "cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 4,
 "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.25},
 "backoffSeconds": 2, "backoffFactor": 1.5, "maxLaunchDelaySeconds": 60}"#,
    ),
    (
        "constraints",
        r#"{"id": "/e2e/placed", "cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 2,
 "constraints": [["hostname", "UNIQUE"], ["rack", "LIKE", "r[12]"], ["zone", "GROUP_BY", "2"],
                 ["hostname", "CLUSTER", "alpha"], ["rack", "UNLIKE", "r9"], ["hostname", "MAX_PER", "1"]]}"#,
    ),
    (
        "required-ports",
        r#"{"id": "/e2e/fixed", "cmd": "sleep 1000", "requirePorts": true, "portDefinitions": [{"port": 31500, "name": "admin"}]}"#,
    ),
    (
        "too-big",
        r#"{"id": "/e2e/huge", "cmd": "exec sleep 600", "instances": 1, "cpus": 0.1, "mem": 10000000}"#,
    ),
    ("scale-only", r#"{"instances": 5}"#),
    (
        "scale-zero",
        r#"{"id": "/e2e/zero", "cmd": "exec sleep 600", "instances": 0, "cpus": 0.1, "mem": 16}"#,
    ),
    (
        "bad-cpus",
        r#"{"id": "/e2e/bad", "cmd": "sleep 1", "cpus": "lots"}"#,
    ),
    (
        "bad-instances",
        r#"{"id": "/e2e/bad", "cmd": "sleep 1", "instances": -1}"#,
    ),
    (
        "bad-constraint",
        r#"{"id": "/e2e/bad", "cmd": "sleep 1", "constraints": [["hostname", "SOMETIMES"]]}"#,
    ),
    (
        "docker-no-image",
        r#"{"id": "/e2e/bad", "container": {"type": "DOCKER", "docker": {"network": "BRIDGE"}}}"#,
    ),
    ("nothing-to-run", r#"{"id": "/e2e/idle"}"#),
    ("relative-id", r#"{"id": "group/../app", "cmd": "true"}"#),
    ("not-object", "[1, 2, 3]"),
    ("empty", ""),
];

fn text_seeds(dir: &Path, seeds: &[(&str, &str)]) -> io::Result<()> {
    for (name, body) in seeds {
        write(dir, name, body.as_bytes())?;
    }
    Ok(())
}

fn raft_seeds(dir: &Path) -> io::Result<()> {
    for (i, entry) in atoll_fuzz::sample_entries().iter().enumerate() {
        write(dir, &format!("entry-{i:02}"), &encode(entry).map_err(io::Error::other)?)?;
    }
    write(dir, "vote", &encode(&atoll_fuzz::sample_vote()).map_err(io::Error::other)?)?;
    let committed: Option<LogId<u64>> = atoll_fuzz::sample_snapshot_meta().last_log_id;
    write(dir, "committed", &encode(&committed).map_err(io::Error::other)?)?;
    write(dir, "committed-none", &encode(&None::<LogId<u64>>).map_err(io::Error::other)?)?;
    write(
        dir,
        "snapshot-meta",
        &encode(&atoll_fuzz::sample_snapshot_meta()).map_err(io::Error::other)?,
    )?;
    let newer = atoll_state::snapshot::FORMAT_VERSION + 1;
    write(dir, "newer-version", &[newer, b'{', b'}'])?;
    write(dir, "empty", b"")?;
    Ok(())
}

fn snapshot_seeds(dir: &Path) -> io::Result<()> {
    write(dir, "empty-state", &encode_state(&State::default()).map_err(io::Error::other)?)?;
    write(dir, "catalog", &encode_state(&atoll_fuzz::catalog_state()).map_err(io::Error::other)?)?;
    write(
        dir,
        "catalog-kv-apps",
        &encode_state(&atoll_fuzz::snapshot_state()).map_err(io::Error::other)?,
    )?;
    // A resource figure that reads back as NaN: a value unequal to itself.
    write(
        dir,
        "compute-node-nan",
        &encode_state(&atoll_fuzz::nan_state()).map_err(io::Error::other)?,
    )?;
    Ok(())
}

fn write_all(root: &Path) -> io::Result<()> {
    dns_seeds(&root.join("dns_answer"))?;
    text_seeds(&root.join("consul_body"), CONSUL_BODIES)?;
    text_seeds(&root.join("marathon_app"), MARATHON_APPS)?;
    raft_seeds(&root.join("raft_entry"))?;
    snapshot_seeds(&root.join("snapshot"))
}

libfuzzer_sys::fuzz_target!(
    init: {
        let root = std::env::var_os("SEED_CORPUS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
        match write_all(&root) {
            Ok(()) => {
                println!("seed corpora written under {}", root.display());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("cannot write the seed corpora under {}: {e}", root.display());
                std::process::exit(1);
            }
        }
    },
    |_input: &[u8]| {}
);
