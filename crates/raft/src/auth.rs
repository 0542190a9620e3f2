//! Authentication of RPC peers: what a node proves to the nodes it calls, and what its RPC
//! listener asks of the nodes calling it.
//!
//! Two mechanisms, either or both:
//! - a shared cluster key (`--cluster-secret-file`, or derived from `--encrypt`): every
//!   request carries it as `authorization: Bearer SECRET` and the listener refuses (401) one
//!   that does not ([`ClusterSecret::authorize`] for the client in `transport.rs`,
//!   [`require_secret`] as the layer of the router in `rpc.rs`);
//! - mutual TLS ([`RpcTls`]): the connector in `transport.rs` and the acceptor in
//!   `listener.rs` handshake with the node's certificate; the listener notes what the
//!   peer's certificate proves ([`Peer`]) and the handlers ask it of a peer claiming to be a
//!   server ([`Peer::admit`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use atoll_tls::TlsConfigs;

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

    /// The secret derived from the cluster's gossip encryption key (`--encrypt`): SHA-256 of
    /// a fixed label and the key, in hex. The key itself never travels, and knowing the
    /// bearer does not give the key.
    pub fn from_key(key: &[u8]) -> Self {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(KEY_LABEL);
        context.update(key);
        let hex: String = context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ClusterSecret::new(&hex).expect("hex is a valid secret")
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

/// What the RPC bearer derived from `--encrypt` hashes before the key: changing it changes
/// every such bearer.
const KEY_LABEL: &[u8] = b"atoll cluster RPC bearer v1\0";

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
pub(crate) const REFUSAL: &str = "this node's cluster requires its shared key: \
     start the calling node with the same --cluster-secret-file (or --encrypt key)";

/// How often the listener logs a refusal: a stranger asks several times a second.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// Says whether a refusal is worth a line in the log now: at most one every
/// [`REFUSALS_LOGGED_EVERY`], the others at debug level.
#[derive(Default)]
pub(crate) struct Throttle {
    /// When a refusal was last logged.
    logged: Mutex<Option<Instant>>,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Throttle {
            logged: parking_lot::const_mutex(None),
        }
    }

    pub(crate) fn now(&self) -> bool {
        let mut logged = self.logged.lock();
        if logged.is_some_and(|at| at.elapsed() < REFUSALS_LOGGED_EVERY) {
            return false;
        }
        *logged = Some(Instant::now());
        true
    }
}

/// What the RPC listener checks callers with.
pub(crate) struct Gate {
    secret: Arc<ClusterSecret>,
    logged: Throttle,
}

impl Gate {
    pub(crate) fn new(secret: Arc<ClusterSecret>) -> Self {
        Gate {
            secret,
            logged: Throttle::default(),
        }
    }
}

/// The RPC port's TLS: the node's current certificates and what is asked of peers.
#[derive(Debug, Clone)]
pub struct RpcTls {
    /// The node's current TLS settings (replaced by a reload).
    pub certificates: watch::Receiver<Arc<TlsConfigs>>,
    /// The listener requires TLS and a client certificate of the CA (`--verify-incoming`).
    pub verify_incoming: bool,
    /// This node's RPC clients use TLS (`--verify-outgoing`).
    pub verify_outgoing: bool,
    /// A peer claiming to be a server must hold a certificate valid for `server_name`
    /// (`--verify-server-hostname`; the clients' side of it is in the TLS settings).
    pub verify_server_hostname: bool,
    /// `server.DC.DOMAIN`.
    pub server_name: String,
    /// `client.DC.DOMAIN`.
    pub client_name: String,
}

/// What the listener knows of the peer of a connection, given to every request on it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Its address, for the log.
    pub(crate) address: String,
    /// Whether it connected over TLS.
    pub(crate) tls: bool,
    /// Whether it presented a certificate of the CA valid for `server.DC.DOMAIN`.
    pub(crate) proven_server: bool,
}

/// A peer's claim to be a server, as a request makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A hello or join request from a node saying it is a server.
    ServerMember,
    /// A Raft RPC (append, vote, snapshot): only servers send them.
    RaftRpc,
}

impl Peer {
    /// A peer the listener learned nothing about (tests, and the router used without the
    /// listener).
    pub(crate) fn unknown() -> Self {
        Peer {
            address: "unknown".to_string(),
            tls: false,
            proven_server: false,
        }
    }

    /// Whether this peer may make `claim`: with `--verify-server-hostname` (`server_name`
    /// given), only with a certificate valid for `server.DC.DOMAIN`. A node asking to join
    /// as a compute node claims nothing and is not asked. The error is the refusal the
    /// peer is answered (403) and logs.
    pub(crate) fn admit(&self, server_name: Option<&str>, claim: Claim) -> Result<(), String> {
        let Some(server_name) = server_name else {
            return Ok(());
        };
        if self.proven_server {
            return Ok(());
        }
        let what = match claim {
            Claim::ServerMember => "a node asking to be a server",
            Claim::RaftRpc => "a Raft request (only servers send them)",
        };
        let held = if self.tls {
            "its certificate is not valid for that name (a client certificate?)"
        } else {
            "it connected without TLS"
        };
        Err(format!(
            "this node has --verify-server-hostname: {what} must present a certificate of the \
             cluster's CA valid for {server_name}, and {held}; use a certificate from \
             `atoll tls cert create --server`, or join as a compute node"
        ))
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
        .get::<Peer>()
        .map(|peer| peer.address.clone())
        .unwrap_or_else(|| "unknown".to_string());
    if gate.logged.now() {
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

    use super::{constant_time_eq, require_secret, Claim, ClusterSecret, Gate, Peer, REFUSAL};

    fn peer(tls: bool, proven_server: bool) -> Peer {
        Peer {
            address: "127.0.0.9:8300".to_string(),
            tls,
            proven_server,
        }
    }

    #[test]
    fn without_server_hostname_verification_every_claim_passes() {
        for claim in [Claim::ServerMember, Claim::RaftRpc] {
            assert!(peer(false, false).admit(None, claim).is_ok());
            assert!(peer(true, false).admit(None, claim).is_ok());
        }
    }

    #[test]
    fn a_server_claim_needs_a_server_certificate() {
        let name = Some("server.dc1.consul");
        for claim in [Claim::ServerMember, Claim::RaftRpc] {
            assert!(peer(true, true).admit(name, claim).is_ok());
            let error = peer(true, false).admit(name, claim).unwrap_err();
            assert!(error.contains("server.dc1.consul"), "{error}");
            assert!(error.contains("not valid for that name"), "{error}");
            let error = peer(false, false).admit(name, claim).unwrap_err();
            assert!(error.contains("without TLS"), "{error}");
        }
        let error = peer(true, false).admit(name, Claim::RaftRpc).unwrap_err();
        assert!(error.contains("Raft request"), "{error}");
    }

    #[test]
    fn the_bearer_derived_from_a_key_is_fixed_and_hides_the_key() {
        let key = [7u8; 32];
        let secret = ClusterSecret::from_key(&key);
        assert_eq!(
            secret.header.as_bytes(),
            ClusterSecret::from_key(&key).header.as_bytes()
        );
        assert_ne!(
            secret.header.as_bytes(),
            ClusterSecret::from_key(&[8u8; 32]).header.as_bytes()
        );
        let value = std::str::from_utf8(secret.header.as_bytes()).unwrap();
        let hex = value.strip_prefix("Bearer ").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        // SHA-256 of the label and the key, so the same key gives the same bearer on every
        // node and version.
        assert_eq!(
            hex,
            "e2c573706e8d1c35fc47e7d1ec94e438aeca9afcd9111e5d0ea6bfb20eb03bda"
        );
    }

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
