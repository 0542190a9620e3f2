//! Probes: one run of an HTTP, TCP or task command check, mapped to a status and output.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use atoll_state::{CheckStatus, TaskCommand};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Bytes of an HTTP check's body kept as output, as Consul does.
const OUTPUT_LIMIT: usize = 4096;

/// The shared HTTP client of all HTTP checks.
pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// Maps an HTTP status code to a check status: 2xx passing, 429 warning, else critical.
pub(crate) fn status_for_http_code(code: u16) -> CheckStatus {
    match code {
        200..=299 => CheckStatus::Passing,
        429 => CheckStatus::Warning,
        _ => CheckStatus::Critical,
    }
}

/// Runs one HTTP check.
pub(crate) async fn probe_http(
    client: &HttpClient,
    url: &str,
    method: &str,
    headers: &std::collections::BTreeMap<String, Vec<String>>,
    timeout: Duration,
) -> (CheckStatus, String) {
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, values) in headers {
        for value in values {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    let request = match request.body(Empty::new()) {
        Ok(request) => request,
        Err(e) => {
            return (
                CheckStatus::Critical,
                format!("invalid HTTP check request: {e}"),
            )
        }
    };
    let run = async {
        let response = client.request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), OUTPUT_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, hyper_util::client::legacy::Error>((status, body))
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => (
            CheckStatus::Critical,
            format!("{method} {url}: timed out after {timeout:?}"),
        ),
        Ok(Err(e)) => (CheckStatus::Critical, format!("{method} {url}: {e}")),
        Ok(Ok((status, body))) => (
            status_for_http_code(status.as_u16()),
            format!(
                "HTTP {method} {url}: {status} Output: {}",
                String::from_utf8_lossy(&body)
            ),
        ),
    }
}

/// Runs one TCP check: passing if a connection opens within the timeout.
pub(crate) async fn probe_tcp(address: &str, timeout: Duration) -> (CheckStatus, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => (
            CheckStatus::Passing,
            format!("TCP connect {address}: Success"),
        ),
        Ok(Err(e)) => (CheckStatus::Critical, format!("dial tcp {address}: {e}")),
        Err(_) => (
            CheckStatus::Critical,
            format!("dial tcp {address}: timed out after {timeout:?}"),
        ),
    }
}

/// One run of a task command check, as the runner of the node's tasks performs it.
pub type TaskCommandRun = Pin<Box<dyn Future<Output = (CheckStatus, String)> + Send>>;

/// Runs commands inside the tasks of this node, for checks with a
/// [`atoll_state::CheckDefinition::task_command`] (Marathon's COMMAND health checks). The
/// agent owns the timing and the status writes; the implementation decides how a command
/// runs in a task and what its outcome means.
pub trait TaskCommands: Send + Sync + 'static {
    /// Runs `check.command` in task `check.task_id`, giving up after `timeout`.
    fn run(&self, check: &TaskCommand, timeout: Duration) -> TaskCommandRun;
}

/// Runs one task command check; critical when this node has nothing that runs tasks.
pub(crate) async fn probe_task_command(
    tasks: Option<&dyn TaskCommands>,
    check: &TaskCommand,
    timeout: Duration,
) -> (CheckStatus, String) {
    match tasks {
        Some(tasks) => tasks.run(check, timeout).await,
        None => (
            CheckStatus::Critical,
            format!(
                "task {} cannot be checked: this node runs no tasks",
                check.task_id
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_codes_map_like_consul() {
        assert_eq!(status_for_http_code(200), CheckStatus::Passing);
        assert_eq!(status_for_http_code(204), CheckStatus::Passing);
        assert_eq!(status_for_http_code(429), CheckStatus::Warning);
        assert_eq!(status_for_http_code(301), CheckStatus::Critical);
        assert_eq!(status_for_http_code(500), CheckStatus::Critical);
    }

    #[tokio::test]
    async fn tcp_probe_sees_listener_and_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let (status, _) = probe_tcp(&open, Duration::from_secs(1)).await;
        assert_eq!(status, CheckStatus::Passing);
        drop(listener);
        let (status, _) = probe_tcp(&open, Duration::from_secs(1)).await;
        assert_eq!(status, CheckStatus::Critical);
    }
}
