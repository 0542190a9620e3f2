"""Apps through Marathon's REST API: Docker and exec tasks, their catalog/DNS entries, the CLI.

Each test runs its own `atoll dev` with a unique node name, and gives its apps ids under a
unique prefix (`/e2eXXXXXXXX/...`), so its containers (labelled `atoll.node=<node>`, named
`atoll-<prefix>_...`) and processes (`MARATHON_APP_ID=/<prefix>/...`) can be told apart
from anything else on the machine and are removed at the end, whatever happened.

Docker tests need an engine: without one they skip locally and fail under CI=true. The
web image is built locally FROM scratch with the host's static busybox (no registry).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dns.rcode
import pytest
import requests

from apps_util import (
    DockerJanitor,
    WEB_MARKERS,
    app_json,
    app_tasks,
    best_effort_remove_apps,
    build_web_images,
    cli,
    container_of_task,
    containers,
    destroy_app,
    docker,
    exec_site_definition,
    fetch,
    healthy,
    inspect,
    kill_task_processes,
    listening_pids,
    marathon_client,
    marathon_module,
    no_deployments,
    require_docker,
    srv_ports,
    srv_rcode,
    task_ids,
    task_processes,
    unique_prefix,
    process_environ,
    wait_for_failure_of,
    wait_running,
    wait_srv,
)
from conftest import Atoll, catalog_service_ids, free_port, require, require_tool, wait_for

# ---------------------------------------------------------------------------
# fixtures


@dataclass
class AppsEnv:
    inst: Atoll
    prefix: str
    node: str
    tmp: Path
    janitor: DockerJanitor

    def app_id(self, name: str) -> str:
        return f"/{self.prefix}/{name}"

    def service(self, name: str) -> str:
        """Service name of app `/<prefix>/<name>`: segments reversed, joined with '-'."""
        return f"{name}-{self.prefix}"

    def srv_name(self, name: str) -> str:
        return f"{self.service(name)}.service.consul"


@pytest.fixture
def env(atoll_factory, tmp_path):
    prefix = unique_prefix()
    node = f"{prefix}-node"
    janitor = DockerJanitor(node, prefix)
    inst = atoll_factory.start("apps", node=node)
    try:
        r = inst.get("/v2/info")
        require(r.status_code == 200, f"this atoll has no Marathon API (GET /v2/info -> {r.status_code})")
        yield AppsEnv(inst=inst, prefix=prefix, node=node, tmp=tmp_path, janitor=janitor)
    finally:
        # Let atoll stop its own tasks first (bounded), then stop it and remove whatever
        # is left of this test: processes by app id, containers by node label / name.
        best_effort_remove_apps(inst)
        janitor.snapshot()
        try:
            inst.close()
        finally:
            kill_task_processes(f"/{prefix}/")
            janitor.cleanup()


@pytest.fixture
def docker_engine():
    return require_docker()


@pytest.fixture(scope="session")
def web_images():
    require_docker()
    return build_web_images()


def web_definition(app_id: str, image: str, instances: int = 3, **extra) -> dict:
    """A Marathon app (snake_case keys, for MarathonApp) serving /www of the web image."""
    definition = {
        "id": app_id,
        "instances": instances,
        "cpus": 0.1,
        "mem": 32,
        "cmd": None,
        "args": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        "container": {
            "type": "DOCKER",
            "docker": {"image": image, "network": "BRIDGE"},
            "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
        },
        "health_checks": [
            {
                "protocol": "HTTP",
                "path": "/",
                "portIndex": 0,
                "gracePeriodSeconds": 5,
                "intervalSeconds": 1,
                "timeoutSeconds": 1,
                "maxConsecutiveFailures": 3,
            }
        ],
    }
    definition.update(extra)
    return definition


def write_definition(env: AppsEnv, name: str, definition: dict) -> Path:
    path = env.tmp / f"{name}.json"
    path.write_text(json.dumps(definition))
    return path


def cli_output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


# ---------------------------------------------------------------------------
# Docker, end to end, with the marathon client


def test_docker_web_app_dns_replacement_and_rolling_upgrade(env, web_images):
    m = marathon_module()
    client = marathon_client(env.inst)
    inst = env.inst
    app_id = env.app_id("web")
    srv_name = env.srv_name("web")
    v1, v2 = WEB_MARKERS["v1"], WEB_MARKERS["v2"]
    seen_tasks: set[str] = set()
    findings: list[str] = []

    created = client.create_app(app_id, m.MarathonApp(**web_definition(app_id, web_images["v1"])))
    assert created, "create_app did not answer 201"
    assert created.id == app_id and created.instances == 3

    tasks = wait_running(inst, app_id, 3, timeout=60)
    seen_tasks |= task_ids(tasks)
    env.janitor.snapshot()
    listed = client.list_tasks(app_id)
    assert {t.id for t in listed} == task_ids(tasks)
    assert all(t.host for t in listed)
    wait_for(lambda: no_deployments(inst, app_id), timeout=20, interval=0.2, message="the start deployment to finish")
    app = client.get_app(app_id)
    assert app.instances == 3 and app.tasks_running == 3 and app.tasks_healthy == 3, app

    # Three distinct dynamic host ports, each serving v1, and DNS lists exactly those.
    task_ports = sorted(t["ports"][0] for t in tasks)
    assert len(set(task_ports)) == 3, tasks
    assert all(31000 <= p <= 32000 for p in task_ports), task_ports
    ports = wait_srv(inst, srv_name, 3, marker=v1)
    assert ports == task_ports

    # Each task is one container, labelled with its task and app; remember how it publishes.
    published_on: dict[str, list[str]] = {}
    for task in tasks:
        ids = container_of_task(task["id"])
        assert len(ids) == 1, f"containers of {task['id']}: {ids}"
        info = inspect(ids[0])
        labels = info["Config"]["Labels"]
        assert labels.get("atoll.app_id") == app_id and labels.get("atoll.managed") == "true", labels
        published_on[task["id"]] = [b.get("HostIp", "") for b in info["HostConfig"]["PortBindings"]["8080/tcp"]]

    # Kill one container behind atoll's back: it is replaced, and DNS follows.
    victim = tasks[0]
    victim_port = victim["ports"][0]
    docker("kill", container_of_task(victim["id"])[0])
    wait_for_failure_of(inst, app_id, victim["id"])

    def replaced():
        now = [t for t in app_tasks(inst, app_id) if t["state"] == "TASK_RUNNING" and healthy(t)]
        ids = task_ids(now)
        return now if len(now) == 3 and victim["id"] not in ids else None

    after_kill = wait_for(replaced, timeout=40, interval=0.2, message=lambda: f"{victim['id']} to be replaced: {app_tasks(inst, app_id)}")
    new_ids = task_ids(after_kill) - task_ids(tasks)
    assert len(new_ids) == 1, (tasks, after_kill)
    seen_tasks |= new_ids
    env.janitor.snapshot()
    ports = wait_srv(inst, srv_name, 3, marker=v1)
    assert ports == sorted(t["ports"][0] for t in after_kill)
    wait_for(
        lambda: catalog_service_ids(inst, env.service("web")) == {f"{t}:0" for t in task_ids(after_kill)},
        timeout=10,
        message=lambda: f"catalog of {env.service('web')} to hold only the live tasks (now {catalog_service_ids(inst, env.service('web'))})",
    )
    new_task = next(t for t in after_kill if t["id"] in new_ids)
    if new_task["ports"][0] != victim_port:
        assert victim_port not in ports

    # Roll to v2 keeping at least ceil(3 * 0.5) = 2 healthy instances, never more than 3.
    wait_for(lambda: no_deployments(inst, app_id), timeout=20, interval=0.2, message="no deployment before the upgrade")
    strategy = {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}
    answer = client.update_app(app_id, m.MarathonApp(**web_definition(app_id, web_images["v2"], upgrade_strategy=strategy)))
    assert answer.get("deploymentId"), answer
    new_version = answer.get("version")
    floor = math.ceil(3 * 0.5)
    ceiling = math.floor(3 * (1 + 0))
    samples: list[int] = []
    task_counts: list[int] = []
    low: list[tuple[float, list[int], dict]] = []
    started = time.monotonic()
    deadline = started + 120
    while True:
        ports = srv_ports(inst, srv_name)
        bodies = {p: fetch(p) for p in ports}
        serving = sum(1 for b in bodies.values() if b is not None)
        samples.append(serving)
        if serving < floor:
            low.append((round(time.monotonic() - started, 2), ports, bodies))
        listed_now = app_tasks(inst, app_id)
        seen_tasks |= task_ids(listed_now)
        task_counts.append(len(listed_now))
        if len(ports) == 3 and all(b is not None and v2 in b for b in bodies.values()) and no_deployments(inst, app_id):
            break
        assert time.monotonic() < deadline, f"rolling upgrade unfinished after 120s: {app_json(inst, app_id)}"
        time.sleep(0.1)
    env.janitor.snapshot()
    assert not low, f"healthy instances dropped below {floor} during the upgrade: {low[:5]} (samples {samples})"
    assert min(samples) >= floor
    # Checked at the end, so the rest of the flow is still exercised when this fails.
    if max(samples) > ceiling:
        findings.append(
            f"maximumOverCapacity 0 allows at most {ceiling} instances, but up to {max(samples)} "
            f"were serving during the upgrade (samples every ~100 ms: {samples})"
        )
    if max(task_counts) > ceiling:
        findings.append(f"maximumOverCapacity 0: up to {max(task_counts)} tasks listed during the upgrade ({task_counts})")
    final = wait_running(inst, app_id, 3, timeout=20)
    assert all(t["version"] == new_version for t in final), final
    assert not (task_ids(final) & task_ids(after_kill)), "every task should have been replaced"
    assert client.get_app(app_id).version == new_version
    versions = inst.get_json(f"/v2/apps{app_id}/versions")["versions"]
    assert len(versions) >= 2 and new_version in versions, versions

    # Destroy: DNS forgets the service, and no container of any of its tasks is left.
    client.delete_app(app_id)
    wait_for(lambda: app_json(inst, app_id) is None, timeout=30, interval=0.2, message=f"{app_id} to be removed")
    wait_for(lambda: srv_rcode(inst, srv_name) == dns.rcode.NXDOMAIN, timeout=10, message=f"{srv_name} to be NXDOMAIN")
    leftovers = lambda: {t: container_of_task(t) for t in seen_tasks if container_of_task(t)}  # noqa: E731
    wait_for(lambda: not leftovers(), timeout=30, interval=0.5, message=lambda: f"containers of destroyed tasks to be removed: {leftovers()}")
    assert containers(f"label=atoll.app_id={app_id}") == []

    # The dev node advertises 127.0.0.1; its tasks' ports should be published there only.
    if not all(ips and all(ip == "127.0.0.1" for ip in ips) for ips in published_on.values()):
        findings.append(f"bridge ports published beyond the node's address 127.0.0.1: {published_on}")
    assert not findings, "\n".join(findings)


# ---------------------------------------------------------------------------
# exec driver


def test_exec_app_dns_kill_restart_scale_and_destroy_with_cli(env):
    busybox = require_tool("busybox", "/bin/busybox")
    client = marathon_client(env.inst)
    inst = env.inst
    app_id = env.app_id("site")
    srv_name = env.srv_name("site")
    definition = exec_site_definition(app_id, busybox, env.tmp / "www", "exec site\n")
    deployed = cli(env.inst, "deploy", str(write_definition(env, "site", definition)), "--timeout", "60")
    assert deployed.returncode == 0, cli_output(deployed)

    tasks = wait_running(inst, app_id, 2, timeout=30)
    ports = wait_srv(inst, srv_name, 2, marker="exec site")
    assert ports == sorted(t["ports"][0] for t in tasks)

    # Kill one task's process (found by its listening port): it is replaced.
    victim = tasks[0]
    pids = listening_pids(victim["ports"][0])
    assert pids, f"nothing listens on {victim['ports'][0]}"
    for pid in pids:
        assert process_environ(pid).get("MESOS_TASK_ID") == victim["id"], f"pid {pid} is not task {victim['id']}"
        os.kill(pid, signal.SIGKILL)
    wait_for_failure_of(inst, app_id, victim["id"])
    after_kill = wait_for(
        lambda: (lambda now: now if len(now) == 2 and victim["id"] not in task_ids(now) else None)(
            [t for t in app_tasks(inst, app_id) if t["state"] == "TASK_RUNNING" and healthy(t)]
        ),
        timeout=30,
        interval=0.2,
        message=lambda: f"{victim['id']} to be replaced: {app_tasks(inst, app_id)}",
    )
    ports = wait_srv(inst, srv_name, 2, marker="exec site")
    assert ports == sorted(t["ports"][0] for t in after_kill)

    # Restart through the marathon client: every task is replaced, two stay serving.
    wait_for(lambda: no_deployments(inst, app_id), timeout=20, interval=0.2, message="no deployment before the restart")
    restarted = client.restart_app(app_id)
    assert restarted.get("deploymentId"), restarted
    after_restart = wait_running(inst, app_id, 2, timeout=40, version=restarted.get("version"))
    assert not (task_ids(after_restart) & task_ids(after_kill))
    wait_srv(inst, srv_name, 2, marker="exec site")

    # Scale down with the CLI.
    wait_for(lambda: no_deployments(inst, app_id), timeout=20, interval=0.2, message="no deployment before scaling")
    scaled = cli(env.inst, "scale", app_id, "1", "--timeout", "60")
    assert scaled.returncode == 0, cli_output(scaled)
    left = wait_running(inst, app_id, 1, timeout=20)
    wait_srv(inst, srv_name, 1, marker="exec site")
    listed = cli(env.inst, "list", json_output=True)
    assert listed.returncode == 0, cli_output(listed)
    apps = {a["id"]: a for a in json.loads(listed.stdout)["apps"]}
    assert apps[app_id]["instances"] == 1, apps
    shown = cli(env.inst, "show", app_id, json_output=True)
    assert shown.returncode == 0, cli_output(shown)
    assert [t["id"] for t in json.loads(shown.stdout)["tasks"]] == [left[0]["id"]]

    # Scale up with the client, then kill one task with scale=true: it is not replaced.
    client.scale_app(app_id, instances=2)
    two = wait_running(inst, app_id, 2, timeout=30)
    wait_for(lambda: no_deployments(inst, app_id), timeout=20, interval=0.2, message="the scale deployment to finish")
    doomed = next(t for t in two if t["id"] != left[0]["id"])
    client.kill_task(app_id, doomed["id"], scale=True)
    wait_for(
        lambda: task_ids(app_tasks(inst, app_id)) == {left[0]["id"]},
        timeout=15,
        interval=0.2,
        message=lambda: f"{doomed['id']} to be killed and not replaced: {app_tasks(inst, app_id)}",
    )
    assert app_json(inst, app_id)["instances"] == 1
    wait_srv(inst, srv_name, 1, marker="exec site")

    # Destroy with the CLI: gone from the API and DNS, and its processes are gone.
    destroyed = cli(env.inst, "destroy", app_id, "--timeout", "60")
    assert destroyed.returncode == 0, cli_output(destroyed)
    assert app_json(inst, app_id) is None
    wait_for(lambda: srv_rcode(inst, srv_name) == dns.rcode.NXDOMAIN, timeout=10, message=f"{srv_name} to be NXDOMAIN")
    wait_for(lambda: not task_processes(app_id), timeout=15, interval=0.2, message=lambda: f"processes of {app_id} to exit: {task_processes(app_id)}")


def test_exec_task_environment_and_service_naming(env):
    busybox = require_tool("busybox", "/bin/busybox")
    inst = env.inst
    app_id = env.app_id("envdump")
    out = env.tmp / "env"
    out.mkdir()
    definition = {
        "id": app_id,
        "cmd": f'{busybox} env > "{out}/$MESOS_TASK_ID.tmp" && mv "{out}/$MESOS_TASK_ID.tmp" "{out}/$MESOS_TASK_ID.env" && exec {busybox} sleep 600',
        "instances": 1,
        "cpus": 0.1,
        "mem": 16,
        "portDefinitions": [{"port": 0}, {"port": 0}, {"port": 0}],
        "labels": {"SERVICE_TAGS": "blue, e2e", "SERVICE_2_NAME": f"{env.prefix}-admin"},
        "env": {"GREETING": "hello world"},
    }
    r = requests.post(inst.url("/v2/apps"), json=definition, timeout=10)
    assert r.status_code == 201, f"{r.status_code}: {r.text}"
    assert r.headers.get("Location", "").endswith(f"/v2/apps{app_id}"), r.headers
    [task] = wait_running(inst, app_id, 1, want_healthy=False, timeout=20)
    app = app_json(inst, app_id)

    path = out / f"{task['id']}.env"
    wait_for(path.exists, timeout=10, message=f"{path} to be written by the task")
    seen = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    ports = [str(p) for p in task["ports"]]
    assert len(ports) == 3 and len(set(ports)) == 3, task
    expected = {
        "MARATHON_APP_ID": app_id,
        "MARATHON_APP_VERSION": app["version"],
        "MESOS_TASK_ID": task["id"],
        "HOST": task["host"],
        "PORT0": ports[0],
        "PORT1": ports[1],
        "PORT2": ports[2],
        "PORT": ports[0],
        "PORTS": ",".join(ports),
        "GREETING": "hello world",
    }
    wrong = {k: (v, seen.get(k)) for k, v in expected.items() if seen.get(k) != v}
    assert not wrong, f"task environment differs (expected, got): {wrong}"
    assert task["version"] == app["version"]

    # One service per port: NAME, NAME-1, and SERVICE_2_NAME for the third; tags from SERVICE_TAGS.
    base = env.service("envdump")
    for index, name in enumerate([base, f"{base}-1", f"{env.prefix}-admin"]):
        entries = wait_for(
            lambda name=name: inst.get_json(f"/v1/catalog/service/{name}"),
            timeout=10,
            message=f"service {name} in the catalog",
        )
        assert [(e["ServiceID"], e["ServicePort"]) for e in entries] == [(f"{task['id']}:{index}", task["ports"][index])], entries
        assert sorted(entries[0]["ServiceTags"]) == ["blue", "e2e"], entries
        assert srv_ports(inst, f"{name}.service.consul") == [task["ports"][index]]
    destroy_app(inst, app_id)
    wait_for(lambda: not task_processes(app_id), timeout=15, interval=0.2, message=f"processes of {app_id} to exit")


# ---------------------------------------------------------------------------
# errors


def test_missing_image_fails_the_deploy_and_locks_the_app(docker_engine, env):
    inst = env.inst
    client = marathon_client(inst)
    m = marathon_module()
    app_id = env.app_id("ghost")
    # A registry on a closed loopback port: the pull fails at once without leaving the machine.
    image = f"127.0.0.1:{free_port()}/atoll-e2e-missing:nope"
    definition = {
        "id": app_id,
        "instances": 1,
        "cpus": 0.1,
        "mem": 16,
        "container": {"type": "DOCKER", "docker": {"image": image, "network": "BRIDGE"}, "portMappings": [{"containerPort": 8080, "hostPort": 0}]},
    }
    started = time.monotonic()
    deployed = cli(inst, "deploy", str(write_definition(env, "ghost", definition)), "--timeout", "60", timeout=90)
    assert deployed.returncode != 0, cli_output(deployed)
    assert "atoll-e2e-missing:nope" in deployed.stdout + deployed.stderr, cli_output(deployed)
    assert time.monotonic() - started < 60, "the CLI should report the failure, not time out"

    failure = wait_for(lambda: (app_json(inst, app_id) or {}).get("lastTaskFailure"), timeout=10, message="lastTaskFailure")
    assert "atoll-e2e-missing:nope" in failure.get("message", ""), failure
    assert failure.get("state") in ("TASK_FAILED", "TASK_ERROR"), failure

    # The start deployment cannot finish, so the app is locked: 409 without force.
    assert not no_deployments(inst, app_id), "the deployment of an unstartable app should still be running"
    assert any(app_id in (d.affected_apps or []) for d in client.list_deployments()), client.list_deployments()
    changed = dict(definition, cpus=0.2)
    r = requests.put(inst.url(f"/v2/apps{app_id}"), json=changed, timeout=10)
    assert r.status_code == 409, f"PUT during a deployment -> {r.status_code}: {r.text}"
    assert r.json().get("deployments"), r.text
    # The marathon client sends ?force=False by default: still not forced.
    with pytest.raises(m.exceptions.ConflictError):
        client.update_app(app_id, m.MarathonApp(**{"cpus": 0.2, "instances": 1}))
    r = requests.put(inst.url(f"/v2/apps{app_id}"), params={"force": "true"}, json=changed, timeout=10)
    assert r.status_code == 200, f"PUT ?force=true -> {r.status_code}: {r.text}"
    assert r.json().get("deploymentId"), r.text
    destroy_app(inst, app_id)


def test_unplaceable_memory_fails_the_deploy_and_is_queued(env):
    inst = env.inst
    app_id = env.app_id("huge")
    definition = {"id": app_id, "cmd": "exec sleep 600", "instances": 1, "cpus": 0.1, "mem": 10000000}
    path = write_definition(env, "huge", definition)
    # Run the CLI in the background and look at the queue while it follows the deployment.
    with subprocess.Popen(
        [str(inst.binary), "app", "deploy", str(path), "--timeout", "60", "--http-addr", inst.http_addr],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            queued = wait_for(
                lambda: [q for q in inst.get_json("/v2/queue")["queue"] if q["app"]["id"] == app_id],
                timeout=15,
                interval=0.2,
                message="the app to be listed in /v2/queue",
            )
            assert queued[0]["count"] == 1, queued
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode != 0, f"exit {proc.returncode}\n{stdout}\n{stderr}"
    assert "mem" in (stdout + stderr).lower(), f"the reason should mention memory:\n{stdout}\n{stderr}"
    assert app_tasks(inst, app_id) == []
    destroy_app(inst, app_id)
    assert not [q for q in inst.get_json("/v2/queue")["queue"] if q["app"]["id"] == app_id]


INVALID = [
    ("cpus", {"cmd": "sleep 1", "cpus": "lots"}, "cpus"),
    ("instances", {"cmd": "sleep 1", "instances": -1}, "instances"),
    ("constraint operator", {"cmd": "sleep 1", "constraints": [["hostname", "SOMETIMES"]]}, "constraints"),
    ("docker without image", {"container": {"type": "DOCKER", "docker": {"network": "BRIDGE"}}}, "image"),
]


def test_invalid_definitions_and_conflicts(env):
    inst = env.inst
    m = marathon_module()
    client = marathon_client(inst)
    problems = []
    for label, body, field in INVALID:
        app_id = env.app_id(label.replace(" ", "-"))
        r = requests.post(inst.url("/v2/apps"), json={"id": app_id, **body}, timeout=10)
        if r.status_code != 422:
            problems.append(f"{label}: expected 422, got {r.status_code}: {r.text}")
            continue
        answer = r.json()
        paths = [d.get("path", "") for d in answer.get("details", [])]
        if answer.get("message") != "Object is not valid" or not any(field in p for p in paths):
            problems.append(f"{label}: expected details naming {field!r}, got {answer}")
        if app_json(inst, app_id) is not None:
            problems.append(f"{label}: the invalid app was created anyway")
    assert not problems, "\n".join(problems)

    # Creating an app that exists: 409, over HTTP and through the client.
    app_id = env.app_id("twice")
    body = {"id": app_id, "cmd": "exec sleep 600", "instances": 0, "cpus": 0.1, "mem": 16}
    r = requests.post(inst.url("/v2/apps"), json=body, timeout=10)
    assert r.status_code == 201, f"{r.status_code}: {r.text}"
    r = requests.post(inst.url("/v2/apps"), json=body, timeout=10)
    assert r.status_code == 409, f"second create -> {r.status_code}: {r.text}"
    with pytest.raises(m.exceptions.ConflictError):
        client.create_app(app_id, m.MarathonApp(cmd="exec sleep 600", instances=0, cpus=0.1, mem=16))
    destroy_app(inst, app_id)


def test_concurrent_creates_of_one_id_give_one_201(env):
    """Of many simultaneous `POST /v2/apps` of one id, exactly one creates it."""
    inst = env.inst
    for round_ in range(3):
        app_id = env.app_id(f"race{round_}")
        body = {"id": app_id, "cmd": "exec sleep 600", "instances": 0, "cpus": 0.1, "mem": 16}
        writers = 12
        start = threading.Barrier(writers)
        codes: list[int] = []
        lock = threading.Lock()

        def create() -> None:
            with requests.Session() as session:
                start.wait(timeout=10)
                code = session.post(inst.url("/v2/apps"), json=body, timeout=30).status_code
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=create) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(codes) == [201] + [409] * (writers - 1), f"round {round_}: {sorted(codes)}"
        deployments = [
            d for d in requests.get(inst.url("/v2/deployments"), timeout=10).json()
            if app_id in d.get("affectedApps", [])
        ]
        assert len(deployments) <= 1, f"one create, several deployments: {deployments}"
        destroy_app(inst, app_id)


# ---------------------------------------------------------------------------
# events


def test_event_stream_reports_task_running(env):
    inst = env.inst
    app_id = env.app_id("evented")
    events: list[dict] = []
    with requests.get(
        inst.url("/v2/events"),
        params={"event_type": "status_update_event"},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=(5, 15),
    ) as stream:
        assert stream.status_code == 200, stream.text
        assert stream.headers.get("Content-Type", "").startswith("text/event-stream"), stream.headers
        r = requests.post(
            inst.url("/v2/apps"),
            json={"id": app_id, "cmd": "exec sleep 600", "instances": 1, "cpus": 0.1, "mem": 16},
            timeout=10,
        )
        assert r.status_code == 201, f"{r.status_code}: {r.text}"
        deadline = time.monotonic() + 30
        running = None
        kinds = set()
        stalled = None
        try:
            # Each read waits at most the read timeout (15 s); the loop stops at the deadline.
            for raw in stream.iter_lines(chunk_size=None):
                line = raw.decode() if isinstance(raw, bytes) else raw
                if line.startswith("event:"):
                    kinds.add(line.split(":", 1)[1].strip())
                elif line.startswith("data:"):
                    event = json.loads(line.split(":", 1)[1])
                    events.append(event)
                    if event.get("appId") == app_id and event.get("taskStatus") == "TASK_RUNNING":
                        running = event
                        break
                if time.monotonic() > deadline:
                    break
        except requests.RequestException as exc:
            stalled = exc
    assert running is not None, f"no TASK_RUNNING status_update_event for {app_id}; got {events} (stream error: {stalled!r})"
    assert kinds <= {"status_update_event"}, f"event_type filter let through {kinds}"
    assert all(e.get("eventType") == "status_update_event" for e in events), events
    tasks = app_tasks(inst, app_id)
    assert [t["id"] for t in tasks] == [running["taskId"]], (tasks, running)
    assert running.get("version") == app_json(inst, app_id)["version"]
    destroy_app(inst, app_id)
