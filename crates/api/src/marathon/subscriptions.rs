//! Marathon's HTTP callback event subscribers (`/v2/eventSubscriptions`).
//!
//! The callback URLs are replicated state (`workload.subscriptions`), so every node knows
//! them and they outlive restarts and leader changes. Only the leader delivers: every event
//! the `/v2/events` stream carries is POSTed as JSON to each URL, by one worker per URL with
//! its own queue, so a slow or failing subscriber holds up neither the stream nor the others.
//! A worker posts its events in order; a failed POST (no connection, no answer within
//! [`POST_TIMEOUT`], or a status other than 2xx) is tried again after 250 ms, 500 ms, 1 s,
//! 2 s and 4 s ([`ATTEMPTS`] tries in all, about 8 s of pauses); after the last failure that
//! event is dropped (and logged) and the worker goes on with the next. A worker's queue holds
//! [`QUEUE`] events; while it is full, new events for that URL are dropped (and logged).
//! A URL that unsubscribes gets the events queued for it and its `unsubscribe_event` (with
//! their retries), then nothing more; when this node stops leading, its workers stop at once
//! and the new leader delivers from then on.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_workload::now_rfc3339;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::routes::MarathonError;
use crate::acl::Authz;
use crate::query::Query;
use crate::ApiContext;
use atoll_acl::{Access, Segment};

/// Tries of one POST before its event is dropped.
pub const ATTEMPTS: u32 = 6;
/// Pause before the first retry; it doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How long one POST may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Events waiting for one subscriber.
pub const QUEUE: usize = 1024;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn callback_url(raw: Option<&str>) -> Result<String, MarathonError> {
    let query = Query::parse(raw);
    let url = query.get("callbackUrl").unwrap_or_default().trim();
    if url.is_empty() {
        return Err(MarathonError::new(
            StatusCode::BAD_REQUEST,
            "callbackUrl is required: the URL events are posted to",
        ));
    }
    Ok(url.to_string())
}

/// Checks that `url` is one the delivery can post to: `http://host[:port][/path]`.
fn validate(url: &str) -> Result<(), MarathonError> {
    let refuse = |why: &str| {
        Err(MarathonError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("callbackUrl {url:?} {why}"),
        ))
    };
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return refuse("is not a valid URL");
    };
    if uri.scheme_str() != Some("http") {
        return refuse("must be an http:// URL (https callbacks are not supported)");
    }
    if uri.host().is_none_or(str::is_empty) {
        return refuse("has no host");
    }
    Ok(())
}

fn subscription_event(kind: &str, url: &str, at: &str) -> Value {
    json!({
        "eventType": kind,
        "callbackUrl": url,
        "clientIp": null,
        "timestamp": at,
    })
}

/// The event Marathon sends when `url` subscribes (`subscribe_event`).
pub(crate) fn subscribed(url: &str, at: &str) -> Value {
    subscription_event("subscribe_event", url, at)
}

/// The event Marathon sends when `url` unsubscribes (`unsubscribe_event`).
pub(crate) fn unsubscribed(url: &str, at: &str) -> Value {
    subscription_event("unsubscribe_event", url, at)
}

/// A callback receives the events of every app: managing callbacks needs `access` to every
/// app (an `app_prefix ""` rule, or a management token).
fn require_every_app(authz: &Authz, access: Access) -> Result<(), MarathonError> {
    if authz
        .authorizer()
        .allows_all_under(Segment::App, "", access)
    {
        Ok(())
    } else {
        Err(MarathonError::denied())
    }
}

/// `POST /v2/eventSubscriptions?callbackUrl=`: registers the URL; answers the
/// `subscribe_event`.
pub async fn subscribe(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, MarathonError> {
    require_every_app(&authz, Access::Write)?;
    let url = callback_url(raw.as_deref())?;
    validate(&url)?;
    let at = now_rfc3339();
    crate::execute::write(
        &context,
        atoll_state::Command::Subscribe {
            callback_url: url.clone(),
            at: at.clone(),
        },
    )
    .await?;
    Ok(Json(subscribed(&url, &at)))
}

/// `GET /v2/eventSubscriptions`.
pub async fn list(
    State(context): State<ApiContext>,
    authz: Authz,
) -> Result<Json<Value>, MarathonError> {
    require_every_app(&authz, Access::Read)?;
    let urls: Vec<String> = context
        .store()
        .read(|s| s.workload.subscriptions.keys().cloned().collect());
    Ok(Json(json!({ "callbackUrls": urls })))
}

/// `DELETE /v2/eventSubscriptions?callbackUrl=`: removes the URL (an unknown one too, as
/// Marathon); answers the `unsubscribe_event`.
pub async fn unsubscribe(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, MarathonError> {
    require_every_app(&authz, Access::Write)?;
    let url = callback_url(raw.as_deref())?;
    crate::execute::write(
        &context,
        atoll_state::Command::Unsubscribe {
            callback_url: url.clone(),
        },
    )
    .await?;
    Ok(Json(unsubscribed(&url, &now_rfc3339())))
}

/// One subscriber's worker: its queue and its task.
struct Worker {
    queue: mpsc::Sender<Value>,
    task: Option<JoinHandle<()>>,
}

impl Worker {
    /// Lets the worker post what it was given (its subscriber's unsubscribe event last) and
    /// end, instead of stopping it at once.
    fn finish(mut self) {
        self.task = None;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Delivery stops here: nothing more is posted, not even a retry in progress.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Delivers the event bus to the subscribers while this node leads, for as long as the
/// process lives.
pub async fn deliver(context: ApiContext) {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let mut events = context.events().subscribe();
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!("event subscribers missed {missed} events: delivery fell behind");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !context.cluster().is_leader() {
            // Another node delivers; anything queued here is dropped.
            workers.clear();
            continue;
        }
        let mut urls: Vec<String> = context
            .store()
            .read(|s| s.workload.subscriptions.keys().cloned().collect());
        // The unsubscribe event still goes to the one leaving, as its last.
        let leaving = (event.get("eventType").and_then(Value::as_str) == Some("unsubscribe_event"))
            .then(|| event.get("callbackUrl").and_then(Value::as_str))
            .flatten()
            .filter(|url| workers.contains_key(*url) && !urls.iter().any(|u| u == url))
            .map(str::to_string);
        urls.extend(leaving.clone());
        workers.retain(|url, _| urls.contains(url));
        for url in urls {
            let worker = workers.entry(url.clone()).or_insert_with(|| {
                let (queue, receiver) = mpsc::channel(QUEUE);
                let task = tokio::spawn(post_each(client.clone(), url.clone(), receiver));
                Worker {
                    queue,
                    task: Some(task),
                }
            });
            if worker.queue.try_send(event.clone()).is_err() {
                tracing::warn!("event subscriber {url} is {QUEUE} events behind: event dropped");
            }
        }
        if let Some(worker) = leaving.and_then(|url| workers.remove(&url)) {
            worker.finish();
        }
    }
}

/// Posts the events of one subscriber in order, each with retries.
async fn post_each(client: HttpClient, url: String, mut queue: mpsc::Receiver<Value>) {
    while let Some(event) = queue.recv().await {
        let body = Bytes::from(event.to_string());
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match post(&client, &url, body.clone()).await {
                Ok(()) => break,
                Err(why) if attempt == ATTEMPTS => {
                    tracing::warn!(
                        "event for subscriber {url} dropped after {ATTEMPTS} tries: {why}"
                    );
                }
                Err(why) => {
                    tracing::debug!("event for subscriber {url} not delivered ({why}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
}

async fn post(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    let request = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(POST_TIMEOUT, client.request(request)).await {
        Err(_) => Err(format!("no answer within {POST_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("answered {}", response.status())),
    }
}
