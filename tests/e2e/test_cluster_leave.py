"""`atoll leave`: a server leaves the Raft configuration, a compute node drains.

A leaving server removes itself from the voters and stops; the others go on
with one voter fewer. A leaving compute node leaves the catalog (its
instances leave DNS at once), the leader places its tasks elsewhere, and the
node stops its own tasks before it exits, so nothing it ran is left behind.
"""

from __future__ import annotations

from cluster_util import listed_tasks, listening, run_cli
from conftest import wait_for


def test_server_leave_shrinks_the_voters(new_cluster):
    cluster = new_cluster("srvleave")
    cluster.add_servers(3)
    cluster.start()
    cluster.write_anywhere("leave/before", "1", timeout=10)
    leaving = cluster.followers()[0]
    proc = run_cli("leave", "--http-addr", leaving.http_addr)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert leaving.wait_exit(15) == 0, leaving.logs()
    cluster.nodes.remove(leaving)
    leader = cluster.wait_converged(voters=2)
    assert leaving.rpc_addr not in leader.peers()
    assert leaving.name not in leader.members()
    catalog = {n["Node"] for n in leader.get_json("/v1/catalog/nodes")}
    assert leaving.name not in catalog, catalog
    cluster.write_anywhere("leave/after", "2", timeout=10)


def test_compute_node_leave_drains_its_tasks(new_cluster):
    cluster = new_cluster("drain")
    cluster.add_servers(3)
    clients = [cluster.add_client(f"c{i}") for i in (1, 2)]
    cluster.start()
    server = cluster.leader()
    app = {
        "id": "/drained",
        "cmd": "exec python3 -m http.server $PORT0 --bind $HOST",
        "instances": 1,
        "cpus": 0.1,
        "mem": 32,
        "taskKillGracePeriodSeconds": 2,
    }
    created = server.put("/v2/apps/drained", json=app, timeout=10)
    assert created.status_code in (200, 201), created.text

    def running() -> list[dict]:
        return [t for t in listed_tasks(server, "/drained") if t["state"] == "TASK_RUNNING"]

    (task,) = wait_for(lambda: len(running()) == 1 and running(), timeout=30, message="the task running")
    host, port = task["host"], task["ports"][0]
    wait_for(lambda: listening(host, port), timeout=10, message="the task serving on its port")
    leaving = next(c for c in clients if c.ip == host)
    other = next(c for c in clients if c is not leaving)

    proc = run_cli("leave", "--http-addr", leaving.http_addr)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    # The node drains before it exits: its task is stopped, not left running.
    assert leaving.wait_exit(30) == 0, leaving.logs()
    assert not listening(host, port), "the drained task still serves after its node left"
    moved = wait_for(lambda: [t for t in running() if t["host"] == other.ip], timeout=30,
                     message="the task replaced on the other compute node")
    assert len(running()) == 1
    srv = server.dns("drained.service.consul", "SRV")
    targets = {rd.port for rr in srv.answer for rd in rr}
    assert targets == {moved[0]["ports"][0]}, targets
    catalog = {n["Node"] for n in server.get_json("/v1/catalog/nodes")}
    assert leaving.name not in catalog, catalog
    deleted = server.delete("/v2/apps/drained?force=true", timeout=10)
    assert deleted.status_code == 200, deleted.text
