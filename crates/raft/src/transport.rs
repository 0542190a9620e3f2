//! Messages between nodes (MessagePack, `wire.rs`) over HTTP/2: the client side used by the
//! Raft network and by request forwarding. One connection per peer carries every request to
//! it at once (appends, votes, forwarded writes and reads), kept open between requests.
//! With `--verify-outgoing` each connection is TLS, made with the node's current TLS
//! settings when it is opened (`RpcConnector`): a reload applies to new connections, and
//! one already open goes on until it breaks or idles out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{StatusCode, Uri};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::auth::{ClusterSecret, RpcTls};

/// Largest RPC answer accepted (snapshots travel in chunks below this).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A failed RPC: the peer could not be reached, refused the request, or answered garbage.
#[derive(Debug, thiserror::Error)]
#[error("rpc to {target}: {failure}")]
pub struct TransportError {
    /// The peer.
    pub target: String,
    /// What went wrong.
    pub failure: Failure,
}

/// What went wrong with an RPC, as a caller decides on it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection could be made: the request never reached the peer.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The peer does not take this node's credentials (its cluster key, or a connection
    /// without TLS): it refused the request without acting on it, saying why.
    #[error("refused: {0}")]
    Unauthorized(String),
    /// The peer took the credentials but not what this node claims to be (a server whose
    /// certificate is not a server's): refused without acting on it, saying why.
    #[error("refused: {0}")]
    Forbidden(String),
    /// The TLS handshake failed: the peer's certificate is not of the cluster's CA or not
    /// valid for the role asked of it, or the peer refused this node's. Nothing was sent.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// No whole answer arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer answered with an error status.
    #[error("{status}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// What the peer said, as text.
        body: String,
    },
    /// The exchange broke off, or the answer could not be decoded.
    #[error("{0}")]
    Exchange(String),
}

impl TransportError {
    fn new(target: &str, failure: Failure) -> Self {
        TransportError {
            target: target.to_string(),
            failure,
        }
    }

    /// Whether the request certainly had no effect on the peer: it never reached it, or
    /// the peer refused it before acting on it. Otherwise the peer may have acted on it.
    pub fn not_sent(&self) -> bool {
        matches!(
            self.failure,
            Failure::Connect(_)
                | Failure::Unauthorized(_)
                | Failure::Forbidden(_)
                | Failure::Tls(_)
        )
    }

    /// Whether the peer refused this node (its key, its certificate or its claim), or this
    /// node refused the peer's certificate: a misconfiguration worth a line in the log.
    pub fn refused(&self) -> bool {
        matches!(
            self.failure,
            Failure::Unauthorized(_) | Failure::Forbidden(_) | Failure::Tls(_)
        )
    }

    /// Whether the peer gave no whole answer in time.
    pub fn timed_out(&self) -> bool {
        matches!(self.failure, Failure::Timeout(_))
    }
}

/// Shared HTTP client for all peers.
#[derive(Clone)]
pub struct RpcClient {
    /// Connections to servers: with TLS, their certificate must name a server when
    /// `--verify-server-hostname` is on.
    servers: Client<RpcConnector, Full<Bytes>>,
    /// Connections to other nodes (compute nodes the leader replicates to); the same pool
    /// as `servers` without TLS.
    nodes: Client<RpcConnector, Full<Bytes>>,
    /// Whether this handle calls servers.
    to_server: bool,
    /// What every request carries to be let in, if the cluster has a secret.
    secret: Option<Arc<ClusterSecret>>,
}

impl RpcClient {
    /// A client whose requests carry `secret`, if any, over TLS when `tls` says
    /// `--verify-outgoing`. It calls servers; [`RpcClient::to_any_node`] calls others.
    pub fn new(secret: Option<Arc<ClusterSecret>>, tls: Option<&RpcTls>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_millis(500)));
        let client = |tls: Option<OutgoingTls>| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .http2_only(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .http2_keep_alive_timeout(Duration::from_secs(5))
                .build(RpcConnector {
                    tcp: tcp.clone(),
                    tls,
                })
        };
        let (servers, nodes) = match tls.filter(|tls| tls.verify_outgoing) {
            Some(tls) => (
                client(Some(OutgoingTls::new(tls, true))),
                client(Some(OutgoingTls::new(tls, false))),
            ),
            None => {
                let plain = client(None);
                (plain.clone(), plain)
            }
        };
        RpcClient {
            servers,
            nodes,
            to_server: true,
            secret,
        }
    }

    /// The same client, for calls to a node that need not be a server.
    pub(crate) fn to_any_node(&self) -> Self {
        RpcClient {
            to_server: false,
            ..self.clone()
        }
    }

    /// POSTs `body` to `http://{target}{path}` and decodes the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let payload = crate::wire::encode(body)
            .map_err(|e| TransportError::new(target, Failure::Exchange(e)))?;
        self.call_encoded(target, path, payload, timeout).await
    }

    /// [`RpcClient::call`] with a body already encoded, for a caller that needs
    /// its size before sending it.
    pub async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        target: &str,
        path: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let fail = |failure: Failure| TransportError::new(target, failure);
        let mut request = hyper::Request::post(format!("http://{target}{path}"))
            .header("content-type", crate::wire::MSGPACK)
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| fail(Failure::Exchange(e.to_string())))?;
        if let Some(secret) = &self.secret {
            secret.authorize(request.headers_mut());
        }
        let exchange = async {
            let client = if self.to_server {
                &self.servers
            } else {
                &self.nodes
            };
            let response = client.request(request).await.map_err(|e| {
                fail(match handshake_failure(&e) {
                    Some(failure) => Failure::Tls(failure.0.clone()),
                    None if e.is_connect() => Failure::Connect(with_sources(&e)),
                    None => Failure::Exchange(with_sources(&e)),
                })
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| fail(Failure::Exchange(e.to_string())))?
                .to_bytes();
            let text = || String::from_utf8_lossy(&bytes).into_owned();
            if status == StatusCode::UNAUTHORIZED {
                return Err(fail(Failure::Unauthorized(text())));
            }
            if status == StatusCode::FORBIDDEN {
                return Err(fail(Failure::Forbidden(text())));
            }
            if !status.is_success() {
                return Err(fail(Failure::Status {
                    status,
                    body: text(),
                }));
            }
            crate::wire::decode(&bytes)
                .map_err(|e| fail(Failure::Exchange(format!("bad answer: {e}"))))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| fail(Failure::Timeout(timeout)))?
    }
}

/// An error with its sources, `error: source: source ...` (hyper's client errors say only
/// which step failed, the source says why).
fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

impl RpcClient {
    /// POSTs `body` to `http://{target}{path}` and returns the answer's body as it arrives
    /// (a stream of frames), once its head came within `timeout`.
    pub async fn open_stream<Req: Serialize>(
        &self,
        target: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<hyper::body::Incoming, TransportError> {
        let fail = |failure: Failure| TransportError::new(target, failure);
        let payload = crate::wire::encode(body).map_err(|e| fail(Failure::Exchange(e)))?;
        let mut request = hyper::Request::post(format!("http://{target}{path}"))
            .header("content-type", crate::wire::MSGPACK)
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| fail(Failure::Exchange(e.to_string())))?;
        if let Some(secret) = &self.secret {
            secret.authorize(request.headers_mut());
        }
        let client = if self.to_server {
            &self.servers
        } else {
            &self.nodes
        };
        let response = tokio::time::timeout(timeout, client.request(request))
            .await
            .map_err(|_| fail(Failure::Timeout(timeout)))?
            .map_err(|e| {
                fail(match handshake_failure(&e) {
                    Some(failure) => Failure::Tls(failure.0.clone()),
                    None if e.is_connect() => Failure::Connect(with_sources(&e)),
                    None => Failure::Exchange(with_sources(&e)),
                })
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let text = tokio::time::timeout(
            timeout,
            Limited::new(response.into_body(), 64 * 1024).collect(),
        )
        .await
        .ok()
        .and_then(|body| body.ok())
        .map(|body| String::from_utf8_lossy(&body.to_bytes()).into_owned())
        .unwrap_or_default();
        Err(fail(match status {
            StatusCode::UNAUTHORIZED => Failure::Unauthorized(text),
            StatusCode::FORBIDDEN => Failure::Forbidden(text),
            status => Failure::Status { status, body: text },
        }))
    }
}

/// A failed TLS handshake, as the connector reports it inside hyper's connect error.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {0}")]
struct HandshakeFailure(String);

/// The handshake failure somewhere in `error`'s sources, if that is what it is.
fn handshake_failure<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a HandshakeFailure> {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(failure) = error.downcast_ref::<HandshakeFailure>() {
            return Some(failure);
        }
        source = error.source();
    }
    None
}

/// What a TLS connection is made with: the node's current TLS settings, and the name the
/// peer's certificate is checked for.
#[derive(Clone)]
struct OutgoingTls {
    certificates: tokio::sync::watch::Receiver<Arc<atoll_tls::TlsConfigs>>,
    /// Whether the peer is a server (its certificate is then checked for `server.DC.DOMAIN`
    /// when `--verify-server-hostname` is on).
    to_server: bool,
    /// The name sent and checked: `server.DC.DOMAIN`, or `client.DC.DOMAIN` for other
    /// nodes (whose names are not checked).
    name: ServerName<'static>,
}

impl OutgoingTls {
    fn new(tls: &RpcTls, to_server: bool) -> Self {
        let name = if to_server {
            &tls.server_name
        } else {
            &tls.client_name
        };
        OutgoingTls {
            certificates: tls.certificates.clone(),
            to_server,
            name: ServerName::try_from(name.clone())
                .unwrap_or_else(|_| ServerName::try_from("server.invalid").expect("a valid name")),
        }
    }
}

/// Opens the TCP connection to a peer and, when the node uses TLS for RPC, handshakes it.
#[derive(Clone)]
struct RpcConnector {
    tcp: HttpConnector,
    tls: Option<OutgoingTls>,
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<
                    MaybeHttpsStream<TokioIo<TcpStream>>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for RpcConnector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            let Some(tls) = tls else {
                return Ok(MaybeHttpsStream::Http(tcp));
            };
            // The settings current now: a reload applies from the next connection on.
            let configs = Arc::clone(&tls.certificates.borrow());
            let config = if tls.to_server {
                configs.rpc_to_server.clone()
            } else {
                configs.rpc_to_node.clone()
            }
            .ok_or_else(|| HandshakeFailure("--verify-outgoing needs --tls-ca-file".to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(tls.name, TokioIo::new(tcp))
                .await
                .map_err(|e| HandshakeFailure(e.to_string()))?;
            Ok(MaybeHttpsStream::Https(TokioIo::new(stream)))
        })
    }
}
