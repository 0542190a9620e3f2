"""Exec tasks survive an agent restart: a killed and restarted `atoll dev` re-adopts them.

The node runs with a fixed data dir; the test kills it with SIGKILL and starts it again on
the same data dir and ports. The exec tasks it started must still be the same tasks, run by
the same processes, listed in the catalog and DNS, and still be watched: killing one is
noticed and it is replaced, and destroying the app leaves no process behind.

App ids live under a unique prefix (`/e2eXXXXXXXX/...`) so the test's processes are told
apart by their MARATHON_APP_ID and removed at the end, whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal

import dns.rcode
import pytest
import requests

from apps_util import (
    app_json,
    app_tasks,
    destroy_app,
    exec_site_definition,
    healthy,
    listening_pids,
    prefixed_node,
    process_environ,
    srv_rcode,
    task_ids,
    task_process_groups,
    task_processes,
    wait_for_failure_of,
    wait_running,
    wait_srv,
)
from conftest import catalog_service_ids, require_tool, stays, wait_for


@pytest.fixture
def node(atoll_factory):
    """A running atoll with a fixed data dir, and this test's app prefix."""
    with prefixed_node(atoll_factory, "readopt") as running:
        yield running


def sandbox_name(task_id: str) -> str:
    """The sandbox directory name of a task (its id, made safe as a file name)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", task_id) or "_"
    return "_" + name[1:] if name.startswith(".") else name


groups = task_process_groups


def test_exec_tasks_survive_an_agent_restart_and_stay_managed(node, tmp_path):
    inst, prefix = node
    busybox = require_tool("busybox", "/bin/busybox")
    app_id = f"/{prefix}/site"
    service = f"site-{prefix}"
    srv_name = f"{service}.service.consul"
    definition = exec_site_definition(app_id, busybox, tmp_path / "www", "readopt site\n")
    r = requests.post(inst.url("/v2/apps"), json=definition, timeout=10)
    assert r.status_code == 201, f"POST /v2/apps -> {r.status_code}: {r.text}"

    tasks = wait_running(inst, app_id, 2, timeout=30)
    ports = wait_srv(inst, srv_name, 2, marker="readopt site")
    assert ports == sorted(t["ports"][0] for t in tasks)
    before = groups(app_id)
    assert set(before) == task_ids(tasks), before
    # Each task is its wrapper shell and the web server it became.
    for task in tasks:
        servers = listening_pids(task["ports"][0])
        assert servers and servers <= before[task["id"]], (task, servers, before)

    # The agent dies without a chance to stop anything, then comes back on the same data dir.
    inst.restart(kill=True)
    assert groups(app_id) == before, "the tasks' processes should have outlived the agent"

    def same_tasks_running():
        now = app_tasks(inst, app_id)
        running = [t for t in now if t["state"] == "TASK_RUNNING" and healthy(t)]
        return now if task_ids(running) == task_ids(tasks) and len(now) == 2 else None

    wait_for(same_tasks_running, timeout=30, interval=0.2, message=lambda: f"the same two tasks running: {app_tasks(inst, app_id)}")
    ports = wait_srv(inst, srv_name, 2, marker="readopt site")
    assert ports == sorted(t["ports"][0] for t in tasks)
    wait_for(
        lambda: catalog_service_ids(inst, service) == {f"{t}:0" for t in task_ids(tasks)},
        timeout=10,
        message=lambda: f"catalog of {service} to list the adopted tasks (now {catalog_service_ids(inst, service)})",
    )
    # Re-adopted, not restarted or duplicated: nothing new starts while we watch.
    stays(
        lambda: groups(app_id) == before and task_ids(app_tasks(inst, app_id)) == task_ids(tasks),
        duration=3,
        message=lambda: f"the adopted tasks changed: {groups(app_id)} vs {before}, tasks {app_tasks(inst, app_id)}",
    )

    # The new agent watches the adopted tasks: kill one's web server and it is replaced.
    victim = tasks[0]
    servers = listening_pids(victim["ports"][0])
    for pid in servers:
        assert process_environ(pid).get("MESOS_TASK_ID") == victim["id"]
        os.kill(pid, signal.SIGKILL)
    failure = wait_for_failure_of(inst, app_id, victim["id"])
    assert "137" in failure.get("message", ""), failure
    after_kill = wait_for(
        lambda: (lambda now: now if len(now) == 2 and victim["id"] not in task_ids(now) else None)(
            [t for t in app_tasks(inst, app_id) if t["state"] == "TASK_RUNNING" and healthy(t)]
        ),
        timeout=30,
        interval=0.2,
        message=lambda: f"{victim['id']} to be replaced: {app_tasks(inst, app_id)}",
    )
    wait_for(
        lambda: victim["id"] not in groups(app_id),
        timeout=10,
        message=lambda: f"every process of {victim['id']} to be gone: {groups(app_id)}",
    )
    survivor = next(t for t in tasks if t["id"] != victim["id"])
    assert groups(app_id)[survivor["id"]] == before[survivor["id"]]
    ports = wait_srv(inst, srv_name, 2, marker="readopt site")
    assert ports == sorted(t["ports"][0] for t in after_kill)

    # Destroying the app stops the adopted task as well as the new one.
    destroy_app(inst, app_id)
    wait_for(lambda: not task_processes(app_id), timeout=15, interval=0.2, message=lambda: f"processes of {app_id} to exit: {task_processes(app_id)}")
    wait_for(lambda: srv_rcode(inst, srv_name) == dns.rcode.NXDOMAIN, timeout=10, message=f"{srv_name} to be NXDOMAIN")
    assert app_json(inst, app_id) is None


def test_a_task_stopped_while_the_agent_was_down_is_not_adopted_and_is_replaced(node, tmp_path):
    inst, prefix = node
    busybox = require_tool("busybox", "/bin/busybox")
    app_id = f"/{prefix}/sleeper"
    definition = {"id": app_id, "cmd": f"exec {busybox} sleep 600", "instances": 1, "cpus": 0.1, "mem": 16}
    r = requests.post(inst.url("/v2/apps"), json=definition, timeout=10)
    assert r.status_code == 201, f"POST /v2/apps -> {r.status_code}: {r.text}"
    (task,) = wait_running(inst, app_id, 1, want_healthy=False, timeout=30)
    processes = groups(app_id)[task["id"]]

    inst.kill9()
    for pid in processes:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not task_processes(app_id), timeout=10, message="the task's processes to die")
    inst.restart(kill=True)

    failure = wait_for_failure_of(inst, app_id, task["id"])
    assert "no longer running" in failure.get("message", ""), failure
    replaced = wait_for(
        lambda: (lambda now: now if len(now) == 1 and now[0]["id"] != task["id"] and now[0]["state"] == "TASK_RUNNING" else None)(
            app_tasks(inst, app_id)
        ),
        timeout=30,
        interval=0.2,
        message=lambda: f"a replacement of {task['id']}: {app_tasks(inst, app_id)}",
    )
    wait_for(
        lambda: set(groups(app_id)) == {replaced[0]["id"]},
        timeout=10,
        message=lambda: f"only the replacement to run: {groups(app_id)}",
    )
    destroy_app(inst, app_id)
    wait_for(lambda: not task_processes(app_id), timeout=15, interval=0.2, message=lambda: f"processes of {app_id} to exit: {task_processes(app_id)}")


def test_adopted_tasks_the_cluster_does_not_know_are_stopped(node, atoll_factory, tmp_path):
    inst, prefix = node
    busybox = require_tool("busybox", "/bin/busybox")
    app_id = f"/{prefix}/stray"
    definition = {"id": app_id, "cmd": f"exec {busybox} sleep 600", "instances": 2, "cpus": 0.1, "mem": 16}
    r = requests.post(inst.url("/v2/apps"), json=definition, timeout=10)
    assert r.status_code == 201, f"POST /v2/apps -> {r.status_code}: {r.text}"
    tasks = wait_running(inst, app_id, 2, want_healthy=False, timeout=30)
    assert set(groups(app_id)) == task_ids(tasks)
    inst.kill9()

    # Another node takes over the task sandboxes but not the state: it adopts the tasks,
    # finds them placed nowhere, and stops them instead of leaving them running.
    stranger = atoll_factory.create("stranger", node=f"{prefix}-stranger")
    assert inst.data_dir is not None and stranger.data_dir is not None
    shutil.copytree(inst.data_dir / "tasks", stranger.data_dir / "tasks")
    stranger.start()
    wait_for(
        lambda: not task_processes(app_id),
        timeout=20,
        interval=0.2,
        message=lambda: f"the adopted orphans to be stopped: {groups(app_id)}",
    )
    r = stranger.get("/v2/apps")
    assert r.status_code == 200 and r.json()["apps"] == [], r.text
    # Stopped as tasks are (SIGTERM, which the wrappers recorded in the sandboxes they run
    # in), not just killed; and their records are gone, so no later start adopts them.
    for task in tasks:
        sandbox = sandbox_name(task["id"])
        assert (inst.data_dir / "tasks" / sandbox / "exit_status").read_text().strip() == "143"
        assert not (stranger.data_dir / "tasks" / sandbox / "task.json").exists()
