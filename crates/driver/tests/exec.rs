//! The exec driver against real processes.

mod common;

use atoll_driver::{
    CommandExit, Driver, DriverError, DriverKind, ExecDriver, PortBinding, TaskEvent, TaskKind,
    TaskSpec,
};
use common::{bounded, wait_for};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::broadcast;

const LIMIT: Duration = Duration::from_secs(60);

fn exec_spec(task_id: &str, cmd: &str) -> TaskSpec {
    TaskSpec {
        task_id: task_id.to_string(),
        app_id: "/test/exec".into(),
        app_version: "v1".into(),
        kind: TaskKind::Exec { cmd: cmd.into() },
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        labels: BTreeMap::new(),
        ports: vec![
            PortBinding {
                host_port: 31000,
                container_port: None,
                protocol: "tcp".into(),
            },
            PortBinding {
                host_port: 31001,
                container_port: None,
                protocol: "tcp".into(),
            },
        ],
        cpus: 0.1,
        mem_mb: 32.0,
        host: "127.0.0.1".into(),
        stop_grace: Duration::from_secs(2),
    }
}

async fn next_exit(events: &mut broadcast::Receiver<TaskEvent>, task_id: &str) -> (bool, String) {
    loop {
        match events.recv().await {
            Ok(TaskEvent::Exited {
                task_id: id,
                success,
                message,
            }) if id == task_id => return (success, message),
            Ok(_) => {}
            Err(error) => panic!("event channel failed: {error}"),
        }
    }
}

/// Whether a process is gone; a zombie waiting for its reaper counts as gone.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn read_file(path: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    text.ends_with('\n').then_some(text)
}

#[tokio::test]
async fn exec_task_gets_marathon_environment_in_its_sandbox() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = ExecDriver::new(root.path());
        let mut events = driver.events();
        let spec = exec_spec(
            "test_exec.env-1",
            r#"echo "$PORT0 $MARATHON_APP_ID $PORTS $PORT $HOST $MESOS_TASK_ID $GREETING" > env.out; echo to-stderr >&2"#,
        );
        driver.start(&spec).await.expect("start");
        let (success, message) = next_exit(&mut events, &spec.task_id).await;
        assert!(success, "{message}");
        assert_eq!(message, "exited with code 0");

        let sandbox = driver.sandbox_dir(&spec.task_id);
        let env = std::fs::read_to_string(sandbox.join("env.out")).expect("env.out");
        assert_eq!(
            env.trim(),
            "31000 /test/exec 31000,31001 31000 127.0.0.1 test_exec.env-1 hello"
        );
        let stderr = std::fs::read_to_string(sandbox.join("stderr")).expect("stderr file");
        assert_eq!(stderr.trim(), "to-stderr");
        assert!(driver.running().is_empty());
    })
    .await;
}

#[tokio::test]
async fn exec_task_runs_until_stopped_and_is_listed_meanwhile() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = Driver::Exec(ExecDriver::new(root.path()));
        let mut events = driver.events();
        let spec = exec_spec("test_exec.sleep-1", "sleep 30");
        driver.start(&spec).await.expect("start");
        match events.recv().await {
            Ok(TaskEvent::Running { task_id, details }) => {
                assert_eq!(task_id, spec.task_id);
                assert!(details.starts_with("pid "), "{details}");
            }
            other => panic!("expected Running, got {other:?}"),
        }

        let running = driver.running().await.expect("running");
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].task_id, spec.task_id);
        assert_eq!(running[0].app_id, "/test/exec");
        assert_eq!(running[0].app_version, "v1");
        assert_eq!(running[0].kind, DriverKind::Exec);

        match driver.start(&spec).await {
            Err(DriverError::AlreadyRunning { task_id }) => assert_eq!(task_id, spec.task_id),
            other => panic!("a second start must fail, got {other:?}"),
        }

        let started = tokio::time::Instant::now();
        driver
            .stop(&spec.task_id, Duration::from_secs(10))
            .await
            .expect("stop");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sleep should die on SIGTERM at once"
        );
        let (success, message) = next_exit(&mut events, &spec.task_id).await;
        assert!(!success);
        // The wrapper shell dies of the SIGTERM itself when it arrives before its trap is
        // set, and otherwise records the task's shell dying of it.
        assert!(
            [
                "stopped: exited with code 143 (128 + SIGTERM)",
                "stopped: killed by signal 15 (SIGTERM)"
            ]
            .contains(&message.as_str()),
            "{message}"
        );
        assert!(driver.running().await.expect("running").is_empty());
        // Stopping again is not an error.
        driver
            .stop(&spec.task_id, Duration::from_secs(1))
            .await
            .expect("second stop");
    })
    .await;
}

#[tokio::test]
async fn exec_stop_kills_the_whole_process_group() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = ExecDriver::new(root.path());
        let spec = exec_spec(
            "test_exec.group-1",
            "sleep 300 & echo $! > grandchild.pid; sleep 300",
        );
        driver.start(&spec).await.expect("start");
        let pid_file = driver.sandbox_dir(&spec.task_id).join("grandchild.pid");
        let grandchild: u32 = wait_for(Duration::from_secs(10), "the grandchild's pid", || {
            let pid_file = pid_file.clone();
            async move { read_file(&pid_file).await?.trim().parse().ok() }
        })
        .await;
        assert!(!process_gone(grandchild), "grandchild should be running");

        driver
            .stop(&spec.task_id, Duration::from_secs(5))
            .await
            .expect("stop");
        wait_for(
            Duration::from_secs(5),
            "the grandchild to die",
            || async move { process_gone(grandchild).then_some(()) },
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn exec_stop_escalates_to_sigkill_after_the_grace_period() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = ExecDriver::new(root.path());
        let mut events = driver.events();
        // Ignored signals stay ignored in children, so the whole group shrugs off SIGTERM.
        let spec = exec_spec(
            "test_exec.stubborn-1",
            "trap '' TERM; sleep 300 & echo $! > grandchild.pid; sleep 300",
        );
        driver.start(&spec).await.expect("start");
        let pid_file = driver.sandbox_dir(&spec.task_id).join("grandchild.pid");
        let grandchild: u32 = wait_for(Duration::from_secs(10), "the grandchild's pid", || {
            let pid_file = pid_file.clone();
            async move { read_file(&pid_file).await?.trim().parse().ok() }
        })
        .await;

        let grace = Duration::from_millis(700);
        let started = tokio::time::Instant::now();
        driver.stop(&spec.task_id, grace).await.expect("stop");
        assert!(
            started.elapsed() >= grace,
            "SIGKILL came before the grace period"
        );
        let (success, message) = next_exit(&mut events, &spec.task_id).await;
        assert!(!success);
        assert_eq!(message, "stopped: killed by signal 9 (SIGKILL)");
        wait_for(
            Duration::from_secs(5),
            "the grandchild to die",
            || async move { process_gone(grandchild).then_some(()) },
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn exec_natural_exit_reports_the_exit_status() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = ExecDriver::new(root.path());
        let mut events = driver.events();

        driver
            .start(&exec_spec("test_exec.ok-1", "true"))
            .await
            .expect("start");
        let (success, message) = next_exit(&mut events, "test_exec.ok-1").await;
        assert!(success, "{message}");

        driver
            .start(&exec_spec("test_exec.fail-1", "exit 3"))
            .await
            .expect("start");
        let (success, message) = next_exit(&mut events, "test_exec.fail-1").await;
        assert!(!success);
        assert_eq!(message, "exited with code 3");
    })
    .await;
}

#[tokio::test]
async fn exec_driver_rejects_docker_tasks() {
    let root = tempfile::tempdir().expect("temp dir");
    let driver = ExecDriver::new(root.path());
    let mut spec = exec_spec("test_exec.wrong-1", "true");
    spec.kind = TaskKind::Docker {
        image: "x".into(),
        network: atoll_driver::DockerNetwork::Host,
        cmd: None,
        args: vec![],
        force_pull: false,
    };
    assert!(matches!(
        driver.start(&spec).await,
        Err(DriverError::InvalidSpec { .. })
    ));
}

/// Starts a task with a driver whose runtime then goes away without stopping it, as when
/// the agent is killed: the task keeps running and its record stays in the sandbox.
fn start_with_a_vanishing_driver(root: &Path, spec: &TaskSpec) {
    let root = root.to_path_buf();
    let spec = spec.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async { ExecDriver::new(root).start(&spec).await.expect("start") });
    })
    .join()
    .expect("the first driver's thread");
}

/// The pid the task's shell wrote into `name` in its sandbox.
async fn pid_from(driver: &ExecDriver, task_id: &str, name: &str) -> u32 {
    let pid_file = driver.sandbox_dir(task_id).join(name);
    wait_for(Duration::from_secs(10), "the task's pid file", || {
        let pid_file = pid_file.clone();
        async move { read_file(&pid_file).await?.trim().parse().ok() }
    })
    .await
}

#[tokio::test]
async fn a_new_driver_adopts_a_running_task_and_stops_it() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let spec = exec_spec(
            "test_exec.adopt-1",
            "sleep 300 & echo $! > grandchild.pid; echo $$ > shell.pid; wait",
        );
        start_with_a_vanishing_driver(root.path(), &spec);

        let driver = ExecDriver::new(root.path());
        let shell = pid_from(&driver, &spec.task_id, "shell.pid").await;
        let grandchild = pid_from(&driver, &spec.task_id, "grandchild.pid").await;
        assert!(driver.running().is_empty(), "nothing is known before adopt");
        assert_eq!(driver.adopt().await, vec![spec.task_id.clone()]);
        let running = driver.running();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].task_id, spec.task_id);
        assert_eq!(running[0].app_id, "/test/exec");
        assert_eq!(running[0].app_version, "v1");
        assert_eq!(running[0].kind, DriverKind::Exec);
        assert!(!process_gone(shell) && !process_gone(grandchild));
        // Adopting again changes nothing.
        assert!(driver.adopt().await.is_empty());

        let mut events = driver.events();
        driver
            .stop(&spec.task_id, Duration::from_secs(10))
            .await
            .expect("stop");
        let (success, message) = next_exit(&mut events, &spec.task_id).await;
        assert!(!success);
        assert_eq!(message, "stopped: exited with code 143 (128 + SIGTERM)");
        assert!(driver.running().is_empty());
        wait_for(Duration::from_secs(5), "the whole group to die", || async {
            (process_gone(shell) && process_gone(grandchild)).then_some(())
        })
        .await;

        // A third agent does not adopt the stopped task.
        assert!(ExecDriver::new(root.path()).adopt().await.is_empty());
    })
    .await;
}

/// SIGKILLs one process by pid, as something outside the agent would.
fn sigkill(pid: u32, what: &str) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits in i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
        .unwrap_or_else(|e| panic!("kill {what}: {e}"));
}

#[tokio::test]
async fn an_adopted_task_killed_from_outside_is_reported_with_its_status() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let spec = exec_spec(
            "test_exec.adopt-kill-1",
            "echo $$ > shell.pid; exec sleep 300",
        );
        start_with_a_vanishing_driver(root.path(), &spec);

        let driver = ExecDriver::new(root.path());
        let task = pid_from(&driver, &spec.task_id, "shell.pid").await;
        let mut events = driver.events();
        assert_eq!(driver.adopt().await, vec![spec.task_id.clone()]);
        sigkill(task, "the task's process");
        let (success, message) = next_exit(&mut events, &spec.task_id).await;
        assert!(!success);
        assert_eq!(message, "exited with code 137 (128 + SIGKILL)");
        assert!(driver.running().is_empty());
        assert!(ExecDriver::new(root.path()).adopt().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_adopted_task_whose_wrapper_is_killed_ends_with_an_unknown_status() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let spec = exec_spec(
            "test_exec.adopt-wrapper-1",
            "echo $PPID > wrapper.pid; echo $$ > shell.pid; exec sleep 300",
        );
        start_with_a_vanishing_driver(root.path(), &spec);

        let driver = ExecDriver::new(root.path());
        let wrapper = pid_from(&driver, &spec.task_id, "wrapper.pid").await;
        let task = pid_from(&driver, &spec.task_id, "shell.pid").await;
        let mut events = driver.events();
        assert_eq!(driver.adopt().await, vec![spec.task_id.clone()]);
        sigkill(wrapper, "the wrapper");
        let (success, message) = next_exit(&mut events, &spec.task_id).await;
        assert!(!success);
        assert!(message.contains("status is unknown"), "{message}");
        // What the wrapper left in its group goes with it.
        wait_for(
            Duration::from_secs(5),
            "the task's process to die",
            || async { process_gone(task).then_some(()) },
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn commands_run_in_the_task_sandbox_with_its_environment() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let driver = Driver::Exec(ExecDriver::new(root.path()));
        let spec = exec_spec("test_exec.command-1", "exec sleep 300");
        driver.start(&spec).await.expect("start");
        let second = Duration::from_secs(5);

        let outcome = driver
            .run_command(&spec.task_id, "test -f healthy", second)
            .await
            .expect("run");
        assert_eq!(outcome.exit, CommandExit::Code(1));
        assert!(!outcome.success());
        let outcome = driver
            .run_command(
                &spec.task_id,
                r#"touch healthy && echo "$GREETING $PORT0 $MESOS_TASK_ID" && echo oops >&2"#,
                second,
            )
            .await
            .expect("run");
        assert!(outcome.success(), "{outcome:?}");
        assert_eq!(outcome.output, "hello 31000 test_exec.command-1\noops\n");
        let outcome = driver
            .run_command(&spec.task_id, "test -f healthy", second)
            .await
            .expect("run");
        assert!(outcome.success(), "{outcome:?}");

        let started = tokio::time::Instant::now();
        let outcome = driver
            .run_command(
                &spec.task_id,
                "sleep 300 & echo $! > hung.pid; wait",
                Duration::from_millis(500),
            )
            .await
            .expect("run");
        assert_eq!(outcome.exit, CommandExit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let hung: u32 = std::fs::read_to_string(root.path().join(&spec.task_id).join("hung.pid"))
            .expect("hung.pid")
            .trim()
            .parse()
            .expect("a pid");
        wait_for(
            Duration::from_secs(5),
            "the timed-out command to die",
            || async { process_gone(hung).then_some(()) },
        )
        .await;

        match driver
            .run_command("test_exec.unknown-1", "true", second)
            .await
        {
            Err(DriverError::NotRunning { task_id }) => assert_eq!(task_id, "test_exec.unknown-1"),
            other => panic!("expected NotRunning, got {other:?}"),
        }
        driver
            .stop(&spec.task_id, Duration::from_secs(5))
            .await
            .expect("stop");
    })
    .await;
}

#[tokio::test]
async fn commands_run_in_an_adopted_task_get_its_recorded_environment() {
    bounded(LIMIT, async {
        let root = tempfile::tempdir().expect("temp dir");
        let spec = exec_spec("test_exec.adopt-command-1", "exec sleep 300");
        start_with_a_vanishing_driver(root.path(), &spec);
        let driver = ExecDriver::new(root.path());
        assert_eq!(driver.adopt().await, vec![spec.task_id.clone()]);
        let outcome = driver
            .run_command(
                &spec.task_id,
                r#"test "$GREETING" = hello && test "$PWD" = "$MESOS_SANDBOX""#,
                Duration::from_secs(5),
            )
            .await
            .expect("run");
        assert!(outcome.success(), "{outcome:?}");
        driver
            .stop(&spec.task_id, Duration::from_secs(5))
            .await
            .expect("stop");
    })
    .await;
}
