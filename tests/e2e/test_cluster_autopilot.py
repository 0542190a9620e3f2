"""A cluster that is still forming, and one that cleans up after a dead server.

Before a node belongs to a cluster its HTTP API already answers, as Consul's
does without a leader: `/v1/status/leader` is "", the agent endpoints
describe the node, and reads and writes are refused with a 500 naming the
missing leader (clients retry those). Once a leader exists every endpoint
works.

Dead-server cleanup (Consul's autopilot): the leader removes a server whose
heartbeats have been missing for --dead-server-cleanup-after seconds from
the Raft configuration, as long as the dead are a minority and
--min-quorum voters remain. A removed server that comes back asks to be
admitted again and catches up.
"""

from __future__ import annotations

import time

import pytest
import requests

from cluster_util import FORM_TIMEOUT, wait_kv
from conftest import stays, wait_for

CLEANUP_AFTER = 2.0  # --dead-server-cleanup-after for these clusters (seconds)


def _answers(node) -> bool:
    try:
        return node.get("/v1/status/leader", timeout=1.0).status_code == 200
    except requests.RequestException:
        return False


def test_http_answers_before_the_cluster_forms(new_cluster):
    cluster = new_cluster("forming")
    first, *others = cluster.add_servers(3)
    client = cluster.add_client()
    first.spawn()
    client.spawn()
    for node in (first, client):
        wait_for(lambda: _answers(node), timeout=15, message=f"{node.name} to answer HTTP before the cluster forms")
        r = node.get("/v1/status/leader")
        assert r.status_code == 200 and r.json() == "", r.text
        assert r.headers["X-Consul-KnownLeader"] == "false"
        assert node.get_json("/v1/status/peers") == []
        me = node.get_json("/v1/agent/self")
        assert me["Config"]["NodeName"] == node.name and me["Config"]["Server"] is node.server, me
        assert node.name in node.members()
        # Reads and writes cannot be answered yet: a 500 with a JSON body saying why.
        for method, path in (("GET", "/v1/kv/forming"), ("PUT", "/v1/kv/forming"), ("GET", "/v1/catalog/services")):
            r = requests.request(method, node.url(path), data=b"x", timeout=5)
            assert r.status_code == 500, (method, path, r.status_code, r.text)
            assert "No cluster leader" in r.json()["error"], r.text
        r = node.get("/v2/apps")
        assert r.status_code == 503 and "No cluster leader" in r.json()["message"], r.text
        assert node.get("/ping").text == "pong"

    for node in others:
        node.spawn()
    leader = cluster.wait_converged(voters=3, timeout=FORM_TIMEOUT)
    assert leader.leader() == leader.rpc_addr
    # The client registers itself right after it learns of the leader; writes work then.
    cluster.write_anywhere("forming", "formed", nodes=[client], timeout=10)
    wait_kv(first, "forming", "formed")
    assert client.get("/v1/status/leader").json() == leader.rpc_addr


def test_leave_before_joining_exits_cleanly(new_cluster):
    cluster = new_cluster("leaveearly")
    lonely = cluster.add_servers(3)[0]
    lonely.spawn()
    wait_for(lambda: _answers(lonely), timeout=15, message="the lonely server to answer HTTP")
    r = lonely.put("/v1/agent/leave")
    assert r.status_code == 200, r.text
    code = lonely.wait_exit(10)
    assert code == 0, f"exit {code}\n{lonely.logs()}"


def _voters(node) -> set[str]:
    config = node.get_json("/v1/operator/raft/configuration", timeout=2.0)
    return {s["Node"] for s in config["Servers"] if s["Voter"]}


def test_dead_server_is_removed_and_rejoins_when_it_returns(new_cluster):
    cluster = new_cluster("autopilot")
    cluster.add_servers(3, extra_args=["--dead-server-cleanup-after", str(CLEANUP_AFTER)])
    cluster.start()
    cluster.write_anywhere("ap/before", "1", timeout=10)
    dead = cluster.followers()[0]
    dead.kill9()
    live = cluster.live_servers()
    started = time.monotonic()
    wait_for(lambda: all(_voters(s) == {n.name for n in live} for s in live), timeout=20, interval=0.2,
             message=lambda: f"{dead.name} to be removed from the voters\n" + cluster.logs())
    # Removal waits for the threshold: never earlier than the heartbeats could tell.
    assert time.monotonic() - started >= CLEANUP_AFTER - 0.5
    leader = cluster.wait_converged(voters=2)
    assert dead.rpc_addr not in leader.peers()
    cluster.write_anywhere("ap/while-away", "2", nodes=live, timeout=10)

    # It comes back on its old data dir: it asks to be admitted again and catches up.
    dead.spawn()
    cluster.wait_converged(voters=3, timeout=30)
    assert _voters(leader) == {s.name for s in cluster.servers}
    wait_kv(dead, "ap/while-away", "2", timeout=20)
    cluster.write_anywhere("ap/after", "3", nodes=[dead], timeout=10)
    for server in cluster.servers:
        wait_kv(server, "ap/after", "3")


def test_cleanup_respects_min_quorum(new_cluster):
    cluster = new_cluster("minquorum")
    cluster.add_servers(3, extra_args=["--dead-server-cleanup-after", str(CLEANUP_AFTER), "--min-quorum", "3"])
    cluster.start()
    dead = cluster.followers()[0]
    dead.kill9()
    live = cluster.live_servers()
    cluster.write_anywhere("mq/k", "v", nodes=live, timeout=10)
    # Well past the threshold, the dead server is still a voter: removing it would go below 3.
    stays(lambda: all(dead.name in _voters(server) for server in live), CLEANUP_AFTER + 3.0,
          message=lambda: f"{dead.name} removed from the voters below --min-quorum: "
          + str({s.name: sorted(_voters(s)) for s in live}))
    cluster.write_anywhere("mq/k", "w", nodes=live, timeout=10)


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_bad_cleanup_flag_is_refused(new_cluster, value):
    cluster = new_cluster(f"badflag{abs(hash(value)) % 1000}")
    node = cluster.add_servers(1, extra_args=[f"--dead-server-cleanup-after={value}"])[0]
    node.spawn()
    code = node.wait_exit(10)
    assert code not in (None, 0), node.logs()
    assert "dead-server-cleanup-after" in node.output(), node.output()
