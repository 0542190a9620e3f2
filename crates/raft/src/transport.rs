//! JSON over HTTP/1.1 between nodes: the client side used by the Raft network and by
//! request forwarding.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest RPC answer accepted (snapshots travel in chunks below this).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A transport failure: the peer could not be reached or answered garbage.
#[derive(Debug, thiserror::Error)]
#[error("rpc to {target}: {message}")]
pub struct TransportError {
    /// The peer.
    pub target: String,
    /// What went wrong.
    pub message: String,
    /// The request never reached the peer (no connection could be made), so it cannot have
    /// had any effect there; otherwise the peer may have acted on it.
    pub not_sent: bool,
}

impl TransportError {
    /// A failure after which the peer may have acted on the request.
    fn maybe_sent(target: &str, message: String) -> Self {
        TransportError {
            target: target.to_string(),
            message,
            not_sent: false,
        }
    }
}

/// Shared HTTP client for all peers.
#[derive(Clone)]
pub struct RpcClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for RpcClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        RpcClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

impl RpcClient {
    /// POSTs `body` as JSON to `http://{target}{path}` and decodes the JSON answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let payload = serde_json::to_vec(body)
            .map_err(|e| TransportError::maybe_sent(target, e.to_string()))?;
        self.call_encoded(target, path, payload, timeout).await
    }

    /// [`RpcClient::call`] with a body already encoded as JSON, for a caller that needs
    /// its size before sending it.
    pub async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        target: &str,
        path: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let fail = |message: String| TransportError::maybe_sent(target, message);
        let request = hyper::Request::post(format!("http://{target}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let not_sent = e.is_connect();
                TransportError {
                    not_sent,
                    ..fail(e.to_string())
                }
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(fail(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("bad answer: {e}")))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {timeout:?}")))?
    }
}
