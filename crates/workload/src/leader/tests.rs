//! The control loop's decisions from hand-made views: no store, no clock, no randomness.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use atoll_state::{
    Allocation, AppSpec, Command, ComputeNode, Deployment, DeploymentAction, Runtime, TaskFailure,
    TaskState, UpgradeStrategy, STOP_APPLICATION,
};

use super::{decide, Backoffs, ControlView};

const AT: &str = "2026-01-01T00:00:00.000Z";

fn app(id: &str, version: &str, instances: u32) -> AppSpec {
    AppSpec {
        id: id.into(),
        version: version.into(),
        runtime: Runtime::Exec {
            cmd: "sleep 1000".into(),
        },
        cpus: 0.1,
        mem: 16.0,
        disk: 0.0,
        instances,
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        ports: Vec::new(),
        require_ports: false,
        constraints: Vec::new(),
        health_checks: Vec::new(),
        upgrade_strategy: UpgradeStrategy {
            minimum_health_capacity: 1.0,
            maximum_over_capacity: 1.0,
        },
        backoff_seconds: 1.0,
        backoff_factor: 1.15,
        max_launch_delay_seconds: 3600.0,
        kill_grace_seconds: None,
        dependencies: Vec::new(),
        legacy_definition: serde_json::Value::Null,
    }
}

fn compute(node: &str) -> ComputeNode {
    ComputeNode {
        node: node.into(),
        cpus: 8.0,
        mem: 8192.0,
        port_range: (31000, 32000),
        attributes: BTreeMap::new(),
        drivers: vec!["exec".into()],
        busy_ports: Vec::new(),
    }
}

/// A world of one compute node `n1` and the given apps.
fn view(apps: &[&AppSpec]) -> ControlView {
    let mut view = ControlView::default();
    view.workload.compute.insert("n1".into(), compute("n1"));
    for app in apps {
        view.workload.apps.insert(app.id.clone(), (*app).clone());
    }
    view
}

/// Adds a running task of `app` at `version`, healthy or not.
fn add_task(view: &mut ControlView, id: &str, app: &AppSpec, version: &str, healthy: bool) {
    let create_index = view.workload.tasks.len() as u64 + 1;
    view.workload.tasks.insert(
        id.into(),
        Allocation {
            id: id.into(),
            app_id: app.id.clone(),
            app_version: version.into(),
            node: "n1".into(),
            ports: Vec::new(),
            cpus: app.cpus,
            mem: app.mem,
            desired_running: true,
            state: TaskState::Running,
            message: String::new(),
            staged_at: AT.into(),
            started_at: Some(AT.into()),
            health_failures: 0,
            services: Vec::new(),
            create_index,
            modify_index: create_index,
        },
    );
    if healthy {
        view.healthy.insert(id.into());
    }
}

fn fail(view: &mut ControlView, app: &str, state: TaskState, timestamp: &str) {
    view.workload.last_failures.insert(
        app.into(),
        TaskFailure {
            task_id: format!("{app}-failed"),
            state,
            message: "exited".into(),
            host: "n1".into(),
            timestamp: timestamp.into(),
            version: "v1".into(),
        },
    );
}

fn round(view: &ControlView, backoffs: &mut Backoffs, now: Instant) -> Vec<Command> {
    let mut next = 0u64;
    decide(view, backoffs, now, AT, &mut || {
        next += 1;
        next
    })
}

/// (stopped task ids, reason) of every stop, in order.
fn stops(commands: &[Command]) -> Vec<(String, String)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::StopTasks { ids, reason, .. } => Some((ids.join(","), reason.clone())),
            _ => None,
        })
        .collect()
}

/// Apps of the allocations placed, one entry per new task.
fn placed(commands: &[Command]) -> Vec<Allocation> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Place { allocations, .. } => Some(allocations.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn an_app_below_its_instances_gets_new_tasks_named_from_the_id_source() {
    let web = app("/shop/web", "v1", 3);
    let mut view = view(&[&web]);
    add_task(&mut view, "t1", &web, "v1", true);
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    let new = placed(&commands);
    assert_eq!(new.len(), 2, "{commands:?}");
    assert_eq!(new[0].id, "shop_web.instance-0000000000000001");
    assert_eq!(new[1].id, "shop_web.instance-0000000000000002");
    for task in &new {
        assert_eq!(
            (task.app_version.as_str(), task.node.as_str()),
            ("v1", "n1")
        );
        assert_eq!(task.state, TaskState::Staging);
        assert_eq!(task.staged_at, AT);
    }
    assert!(stops(&commands).is_empty());
}

#[test]
fn an_app_above_its_instances_stops_its_newest_tasks() {
    let web = app("/web", "v1", 1);
    let mut view = view(&[&web]);
    for id in ["a", "b", "c"] {
        add_task(&mut view, id, &web, "v1", true);
    }
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(
        stops(&commands),
        vec![
            ("c".to_string(), "scaled down".to_string()),
            ("b".to_string(), "scaled down".to_string())
        ]
    );
    assert!(placed(&commands).is_empty());
    // Nothing to place and an empty queue: no plan is written.
    assert!(!commands.iter().any(|c| matches!(c, Command::Place { .. })));
}

#[test]
fn tasks_on_a_down_node_are_lost_first_and_alone() {
    let web = app("/web", "v1", 2);
    let db = app("/db", "v1", 5);
    let mut view = view(&[&web, &db]);
    add_task(&mut view, "t1", &web, "v1", true);
    add_task(&mut view, "t2", &web, "v1", true);
    view.workload.tasks.get_mut("t2").unwrap().node = "n2".into();
    view.down.insert("n2".into());
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(commands.len(), 1, "{commands:?}");
    match &commands[0] {
        Command::UpdateTask {
            id, state, message, ..
        } => {
            assert_eq!((id.as_str(), *state), ("t2", TaskState::Lost));
            assert_eq!(message, "node n2 lost");
        }
        other => panic!("expected the task lost, got {other:?}"),
    }
}

#[test]
fn a_task_lost_with_its_node_is_replaced_at_once_and_a_down_node_gets_nothing() {
    let web = app("/web", "v1", 2);
    let mut view = view(&[&web]);
    view.workload.compute.insert("n2".into(), compute("n2"));
    view.down.insert("n2".into());
    add_task(&mut view, "t1", &web, "v1", true);
    fail(&mut view, "/web", TaskState::Lost, "2026-01-01T00:00:01Z");
    let mut backoffs = Backoffs::default();
    let commands = round(&view, &mut backoffs, Instant::now());
    let new = placed(&commands);
    assert_eq!(new.len(), 1, "{commands:?}");
    assert_eq!(new[0].node, "n1", "placed on the down node");
    assert_eq!(backoffs.until("/web"), None);
}

#[test]
fn failures_delay_restarts_by_a_growing_capped_backoff_reset_once_healthy() {
    let mut web = app("/web", "v1", 1);
    web.backoff_seconds = 2.0;
    web.backoff_factor = 3.0;
    web.max_launch_delay_seconds = 10.0;
    let mut view = view(&[&web]);
    let mut backoffs = Backoffs::default();
    let start = Instant::now();
    let secs = |s: u64| Duration::from_secs(s);

    // First failure: 2 s; no task is started meanwhile, and none is queued.
    fail(&mut view, "/web", TaskState::Failed, "f1");
    let commands = round(&view, &mut backoffs, start);
    assert_eq!(backoffs.until("/web"), Some(start + secs(2)));
    assert!(commands.is_empty(), "{commands:?}");
    // The same failure seen again does not grow the delay; once it passes, a task starts.
    assert!(round(&view, &mut backoffs, start + secs(1)).is_empty());
    assert_eq!(
        placed(&round(&view, &mut backoffs, start + secs(2))).len(),
        1
    );
    assert_eq!(backoffs.until("/web"), Some(start + secs(2)));

    // Second failure: 2 × 3 = 6 s; third: 18 s capped at 10 s.
    fail(&mut view, "/web", TaskState::Failed, "f2");
    round(&view, &mut backoffs, start + secs(3));
    assert_eq!(backoffs.until("/web"), Some(start + secs(3 + 6)));
    fail(&mut view, "/web", TaskState::Killed, "f3");
    round(&view, &mut backoffs, start + secs(20));
    assert_eq!(backoffs.until("/web"), Some(start + secs(20 + 10)));

    // All instances running and healthy resets the count: the next failure waits 2 s again.
    add_task(&mut view, "t1", &web, "v1", true);
    round(&view, &mut backoffs, start + secs(40));
    view.workload.tasks.clear();
    view.healthy.clear();
    fail(&mut view, "/web", TaskState::Failed, "f4");
    round(&view, &mut backoffs, start + secs(50));
    assert_eq!(backoffs.until("/web"), Some(start + secs(50 + 2)));
}

#[test]
fn a_rolling_upgrade_keeps_minimum_health_and_maximum_over_capacity() {
    // 4 instances, at least 50 % healthy (2), at most 25 % over (5 tasks in all).
    let mut web = app("/web", "v2", 4);
    web.upgrade_strategy = UpgradeStrategy {
        minimum_health_capacity: 0.5,
        maximum_over_capacity: 0.25,
    };
    let mut view = view(&[&web]);
    for id in ["o1", "o2", "o3", "o4"] {
        add_task(&mut view, id, &web, "v1", true);
    }
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    let reason = "upgrading to version v2".to_string();
    assert_eq!(
        stops(&commands),
        vec![
            ("o1".to_string(), reason.clone()),
            ("o2".to_string(), reason)
        ]
    );
    let new = placed(&commands);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].app_version, "v2");

    // Stopping tasks still occupy capacity: with o1, o2 stopping and the new task staging
    // (not healthy yet), nothing more starts and no healthy task may stop.
    for id in ["o1", "o2"] {
        view.workload.tasks.get_mut(id).unwrap().desired_running = false;
        view.healthy.remove(id);
    }
    add_task(&mut view, "n1", &web, "v2", false);
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert!(placed(&commands).is_empty(), "{commands:?}");
    assert!(stops(&commands).is_empty(), "{commands:?}");
}

#[test]
fn full_capacity_without_headroom_replaces_one_task_at_a_time() {
    // minimumHealthCapacity 1 and maximumOverCapacity 0: neither a start nor a stop is
    // allowed by the arithmetic, so one old task is stopped to make room.
    let mut web = app("/web", "v2", 2);
    web.upgrade_strategy = UpgradeStrategy {
        minimum_health_capacity: 1.0,
        maximum_over_capacity: 0.0,
    };
    let mut view = view(&[&web]);
    add_task(&mut view, "o1", &web, "v1", true);
    add_task(&mut view, "o2", &web, "v1", true);
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(stops(&commands).len(), 1, "{commands:?}");
    assert!(placed(&commands).is_empty());

    // An unhealthy old task costs no capacity: it is stopped, the healthy one is kept.
    view.healthy.remove("o2");
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(
        stops(&commands),
        vec![("o2".to_string(), "upgrading to version v2".to_string())]
    );
}

#[test]
fn a_deployment_finishes_when_every_instance_runs_the_version_healthy() {
    let web = app("/web", "v2", 2);
    let mut view = view(&[&web]);
    view.workload.deployments.insert(
        "d1".into(),
        Deployment {
            id: "d1".into(),
            app_id: "/web".into(),
            version: "v2".into(),
            action: "RestartApplication".into(),
            create_index: 1,
            previous: None,
            steps: Vec::new(),
        },
    );
    add_task(&mut view, "a", &web, "v2", true);
    add_task(&mut view, "b", &web, "v2", false);
    let finished = |commands: &[Command]| {
        commands
            .iter()
            .any(|c| matches!(c, Command::FinishDeployment { id } if id == "d1"))
    };
    assert!(!finished(&round(
        &view,
        &mut Backoffs::default(),
        Instant::now()
    )));
    view.healthy.insert("b".into());
    assert!(finished(&round(
        &view,
        &mut Backoffs::default(),
        Instant::now()
    )));
    // A deployment of a deleted app finishes once its last task is gone.
    view.workload.apps.clear();
    assert!(!finished(&round(
        &view,
        &mut Backoffs::default(),
        Instant::now()
    )));
    view.workload.tasks.clear();
    assert!(finished(&round(
        &view,
        &mut Backoffs::default(),
        Instant::now()
    )));
}

fn group_deployment(id: &str, steps: &[&[(&str, &str)]]) -> Deployment {
    Deployment {
        id: id.into(),
        app_id: "/g".into(),
        version: "v1".into(),
        action: "StartApplication".into(),
        create_index: 1,
        previous: None,
        steps: steps
            .iter()
            .map(|step| {
                step.iter()
                    .map(|(action, app_id)| DeploymentAction {
                        action: action.to_string(),
                        app_id: app_id.to_string(),
                    })
                    .collect()
            })
            .collect(),
    }
}

fn placed_apps(commands: &[Command]) -> Vec<String> {
    let mut apps: Vec<String> = placed(commands).into_iter().map(|a| a.app_id).collect();
    apps.dedup();
    apps
}

#[test]
fn a_group_deployment_starts_an_app_only_once_its_dependencies_run_healthy() {
    let db = app("/g/db", "v1", 1);
    let web = app("/g/web", "v1", 2);
    let mut view = view(&[&db, &web]);
    let start = "StartApplication";
    view.workload.deployments.insert(
        "d1".into(),
        group_deployment("d1", &[&[(start, "/g/db")], &[(start, "/g/web")]]),
    );
    // Only the first step's app is placed.
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(placed_apps(&commands), vec!["/g/db".to_string()]);
    // Running but not yet healthy: the dependent still waits.
    add_task(&mut view, "db1", &db, "v1", false);
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert!(placed_apps(&commands).is_empty(), "{commands:?}");
    // Healthy: the next step starts, and the deployment is not finished yet.
    view.healthy.insert("db1".into());
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(placed_apps(&commands), vec!["/g/web".to_string()]);
    assert!(!commands
        .iter()
        .any(|c| matches!(c, Command::FinishDeployment { .. })));
    // Every step done: the deployment finishes.
    add_task(&mut view, "web1", &web, "v1", true);
    add_task(&mut view, "web2", &web, "v1", true);
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert!(commands
        .iter()
        .any(|c| matches!(c, Command::FinishDeployment { id } if id == "d1")));
}

#[test]
fn a_group_removal_stops_dependents_before_their_dependencies() {
    let db = app("/g/db", "v1", 1);
    let web = app("/g/web", "v1", 1);
    // Both apps were removed from the state; their tasks still run.
    let mut view = view(&[]);
    add_task(&mut view, "db1", &db, "v1", true);
    add_task(&mut view, "web1", &web, "v1", true);
    let stop = STOP_APPLICATION;
    view.workload.deployments.insert(
        "d1".into(),
        group_deployment("d1", &[&[(stop, "/g/web")], &[(stop, "/g/db")]]),
    );
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(
        stops(&commands),
        vec![("web1".into(), "app removed".into())]
    );
    // Once web's task is gone, db's is stopped.
    view.workload.tasks.remove("web1");
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(stops(&commands), vec![("db1".into(), "app removed".into())]);
    // A removed app's task that no deployment holds is stopped at once.
    let mut view = view_without_deployments(&db);
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(stops(&commands), vec![("db1".into(), "app removed".into())]);
    view.workload.tasks.get_mut("db1").unwrap().desired_running = false;
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert!(stops(&commands).is_empty());
}

fn view_without_deployments(removed: &AppSpec) -> ControlView {
    let mut view = view(&[]);
    add_task(&mut view, "db1", removed, "v1", true);
    view
}

#[test]
fn a_held_restart_keeps_the_old_tasks_until_its_step() {
    let db = app("/g/db", "v2", 1);
    let web = app("/g/web", "v2", 1);
    let mut view = view(&[&db, &web]);
    add_task(&mut view, "db-old", &db, "v1", true);
    add_task(&mut view, "web-old", &web, "v1", true);
    let restart = "RestartApplication";
    view.workload.deployments.insert(
        "d1".into(),
        group_deployment("d1", &[&[(restart, "/g/db")], &[(restart, "/g/web")]]),
    );
    let commands = round(&view, &mut Backoffs::default(), Instant::now());
    assert_eq!(placed_apps(&commands), vec!["/g/db".to_string()]);
    assert!(stops(&commands).iter().all(|(id, _)| id != "web-old"));
}
