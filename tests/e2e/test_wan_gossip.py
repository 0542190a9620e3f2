"""The WAN gossip pool the servers of every datacenter share.

One server of a datacenter joins a server of another (`--retry-join-wan`); the other servers of
its datacenter join by themselves, finding each other's WAN port in the catalog (the `consul`
service's `wan_join_port` meta). Every server keeps the peers it knows in its data dir
(`wan-peers.json`) and joins them again when it restarts, without any flag.
"""

from __future__ import annotations

import json

from conftest import wait_for

WAN_PORT = 8302


def stored_peers(node) -> set[str]:
    path = node.data_dir / "wan-peers.json"
    try:
        body = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    assert body["version"] == 1, body
    return set(body["peers"])


def wan(node) -> str:
    return f"{node.ip}:{WAN_PORT}"


def test_servers_of_two_datacenters_find_each_other_and_rejoin(new_cluster):
    east = new_cluster("waneast")
    (e1,) = east.add_servers(1, datacenter="east")
    west = new_cluster("wanwest")
    w1, w2 = west.add_servers(2, datacenter="west")
    # Only one west server is told about the other datacenter.
    w1.extra_args += ["--retry-join-wan", e1.ip]
    east.start()
    west.start()
    everyone = [e1, w1, w2]

    def all_known() -> bool:
        return all(stored_peers(n) == {wan(o) for o in everyone if o is not n} for n in everyone)

    wait_for(all_known, timeout=45, message="every server storing the other two as WAN peers")
    assert "WAN:" in w2.output() and f"{w2.ip}:{WAN_PORT}" in w2.output()

    # w2 restarts with no WAN flag: it joins the peers it stored.
    w2.kill9()
    w2.spawn()
    wait_for(lambda: "joined the WAN pool" in w2.output(), timeout=30,
             message="the restarted server joining its stored WAN peers")
    west.wait_converged()
