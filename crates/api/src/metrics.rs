//! `/metrics` (Prometheus text format) and `/v1/agent/metrics` (Consul's JSON, or the same
//! text with `?format=prometheus`), and the route template each request is counted under.
//!
//! A scrape is the node's instruments (`atoll_metrics::node()`: HTTP, DNS, Raft timings,
//! the scheduler's plans) plus what is read at that moment: the catalog, KV and workload
//! sizes under one read of the state, Raft's indexes from `Cluster::raft_stats`, and the
//! process from `/proc/self`. Nothing here runs on a request's hot path but the route tag.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use atoll_cluster::ClusterHandle;
use atoll_metrics::{encode_text, Family, Kind, Value, TEXT_CONTENT_TYPE};
use atoll_state::table::Map;
use atoll_state::{aggregate_status, CheckStatus, TaskState};
use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::acl::Authz;
use crate::error::ApiError;
use crate::query::Query;
use crate::ApiContext;
use atoll_acl::Segment;

/// `GET /metrics`: `agent:read` on this node.
pub async fn prometheus(State(context): State<ApiContext>, authz: Authz) -> Response {
    if let Err(denied) = authz.require_read(Segment::Agent, context.node()) {
        return denied.into_response();
    }
    text_response(&scrape(&context))
}

/// `GET /v1/agent/metrics`: Consul's JSON, or with `?format=prometheus` the text format.
/// Needs `agent:read` on this node.
pub async fn agent_metrics(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authz.require_read(Segment::Agent, context.node())?;
    let query = Query::parse(raw.as_deref());
    let families = scrape(&context);
    match query.get("format") {
        None | Some("") | Some("json") => {
            Ok(axum::Json(consul_json(&families, SystemTime::now())).into_response())
        }
        Some("prometheus") => Ok(text_response(&families)),
        Some(other) => Err(ApiError::field(
            "format",
            format!("Invalid format {other:?}: use \"prometheus\" or leave it out for JSON"),
        )),
    }
}

fn text_response(families: &[Family]) -> Response {
    let mut response = encode_text(families).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    response
}

/// `GET /metrics` before the node has joined its cluster: its instruments, Raft and the
/// process, without the sizes of a state it may not have yet.
pub fn forming_metrics(cluster: &ClusterHandle, version: &str) -> Response {
    text_response(&node_families(cluster, version))
}

/// Every family of this node, now.
pub fn scrape(context: &ApiContext) -> Vec<Family> {
    let mut families = node_families(context.cluster(), context.version());
    let holds_kv = context.cluster().holds(atoll_state::Table::Kv);
    families.extend(state_families(context.store(), holds_kv));
    families
}

/// Every family but the state's sizes.
fn node_families(cluster: &ClusterHandle, version: &str) -> Vec<Family> {
    let mut families = atoll_metrics::node().families();
    families.extend(raft_families(&cluster.raft_stats()));
    if let Some(figures) = atoll_metrics::process::read() {
        families.extend(atoll_metrics::process::families(&figures));
    }
    families.push(
        Family::new(
            "atoll_build_info",
            "Always 1; the version this node runs is its label.",
            Kind::Gauge,
        )
        .number(&[("version", version)], 1.0),
    );
    families
}

/// The sizes of the replicated state. The tables are persistent maps: they are copied (in
/// constant time) under the store's read lock and counted after it, so a scrape of a large
/// catalog does not hold writers back. Keys and sessions are counted only where the node
/// holds them (a compute node holds none: a zero there would be wrong, not small).
fn state_families(store: &atoll_cluster::Store, holds_kv: bool) -> Vec<Family> {
    let tables = store.read(|state| Tables {
        nodes: (*state.nodes).clone(),
        services: (*state.services).clone(),
        checks: (*state.checks).clone(),
        kv_keys: holds_kv.then(|| state.kv.len()),
        sessions: holds_kv.then(|| state.sessions.len()),
        apps: (*state.workload.apps).clone(),
        deployments: state.workload.deployments.len(),
        tasks: (*state.workload.tasks).clone(),
        queue: (*state.workload.queue).clone(),
    });
    table_families(&tables)
}

/// The tables a scrape counts, copied out of the state.
struct Tables {
    nodes: Map<String, atoll_state::Node>,
    services: Map<String, Map<String, atoll_state::ServiceInstance>>,
    checks: Map<String, Map<String, atoll_state::Check>>,
    /// `None` where the node holds no keys or sessions.
    kv_keys: Option<usize>,
    sessions: Option<usize>,
    apps: Map<String, atoll_state::AppSpec>,
    deployments: usize,
    tasks: Map<String, atoll_state::Allocation>,
    queue: Map<String, atoll_state::Unplaced>,
}

fn gauge(name: &'static str, help: &'static str, value: usize) -> Family {
    Family::new(name, help, Kind::Gauge).number(&[], value as f64)
}

/// The sizes of the replicated state, as this node holds it.
fn table_families(state: &Tables) -> Vec<Family> {
    let instances: usize = state.services.values().map(|s| s.len()).sum();
    let names: BTreeSet<&str> = state
        .services
        .values()
        .flat_map(|s| s.values())
        .map(|s| s.name.as_str())
        .collect();
    let mut checks = [0usize; 3];
    let mut node_health = [0usize; 3];
    for (node, node_checks) in state.checks.iter() {
        for check in node_checks.values() {
            checks[status_slot(check.status)] += 1;
        }
        let own = node_checks.values().filter(|c| c.service_id.is_empty());
        if state.nodes.contains_key(node) {
            node_health[status_slot(aggregate_status(own))] += 1;
        }
    }
    // Nodes without any check of their own count as passing, as `aggregate_status` says.
    let judged: usize = node_health.iter().sum();
    node_health[0] += state.nodes.len().saturating_sub(judged);
    let mut check_family = Family::new(
        "atoll_catalog_checks",
        "Health checks in the catalog, by status.",
        Kind::Gauge,
    );
    let mut health_family = Family::new(
        "atoll_catalog_node_health",
        "Nodes in the catalog, by the worst status of their node-level checks (serfHealth, maintenance).",
        Kind::Gauge,
    );
    for (slot, status) in STATUSES.iter().enumerate() {
        check_family.push_number(&[("status", status.as_str())], checks[slot] as f64);
        health_family.push_number(&[("status", status.as_str())], node_health[slot] as f64);
    }

    let mut tasks: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for task in state.tasks.values() {
        let driver = state
            .apps
            .get(&task.app_id)
            .map_or("unknown", atoll_workload::leader::driver_name);
        *tasks.entry((task_state(task.state), driver)).or_default() += 1;
    }
    let mut task_family = Family::new(
        "atoll_tasks",
        "Tasks (Marathon's instances) by state and driver.",
        Kind::Gauge,
    );
    for ((state, driver), count) in tasks {
        task_family.push_number(&[("state", state), ("driver", driver)], count as f64);
    }
    let queued: u64 = state.queue.values().map(|u| u64::from(u.count)).sum();

    let mut families = vec![
        gauge(
            "atoll_catalog_nodes",
            "Nodes in the catalog.",
            state.nodes.len(),
        ),
        gauge(
            "atoll_catalog_services",
            "Distinct service names in the catalog.",
            names.len(),
        ),
        gauge(
            "atoll_catalog_service_instances",
            "Service instances in the catalog.",
            instances,
        ),
        check_family,
        health_family,
    ];
    if let Some(keys) = state.kv_keys {
        families.push(gauge("atoll_kv_keys", "Keys in the KV store.", keys));
    }
    if let Some(sessions) = state.sessions {
        families.push(gauge("atoll_sessions", "Open sessions.", sessions));
    }
    families.extend([
        gauge("atoll_apps", "Marathon apps.", state.apps.len()),
        gauge(
            "atoll_deployments",
            "Deployments in progress.",
            state.deployments,
        ),
        task_family,
        gauge(
            "atoll_scheduler_queue_apps",
            "Apps with instances the scheduler could not place yet.",
            state.queue.len(),
        ),
        Family::new(
            "atoll_scheduler_queue_instances",
            "Instances waiting for a placement.",
            Kind::Gauge,
        )
        .number(&[], queued as f64),
    ]);
    families
}

const STATUSES: [CheckStatus; 3] = [
    CheckStatus::Passing,
    CheckStatus::Warning,
    CheckStatus::Critical,
];

fn status_slot(status: CheckStatus) -> usize {
    match status {
        CheckStatus::Passing => 0,
        CheckStatus::Warning => 1,
        CheckStatus::Critical => 2,
    }
}

fn task_state(state: TaskState) -> &'static str {
    match state {
        TaskState::Staging => "staging",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Finished => "finished",
        TaskState::Failed => "failed",
        TaskState::Killed => "killed",
        TaskState::Lost => "lost",
    }
}

/// Raft's figures for this node.
fn raft_families(stats: &atoll_cluster::RaftStats) -> Vec<Family> {
    let number =
        |name, help, value: u64| Family::new(name, help, Kind::Gauge).number(&[], value as f64);
    let mut state = Family::new(
        "atoll_raft_state",
        "1 for the Raft role this node has now (Leader, Follower, Candidate, Shutdown).",
        Kind::Gauge,
    );
    for role in ["Leader", "Follower", "Candidate", "Shutdown"] {
        state.push_number(&[("state", role)], f64::from(u8::from(stats.state == role)));
    }
    vec![
        state,
        number("atoll_raft_term", "The current Raft term.", stats.term),
        number(
            "atoll_raft_last_log_index",
            "Index of the last entry in the log.",
            stats.last_log_index,
        ),
        number(
            "atoll_raft_commit_index",
            "Highest index known committed.",
            stats.commit_index,
        ),
        number(
            "atoll_raft_applied_index",
            "Highest index applied to the state.",
            stats.applied_index,
        ),
        number(
            "atoll_raft_log_entries",
            "Entries in the log since its last compaction.",
            stats.log_entries,
        ),
        number(
            "atoll_raft_last_snapshot_index",
            "Index of the last snapshot (0: none).",
            stats.last_snapshot_index,
        ),
        number(
            "atoll_raft_peers",
            "Voters other than this node.",
            stats.num_peers as u64,
        ),
    ]
}

/// The families in the shape of Consul's `/v1/agent/metrics`. Consul reports what happened
/// in its last 10-second interval; these are totals since the node started: a counter's
/// `Count` and `Sum` are its value (each increment counted as one, so `Mean`, `Min` and
/// `Max` are 1), a histogram's sample is every observation so far.
pub fn consul_json(families: &[Family], now: SystemTime) -> serde_json::Value {
    let mut gauges = Vec::new();
    let mut counters = Vec::new();
    let mut samples = Vec::new();
    for family in families {
        for series in &family.series {
            let labels: serde_json::Map<String, serde_json::Value> = series
                .labels
                .iter()
                .map(|(name, value)| (name.to_string(), json!(value)))
                .collect();
            match (&series.value, family.kind) {
                (Value::Number(value), Kind::Gauge) => gauges.push(json!({
                    "Name": family.name,
                    "Value": value,
                    "Labels": labels,
                })),
                (Value::Number(value), _) => {
                    let per = if *value > 0.0 { 1.0 } else { 0.0 };
                    counters.push(json!({
                        "Name": family.name,
                        "Count": value.round() as u64,
                        "Sum": value,
                        "Min": per,
                        "Max": per,
                        "Mean": per,
                        "Stddev": 0.0,
                        "Labels": labels,
                    }))
                }
                (Value::Histogram(histogram), _) => samples.push(json!({
                    "Name": family.name,
                    "Count": histogram.count(),
                    "Sum": histogram.sum,
                    "Min": histogram.min,
                    "Max": histogram.max,
                    "Mean": histogram.mean(),
                    "Stddev": histogram.stddev(),
                    "Labels": labels,
                })),
            }
        }
    }
    json!({
        "Timestamp": go_time_string(now),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": samples,
    })
}

/// `2006-01-02 15:04:05 +0000 UTC`, as Go prints a UTC time (Consul's `Timestamp`).
fn go_time_string(now: SystemTime) -> String {
    let seconds = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The route template a response was answered under (a response extension the HTTP
/// server reads to count the request).
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub MatchedPath);

/// Tags each routed response with its [`RouteTemplate`]; applied to the router's routes
/// only, so an unknown path or a wrong method has none.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLayer;

impl<S> tower::Layer<S> for RouteLayer {
    type Service = RouteTagged<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteTagged { inner }
    }
}

/// The service [`RouteLayer`] makes.
#[derive(Debug, Clone)]
pub struct RouteTagged<S> {
    inner: S,
}

impl<S> tower::Service<Request> for RouteTagged<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tagged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        Tagged {
            inner: self.inner.call(request),
            route,
        }
    }
}

pin_project_lite::pin_project! {
    /// A routed request's future, tagging its response.
    pub struct Tagged<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
    }
}

impl<F, E> Future for Tagged<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(route)) = (&mut result, this.route.take()) {
            response.extensions_mut().insert(RouteTemplate(route));
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_metrics::Histogram;
    use axum::body::Body;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn answer(app: &axum::Router, method: &str, uri: &str) -> Response {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from("x"))
            .unwrap();
        app.clone().oneshot(request).await.unwrap()
    }

    fn route_of(response: &Response) -> Option<&str> {
        response
            .extensions()
            .get::<RouteTemplate>()
            .map(|route| route.0.as_str())
    }

    #[tokio::test]
    async fn routed_answers_carry_their_template_and_others_none() {
        let cluster = std::sync::Arc::new(atoll_cluster::MemoryCluster::new("n1", "dc1"));
        let app = crate::router(crate::tests::joined_context(cluster).await);
        let put = answer(&app, "PUT", "/v1/kv/some/secret/key").await;
        assert_eq!(put.status(), StatusCode::OK);
        assert_eq!(route_of(&put), Some("/v1/kv/{*key}"));
        let missing = answer(&app, "GET", "/v1/kv/another/key").await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(route_of(&missing), Some("/v1/kv/{*key}"));
        let app_route = answer(&app, "GET", "/v2/apps/some/app").await;
        assert_eq!(route_of(&app_route), Some("/v2/apps/{*rest}"));
        let unknown = answer(&app, "GET", "/no/such/path").await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(route_of(&unknown), None);
        let wrong_method = answer(&app, "DELETE", "/v1/agent/self").await;
        assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(route_of(&wrong_method), None);
    }

    #[tokio::test]
    async fn a_node_that_has_not_joined_serves_its_metrics_without_the_state() {
        let cluster = std::sync::Arc::new(atoll_cluster::MemoryCluster::new("n1", "dc1"));
        cluster.set_leader(false);
        let (app, _switch) = crate::ApiSwitch::new(crate::Forming {
            cluster,
            version: "test".into(),
            leave: std::sync::Arc::new(tokio::sync::Notify::new()),
        });
        let text = answer(&app, "GET", "/metrics").await;
        assert_eq!(text.status(), StatusCode::OK);
        assert_eq!(text.headers()[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
        let body = text.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("\natoll_raft_state{state=\"Follower\"} 1\n"),
            "{body}"
        );
        assert!(!body.contains("atoll_catalog_nodes"), "{body}");
    }

    #[tokio::test]
    async fn both_endpoints_answer_their_formats() {
        let cluster = std::sync::Arc::new(atoll_cluster::MemoryCluster::new("n1", "dc1"));
        let app = crate::router(crate::tests::joined_context(cluster).await);
        let text = answer(&app, "GET", "/metrics").await;
        assert_eq!(text.status(), StatusCode::OK);
        assert_eq!(text.headers()[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
        let body = text.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("# TYPE atoll_catalog_nodes gauge\natoll_catalog_nodes 1\n"));
        assert!(body.contains("atoll_build_info{version=\"test\"} 1\n"));

        let same = answer(&app, "GET", "/v1/agent/metrics?format=prometheus").await;
        assert_eq!(same.headers()[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
        let json = answer(&app, "GET", "/v1/agent/metrics").await;
        assert_eq!(json.status(), StatusCode::OK);
        let body = json.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for key in ["Timestamp", "Gauges", "Points", "Counters", "Samples"] {
            assert!(value.get(key).is_some(), "{key} missing: {value}");
        }
        let refused = answer(&app, "GET", "/v1/agent/metrics?format=xml").await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["field"], "format");
    }

    #[test]
    fn go_time_strings_match_consuls_timestamp() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_502_160_910);
        assert_eq!(go_time_string(at), "2017-08-08 02:55:10 +0000 UTC");
        assert_eq!(go_time_string(UNIX_EPOCH), "1970-01-01 00:00:00 +0000 UTC");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(go_time_string(leap), "2000-02-29 00:00:00 +0000 UTC");
    }

    #[test]
    fn consul_json_sorts_families_into_gauges_counters_and_samples() {
        let histogram = Histogram::new(&[1.0]);
        histogram.observe(0.5);
        histogram.observe(1.5);
        let mut samples = Family::new("atoll_wait_seconds", "Waits.", Kind::Histogram);
        samples.push_histogram(&[("transport", "udp")], histogram.snapshot());
        let families = vec![
            Family::new("atoll_level", "A level.", Kind::Gauge).number(&[], 7.0),
            Family::new("atoll_things_total", "Things.", Kind::Counter)
                .number(&[("code", "200")], 3.0),
            samples,
        ];
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_502_160_910);
        let value = consul_json(&families, at);
        assert_eq!(
            value,
            json!({
                "Timestamp": "2017-08-08 02:55:10 +0000 UTC",
                "Gauges": [{"Name": "atoll_level", "Value": 7.0, "Labels": {}}],
                "Points": [],
                "Counters": [{
                    "Name": "atoll_things_total", "Count": 3, "Sum": 3.0, "Min": 1.0,
                    "Max": 1.0, "Mean": 1.0, "Stddev": 0.0, "Labels": {"code": "200"}
                }],
                "Samples": [{
                    "Name": "atoll_wait_seconds", "Count": 2, "Sum": 2.0, "Min": 0.5,
                    "Max": 1.5, "Mean": 1.0, "Stddev": 0.5f64.sqrt(),
                    "Labels": {"transport": "udp"}
                }],
            })
        );
    }

    #[test]
    fn state_sizes_count_nodes_services_checks_and_keys() {
        use atoll_state::{Command, Registration, ServiceSpec, State};
        let mut state = State::default();
        for (n, node) in ["a", "b"].iter().enumerate() {
            state.apply(
                n as u64 + 1,
                &Command::Register(Box::new(Registration {
                    node: node.to_string(),
                    address: format!("10.0.0.{n}"),
                    service: Some(ServiceSpec {
                        id: "web".into(),
                        name: "web".into(),
                        port: 80,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            );
        }
        let store = atoll_cluster::Store::new(state, 2);
        let without_keys = state_families(&store, false);
        assert!(!without_keys
            .iter()
            .any(|f| f.name == "atoll_kv_keys" || f.name == "atoll_sessions"));
        let families = state_families(&store, true);
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name == name)
                .and_then(|f| f.series.first())
                .map(|s| s.value.clone())
        };
        assert_eq!(value("atoll_catalog_nodes"), Some(Value::Number(2.0)));
        assert_eq!(value("atoll_catalog_services"), Some(Value::Number(1.0)));
        assert_eq!(
            value("atoll_catalog_service_instances"),
            Some(Value::Number(2.0))
        );
        assert_eq!(value("atoll_kv_keys"), Some(Value::Number(0.0)));
        let health = families
            .iter()
            .find(|f| f.name == "atoll_catalog_node_health")
            .expect("node health");
        assert_eq!(health.series[0].labels, vec![("status", "passing".into())]);
        assert_eq!(health.series[0].value, Value::Number(2.0));
    }
}
