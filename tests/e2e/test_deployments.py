"""Cancelling a deployment (`DELETE /v2/deployments/{id}`) as Marathon does.

Without `force` the deployment is rolled back by a new one: an update goes
back to the app as it was (its running tasks are kept), a creation removes
the app. With `force=true` the deployment is only forgotten and the app stays
at its new version.
"""

from __future__ import annotations

import pytest
import requests

from apps_util import app_json, app_tasks, best_effort_remove_apps, kill_task_processes, no_deployments, unique_prefix, wait_running
from conftest import wait_for

TOO_MUCH_MEMORY = 64 * 1024 * 1024  # MiB: no node has it, so the deployment never ends


@pytest.fixture
def inst(atoll_factory):
    prefix = unique_prefix()
    inst = atoll_factory.start("deployments", node=f"{prefix}-node")
    inst.prefix = prefix
    try:
        yield inst
    finally:
        best_effort_remove_apps(inst)
        inst.close()
        kill_task_processes(f"/{prefix}/")


def _deployment_of(inst, app_id: str) -> str:
    found = wait_for(lambda: [d for d in inst.get_json("/v2/deployments") if app_id in d["affectedApps"]],
                     timeout=10, message=f"a deployment of {app_id}")
    return found[0]["id"]


def _start(inst, app_id: str, **fields) -> dict:
    app = {"id": app_id, "cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 1, **fields}
    r = requests.post(inst.url("/v2/apps"), json=app, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def test_cancel_rolls_an_update_back_and_keeps_the_running_task(inst):
    app_id = f"/{inst.prefix}/rb"
    _start(inst, app_id)
    (task,) = wait_running(inst, app_id, 1, want_healthy=False)
    before = app_json(inst, app_id)
    wait_for(lambda: no_deployments(inst, app_id), timeout=10, message="the first deployment to finish")

    r = inst.put(f"/v2/apps{app_id}", json={"mem": TOO_MUCH_MEMORY})
    assert r.status_code == 200, r.text
    stuck = _deployment_of(inst, app_id)
    assert app_json(inst, app_id)["mem"] == TOO_MUCH_MEMORY

    r = inst.delete(f"/v2/deployments/{stuck}")
    assert r.status_code == 200, r.text
    rollback = r.json()["deploymentId"]
    assert rollback != stuck
    after = app_json(inst, app_id)
    assert after["mem"] == before["mem"] and after["version"] == before["version"], after
    wait_for(lambda: no_deployments(inst, app_id), timeout=15, message="the rollback to finish")
    # The task of the old version was never replaced.
    assert [t["id"] for t in app_tasks(inst, app_id)] == [task["id"]]
    assert not [q for q in inst.get_json("/v2/queue")["queue"] if q["app"]["id"] == app_id]


def test_cancel_of_a_creation_removes_the_app(inst):
    app_id = f"/{inst.prefix}/never"
    _start(inst, app_id, mem=TOO_MUCH_MEMORY)
    stuck = _deployment_of(inst, app_id)
    r = inst.delete(f"/v2/deployments/{stuck}")
    assert r.status_code == 200, r.text
    wait_for(lambda: app_json(inst, app_id) is None, timeout=10, message="the app to be removed")
    wait_for(lambda: no_deployments(inst, app_id), timeout=10, message="no deployment left")


def test_forced_cancel_keeps_the_new_version(inst):
    app_id = f"/{inst.prefix}/forced"
    _start(inst, app_id, mem=TOO_MUCH_MEMORY)
    stuck = _deployment_of(inst, app_id)
    r = inst.delete(f"/v2/deployments/{stuck}?force=true")
    assert r.status_code == 202, r.text
    wait_for(lambda: no_deployments(inst, app_id), timeout=10, message="the deployment to be forgotten")
    assert app_json(inst, app_id)["mem"] == TOO_MUCH_MEMORY


def test_cancel_of_an_unknown_deployment_is_404(inst):
    r = inst.delete("/v2/deployments/not-a-deployment")
    assert r.status_code == 404, r.text
    assert "does not exist" in r.json()["message"]
