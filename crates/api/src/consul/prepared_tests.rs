use std::sync::Arc;
use std::time::Duration;

use atoll_agent::{Agent, AgentConfig};
use atoll_cluster::{
    DatacenterCoordinates, Federation, MemoryCluster, Pending, PoolMember, Relay, Route,
};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::{router, NodeFacts};

/// A federation whose datacenters, their order and their routes are fixed by the test.
struct FixedFederation {
    local: String,
    by_distance: Vec<String>,
    routes: Vec<(String, Route)>,
}

impl Federation for FixedFederation {
    fn datacenter(&self) -> &str {
        &self.local
    }

    fn datacenters(&self) -> Vec<String> {
        self.by_distance.clone()
    }

    fn route(&self, dc: &str) -> Route {
        if dc == self.local {
            return Route::Local;
        }
        self.routes
            .iter()
            .find(|(name, _)| name == dc)
            .map_or(Route::Unknown, |(_, route)| route.clone())
    }

    fn wan_members(&self) -> Option<Vec<PoolMember>> {
        Some(Vec::new())
    }

    fn wan_coordinates(&self) -> Vec<DatacenterCoordinates> {
        Vec::new()
    }

    fn join_wan<'a>(&'a self, _addresses: &'a [String]) -> Pending<'a, usize> {
        Box::pin(async { Ok(0) })
    }
}

/// The API of server `node` of `dc`, alone in its cluster, with `federation`.
async fn context_in(node: &str, dc: &str, federation: Arc<dyn Federation>) -> ApiContext {
    context_with(node, dc, federation, NodeFacts::default()).await
}

/// The same, with the node's `facts` (its LAN pool, for one).
async fn context_with(
    node: &str,
    dc: &str,
    federation: Arc<dyn Federation>,
    facts: NodeFacts,
) -> ApiContext {
    let cluster = Arc::new(MemoryCluster::new(node, dc));
    cluster.set_leader(true);
    let (agent, loops) = Agent::start(
        cluster,
        AgentConfig {
            node: node.into(),
            address: "127.0.0.1".into(),
            datacenter: dc.into(),
            server_port: Some(8300),
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
    ApiContext::federated(agent, "test", facts, federation)
}

fn alone(dc: &str) -> Arc<dyn Federation> {
    Arc::new(atoll_cluster::Alone::new(dc, true))
}

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn json(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let (status, text) = call(app, method, uri, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Registers an instance of `service` on `node` with one check of `status`.
async fn register(app: &Router, node: &str, id: &str, service: &str, tags: &[&str], status: &str) {
    let body = serde_json::json!({
        "Node": node,
        "Address": "127.0.0.1",
        "Service": {"ID": id, "Service": service, "Tags": tags, "Port": 8080},
        "Check": {"CheckID": format!("check-{id}"), "Name": "probe", "ServiceID": id, "Status": status},
    });
    let (code, text) = call(app, "PUT", "/v1/catalog/register", &body.to_string()).await;
    assert_eq!(code, StatusCode::OK, "{text}");
}

async fn create(app: &Router, body: Value) -> String {
    let (status, created) = json(app, "POST", "/v1/query", &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["ID"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn queries_are_created_listed_read_updated_and_deleted() {
    let app = router(context_in("n1", "dc1", alone("dc1")).await);
    let id = create(
        &app,
        serde_json::json!({"Name": "web-q", "Service": {"Service": "web", "Tags": ["v1"]}, "DNS": {"TTL": "10s"}}),
    )
    .await;
    let (status, listed) = json(&app, "GET", "/v1/query", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["ID"], id.as_str());
    assert_eq!(listed[0]["Name"], "web-q");
    assert_eq!(listed[0]["Service"]["Tags"], serde_json::json!(["v1"]));
    assert_eq!(listed[0]["DNS"]["TTL"], "10s");
    assert!(listed[0]["CreateIndex"].as_u64().unwrap() > 0);
    let (status, one) = json(&app, "GET", &format!("/v1/query/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one.as_array().unwrap().len(), 1);

    let (status, _) = call(
        &app,
        "PUT",
        &format!("/v1/query/{id}"),
        r#"{"Name": "web-q", "Service": {"Service": "api"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, one) = json(&app, "GET", &format!("/v1/query/{id}"), "").await;
    assert_eq!(one[0]["Service"]["Service"], "api");
    assert_eq!(one[0]["Service"]["Tags"], Value::Null);

    let (status, _) = call(&app, "DELETE", &format!("/v1/query/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) = call(&app, "GET", &format!("/v1/query/{id}"), "").await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::NOT_FOUND, "Query not found")
    );
    let (status, _) = call(&app, "DELETE", &format!("/v1/query/{id}"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &app,
        "PUT",
        "/v1/query/nope",
        r#"{"Service": {"Service": "x"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_definitions_are_refused_naming_the_field() {
    let app = router(context_in("n1", "dc1", alone("dc1")).await);
    create(
        &app,
        serde_json::json!({"Name": "taken", "Service": {"Service": "web"}}),
    )
    .await;
    let cases = [
        (
            r#"{"Name": "x"}"#,
            Some("Service.Service"),
            "Must provide a Service name",
        ),
        (
            r#"{"Service": {"Service": "w", "Failover": {"NearestN": -1}}}"#,
            Some("Service.Failover.NearestN"),
            "Bad NearestN '-1'",
        ),
        (
            r#"{"Service": {"Service": "w"}, "DNS": {"TTL": "soon"}}"#,
            Some("DNS.TTL"),
            "Bad DNS TTL",
        ),
        (
            r#"{"Service": {"Service": "w"}, "Template": {"Type": "glob"}}"#,
            Some("Template.Type"),
            "Bad Template.Type 'glob'",
        ),
        (
            r#"{"Service": {"Service": "w"}, "Template": {"Type": "name_prefix_match", "Regexp": "("}}"#,
            Some("Template.Regexp"),
            "Bad Regexp",
        ),
        (
            r#"{"ID": "x", "Service": {"Service": "w"}}"#,
            Some("ID"),
            "ID must be empty",
        ),
        (
            r#"{"Name": "TAKEN", "Service": {"Service": "w"}}"#,
            None,
            "aliases an existing query name",
        ),
        (
            r#"{"Session": "missing", "Service": {"Service": "w"}}"#,
            None,
            "invalid session",
        ),
    ];
    for (body, field, message) in cases {
        let (status, error) = json(&app, "POST", "/v1/query", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(
            error["error"].as_str().unwrap().contains(message),
            "{body}: {error}"
        );
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{body}");
        }
    }
    let (_, listed) = json(&app, "GET", "/v1/query", "").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn execute_filters_limits_and_explain_renders_templates() {
    let app = router(context_in("n1", "dc1", alone("dc1")).await);
    register(&app, "n1", "web-1", "web", &["Primary"], "passing").await;
    register(&app, "n2", "web-2", "web", &["primary"], "warning").await;
    register(&app, "n3", "web-3", "web", &["primary"], "critical").await;
    register(&app, "n1", "db-1", "db", &[], "passing").await;
    create(&app, serde_json::json!({"Name": "web", "Service": {"Service": "web", "Tags": ["PRIMARY"]}, "DNS": {"TTL": "7s"}})).await;
    create(
        &app,
        serde_json::json!({"Name": "strict", "Service": {"Service": "web", "OnlyPassing": true}}),
    )
    .await;
    create(
        &app,
        serde_json::json!({"Name": "", "Template": {"Type": "name_prefix_match", "Regexp": "^(.*)-svc$"}, "Service": {"Service": "${match(1)}"}}),
    )
    .await;

    let (status, result) = json(&app, "GET", "/v1/query/web/execute", "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["Service"], "web");
    assert_eq!(result["Datacenter"], "dc1");
    assert_eq!(result["Failovers"], 0);
    assert_eq!(result["DNS"]["TTL"], "7s");
    let mut ids: Vec<&str> = result["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Service"]["ID"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["web-1", "web-2"]);
    assert!(result["Nodes"][0]["Checks"].as_array().is_some());
    assert!(result["Nodes"][0]["Node"]["Node"].is_string());

    let (_, strict) = json(&app, "GET", "/v1/query/strict/execute", "").await;
    assert_eq!(strict["Nodes"].as_array().unwrap().len(), 1);
    assert_eq!(strict["Nodes"][0]["Service"]["ID"], "web-1");
    let (_, limited) = json(&app, "GET", "/v1/query/web/execute?limit=1", "").await;
    assert_eq!(limited["Nodes"].as_array().unwrap().len(), 1);
    // No instance is Connect-capable.
    let (_, connect) = json(&app, "GET", "/v1/query/web/execute?connect=true", "").await;
    assert_eq!(connect["Nodes"], serde_json::json!([]));
    // `?near=_agent` puts this node's instance first whenever it is among the results.
    for _ in 0..5 {
        let (_, near) = json(&app, "GET", "/v1/query/web/execute?near=_agent", "").await;
        assert_eq!(near["Nodes"][0]["Node"]["Node"], "n1");
    }

    let (_, templated) = json(&app, "GET", "/v1/query/db-svc/execute", "").await;
    assert_eq!(templated["Service"], "db");
    assert_eq!(templated["Nodes"][0]["Service"]["ID"], "db-1");
    let (status, explained) = json(&app, "GET", "/v1/query/db-svc/explain", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(explained["Query"]["Service"]["Service"], "db");
    let (_, empty) = json(&app, "GET", "/v1/query/nothing-svc/execute", "").await;
    assert_eq!(empty["Nodes"], serde_json::json!([]));
}

#[tokio::test]
async fn an_unknown_query_is_a_404_with_consuls_text() {
    let app = router(context_in("n1", "dc1", alone("dc1")).await);
    for path in ["/v1/query/missing/execute", "/v1/query/missing/explain"] {
        let (status, text) = call(&app, "GET", path, "").await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::NOT_FOUND, "Query not found")
        );
    }
}

/// Serves `app` on a loopback port.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::serve(listener, app, crate::HttpLimits::default(), stopped).await;
        drop(stop);
    });
    addr
}

fn relay(name: &str, http_addr: SocketAddr) -> Route {
    Route::Via(vec![Relay {
        name: name.into(),
        http_addr,
        dns_addr: None,
    }])
}

#[tokio::test]
async fn an_empty_local_result_fails_over_in_distance_order_until_a_datacenter_has_instances() {
    // dc2 has the instances and is served on loopback.
    let remote = router(context_in("m1", "dc2", alone("dc2")).await);
    register(&remote, "m1", "web-remote", "web", &[], "passing").await;
    let remote_addr = serve(remote).await;
    // A closed port: dc3's only relay never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let federation = Arc::new(FixedFederation {
        local: "dc1".into(),
        by_distance: ["dc1", "dc3", "dc4", "dc2"].map(String::from).to_vec(),
        routes: vec![
            ("dc2".into(), relay("m1.dc2", remote_addr)),
            ("dc3".into(), relay("x.dc3", closed_addr)),
            ("dc4".into(), Route::Unreachable),
        ],
    });
    let app = router(context_in("n1", "dc1", federation).await);
    register(&app, "n1", "web-down", "web", &[], "critical").await;
    create(
        &app,
        serde_json::json!({"Name": "web", "Service": {"Service": "web", "Failover": {"NearestN": 2, "Datacenters": ["dc2", "dc9"]}}, "DNS": {"TTL": "3s"}}),
    )
    .await;
    create(&app, serde_json::json!({"Name": "near-only", "Service": {"Service": "web", "Failover": {"NearestN": 2}}})).await;
    create(
        &app,
        serde_json::json!({"Name": "stay", "Service": {"Service": "web"}}),
    )
    .await;

    let (status, result) = json(&app, "GET", "/v1/query/web/execute", "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["Datacenter"], "dc2");
    assert_eq!(result["Failovers"], 3, "dc3 and dc4 failed, dc2 answered");
    assert_eq!(result["Nodes"].as_array().unwrap().len(), 1);
    assert_eq!(result["Nodes"][0]["Service"]["ID"], "web-remote");
    assert_eq!(result["Nodes"][0]["Node"]["Datacenter"], "dc2");
    assert_eq!(result["DNS"]["TTL"], "3s");

    let (_, tried) = json(&app, "GET", "/v1/query/near-only/execute", "").await;
    assert_eq!(tried["Failovers"], 2);
    assert_eq!(tried["Nodes"], serde_json::json!([]));
    let (_, stayed) = json(&app, "GET", "/v1/query/stay/execute", "").await;
    assert_eq!(
        (stayed["Failovers"].clone(), stayed["Datacenter"].clone()),
        (serde_json::json!(0), serde_json::json!("dc1"))
    );

    // The same query over the DNS interface fails over too.
    let queries = DnsQueries::new();
    assert!(matches!(
        queries.execute("web").await,
        Err(QueryFailure::Failed(_))
    ));
    queries.serve(context_in("n1", "dc1", alone("dc1")).await);
    assert_eq!(
        queries.execute("missing").await,
        Err(QueryFailure::NotFound)
    );
}

#[tokio::test]
async fn dns_answers_carry_the_instances_and_the_query_ttl() {
    let context = context_in("n1", "dc1", alone("dc1")).await;
    let app = router(context.clone());
    register(&app, "n1", "web-1", "web", &[], "passing").await;
    create(
        &app,
        serde_json::json!({"Name": "web", "Service": {"Service": "web"}, "DNS": {"TTL": "1m"}}),
    )
    .await;
    let queries = DnsQueries::new();
    queries.serve(context);
    let answer = queries.execute("web").await.unwrap();
    assert_eq!(answer.ttl, Some(60));
    assert_eq!(answer.datacenter, "dc1");
    assert_eq!(
        answer.instances,
        vec![QueryInstance {
            node: "n1".into(),
            node_address: "127.0.0.1".into(),
            address: String::new(),
            port: 8080,
        }]
    );
}

#[tokio::test]
async fn a_blocked_list_returns_when_a_query_is_created_and_not_for_a_kv_write() {
    let app = router(context_in("n1", "dc1", alone("dc1")).await);
    let request = Request::builder()
        .uri("/v1/query")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let index: u64 = response.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            json(
                &app,
                "GET",
                &format!("/v1/query?index={index}&wait=30s"),
                "",
            )
            .await
        })
    };
    let (status, _) = call(&app, "PUT", "/v1/kv/other", "v").await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "woken by a write to another table");
    create(
        &app,
        serde_json::json!({"Name": "q", "Service": {"Service": "web"}}),
    )
    .await;
    let (status, listed) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["Name"], "q");
}

/// A LAN pool that knows fixed coordinates and no members.
#[derive(Debug)]
struct FixedCoordinates(std::collections::BTreeMap<String, atoll_cluster::Coordinate>);

impl atoll_cluster::LanPool for FixedCoordinates {
    fn members(&self) -> tokio::sync::watch::Receiver<atoll_cluster::LanMembers> {
        tokio::sync::watch::channel(Arc::new(Vec::new())).1
    }

    fn coordinate(&self) -> atoll_cluster::Coordinate {
        self.0.get("n1").cloned().unwrap_or_default()
    }

    fn coordinates(&self) -> std::collections::BTreeMap<String, atoll_cluster::Coordinate> {
        self.0.clone()
    }

    /// No members, so nobody to check.
    fn check_gone(&self, _node: &str) {}
}

/// A coordinate `x` seconds along the first axis.
fn at(x: f64) -> atoll_cluster::Coordinate {
    let mut coordinate = atoll_cluster::Coordinate::default();
    coordinate.vec[0] = x;
    coordinate.height = 0.0;
    coordinate.adjustment = 0.0;
    coordinate
}

#[tokio::test]
async fn a_query_near_a_node_sorts_by_the_lan_coordinates_with_that_node_first() {
    let coordinates = [("n1", 0.0), ("n2", 0.010), ("n3", 0.050), ("n4", 0.030)]
        .into_iter()
        .map(|(node, x)| (node.to_string(), at(x)))
        .collect();
    let facts = NodeFacts {
        lan: Some(Arc::new(FixedCoordinates(coordinates))),
        ..NodeFacts::default()
    };
    let app = router(context_with("n1", "dc1", alone("dc1"), facts).await);
    for (node, id) in [
        ("n3", "web-3"),
        ("n2", "web-2"),
        ("n4", "web-4"),
        ("n1", "web-1"),
        ("n5", "web-5"),
    ] {
        register(&app, node, id, "web", &[], "passing").await;
    }
    create(
        &app,
        serde_json::json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    create(
        &app,
        serde_json::json!({"Name": "web-near", "Service": {"Service": "web", "Near": "_agent"}}),
    )
    .await;
    let order = |answer: &Value| -> Vec<String> {
        answer["Nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Node"]["Node"].as_str().unwrap().to_string())
            .collect()
    };
    // Nearest first; n5 has no coordinate and goes last; the same through the query's own
    // `Near` and through `?near=`, and from another origin.
    for _ in 0..5 {
        let (_, near) = json(&app, "GET", "/v1/query/web/execute?near=_agent", "").await;
        assert_eq!(order(&near), ["n1", "n2", "n4", "n3", "n5"]);
        let (_, own) = json(&app, "GET", "/v1/query/web-near/execute", "").await;
        assert_eq!(order(&own), ["n1", "n2", "n4", "n3", "n5"]);
        let (_, from_n3) = json(&app, "GET", "/v1/query/web/execute?near=n3", "").await;
        assert_eq!(order(&from_n3), ["n3", "n4", "n2", "n1", "n5"]);
    }
}
