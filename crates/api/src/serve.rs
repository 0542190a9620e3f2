//! The HTTP server: hyper under the API's router, with limits on how long a client may
//! take to send a request, so that slow or silent clients cannot hold connections (and
//! their memory and file descriptors) for ever.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use crate::error::error_for_path;
use crate::BODY_LIMIT;

/// How long clients may take to send their requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From the moment the server waits for a request (a new connection, or an idle
    /// kept-alive one) until its whole head has arrived; the connection is closed after.
    pub header_read_timeout: Duration,
    /// From the end of the head until the whole body has arrived; a 408 after.
    pub body_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service =
        axum::middleware::from_fn_with_state(limits, read_body_in_time).layer(router.clone());
    let graceful = GracefulShutdown::new();
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        let (stream, _) = tokio::select! {
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
        let service = service
            .clone()
            .map_request(|request: Request<Incoming>| request.map(Body::new));
        // HTTP/1 only, as Consul and Marathon serve without TLS: detecting HTTP/2 first would
        // wait for a client's first bytes with no timeout at all.
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Reads the whole body before the router sees the request, within the body timeout and
/// the size limit. A body declared larger than the limit is refused before it is invited
/// (no `100 Continue`).
async fn read_body_in_time(
    State(limits): State<HttpLimits>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|n| *n > BODY_LIMIT as u64) {
        return closing(error_for_path(
            &path,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body of {declared} bytes exceeds the {BODY_LIMIT} byte limit"),
            None,
        ));
    }
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(limits.body_read_timeout, collect(body)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
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
    }
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
