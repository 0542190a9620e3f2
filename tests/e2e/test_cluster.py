"""Multi-process clusters: servers and client nodes of `atoll agent` on loopback addresses.

Every node is a real process with its own loopback IP (127.A.B.x, A and B
random per run) listening on the default ports 8300 (Raft/RPC), 8500 (HTTP)
and 8600 (DNS). Tests start servers in random order, kill them with SIGKILL,
freeze them with SIGSTOP and restart them on the same data dir, and check
what a Consul user would see: one leader everybody agrees on, writes that
keep working while a majority lives, data that survives, failed nodes that
leave DNS.

Clusters that are only read from are shared by the module; every test that
kills, freezes or replaces a server builds its own cluster (which takes
about a second), so one failure cannot cascade into the next test.

ATOLL_E2E_SEED replays the random choices (addresses, start orders).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Iterable

import dns.rdatatype
import pytest
import requests

from cluster_util import (
    FAILOVER_LIMIT,
    HEARTBEAT_TTL,
    HTTP_PORT,
    RNG,
    RPC_PORT,
    Cluster,
    Node,
    assert_one_leader,
    listed_tasks,
    listening,
    run_cli,
    wait_kv,
)
from conftest import require, stays, wait_for

try:  # py-consul
    import consul
except ImportError:  # pragma: no cover - reported by require()
    consul = None

REFUSAL_LIMIT = 8.0  # minority -> a write is answered with 5xx
DNS_MARGIN = 3.0  # how much later than the heartbeat TTL a dead node may leave DNS


# ---------------------------------------------------------------------------
# fixtures (`pool` and `new_cluster`, a private cluster per test, are in conftest.py)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, pool):
    """3 servers and 1 client node, for the tests that leave the cluster as they found it."""
    cluster = Cluster(tmp_path_factory.mktemp("shared-cluster"), pool, "shared")
    try:
        cluster.add_servers(3)
        cluster.add_client("c1")
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# ---------------------------------------------------------------------------
# forming a cluster


def test_three_servers_bootstrap_in_random_order(shared):
    leader = assert_one_leader(shared, voters=3)
    client = shared.clients[0]
    assert client.leader() == leader.rpc_addr
    # The client is a member but never a voter.
    assert client.rpc_addr not in leader.peers()
    members = leader.members()
    assert set(members) == {n.name for n in shared.nodes}, members
    for node in shared.nodes:
        m = members[node.name]
        assert m["Addr"] == node.ip and m["Status"] == 1, m
        assert m["Tags"]["role"] == ("consul" if node.server else "node"), m
        assert m["Tags"]["dc"] == "dc1", m


def test_cli_members_and_list_peers(shared):
    leader = shared.leader()
    proc = run_cli("members", "--http-addr", shared.clients[0].http_addr, "--json")
    assert proc.returncode == 0, proc.stderr
    members = {m["Name"]: m for m in json.loads(proc.stdout)}
    assert set(members) == {n.name for n in shared.nodes}
    assert all(m["Status"] == 1 for m in members.values()), members

    proc = run_cli("operator", "raft", "list-peers", "--http-addr", shared.servers[0].http_addr, "--json")
    assert proc.returncode == 0, proc.stderr
    servers = json.loads(proc.stdout)["Servers"]
    assert sorted(s["Node"] for s in servers) == sorted(s.name for s in shared.servers)
    assert [s["Node"] for s in servers if s["Leader"]] == [leader.name]

    proc = run_cli("operator", "raft", "list-peers", "--http-addr", shared.servers[1].http_addr)
    assert proc.returncode == 0, proc.stderr
    for server in shared.servers:
        assert server.name in proc.stdout and server.rpc_addr in proc.stdout, proc.stdout


def test_five_servers_bootstrap_in_random_order(new_cluster):
    cluster = new_cluster("five")
    cluster.add_servers(5)
    cluster.start()
    leader = assert_one_leader(cluster, voters=5)
    node = cluster.write_anywhere("five/k", "v", nodes=[s for s in cluster.servers if s is not leader][:1])
    assert node is not leader
    for server in cluster.servers:
        wait_kv(server, "five/k", "v")


# ---------------------------------------------------------------------------
# losing servers


def test_leader_kill_elects_new_leader_and_keeps_data(new_cluster):
    cluster = new_cluster("leaderkill")
    cluster.add_servers(3)
    cluster.start()
    for i in range(20):
        assert cluster.write_anywhere(f"lk/{i}", f"v{i}", timeout=5)
    old = cluster.leader()

    old.kill9()
    killed_at = time.monotonic()
    survivors = cluster.live_servers()
    cluster.write_anywhere("lk/after", "yes", nodes=survivors, timeout=FAILOVER_LIMIT + 5)
    elapsed = time.monotonic() - killed_at
    print(f"leader kill -> first acknowledged write: {elapsed:.2f}s")
    assert elapsed < FAILOVER_LIMIT, f"failover took {elapsed:.1f}s\n{cluster.logs()}"

    new = cluster.wait_converged(voters=3)
    assert new is not old and new in survivors
    for server in survivors:
        for i in range(20):
            assert server.kv_get(f"lk/{i}", mode="consistent") == f"v{i}", server.name
        assert server.kv_get("lk/after", mode="consistent") == "yes"

    # The old leader comes back as a follower with everything it missed.
    old.spawn()
    wait_kv(old, "lk/after", "yes")
    cluster.wait_converged(voters=3)
    assert old.kv_get("lk/19", mode="stale") == "v19"


def test_follower_kill_writes_continue_and_restart_catches_up(new_cluster):
    cluster = new_cluster("followerkill")
    cluster.add_servers(3)
    cluster.start()
    leader = cluster.leader()
    victim, other = cluster.followers()
    cluster.write_anywhere("fk/before", "1", timeout=5)
    wait_kv(victim, "fk/before", "1")

    victim.kill9()
    # Writes go on, through the leader and forwarded by the other follower.
    for i in range(30):
        target = leader if i % 2 == 0 else other
        r = target.kv_put(f"fk/during/{i}", str(i), timeout=5)
        assert r.status_code == 200 and r.json() is True, f"write {i} via {target.name}: {r.status_code} {r.text}"
    assert cluster.leader() is leader, "the leader changed although only a follower died"

    victim.spawn()
    wait_kv(victim, "fk/during/29", "29")
    for i in range(30):
        assert victim.kv_get(f"fk/during/{i}", mode="stale") == str(i)
    cluster.wait_converged(voters=3)
    # And it takes part again: a write through it is acknowledged.
    r = victim.kv_put("fk/after", "x")
    assert r.status_code == 200 and r.json() is True, r.text


def test_minority_refuses_writes_and_consistent_reads_then_heals(new_cluster):
    cluster = new_cluster("partition")
    cluster.add_servers(3)
    cluster.start()
    cluster.write_anywhere("part/k", "before", timeout=5)
    leader = cluster.leader()
    for server in cluster.servers:
        wait_kv(server, "part/k", "before")

    # Freeze the two followers: the leader is left alone, a minority of one.
    frozen = cluster.followers()
    for node in frozen:
        node.freeze()
    try:
        frozen_at = time.monotonic()
        r = None
        while time.monotonic() - frozen_at < REFUSAL_LIMIT + 5:
            try:
                r = leader.kv_put("part/k", "during", timeout=REFUSAL_LIMIT + 5)
            except requests.RequestException:
                time.sleep(0.1)
                continue
            break
        elapsed = time.monotonic() - frozen_at
        assert r is not None, "no answer to the write at all"
        assert r.status_code >= 500, f"minority accepted a write: {r.status_code} {r.text}"
        assert elapsed < REFUSAL_LIMIT, f"refusal took {elapsed:.1f}s"
        assert "error" in r.json(), r.text
        print(f"minority write refused after {elapsed:.2f}s: {r.status_code} {r.text}")

        r = leader.get("/v1/kv/part/k?consistent", timeout=REFUSAL_LIMIT + 5)
        assert r.status_code >= 500, f"consistent read served by a minority: {r.status_code} {r.text}"
        # Stale reads are served locally, with the last committed value.
        assert leader.kv_get("part/k", mode="stale") == "before"
    finally:
        for node in frozen:
            node.thaw()

    cluster.write_anywhere("part/k", "after", timeout=15)
    cluster.wait_converged(voters=3)
    for server in cluster.servers:
        wait_kv(server, "part/k", "after")
        assert server.kv_get("part/k", mode="consistent") == "after"


def test_lone_follower_refuses_writes_and_serves_stale_reads(new_cluster):
    cluster = new_cluster("lonefollower")
    cluster.add_servers(3)
    cluster.start()
    cluster.write_anywhere("lone/k", "before", timeout=5)
    leader = cluster.leader()
    alone, frozen_follower = cluster.followers()
    wait_kv(alone, "lone/k", "before")

    frozen = [leader, frozen_follower]
    for node in frozen:
        node.freeze()
    try:
        start = time.monotonic()
        r = alone.kv_put("lone/k", "during", timeout=REFUSAL_LIMIT + 5)
        elapsed = time.monotonic() - start
        assert r.status_code >= 500, f"minority accepted a write: {r.status_code} {r.text}"
        assert elapsed < REFUSAL_LIMIT, f"refusal took {elapsed:.1f}s"
        assert "error" in r.json(), r.text
        r = alone.get("/v1/kv/lone/k?consistent", timeout=REFUSAL_LIMIT + 5)
        assert r.status_code >= 500, f"consistent read served by a minority: {r.status_code} {r.text}"
        assert alone.kv_get("lone/k", mode="stale") == "before"
    finally:
        for node in frozen:
            node.thaw()
    cluster.write_anywhere("lone/k", "after", timeout=15)
    cluster.wait_converged(voters=3)
    for server in cluster.servers:
        wait_kv(server, "lone/k", "after")


@pytest.mark.parametrize("how,which", [("force-leave", "follower"), ("delete-peer", "leader")])
def test_replace_dead_server(new_cluster, how, which):
    cluster = new_cluster(f"replace-{how}")
    cluster.add_servers(3)
    cluster.start()
    for i in range(10):
        cluster.write_anywhere(f"rep/{i}", str(i), timeout=5)
    leader = cluster.leader()
    dead = leader if which == "leader" else cluster.followers()[0]
    dead.kill9()
    live = cluster.live_servers()
    cluster.write_anywhere("rep/after-death", "1", nodes=live, timeout=FAILOVER_LIMIT)

    if how == "force-leave":
        proc = run_cli("force-leave", dead.name, "--http-addr", live[0].http_addr)
        assert proc.returncode == 0, f"force-leave: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    else:
        r = live[0].delete(f"/v1/operator/raft/peer?address={dead.rpc_addr}")
        assert r.status_code == 200, f"DELETE peer -> {r.status_code}: {r.text}"
    wait_for(lambda: all(sorted(s.peers()) == sorted(n.rpc_addr for n in live) for s in live),
             timeout=10, message="the dead server to leave the peer set")
    cluster.nodes.remove(dead)

    fresh = cluster.add_server("s4", join=[live[0].ip], expect=3)
    fresh.spawn()
    leader = cluster.wait_converged(voters=3)
    config = leader.get_json("/v1/operator/raft/configuration")
    entry = [s for s in config["Servers"] if s["Node"] == fresh.name]
    assert entry and entry[0]["Voter"] is True and entry[0]["Address"] == fresh.rpc_addr, config
    assert dead.rpc_addr not in leader.peers()
    for i in range(10):
        wait_kv(fresh, f"rep/{i}", str(i))
    wait_kv(fresh, "rep/after-death", "1")

    # It counts towards the quorum: lose one more original server and write again.
    survivor, other = live
    other.kill9()
    cluster.write_anywhere("rep/final", "ok", nodes=[survivor, fresh], timeout=FAILOVER_LIMIT + 5)
    wait_kv(fresh, "rep/final", "ok")


BIG_VALUE = 400_000  # bytes; Consul accepts KV values up to 512 KiB
BIG_KEYS = 8  # 3.2 MB of state in all: more than one 2 MB request body


def _write_big_values(cluster: Cluster, prefix: str) -> None:
    leader = cluster.leader()
    for i in range(BIG_KEYS):
        r = leader.put(f"/v1/kv/{prefix}/{i}", data=bytes([65 + i]) * BIG_VALUE, timeout=10)
        assert r.status_code == 200 and r.json() is True, f"big write {i}: {r.status_code} {r.text}"


def test_restarted_follower_catches_up_after_megabytes_of_writes(new_cluster):
    cluster = new_cluster("bigcatchup")
    cluster.add_servers(3)
    cluster.start()
    victim = cluster.followers()[0]
    victim.kill9()
    _write_big_values(cluster, "big")
    victim.spawn()
    last = f"big/{BIG_KEYS - 1}"
    wait_for(lambda: victim.get(f"/v1/kv/{last}?stale&raw", timeout=2).content == bytes([65 + BIG_KEYS - 1]) * BIG_VALUE,
             timeout=20, interval=0.2,
             message=lambda: f"{victim.name} to catch up on {BIG_KEYS} x {BIG_VALUE} bytes missed while down\n"
             + cluster.logs())


def test_new_node_catches_up_from_a_large_snapshot(new_cluster):
    cluster = new_cluster("bigsnapshot")
    # Snapshot and compact early, so a newcomer can only be brought up to date by a snapshot.
    cluster.add_servers(3, extra_args=["--snapshot-after-entries", "4"])
    cluster.start()
    _write_big_values(cluster, "snap")
    for i in range(8):  # a few more entries, past the snapshot threshold
        cluster.write_anywhere(f"snap/small/{i}", str(i), timeout=5)
    client = cluster.add_client("late")
    client.spawn()
    wait_for(client.leader, timeout=20, interval=0.2,
             message=lambda: "a node joining after compaction to be ready\n" + cluster.logs())
    wait_kv(client, "snap/small/7", "7")
    body = client.get(f"/v1/kv/snap/{BIG_KEYS - 1}?stale&raw").content
    assert body == bytes([65 + BIG_KEYS - 1]) * BIG_VALUE


# ---------------------------------------------------------------------------
# client (compute) nodes


def test_py_consul_through_client_node(shared):
    require(consul is not None, "python package py-consul not installed")
    client = shared.clients[0]
    wait_for(lambda: client.leader(), timeout=15, message="client node ready")
    c = consul.Consul(host=client.ip, port=HTTP_PORT, connections_timeout=10)

    assert c.agent.service.register("pyweb", service_id="pyweb-1", port=7070,
                                    check=consul.Check.ttl("30s"))
    checks = c.agent.checks()
    check_id = "service:pyweb-1"
    assert check_id in checks, checks
    assert checks[check_id]["Status"] == "critical", checks[check_id]
    c.agent.check.ttl_pass(check_id, "ok")

    def passing():
        _, nodes = c.health.service("pyweb", passing=True)
        return nodes

    nodes = wait_for(passing, timeout=10, message="pyweb to be passing via the client node")
    assert [n["Service"]["ID"] for n in nodes] == ["pyweb-1"]
    assert nodes[0]["Node"]["Node"] == client.name and nodes[0]["Node"]["Address"] == client.ip

    assert c.kv.put("py/key", "value-1") is True
    _, item = c.kv.get("py/key")
    assert item is not None and item["Value"] == b"value-1"
    # Written through the client, visible with a consistent read on every server.
    for server in shared.servers:
        assert server.kv_get("py/key", mode="consistent") == "value-1"

    for node in (client, shared.servers[0]):
        msg = wait_for(lambda: (lambda m: m if m.answer else None)(node.dns("pyweb.service.consul", "SRV")),
                       timeout=10, message=f"SRV pyweb via {node.name}")
        srv = [rd for rrset in msg.answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset]
        assert [rd.port for rd in srv] == [7070], msg
        extra = [rd.address for rrset in msg.additional if rrset.rdtype == dns.rdatatype.A for rd in rrset]
        assert extra == [client.ip], msg
        tcp = node.dns("pyweb.service.consul", "SRV", tcp=True)
        assert [rd.port for rrset in tcp.answer for rd in rrset if rrset.rdtype == dns.rdatatype.SRV] == [7070]

    c.agent.service.deregister("pyweb-1")
    wait_for(lambda: shared.servers[1].dns_a("pyweb.service.consul") == [], timeout=10,
             message="pyweb to leave DNS after deregistration")


def test_client_node_kill_leaves_dns_and_comes_back(shared):
    client = shared.clients[0]
    server = RNG.choice(shared.servers)
    client.register("killweb", "killweb-1", 9090)
    wait_for(lambda: server.dns_a("killweb.service.consul") == [client.ip], timeout=10,
             message="killweb in the server's DNS")
    assert shared.leader().members()[client.name]["Status"] == 1

    try:
        client.kill9()
        killed_at = time.monotonic()
        limit = HEARTBEAT_TTL + DNS_MARGIN

        def gone():
            msg = server.dns("killweb.service.consul", "A", timeout=1.0)
            return not [rr for rr in msg.answer if rr.rdtype == dns.rdatatype.A]

        wait_for(gone, timeout=limit + 5, interval=0.05, message="killweb to leave DNS")
        elapsed = time.monotonic() - killed_at
        print(f"client kill -> service out of DNS: {elapsed:.2f}s (heartbeat TTL {HEARTBEAT_TTL}s)")
        assert elapsed <= limit, f"took {elapsed:.2f}s, more than TTL {HEARTBEAT_TTL}s + {DNS_MARGIN}s"
        wait_for(lambda: server.members()[client.name]["Status"] == 4, timeout=3,
                 message=lambda: f"{client.name} to be failed in members: {server.members().get(client.name)}")
        health = server.get_json("/v1/health/service/killweb?passing")
        assert health == [], health
    finally:
        if not client.running():
            client.spawn()

    wait_for(lambda: server.dns_a("killweb.service.consul") == [client.ip], timeout=15,
             message=lambda: "killweb back in DNS\n" + client.logs())
    wait_for(lambda: server.members()[client.name]["Status"] == 1, timeout=10,
             message="the client to be alive again")
    shared.wait_converged(voters=3)


# ---------------------------------------------------------------------------
# full restart


def test_full_restart_in_random_order(new_cluster):
    cluster = new_cluster("fullrestart")
    cluster.add_servers(3)
    client = cluster.add_client("c1")
    cluster.start()
    for i in range(10):
        cluster.write_anywhere(f"fr/{i}", str(i), timeout=5)
    client.register("frweb", "frweb-1", 8181)
    server = cluster.servers[0]
    wait_for(lambda: server.dns_a("frweb.service.consul") == [client.ip], timeout=10, message="frweb in DNS")

    order = list(cluster.nodes)
    RNG.shuffle(order)
    for node in order:
        node.kill9()
    started = cluster.start()
    print("restart order:", [n.name for n in started])

    leader = assert_one_leader(cluster, voters=3)
    for s in cluster.servers:
        for i in range(10):
            wait_kv(s, f"fr/{i}", str(i), mode="consistent")
    entries = leader.get_json("/v1/catalog/service/frweb")
    assert [(e["ServiceID"], e["Node"], e["ServicePort"]) for e in entries] == [("frweb-1", client.name, 8181)]
    nodes = {n["Node"] for n in leader.get_json("/v1/catalog/nodes")}
    assert nodes == {n.name for n in cluster.nodes}, nodes
    for s in cluster.servers:
        wait_for(lambda s=s: s.dns_a("frweb.service.consul") == [client.ip], timeout=10,
                 message=f"frweb in {s.name}'s DNS after the restart")
    # And the restarted cluster takes writes through the client node.
    cluster.write_anywhere("fr/after", "ok", nodes=[client], timeout=10)


# ---------------------------------------------------------------------------
# refusals


def _wait_refused(node: Node, words: Iterable[str], timeout: float = 20.0) -> str:
    code = node.wait_exit(timeout)
    if code is None:
        pytest.fail(f"{node} still running {timeout}s after a mismatched start\n{node.logs()}")
    out = node.output()
    assert code != 0, f"{node} exited 0\n{out}"
    for word in words:
        assert word in out, f"{node} output does not mention {word!r}:\n{out}"
    assert "panicked" not in out, out
    return out


def _accepts(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((ip, port)) == 0


def test_bootstrap_expect_mismatch_is_refused(new_cluster):
    cluster = new_cluster("expectmismatch")
    good = cluster.add_servers(2, expect=3)
    odd = cluster.add_server("odd", join=[s.ip for s in good], expect=5)
    for node in good:
        node.join.append(odd.ip)
    for node in good:
        node.spawn()
    wait_for(lambda: all(_accepts(n.ip, RPC_PORT) for n in good),
             timeout=15, message="the two well-configured servers to listen")
    odd.spawn()
    _wait_refused(odd, ["--bootstrap-expect", "5", "3"])

    # Only two servers expecting 3 are left: nothing may have been bootstrapped, and
    # certainly not a configuration counting the refused server as a voter.
    def nothing_bootstrapped() -> bool:
        for node in good:
            if not node.running():
                continue
            try:
                r = node.get("/v1/status/peers", timeout=0.5)
            except requests.RequestException:
                continue
            # Before a cluster forms the API answers with no peers and no leader.
            assert r.status_code == 200, f"{node.name}: peers -> {r.status_code}: {r.text}"
            if r.json() or node.leader():
                pytest.fail(f"{node.name} bootstrapped although only 2 servers expecting 3 exist "
                            f"(the one expecting 5 was refused): peers {r.json()}")
        return True

    stays(nothing_bootstrapped, 3.0, "no server to bootstrap")


def test_datacenter_mismatch_is_refused(shared, new_cluster):
    cluster = new_cluster("dcmismatch")
    stranger = cluster.add_server("dc2", join=[s.ip for s in shared.servers], expect=3, datacenter="dc2")
    stranger.spawn()
    _wait_refused(stranger, ["datacenter", "dc2", "dc1"])
    leader = shared.leader()
    assert stranger.rpc_addr not in leader.peers()
    assert stranger.name not in leader.members()


def test_datacenter_mismatch_client_is_refused(shared, new_cluster):
    cluster = new_cluster("dcmismatch-client")
    stranger = Node(cluster.root, "dcmismatch-client-c", cluster.pool.take(), server=False,
                    join=[shared.servers[0].ip], datacenter="dc9")
    cluster.nodes.append(stranger)
    stranger.spawn()
    _wait_refused(stranger, ["datacenter", "dc9"])
    assert stranger.name not in shared.leader().members()


def test_compute_node_loss_reschedules_tasks_and_reaps_orphans(new_cluster):
    cluster = new_cluster("wl")
    cluster.add_servers(3)
    clients = [cluster.add_client(f"c{i}") for i in (1, 2, 3)]
    cluster.start()
    server = cluster.leader()
    app = {
        "id": "/resched",
        "cmd": "exec python3 -m http.server $PORT0 --bind $HOST",
        "instances": 2,
        "cpus": 0.1,
        "mem": 32,
        "constraints": [["hostname", "UNIQUE"]],
    }
    created = server.put("/v2/apps/resched", json=app, timeout=10)
    assert created.status_code in (200, 201), created.text

    def running_on() -> dict[str, dict]:
        tasks = [t for t in listed_tasks(server, "/resched") if t["state"] == "TASK_RUNNING"]
        return {t["host"]: t for t in tasks}

    placed = wait_for(lambda: len(running_on()) == 2 and running_on(), timeout=30,
                      message="2 tasks running on 2 distinct compute nodes")
    victim = next(c for c in clients if c.ip in placed)
    old_task = placed[victim.ip]
    old_port = old_task["ports"][0]
    wait_for(lambda: listening(victim.ip, old_port), timeout=10, message="the task serving on its port")

    victim.kill9()
    # The lost task is replaced on the one node without an instance (UNIQUE hostname).
    spare = next(c for c in clients if c.ip not in placed)
    moved = wait_for(lambda: spare.ip in running_on() and victim.ip not in running_on() and running_on(),
                     timeout=30, message="the lost task replaced on the spare compute node")
    assert len(moved) == 2
    srv_ports = {(rd.target.to_text(), rd.port) for rr in server.dns("resched.service.consul", "SRV").answer
                 for rd in rr}
    assert len(srv_ports) == 2, srv_ports

    # The orphaned process on the node that came back is stopped, not run twice.
    victim.spawn()
    wait_for(lambda: not listening(victim.ip, old_port), timeout=30,
             message="the orphaned task on the returning node stopped")
    final = running_on()
    assert len(final) == 2 and victim.ip not in final, final
    assert len(listed_tasks(server, "/resched")) == 2
    deleted = server.delete("/v2/apps/resched?force=true", timeout=10)
    assert deleted.status_code == 200, deleted.text
    wait_for(lambda: not listed_tasks(server, "/resched") and not any(
        listening(t["host"], t["ports"][0]) for t in final.values()), timeout=30, message="app destroyed")
