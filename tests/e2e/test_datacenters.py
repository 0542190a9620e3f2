"""Requests for other datacenters: a server sends them to a server of that datacenter (found
in the WAN pool), a compute node relays them through the servers of its own datacenter, and
the answer comes back as it was given there. Consul's answers for an unknown datacenter come
from the server; a datacenter whose relays are all down is given up within two seconds.
"""

from __future__ import annotations

import time

import dns.rcode
import dns.rdatatype

from cluster_util import run_cli
from conftest import wait_for

RELAY_BUDGET = 2.0  # seconds a relay gets, all together, before "no server reachable"


def test_a_compute_node_relays_other_datacenters_through_its_servers(new_cluster):
    cluster = new_cluster("relay")
    cluster.add_servers(1)
    client = cluster.add_client("c1")
    cluster.start()
    server = cluster.servers[0]

    # Known locally: the datacenter list comes from a server. A compute node lists its own
    # datacenter before it has learnt its servers from its stream; until it has, a request
    # for another datacenter has nowhere to go ("no server reachable"), so wait for that too.
    wait_for(lambda: client.get_json("/v1/catalog/datacenters") == ["dc1"], timeout=15,
             message="the client to list its datacenter")
    wait_for(lambda: client.get("/v1/catalog/services?dc=dc2").text == "No path to datacenter",
             timeout=15, message="the client to relay through its server")
    assert client.get_json("/v1/agent/members?wan=1") == []
    joined = client.put("/v1/agent/join/127.0.0.1?wan=1")
    assert (joined.status_code, joined.text) == (500, "Must be a server to join WAN cluster")

    # Another datacenter: asked of the server, which does not know it.
    answer = client.get("/v1/catalog/services?dc=dc2")
    assert (answer.status_code, answer.text) == (500, "No path to datacenter")
    assert answer.headers["content-type"].startswith("text/plain")
    for header in ("X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact"):
        assert header in answer.headers
    answer = client.get("/v2/apps?dc=dc2")
    assert answer.status_code == 503 and answer.json()["message"] == "No path to datacenter"
    for tcp in (False, True):
        reply = client.dns("web.service.dc2.consul.", tcp=tcp)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert any(rrset.rdtype == dns.rdatatype.SOA for rrset in reply.authority)
    # Its own datacenter named stays local.
    assert client.get("/v1/catalog/services?dc=dc1").status_code == 200

    # The CLI adds ?dc=.
    done = run_cli("app", "list", "--dc", "dc2", "--http-addr", client.http_addr)
    assert done.returncode != 0 and "No path to datacenter" in done.stderr

    # With its server gone, the client gives up within the budget.
    server.kill9()
    started = time.monotonic()
    answer = client.get("/v1/catalog/services?dc=dc2", timeout=10)
    assert (answer.status_code, answer.text) == (500, "Remote DC has no server currently reachable")
    assert time.monotonic() - started < RELAY_BUDGET + 0.5
    started = time.monotonic()
    reply = client.dns("web.service.dc2.consul.", timeout=5)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < RELAY_BUDGET + 0.5


def test_requests_for_another_datacenter_are_answered_there(new_cluster):
    east = new_cluster("fwdeast")
    (e1,) = east.add_servers(1, datacenter="east")
    west = new_cluster("fwdwest")
    (w1,) = west.add_servers(1, datacenter="west")
    wc = west.add_client("wc1", datacenter="west")
    w1.extra_args += ["--retry-join-wan", e1.ip]
    east.start()
    west.start()
    wait_for(lambda: w1.get_json("/v1/catalog/datacenters") == ["west", "east"], timeout=45,
             message="west to know east")
    wait_for(lambda: "east" in wc.get_json("/v1/catalog/datacenters"), timeout=30,
             message="the west client to learn of east")

    assert e1.put("/v1/kv/where", data="east").json() is True
    e1.register("web", "web-east", 8080)
    for node in (w1, wc):  # a server through the WAN pool; a client through its server
        answer = node.get("/v1/kv/where?dc=east&raw")
        assert (answer.status_code, answer.text) == (200, "east"), node.name
        assert "X-Consul-Index" in answer.headers
        assert node.get("/v1/kv/where").status_code == 404  # nothing written in west
        services = node.get_json("/v1/catalog/services?dc=east")
        assert "web" in services, services
        wait_for(lambda: node.dns_a("web.service.east.consul.") == [e1.ip], timeout=10,
                 message=f"{node.name} to resolve web in east")
        reply = node.dns("web.service.nowhere.consul.")
        assert reply.rcode() == dns.rcode.NXDOMAIN

    # A write from west lands in east; a blocking query waits there.
    assert wc.put("/v1/kv/from-west?dc=east", data="hi").json() is True
    assert e1.kv_get("from-west") == "hi"
    index = int(w1.get("/v1/kv/from-west?dc=east").headers["X-Consul-Index"])
    started = time.monotonic()
    answer = w1.get(f"/v1/kv/from-west?dc=east&index={index}&wait=1s", timeout=10)
    assert answer.status_code == 200 and time.monotonic() - started >= 0.9
