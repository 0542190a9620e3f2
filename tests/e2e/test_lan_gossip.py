"""The LAN gossip pool: every node of a datacenter gossips on port 8301, the leader
judges node health from its pool view, and the pool's round trips give coordinates.

One cluster of 3 servers and 3 compute nodes on loopback addresses (c3 runs without a
LAN pool, `--serf-lan-port 0`, and heartbeats instead), shared by the module: the tests
that kill or stop a node bring it back before they end.

The bounds asserted here are generous (a busy machine runs these); the figures the
pool reaches are measured by bench/node_loss.py.
"""

from __future__ import annotations

import math
import socket
import subprocess
import time

import pytest

from cluster_util import HEARTBEAT_TTL, RNG, Cluster, Node
from conftest import require_binary, wait_for

LAN_PORT = 8301
OUT_OF_DNS_BOUND = 5.0  # a killed compute node leaves DNS within this (the target is < 1 s)
SILENT_BOUND = 10.0  # a stopped node is failed within this (the target is < 2 s median)
BACK_BOUND = 20.0  # a node restarted or resumed is alive and in DNS again within this


@pytest.fixture(scope="module")
def lan(tmp_path_factory, pool):
    cluster = Cluster(tmp_path_factory.mktemp("lan-cluster"), pool, "lan")
    try:
        cluster.add_servers(3)
        cluster.add_client("c1")
        cluster.add_client("c2")
        cluster.add_client("c3", extra_args=["--serf-lan-port", "0"])
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def pooled(cluster: Cluster) -> list[Node]:
    """The nodes that run a LAN pool."""
    return [n for n in cluster.nodes if not n.name.endswith("-c3")]


def node(cluster: Cluster, suffix: str) -> Node:
    (found,) = [n for n in cluster.nodes if n.name.endswith(f"-{suffix}")]
    return found


def status_in(observer: Node, name: str) -> int | None:
    member = observer.members().get(name)
    return None if member is None else member["Status"]


def in_dns(observer: Node, service: str, ip: str) -> bool:
    return ip in observer.dns_a(f"{service}.service.consul")


def distance(a: dict, b: dict) -> float:
    """Consul's estimated round trip between two coordinates (seconds)."""
    plain = math.sqrt(sum((x - y) ** 2 for x, y in zip(a["Vec"], b["Vec"]))) + a["Height"] + b["Height"]
    adjusted = plain + a["Adjustment"] + b["Adjustment"]
    return adjusted if adjusted > 0 else plain


# ---------------------------------------------------------------------------
# membership


def test_members_are_the_lan_pool_with_consuls_tags(lan):
    names = {n.name for n in lan.nodes}

    def everyone_alive_everywhere():
        for observer in lan.nodes:
            members = observer.members()
            if set(members) != names or any(m["Status"] != 1 for m in members.values()):
                return False
        return True

    wait_for(everyone_alive_everywhere, timeout=20, interval=0.2,
             message=lambda: "every node to list every other alive\n" + lan.logs())
    members = RNG.choice(pooled(lan)).members()
    for n in pooled(lan):
        m = members[n.name]
        assert m["Addr"] == n.ip and m["Port"] == LAN_PORT, m
        assert m["Tags"]["role"] == ("consul" if n.server else "node"), m
        assert m["Tags"]["dc"] == "dc1" and m["Tags"]["segment"] == "", m
        assert m["Tags"]["id"] and m["Tags"]["build"], m
    # c3 gossips with no one: it is listed from the Raft membership.
    assert members[node(lan, "c3").name]["Status"] == 1
    me = node(lan, "c1").get_json("/v1/agent/self")
    assert me["Member"]["Name"] == node(lan, "c1").name and me["Member"]["Port"] == LAN_PORT, me["Member"]


# ---------------------------------------------------------------------------
# coordinates


def test_every_pooled_node_has_a_finite_coordinate(lan):
    server = RNG.choice(lan.servers)
    names = {n.name for n in pooled(lan)}

    def complete():
        listed = server.get_json("/v1/coordinate/nodes")
        return listed if {e["Node"] for e in listed} == names else None

    listed = wait_for(complete, timeout=20, interval=0.2,
                      message=lambda: f"coordinates of {sorted(names)} on {server.name}: "
                                      f"{server.get_json('/v1/coordinate/nodes')}")
    for entry in listed:
        assert entry["Segment"] == "", entry
        coord = entry["Coord"]
        assert len(coord["Vec"]) == 8, entry
        values = coord["Vec"] + [coord["Error"], coord["Adjustment"], coord["Height"]]
        assert all(math.isfinite(v) for v in values), entry
        assert coord["Height"] > 0 and coord["Error"] > 0, entry
    one = RNG.choice(sorted(names))
    (entry,) = server.get_json(f"/v1/coordinate/node/{one}")
    assert entry["Node"] == one and len(entry["Coord"]["Vec"]) == 8, entry
    r = server.get("/v1/coordinate/node/nobody-here")
    assert r.status_code == 404 and "nobody-here" in r.text, (r.status_code, r.text)
    # ?dc= is forwarded as on every other endpoint.
    assert {e["Node"] for e in server.get_json("/v1/coordinate/nodes?dc=dc1")} == names
    r = server.get("/v1/coordinate/nodes?dc=nowhere")
    assert r.status_code == 500 and "No path to datacenter" in r.text, r.text
    # The agent's own coordinate.
    coord = node(lan, "c1").get_json("/v1/agent/self")["Coord"]
    assert coord is not None and len(coord["Vec"]) == 8, coord


def test_near_agent_sorts_by_the_estimated_round_trip(lan):
    service = "nearweb"
    nodes = pooled(lan)
    for i, n in enumerate(nodes):
        n.register(service, f"{service}-{i}", 7000 + i)
    observer = node(lan, "c1")
    wait_for(lambda: len(observer.get_json(f"/v1/catalog/service/{service}")) == len(nodes), timeout=10,
             message=f"{service} registered on every pooled node")

    def sorted_as_the_coordinates_say():
        before = {e["Node"]: e["Coord"] for e in observer.get_json("/v1/coordinate/nodes")}
        answer = [e["Node"] for e in observer.get_json(f"/v1/catalog/service/{service}?near=_agent")]
        after = {e["Node"]: e["Coord"] for e in observer.get_json("/v1/coordinate/nodes")}
        if before != after or set(before) != {n.name for n in nodes}:
            return None  # the coordinates moved meanwhile: look again
        origin = before[observer.name]
        distances = [distance(origin, before[name]) for name in answer]
        return answer if distances == sorted(distances) else None

    answer = wait_for(sorted_as_the_coordinates_say, timeout=15, interval=0.1,
                      message="?near=_agent answers sorted by the coordinates")
    assert sorted(answer) == sorted(n.name for n in nodes)
    health = [e["Node"]["Node"] for e in observer.get_json(f"/v1/health/service/{service}?near=_agent")]
    assert sorted(health) == sorted(answer)
    for i, n in enumerate(nodes):
        n.put(f"/v1/agent/service/deregister/{service}-{i}")


# ---------------------------------------------------------------------------
# failure detection


def test_killed_compute_node_leaves_dns_and_comes_back(lan):
    victim = node(lan, "c2")
    server = RNG.choice(lan.servers)
    victim.register("lankill", "lankill-1", 9091)
    wait_for(lambda: in_dns(server, "lankill", victim.ip), timeout=10, message="lankill in DNS")
    try:
        victim.kill9()
        killed = time.monotonic()
        wait_for(lambda: not in_dns(server, "lankill", victim.ip), timeout=OUT_OF_DNS_BOUND, interval=0.02,
                 message=lambda: "lankill out of DNS after the kill\n" + lan.logs())
        print(f"compute node kill -9 -> out of DNS: {time.monotonic() - killed:.2f}s")
        wait_for(lambda: status_in(server, victim.name) == 4, timeout=5,
                 message="the killed node failed in the members")
        checks = server.get_json(f"/v1/health/node/{victim.name}")
        serf = [c for c in checks if c["CheckID"] == "serfHealth"]
        assert serf and serf[0]["Status"] == "critical", checks
    finally:
        if not victim.running():
            victim.spawn()
    wait_for(lambda: in_dns(server, "lankill", victim.ip), timeout=BACK_BOUND,
             message=lambda: "lankill back in DNS after the restart\n" + victim.logs())
    wait_for(lambda: status_in(server, victim.name) == 1, timeout=BACK_BOUND, message="the node alive again")
    victim.put("/v1/agent/service/deregister/lankill-1")


def test_stopped_node_is_failed_and_alive_again_after_sigcont(lan):
    victim = node(lan, "c1")
    leader = lan.leader()
    victim.register("lanstop", "lanstop-1", 9092)
    wait_for(lambda: in_dns(leader, "lanstop", victim.ip), timeout=10, message="lanstop in DNS")
    try:
        victim.freeze()
        stopped = time.monotonic()
        wait_for(lambda: not in_dns(leader, "lanstop", victim.ip), timeout=SILENT_BOUND, interval=0.02,
                 message=lambda: "lanstop out of DNS while its node is stopped\n" + lan.logs())
        print(f"compute node SIGSTOP -> out of DNS: {time.monotonic() - stopped:.2f}s")
        wait_for(lambda: status_in(leader, victim.name) == 4, timeout=5,
                 message="the stopped node failed in the members")
    finally:
        victim.thaw()
    wait_for(lambda: status_in(leader, victim.name) == 1, timeout=BACK_BOUND,
             message=lambda: "the resumed node alive again\n" + victim.logs())
    wait_for(lambda: in_dns(leader, "lanstop", victim.ip), timeout=BACK_BOUND,
             message="lanstop back in DNS after SIGCONT")
    victim.put("/v1/agent/service/deregister/lanstop-1")


def test_node_without_a_lan_pool_is_judged_by_heartbeats(lan):
    victim = node(lan, "c3")
    server = RNG.choice(lan.servers)
    victim.register("lanless", "lanless-1", 9093)
    wait_for(lambda: in_dns(server, "lanless", victim.ip), timeout=10, message="lanless in DNS")
    try:
        victim.kill9()
        wait_for(lambda: not in_dns(server, "lanless", victim.ip), timeout=HEARTBEAT_TTL + 5, interval=0.05,
                 message=lambda: "lanless out of DNS after the heartbeats stopped\n" + lan.logs())
        wait_for(lambda: status_in(server, victim.name) == 4, timeout=5, message="c3 failed in the members")
    finally:
        if not victim.running():
            victim.spawn()
    wait_for(lambda: in_dns(server, "lanless", victim.ip), timeout=BACK_BOUND, message="lanless back in DNS")
    victim.put("/v1/agent/service/deregister/lanless-1")


def test_no_node_was_failed_that_the_tests_did_not_stop(lan):
    # Whatever the earlier tests did, every node is alive now, and the servers' logs name no
    # failure of a node that was never killed or stopped (no false positive on a busy machine).
    wait_for(lambda: all(status_in(lan.leader(), n.name) == 1 for n in lan.nodes), timeout=BACK_BOUND,
             message="every node alive")
    untouched = [s.name for s in lan.servers]
    for server in lan.servers:
        for line in server.output().splitlines():
            if "the LAN pool failed the node" in line:
                assert not any(f"node={name}" in line for name in untouched), line


# ---------------------------------------------------------------------------
# start-up


def test_a_busy_lan_port_stops_the_start_naming_it(pool, tmp_path):
    ip = pool.take()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((ip, LAN_PORT))
        proc = subprocess.run(
            [str(require_binary()), "agent", "--server", "--bootstrap-expect", "1", "--bind", ip,
             "--data-dir", str(tmp_path / "data"), "--node", "busy"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, proc.stdout
    assert "--serf-lan-port 8301" in proc.stderr and "8301" in proc.stderr, proc.stderr
