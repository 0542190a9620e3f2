//! Messages between nodes (MessagePack, `wire.rs`) over HTTP/2: the client side used by the
//! Raft network and by request forwarding. One connection per peer carries every request to
//! it at once (appends, votes, forwarded writes and reads), kept open between requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::ClusterSecret;

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
    /// The peer does not take this node's cluster secret (or this node has none and it
    /// wants one): it refused the request without acting on it.
    #[error("refused: the peer does not accept this node's cluster secret (every node needs the same --cluster-secret-file)")]
    Unauthorized,
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
        matches!(self.failure, Failure::Connect(_) | Failure::Unauthorized)
    }

    /// Whether the peer refused this node's credentials.
    pub fn unauthorized(&self) -> bool {
        matches!(self.failure, Failure::Unauthorized)
    }

    /// Whether the peer gave no whole answer in time.
    pub fn timed_out(&self) -> bool {
        matches!(self.failure, Failure::Timeout(_))
    }
}

/// Shared HTTP client for all peers.
#[derive(Clone)]
pub struct RpcClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// What every request carries to be let in, if the cluster has a secret.
    secret: Option<Arc<ClusterSecret>>,
}

impl RpcClient {
    /// A client whose requests carry `secret`, if any.
    pub fn new(secret: Option<Arc<ClusterSecret>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        RpcClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .http2_only(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .http2_keep_alive_timeout(Duration::from_secs(5))
                .build(connector),
            secret,
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
            let response = self.client.request(request).await.map_err(|e| {
                fail(if e.is_connect() {
                    Failure::Connect(e.to_string())
                } else {
                    Failure::Exchange(e.to_string())
                })
            })?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                return Err(fail(Failure::Unauthorized));
            }
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| fail(Failure::Exchange(e.to_string())))?
                .to_bytes();
            if !status.is_success() {
                return Err(fail(Failure::Status {
                    status,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
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
