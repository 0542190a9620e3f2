//! The RPC listener's connections: plain TCP, or TLS when the node has TLS files, each
//! served as HTTP/2 (or HTTP/1.1) with the router of `rpc.rs`. What the connection proves of its peer (a
//! certificate valid for `server.DC.DOMAIN`) goes to every request on it as a [`Peer`].
//!
//! With TLS files, a connection whose first byte opens a TLS handshake is handshaken with
//! the settings current at that moment (a reload applies to new connections; open ones go
//! on with theirs until they break), a plain one is served as before, unless
//! `--verify-incoming` is on: then every request on it is refused (401, saying why), so that
//! a node started without TLS logs the reason rather than a broken connection.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::auth::{Peer, RpcTls, Throttle};
use crate::consensus::Consensus;

/// How long a peer has to send its first byte, then to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a request on a plain connection is answered when TLS is required.
pub(crate) const TLS_REQUIRED: &str = "this node's RPC port requires TLS with a certificate of \
     the cluster's CA (--verify-incoming): start the calling node with --verify-outgoing and \
     the cluster's --tls-ca-file, with its own --tls-cert-file and --tls-key-file";

impl Consensus {
    /// Serves the RPC router (see [`Consensus::rpc_router`]) on `listener`, for ever.
    pub async fn serve_rpc(&self, listener: TcpListener, bootstrap_expect: usize) {
        let router = self.rpc_router(bootstrap_expect);
        let tls = self.rpc_tls().cloned();
        let logged = Arc::new(Throttle::default());
        loop {
            let (tcp, address) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: go on with the others, without spinning.
                    tracing::debug!(error = %e, "cannot accept an RPC connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Answers go out at once: with Nagle's algorithm a small answer could wait for
            // the peer's delayed ACK, 40 ms on Linux, stalling a forwarded write or an append.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on an RPC connection");
            }
            let peer = Peer {
                address: address.to_string(),
                tls: false,
                proven_server: false,
            };
            tokio::spawn(connection(
                tcp,
                peer,
                router.clone(),
                tls.clone(),
                Arc::clone(&logged),
            ));
        }
    }
}

/// Serves one connection.
async fn connection(
    tcp: TcpStream,
    mut peer: Peer,
    router: Router,
    tls: Option<RpcTls>,
    logged: Arc<Throttle>,
) {
    let Some(tls) = tls else {
        return serve(tcp, peer, router).await;
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if !tls.verify_incoming {
            return serve(tcp, peer, router).await;
        }
        if logged.now() {
            tracing::warn!(caller = %peer.address, "refused an RPC connection without TLS: this node has --verify-incoming (logged at most every 10 s)");
        }
        let refusal = Router::new().fallback(|| async {
            (
                StatusCode::UNAUTHORIZED,
                [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                TLS_REQUIRED,
            )
                .into_response()
        });
        return serve(tcp, peer, refusal).await;
    }
    // The settings current now: a reload applies from the next connection on.
    let config = Arc::clone(&tls.certificates.borrow().rpc_server);
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            if logged.now() {
                tracing::warn!(caller = %peer.address, error = %e, "refused an RPC connection: TLS handshake failed (logged at most every 10 s)");
            } else {
                tracing::debug!(caller = %peer.address, error = %e, "refused an RPC connection: TLS handshake failed");
            }
            return;
        }
        Err(_) => return,
    };
    peer.tls = true;
    peer.proven_server = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .is_some_and(|certificate| atoll_tls::valid_for(certificate, &tls.server_name));
    serve(stream, peer, router).await
}

/// How often an idle HTTP/2 peer connection is pinged.
const PEER_PING_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is closed.
const PEER_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves `io`, every request carrying `peer`: HTTP/2 as nodes speak it, or HTTP/1.1 (a
/// person probing the port with curl gets an answer too).
async fn serve<I>(io: I, peer: Peer, router: Router)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let address = peer.address.clone();
    let service = TowerToHyperService::new(router.layer(axum::Extension(peer)));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A peer that stops answering pings (cut off, powered off) loses its connection within
    // seconds rather than after TCP's retransmissions give up: a compute node's state stream
    // then ends on the server, which stops reporting the node alive.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(PEER_PING_EVERY))
        .keep_alive_timeout(PEER_PING_TIMEOUT);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!(caller = %address, error = %e, "RPC connection ended");
    }
}
