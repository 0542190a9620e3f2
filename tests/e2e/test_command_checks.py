"""Marathon COMMAND health checks: the command runs inside the task, and its exit status
decides whether the instance is in DNS and `?passing`, and whether it is replaced.

Each test runs its own `atoll dev` with a unique node name and app prefix, so its processes
(by MARATHON_APP_ID) and containers (by node label) are removed at the end, whatever
happened. The Docker test needs an engine: without one it skips locally and fails under
CI=true; its image is built locally from the host's static busybox (no registry).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from apps_util import (
    DockerJanitor,
    app_json,
    app_tasks,
    best_effort_remove_apps,
    build_web_images,
    container_of_task,
    docker,
    healthy,
    kill_task_processes,
    process_environ,
    require_docker,
    srv_ports,
    task_processes,
    unique_prefix,
    wait_for_failure_of,
    wait_running,
)
from conftest import Atoll, require, require_tool, wait_for


class Node:
    def __init__(self, inst: Atoll, prefix: str) -> None:
        self.inst = inst
        self.prefix = prefix

    def app_id(self, name: str) -> str:
        return f"/{self.prefix}/{name}"

    def service(self, name: str) -> str:
        return f"{name}-{self.prefix}"


@pytest.fixture
def node(atoll_factory):
    prefix = unique_prefix()
    janitor = DockerJanitor(f"{prefix}-node", prefix)
    inst = atoll_factory.start("checks", node=f"{prefix}-node")
    try:
        r = inst.get("/v2/info")
        require(r.status_code == 200, f"this atoll has no Marathon API (GET /v2/info -> {r.status_code})")
        yield Node(inst, prefix)
    finally:
        best_effort_remove_apps(inst)
        janitor.snapshot()
        try:
            inst.close()
        finally:
            kill_task_processes(f"/{prefix}/")
            janitor.cleanup()


def create_app(inst: Atoll, definition: dict) -> None:
    r = requests.post(inst.url("/v2/apps"), json=definition, timeout=10)
    assert r.status_code == 201, f"POST /v2/apps -> {r.status_code}: {r.text}"


def command_check(command: str, max_failures: int, grace: int = 60) -> dict:
    return {
        "protocol": "COMMAND",
        "command": {"value": command},
        "gracePeriodSeconds": grace,
        "intervalSeconds": 1,
        "timeoutSeconds": 2,
        "maxConsecutiveFailures": max_failures,
    }


def passing_ids(inst: Atoll, service: str) -> set[str]:
    return {e["Service"]["ID"] for e in inst.get_json(f"/v1/health/service/{service}?passing")}


def task_check(inst: Atoll, service: str, task_id: str) -> dict | None:
    """The COMMAND check of a task, as /v1/health/service shows it."""
    for entry in inst.get_json(f"/v1/health/service/{service}"):
        for check in entry["Checks"]:
            if check["CheckID"] == f"marathon:{task_id}:0":
                return check
    return None


def wait_check(inst: Atoll, service: str, task_id: str, status: str, timeout: float = 15.0) -> dict:
    def probe():
        check = task_check(inst, service, task_id)
        return check if check and check["Status"] == status else None

    return wait_for(
        probe,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"the COMMAND check of {task_id} to be {status} (now {task_check(inst, service, task_id)})",
    )


def sandbox_of(app_id: str, task_id: str) -> Path:
    """The sandbox directory of an exec task, from its processes' environment."""
    for pid, owner in task_processes(app_id).items():
        if owner == task_id:
            sandbox = process_environ(pid).get("MESOS_SANDBOX")
            if sandbox:
                return Path(sandbox)
    raise AssertionError(f"no process of {task_id} found")


# ---------------------------------------------------------------------------
# exec


def exec_definition(app_id: str, busybox: str, www, check: dict) -> dict:
    return {
        "id": app_id,
        # The task marks itself healthy; the test takes the mark away and gives it back.
        "cmd": f"touch healthy && exec {busybox} httpd -f -p 127.0.0.1:$PORT0 -h {www}",
        "instances": 1,
        "cpus": 0.1,
        "mem": 16,
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
        "healthChecks": [check],
    }


def test_exec_command_check_decides_dns_and_passing(node, tmp_path):
    busybox = require_tool("busybox", "/bin/busybox")
    inst = node.inst
    app_id = node.app_id("marked")
    service = node.service("marked")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("marked\n")
    # The command sees the task's environment and runs in its sandbox.
    check = command_check('test -f healthy && test -n "$PORT0" && test "$PWD" = "$MESOS_SANDBOX"', max_failures=0)
    create_app(inst, exec_definition(app_id, busybox, www, check))

    (task,) = wait_running(inst, app_id, 1, timeout=30)
    port = task["ports"][0]
    passing = wait_check(inst, service, task["id"], "passing")
    assert passing["Type"] == "script", passing
    wait_for(lambda: passing_ids(inst, service) == {f"{task['id']}:0"}, timeout=10, message="the instance in ?passing")
    wait_for(lambda: srv_ports(inst, f"{service}.service.consul") == [port], timeout=10, message="the instance in DNS")

    # The command fails: the instance leaves ?passing and DNS, but is not killed (no limit).
    sandbox = sandbox_of(app_id, task["id"])
    (sandbox / "healthy").unlink()
    critical = wait_check(inst, service, task["id"], "critical")
    assert "exit status 1" in critical["Output"], critical
    wait_for(lambda: not passing_ids(inst, service), timeout=10, message="the instance to leave ?passing")
    wait_for(lambda: srv_ports(inst, f"{service}.service.consul") == [], timeout=10, message="the instance to leave DNS")
    wait_for(
        lambda: (lambda now: len(now) == 1 and now[0]["id"] == task["id"] and not healthy(now[0]))(app_tasks(inst, app_id)),
        timeout=10,
        message=lambda: f"Marathon to report the task unhealthy: {app_tasks(inst, app_id)}",
    )

    # And passes again.
    (sandbox / "healthy").touch()
    wait_check(inst, service, task["id"], "passing")
    wait_for(lambda: srv_ports(inst, f"{service}.service.consul") == [port], timeout=10, message="the instance back in DNS")
    assert [t["id"] for t in wait_running(inst, app_id, 1, timeout=10)] == [task["id"]]


def test_exec_command_check_failing_too_often_replaces_the_task(node, tmp_path):
    busybox = require_tool("busybox", "/bin/busybox")
    inst = node.inst
    app_id = node.app_id("fragile")
    service = node.service("fragile")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("fragile\n")
    create_app(inst, exec_definition(app_id, busybox, www, command_check("test -f healthy", max_failures=2, grace=0)))

    (task,) = wait_running(inst, app_id, 1, timeout=30)
    wait_check(inst, service, task["id"], "passing")
    (sandbox_of(app_id, task["id"]) / "healthy").unlink()

    def failures_counted():
        for t in inst.get_json(f"/v2/apps{app_id}/tasks")["tasks"]:
            if t["id"] == task["id"]:
                return [r["consecutiveFailures"] for r in t.get("healthCheckResults", [])
                        if r["consecutiveFailures"] >= 1]
        return None

    # Marathon's consecutiveFailures counts the failures before the kill.
    counted = wait_for(failures_counted, timeout=15, interval=0.05, message="consecutiveFailures to count")
    assert max(counted) <= 2, counted
    failure = wait_for_failure_of(inst, app_id, task["id"], timeout=30)
    assert "health" in failure.get("message", ""), failure
    (replacement,) = wait_running(inst, app_id, 1, timeout=30)
    assert replacement["id"] != task["id"]
    wait_check(inst, service, replacement["id"], "passing")
    wait_for(lambda: task["id"] not in task_processes(app_id).values(), timeout=10, message="the failed task's processes to be gone")


# ---------------------------------------------------------------------------
# docker


@pytest.fixture
def web_image():
    require_docker()
    return build_web_images()["v1"]


def test_docker_command_check_runs_inside_the_container(node, web_image):
    inst = node.inst
    app_id = node.app_id("boxed")
    service = node.service("boxed")
    create_app(
        inst,
        {
            "id": app_id,
            "instances": 1,
            "cpus": 0.1,
            "mem": 32,
            "args": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
            "container": {
                "type": "DOCKER",
                "docker": {"image": web_image, "network": "BRIDGE"},
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
            },
            "healthChecks": [command_check("test -f /tmp/ok", max_failures=0)],
        },
    )

    (task,) = wait_running(inst, app_id, 1, want_healthy=False, timeout=60)
    port = task["ports"][0]
    # The image has no /tmp/ok (nor /tmp) yet: the check fails inside the container.
    critical = wait_check(inst, service, task["id"], "critical")
    assert critical["Type"] == "script", critical
    assert not passing_ids(inst, service)
    assert srv_ports(inst, f"{service}.service.consul") == []

    (container,) = container_of_task(task["id"])
    docker("exec", container, "/bin/busybox", "mkdir", "-p", "/tmp")
    docker("exec", container, "/bin/busybox", "touch", "/tmp/ok")
    wait_check(inst, service, task["id"], "passing")
    wait_for(lambda: passing_ids(inst, service) == {f"{task['id']}:0"}, timeout=10, message="the instance in ?passing")
    wait_for(lambda: srv_ports(inst, f"{service}.service.consul") == [port], timeout=10, message="the instance in DNS")

    docker("exec", container, "/bin/busybox", "rm", "/tmp/ok")
    wait_check(inst, service, task["id"], "critical")
    wait_for(lambda: not passing_ids(inst, service), timeout=10, message="the instance to leave ?passing")
    assert app_json(inst, app_id)["tasks"][0]["id"] == task["id"], "maxConsecutiveFailures 0 never kills"
