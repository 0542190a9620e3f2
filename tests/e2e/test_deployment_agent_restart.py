"""A rolling deployment completes when the compute node's agent is killed in its middle.

3 servers and 1 compute node. An exec app of four instances (busybox httpd, HTTP health
check) runs version 1; version 2 is deployed with an upgradeStrategy that replaces two at
a time (minimumHealthCapacity 0.5, maximumOverCapacity 0) and whose instances take a
moment before they serve, so the deployment is surely in progress when the compute
node's agent is killed with SIGKILL and started again on its data dir. What a Marathon
user expects afterwards: the deployment finishes, the app has exactly its four
instances, all of version 2, healthy and in DNS on every node, and no process of an old
or duplicated task is left running.

App ids live under a unique prefix, so the test's processes are told apart by their
MARATHON_APP_ID and removed at the end, whatever happened.
"""

from __future__ import annotations

import time
from pathlib import Path

import dns.rdatatype
import pytest

from apps_util import fetch, healthy, kill_task_processes, task_process_groups, task_processes, unique_prefix
from cluster_util import Cluster, Node, session_pool
from conftest import require_binary, require_tool, stays, wait_for

INSTANCES = 4
# Long enough that a restart on a loaded machine usually comes back within it (the tasks
# are then adopted); a slower restart has them replaced as lost, which must end the same.
HEARTBEAT_TTL = 10.0


@pytest.fixture
def cluster(tmp_path):
    require_binary()
    made = Cluster(tmp_path, session_pool(), "rollrestart")
    prefix = unique_prefix()
    try:
        made.add_servers(3, heartbeat_ttl=HEARTBEAT_TTL)
        made.add_client("c1", heartbeat_ttl=HEARTBEAT_TTL)
        made.start()
        yield made, prefix
    finally:
        try:
            leader = made.wait_converged(timeout=10)
            for app in leader.get_json("/v2/apps").get("apps", []):
                leader.delete(f"/v2/apps{app['id']}?force=true")
            wait_for(lambda: not task_processes(f"/{prefix}/"), timeout=15, interval=0.2,
                     message="the test's tasks to stop")
        except Exception:  # noqa: BLE001 - the processes are killed below anyway
            pass
        try:
            made.close()
        finally:
            kill_task_processes(f"/{prefix}/")


def definition(app_id: str, busybox: str, www: Path, version: str, delay: float) -> dict:
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text(f"rolling {version}\n")
    wait = f"{busybox} sleep {delay}; " if delay else ""
    return {
        "id": app_id,
        "cmd": f"{wait}exec {busybox} httpd -f -p $HOST:$PORT0 -h {www}",
        "instances": INSTANCES,
        "cpus": 0.1,
        "mem": 16,
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0},
        "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 10,
                          "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 5}],
    }


def tasks_of(node: Node, app_id: str) -> list[dict]:
    r = node.get(f"/v2/apps{app_id}/tasks")
    assert r.status_code == 200, f"GET /v2/apps{app_id}/tasks -> {r.status_code}: {r.text}"
    return r.json()["tasks"]


def deployments_of(node: Node, app_id: str) -> list[dict]:
    return [d for d in node.get_json("/v2/deployments") if app_id in d.get("affectedApps", [])]


def srv_ports(node: Node, name: str) -> list[int]:
    answer = node.dns(name, "SRV").answer
    return sorted(rd.port for rrset in answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset)


def settled(node: Node, app_id: str, version: str) -> list[dict] | None:
    """The app's tasks when they are exactly INSTANCES, all of `version`, running and healthy."""
    tasks = tasks_of(node, app_id)
    good = [t for t in tasks if t["state"] == "TASK_RUNNING" and healthy(t) and t["version"] == version]
    return tasks if len(tasks) == INSTANCES and len(good) == INSTANCES else None


groups = task_process_groups


def test_rolling_deployment_completes_across_a_compute_agent_restart(cluster, tmp_path):
    made, prefix = cluster
    busybox = require_tool("busybox", "/bin/busybox")
    compute = made.clients[0]
    leader = made.leader()
    app_id = f"/{prefix}/rolling"
    service = f"rolling-{prefix}.service.consul"

    r = leader.put(f"/v2/apps{app_id}", json=definition(app_id, busybox, tmp_path / "v1", "v1", 0), timeout=10)
    assert r.status_code in (200, 201), r.text
    v1 = leader.get_json(f"/v2/apps{app_id}")["app"]["version"]
    first = wait_for(lambda: settled(leader, app_id, v1), timeout=60, interval=0.2,
                     message=lambda: f"{INSTANCES} healthy v1 tasks: {tasks_of(leader, app_id)}")
    wait_for(lambda: not deployments_of(leader, app_id), timeout=30, message="the first deployment to finish")

    # Version 2: each instance waits 3 s before serving, so the deployment takes a while.
    r = leader.put(f"/v2/apps{app_id}", json=definition(app_id, busybox, tmp_path / "v2", "v2", 3), timeout=10)
    assert r.status_code == 200, r.text
    deployment = r.json()["deploymentId"]
    v2 = leader.get_json(f"/v2/apps{app_id}")["app"]["version"]
    assert v2 != v1

    def in_progress():
        tasks = tasks_of(leader, app_id)
        new = [t for t in tasks if t["version"] == v2]
        return bool(new) and any(d["id"] == deployment for d in deployments_of(leader, app_id))

    wait_for(in_progress, timeout=30, interval=0.05,
             message=lambda: f"the v2 deployment to have started: {tasks_of(leader, app_id)}")
    during = tasks_of(leader, app_id)
    compute.kill9()
    killed_at = time.monotonic()
    compute.spawn()
    leader = made.wait_converged(timeout=30)
    print(f"agent killed with {len(during)} tasks: "
          f"{sorted((t['version'] == v2, t['state']) for t in during)}; back after {time.monotonic() - killed_at:.1f}s")

    wait_for(lambda: not deployments_of(leader, app_id), timeout=90, interval=0.2,
             message=lambda: f"the deployment to finish: {deployments_of(leader, app_id)} {tasks_of(leader, app_id)}")
    final = wait_for(lambda: settled(leader, app_id, v2), timeout=30, interval=0.2,
                     message=lambda: f"{INSTANCES} healthy v2 tasks: {tasks_of(leader, app_id)}")
    final_ids = {t["id"] for t in final}
    assert not final_ids & {t["id"] for t in first}, "every v1 task should have been replaced"
    ports = sorted(t["ports"][0] for t in final)
    assert all(t["host"] == compute.ip for t in final), final

    # Every node's DNS lists exactly the four new instances, and each serves version 2.
    for node in made.nodes:
        wait_for(lambda node=node: srv_ports(node, service) == ports, timeout=20, interval=0.1,
                 message=lambda node=node: f"{node.name}'s SRV {service} to be {ports} (now {srv_ports(node, service)})")
    for port in ports:
        assert "rolling v2" in (fetch(port, host=compute.ip) or ""), port

    # Nothing duplicated: exactly one process group per current task, none of an old task,
    # and it stays so (a duplicate started late would show up here).
    wait_for(lambda: set(groups(app_id)) == final_ids, timeout=15, interval=0.2,
             message=lambda: f"only the current tasks' processes to run: {groups(app_id)} vs {final_ids}")
    settled_groups = groups(app_id)

    def unchanged() -> bool:
        assert groups(app_id) == settled_groups, f"processes changed: {groups(app_id)} vs {settled_groups}"
        assert {t["id"] for t in tasks_of(leader, app_id)} == final_ids, tasks_of(leader, app_id)
        return True

    stays(unchanged, 3, message="the current tasks and their processes")
    assert leader.get_json(f"/v2/apps{app_id}")["app"]["instances"] == INSTANCES
