//! A node that holds no key/value table (a compute node) answers every request for keys
//! and sessions through a server: here a second API on loopback, over its own in-memory
//! cluster that holds the data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atoll_agent::{Agent, AgentConfig};
use atoll_cluster::{Cluster, ClusterError, Member, MemoryCluster, Pending, ReadMode, Store};
use atoll_state::{Command, Outcome, Table};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::Instant;

use crate::federate::{needs_key_table, with_node};
use crate::{router, serve, ApiContext, HttpLimits, NodeFacts};

/// A node of its own in-memory cluster that holds every table but the key/value one, and
/// sends what needs it to `server`.
struct Compute {
    inner: Arc<MemoryCluster>,
    server: Mutex<Option<String>>,
}

impl Cluster for Compute {
    fn store(&self) -> &Store {
        self.inner.store()
    }

    fn write(&self, command: Command) -> Pending<'_, (Outcome, u64)> {
        self.inner.write(command)
    }

    fn linearize(&self, mode: ReadMode) -> Pending<'_, ()> {
        self.inner.linearize(mode)
    }

    fn node_id(&self) -> u64 {
        self.inner.node_id()
    }

    fn member(&self) -> &Member {
        self.inner.member()
    }

    fn leader_member(&self) -> Option<Member> {
        self.inner.leader_member()
    }

    fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    fn last_contact_ms(&self) -> u64 {
        self.inner.last_contact_ms()
    }

    fn members(&self) -> Vec<(u64, Member, bool)> {
        self.inner.members()
    }

    fn step_down(&self) -> Pending<'_, ()> {
        self.inner.step_down()
    }

    fn remove_member(&self, id: u64) -> Pending<'_, ()> {
        self.inner.remove_member(id)
    }

    fn heartbeat<'a>(&'a self, node: &'a str) -> Pending<'a, ()> {
        self.inner.heartbeat(node)
    }

    fn liveness(&self) -> HashMap<String, Instant> {
        self.inner.liveness()
    }

    fn holds(&self, table: Table) -> bool {
        table != Table::Kv
    }

    fn server_http(&self) -> Option<String> {
        self.server.lock().clone()
    }
}

/// Starts the API of node `name` over `cluster` on a loopback port; returns its address
/// and context.
async fn start(
    name: &str,
    cluster: Arc<dyn Cluster>,
    server_port: Option<u16>,
    facts: NodeFacts,
) -> (SocketAddr, ApiContext) {
    let (agent, loops) = Agent::start(
        cluster,
        AgentConfig {
            node: name.into(),
            address: "127.0.0.1".into(),
            datacenter: "dc1".into(),
            server_port,
            node_meta: Default::default(),
            heartbeat_ttl: Duration::from_secs(5),
            autopilot: Default::default(),
            enable_script_checks: false,
            lan: None,
        },
        None,
    )
    .await
    .unwrap();
    loops.spawn();
    let context = ApiContext::with_facts(agent, "test", facts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The server lives as long as the test's runtime.
    std::mem::forget(stop);
    tokio::spawn(serve(
        listener,
        router(context.clone()),
        HttpLimits::default(),
        stopped,
    ));
    (addr, context)
}

/// A server `s1` holding every table, and a compute node `c1` sending keys and sessions to
/// it; `c1` is in the server's catalog with a passing `serfHealth`, as a live member is.
struct Pair {
    server: SocketAddr,
    compute: SocketAddr,
    compute_context: ApiContext,
    compute_cluster: Arc<Compute>,
}

async fn pair_with(server_facts: NodeFacts, compute_facts: NodeFacts) -> Pair {
    let server_cluster = Arc::new(MemoryCluster::new("s1", "dc1"));
    server_cluster.set_leader(true);
    let (server, _) = start("s1", server_cluster, Some(8300), server_facts).await;
    let inner = Arc::new(MemoryCluster::new("c1", "dc1"));
    inner.set_leader(true);
    let compute_cluster = Arc::new(Compute {
        inner,
        server: Mutex::new(Some(server.to_string())),
    });
    let (compute, compute_context) =
        start("c1", compute_cluster.clone(), None, compute_facts).await;
    Pair {
        server,
        compute,
        compute_context,
        compute_cluster,
    }
}

async fn pair() -> Pair {
    let pair = pair_with(NodeFacts::default(), NodeFacts::default()).await;
    let registration = r#"{"Node":"c1","Address":"127.0.0.1",
        "Check":{"CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing"}}"#;
    let (status, _, body) = call(pair.server, "PUT", "/v1/catalog/register", registration).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    pair
}

async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    call_with(addr, method, path, body, &[]).await
}

fn index(headers: &HeaderMap) -> u64 {
    headers["x-consul-index"].to_str().unwrap().parse().unwrap()
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn the_paths_that_need_keys_or_sessions_are_told_apart() {
    for (path, needs) in [
        ("/v1/kv", true),
        ("/v1/kv/", true),
        ("/v1/kv/a/b", true),
        ("/v1/session/create", true),
        ("/v1/session/list", true),
        ("/v1/txn", true),
        ("/v1/snapshot", true),
        ("/v1/kvx", false),
        ("/v1/catalog/nodes", false),
        ("/v1/agent/self", false),
        ("/v1/query", false),
        ("/v2/apps", false),
    ] {
        assert_eq!(needs_key_table(path), needs, "{path}");
    }
}

#[test]
fn a_session_made_through_a_node_names_that_node_unless_the_body_names_one() {
    let named = |body: &[u8]| with_node(body, "c1").map(|b| json(std::str::from_utf8(&b).unwrap()));
    assert_eq!(named(b""), Some(serde_json::json!({"Node": "c1"})));
    assert_eq!(named(b"  \n"), Some(serde_json::json!({"Node": "c1"})));
    assert_eq!(
        named(br#"{"TTL":"15s","node":""}"#),
        Some(serde_json::json!({"TTL": "15s", "Node": "c1"}))
    );
    assert_eq!(named(br#"{"Node":"other"}"#), None);
    assert_eq!(named(br#"{"NODE":"other"}"#), None);
    assert_eq!(named(b"not json"), None);
    assert_eq!(named(b"[]"), None);
}

#[tokio::test]
async fn keys_are_written_and_read_on_the_server() {
    let pair = pair().await;
    let (status, _, body) = call(pair.compute, "PUT", "/v1/kv/a/b", "v1").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "true"));
    // On the server, not in the node's own store.
    let (status, server_headers, body) = call(pair.server, "GET", "/v1/kv/a/b?raw", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    assert_eq!(pair.compute_context.store().read(|s| s.kv.len()), 0);
    // Read back through the node: the server's answer, headers included.
    let (status, headers, body) = call(pair.compute, "GET", "/v1/kv/a/b?raw", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    assert_eq!(index(&headers), index(&server_headers));
    assert_eq!(
        headers[header::CONTENT_TYPE],
        server_headers[header::CONTENT_TYPE]
    );
    assert!(headers.contains_key("x-consul-knownleader"));
    assert!(headers.contains_key("x-consul-lastcontact"));
    let (status, _, body) = call(pair.compute, "GET", "/v1/kv/a?recurse", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)[0]["Key"], "a/b");
    let (_, _, body) = call(pair.compute, "GET", "/v1/kv/?keys", "").await;
    assert_eq!(json(&body), serde_json::json!(["a/b"]));
    // Its own datacenter named: still the server.
    let (status, _, body) = call(pair.compute, "GET", "/v1/kv/a/b?raw&dc=dc1", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    // A missing key is the server's 404, with the server's index.
    let (status, headers, _) = call(pair.compute, "GET", "/v1/kv/missing", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(index(&headers) >= index(&server_headers));
    // A check-and-set and a delete go there too.
    let (_, _, body) = call(pair.compute, "PUT", "/v1/kv/a/b?cas=1", "v2").await;
    assert_eq!(body, "false");
    let (status, _, body) = call(pair.compute, "DELETE", "/v1/kv/a/b", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "true"));
    let (status, _, _) = call(pair.server, "GET", "/v1/kv/a/b", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The node's metrics count no keys it does not hold; the server's do.
    let (_, _, metrics) = call(pair.compute, "GET", "/metrics", "").await;
    assert!(!metrics.contains("atoll_kv_keys"), "{metrics}");
    assert!(metrics.contains("atoll_catalog_nodes"));
    let (_, _, metrics) = call(pair.server, "GET", "/metrics", "").await;
    assert!(metrics.contains("atoll_kv_keys"));
}

#[tokio::test]
async fn a_blocking_query_waits_on_the_server_and_wakes_there() {
    let pair = pair().await;
    call(pair.server, "PUT", "/v1/kv/watched", "a").await;
    let (_, headers, _) = call(pair.compute, "GET", "/v1/kv/watched", "").await;
    let seen = index(&headers);
    let compute = pair.compute;
    let waiting = tokio::spawn(async move {
        call(
            compute,
            "GET",
            &format!("/v1/kv/watched?raw&index={seen}&wait=30s"),
            "",
        )
        .await
    });
    // Nothing changed: the query is still parked after a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the query must wait for a change");
    call(pair.server, "PUT", "/v1/kv/watched", "b").await;
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("woken by the write")
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b"));
    assert!(index(&headers) > seen);
}

#[tokio::test]
async fn sessions_and_locks_go_to_the_server_and_belong_to_the_node() {
    let pair = pair().await;
    let (status, _, body) = call(pair.compute, "PUT", "/v1/session/create", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = json(&body)["ID"].as_str().unwrap().to_string();
    let (status, _, body) = call(pair.compute, "GET", &format!("/v1/session/info/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    // Created through c1, so c1's: its loss ends the session, as with a Consul client.
    assert_eq!(json(&body)[0]["Node"], "c1");
    let (_, _, body) = call(pair.server, "GET", "/v1/session/node/c1", "").await;
    assert_eq!(json(&body)[0]["ID"], id.as_str());
    let (_, _, body) = call(pair.compute, "GET", "/v1/session/list", "").await;
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    let (status, _, _) = call(pair.compute, "PUT", &format!("/v1/session/renew/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);

    // A lock: acquired once, refused to another session, released.
    let (_, _, body) = call(
        pair.compute,
        "PUT",
        "/v1/session/create",
        r#"{"Node":"s1","Name":"other","NodeChecks":[]}"#,
    )
    .await;
    let other = json(&body)["ID"].as_str().unwrap().to_string();
    let (_, _, body) = call(pair.server, "GET", &format!("/v1/session/info/{other}"), "").await;
    assert_eq!(
        json(&body)[0]["Node"],
        "s1",
        "a node the body names is kept"
    );
    let (_, _, body) = call(
        pair.compute,
        "PUT",
        &format!("/v1/kv/lock?acquire={id}"),
        "me",
    )
    .await;
    assert_eq!(body, "true");
    let (_, _, body) = call(
        pair.compute,
        "PUT",
        &format!("/v1/kv/lock?acquire={other}"),
        "x",
    )
    .await;
    assert_eq!(body, "false");
    let (_, _, body) = call(pair.server, "GET", "/v1/kv/lock", "").await;
    assert_eq!(json(&body)[0]["Session"], id.as_str());
    let (_, _, body) = call(
        pair.compute,
        "PUT",
        &format!("/v1/kv/lock?release={id}"),
        "",
    )
    .await;
    assert_eq!(body, "true");
    let (status, _, body) = call(
        pair.compute,
        "PUT",
        &format!("/v1/session/destroy/{id}"),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "true"));
    let (_, _, body) = call(pair.server, "GET", "/v1/session/list", "").await;
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    assert_eq!(pair.compute_context.store().read(|s| s.sessions.len()), 0);
}

#[tokio::test]
async fn a_transaction_is_applied_on_the_server() {
    let pair = pair().await;
    let txn = r#"[
        {"KV":{"Verb":"set","Key":"t/1","Value":"b25l"}},
        {"KV":{"Verb":"set","Key":"t/2","Value":"dHdv"}},
        {"KV":{"Verb":"get","Key":"t/1"}}
    ]"#;
    let (status, _, body) = call(pair.compute, "PUT", "/v1/txn", txn).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["Results"][2]["KV"]["Value"], "b25l");
    let (_, _, body) = call(pair.server, "GET", "/v1/kv/t/2?raw", "").await;
    assert_eq!(body, "two");
    // A failed one is the server's 409 with its errors.
    let txn = r#"[{"KV":{"Verb":"check-not-exists","Key":"t/1"}}]"#;
    let (status, _, body) = call(pair.compute, "PUT", "/v1/txn", txn).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(json(&body)["Errors"]
        .as_array()
        .is_some_and(|e| !e.is_empty()));
}

#[tokio::test]
async fn the_server_checks_the_token_the_request_carries() {
    use atoll_acl::{AclSettings, AgentTokens, Authorizer, DefaultPolicy};
    let deny = |default: Option<&str>| NodeFacts {
        acl: Arc::new(AclSettings::enabled(
            DefaultPolicy::Deny,
            AgentTokens {
                default: default.map(str::to_string),
                ..AgentTokens::default()
            },
        )),
        ..NodeFacts::default()
    };
    let pair = pair_with(deny(None), NodeFacts::default()).await;
    crate::acl::test_tokens::install("root-token", Authorizer::management());
    let (status, _, body) = call(pair.compute, "PUT", "/v1/kv/secret", "v").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "Permission denied")
    );
    let (status, _, body) = call(pair.compute, "GET", "/v1/session/list", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    let token = [("x-consul-token", "root-token")];
    let (status, _, _) = call_with(pair.compute, "PUT", "/v1/kv/secret", "v", &token).await;
    assert_eq!(status, StatusCode::OK);
    let bearer = [("authorization", "Bearer root-token")];
    let (status, _, body) = call_with(pair.compute, "GET", "/v1/kv/secret?raw", "", &bearer).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v"));
    let (status, _, body) = call(
        pair.compute,
        "GET",
        "/v1/kv/secret?raw&token=root-token",
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v"));

    // A node with a default token makes a request that carries none with it, as it would
    // answer it itself; one that carries a token keeps it.
    let pair = pair_with(deny(None), deny(Some("root-token"))).await;
    let (status, _, body) = call(pair.compute, "PUT", "/v1/kv/secret", "w").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "true"));
    let unknown = [("x-consul-token", "not-a-token")];
    let (status, _, _) = call_with(pair.compute, "GET", "/v1/kv/secret", "", &unknown).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_a_reachable_server_the_answer_is_no_leader_and_quick() {
    let pair = pair().await;
    // A port nothing listens on.
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    *pair.compute_cluster.server.lock() = Some(dead.to_string());
    let no_leader = ClusterError::NoLeader.to_string();
    let started = Instant::now();
    let (status, headers, body) = call(pair.compute, "PUT", "/v1/kv/k", "v").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, no_leader.as_str())
    );
    assert!(headers.contains_key("x-consul-index"));
    // A blocking query does not hang either.
    let (status, _, _) = call(pair.compute, "GET", "/v1/kv/k?index=5&wait=60s", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused without waiting for the query's wait"
    );
    // No server known at all: the same answer.
    *pair.compute_cluster.server.lock() = None;
    let (status, _, body) = call(pair.compute, "GET", "/v1/session/list", "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, no_leader.as_str())
    );
    // A name that does not resolve.
    *pair.compute_cluster.server.lock() = Some("no-such-host.invalid:8500".into());
    let (status, _, _) = call(pair.compute, "GET", "/v1/kv/k", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // What the node holds itself is still answered.
    let (status, _, _) = call(pair.compute, "GET", "/v1/catalog/nodes", "").await;
    assert_eq!(status, StatusCode::OK);
    // The server back: answered again.
    *pair.compute_cluster.server.lock() = Some(pair.server.to_string());
    let (status, _, _) = call(pair.compute, "PUT", "/v1/kv/k", "v").await;
    assert_eq!(status, StatusCode::OK);
}
