//! The HTTP server: hyper under the API's router, with limits on how long a client may
//! take to send a request, so that slow or silent clients cannot hold connections (and
//! their memory and file descriptors) for ever, on how large a request's head may be, and on
//! how many connections one client address may hold open.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use atoll_metrics::node::UNROUTED;
use atoll_tls::TlsConfigs;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use crate::error::error_for_path;
use crate::metrics::RouteTemplate;
use crate::BODY_LIMIT;

/// How long clients may take to send their requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From the moment the server waits for a request (a new connection, or an idle
    /// kept-alive one) until its whole head has arrived; the connection is closed after.
    pub header_read_timeout: Duration,
    /// From the end of the head until the whole body has arrived; a 408 after.
    pub body_read_timeout: Duration,
    /// The most connections one client address may hold open at once (Consul's
    /// `http_max_conns_per_client`); one more is answered 429 and closed. 0: no limit.
    /// Every blocking query holds its connection (HTTP/1 serves one request of a connection
    /// at a time), so this also bounds the blocking queries of one client.
    pub max_conns_per_client: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            max_conns_per_client: 200,
        }
    }
}

/// The largest request head (request line and headers) read: a larger one is answered 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Consul's answer to a client over its connection limit.
const TOO_MANY_CONNECTIONS: &str =
    "Your IP is issuing too many concurrent connections, please rate limit your calls\n";

/// How many connections each client address holds open.
#[derive(Default)]
struct ClientConnections {
    open: parking_lot::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One admitted connection; counted until dropped.
struct ConnectionSlot {
    table: Arc<ClientConnections>,
    client: IpAddr,
}

impl ClientConnections {
    /// A slot for one more connection of `client`, unless it holds `max` already (0: no
    /// limit).
    fn admit(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ConnectionSlot> {
        let mut open = self.open.lock();
        let count = open.entry(client).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            table: self.clone(),
            client,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Answers a connection over its client's limit with a 429 and closes it, after reading what
/// the client sent for a moment (closing with unread bytes would reset the connection before
/// the client reads the answer).
async fn refuse_connection<S>(mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{TOO_MANY_CONNECTIONS}",
        TOO_MANY_CONNECTIONS.len()
    );
    let sent = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    serve_connections(listener, router, limits, None, stop).await
}

/// Serves `router` over TLS on `listener`: each connection is handshaken with the settings
/// `tls` holds when it arrives (so a reload applies to new connections only), within the
/// head's time limit, then served as over plain HTTP.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: tokio::sync::watch::Receiver<Arc<TlsConfigs>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    serve_connections(listener, router, limits, Some(tls), stop).await
}

async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<tokio::sync::watch::Receiver<Arc<TlsConfigs>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = Measured {
        inner: ReadBodyInTime {
            inner: router,
            limits,
        },
    };
    // HTTP/1 only, as Consul and Marathon serve without TLS: detecting HTTP/2 first would
    // wait for a client's first bytes with no timeout at all.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let clients = Arc::new(ClientConnections::default());
    let graceful = GracefulShutdown::new();
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: go on serving the others.
                    tracing::debug!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let slot = clients.admit(peer.ip(), limits.max_conns_per_client);
        if slot.is_none() {
            tracing::debug!(client = %peer.ip(), "too many connections from one client: 429");
        }
        let service = TowerToHyperService::new(
            service
                .clone()
                .map_request(|request: Request<Incoming>| request.map(Body::new)),
        );
        match &tls {
            None if slot.is_none() => {
                tokio::spawn(refuse_connection(stream));
            }
            None => {
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                // The connection future is the task: an `async` block awaiting it would
                // hold it twice.
                tokio::spawn(graceful.watch(connection).map(move |result| {
                    drop(slot);
                    ended(result)
                }));
            }
            Some(tls) => {
                let acceptor = TlsAcceptor::from(Arc::clone(&tls.borrow().https));
                // Vectored writes as over plain HTTP: rustls seals a response's head and body,
                // handed over together, into one record (one write to the socket), and hyper
                // need not first copy the body behind the head.
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // A client that never finishes its handshake is a client that never
                    // sends its head.
                    let stream = match tokio::time::timeout(
                        limits.header_read_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake not finished in time");
                            return;
                        }
                    };
                    let Some(slot) = slot else {
                        refuse_connection(stream).await;
                        return;
                    };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    ended(watcher.watch(connection).await);
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Counts each request and its time (`atoll_http_requests_total`,
/// `atoll_http_request_duration_seconds`) under the route template the router tagged its
/// response with ([`crate::metrics::RouteTemplate`]); a response without one (unknown path,
/// wrong method, body refused here, request for another datacenter) under
/// [`atoll_metrics::node::UNROUTED`]. Outermost, so refusals of the body are counted too.
#[derive(Clone)]
struct Measured<S> {
    inner: S,
}

impl<S> Service<Request> for Measured<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Timed {
            method: request.method().clone(),
            started: tokio::time::Instant::now(),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future, counted when it answers.
    struct Timed<F> {
        #[pin]
        inner: F,
        method: Method,
        started: tokio::time::Instant,
    }
}

impl<F> Future for Timed<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let route = response
            .extensions()
            .get::<RouteTemplate>()
            .map_or(UNROUTED, |route| route.0.as_str());
        atoll_metrics::node().http.observe(
            this.method.as_str(),
            route,
            response.status().as_u16(),
            this.started.elapsed().as_secs_f64(),
        );
        Poll::Ready(Ok(response))
    }
}

fn ended(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Reads the whole body before the router sees the request, within the body timeout and
/// the size limit. A body declared larger than the limit is refused before it is invited
/// (no `100 Continue`). A request without a body (every blocking query) goes to the router
/// as it is, its future not boxed again: a parked query holds no more than it needs.
#[derive(Clone)]
struct ReadBodyInTime<S> {
    inner: S,
    limits: HttpLimits,
}

impl<S> Service<Request> for ReadBodyInTime<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_none_or(|n| n <= BODY_LIMIT as u64) && request.body().is_end_stream() {
            return Either::Left(self.inner.call(request));
        }
        // The service made ready is the one that will be called; a fresh clone stays here.
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        Either::Right(Box::pin(read_body_then(
            inner,
            self.limits,
            declared,
            request,
        )))
    }
}

async fn read_body_then<S>(
    inner: S,
    limits: HttpLimits,
    declared: Option<u64>,
    request: Request,
) -> Result<Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let path = request.uri().path().to_string();
    if let Some(declared) = declared.filter(|n| *n > BODY_LIMIT as u64) {
        return Ok(closing(error_for_path(
            &path,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body of {declared} bytes exceeds the {BODY_LIMIT} byte limit"),
            None,
        )));
    }
    let (parts, body) = request.into_parts();
    Ok(
        match tokio::time::timeout(limits.body_read_timeout, collect(body)).await {
            Ok(Ok(bytes)) => {
                return inner
                    .oneshot(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
            Ok(Err(BodyError::TooLarge)) => closing(error_for_path(
                &path,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body exceeds the {BODY_LIMIT} byte limit"),
                None,
            )),
            Ok(Err(BodyError::Broken(e))) => closing(error_for_path(
                &path,
                StatusCode::BAD_REQUEST,
                format!("Cannot read the request body: {e}"),
                None,
            )),
            Err(_) => closing(error_for_path(
                &path,
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "Request body not received within {}s",
                    limits.body_read_timeout.as_secs_f64()
                ),
                None,
            )),
        },
    )
}

enum BodyError {
    TooLarge,
    Broken(axum::Error),
}

async fn collect(mut body: Body) -> Result<Vec<u8>, BodyError> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Broken)?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > BODY_LIMIT {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(bytes)
}

/// The rest of the request was not read: the connection cannot be reused.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
