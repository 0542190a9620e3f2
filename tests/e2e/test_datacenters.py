"""Requests for other datacenters on a compute node: it relays them through the servers of
its own datacenter, which decide whether the datacenter is known.

Until servers of several datacenters federate through the WAN pool, a server knows only its
own datacenter; what is checked here is the compute node's relay: Consul's answers for an
unknown datacenter come from its server, and for a datacenter whose relays are all down
the node gives up within two seconds.
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

    # Known locally: the datacenter list comes from a server.
    wait_for(lambda: client.get_json("/v1/catalog/datacenters") == ["dc1"], timeout=15,
             message="the client to list its datacenter")
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
