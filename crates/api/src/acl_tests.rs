//! What the endpoints allow, deny and leave out of their answers once ACLs are on (default
//! deny; the anonymous token holds no rules). Tokens with rules are installed per test
//! through `acl::test_tokens`.

use std::sync::Arc;

use atoll_acl::{
    AclSettings, AgentTokens, Authorizer, DefaultPolicy, Disposition, Rule, Segment, Target,
};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::acl::test_tokens;
use crate::tests::{joined_context_with, unjoined_cluster};
use crate::{router, NodeFacts};

const ROOT: &str = "root-secret";

async fn acl_api() -> Router {
    let facts = NodeFacts {
        acl: Arc::new(AclSettings::enabled(
            DefaultPolicy::Deny,
            AgentTokens::default(),
        )),
        ..NodeFacts::default()
    };
    test_tokens::install(ROOT, Authorizer::management());
    let context = joined_context_with(unjoined_cluster(), facts).await;
    router(context)
}

fn rule(target: Target, disposition: Disposition) -> Rule {
    Rule {
        target,
        disposition,
    }
}

fn prefix(segment: Segment, name: &str, disposition: Disposition) -> Rule {
    rule(Target::Prefix(segment, name.into()), disposition)
}

/// Installs a token whose secret is `secret` with these rules over a default deny.
fn token(secret: &str, rules: Vec<Rule>) {
    test_tokens::install(secret, Authorizer::new(DefaultPolicy::Deny, rules));
}

async fn call_as(
    app: &Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, Value, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("x-consul-token", token);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, text)
}

fn keys_of(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["Key"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn anonymous_under_default_deny_is_refused_writes_and_sees_empty_listings() {
    let app = acl_api().await;
    let (status, _, _) = call_as(&app, Some(ROOT), "PUT", "/v1/kv/a", "1").await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, text) = call_as(&app, None, "GET", "/v1/kv/a", "").await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::FORBIDDEN, "Permission denied")
    );
    let (status, _, _) = call_as(&app, None, "PUT", "/v1/kv/a", "2").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A listing leaves out what may not be read: nothing left is Consul's 404.
    let (status, _, _) = call_as(&app, None, "GET", "/v1/kv/?recurse", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body, _) = call_as(&app, None, "GET", "/v1/catalog/services", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body, _) = call_as(&app, None, "GET", "/v1/catalog/nodes", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
    let (status, body, _) = call_as(&app, Some(ROOT), "GET", "/v1/catalog/nodes", "").await;
    assert_eq!(
        (status, body.as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    let (status, body, _) = call_as(&app, None, "GET", "/v1/agent/members", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));

    for (method, uri) in [
        ("GET", "/v1/agent/self"),
        ("GET", "/v1/agent/metrics"),
        ("GET", "/metrics"),
        ("GET", "/v1/operator/raft/configuration"),
        ("PUT", "/v1/agent/reload"),
        ("PUT", "/v1/session/create"),
        ("PUT", "/v1/event/fire/deploy"),
        ("PUT", "/v1/agent/maintenance?enable=true"),
        ("POST", "/v1/query"),
    ] {
        let body = if uri == "/v1/query" {
            r#"{"Name":"q","Service":{"Service":"web"}}"#
        } else {
            ""
        };
        let (status, _, _) = call_as(&app, None, method, uri, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}");
        let (status, _, _) = call_as(&app, Some(ROOT), method, uri, body).await;
        assert_ne!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {uri} as management"
        );
    }
    // Status endpoints stay open.
    let (status, _, _) = call_as(&app, None, "GET", "/v1/status/leader", "").await;
    assert_eq!(status, StatusCode::OK);
    // A token that names no token.
    let (status, _, text) = call_as(&app, Some("nope"), "GET", "/v1/kv/a", "").await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::FORBIDDEN, "ACL not found")
    );
}

#[tokio::test]
async fn kv_rules_decide_by_exact_then_longest_prefix_and_filter_listings() {
    let app = acl_api().await;
    for key in ["app/a", "app/secret/b", "other"] {
        let (status, _, _) = call_as(&app, Some(ROOT), "PUT", &format!("/v1/kv/{key}"), "v").await;
        assert_eq!(status, StatusCode::OK);
    }
    token(
        "kv",
        vec![
            prefix(Segment::Key, "app/", Disposition::Write),
            prefix(Segment::Key, "app/secret/", Disposition::Deny),
        ],
    );
    let (status, _, _) = call_as(&app, Some("kv"), "PUT", "/v1/kv/app/new", "v").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call_as(&app, Some("kv"), "PUT", "/v1/kv/other", "v").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call_as(&app, Some("kv"), "GET", "/v1/kv/app/secret/b", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body, _) = call_as(&app, Some("kv"), "GET", "/v1/kv/?recurse", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys_of(&body), ["app/a", "app/new"]);
    let (_, body, _) = call_as(&app, Some("kv"), "GET", "/v1/kv/?keys", "").await;
    assert_eq!(body, json!(["app/a", "app/new"]));
    // A recursive delete needs write on everything under the prefix.
    let (status, _, _) = call_as(&app, Some("kv"), "DELETE", "/v1/kv/app/?recurse", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body, _) = call_as(&app, Some(ROOT), "GET", "/v1/kv/?keys", "").await;
    assert_eq!(
        body.as_array().map(Vec::len),
        Some(4),
        "nothing was deleted"
    );
    let (status, _, _) = call_as(&app, Some("kv"), "DELETE", "/v1/kv/app/a?recurse", "").await;
    assert_eq!(status, StatusCode::OK);
    // The token also comes from `?token=` and `Authorization: Bearer`.
    let (status, _, _) = call_as(&app, None, "GET", "/v1/kv/app/new?token=kv", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_transaction_with_one_denied_operation_is_refused_whole() {
    let app = acl_api().await;
    token("kv", vec![prefix(Segment::Key, "app/", Disposition::Write)]);
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "app/x", "Value": "dg=="}},
        {"KV": {"Verb": "set", "Key": "other", "Value": "dg=="}},
    ]);
    let (status, _, _) = call_as(&app, Some("kv"), "PUT", "/v1/txn", &ops.to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call_as(&app, Some(ROOT), "GET", "/v1/kv/app/x", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was applied");
    let ops = json!([{"KV": {"Verb": "set", "Key": "app/x", "Value": "dg=="}}]);
    let (status, _, _) = call_as(&app, Some("kv"), "PUT", "/v1/txn", &ops.to_string()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn catalog_and_health_need_service_read_and_node_read() {
    let app = acl_api().await;
    for (node, service) in [("n2", "web"), ("n2", "db"), ("n3", "web")] {
        let body = json!({
            "Node": node, "Address": "10.0.0.2",
            "Service": {"ID": format!("{service}-{node}"), "Service": service, "Port": 80},
        });
        let (status, _, _) = call_as(
            &app,
            Some(ROOT),
            "PUT",
            "/v1/catalog/register",
            &body.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    token(
        "web",
        vec![
            prefix(Segment::Service, "web", Disposition::Read),
            rule(Target::Exact(Segment::Node, "n2".into()), Disposition::Read),
        ],
    );
    let (_, body, _) = call_as(&app, Some("web"), "GET", "/v1/catalog/services", "").await;
    assert_eq!(body, json!({ "web": [] }));
    let (_, body, _) = call_as(&app, Some("web"), "GET", "/v1/catalog/service/web", "").await;
    let nodes: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n2"], "n3 may not be read");
    let (_, body, _) = call_as(&app, Some("web"), "GET", "/v1/health/service/db", "").await;
    assert_eq!(body, json!([]));
    let (_, body, _) = call_as(&app, Some("web"), "GET", "/v1/catalog/node/n3", "").await;
    assert_eq!(body, Value::Null);
    let (_, body, _) = call_as(&app, Some("web"), "GET", "/v1/catalog/node/n2", "").await;
    assert_eq!(
        body["Services"]
            .as_object()
            .map(|s| s.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["web-n2".to_string()])
    );
    // Registering needs node:write and service:write.
    let body = json!({"Node": "n2", "Address": "10.0.0.2", "Service": {"Service": "web"}});
    let (status, _, _) = call_as(
        &app,
        Some("web"),
        "PUT",
        "/v1/catalog/register",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    token(
        "web-writer",
        vec![
            prefix(Segment::Service, "web", Disposition::Write),
            prefix(Segment::Node, "n2", Disposition::Write),
        ],
    );
    let (status, _, _) = call_as(
        &app,
        Some("web-writer"),
        "PUT",
        "/v1/catalog/register",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = json!({"Node": "n2", "ServiceID": "db-n2"});
    let (status, _, _) = call_as(
        &app,
        Some("web-writer"),
        "PUT",
        "/v1/catalog/deregister",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "db is not the token's");
}

#[tokio::test]
async fn marathon_apps_follow_app_prefix_rules_with_marathons_error_shape() {
    let app = acl_api().await;
    let create = |id: &str| json!({ "id": id, "cmd": "sleep 1", "instances": 0 }).to_string();
    let (status, _, _) = call_as(&app, Some(ROOT), "POST", "/v2/apps", &create("/dev/x")).await;
    assert_eq!(status, StatusCode::CREATED);
    token(
        "prod",
        vec![prefix(Segment::App, "/prod/", Disposition::Write)],
    );
    let (status, _, _) =
        call_as(&app, Some("prod"), "POST", "/v2/apps", &create("/prod/web")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body, _) =
        call_as(&app, Some("prod"), "POST", "/v2/apps", &create("/dev/y")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            json!({ "message": "Permission denied" })
        )
    );
    let (_, body, _) = call_as(&app, Some("prod"), "GET", "/v2/apps", "").await;
    let ids: Vec<&str> = body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["/prod/web"]);
    let (status, _, _) = call_as(&app, Some("prod"), "GET", "/v2/apps/dev/x", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call_as(&app, Some("prod"), "DELETE", "/v2/apps/dev/x", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The group tree keeps its shape without the apps that may not be read.
    let (_, body, _) = call_as(&app, Some("prod"), "GET", "/v2/groups", "").await;
    let text = body.to_string();
    assert!(
        text.contains("/prod/web") && !text.contains("/dev/x"),
        "{text}"
    );
    let (status, _, _) = call_as(&app, Some("prod"), "DELETE", "/v2/groups/dev", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Deployments of apps the token may not read are left out.
    let (_, body, _) = call_as(&app, Some("prod"), "GET", "/v2/deployments", "").await;
    for deployment in body.as_array().unwrap() {
        assert!(!deployment.to_string().contains("/dev/"), "{deployment}");
    }
    // Marathon's clients also send DC/OS's `Authorization: token=`.
    let request = Request::builder()
        .uri("/v2/apps")
        .header("authorization", "token=prod")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // /v2/info and /ping stay open.
    let (status, _, _) = call_as(&app, None, "GET", "/v2/info", "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call_as(&app, None, "GET", "/ping", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn sessions_events_and_queries_are_checked_by_node_and_name() {
    let app = acl_api().await;
    token(
        "ops",
        vec![
            prefix(Segment::Session, "n1", Disposition::Write),
            prefix(Segment::Event, "deploy", Disposition::Write),
            prefix(Segment::Query, "web", Disposition::Write),
        ],
    );
    let (status, body, _) = call_as(&app, Some("ops"), "PUT", "/v1/session/create", "{}").await;
    assert_eq!(status, StatusCode::OK);
    let id = body["ID"].as_str().unwrap().to_string();
    let (status, _, _) = call_as(
        &app,
        Some("ops"),
        "PUT",
        "/v1/session/create",
        r#"{"Node":"n9"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body, _) = call_as(&app, Some("ops"), "GET", "/v1/session/list", "").await;
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    let (_, body, _) = call_as(&app, None, "GET", "/v1/session/list", "").await;
    assert_eq!(body, json!([]));
    let (status, _, _) = call_as(&app, None, "PUT", &format!("/v1/session/destroy/{id}"), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _, _) = call_as(&app, Some("ops"), "PUT", "/v1/event/fire/deploy-web", "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call_as(&app, Some("ops"), "PUT", "/v1/event/fire/other", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body, _) = call_as(&app, None, "GET", "/v1/event/list", "").await;
    assert_eq!(body, json!([]));

    let query = |name: &str| json!({ "Name": name, "Service": { "Service": "web" } }).to_string();
    let (status, _, _) = call_as(&app, Some("ops"), "POST", "/v1/query", &query("web-q")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call_as(&app, Some("ops"), "POST", "/v1/query", &query("db-q")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body, _) = call_as(&app, Some("ops"), "GET", "/v1/query", "").await;
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    let (_, body, _) = call_as(&app, None, "GET", "/v1/query", "").await;
    assert_eq!(body, json!([]));
}
