//! Consul's query options (`index`, `wait`, `stale`, `consistent`, `dc`, flags) and the
//! blocking-query loop every read goes through.

use std::time::Duration;

use atoll_cluster::{ReadMode, Watch};
use atoll_state::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::decode::parse_duration;
use crate::error::ApiError;
use crate::ApiContext;

/// Default wait of a blocking query.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The parsed query string of a request.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .map(|raw| {
                form_urlencoded::parse(raw.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Query { pairs }
    }

    /// First value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A flag such as `?recurse`: present without value, or with a true-ish value.
    pub fn flag(&self, name: &str) -> bool {
        match self.get(name) {
            None => false,
            Some(value) => !matches!(value, "false" | "0"),
        }
    }

    /// A Marathon-style boolean: true only for `true` (any case), as Java's `Boolean.valueOf`.
    pub fn boolean(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// An unsigned integer parameter; invalid text is a 400 naming it.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::field(
                        name,
                        format!("Invalid {name} value {v:?}: expected an unsigned integer"),
                    )
                })
            })
            .transpose()
    }
}

/// Read options common to every `/v1` read.
#[derive(Debug)]
pub struct ReadOptions {
    /// Block until the result's index exceeds this.
    pub min_index: Option<u64>,
    /// How long to block.
    pub wait: Duration,
    /// How fresh the answer must be.
    pub mode: Option<ReadMode>,
}

impl ReadOptions {
    /// Parses and validates the read options, refusing a foreign `dc`.
    pub fn parse(query: &Query, context: &ApiContext) -> Result<Self, ApiError> {
        check_datacenter(query, context)?;
        let min_index = query.u64("index")?;
        let wait = match query.get("wait") {
            None => DEFAULT_WAIT,
            Some(text) => parse_duration(text)
                .ok_or_else(|| ApiError::field("wait", format!("Invalid wait time {text:?}")))?,
        };
        let consistent = query.flag("consistent");
        let stale = query.flag("stale");
        if consistent && stale {
            return Err(ApiError::bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        Ok(ReadOptions {
            min_index,
            wait: wait.min(MAX_WAIT),
            mode: match (consistent, stale) {
                (true, _) => Some(ReadMode::Consistent),
                (false, true) => None,
                (false, false) => Some(ReadMode::Default),
            },
        })
    }
}

/// The query string of a request this datacenter answers, refusing a `dc` this node cannot
/// reach (see [`check_datacenter`]).
pub fn local_query(raw: Option<&str>, context: &ApiContext) -> Result<Query, ApiError> {
    let query = Query::parse(raw);
    check_datacenter(&query, context)?;
    Ok(query)
}

/// Refuses requests whose `dc` this node cannot reach (see [`crate::execute::reach`]).
pub fn check_datacenter(query: &Query, context: &ApiContext) -> Result<(), ApiError> {
    Ok(crate::execute::reach(context, query.get("dc"))?)
}

/// Runs `compute` against the state, blocking while its index is not above `min_index`.
/// Woken by the store when a change `watch` covers is applied (a table, or only one
/// service's or KV key's rows), never by polling. As Consul, the wait is stretched by a
/// random part of up to a sixteenth, so that queries started together do not time out
/// together.
pub async fn blocking<T>(
    context: &ApiContext,
    options: &ReadOptions,
    watch: impl Into<Watch>,
    compute: impl FnMut(&State) -> (u64, T),
) -> Result<(u64, T), ApiError> {
    blocking_until(context, options, watch, compute, |index, min| index > min).await
}

/// [`blocking`] for answers whose index is not monotonic (a hash: user events, a service's
/// content hash): the answer is ready when `ready(index, min_index)` says so.
pub async fn blocking_until<T>(
    context: &ApiContext,
    options: &ReadOptions,
    watch: impl Into<Watch>,
    mut compute: impl FnMut(&State) -> (u64, T),
    ready: impl Fn(u64, u64) -> bool,
) -> Result<(u64, T), ApiError> {
    if let Some(mode) = options.mode {
        context.cluster().linearize(mode).await?;
    }
    let store = context.store();
    let min_index = match options.min_index {
        Some(min) if min > 0 => min,
        _ => {
            let (index, value) = store.read(&mut compute);
            return Ok((index.max(1), value));
        }
    };
    // Subscribed before the first read: a change between the read and the wait still wakes.
    let mut waiter = store.waiter(&watch.into());
    let deadline = Instant::now() + with_jitter(options.wait);
    // Counted as parked from its first wait until it answers.
    let mut parked = None;
    loop {
        waiter.mark_seen();
        let (index, value) = store.read(&mut compute);
        if ready(index, min_index) {
            return Ok((index.max(1), value));
        }
        drop(value);
        parked.get_or_insert_with(|| atoll_metrics::node().http.park());
        match tokio::time::timeout_at(deadline, waiter.changed()).await {
            Ok(true) => continue,
            // Timed out (or the store is going away): answer with what is there now.
            _ => {
                let (index, value) = store.read(&mut compute);
                return Ok((index.max(1), value));
            }
        }
    }
}

/// `wait` plus up to `wait / 16` at random (Consul's jitter fraction).
fn with_jitter(wait: Duration) -> Duration {
    let sixteenth = wait / 16;
    if sixteenth.is_zero() {
        return wait;
    }
    wait + sixteenth.mul_f64(rand::thread_rng().gen::<f64>())
}

/// A JSON answer carrying `X-Consul-Index`.
pub fn json_with_index<T: Serialize>(index: u64, value: &T) -> Response {
    let mut response = axum::Json(value).into_response();
    set_index(response.headers_mut(), index);
    response
}

/// Sets `X-Consul-Index`.
pub fn set_index(headers: &mut HeaderMap, index: u64) {
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
}
