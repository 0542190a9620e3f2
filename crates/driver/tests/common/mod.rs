//! Helpers shared by the driver's integration tests.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use atoll_driver::{DockerConfig, DockerDriver, DockerNetwork, PortBinding, TaskKind, TaskSpec};
use std::collections::BTreeMap;
use std::future::Future;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The image built by `tests/build_busybox_image.sh`.
pub const TEST_IMAGE: &str = "atoll-test-busybox:latest";
/// Label put on containers a test starts with the docker CLI, valued with the test's node.
pub const TEST_LABEL: &str = "atoll-driver-test";

/// Runs a test body with an upper bound on its duration.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, body: F) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("test did not finish within {limit:?}");
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node name unique to this test run, so drivers of parallel tests see only their own
/// containers.
pub fn unique_node(test: &str) -> String {
    format!("test-{}-{test}", std::process::id())
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Connects to the engine. Without one, fails under CI (`CI=true`) and skips otherwise.
pub async fn docker_driver(node: &str) -> Option<DockerDriver> {
    let config = DockerConfig {
        node: Some(node.to_string()),
        pull_timeout: Duration::from_secs(60),
        ..DockerConfig::default()
    };
    match DockerDriver::connect(config).await {
        Ok(driver) => {
            build_test_image();
            Some(driver)
        }
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but no Docker engine answers: {error}")
        }
        Err(error) => {
            eprintln!("skipping: no Docker engine answers ({error})");
            None
        }
    }
}

/// Builds the test image once per test binary.
pub fn build_test_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/build_busybox_image.sh");
        let output = Command::new("sh")
            .arg(script)
            .arg(TEST_IMAGE)
            .output()
            .map_err(|e| format!("running {script}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{script} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// Runs the docker CLI and returns its trimmed stdout, panicking on failure.
pub fn docker_cli(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Removes, when dropped (also when the test panics), every container labelled with this
/// test's node: the driver's (`atoll.node`) and the CLI's (`atoll-driver-test`).
pub struct ContainerCleanup {
    node: String,
}

impl ContainerCleanup {
    /// Guards the containers of `node`.
    pub fn new(node: &str) -> Self {
        ContainerCleanup {
            node: node.to_string(),
        }
    }
}

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        let mut ids = Vec::new();
        for label in [
            format!("atoll.node={}", self.node),
            format!("{TEST_LABEL}={}", self.node),
        ] {
            let filter = format!("label={label}");
            if let Ok(output) = Command::new("docker")
                .args(["ps", "-aq", "--no-trunc", "--filter", &filter])
                .output()
            {
                ids.extend(
                    String::from_utf8_lossy(&output.stdout)
                        .split_whitespace()
                        .map(String::from),
                );
            }
        }
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

/// A docker task spec running the test image.
pub fn docker_spec(task_id: &str, args: &[&str], ports: Vec<PortBinding>) -> TaskSpec {
    TaskSpec {
        task_id: task_id.to_string(),
        app_id: "/test/web".into(),
        app_version: "2024-01-01T00:00:00.000Z".into(),
        kind: TaskKind::Docker {
            image: TEST_IMAGE.into(),
            network: DockerNetwork::Bridge,
            cmd: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            force_pull: false,
        },
        env: BTreeMap::new(),
        labels: BTreeMap::from([("team".to_string(), "platform".to_string())]),
        ports,
        cpus: 0.1,
        mem_mb: 32.0,
        host: "127.0.0.1".into(),
        stop_grace: Duration::from_secs(2),
    }
}

/// `GET /` over HTTP/1.0; the whole response, or `None` when nothing answers yet.
pub async fn http_get(port: u16) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .filter(|response| response.starts_with("HTTP/"))
}
