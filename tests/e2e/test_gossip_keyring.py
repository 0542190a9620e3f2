"""Encryption of the WAN gossip pool, and the rotation of its key without downtime.

Two datacenters whose servers start with `--encrypt K1` form the WAN pool; a server with no
key, or with another key, cannot join it and is never seen as a member. The key is then
rotated as Consul's docs say (install K2, check every server holds it, use K2, remove K1)
while a watcher polls the members and the datacenters every 100 ms: no member may be lost or
failed on the way. A server restarted with its old `--encrypt K1` flag comes back with K2,
from the keyring file of its data dir.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time

import requests

from cluster_util import run_cli
from conftest import wait_for

WAN_PORT = 8302
ALIVE = 1


def key(byte: int) -> str:
    return base64.b64encode(bytes([byte]) * 32).decode()


K1, K2, K3 = key(1), key(2), key(3)


def wan_view(node) -> dict[str, int]:
    r = node.get("/v1/agent/members?wan=1", timeout=5)
    assert r.status_code == 200, r.text
    return {m["Name"]: m["Status"] for m in r.json()}


def keyring(node, path: str = "/v1/operator/keyring") -> list[dict]:
    r = node.get(path, timeout=15)
    assert r.status_code == 200, f"{node.name}: {r.status_code} {r.text}"
    return r.json()


def stored_keys(node) -> list[str]:
    path = node.data_dir / "serf" / "remote.keyring"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, oct(os.stat(path).st_mode)
    return json.loads(path.read_text())


class Watcher(threading.Thread):
    """Polls WAN members and datacenters of some servers every 100 ms, noting every lapse."""

    def __init__(self, nodes, members: set[str], datacenters: set[str], limit: float = 240.0) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.members = members
        self.datacenters = datacenters
        self.limit = limit
        self.stop = threading.Event()
        self.lapses: list[str] = []
        self.polls = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            for node in self.nodes:
                try:
                    view = wan_view(node)
                    missing = {m for m in self.members if view.get(m) != ALIVE}
                    if missing:
                        self.lapses.append(f"{node.name}: {missing} not alive in {view}")
                    dcs = set(node.get("/v1/catalog/datacenters", timeout=5).json())
                    if not self.datacenters <= dcs:
                        self.lapses.append(f"{node.name}: datacenters {dcs}")
                except (requests.RequestException, AssertionError, ValueError) as exc:
                    self.lapses.append(f"{node.name}: {exc!r}")
            self.polls += 1
            self.stop.wait(0.1)


def test_an_encrypted_wan_pool_refuses_outsiders_and_rotates_its_key(new_cluster):
    east = new_cluster("kreast")
    (e1,) = east.add_servers(1, datacenter="east", extra_args=["--encrypt", K1])
    west = new_cluster("krwest")
    w1, w2 = west.add_servers(2, datacenter="west", extra_args=["--encrypt", K1])
    w1.extra_args += ["--retry-join-wan", e1.ip, "--retry-interval-wan", "1"]
    # A compute node is in no gossip pool: it takes the cluster's key for its RPC requests
    # only, and sends keyring requests on to its servers.
    wc = west.add_client("c1", datacenter="west", extra_args=["--encrypt", K1])
    east.start()
    west.start()
    servers = [e1, w1, w2]
    names = {"kreast-s1.east", "krwest-s1.west", "krwest-s2.west"}

    def complete() -> bool:
        return all(wan_view(n) == {name: ALIVE for name in names} for n in servers)

    wait_for(complete, timeout=60, interval=0.25,
             message=lambda: "every server seeing the three alive\n" + "\n".join(n.logs() for n in servers))

    # Outsiders: no key, and another key. Each keeps trying to join e1 and is refused.
    outsiders = []
    for label, args in (("krplain", []), ("krother", ["--encrypt", K3])):
        cluster = new_cluster(label)
        (node,) = cluster.add_servers(1, datacenter=label,
                                      extra_args=args + ["--retry-join-wan", e1.ip, "--retry-interval-wan", "1"])
        cluster.start()
        outsiders.append(node)
    for node in outsiders:
        wait_for(lambda: node.output().count("cannot join the WAN pool yet") >= 2, timeout=30,
                 message=lambda: f"{node.name} failing to join\n{node.logs()}")
    for node in servers:
        assert set(wan_view(node)) == names, wan_view(node)
        assert set(node.get("/v1/catalog/datacenters").json()) == {"east", "west"}
    for node in outsiders:
        assert set(wan_view(node)) == {f"{node.name}.{node.datacenter}"}
    metrics = e1.get("/metrics").text
    refused = [line for line in metrics.splitlines() if line.startswith("atoll_gossip_refused_messages_total")]
    assert refused and float(refused[0].split()[-1]) > 0, refused

    wait_for(lambda: keyring(wc) == keyring(w1), timeout=30,
             message=lambda: "the compute node answering its servers' keyring listing\n" + wc.logs())
    listing = keyring(e1)
    assert [(e["WAN"], e["Datacenter"]) for e in listing] == [(True, "east"), (False, "east"), (False, "west")]
    assert listing[0]["Keys"] == {K1: 3} and listing[0]["PrimaryKeys"] == {K1: 3}
    assert [e["NumNodes"] for e in listing] == [3, 1, 2]

    watcher = Watcher(servers, names, {"east", "west"})
    watcher.start()
    try:
        # 1. Install K2 everywhere (through the CLI), and see it on every server.
        out = run_cli("keyring", "--install", K2, "--http-addr", w1.http_addr)
        assert out.returncode == 0, out.stderr
        for node in servers:
            wan = keyring(node)[0]
            assert wan["Keys"] == {K1: 3, K2: 3} and wan["PrimaryKeys"] == {K1: 3}, (node.name, wan)
        out = run_cli("keyring", "--list", "--http-addr", wc.http_addr)
        assert out.returncode == 0, out.stderr
        assert "WAN:" in out.stdout and f"{K2} [3/3]" in out.stdout and "east (LAN):" in out.stdout, out.stdout
        # 2. Use K2 (asked of the compute node).
        r = wc.put("/v1/operator/keyring", json={"Key": K2}, timeout=15)
        assert r.status_code == 200, r.text
        assert keyring(w2)[0]["PrimaryKeys"] == {K2: 3}
        # Consul's refusals: a key not installed, the primary, a malformed key.
        r = e1.put("/v1/operator/keyring", json={"Key": K3}, timeout=15)
        assert r.status_code == 500 and "Requested key is not in the keyring" in r.text, r.text
        r = e1.delete("/v1/operator/keyring", json={"Key": K2}, timeout=15)
        assert r.status_code == 500 and "Removing the primary key is not allowed" in r.text, r.text
        assert "3/3 nodes reported failure" in r.text, r.text
        r = e1.post("/v1/operator/keyring", json={"Key": "not base64!"}, timeout=15)
        assert r.status_code == 400 and r.json().get("field") == "Key", r.text
        # 3. Remove K1 (through the CLI).
        out = run_cli("keyring", "--remove", K1, "--http-addr", w2.http_addr)
        assert out.returncode == 0, out.stderr
        for node in servers:
            assert keyring(node)[0]["Keys"] == {K2: 3}
        # Some gossip rounds on the new key alone before the watcher stops.
        polls = watcher.polls
        wait_for(lambda: watcher.polls >= polls + 20, timeout=30, message="the watcher polling on")
    finally:
        watcher.stop.set()
        watcher.join(timeout=30)
    assert watcher.polls > 20, watcher.polls
    assert not watcher.lapses, watcher.lapses[:10]
    for node in servers:
        assert stored_keys(node) == [K2], node.name

    # w2 restarts, still given --encrypt K1: its keyring file (K2) wins and it comes back.
    w2.kill9()
    w2.spawn()
    west.wait_converged()
    wait_for(complete, timeout=60, interval=0.25,
             message=lambda: "the restarted server back in every WAN view\n" + w2.logs())
    local = keyring(w2, "/v1/operator/keyring?local-only=true")
    assert local[0]["Keys"] == {K2: 1} and local[0]["NumNodes"] == 1, local
    assert "--encrypt is ignored" in w2.output()
    # The outsiders are still out.
    for node in servers:
        assert set(wan_view(node)) == names
