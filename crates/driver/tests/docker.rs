//! The docker driver and the registrator against a real Docker engine. Every container a
//! test makes carries its node label and is removed by [`common::ContainerCleanup`].

mod common;

use atoll_driver::registrator::{ExternalContainers, ExternalEvent, PublishedPort};
use atoll_driver::{
    CommandExit, DockerDriver, DockerNetwork, DriverError, DriverKind, PortBinding, TaskEvent,
    TaskKind, LABEL_APP_ID, LABEL_APP_VERSION, LABEL_MANAGED, LABEL_NODE, LABEL_NODE_ID,
    LABEL_TASK_ID,
};
use common::{
    bounded, docker_cli, docker_driver, docker_spec, free_port, http_get, unique_node, wait_for,
    ContainerCleanup, TEST_IMAGE, TEST_LABEL,
};
use std::time::Duration;
use tokio::sync::broadcast;

const LIMIT: Duration = Duration::from_secs(90);

async fn next_task_event(
    events: &mut broadcast::Receiver<TaskEvent>,
    task_id: &str,
    exited: bool,
) -> TaskEvent {
    loop {
        match events.recv().await {
            Ok(event) if event.task_id() == task_id => {
                if matches!(event, TaskEvent::Exited { .. }) == exited {
                    return event;
                }
            }
            Ok(_) => {}
            Err(error) => panic!("event channel failed: {error}"),
        }
    }
}

async fn container_gone(driver: &DockerDriver, name: &str) -> bool {
    matches!(
        driver.engine().inspect_container(name, None).await,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        })
    )
}

#[tokio::test]
async fn docker_task_serves_on_its_bridge_port_is_readopted_and_stopped() {
    let node = unique_node("serve");
    let _cleanup = ContainerCleanup::new(&node);
    let Some(driver) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        let host_port = free_port();
        let task_id = format!("test_web.{node}-1");
        let spec = docker_spec(
            &task_id,
            &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
            vec![PortBinding {
                host_port,
                container_port: Some(8080),
                protocol: "tcp".into(),
            }],
        );
        let mut events = driver.events();
        driver.start(&spec).await.expect("start");
        match next_task_event(&mut events, &task_id, false).await {
            TaskEvent::Running { details, .. } => {
                assert!(
                    details.contains(&DockerDriver::container_name(&task_id)),
                    "{details}"
                );
            }
            other => panic!("expected Running, got {other:?}"),
        }

        let body = wait_for(Duration::from_secs(30), "httpd to answer", || {
            http_get(host_port)
        })
        .await;
        assert!(
            body.starts_with("HTTP/1.") && body.contains(" 200 "),
            "{body}"
        );
        assert!(body.contains("atoll-test-busybox"), "{body}");

        let name = DockerDriver::container_name(&task_id);
        let info = driver
            .engine()
            .inspect_container(&name, None)
            .await
            .expect("inspect the task's container");
        let config = info.config.expect("container config");
        let labels = config.labels.expect("labels");
        assert_eq!(labels[LABEL_TASK_ID], task_id);
        assert_eq!(labels[LABEL_APP_ID], "/test/web");
        assert_eq!(labels[LABEL_APP_VERSION], "2024-01-01T00:00:00.000Z");
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_NODE], node);
        assert_eq!(labels["team"], "platform");
        let env = config.env.expect("env");
        for expected in [
            format!("PORT0={host_port}"),
            format!("PORT_8080={host_port}"),
            format!("PORTS={host_port}"),
            "MARATHON_APP_ID=/test/web".to_string(),
            format!("MESOS_TASK_ID={task_id}"),
            "HOST=127.0.0.1".to_string(),
        ] {
            assert!(env.contains(&expected), "{expected} missing from {env:?}");
        }
        let host_config = info.host_config.expect("host config");
        assert_eq!(host_config.memory, Some(32 * 1024 * 1024));
        assert_eq!(host_config.nano_cpus, Some(100_000_000));

        // A new driver, as after an agent restart, finds the container again.
        let restarted = docker_driver(&node).await.expect("second connection");
        let running = restarted.running().await.expect("running");
        assert_eq!(running.len(), 1, "{running:?}");
        assert_eq!(running[0].task_id, task_id);
        assert_eq!(running[0].app_id, "/test/web");
        assert_eq!(running[0].app_version, "2024-01-01T00:00:00.000Z");
        assert_eq!(running[0].kind, DriverKind::Docker);

        match driver.start(&spec).await {
            Err(DriverError::AlreadyRunning { .. }) => {}
            other => panic!("a second start must fail, got {other:?}"),
        }

        restarted
            .stop(&task_id, Duration::from_secs(2))
            .await
            .expect("stop");
        assert!(
            container_gone(&driver, &name).await,
            "stop must remove the container"
        );
        assert!(restarted.running().await.expect("running").is_empty());
        match next_task_event(&mut events, &task_id, true).await {
            TaskEvent::Exited { success, .. } => assert!(!success),
            other => panic!("expected Exited, got {other:?}"),
        }
        // Stopping a task that has no container is not an error.
        restarted
            .stop(&task_id, Duration::from_secs(1))
            .await
            .expect("second stop");
    })
    .await;
}

#[tokio::test]
async fn missing_image_error_names_the_image() {
    let node = unique_node("missing");
    let _cleanup = ContainerCleanup::new(&node);
    let Some(driver) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        let mut spec = docker_spec(&format!("test_missing.{node}-1"), &[], vec![]);
        spec.kind = TaskKind::Docker {
            image: "busybox-web:missing".into(),
            network: DockerNetwork::Bridge,
            cmd: None,
            args: vec![],
            force_pull: false,
        };
        let error = driver.start(&spec).await.expect_err("the image is missing");
        assert!(
            matches!(error, DriverError::ImageUnavailable { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(
                "image busybox-web:missing not found locally and could not be pulled: "
            ),
            "{message}"
        );
        assert!(driver.running().await.expect("running").is_empty());
    })
    .await;
}

#[tokio::test]
async fn killing_a_managed_container_reports_its_exit_and_removes_it() {
    let node = unique_node("kill");
    let _cleanup = ContainerCleanup::new(&node);
    let Some(driver) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        let task_id = format!("test_kill.{node}-1");
        let spec = docker_spec(&task_id, &["/bin/sleep", "300"], vec![]);
        let mut events = driver.events();
        driver.start(&spec).await.expect("start");

        let name = DockerDriver::container_name(&task_id);
        docker_cli(&["kill", &name]);
        match next_task_event(&mut events, &task_id, true).await {
            TaskEvent::Exited {
                success, message, ..
            } => {
                assert!(!success);
                assert!(message.starts_with("exited with code 137"), "{message}");
            }
            other => panic!("expected Exited, got {other:?}"),
        }
        wait_for(
            Duration::from_secs(10),
            "the container's removal",
            || async { container_gone(&driver, &name).await.then_some(()) },
        )
        .await;
        assert!(driver.running().await.expect("running").is_empty());
    })
    .await;
}

#[tokio::test]
async fn commands_run_inside_the_task_container_and_time_out() {
    let node = unique_node("command");
    let _cleanup = ContainerCleanup::new(&node);
    let Some(driver) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        let task_id = format!("test_command.{node}-1");
        let spec = docker_spec(&task_id, &["/bin/sleep", "300"], vec![]);
        driver.start(&spec).await.expect("start");
        let limit = Duration::from_secs(10);

        let outcome = driver
            .run_command(&task_id, "test -f /tmp/ok", limit)
            .await
            .expect("run");
        assert_eq!(outcome.exit, CommandExit::Code(1));
        let outcome = driver
            .run_command(
                &task_id,
                "mkdir -p /tmp && touch /tmp/ok && echo \"$MARATHON_APP_ID\" && echo oops >&2",
                limit,
            )
            .await
            .expect("run");
        assert!(outcome.success(), "{outcome:?}");
        assert_eq!(outcome.output, "/test/web\noops\n");
        let outcome = driver
            .run_command(&task_id, "test -f /tmp/ok", limit)
            .await
            .expect("run");
        assert!(outcome.success(), "{outcome:?}");

        let started = tokio::time::Instant::now();
        let outcome = driver
            .run_command(&task_id, "sleep 300", Duration::from_millis(500))
            .await
            .expect("run");
        assert_eq!(outcome.exit, CommandExit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The timed-out command was killed: only the task's own sleep is left.
        let processes = wait_for(Duration::from_secs(10), "the hung command to die", || {
            let name = DockerDriver::container_name(&task_id);
            async move {
                let top = docker_cli(&["top", &name]);
                (top.matches("sleep 300").count() == 1).then_some(top)
            }
        })
        .await;
        assert!(processes.contains("sleep"), "{processes}");

        match driver
            .run_command(&format!("test_command.{node}-none"), "true", limit)
            .await
        {
            Err(DriverError::NotRunning { .. }) => {}
            other => panic!("expected NotRunning, got {other:?}"),
        }
        driver
            .stop(&task_id, Duration::from_secs(2))
            .await
            .expect("stop");
    })
    .await;
}

#[tokio::test]
async fn a_command_in_an_image_without_a_shell_fails_with_the_reason() {
    let node = unique_node("noshell");
    let _cleanup = ContainerCleanup::new(&node);
    let Some(driver) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        // FROM scratch with busybox alone: no `sh` anywhere.
        let context = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(context.path().join("bin")).expect("bin");
        std::fs::copy("/bin/busybox", context.path().join("bin/busybox")).expect("busybox");
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM scratch\nCOPY bin/busybox /bin/busybox\nLABEL atoll.test-image=\"true\"\n",
        )
        .expect("Dockerfile");
        let image = "atoll-test-noshell:latest";
        docker_cli(&[
            "build",
            "--quiet",
            "--tag",
            image,
            &context.path().display().to_string(),
        ]);

        let task_id = format!("test_noshell.{node}-1");
        let mut spec = docker_spec(&task_id, &["/bin/busybox", "sleep", "300"], vec![]);
        spec.kind = TaskKind::Docker {
            image: image.into(),
            network: DockerNetwork::Bridge,
            cmd: None,
            args: vec!["/bin/busybox".into(), "sleep".into(), "300".into()],
            force_pull: false,
        };
        driver.start(&spec).await.expect("start");
        let outcome = driver
            .run_command(&task_id, "true", Duration::from_secs(10))
            .await
            .expect("run");
        assert!(!outcome.success());
        assert!(outcome.output.contains("\"sh\""), "{outcome:?}");
        driver
            .stop(&task_id, Duration::from_secs(1))
            .await
            .expect("stop");
    })
    .await;
}

#[tokio::test]
async fn shell_command_exit_reports_code_and_last_output() {
    let node = unique_node("exit");
    let _cleanup = ContainerCleanup::new(&node);
    let Some(driver) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        let task_id = format!("test_exit.{node}-1");
        let mut spec = docker_spec(&task_id, &[], vec![]);
        spec.kind = TaskKind::Docker {
            image: TEST_IMAGE.into(),
            network: DockerNetwork::Bridge,
            cmd: Some("echo \"bye from $MARATHON_APP_ID\"; exit 3".into()),
            args: vec![],
            force_pull: false,
        };
        let mut events = driver.events();
        driver.start(&spec).await.expect("start");
        match next_task_event(&mut events, &task_id, true).await {
            TaskEvent::Exited {
                success, message, ..
            } => {
                assert!(!success);
                assert_eq!(
                    message,
                    "exited with code 3; last output: bye from /test/web"
                );
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn external_service_container_is_reported_with_its_ports_and_settings() {
    let node = unique_node("external");
    let _cleanup = ContainerCleanup::new(&node);
    let Some(driver) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        let host_port = free_port();
        let mut externals = ExternalContainers::follow(&driver);
        let name = format!("atoll-test-ext-{node}");
        let id = docker_cli(&[
            "run",
            "-d",
            "--name",
            &name,
            "-l",
            &format!("{TEST_LABEL}={node}"),
            "-l",
            "SERVICE_NAME=ext",
            "-e",
            "SERVICE_TAGS=blue,v1",
            "-e",
            "SERVICE_CHECK_HTTP=/",
            "-p",
            &format!("127.0.0.1:{host_port}:8080"),
            TEST_IMAGE,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ]);

        let started = loop {
            match externals.next().await {
                Ok(ExternalEvent::Started(service)) if service.container_id == id => break service,
                Ok(_) => {}
                Err(error) => panic!("event channel failed: {error}"),
            }
        };
        assert_eq!(started.container_name, name);

        let listed = externals.list().await.expect("external containers");
        let service = listed
            .into_iter()
            .find(|service| service.container_id == id)
            .expect("the external container is listed");
        assert_eq!(service, started);
        assert_eq!(service.image, TEST_IMAGE);
        assert_eq!(
            service.ports,
            vec![PublishedPort {
                host_ip: "127.0.0.1".into(),
                host_port,
                container_port: 8080,
                protocol: "tcp".into(),
            }]
        );
        let registrations = service.registrations("node-a", "10.1.2.3");
        assert_eq!(registrations.len(), 1);
        assert_eq!(registrations[0].name, "ext");
        assert_eq!(registrations[0].id, format!("node-a:{name}:8080"));
        assert_eq!(registrations[0].address, "127.0.0.1");
        assert_eq!(registrations[0].port, host_port);
        assert_eq!(registrations[0].tags, vec!["blue", "v1"]);
        assert_eq!(registrations[0].meta["check_http"], "/");

        // Managed containers are never external services.
        let task_id = format!("test_ext.{node}-1");
        driver
            .start(&docker_spec(&task_id, &["/bin/sleep", "300"], vec![]))
            .await
            .expect("start a managed task");
        let listed = externals.list().await.expect("external containers");
        assert!(listed.iter().all(|s| !s.container_name.contains(&task_id)));
        driver
            .stop(&task_id, Duration::from_secs(1))
            .await
            .expect("stop");

        docker_cli(&["rm", "-f", &id]);
        loop {
            match externals.next().await {
                Ok(ExternalEvent::Stopped { container_id }) if container_id == id => break,
                Ok(_) => {}
                Err(error) => panic!("event channel failed: {error}"),
            }
        }
    })
    .await;
}

/// A TCP front for the engine's Unix socket whose connections the test can cut, as a
/// daemon restart would.
struct EngineProxy {
    port: u16,
    cut: tokio::sync::watch::Sender<u64>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl EngineProxy {
    async fn start(socket: &'static str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refuse = refusing.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut engine) = tokio::net::UnixStream::connect(socket).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        EngineProxy {
            port,
            cut,
            refusing,
            accept_loop,
        }
    }

    /// Drops every open connection and refuses new ones until `resume`.
    fn cut(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    fn resume(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        let _ = self.cut.send(u64::MAX);
    }
}

#[tokio::test]
async fn exits_missed_while_the_event_stream_is_down_are_reported_after_reconnecting() {
    const SOCKET: &str = "/var/run/docker.sock";
    let node = unique_node("reconnect");
    let _cleanup = ContainerCleanup::new(&node);
    // Only checks for the engine and builds the image; a second follower of the same node
    // would remove exited containers before the one under test looks.
    if docker_driver(&node).await.is_none() {
        return;
    }
    if !std::path::Path::new(SOCKET).exists() {
        eprintln!("skipping: the engine is not at {SOCKET}");
        return;
    }
    bounded(LIMIT, async {
        let proxy = EngineProxy::start(SOCKET).await;
        let config = atoll_driver::DockerConfig {
            host: Some(format!("tcp://127.0.0.1:{}", proxy.port)),
            node: Some(node.clone()),
            ..Default::default()
        };
        let driver = DockerDriver::connect(config)
            .await
            .expect("connect through the proxy");
        let mut events = driver.events();
        let mut externals = ExternalContainers::follow(&driver);

        let killed_task = format!("test_reconnect.{node}-1");
        let removed_task = format!("test_reconnect.{node}-2");
        for task_id in [&killed_task, &removed_task] {
            driver
                .start(&docker_spec(task_id, &["/bin/sleep", "300"], vec![]))
                .await
                .expect("start");
        }
        // Let the follower see both containers start before the stream goes down.
        tokio::time::sleep(Duration::from_millis(500)).await;

        proxy.cut();
        let external = docker_cli(&[
            "run",
            "-d",
            "-l",
            &format!("{TEST_LABEL}={node}"),
            "-l",
            "SERVICE_NAME=late",
            TEST_IMAGE,
            "/bin/sleep",
            "300",
        ]);
        docker_cli(&["kill", &DockerDriver::container_name(&killed_task)]);
        // Gone without trace: only the resync can tell.
        docker_cli(&["rm", "-f", &DockerDriver::container_name(&removed_task)]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.resume();

        let mut exited = std::collections::BTreeMap::new();
        while exited.len() < 2 {
            match events.recv().await {
                Ok(TaskEvent::Exited {
                    task_id, message, ..
                }) => {
                    assert!(
                        exited.insert(task_id.clone(), message).is_none(),
                        "{task_id} reported twice"
                    );
                }
                Ok(_) => {}
                Err(error) => panic!("event channel failed: {error}"),
            }
        }
        assert!(
            exited[&killed_task].starts_with("exited with code 137"),
            "{exited:?}"
        );
        assert!(exited.contains_key(&removed_task), "{exited:?}");

        // Other tests' external containers come and go too; wait for this one.
        loop {
            match externals.next().await {
                Ok(ExternalEvent::Started(service)) if service.container_id == external => break,
                Ok(_) => {}
                Err(error) => panic!("event channel failed: {error}"),
            }
        }
        assert!(driver.running().await.expect("running").is_empty());
    })
    .await;
}

#[tokio::test]
async fn namesake_nodes_sharing_an_engine_keep_to_their_own_containers() {
    let node = unique_node("namesake");
    let _cleanup = ContainerCleanup::new(&node);
    // Only checks for the engine and builds the image.
    if docker_driver(&node).await.is_none() {
        return;
    }
    bounded(LIMIT, async {
        // Two nodes of the same name, as in two clusters on one host, told apart by id.
        let connect = |node_id: &str| {
            DockerDriver::connect(atoll_driver::DockerConfig {
                node: Some(node.clone()),
                node_id: Some(node_id.to_string()),
                ..Default::default()
            })
        };
        let ours = connect("0a0a").await.expect("connect");
        let theirs = connect("0b0b").await.expect("connect");
        let (our_task, their_task) = (format!("test_own.{node}-1"), format!("test_own.{node}-2"));
        ours.start(&docker_spec(&our_task, &["/bin/sleep", "300"], vec![]))
            .await
            .expect("start ours");
        theirs
            .start(&docker_spec(&their_task, &["/bin/sleep", "300"], vec![]))
            .await
            .expect("start theirs");
        let our_container = DockerDriver::container_name(&our_task);
        let labels = ours
            .inspect_container(&our_container)
            .await
            .expect("inspect")
            .and_then(|info| info.config)
            .and_then(|config| config.labels)
            .expect("labels");
        assert_eq!(labels[LABEL_NODE_ID], "0a0a");

        let ids = |tasks: Vec<atoll_driver::RunningTask>| -> Vec<String> {
            tasks.into_iter().map(|t| t.task_id).collect()
        };
        let only = |task: &str| vec![task.to_string()];
        assert_eq!(ids(ours.running().await.expect("running")), only(&our_task));
        assert_eq!(
            ids(theirs.running().await.expect("running")),
            only(&their_task)
        );

        // Stopping a task it does not run leaves the other node's container alone.
        theirs
            .stop(&our_task, Duration::from_secs(1))
            .await
            .expect("stop");
        assert!(!container_gone(&ours, &our_container).await);

        // Exits are reported to the owner only: the stream carries both kills in order,
        // so once the other node hears of its own, it has passed ours without a word.
        let mut our_events = ours.events();
        let mut their_events = theirs.events();
        docker_cli(&["kill", &our_container]);
        docker_cli(&["kill", &DockerDriver::container_name(&their_task)]);
        next_task_event(&mut our_events, &our_task, true).await;
        loop {
            match their_events.recv().await {
                Ok(event) if event.task_id() == our_task => {
                    panic!("the namesake heard of our task: {event:?}")
                }
                Ok(TaskEvent::Exited { task_id, .. }) if task_id == their_task => break,
                Ok(_) => {}
                Err(error) => panic!("event channel failed: {error}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_container_from_before_node_ids_is_still_its_nodes() {
    let node = unique_node("before-ids");
    let _cleanup = ContainerCleanup::new(&node);
    // Labels containers with the node's name only, as before nodes had ids.
    let Some(earlier) = docker_driver(&node).await else {
        return;
    };
    bounded(LIMIT, async {
        let task_id = format!("test_upgrade.{node}-1");
        earlier
            .start(&docker_spec(&task_id, &["/bin/sleep", "300"], vec![]))
            .await
            .expect("start");
        let upgraded = DockerDriver::connect(atoll_driver::DockerConfig {
            node: Some(node.clone()),
            node_id: Some("0c0c".into()),
            ..Default::default()
        })
        .await
        .expect("connect");
        let running = upgraded.running().await.expect("running");
        assert_eq!(
            running
                .iter()
                .map(|t| t.task_id.as_str())
                .collect::<Vec<_>>(),
            [task_id.as_str()]
        );
        upgraded
            .stop(&task_id, Duration::from_secs(1))
            .await
            .expect("stop");
        assert!(container_gone(&upgraded, &DockerDriver::container_name(&task_id)).await);
    })
    .await;
}
