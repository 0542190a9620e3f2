"""Workloads in a cluster: seen from every node, and surviving a full restart.

What the scheduler could not place is part of the replicated state, so
`/v2/queue` (and `atoll app deploy`, which reads it) tells the same story on
every node, not only on the leader that ran the scheduler. After every node
is killed and started again, apps and their running instances are back with
no manual step: the compute node adopts the processes it left running.
"""

from __future__ import annotations

from cluster_util import RNG, listed_tasks, listening
from conftest import stays, wait_for


def _running(node, app_id: str) -> list[dict]:
    return [t for t in listed_tasks(node, app_id) if t["state"] == "TASK_RUNNING"]


def _queued(node, app_id: str) -> list[dict]:
    return [q for q in node.get_json("/v2/queue")["queue"] if q["app"]["id"] == app_id]


def test_unplaceable_instances_are_queued_on_every_node(new_cluster):
    cluster = new_cluster("queue")
    cluster.add_servers(3)
    client = cluster.add_client()
    cluster.start()
    app = {"id": "/huge", "cmd": "sleep 1000", "cpus": 0.1, "mem": 64 * 1024 * 1024, "instances": 2}
    r = wait_for(lambda: (lambda r: r if r.status_code == 201 else None)(client.post("/v2/apps", json=app)),
                 timeout=15, message="the app to be accepted")
    assert r.json()["id"] == "/huge"
    for node in cluster.nodes:
        entries = wait_for(lambda: _queued(node, "/huge"), timeout=15, interval=0.2,
                           message=f"/huge in {node.name}'s /v2/queue")
        assert entries[0]["count"] == 2, entries
        reasons = " ".join(entries[0]["processedOffersSummary"]["rejectSummaryLastOffers"])
        assert "mem" in reasons.lower(), reasons
    # Its deployment never finishes: Marathon wants force to delete it.
    r = client.delete("/v2/apps/huge?force=true")
    assert r.status_code == 200, r.text
    for node in cluster.nodes:
        wait_for(lambda: not _queued(node, "/huge"), timeout=15, interval=0.2,
                 message=f"/huge to leave {node.name}'s /v2/queue")


def test_full_restart_brings_apps_and_running_instances_back(new_cluster):
    cluster = new_cluster("wlrestart")
    cluster.add_servers(3)
    client = cluster.add_client("c1")
    cluster.start()
    server = cluster.leader()
    app = {"id": "/survivor", "cmd": "exec python3 -m http.server $PORT0 --bind $HOST",
           "instances": 1, "cpus": 0.1, "mem": 32}
    created = server.put("/v2/apps/survivor", json=app, timeout=10)
    assert created.status_code in (200, 201), created.text
    (task,) = wait_for(lambda: (lambda ts: ts if len(ts) == 1 else None)(_running(server, "/survivor")),
                       timeout=30, message="the task running")
    port = task["ports"][0]
    wait_for(lambda: listening(client.ip, port), timeout=10, message="the task serving")

    order = list(cluster.nodes)
    RNG.shuffle(order)
    for node in order:
        node.kill9()
    # The task's process outlives its agent and is adopted again, not restarted.
    assert listening(client.ip, port)
    started = cluster.start()
    print("restart order:", [n.name for n in started])
    leader = cluster.wait_converged(voters=3)
    assert leader.get_json("/v2/apps/survivor")["app"]["instances"] == 1

    def same_task_back():
        tasks = _running(leader, "/survivor")
        return tasks if [t["id"] for t in tasks] == [task["id"]] else None

    wait_for(same_task_back, timeout=30, interval=0.2,
             message=lambda: f"task {task['id']} running again: {_running(leader, '/survivor')}")
    for server in cluster.servers:
        wait_for(lambda server=server: {rd.port for rr in server.dns("survivor.service.consul", "SRV").answer
                                        for rd in rr} == {port},
                 timeout=15, message=f"survivor in {server.name}'s DNS")
    # Give the compute node's runner time to have judged its tasks: still the same one, still serving.
    stays(lambda: same_task_back() and listening(client.ip, port), 1.5,
          message=lambda: f"task {task['id']} replaced or not serving: {_running(leader, '/survivor')}")
    deleted = leader.delete("/v2/apps/survivor?force=true", timeout=10)
    assert deleted.status_code == 200, deleted.text
    wait_for(lambda: not listening(client.ip, port), timeout=30, message="the task stopped")
