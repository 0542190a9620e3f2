"""Multi-datacenter federation: three datacenters on one machine, joined over the WAN pool.

dc1 (3 servers + 1 compute node), dc2 and dc3 (1 server + 1 compute node
each) run on 127.0.1.x, 127.0.2.x and 127.0.3.x (federation_util.py). Only
the server of dc2 and the server of dc3 are given `--retry-join-wan`, each
naming one server of dc1: everything else (dc1's other servers, dc2 and dc3
knowing each other) must follow from those two joins.

The datacenters are started once for the module; every test leaves them as
it found them (a cut is healed, a killed server started again), and each
test first waits until every server's WAN pool lists every server alive, so
the tests do not depend on their order.

What is checked, as Consul 1.10 behaves: the WAN members and their fields
(HTTP and `atoll members --wan`); the datacenter list, local first; `?dc=`
reads, writes and blocking queries through py-consul and plain HTTP from a
compute node of dc1 (two hops: its server, then a server of the target);
`No path to datacenter` for an unknown datacenter (HTTP 500, DNS NXDOMAIN
with SOA); every DNS form for a remote datacenter with dnspython and dig;
prepared queries failing over to the nearest datacenters and a catch-all
template; Marathon apps deployed into another datacenter; a datacenter cut
off by iptables (it keeps serving itself, the others answer `Remote DC has
no server currently reachable` fast and see its server failed, then alive
again after the heal); a datacenter whose server restarts without any WAN
flag coming back by itself; and a leader killed under a remote blocking
query.

Not marked client_api: it runs in the `dev` pass of scripts/test.sh only.
"""

from __future__ import annotations

import json
import os
import threading
import time

import dns.exception
import dns.rcode
import dns.rdatatype
import pytest
import requests

from apps_util import kill_task_processes, task_processes
from cluster_util import run_cli
from conftest import require, require_binary, require_tool, wait_for
from federation_util import (ALIVE, DNS_PORT, FAILED, HTTP_PORT, RPC_PORT, WAN_PORT, Federation, dig, dns_query,
                             running, session_from, wan_members)

try:  # py-consul
    import consul
except ImportError:  # pragma: no cover - reported by require()
    consul = None


FAST_FAILURE = 2.5  # seconds: an unreachable datacenter is reported within this (2 s + slack)
FAILURE_DETECTION = 60.0  # cut -> the cut server shown failed (the WAN profile's bound, generous)
RECOVERY = 60.0  # healed -> alive again and requests through
BLOCK_SLACK = 3.0  # a change -> the parked remote query answers within this
WEB_PORT = 8080
DATACENTERS_REFRESH = 15.0  # a full pool -> every compute node lists every datacenter


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def fed(tmp_path_factory, request):
    """The three datacenters, federated, with `web` registered in each (dc1's behind a TTL check)."""
    require_binary()
    federation = Federation(tmp_path_factory.mktemp("federation"))

    def start() -> None:
        federation.start()
        _register_services(federation)

    # Tasks outlive a killed compute node: stop what the app test may have left.
    yield from running(federation, request, "federation", start, cleanup=lambda: kill_task_processes(APP_PREFIX))


@pytest.fixture(autouse=True)
def whole_pool(fed):
    """Each test starts from (and an earlier test must have restored) the full pool, every server alive."""
    fed.wait_wan()
    yield
    fed.check_exits()


def _register_services(fed: Federation) -> None:
    dc1, dc2, dc3 = fed["dc1"].client, fed["dc2"].client, fed["dc3"].client
    dc2.put("/v1/agent/service/register",
            json={"Name": "web", "ID": "web-dc2", "Tags": ["primary"], "Port": WEB_PORT}).raise_for_status()
    dc3.put("/v1/agent/service/register", json={"Name": "web", "ID": "web-dc3", "Port": WEB_PORT}).raise_for_status()
    dc3.put("/v1/agent/service/register",
            json={"Name": "only-in-dc3", "ID": "only-in-dc3", "Port": WEB_PORT}).raise_for_status()
    dc1.put("/v1/agent/service/register",
            json={"Name": "web", "ID": "web-dc1", "Port": WEB_PORT,
                  "Check": {"CheckID": "web-dc1-ttl", "TTL": "30m", "Status": "passing"}}).raise_for_status()
    for dc, name in (("dc1", "web"), ("dc2", "web"), ("dc3", "web"), ("dc3", "only-in-dc3")):
        server = fed[dc].server
        wait_for(lambda: server.get_json(f"/v1/health/service/{name}?passing"), timeout=15, interval=0.1,
                 message=f"{name} passing in {dc}")


# ---------------------------------------------------------------------------
# helpers


def _timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def _a_records(msg) -> list[str]:
    return sorted(rd.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def _soa_in_authority(msg) -> bool:
    return any(rrset.rdtype == dns.rdatatype.SOA for rrset in msg.authority)


def _py_consul(node):
    require(consul is not None, "python package py-consul not installed")
    return consul.Consul(host=node.ip, port=HTTP_PORT, connections_timeout=15)


def _kv_index(node, key: str, dc: str | None = None) -> int:
    query = f"?dc={dc}" if dc else ""
    r = node.get(f"/v1/kv/{key}{query}")
    assert r.status_code in (200, 404), f"{node.name}: GET {key}{query} -> {r.status_code}: {r.text}"
    return int(r.headers["X-Consul-Index"])


def _blocking_get(node, path: str, timeout: float, out: dict) -> None:
    start = time.monotonic()
    try:
        out["response"] = node.get(path, timeout=timeout)
    except requests.RequestException as exc:
        out["error"] = exc
    out["elapsed"] = time.monotonic() - start


def _members_cli(node) -> str:
    proc = run_cli("members", "--wan", "--http-addr", node.http_addr)
    assert proc.returncode == 0, f"atoll members --wan -> {proc.returncode}: {proc.stdout} {proc.stderr}"
    return proc.stdout


def _cli_row(output: str, name: str) -> list[str]:
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, f"no single row for {name} in:\n{output}"
    return rows[0]


# ---------------------------------------------------------------------------
# the pool


def test_one_join_per_datacenter_federates_every_server(fed):
    # As started: one server of dc2 and one of dc3 were given one WAN join each, nobody else
    # (the restart test starts dc2's again without it).
    joiners = [dc.server.name for dc in fed.dcs.values() if dc.join_wan is not None]
    assert joiners == ["dc2-s1", "dc3-s1"], joiners
    assert not [s.name for s in fed.servers if "--retry-join-wan" in s.extra_args and s.name not in joiners]
    expected = fed.wan_names()
    assert len(expected) == 5
    for dc in fed.dcs.values():
        for server in dc.servers:
            members = wan_members(server)
            assert set(members) == expected, f"{server.name}: {sorted(members)}"
            for name, member in members.items():
                owner = fed[name.split(".", 1)[1]]
                node = owner.node(name.split(".", 1)[0])
                assert member["Status"] == ALIVE, member
                assert member["Addr"] == node.ip and member["Port"] == WAN_PORT, member
                tags = member["Tags"]
                assert tags["role"] == "consul" and tags["dc"] == owner.name, member
                assert tags["port"] == str(RPC_PORT), member
                assert (tags["vsn"], tags["vsn_min"], tags["vsn_max"], tags["raft_vsn"]) == ("2", "2", "3", "3")
                assert tags["segment"] == "" and tags["acls"] == "0", member
                assert tags["id"] and tags["build"], member
                assert tags["http"] == f"{node.ip}:{HTTP_PORT}" and tags["dns"] == f"{node.ip}:{DNS_PORT}", member
                assert (member["ProtocolMin"], member["ProtocolMax"], member["ProtocolCur"]) == (1, 5, 2), member
                assert (member["DelegateMin"], member["DelegateMax"], member["DelegateCur"]) == (2, 5, 4), member
    # The LAN members stay each datacenter's own.
    for dc in fed.dcs.values():
        lan = {m["Name"] for m in dc.server.get_json("/v1/agent/members")}
        assert lan == {n.name for n in dc.nodes}, (dc.name, lan)
    # The CLI shows the same pool.
    for server in (fed["dc1"].servers[1], fed["dc3"].server):
        out = _members_cli(server)
        assert out.split()[:7] == ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"], out
        for name in expected:
            row = _cli_row(out, name)
            dc = name.split(".", 1)[1]
            ip = fed[dc].node(name.split(".", 1)[0]).ip
            assert row[1].startswith(f"{ip}:"), row
            assert row[2] == "alive" and row[3] == "server" and row[-1] == dc, row
    # Compute nodes are not in the WAN pool and cannot join it.
    for dc in fed.dcs.values():
        for client in dc.clients:
            assert client.get_json("/v1/agent/members?wan=1") == [], client.name
            r = client.put(f"/v1/agent/join/{fed['dc1'].server.ip}?wan=1")
            assert r.status_code == 500 and "Must be a server to join WAN cluster" in r.text, (r.status_code, r.text)
    # Joining again through the CLI is harmless.
    proc = run_cli("join", "--wan", "--http-addr", fed["dc2"].server.http_addr, fed["dc1"].servers[2].ip)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    proc = run_cli("join", "--wan", "--http-addr", fed["dc2"].client.http_addr, fed["dc1"].server.ip)
    assert proc.returncode != 0 and "Must be a server to join WAN cluster" in proc.stdout + proc.stderr, proc


def test_every_node_lists_every_datacenter_local_first(fed):
    for dc in fed.dcs.values():
        for node in dc.nodes:
            # A compute node relearns the list from its servers every few seconds.
            listed = wait_for(lambda: (lambda got: got if sorted(got) == ["dc1", "dc2", "dc3"] else None)(
                node.get_json("/v1/catalog/datacenters")), timeout=DATACENTERS_REFRESH, interval=0.2,
                message=f"{node.name} to list the three datacenters")
            assert listed[0] == dc.name, (node.name, listed)
        for server in dc.servers:
            areas = server.get_json("/v1/coordinate/datacenters")
            assert [a["Datacenter"] for a in areas][0] == dc.name, areas
            assert sorted(a["Datacenter"] for a in areas) == ["dc1", "dc2", "dc3"], areas
            for area in areas:
                assert area["AreaID"] == "WAN", area
                for entry in area["Coordinates"]:
                    assert entry["Node"] in fed.wan_names(), area
                    assert {"Vec", "Error", "Adjustment", "Height"} <= set(entry["Coord"]), entry


# ---------------------------------------------------------------------------
# ?dc=


def test_py_consul_reads_and_writes_another_datacenter(fed):
    origin = _py_consul(fed["dc1"].client)
    assert origin.kv.put("fed/py", "written-from-dc1", dc="dc2") is True
    _, local = _py_consul(fed["dc2"].server).kv.get("fed/py")
    assert local is not None and local["Value"] == b"written-from-dc1", local
    _, in_dc1 = origin.kv.get("fed/py")
    assert in_dc1 is None, "the write landed in dc1"
    _, remote = origin.kv.get("fed/py", dc="dc2")
    assert remote["Value"] == b"written-from-dc1", remote

    _, nodes = origin.catalog.service("web", dc="dc2")
    assert [(n["Node"], n["ServiceID"], n["Datacenter"]) for n in nodes] == [("dc2-c1", "web-dc2", "dc2")], nodes
    _, entries = origin.health.service("web", dc="dc3", passing=True)
    assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in entries] == [("dc3-c1", "web-dc3")], entries
    _, entries = origin.health.service("web", passing=True)
    assert [e["Service"]["ID"] for e in entries] == ["web-dc1"], entries


def test_remote_answers_carry_the_remote_index(fed):
    server2 = fed["dc2"].server
    for i in range(3):  # move dc2's index away from where dc1's may be
        assert server2.kv_put(f"fed/bump/{i}", "x").json() is True
    assert server2.kv_put("fed/index", "v").json() is True
    for origin in (fed["dc1"].client, fed["dc1"].servers[1]):
        remote = origin.get("/v1/kv/fed/index?dc=dc2")
        assert remote.status_code == 200, remote.text
        assert remote.json()[0]["Value"] is not None
        local = server2.get("/v1/kv/fed/index")
        assert remote.headers["X-Consul-Index"] == local.headers["X-Consul-Index"], (remote.headers, local.headers)
        assert remote.json()[0]["ModifyIndex"] == local.json()[0]["ModifyIndex"]
        assert origin.get("/v1/kv/fed/index").status_code == 404, "dc1 holds the key"
        for header in ("X-Consul-KnownLeader", "X-Consul-LastContact"):
            assert header in remote.headers, remote.headers


def test_remote_blocking_query_wakes_on_a_remote_change(fed):
    origin, server2 = fed["dc1"].client, fed["dc2"].server
    assert server2.kv_put("fed/block", "before").json() is True
    index = _kv_index(origin, "fed/block", dc="dc2")
    out: dict = {}
    waiter = threading.Thread(target=_blocking_get, daemon=True,
                              args=(origin, f"/v1/kv/fed/block?dc=dc2&index={index}&wait=10s", 20.0, out))
    waiter.start()
    time.sleep(1.0)
    assert "response" not in out and "error" not in out, f"returned before any change: {out}"
    assert server2.kv_put("fed/block", "after").json() is True
    changed_at = time.monotonic()
    waiter.join(timeout=15)
    assert not waiter.is_alive(), "the remote blocking query did not answer"
    response = out.get("response")
    assert response is not None, out
    assert response.status_code == 200, response.text
    assert time.monotonic() - changed_at < BLOCK_SLACK + 0.5 and out["elapsed"] < 1.0 + BLOCK_SLACK + 0.5, out
    assert int(response.headers["X-Consul-Index"]) > index
    assert response.json()[0]["Value"] == "YWZ0ZXI="  # base64 of "after"

    # Nothing changes: it answers after about the wait (Consul adds up to a sixteenth).
    index = _kv_index(origin, "fed/block", dc="dc2")
    response, elapsed = _timed(lambda: origin.get(f"/v1/kv/fed/block?dc=dc2&index={index}&wait=3s", timeout=15))
    assert response.status_code == 200, response.text
    assert 2.8 <= elapsed <= 3 * 17 / 16 + 1.5, elapsed
    assert int(response.headers["X-Consul-Index"]) == index


def test_unknown_datacenter_has_no_path(fed):
    for origin in (fed["dc1"].server, fed["dc1"].client):
        for path in ("/v1/kv/anything?dc=nowhere", "/v1/catalog/services?dc=nowhere",
                     "/v1/health/service/web?dc=nowhere"):
            r, elapsed = _timed(lambda: origin.get(path))
            assert r.status_code == 500 and "No path to datacenter" in r.text, (origin.name, path, r.status_code, r.text)
            assert r.headers["Content-Type"].startswith("text/plain"), r.headers
            assert elapsed < FAST_FAILURE, elapsed
        # Marathon's paths answer in Marathon's error shape (a JSON message).
        r = origin.get("/v2/apps?dc=nowhere")
        assert r.status_code in (500, 503) and "No path to datacenter" in r.text, (r.status_code, r.text)

        msg = dns_query(origin.ip, "web.service.nowhere.consul")
        assert msg.rcode() == dns.rcode.NXDOMAIN and _soa_in_authority(msg), msg
        msg = dns_query(origin.ip, "dc2-c1.node.nowhere.consul", tcp=True)
        assert msg.rcode() == dns.rcode.NXDOMAIN and _soa_in_authority(msg), msg
        out = dig(origin.ip, "web.service.nowhere.consul", "A")
        assert "status: NXDOMAIN" in out and "AUTHORITY SECTION" in out and "SOA" in out, out


# ---------------------------------------------------------------------------
# DNS


def test_remote_dns_forms(fed):
    require_tool("dig")
    web2 = fed["dc2"].client.ip
    web3 = fed["dc3"].client.ip
    for origin in (fed["dc1"].server, fed["dc1"].client):
        where = origin.ip
        assert _a_records(dns_query(where, "web.service.dc2.consul")) == [web2], origin.name
        assert _a_records(dns_query(where, "web.service.dc2.consul", tcp=True)) == [web2], origin.name
        assert _a_records(dns_query(where, "web.service.dc3.consul")) == [web3], origin.name
        assert _a_records(dns_query(where, "primary.web.service.dc2.consul")) == [web2], origin.name
        missing = dns_query(where, "secondary.web.service.dc2.consul")
        assert missing.rcode() == dns.rcode.NXDOMAIN and _soa_in_authority(missing), missing

        msg = dns_query(where, "_web._tcp.service.dc2.consul", "SRV")
        srv = [rd for rrset in msg.answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset]
        assert [(rd.port, rd.target.to_text()) for rd in srv] == [(WEB_PORT, "dc2-c1.node.dc2.consul.")], msg
        extra = {rrset.name.to_text(): sorted(rd.address for rd in rrset)
                 for rrset in msg.additional if rrset.rdtype == dns.rdatatype.A}
        assert extra == {"dc2-c1.node.dc2.consul.": [web2]}, msg

        assert _a_records(dns_query(where, "dc2-c1.node.dc2.consul")) == [web2], origin.name
        assert _a_records(dns_query(where, "dc3-s1.node.dc3.consul")) == [fed["dc3"].server.ip], origin.name

        assert dig(where, "web.service.dc2.consul", "+short").split() == [web2]
        assert dig(where, "primary.web.service.dc2.consul", "+short", "+tcp").split() == [web2]
        assert dig(where, "_web._tcp.service.dc2.consul", "SRV", "+short").split() == \
            ["1", "1", str(WEB_PORT), "dc2-c1.node.dc2.consul."]
        # RFC 2782 without `service`: the datacenter follows the protocol label.
        assert dig(where, "_web._tcp.dc2.consul", "SRV", "+short").split() == \
            ["1", "1", str(WEB_PORT), "dc2-c1.node.dc2.consul."]
        assert dig(where, "dc2-c1.node.dc2.consul", "+short").split() == [web2]
    # The local names still answer locally.
    assert _a_records(dns_query(fed["dc1"].client.ip, "web.service.consul")) == [fed["dc1"].client.ip]


# ---------------------------------------------------------------------------
# prepared queries


def _execute(node, name: str) -> dict:
    r = node.get(f"/v1/query/{name}/execute")
    assert r.status_code == 200, f"{node.name}: execute {name} -> {r.status_code}: {r.text}"
    return r.json()


def _answered_from(result: dict) -> tuple[str, set[str]]:
    return result["Datacenter"], {n["Node"]["Datacenter"] for n in result["Nodes"]}


def test_prepared_query_fails_over_to_the_nearest_datacenters(fed):
    dc1 = fed["dc1"]
    origin, agent = dc1.servers[1], dc1.client
    remote_ips = {fed["dc2"].client.ip: "dc2", fed["dc3"].client.ip: "dc3"}
    created: list[str] = []
    try:
        r = origin.post("/v1/query", json={"Name": "web", "Service": {"Service": "web", "Failover": {"NearestN": 2}}})
        assert r.status_code == 200, r.text
        created.append(r.json()["ID"])
        local = _execute(agent, "web")
        assert local["Datacenter"] == "dc1" and local["Failovers"] == 0, local
        assert [n["Service"]["ID"] for n in local["Nodes"]] == ["web-dc1"], local

        # The only local instance goes critical: the answer comes from dc2 or dc3.
        agent.put("/v1/agent/check/fail/web-dc1-ttl").raise_for_status()
        remote = wait_for(lambda: (lambda res: res if res["Datacenter"] != "dc1" else None)(_execute(agent, "web")),
                          timeout=10, interval=0.1, message="the query to fail over")
        dc, node_dcs = _answered_from(remote)
        assert dc in ("dc2", "dc3") and node_dcs == {dc}, remote
        assert remote["Failovers"] >= 1 and remote["Nodes"], remote
        assert remote["Service"] == "web", remote
        for where in (origin.ip, agent.ip):
            wait_for(lambda: set(_a_records(dns_query(where, "web.query.consul"))) <= set(remote_ips)
                     and _a_records(dns_query(where, "web.query.consul")), timeout=10, interval=0.1,
                     message=f"web.query.consul on {where} to answer from another datacenter")
        # Executed in dc2 through ?dc=, it answers from dc2 with no failover.
        r = agent.get("/v1/query/web/execute?dc=dc2")
        assert r.status_code == 404 and "Query not found" in r.text, (r.status_code, r.text)

        # Recovered: local again.
        agent.put("/v1/agent/check/pass/web-dc1-ttl").raise_for_status()
        wait_for(lambda: _execute(agent, "web")["Datacenter"] == "dc1", timeout=10, interval=0.1,
                 message="the query to answer locally again")
        back = _execute(origin, "web")
        assert back["Failovers"] == 0 and [n["Service"]["ID"] for n in back["Nodes"]] == ["web-dc1"], back
        wait_for(lambda: _a_records(dns_query(agent.ip, "web.query.consul")) == [agent.ip], timeout=10,
                 interval=0.1, message="web.query.consul to answer locally again")

        # A catch-all template: any name fails over to the nearest datacenter that has it.
        r = origin.post("/v1/query", json={"Name": "", "Template": {"Type": "name_prefix_match"},
                                           "Service": {"Service": "${name.full}", "Failover": {"NearestN": 3}}})
        assert r.status_code == 200, r.text
        created.append(r.json()["ID"])
        only = _execute(agent, "only-in-dc3")
        assert only["Datacenter"] == "dc3" and only["Failovers"] >= 1, only
        assert [n["Service"]["ID"] for n in only["Nodes"]] == ["only-in-dc3"], only
        explained = origin.get_json("/v1/query/only-in-dc3/explain")
        assert explained["Query"]["Service"]["Service"] == "only-in-dc3", explained
        for where in (origin.ip, agent.ip):
            assert _a_records(dns_query(where, "only-in-dc3.query.consul")) == [fed["dc3"].client.ip], where
        assert dig(agent.ip, "only-in-dc3.query.consul", "+short").split() == [fed["dc3"].client.ip]
    finally:
        agent.put("/v1/agent/check/pass/web-dc1-ttl")
        for query_id in created:
            origin.delete(f"/v1/query/{query_id}")


# ---------------------------------------------------------------------------
# Marathon


APP_PREFIX = "/fed-hello"  # every app id of the module starts with it


def _eventually(predicate, timeout: float) -> bool:
    """Whether predicate() becomes true within timeout (no failure when it does not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def _app(node, app_id: str, dc: str) -> dict | None:
    r = node.get(f"/v2/apps{app_id}?dc={dc}&embed=app.tasks")
    return r.json()["app"] if r.status_code == 200 else None


def test_apps_deploy_into_another_datacenter(fed, tmp_path):
    origin = fed["dc1"].client
    target = fed["dc2"]
    hello = {"id": "/fed-hello", "cmd": "sleep 1000", "instances": 1, "cpus": 0.01, "mem": 16}
    cli_app = dict(hello, id="/fed-hello-cli")
    try:
        r = origin.post("/v2/apps?dc=dc2", json=hello, timeout=15)
        assert r.status_code == 201, r.text
        app = wait_for(lambda: (lambda a: a if a and a["tasksRunning"] == 1 else None)(_app(origin, "/fed-hello", "dc2")),
                       timeout=30, interval=0.2, message=lambda: f"/fed-hello running in dc2\n{fed.logs()}")
        assert [t["host"] for t in app["tasks"]] == [target.client.ip], app["tasks"]
        assert target.server.get("/v2/apps/fed-hello").status_code == 200
        assert origin.get("/v2/apps/fed-hello").status_code == 404, "the app landed in dc1"

        path = tmp_path / "fed-hello-cli.json"
        path.write_text(json.dumps(cli_app))
        proc = run_cli("app", "deploy", str(path), "--dc", "dc2", "--http-addr", origin.http_addr, timeout=60)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        app = wait_for(lambda: (lambda a: a if a and a["tasksRunning"] == 1 else None)(
            _app(target.server, "/fed-hello-cli", "dc2")), timeout=30, interval=0.2,
            message="/fed-hello-cli running in dc2")
        assert [t["host"] for t in app["tasks"]] == [target.client.ip], app["tasks"]
        assert origin.get("/v2/apps/fed-hello-cli").status_code == 404
    finally:
        for app_id in ("fed-hello", "fed-hello-cli"):
            origin.delete(f"/v2/apps/{app_id}?dc=dc2&force=true", timeout=15)
        stopped = _eventually(lambda: not task_processes(APP_PREFIX), timeout=30)
        leftovers = kill_task_processes(APP_PREFIX)
    assert stopped and not leftovers, f"dc2's compute node left the tasks running: {leftovers}"
    assert origin.get("/v2/apps/fed-hello?dc=dc2").status_code == 404


# ---------------------------------------------------------------------------
# faults


def test_cut_off_datacenter_serves_itself_and_others_fail_fast(fed):
    require(os.geteuid() == 0, "iptables rules need root")
    require_tool("iptables", "/usr/sbin/iptables", "/sbin/iptables")
    dc1, dc3 = fed["dc1"], fed["dc3"]
    cut_name = dc3.wan_name(dc3.server)
    probe = fed.probe_ip("dc3")
    inside = session_from(probe)
    try:
        fed.cut("dc3")
        # dc3 keeps serving itself (asked from inside its own /24).
        for node in dc3.nodes:
            r = inside.put(node.url(f"/v1/kv/fed/cut/{node.name}"), data=b"local", timeout=10)
            assert r.status_code == 200 and r.json() is True, (node.name, r.status_code, r.text)
            r = inside.get(node.url(f"/v1/kv/fed/cut/{node.name}?raw"), timeout=10)
            assert r.status_code == 200 and r.text == "local", (node.name, r.status_code, r.text)
            msg = dns_query(node.ip, "web.service.consul", source=probe)
            assert _a_records(msg) == [dc3.client.ip], msg

        # The others fail fast, with the right error, from the first request on: through
        # servers that had a connection to dc3 open (the earlier ?dc=dc3 requests) and
        # through ones that had none. Every origin is tried before any failure is reported.
        wrong = []
        for origin in (dc1.server, dc1.client, *dc1.servers[1:], fed["dc2"].server):
            try:
                r, elapsed = _timed(lambda: origin.get("/v1/kv/fed/cut?dc=dc3", timeout=15))
            except requests.RequestException as exc:
                wrong.append(f"{origin.name}: HTTP {exc!r}")
                continue
            if r.status_code != 500 or "Remote DC has no server currently reachable" not in r.text \
                    or elapsed >= FAST_FAILURE:
                wrong.append(f"{origin.name}: HTTP {r.status_code} {r.text!r} after {elapsed:.2f}s")
            try:
                msg, elapsed = _timed(lambda: dns_query(origin.ip, "web.service.dc3.consul", timeout=5))
            except dns.exception.Timeout:
                wrong.append(f"{origin.name}: no DNS answer within 5s")
                continue
            if msg.rcode() != dns.rcode.SERVFAIL or elapsed >= FAST_FAILURE:
                wrong.append(f"{origin.name}: DNS {dns.rcode.to_text(msg.rcode())} after {elapsed:.2f}s")

        # dc1 sees dc3's server failed, and still lists dc3.
        for server in dc1.servers:
            wait_for(lambda: wan_members(server)[cut_name]["Status"] == FAILED, timeout=FAILURE_DETECTION,
                     interval=0.5, message=lambda: f"{server.name} to show {cut_name} failed: {wan_members(server)}")
        row = _cli_row(_members_cli(dc1.server), cut_name)
        assert row[2] == "failed", row
        assert "dc3" in dc1.server.get_json("/v1/catalog/datacenters")
        for origin in (dc1.client, *dc1.servers):
            r, elapsed = _timed(lambda: origin.get("/v1/kv/fed/cut?dc=dc3", timeout=15))
            assert r.status_code == 500 and "Remote DC has no server currently reachable" in r.text, r.text
            assert elapsed < FAST_FAILURE, elapsed
    finally:
        fed.heal()

    # Healed: alive again and requests through, with no manual step.
    for server in fed.servers:
        wait_for(lambda: wan_members(server).get(cut_name, {}).get("Status") == ALIVE, timeout=RECOVERY,
                 interval=0.5, message=lambda: f"{server.name} to show {cut_name} alive: {wan_members(server)}")
    r = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
        dc1.client.get(f"/v1/kv/fed/cut/{dc3.server.name}?dc=dc3&raw")), timeout=RECOVERY, interval=0.5,
        message="?dc=dc3 to answer again")
    assert r.text == "local"
    assert _a_records(dns_query(dc1.client.ip, "web.service.dc3.consul")) == [dc3.client.ip]
    assert not wrong, "right after the cut, requests for dc3 did not fail fast with Consul's error:\n" + \
        "\n".join(wrong)


def test_restarted_datacenter_rejoins_the_pool_by_itself(fed):
    dc1, dc2 = fed["dc1"], fed["dc2"]
    server = dc2.server
    stored = json.loads((server.data_dir / "wan-peers.json").read_text())
    assert stored["version"] == 1 and stored["peers"], stored
    # Every server of dc2 (one) is killed and started on its data dir without any WAN join flag.
    fed.restart(server, drop_args=("--retry-join-wan", "--retry-interval-wan"))
    assert "--retry-join-wan" not in server.command()
    wait_for(lambda: fed.wan_complete(), timeout=60, interval=0.5,
             message=lambda: f"{server.name} back in every WAN pool: "
             + str({s.name: wan_members(s) for s in fed.servers if s.running()}))
    # Its own pool (empty when it started) holds dc1 again, and requests pass both ways.
    assert set(wan_members(server)) == fed.wan_names()
    assert server.kv_put("fed/restarted", "yes").json() is True
    r = dc1.client.get("/v1/kv/fed/restarted?dc=dc2&raw")
    assert r.status_code == 200 and r.text == "yes", (r.status_code, r.text)
    r = dc2.client.get("/v1/catalog/nodes?dc=dc1")
    assert r.status_code == 200 and {n["Node"] for n in r.json()} == {n.name for n in dc1.nodes}, r.text


def test_leader_killed_under_a_remote_blocking_query_never_hangs(fed):
    dc1, dc2 = fed["dc1"], fed["dc2"]
    leader = dc1.leader()
    dc1.cluster.write_anywhere("fed/leader-kill", "before")
    origin = dc2.client
    index = _kv_index(origin, "fed/leader-kill", dc="dc1")
    out: dict = {}
    wait_s = 10
    waiter = threading.Thread(target=_blocking_get, daemon=True,
                              args=(origin, f"/v1/kv/fed/leader-kill?dc=dc1&index={index}&wait={wait_s}s",
                                    wait_s + 20.0, out))
    try:
        waiter.start()
        time.sleep(1.0)
        leader.kill9()
        waiter.join(timeout=wait_s + 10)
        assert not waiter.is_alive(), "the remote blocking query hung"
        assert "error" not in out, f"no answer: {out['error']!r}"
        response = out["response"]
        assert out["elapsed"] < wait_s + 5, out
        assert response.status_code == 200 or (response.status_code >= 500 and response.text.strip()), \
            (response.status_code, response.text)
    finally:
        if not leader.running():
            fed.restart(leader)
    dc1.cluster.wait_converged(voters=3, timeout=30)
