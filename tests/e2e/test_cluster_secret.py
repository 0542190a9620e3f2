"""A cluster secret (--cluster-secret-file): nodes with the same secret form a cluster,
a node with another secret is refused and stays out, and the RPC listener answers 401
to any request that does not carry the secret.

Every node is a real `atoll agent` process on its own loopback IP (cluster_util).
"""

from __future__ import annotations

import json
from pathlib import Path

import requests

from cluster_util import (
    Node,
    assert_one_leader,
    run_cli,
    wait_kv,
)
from conftest import stays, wait_for

SECRET = "c2VjcmV0LW9mLXRoZS10ZXN0LWNsdXN0ZXI="
OTHER_SECRET = "bm90LXRoZS1jbHVzdGVyJ3Mtc2VjcmV0"
REFUSED_FOR = 4.0  # how long the stranger must stay out while it keeps asking


def secret_file(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_servers_sharing_a_secret_form_and_refuse_another(new_cluster, pool, tmp_path):
    good = secret_file(tmp_path, "cluster.secret", SECRET + "\n")
    bad = secret_file(tmp_path, "other.secret", OTHER_SECRET + "\n")
    cluster = new_cluster("secret")
    cluster.add_servers(3, extra_args=["--cluster-secret-file", str(good)])
    cluster.start()
    leader = assert_one_leader(cluster, voters=3)
    cluster.write_anywhere("secret/first", "one")
    for server in cluster.servers:
        wait_kv(server, "secret/first", "one")

    # A 4th server with another secret, told of the three: refused, never a member.
    # Not added to `cluster`: its checks look at the members only.
    ip = pool.take()
    stranger = Node(cluster.root, "secret-stranger", ip, server=True, join=[s.ip for s in cluster.servers],
                    bootstrap_expect=3, extra_args=["--cluster-secret-file", str(bad)], wrap=pool.wrap(ip))
    try:
        stranger.spawn()
        wait_for(lambda: "requires its shared key" in stranger.output(), timeout=15.0,
                 message=lambda: f"{stranger.name} to log that it was refused\n{stranger.logs()}")
        assert SECRET not in stranger.output() and OTHER_SECRET not in stranger.output()
        # The servers log that they refused someone (with the caller's address, which on loopback
        # is 127.0.0.1: outgoing connections are not bound to the node's IP).
        wait_for(lambda: any("refused an RPC request without this cluster's secret" in s.output()
                             for s in cluster.servers), timeout=15.0,
                 message=lambda: f"a server to log a refusal\n{cluster.logs()}")

        def stays_out() -> bool:
            assert stranger.running(), stranger.logs()
            members = leader.members()
            peers = leader.peers()
            return stranger.name not in members and stranger.rpc_addr not in peers and stranger.leader() == ""

        stays(stays_out, REFUSED_FOR, message=lambda: f"{stranger.name} to stay out\n{cluster.logs()}")
        proc = run_cli("members", "--http-addr", leader.http_addr, "--json")
        assert proc.returncode == 0, proc.stderr
        names = {m["Name"] for m in json.loads(proc.stdout)}
        assert names == {s.name for s in cluster.servers}, names

        # The cluster keeps serving meanwhile.
        cluster.write_anywhere("secret/second", "two")
        for server in cluster.servers:
            wait_kv(server, "secret/second", "two")
    finally:
        stranger.close()
    for server in cluster.servers:
        assert SECRET not in server.output()


def test_rpc_requests_without_the_secret_get_401(new_cluster, tmp_path):
    good = secret_file(tmp_path, "cluster.secret", SECRET)
    cluster = new_cluster("secret-rpc")
    cluster.add_servers(3, extra_args=["--cluster-secret-file", str(good)])
    cluster.start()
    leader = assert_one_leader(cluster, voters=3)
    hello = f"http://{leader.rpc_addr}/cluster/hello"
    for headers in ({}, {"Authorization": f"Bearer {OTHER_SECRET}"}, {"Authorization": SECRET},
                    {"Authorization": f"Bearer {SECRET}x"}):
        r = requests.post(hello, json={}, headers=headers, timeout=5.0)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert "--cluster-secret-file" in r.text, r.text
    r = requests.post(f"http://{leader.rpc_addr}/raft/vote/1", json={}, timeout=5.0)
    assert r.status_code == 401, r.text
    # With the secret the request reaches the handler (which rejects the empty body).
    r = requests.post(hello, json={}, headers={"Authorization": f"Bearer {SECRET}"}, timeout=5.0)
    assert r.status_code not in (401, 404), r.text
    # Refusing strangers did not disturb the cluster.
    cluster.write_anywhere("secret/after-probe", "ok")


def test_an_empty_or_unreadable_secret_file_stops_the_agent(tmp_path):
    empty = secret_file(tmp_path, "empty.secret", "\n")
    for path, expected in ((empty, "empty"), (tmp_path / "missing.secret", "cannot read")):
        proc = run_cli("agent", "--server", "--bootstrap-expect", "1", "--data-dir", str(tmp_path / "data"),
                       "--cluster-secret-file", str(path), timeout=20.0)
        assert proc.returncode != 0, proc
        assert expected in proc.stderr and "--cluster-secret-file" in proc.stderr, proc.stderr
