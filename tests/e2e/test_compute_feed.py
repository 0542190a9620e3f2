"""Compute nodes off the Raft log: each streams the state from one server.

A compute node (`atoll agent` without --server) holds no Raft log: it opens one
stream on a server chosen by a hash of its name, is sent a copy of the state
(keys and sessions aside) and then every change. These tests check what that
promises: the nodes are no Raft members, a node back after a short absence
resumes its stream without being sent the whole state again, and a server
that restarts hands its nodes to the other servers, which keep answering DNS
and taking writes through them.

Each test builds its own cluster of 3 servers (about a second).
"""

from __future__ import annotations

import signal

import pytest

from cluster_util import Cluster, Node, STOP_TIMEOUT, wait_kv
from conftest import wait_for



def feed(node: Node) -> dict:
    """The node's stream counters (/v1/agent/self Stats.feed)."""
    stats = node.get_json("/v1/agent/self", timeout=2.0)["Stats"]
    assert "feed" in stats, f"{node.name} reports no feed: {stats.keys()}"
    return {k: (int(v) if k != "server_http" else v) for k, v in stats["feed"].items()}


def feed_or_none(node: Node) -> dict | None:
    try:
        return feed(node)
    except Exception:  # noqa: BLE001 - not up yet
        return None


def stop_gracefully(node: Node) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    node.proc.wait(timeout=STOP_TIMEOUT)


def register_on(node: Node, name: str, service_id: str, port: int) -> None:
    wait_for(lambda: node.put("/v1/agent/service/register",
                              json={"Name": name, "ID": service_id, "Port": port}).status_code == 200,
             timeout=15.0, interval=0.2, message=lambda: f"{node.name} to register {service_id}\n{node.logs()}")


def answers(node: Node, name: str) -> bool:
    try:
        return bool(node.dns_a(name))
    except Exception:  # noqa: BLE001 - DNS not up yet
        return False


def test_compute_nodes_are_no_raft_members_and_spread_over_the_servers(new_cluster):
    cluster: Cluster = new_cluster("spread")
    cluster.add_servers(3)
    clients = [cluster.add_client(f"c{i}") for i in range(1, 7)]
    # The servers first: a node that finds its server not yet listening takes the next one
    # and, once fed, stays there (moving costs a full copy), so nodes started before the
    # servers may all land on the first server up.
    cluster.start(cluster.servers)
    cluster.start(clients)
    leader = cluster.leader()
    for client in clients:
        wait_for(lambda c=client: feed_or_none(c) and feed(c)["snapshots"] >= 1, timeout=20.0,
                 message=lambda c=client: f"{c.name} to hold a copy\n{c.logs()}")
    peers = leader.get_json("/v1/operator/raft/configuration")["Servers"]
    names = {p["Node"] for p in peers}
    assert not names & {c.name for c in clients}, f"compute nodes in the Raft configuration: {peers}"
    assert len(peers) == 3
    # Each node streams from the server its name hashes to; six names over three servers
    # land on more than one (and the leader has no say in it).
    servers = {feed(c)["server_http"] for c in clients}
    assert servers <= {s.http_addr for s in cluster.servers}
    assert len(servers) >= 2, servers
    # A write through a compute node is read back at once from the node's own copy.
    register_on(clients[0], "web", "web-1", 8080)
    assert clients[0].get_json("/v1/catalog/service/web")[0]["ServiceID"] == "web-1"


def test_a_compute_node_back_after_a_short_absence_resumes_without_a_snapshot(new_cluster):
    cluster: Cluster = new_cluster("resume")
    cluster.add_servers(3)
    client = cluster.add_client("c1")
    cluster.start()
    wait_for(lambda: feed_or_none(client) and feed(client)["snapshots"] == 1, timeout=20.0,
             message=lambda: f"the first copy\n{client.logs()}")
    register_on(client, "api", "api-1", 9000)
    wait_for(lambda: answers(client, "api.service.consul"), timeout=10.0,
             message=lambda: f"api in the client's DNS\n{client.logs()}")

    stop_gracefully(client)
    # While it is away the cluster moves on: another node registers a service.
    other = cluster.servers[0]
    register_on(other, "db", "db-1", 5432)
    cluster.write_anywhere("while-away", "yes")

    client.spawn()
    wait_for(lambda: feed_or_none(client) is not None and feed(client)["streams"] >= 1, timeout=20.0,
             message=lambda: f"the client back\n{client.logs()}")
    stats = feed(client)
    assert stats["snapshots"] == 0 and stats["resumes"] == 1, stats
    # It holds what it had and what happened while it was away.
    wait_for(lambda: answers(client, "db.service.consul"), timeout=10.0,
             message=lambda: f"db in the client's DNS after the resume\n{client.logs()}")
    assert answers(client, "api.service.consul")
    assert feed(client)["entries"] >= 1
    assert feed(client)["snapshots"] == 0


def test_a_server_restart_moves_its_compute_nodes_to_the_other_servers(new_cluster):
    cluster: Cluster = new_cluster("move")
    cluster.add_servers(3)
    clients = [cluster.add_client(f"c{i}") for i in range(1, 7)]
    cluster.start()
    for client in clients:
        wait_for(lambda c=client: feed_or_none(c) and feed(c)["snapshots"] >= 1, timeout=20.0,
                 message=lambda c=client: f"{c.name} to hold a copy\n{c.logs()}")
    by_server: dict[str, list[Node]] = {}
    for client in clients:
        by_server.setdefault(feed(client)["server_http"], []).append(client)
    busiest_http = max(by_server, key=lambda http: len(by_server[http]))
    server = next(s for s in cluster.servers if s.http_addr == busiest_http)
    moved = by_server[busiest_http]

    server.kill9()
    for client in moved:
        wait_for(lambda c=client: (feed_or_none(c) or {}).get("server_http") not in (None, busiest_http),
                 timeout=20.0, message=lambda c=client: f"{c.name} to move off {server.name}\n{c.logs()}")
    # They keep taking writes and answering DNS from their own copies.
    for i, client in enumerate(moved):
        register_on(client, f"moved{i}", f"moved{i}-1", 7000 + i)
        wait_for(lambda c=client, i=i: answers(c, f"moved{i}.service.consul"), timeout=10.0,
                 message=lambda c=client: f"{c.name} to answer for its service\n{c.logs()}")
    live = [s for s in cluster.servers if s is not server]
    register_on(live[0], "after", "after-1", 7100)
    for client in moved:
        wait_for(lambda c=client: answers(c, "after.service.consul"), timeout=10.0,
                 message=lambda c=client: f"{c.name} to see a change made elsewhere\n{c.logs()}")

    # The server comes back on its data dir and the cluster goes on.
    server.spawn()
    cluster.wait_converged(voters=3)
    cluster.write_anywhere("after-restart", "yes")
    wait_kv(server, "after-restart", "yes")
