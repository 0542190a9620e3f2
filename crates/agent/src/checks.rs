//! Probes: one run of an HTTP, TCP, script, Docker or task command check, mapped to a
//! status and output, and the thresholds a status change waits for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use atoll_state::{CheckDefinition, CheckStatus, TaskCommand};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncReadExt;

/// Bytes of a check's output kept, as Consul does (the body of an HTTP check, the end of a
/// script's output).
const OUTPUT_LIMIT: usize = 4096;

/// A plain HTTP client, for requests without a body to other nodes.
pub(crate) type PlainClient = Client<HttpConnector, http_body_util::Empty<Bytes>>;

pub(crate) fn plain_http_client() -> PlainClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// The HTTP client of one HTTP check (its TLS settings are the check's own).
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for the HTTP check `definition`: plain HTTP or HTTPS, verifying the server's
/// certificate against the system's roots under the URL's host or `TLSServerName`, or not
/// at all with `TLSSkipVerify`.
pub(crate) fn http_client(definition: &CheckDefinition) -> Result<HttpClient, String> {
    // ring, which the workspace already builds; a health probe gains nothing from the
    // post-quantum key exchange only aws-lc-rs offers.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let config = if definition.tls_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_native_roots()
            .map_err(|e| format!("cannot read the system's root certificates: {e}"))?
            .with_no_client_auth()
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let connector = if definition.tls_server_name.is_empty() {
        connector.enable_http1().build()
    } else {
        let name = ServerName::try_from(definition.tls_server_name.clone())
            .map_err(|e| format!("invalid TLSServerName: {e}"))?;
        connector
            .with_server_name_resolver(FixedServerNameResolver::new(name))
            .enable_http1()
            .build()
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// `TLSSkipVerify`: any certificate is accepted, but the handshake's signatures are still
/// checked against it (so the connection is at least to the holder of that certificate).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
    definition: &CheckDefinition,
    timeout: Duration,
) -> (CheckStatus, String) {
    let method = definition.method.as_deref().unwrap_or("GET");
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, values) in &definition.header {
        for value in values {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    let body = Full::new(Bytes::from(definition.body.clone().unwrap_or_default()));
    let request = match request.body(body) {
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
        Ok(Err(e)) => {
            // The client's error says only which step failed; its causes say why.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(inner) = cause {
                text = format!("{text}: {inner}");
                cause = inner.source();
            }
            (CheckStatus::Critical, format!("{method} {url}: {text}"))
        }
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

/// Consul's reading of a script's or Docker command's exit code: 0 passing, 1 warning,
/// anything else (or none: killed by a signal) critical.
pub(crate) fn status_for_exit_code(code: Option<i64>) -> CheckStatus {
    match code {
        Some(0) => CheckStatus::Passing,
        Some(1) => CheckStatus::Warning,
        _ => CheckStatus::Critical,
    }
}

/// The last [`OUTPUT_LIMIT`] bytes a command wrote, and how many it wrote in all.
#[derive(Default)]
pub(crate) struct OutputTail {
    kept: std::collections::VecDeque<u8>,
    total: usize,
}

impl OutputTail {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len());
        let start = bytes.len().saturating_sub(OUTPUT_LIMIT);
        self.kept.extend(&bytes[start..]);
        let excess = self.kept.len().saturating_sub(OUTPUT_LIMIT);
        self.kept.drain(..excess);
    }

    /// The output as Consul reports it: when some was dropped, a line saying how much was
    /// kept first.
    pub(crate) fn render(&self) -> String {
        let (front, back) = self.kept.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat()).into_owned();
        if self.total > self.kept.len() {
            format!(
                "Captured {} of {} bytes\n...\n{text}",
                self.kept.len(),
                self.total
            )
        } else {
            text
        }
    }
}

/// A duration as Go prints one, for Consul's messages (`30s`, `1.5s`, `500ms`).
fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() > 0 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs one script check: `args[0]` with the rest as its arguments, in a process group of
/// its own, its stdout and stderr into one output. Still running after `timeout`, the whole
/// group is killed.
pub(crate) async fn probe_script(args: &[String], timeout: Duration) -> (CheckStatus, String) {
    let Some((program, rest)) = args.split_first() else {
        return (
            CheckStatus::Critical,
            "the check has no command".to_string(),
        );
    };
    let spawned = (|| {
        let (reader, writer) = std::io::pipe()?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(rest)
            .stdin(std::process::Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn()?;
        // `command` held the pipe's write ends: dropped here, the output ends when the
        // script's processes are done with it.
        drop(command);
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())?;
        Ok::<_, std::io::Error>((child, reader))
    })();
    let (mut child, mut reader) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            return (
                CheckStatus::Critical,
                format!("Check failed to start: {program}: {e}"),
            )
        }
    };
    let group = child.id();
    let mut output = OutputTail::default();
    let run = async {
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => output.push(&buffer[..n]),
            }
        }
        child.wait().await
    };
    let waited = tokio::time::timeout(timeout, run).await;
    match waited {
        Ok(Ok(status)) => (
            status_for_exit_code(status.code().map(i64::from)),
            output.render(),
        ),
        Ok(Err(e)) => (
            CheckStatus::Critical,
            format!("Check failed to run: {program}: {e}"),
        ),
        Err(_) => {
            if let Some(group) = group.and_then(|pid| i32::try_from(pid).ok()) {
                // The group may be gone already; nothing else is to be done then.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(group),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            (
                CheckStatus::Critical,
                format!("Timed out ({}) running check", go_duration(timeout)),
            )
        }
    }
}

/// How a command run in a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerOutcome {
    /// It exited with this code, having printed this.
    Exited {
        /// The exit code.
        code: i64,
        /// What it printed.
        output: String,
    },
    /// It was still running after the timeout, and was killed.
    TimedOut,
    /// It could not be run (no engine, no such container, the engine refused).
    Failed(String),
}

/// One run of a command in a container, as the node's Docker driver performs it.
pub type ContainerRun = Pin<Box<dyn Future<Output = ContainerOutcome> + Send>>;

/// Runs one Docker check: `SHELL -c ARGS...` in the container (Consul's form).
pub(crate) async fn probe_docker(
    tasks: Option<&dyn TaskCommands>,
    container: &str,
    shell: &str,
    args: &[String],
    timeout: Duration,
) -> (CheckStatus, String) {
    let Some(tasks) = tasks else {
        return (
            CheckStatus::Critical,
            "this node has no Docker engine to run the check in".to_string(),
        );
    };
    let shell = if shell.is_empty() { "/bin/sh" } else { shell };
    let mut command = vec![shell.to_string(), "-c".to_string()];
    command.extend(args.iter().cloned());
    match tasks.run_in_container(container, command, timeout).await {
        ContainerOutcome::Exited { code, output } => {
            let mut tail = OutputTail::default();
            tail.push(output.as_bytes());
            (status_for_exit_code(Some(code)), tail.render())
        }
        ContainerOutcome::TimedOut => (
            CheckStatus::Critical,
            format!("Timed out ({}) running check", go_duration(timeout)),
        ),
        ContainerOutcome::Failed(message) => (CheckStatus::Critical, message),
    }
}

/// Consul's `SuccessBeforePassing` and `FailuresBeforeCritical`: a run's status is reported
/// only once enough consecutive runs agreed (passing and warning count as successes).
#[derive(Debug, Clone, Default)]
pub(crate) struct Thresholds {
    success_before_passing: u32,
    failures_before_critical: u32,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    pub(crate) fn new(definition: &CheckDefinition) -> Thresholds {
        Thresholds {
            success_before_passing: definition.success_before_passing,
            failures_before_critical: definition.failures_before_critical,
            ..Default::default()
        }
    }

    /// Counts one run; whether its status is to be reported.
    pub(crate) fn admit(&mut self, status: CheckStatus) -> bool {
        if status == CheckStatus::Critical {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            self.failures >= self.failures_before_critical
        } else {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            self.successes >= self.success_before_passing
        }
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

    /// Runs `command` (program and arguments) in the Docker container `container`, which
    /// need not be a task's, killing it after `timeout` (Docker checks).
    fn run_in_container(
        &self,
        container: &str,
        command: Vec<String>,
        timeout: Duration,
    ) -> ContainerRun;
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

    #[test]
    fn exit_codes_map_like_consul() {
        assert_eq!(status_for_exit_code(Some(0)), CheckStatus::Passing);
        assert_eq!(status_for_exit_code(Some(1)), CheckStatus::Warning);
        assert_eq!(status_for_exit_code(Some(2)), CheckStatus::Critical);
        assert_eq!(status_for_exit_code(Some(-1)), CheckStatus::Critical);
        assert_eq!(status_for_exit_code(None), CheckStatus::Critical);
    }

    fn thresholds(success_before_passing: u32, failures_before_critical: u32) -> Thresholds {
        Thresholds::new(&CheckDefinition {
            success_before_passing,
            failures_before_critical,
            ..Default::default()
        })
    }

    #[test]
    fn without_thresholds_every_run_counts() {
        let mut t = thresholds(0, 0);
        for status in [
            CheckStatus::Critical,
            CheckStatus::Passing,
            CheckStatus::Warning,
            CheckStatus::Critical,
        ] {
            assert!(t.admit(status));
        }
    }

    #[test]
    fn thresholds_wait_for_consecutive_results() {
        use CheckStatus::*;
        let mut t = thresholds(2, 3);
        // Successes: the second in a row is reported; warning counts as a success.
        assert!(!t.admit(Passing));
        assert!(t.admit(Warning));
        assert!(t.admit(Passing));
        // Failures: the third in a row; a success in between starts the count again.
        assert!(!t.admit(Critical));
        assert!(!t.admit(Critical));
        assert!(!t.admit(Passing));
        assert!(!t.admit(Critical));
        assert!(!t.admit(Critical));
        assert!(t.admit(Critical));
        assert!(t.admit(Critical));
        // And back: the failures reset the successes.
        assert!(!t.admit(Passing));
        assert!(t.admit(Passing));
    }

    #[test]
    fn output_keeps_the_last_four_kilobytes_and_says_so() {
        let mut tail = OutputTail::default();
        tail.push(b"short");
        assert_eq!(tail.render(), "short");
        let mut tail = OutputTail::default();
        tail.push(&[b'a'; 3000]);
        tail.push(&[b'b'; 3000]);
        let rendered = tail.render();
        let (head, kept) = rendered.split_once("\n...\n").unwrap();
        assert_eq!(head, "Captured 4096 of 6000 bytes");
        assert_eq!(kept.len(), OUTPUT_LIMIT);
        assert!(kept.starts_with(&"a".repeat(1096)) && kept.ends_with(&"b".repeat(3000)));
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn scripts_map_exit_codes_and_report_both_streams() {
        let timeout = Duration::from_secs(20);
        let (status, output) = probe_script(&sh("echo out; echo err >&2"), timeout).await;
        assert_eq!(status, CheckStatus::Passing);
        assert_eq!(output, "out\nerr\n");
        let (status, _) = probe_script(&sh("exit 1"), timeout).await;
        assert_eq!(status, CheckStatus::Warning);
        let (status, output) = probe_script(&sh("echo bad; exit 2"), timeout).await;
        assert_eq!((status, output.as_str()), (CheckStatus::Critical, "bad\n"));
        let (status, output) = probe_script(&["/nonexistent/check".into()], timeout).await;
        assert_eq!(status, CheckStatus::Critical);
        assert!(output.contains("/nonexistent/check"), "{output}");
    }

    #[tokio::test]
    async fn a_script_past_its_timeout_is_killed_with_its_children() {
        let dir = std::env::temp_dir().join(format!("atoll-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("child-pid");
        // A background child that outlives the shell unless its group is killed.
        let script = format!("sleep 300 & echo $! > {}; wait", marker.display());
        let (status, output) = probe_script(&sh(&script), Duration::from_millis(500)).await;
        assert_eq!(status, CheckStatus::Critical);
        assert_eq!(output, "Timed out (500ms) running check");
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed: gone, or a zombie until its reaper notices.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
            if matches!(state, None | Some('Z')) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "child {pid} still running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
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
