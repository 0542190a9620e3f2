"""Marathon's /v2/groups through the `marathon` client's own models, and app dependencies.

Each test runs its own `atoll dev` and gives its groups ids under a unique prefix
(`/e2eXXXXXXXX/...`); apps are cheap exec (`cmd`) apps, and whatever processes they leave
are removed at the end by app id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from apps_util import (
    app_json,
    app_tasks,
    best_effort_remove_apps,
    kill_task_processes,
    marathon_client,
    marathon_module,
    unique_prefix,
    wait_running,
)
from conftest import Atoll, require, stays, wait_for


@dataclass
class GroupsEnv:
    inst: Atoll
    prefix: str
    tmp: Path

    def gid(self, *names: str) -> str:
        return "/" + "/".join((self.prefix, *names))


@pytest.fixture
def env(atoll_factory, tmp_path):
    prefix = unique_prefix()
    inst = atoll_factory.start("groups", node=f"{prefix}-node")
    try:
        r = inst.get("/v2/groups")
        require(r.status_code == 200, f"this atoll has no /v2/groups (GET -> {r.status_code})")
        yield GroupsEnv(inst=inst, prefix=prefix, tmp=tmp_path)
    finally:
        best_effort_remove_apps(inst)
        try:
            inst.close()
        finally:
            kill_task_processes(f"/{prefix}/")


def models():
    """The `marathon` client's model classes (`MarathonGroup`, `MarathonApp`)."""
    marathon_module()
    import marathon.models  # noqa: PLC0415 - needs marathon_module()'s aliases first

    return marathon.models


def sleeper(m, name: str, instances: int = 1, **extra):
    return m.MarathonApp(id=name, cmd="exec sleep 600", cpus=0.05, mem=16, instances=instances, **extra)


def find(group, group_id: str):
    """The group `group_id` in a parsed tree, or None."""
    if group.id == group_id:
        return group
    for child in group.groups:
        found = find(child, group_id)
        if found is not None:
            return found
    return None


def tasks_of(inst: Atoll, prefix: str) -> list[dict]:
    """Tasks whose app id starts with `prefix` (their apps may be gone already)."""
    return [t for t in inst.get_json("/v2/tasks")["tasks"] if t["appId"].startswith(prefix)]


def deployment_gone(inst: Atoll, deployment_id: str) -> bool:
    return inst.get(f"/v2/deployments/{deployment_id}").status_code == 404


def test_group_lifecycle_with_the_marathon_client(env):
    m = models()
    client = marathon_client(env.inst)
    root = env.gid()
    created = client.create_group(
        m.MarathonGroup(
            id=root,
            apps=[sleeper(m, "web")],
            groups=[m.MarathonGroup(id="empty"), m.MarathonGroup(id="back", apps=[sleeper(m, "db")])],
        )
    )
    assert set(created) >= {"version", "deploymentId"}, created

    group = client.get_group(root)
    assert isinstance(group, m.MarathonGroup)
    assert [a.id for a in group.apps] == [env.gid("web")]
    assert all(isinstance(a, m.MarathonApp) for a in group.apps)
    assert sorted(g.id for g in group.groups) == [env.gid("back"), env.gid("empty")]
    assert [a.id for a in find(group, env.gid("back")).apps] == [env.gid("back", "db")]
    assert find(group, env.gid("empty")).apps == []

    listed = client.list_groups()
    assert all(isinstance(g, m.MarathonGroup) for g in listed)
    assert root in [g.id for g in listed]
    top = client.get_group("/")
    assert top.id == "/" and find(top, env.gid("back", "db")) is None  # an app, not a group

    web = wait_running(env.inst, env.gid("web"), 1, want_healthy=False)
    wait_running(env.inst, env.gid("back", "db"), 1, want_healthy=False)
    wait_for(lambda: deployment_gone(env.inst, created["deploymentId"]), timeout=30, message="the create's deployment to finish")
    web_version = app_json(env.inst, env.gid("web"))["version"]

    # Update: web scaled to 2 (same definition: its version stays), a new app added, the
    # nested groups left out of the body stay as they are.
    answer = client.update_group(root, m.MarathonGroup(apps=[sleeper(m, "web", instances=2), sleeper(m, "worker")]))
    assert set(answer) >= {"version", "deploymentId"}, answer
    wait_running(env.inst, env.gid("web"), 2, want_healthy=False)
    wait_running(env.inst, env.gid("worker"), 1, want_healthy=False)
    assert app_json(env.inst, env.gid("web"))["version"] == web_version
    assert web[0]["id"] in {t["id"] for t in app_tasks(env.inst, env.gid("web"))}, "a scale restarted web"
    assert find(client.get_group(root), env.gid("empty")) is not None
    wait_for(lambda: deployment_gone(env.inst, answer["deploymentId"]), timeout=30, message="the update's deployment")

    # scaleBy multiplies every app below the group (rounded up).
    scaled = client.scale_group(env.gid("back"), 3)
    assert set(scaled) >= {"version", "deploymentId"}, scaled
    wait_running(env.inst, env.gid("back", "db"), 3, want_healthy=False)
    assert client.get_app(env.gid("web")).instances == 2
    wait_for(lambda: deployment_gone(env.inst, scaled["deploymentId"]), timeout=30, message="the scale's deployment")

    # An update listing apps removes those it leaves out.
    client.update_group(root, m.MarathonGroup(apps=[sleeper(m, "worker")]))
    wait_for(lambda: app_json(env.inst, env.gid("web")) is None, timeout=30, message="web to be removed")
    wait_for(lambda: not tasks_of(env.inst, env.gid("web")), timeout=30, message="web's tasks to stop")

    # An empty group stays listed until deleted.
    client.delete_group(env.gid("empty"))
    assert find(client.get_group(root), env.gid("empty")) is None

    deleted = client.delete_group(root)
    assert set(deleted) >= {"version", "deploymentId"}, deleted
    r = env.inst.get(f"/v2/groups{root}")
    assert r.status_code == 404 and r.json() == {"message": f"Group '{root}' does not exist"}, r.text
    for app in ("worker", "back/db"):
        assert app_json(env.inst, env.gid(*app.split("/"))) is None
    wait_for(lambda: not tasks_of(env.inst, root + "/"), timeout=30, message="every task of the group to stop")


def details(r: requests.Response) -> dict[str, list[str]]:
    assert r.status_code == 422, f"{r.status_code}: {r.text}"
    return {d["path"]: d["errors"] for d in r.json().get("details", [])}


def test_group_errors_are_marathons_and_change_nothing(env):
    inst = env.inst
    root = env.gid()
    app = {"cmd": "exec sleep 600", "cpus": 0.05, "mem": 16, "instances": 0}

    r = inst.get(f"/v2/groups{env.gid('nope')}")
    assert r.status_code == 404 and r.json() == {"message": f"Group '{env.gid('nope')}' does not exist"}, r.text
    r = inst.delete(f"/v2/groups{env.gid('nope')}")
    assert r.status_code == 404 and "does not exist" in r.json()["message"], r.text

    r = requests.post(inst.url("/v2/groups"), json={"id": root, "apps": [{"id": "db", **app}]}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.headers.get("Location") == f"/v2/groups{root}"
    r = requests.post(inst.url("/v2/groups"), json={"id": root}, timeout=10)
    assert r.status_code == 409 and root in r.json()["message"], r.text

    refused = [
        # the definition itself: every problem with its path
        ({"id": env.gid("x"), "apps": [{"id": "a", **app, "cpus": -1}]}, "/apps(0)/cpus"),
        ({"id": env.gid("x"), "apps": [{"id": "/elsewhere/a", **app}]}, "/apps(0)/id"),
        ({"id": env.gid("x"), "groups": [{"apps": []}]}, "/groups(0)/id"),
        ({"apps": []}, "/id"),
    ]
    for body, path in refused:
        r = requests.post(inst.url("/v2/groups"), json=body, timeout=10)
        assert path in details(r), f"{body} -> {r.text}"

    # Dependencies: unknown ones and cycles are 422, and nothing is written.
    unknown = {"id": env.gid("x"), "apps": [{"id": "a", **app, "dependencies": ["/no/such/app"]}]}
    r = requests.post(inst.url("/v2/groups"), json=unknown, timeout=10)
    assert r.status_code == 422 and "/no/such/app" in r.json()["message"], r.text
    cycle = {"id": env.gid("x"), "apps": [{"id": "a", **app, "dependencies": ["b"]},
                                          {"id": "b", **app, "dependencies": ["a"]}]}
    r = requests.post(inst.url("/v2/groups"), json=cycle, timeout=10)
    assert r.status_code == 422 and "cyclic" in r.json()["message"], r.text
    via_group = {"id": env.gid("x"), "dependencies": [env.gid("x", "inner")],
                 "groups": [{"id": "inner", "apps": [{"id": "c", **app, "dependencies": [env.gid("x", "d")]}]}],
                 "apps": [{"id": "d", **app}]}
    r = requests.post(inst.url("/v2/groups"), json=via_group, timeout=10)
    assert r.status_code == 422 and "cyclic" in r.json()["message"], r.text
    r = requests.post(inst.url("/v2/apps"), json={"id": env.gid("solo"), **app, "dependencies": ["/no/such"]}, timeout=10)
    assert r.status_code == 422, r.text
    assert inst.get(f"/v2/groups{env.gid('x')}").status_code == 404
    assert app_json(inst, env.gid("solo")) is None

    # Updates: a version (group versions are not kept), a bad factor, bad JSON.
    r = requests.put(inst.url(f"/v2/groups{root}"), json={"version": "2020-01-01T00:00:00.000Z"}, timeout=10)
    assert "/version" in details(r)
    r = requests.put(inst.url(f"/v2/groups{root}"), json={"scaleBy": -1}, timeout=10)
    assert "/scaleBy" in details(r)
    r = requests.put(inst.url(f"/v2/groups{root}"), data=b"{not json", timeout=10)
    assert "/" in details(r)
    r = requests.put(inst.url(f"/v2/groups{env.gid('nope')}"), json={"scaleBy": 2}, timeout=10)
    assert r.status_code == 404, r.text
    assert [a["id"] for a in inst.get_json(f"/v2/groups{root}")["apps"]] == [env.gid("db")]


def started_at(inst: Atoll, app_id: str) -> str:
    tasks = app_tasks(inst, app_id)
    assert len(tasks) == 1 and tasks[0].get("startedAt"), tasks
    return tasks[0]["startedAt"]


def test_dependencies_order_the_deployment_steps_and_the_starts(env):
    """/back/db is healthy only once a file exists: until then the apps that depend on it
    (through the /front group's dependency, and /api through /front/web) must not start."""
    inst = env.inst
    ready = env.tmp / "db-ready"
    db = {
        "id": "db", "cmd": "exec sleep 600", "cpus": 0.05, "mem": 16, "instances": 1,
        "portDefinitions": [{"port": 0}],
        "healthChecks": [{"protocol": "COMMAND", "command": {"value": f"test -f {ready}"},
                          "gracePeriodSeconds": 0, "intervalSeconds": 1, "timeoutSeconds": 2,
                          "maxConsecutiveFailures": 0}],
    }
    sleep = {"cmd": "exec sleep 600", "cpus": 0.05, "mem": 16, "instances": 1}
    body = {
        "id": env.gid(),
        "apps": [{"id": "api", **sleep, "dependencies": ["front/web"]}],
        "groups": [
            {"id": "back", "apps": [db]},
            {"id": "front", "dependencies": ["../back"], "apps": [{"id": "web", **sleep}]},
        ],
    }
    r = requests.post(inst.url("/v2/groups"), json=body, timeout=10)
    assert r.status_code == 201, r.text
    deployment_id = r.json()["deploymentId"]

    # /v2/deployments shows the steps in dependency order, at the first.
    deployment = inst.get_json(f"/v2/deployments/{deployment_id}")
    steps = [[(a["action"], a["app"]) for a in s["actions"]] for s in deployment["steps"]]
    assert steps == [
        [("StartApplication", env.gid("back", "db"))],
        [("StartApplication", env.gid("front", "web"))],
        [("StartApplication", env.gid("api"))],
    ], deployment
    assert deployment["totalSteps"] == 3
    assert sorted(deployment["affectedApps"]) == sorted([env.gid("api"), env.gid("back", "db"), env.gid("front", "web")])
    assert any(d["id"] == deployment_id for d in inst.get_json("/v2/deployments"))

    # db runs but is not healthy: the others wait.
    wait_running(inst, env.gid("back", "db"), 1, want_healthy=False)
    stays(lambda: not app_tasks(inst, env.gid("front", "web")) and not app_tasks(inst, env.gid("api")),
          duration=3.0, message="web and api must not start before db is healthy")
    assert inst.get_json(f"/v2/deployments/{deployment_id}")["currentStep"] == 1
    # While it deploys, the group is locked unless forced.
    for r in (requests.put(inst.url(f"/v2/groups{env.gid()}"), json={"dependencies": []}, timeout=10),
              inst.delete(f"/v2/groups{env.gid('front')}")):
        assert r.status_code == 409, r.text
        assert [d["id"] for d in r.json()["deployments"]] == [deployment_id], r.text
    assert inst.get(f"/v2/deployments/{deployment_id}").status_code == 200
    r = requests.put(inst.url(f"/v2/groups{env.gid()}"), params={"force": "true"}, json={"dependencies": []}, timeout=10)
    assert r.status_code == 200 and set(r.json()) >= {"version", "deploymentId"}, r.text

    ready.touch()
    wait_running(inst, env.gid("back", "db"), 1, want_healthy=True)
    wait_running(inst, env.gid("front", "web"), 1, want_healthy=False)
    wait_running(inst, env.gid("api"), 1, want_healthy=False)
    wait_for(lambda: deployment_gone(inst, deployment_id), timeout=30, message="the deployment to finish")
    # RFC 3339 timestamps of one format compare as strings.
    assert started_at(inst, env.gid("back", "db")) <= started_at(inst, env.gid("front", "web")) <= started_at(inst, env.gid("api"))

    # Deleting the group stops everything; its deployment lists the stops dependents first.
    r = inst.delete(f"/v2/groups{env.gid()}")
    assert r.status_code == 200, r.text
    wait_for(lambda: not tasks_of(inst, env.gid() + "/"), timeout=30, message="every task of the group to stop")
