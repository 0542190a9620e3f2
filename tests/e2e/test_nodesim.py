"""The node simulator (`atoll nodesim`) against a 3-server cluster.

200 simulated compute nodes register with the servers; an app of 1,000
instances is placed on them, and the simulated nodes report every task
running, with the services a real node registers for it. Waits are
condition-based with generous bounds; no timing is asserted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import requests

from cluster_util import RNG
from conftest import require_binary, wait_for

NODES = 200
INSTANCES = 1000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Simulator:
    def __init__(self, workdir, join: list[str], nodes: int, prefix: str) -> None:
        self.stats_addr = f"127.0.0.1:{_free_port()}"
        self.log_path = workdir / "nodesim.log"
        cmd = [str(require_binary()), "nodesim", "--nodes", str(nodes), "--prefix", prefix,
               "--address-octet", str(RNG.randint(10, 250)), "--stats", self.stats_addr,
               "--cpus", "4", "--mem", "4096"]
        for addr in join:
            cmd += ["--join", addr]
        env = dict(os.environ)
        env.setdefault("ATOLL_LOG", "info")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)

    def stats(self) -> dict:
        assert self.proc.poll() is None, f"nodesim exited:\n{self.logs()}"
        return requests.get(f"http://{self.stats_addr}/", timeout=30).json()

    def logs(self, tail: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _app_counts(node, app_id: str) -> dict:
    r = node.get(f"/v2/apps{app_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["app"]


def test_simulated_nodes_run_an_app_of_a_thousand_instances(new_cluster, tmp_path):
    cluster = new_cluster("nodesim")
    # The heartbeat TTL of the other cluster tests (2 s) is for tests of failure detection:
    # here a node missed for a moment on a loaded machine would only move its tasks.
    cluster.add_servers(3, heartbeat_ttl=30)
    cluster.start()
    sim = Simulator(tmp_path, [s.rpc_addr for s in cluster.servers], NODES, "sim")
    try:
        leader = cluster.leader()
        follower = cluster.followers()[0]
        wait_for(lambda: sim.stats()["registered"] == NODES, timeout=60, interval=0.5,
                 message=lambda: f"every simulated node registered\n{sim.logs()}")
        # Every simulated node is in the catalog, passing, on every server.
        nodes = wait_for(lambda: (lambda ns: ns if len(ns) == NODES else None)(
            [n for n in follower.get_json("/v1/catalog/nodes?stale") if n["Node"].startswith("sim-")]),
            timeout=30, message="the simulated nodes in a follower's catalog")
        assert len({n["Address"] for n in nodes}) == NODES, "each node has its own address"
        app = {"id": "/simapp", "cmd": "sleep 1000", "cpus": 0.01, "mem": 1, "instances": INSTANCES,
               "portDefinitions": [{"port": 0}]}
        r = leader.post("/v2/apps", json=app, timeout=30)
        assert r.status_code == 201, r.text

        def all_running():
            counts = _app_counts(follower, "/simapp")
            return counts if counts["tasksRunning"] == INSTANCES else None

        wait_for(all_running, timeout=120, interval=1.0,
                 message=lambda: f"{INSTANCES} tasks running: {_app_counts(follower, '/simapp')['tasksRunning']}\n"
                                 f"{sim.logs()}")
        tasks = follower.get_json("/v2/apps/simapp/tasks", timeout=30)["tasks"]
        assert len(tasks) == INSTANCES
        assert all(t["state"] == "TASK_RUNNING" for t in tasks)
        hosts = {t["slaveId"] for t in tasks}
        assert hosts <= {n["Node"] for n in nodes}, "placed only on simulated nodes"
        assert len(hosts) > NODES // 2, f"spread over the nodes: {len(hosts)} used"
        # The reports registered one service instance per task, as a real node's do.
        seen: list = []

        def one_per_task():
            listed = follower.get_json("/v1/catalog/service/simapp?stale", timeout=30)
            seen[:] = [len(listed)]
            return listed if len(listed) == INSTANCES else None

        services = wait_for(one_per_task, timeout=60, interval=1.0,
                            message=lambda: f"a service instance per task: {seen}")
        assert {s["ServiceID"] for s in services} == {f"{t['id']}:0" for t in tasks}
        node_of = {f"{t['id']}:0": t["slaveId"] for t in tasks}
        assert all(s["Node"] == node_of[s["ServiceID"]] for s in services), "each on its task's node"
        # A report whose answer was lost may still have been applied, so the simulator's
        # own count of acknowledged reports can be lower: it only has to have reported.
        stats = wait_for(sim.stats, timeout=60, message="the simulator's counters")
        assert stats["tasks_reported"] > 0 and stats["registered"] == NODES, stats
    finally:
        sim.close()
