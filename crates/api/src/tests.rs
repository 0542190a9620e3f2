use std::sync::Arc;
use std::time::Duration;

use atoll_agent::{Agent, AgentConfig};
use atoll_cluster::MemoryCluster;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::{router, ApiContext};

/// A cluster of this one server, in memory, that has not elected itself yet.
fn unjoined() -> Arc<MemoryCluster> {
    let cluster = Arc::new(MemoryCluster::new("n1", "dc1"));
    cluster.set_leader(false);
    cluster
}

/// The API context of server `n1` of `dc1` over `cluster`, which is made to lead first.
pub(crate) async fn joined_context(cluster: Arc<MemoryCluster>) -> ApiContext {
    joined_context_with(cluster, crate::NodeFacts::default()).await
}

/// [`joined_context`] with what the node was started with.
pub(crate) async fn joined_context_with(
    cluster: Arc<MemoryCluster>,
    facts: crate::NodeFacts,
) -> ApiContext {
    cluster.set_leader(true);
    let (agent, loops) = Agent::start(
        cluster,
        AgentConfig {
            node: "n1".into(),
            address: "127.0.0.1".into(),
            datacenter: "dc1".into(),
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
    let context = ApiContext::with_facts(agent, "test", facts);
    tokio::spawn(crate::marathon::events::feed(context.clone()));
    context
}

pub(crate) fn unjoined_cluster() -> Arc<MemoryCluster> {
    unjoined()
}

async fn api() -> (Router, ApiContext) {
    let context = joined_context(unjoined()).await;
    (router(context.clone()), context)
}

#[tokio::test]
async fn the_forming_api_answers_until_the_full_one_is_installed() {
    let cluster = unjoined();
    let leave = std::sync::Arc::new(tokio::sync::Notify::new());
    let (app, switch) = crate::ApiSwitch::new(crate::Forming {
        cluster: cluster.clone(),
        version: "test".into(),
        leave: leave.clone(),
    });
    let (status, headers, leader) = call(&app, "GET", "/v1/status/leader", "").await;
    assert_eq!((status, leader), (StatusCode::OK, serde_json::json!("")));
    assert_eq!(headers["x-consul-knownleader"], "false");
    let (status, _, me) = call(&app, "GET", "/v1/agent/self", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["Config"]["NodeName"], "n1");
    let (status, _, error) = call(&app, "PUT", "/v1/kv/k", "v").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error["error"]
        .as_str()
        .unwrap()
        .contains("No cluster leader"));
    let (status, _, _) = call(&app, "GET", "/v2/apps", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let context = joined_context(cluster).await;
    switch.install(router(context.clone()));
    let (status, _, stored) = call(&app, "PUT", "/v1/kv/k", "v").await;
    assert_eq!((status, stored), (StatusCode::OK, serde_json::json!(true)));
    let (status, _, leader) = call(&app, "GET", "/v1/status/leader", "").await;
    assert_eq!(
        (status, leader),
        (StatusCode::OK, serde_json::json!("127.0.0.1:8300"))
    );
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, value)
}

#[tokio::test]
async fn every_answer_carries_consul_headers() {
    let (app, _) = api().await;
    for uri in [
        "/v1/catalog/services",
        "/v1/kv/missing",
        "/v1/health/state/bogus",
    ] {
        let (_, headers, _) = call(&app, "GET", uri, "").await;
        assert!(headers.contains_key("x-consul-index"), "{uri}");
        assert_eq!(headers["x-consul-knownleader"], "true", "{uri}");
        assert!(headers.contains_key("x-consul-lastcontact"), "{uri}");
    }
}

#[tokio::test]
async fn rejected_registration_stores_nothing() {
    let (app, context) = api().await;
    let before = context.store().read(|s| s.clone());
    let bad = [
        r#"{"Name": ""}"#,
        r#"{"Name": "web", "Port": "eighty"}"#,
        r#"{"Name": "web", "Port": 70000}"#,
        r#"{"Name": "web", "Check": {"HTTP": "http://x/", "Interval": "soon"}}"#,
        r#"{"Name": "web", "Check": {"TTL": "1s", "TCP": "a:1"}}"#,
        r#"{"Name": "web", "Tags": "not-a-list"}"#,
        r#"[1, 2]"#,
        r#"{"Name": "web""#,
    ];
    for body in bad {
        let (status, _, error) = call(&app, "PUT", "/v1/agent/service/register", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    assert_eq!(context.store().read(|s| s.clone()), before);
}

#[tokio::test]
async fn script_checks_are_refused_without_enable_script_checks() {
    let (app, context) = api().await;
    let before = context.store().read(|s| s.clone());
    for (uri, body) in [
        (
            "/v1/agent/service/register",
            r#"{"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "1s"}}"#,
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "web", "Checks": [{"Script": "true", "Interval": "1s"}]}"#,
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "c", "Args": ["sh", "-c", "true"], "Interval": "1s"}"#,
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "d", "DockerContainerID": "c1", "Args": ["true"], "Interval": "1s"}"#,
        ),
    ] {
        let (status, _, error) = call(&app, "PUT", uri, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = error["error"].as_str().unwrap_or_default();
        assert_eq!(
            message,
            "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true",
            "{body}"
        );
    }
    assert_eq!(context.store().read(|s| s.clone()), before);
}

#[tokio::test]
async fn blocking_query_returns_on_change_not_before() {
    let (app, _) = api().await;
    let (_, headers, _) = call(&app, "GET", "/v1/catalog/services", "").await;
    let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move {
            call(
                &app,
                "GET",
                &format!("/v1/catalog/services?index={index}&wait=30s"),
                "",
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "returned without a change");
    let (status, _, _) = call(
        &app,
        "PUT",
        "/v1/agent/service/register",
        r#"{"Name":"web","Port":80}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, headers, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    let new_index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
    assert!(new_index > index);
    assert!(body.get("web").is_some());
}

#[tokio::test]
async fn a_blocking_query_on_one_service_returns_for_that_service_only() {
    let (app, _) = api().await;
    let register = |name: &'static str| {
        let app = app.clone();
        async move {
            let body = format!(r#"{{"Name":"{name}","ID":"{name}-1","Port":80}}"#);
            let (status, _, _) = call(&app, "PUT", "/v1/agent/service/register", &body).await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    register("b").await;
    for path in ["/v1/health/service/b", "/v1/catalog/service/b"] {
        let (_, headers, _) = call(&app, "GET", path, "").await;
        let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
        let waiting = {
            let app = app.clone();
            let uri = format!("{path}?index={index}&wait=30s");
            tokio::spawn(async move { call(&app, "GET", &uri, "").await })
        };
        register("a").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "{path}: returned for a change of another service"
        );
        let body = r#"{"Name":"b","ID":"b-1","Port":81}"#;
        call(&app, "PUT", "/v1/agent/service/register", body).await;
        let (status, headers, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let new_index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
        assert!(new_index > index, "{path}");
        let port = &body[0]["Service"]["Port"];
        let port = if port.is_null() {
            &body[0]["ServicePort"]
        } else {
            port
        };
        assert_eq!(port, 81, "{path}: {body}");
        // Back to port 80 for the next path's round.
        register("b").await;
    }
}

#[tokio::test]
async fn blocking_query_times_out_with_same_index() {
    let (app, _) = api().await;
    let (_, headers, _) = call(&app, "GET", "/v1/kv/a?recurse", "").await;
    let index = headers["x-consul-index"].to_str().unwrap().to_string();
    // A write elsewhere in KV must not wake a watcher of another prefix.
    call(&app, "PUT", "/v1/kv/b", "x").await;
    let (status, headers, _) = call(
        &app,
        "GET",
        &format!("/v1/kv/a?recurse&index={index}&wait=300ms"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-consul-index"].to_str().unwrap(), index);
}

#[tokio::test]
async fn ttl_check_updates_drive_passing_filter() {
    let (app, _) = api().await;
    call(
        &app,
        "PUT",
        "/v1/agent/service/register",
        r#"{"name":"api","id":"api1","check":{"ttl":"30s"}}"#,
    )
    .await;
    let (_, _, body) = call(&app, "GET", "/v1/health/service/api?passing", "").await;
    assert_eq!(
        body.as_array().unwrap().len(),
        0,
        "new TTL checks start critical"
    );
    let (status, _, _) = call(&app, "PUT", "/v1/agent/check/pass/service:api1", "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = call(&app, "GET", "/v1/health/service/api?passing", "").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (status, _, _) = call(
        &app,
        "PUT",
        "/v1/agent/check/update/service:api1",
        r#"{"Status":"sideways"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&app, "PUT", "/v1/agent/check/fail/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn kv_cas_and_oversized_values() {
    let (app, _) = api().await;
    let (_, _, created) = call(&app, "PUT", "/v1/kv/k?cas=0", "1").await;
    assert_eq!(created, serde_json::json!(true));
    let (_, _, again) = call(&app, "PUT", "/v1/kv/k?cas=0", "2").await;
    assert_eq!(again, serde_json::json!(false));
    let big = "x".repeat(512 * 1024 + 1);
    let (status, _, _) = call(&app, "PUT", "/v1/kv/big", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, _) = call(&app, "GET", "/v1/kv/big", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(&app, "PUT", "/v1/kv/k?cas=abc", "1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn malformed_requests_get_json_errors_naming_the_field() {
    let (app, context) = api().await;
    let before = context.store().read(|s| s.clone());
    // Durations too long for a Duration once panicked the handler.
    for uri in [
        "/v1/kv/a?wait=9999999999999999999h",
        "/v1/catalog/services?wait=1e300",
    ] {
        let (status, _, error) = call(&app, "GET", uri, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(error["field"], "wait", "{uri}");
    }
    let (status, _, error) = call(
        &app,
        "PUT",
        "/v1/agent/check/register",
        r#"{"Name": "c", "TTL": "9999999999999999999h"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["field"].as_str().unwrap_or_default().contains("TTL"));
    // Path parameters that are not UTF-8.
    let (status, _, error) = call(&app, "GET", "/v1/kv/%ff%fe", "").await;
    assert_eq!(
        (status, error["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("key"))
    );
    let (status, _, error) = call(&app, "GET", "/v1/catalog/service/%c0", "").await;
    assert_eq!(
        (status, error["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );
    let (status, _, error) = call(&app, "DELETE", "/v2/apps/%ff", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["message"]
        .as_str()
        .is_some_and(|m| m.contains("UTF-8")));
    // Unknown routes and methods.
    let (status, _, error) = call(&app, "GET", "/v1/nothing/here", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error["error"].as_str().is_some_and(|m| !m.is_empty()));
    let (status, _, error) = call(&app, "GET", "/v2/nothing", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (status, _, error) = call(&app, "PATCH", "/v1/kv/a", "x").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(error["error"].as_str().is_some_and(|m| m.contains("PATCH")));
    // Marathon answers killing the tasks of an app that does not exist with a 404.
    let (status, _, error) = call(&app, "DELETE", "/v2/apps/none/tasks", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error["message"]
        .as_str()
        .is_some_and(|m| m.contains("does not exist")));
    assert_eq!(context.store().read(|s| s.clone()), before);
}

/// Serves the API on a loopback port with short client timeouts.
async fn served(limits: crate::HttpLimits) -> std::net::SocketAddr {
    let (app, _) = api().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::serve(listener, app, limits, stopped).await;
        drop(stop);
    });
    addr
}

/// Everything the server sends until it closes the connection (or `within` passes).
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

/// Sends one request on a new connection and reads the answer's status line.
async fn status_line(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_client_over_its_connection_limit_gets_a_429_until_one_closes() {
    let limits = crate::HttpLimits {
        max_conns_per_client: 2,
        ..Default::default()
    };
    let addr = served(limits).await;
    let get = b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(status_line(&mut first, get).await, "HTTP/1.1 200 OK");
    assert_eq!(status_line(&mut second, get).await, "HTTP/1.1 200 OK");
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("the refused connection is closed");
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests"),
        "{refused}"
    );
    assert!(
        refused.contains("too many concurrent connections"),
        "{refused}"
    );
    // The two admitted connections are still served; once one closes, a new one is admitted.
    assert_eq!(status_line(&mut first, get).await, "HTTP/1.1 200 OK");
    drop(second);
    let mut fourth = None;
    for _ in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        if status_line(&mut stream, get).await == "HTTP/1.1 200 OK" {
            fourth = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fourth.is_some(),
        "a connection is admitted once another closed"
    );
}

#[tokio::test]
async fn a_request_head_over_the_limit_ends_its_connection_at_once() {
    use tokio::io::AsyncWriteExt;
    let addr = served(crate::HttpLimits::default()).await;
    let head = |size: usize| {
        let mut request = b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', size));
        request.extend_from_slice(b"\r\n\r\n");
        request
    };
    // Just under the limit: served.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let under = head(crate::serve::MAX_HEAD_BYTES - 1024);
    assert_eq!(status_line(&mut stream, &under).await, "HTTP/1.1 200 OK");
    // Over it: the server stops reading and closes (with a 431 when the client reads it
    // before the reset of the unread rest), long before the header timeout.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream
        .write_all(&head(crate::serve::MAX_HEAD_BYTES * 4))
        .await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection is closed, not left reading the head");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a head over the limit: {answer:?}"
    );
}

#[tokio::test]
async fn slow_clients_are_dropped_after_the_timeouts() {
    use tokio::io::AsyncWriteExt;
    let limits = crate::HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        max_conns_per_client: 0,
    };
    let addr = served(limits).await;
    // Silent, and half a head: closed once the header timeout passes.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut half_head = tokio::net::TcpStream::connect(addr).await.unwrap();
    half_head
        .write_all(b"GET /v1/kv/a HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // The whole head, less body than declared: a 408 once the body timeout passes.
    let mut slow_body = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    let within = Duration::from_secs(5);
    assert_eq!(
        read_until_closed(&mut silent, within).await.as_deref(),
        Some("")
    );
    assert!(read_until_closed(&mut half_head, within).await.is_some());
    let answer = read_until_closed(&mut slow_body, within).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    // A body declared over the limit is refused without inviting it.
    let mut too_large = tokio::net::TcpStream::connect(addr).await.unwrap();
    too_large
        .write_all(
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut too_large, within).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn the_leader_abdicates_and_without_one_there_is_none() {
    let cluster = unjoined();
    let context = joined_context(cluster.clone()).await;
    let app = router(context);
    let (status, _, answer) = call(&app, "DELETE", "/v2/leader", "").await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::OK,
            serde_json::json!({ "message": "Leadership abdicated" })
        )
    );
    cluster.set_leader(false);
    for method in ["GET", "DELETE"] {
        let (status, _, answer) = call(&app, method, "/v2/leader", "").await;
        assert_eq!(
            (status, answer),
            (
                StatusCode::NOT_FOUND,
                serde_json::json!({ "message": "There is no leader" })
            ),
            "{method}"
        );
    }
}

#[tokio::test]
async fn event_subscriptions_are_stored_listed_and_refused_without_a_usable_url() {
    let (app, context) = api().await;
    let url = "/v2/eventSubscriptions?callbackUrl=http%3A%2F%2F127.0.0.1%3A9%2Fcb";
    let (status, _, answer) = call(&app, "POST", url, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["eventType"], "subscribe_event");
    assert_eq!(answer["callbackUrl"], "http://127.0.0.1:9/cb");
    let (_, _, listed) = call(&app, "GET", "/v2/eventSubscriptions", "").await;
    assert_eq!(
        listed,
        serde_json::json!({ "callbackUrls": ["http://127.0.0.1:9/cb"] })
    );
    let before = context.store().read(|s| s.clone());
    for (uri, wanted) in [
        ("/v2/eventSubscriptions", StatusCode::BAD_REQUEST),
        (
            "/v2/eventSubscriptions?callbackUrl=ftp%3A%2F%2Fx%2F",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v2/eventSubscriptions?callbackUrl=not%20a%20url",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, _, error) = call(&app, "POST", uri, "").await;
        assert_eq!(status, wanted, "{uri}");
        assert!(
            error["message"].as_str().unwrap().contains("callbackUrl"),
            "{uri}: {error}"
        );
    }
    assert_eq!(context.store().read(|s| s.clone()), before);
    let (status, _, answer) = call(&app, "DELETE", url, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["eventType"], "unsubscribe_event");
    let (_, _, listed) = call(&app, "GET", "/v2/eventSubscriptions", "").await;
    assert_eq!(listed, serde_json::json!({ "callbackUrls": [] }));
}

#[tokio::test]
async fn maintenance_makes_instances_critical_and_is_undone() {
    let (app, _) = api().await;
    let body = r#"{"ID":"web-1","Name":"web","Port":80}"#;
    let (status, _, _) = call(&app, "PUT", "/v1/agent/service/register", body).await;
    assert_eq!(status, StatusCode::OK);
    let health = "/v1/agent/health/service/id/web-1";
    let passing = "/v1/health/service/web?passing";
    let (status, _, _) = call(&app, "GET", health, "").await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, _) = call(&app, "PUT", "/v1/agent/maintenance?enable=true", "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, answer) = call(&app, "GET", health, "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer["AggregatedStatus"], "maintenance");
    let (_, _, entries) = call(&app, "GET", passing, "").await;
    assert_eq!(entries, serde_json::json!([]));
    let (status, _, _) = call(&app, "PUT", "/v1/agent/maintenance?enable=false", "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, entries) = call(&app, "GET", passing, "").await;
    assert_eq!(entries.as_array().map(Vec::len), Some(1));

    let service_on = "/v1/agent/service/maintenance/web-1?enable=true&reason=drain";
    let (status, _, _) = call(&app, "PUT", service_on, "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, checks) = call(&app, "GET", "/v1/agent/checks", "").await;
    let check = &checks["_service_maintenance:web-1"];
    assert_eq!(
        (&check["Status"], &check["Notes"], &check["Type"]),
        (
            &serde_json::json!("critical"),
            &serde_json::json!("drain"),
            &serde_json::json!("maintenance")
        )
    );

    let (status, _, error) = call(&app, "PUT", "/v1/agent/maintenance", "").await;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::BAD_REQUEST, &serde_json::json!("enable"))
    );
    let unknown = "/v1/agent/service/maintenance/nope?enable=true";
    let (status, _, _) = call(&app, "PUT", unknown, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn fired_events_are_listed_and_a_blocked_list_wakes_for_a_new_one() {
    let (app, _) = api().await;
    let (status, _, fired) = call(&app, "PUT", "/v1/event/fire/deploy", "v1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&fired["Name"], &fired["LTime"]),
        (&serde_json::json!("deploy"), &serde_json::json!(1))
    );
    let (_, headers, events) = call(&app, "GET", "/v1/event/list", "").await;
    assert_eq!(events[0]["ID"], fired["ID"]);
    let index = headers["x-consul-index"].to_str().unwrap().to_string();

    let waiting = {
        let app = app.clone();
        let uri = format!("/v1/event/list?index={index}&wait=30s");
        tokio::spawn(async move { call(&app, "GET", &uri, "").await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    let (_, _, second) = call(&app, "PUT", "/v1/event/fire/deploy", "v2").await;
    let (_, headers, events) = waiting.await.unwrap();
    assert_ne!(headers["x-consul-index"].to_str().unwrap(), index);
    assert_eq!(events[1]["ID"], second["ID"]);
}

#[tokio::test]
async fn acl_paths_answer_401_without_acls() {
    let (app, _) = api().await;
    for (method, uri) in [
        ("PUT", "/v1/acl/bootstrap"),
        ("GET", "/v1/acl/tokens"),
        ("GET", "/v1/acl/policy/name/global-management"),
        ("PUT", "/v1/agent/token/default"),
    ] {
        let (status, _, _) = call(&app, method, uri, "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
}

#[tokio::test]
async fn acl_bootstrap_then_policies_checked_and_listed() {
    let facts = crate::NodeFacts {
        acl: Arc::new(atoll_acl::AclSettings::enabled(
            atoll_acl::DefaultPolicy::Deny,
            Default::default(),
        )),
        ..Default::default()
    };
    let app = router(joined_context_with(unjoined(), facts).await);
    let (status, _, _) = call(&app, "GET", "/v1/acl/policies", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "anonymous under deny");
    let (status, _, root) = call(&app, "PUT", "/v1/acl/bootstrap", "").await;
    assert_eq!(status, StatusCode::OK);
    let secret = root["SecretID"].as_str().unwrap().to_string();
    let (status, _, _) = call(&app, "PUT", "/v1/acl/bootstrap", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let uri = format!("/v1/acl/policy?token={secret}");
    let (status, _, error) = call(&app, "PUT", &uri, r#"{"Name": "x", "Rules": "key {"}"#).await;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::BAD_REQUEST, &serde_json::json!("Rules"))
    );
    let body = r#"{"Name": "kv", "Rules": "key_prefix \"\" { policy = \"read\" }"}"#;
    let (status, _, policy) = call(&app, "PUT", &uri, body).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let (status, headers, list) =
        call(&app, "GET", &format!("/v1/acl/policies?token={secret}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list[0].get("Rules").is_none());
    let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
    assert_eq!(index, policy["ModifyIndex"].as_u64().unwrap());
    let (status, _, _) = call(&app, "GET", "/v1/acl/policies?token=nope", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
