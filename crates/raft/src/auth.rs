//! Authentication of RPC peers: what a node proves to the nodes it calls, and what its RPC
//! listener asks of the nodes calling it.
//!
//! Today that is a shared cluster secret (`--cluster-secret-file`): every request carries it
//! as `authorization: Bearer SECRET` and the listener refuses (401) one that does not. This
//! module is the one place that knows: [`ClusterSecret::authorize`] for the client in
//! `transport.rs`, [`require_secret`] as the layer of the router in `rpc.rs`. Mutual TLS
//! replaces both ends here (the client's connector and the listener's acceptor), and the
//! rest of the crate does not change.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::time::Instant;

/// The scheme of the `authorization` header the secret travels in.
const SCHEME: &str = "Bearer ";

/// The secret every node of a cluster shares. Neither `Debug` nor any error shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    /// `Bearer SECRET`, as sent (marked sensitive, so hyper never prints it).
    header: HeaderValue,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret in `text`, without the whitespace around it (a file's final newline).
    /// Fails, without repeating the text, when nothing is left or it cannot travel in an
    /// HTTP header.
    pub fn new(text: &str) -> Result<Self, String> {
        let secret = text.trim();
        if secret.is_empty() {
            return Err("the cluster secret is empty".to_string());
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the cluster secret must be printable ASCII without spaces (e.g. the output of \
                 `openssl rand -base64 32`)"
                    .to_string(),
            );
        }
        let mut header = HeaderValue::from_str(&format!("{SCHEME}{secret}"))
            .map_err(|_| "the cluster secret cannot be sent in an HTTP header".to_string())?;
        header.set_sensitive(true);
        Ok(ClusterSecret { header })
    }

    /// Adds the secret to the headers of a request this node sends.
    pub(crate) fn authorize(&self, headers: &mut HeaderMap) {
        headers.insert(AUTHORIZATION, self.header.clone());
    }

    /// Whether `headers` carry this secret; compared in constant time.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        constant_time_eq(self.header.as_bytes(), presented)
    }
}

/// Whether `expected` and `presented` are equal, in a time that depends on the length of
/// `expected` only: how much of a guess is right never shows in how long the answer takes.
pub(crate) fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    let mut difference = u8::from(expected.len() != presented.len());
    for (i, byte) in expected.iter().enumerate() {
        difference |= byte ^ presented.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(difference) == 0
}

/// What the listener answers a request without the cluster's secret.
pub(crate) const REFUSAL: &str = "this node's cluster requires its shared secret: \
     start the calling node with the same --cluster-secret-file";

/// How often the listener logs a refusal: a stranger asks several times a second.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// What the RPC listener checks callers with.
pub(crate) struct Gate {
    secret: Arc<ClusterSecret>,
    /// When a refusal was last logged.
    logged: Mutex<Option<Instant>>,
}

impl Gate {
    pub(crate) fn new(secret: Arc<ClusterSecret>) -> Self {
        Gate {
            secret,
            logged: Mutex::new(None),
        }
    }

    /// Whether a refusal is worth a line in the log now.
    fn log_refusal(&self) -> bool {
        let mut logged = self.logged.lock();
        if logged.is_some_and(|at| at.elapsed() < REFUSALS_LOGGED_EVERY) {
            return false;
        }
        *logged = Some(Instant::now());
        true
    }
}

/// The layer of the RPC router when the cluster has a secret: a request without it is
/// answered 401 and never reaches a handler.
pub(crate) async fn require_secret(
    State(gate): State<Arc<Gate>>,
    request: Request,
    next: Next,
) -> Response {
    if gate.secret.admits(request.headers()) {
        return next.run(request).await;
    }
    let caller = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.to_string())
        .unwrap_or_else(|| "unknown".to_string());
    if gate.log_refusal() {
        tracing::warn!(%caller, path = %request.uri().path(), "refused an RPC request without this cluster's secret (logged at most every 10 s)");
    } else {
        tracing::debug!(%caller, path = %request.uri().path(), "refused an RPC request without this cluster's secret");
    }
    (
        StatusCode::UNAUTHORIZED,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        REFUSAL,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::{constant_time_eq, require_secret, ClusterSecret, Gate, REFUSAL};

    #[test]
    fn equal_bytes_compare_equal() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"Bearer s3cret", b"Bearer s3cret"));
    }

    #[test]
    fn different_bytes_or_lengths_compare_unequal() {
        assert!(!constant_time_eq(b"Bearer s3cret", b"Bearer s3creT"));
        assert!(!constant_time_eq(b"Bearer s3cret", b"Bearer s3cre"));
        assert!(!constant_time_eq(b"Bearer s3cret", b"Bearer s3cret!"));
        assert!(!constant_time_eq(b"Bearer s3cret", b""));
        assert!(!constant_time_eq(b"", b"x"));
        // A shorter guess padded with what the comparison pads with is still wrong.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
    }

    #[test]
    fn the_secret_is_trimmed_and_checked_and_never_shown() {
        let secret = ClusterSecret::new("  s3cret\n").unwrap();
        assert_eq!(secret.header.as_bytes(), b"Bearer s3cret");
        assert!(secret.header.is_sensitive());
        assert!(!format!("{secret:?}").contains("s3cret"));
        assert!(ClusterSecret::new(" \n").is_err());
        let error = ClusterSecret::new("two words").unwrap_err();
        assert!(!error.contains("two words"), "{error}");
        assert!(ClusterSecret::new("caf\u{e9}").is_err());
    }

    fn router(secret: &str) -> Router {
        let gate = Arc::new(Gate::new(Arc::new(ClusterSecret::new(secret).unwrap())));
        Router::new()
            .route("/cluster/hello", post(|| async { "hello" }))
            .layer(axum::middleware::from_fn_with_state(gate, require_secret))
    }

    async fn status_of(authorization: Option<&str>, path: &str) -> (StatusCode, String) {
        let mut request = Request::post(path);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = router("s3cret")
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_request_without_the_secret_is_refused() {
        let (status, body) = status_of(None, "/cluster/hello").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, REFUSAL);
    }

    #[tokio::test]
    async fn a_request_with_another_secret_is_refused() {
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cretx",
            "Bearer other",
            "s3cret",
            "Basic s3cret",
        ] {
            let (status, _) = status_of(Some(wrong), "/cluster/hello").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
        }
    }

    #[tokio::test]
    async fn a_request_with_the_secret_passes() {
        let (status, body) = status_of(Some("Bearer s3cret"), "/cluster/hello").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello");
    }

    #[tokio::test]
    async fn unknown_paths_are_refused_too() {
        let (status, _) = status_of(None, "/nothing/here").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = status_of(Some("Bearer s3cret"), "/nothing/here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
