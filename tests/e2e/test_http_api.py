"""HTTP API compatibility: py-consul against atoll, plus raw requests for the wire details."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import consul
import pytest
import requests

from conftest import catalog_service_ids, wait_check_status, wait_for

# What a Consul client sees: runs against a cluster's client node too (ATOLL_E2E_TARGET=cluster).
pytestmark = pytest.mark.client_api

KIB = 1024


def index_of(resp: requests.Response) -> int:
    raw = resp.headers.get("X-Consul-Index")
    assert raw is not None, f"{resp.request.method} {resp.url} has no X-Consul-Index (headers {dict(resp.headers)})"
    return int(raw)


def service_entries(inst, name, **params):
    return inst.get_json(f"/v1/health/service/{name}", params=params)


# ---------------------------------------------------------------------------
# status / agent basics


def test_status_leader_and_peers(atoll):
    leader = atoll.consul.status.leader()
    assert isinstance(leader, str) and leader, leader
    host, _, port = leader.rpartition(":")
    assert host and port.isdigit(), leader
    peers = atoll.consul.status.peers()
    assert isinstance(peers, list)
    assert leader in peers, (leader, peers)


def test_agent_self_reports_datacenter_and_node(atoll_factory):
    inst = atoll_factory.start("custom", node="custom-node-7", datacenter="dc7")
    me = inst.consul.agent.self()
    assert me["Config"]["Datacenter"] == "dc7"
    assert me["Config"]["NodeName"] == "custom-node-7"
    assert inst.consul.catalog.datacenters() == ["dc7"]
    _, nodes = inst.consul.catalog.nodes()
    assert sorted(n["Node"] for n in nodes) == inst.node_names
    assert {n["Datacenter"] for n in nodes} == {"dc7"}


def test_agent_members(atoll):
    members = atoll.consul.agent.members()
    assert isinstance(members, list), members
    assert sorted(m["Name"] for m in members) == atoll.node_names, members
    (me,) = [m for m in members if m["Name"] == atoll.node]
    assert me["Addr"] == atoll.node_address
    for m in members:
        assert m["Status"] == 1, m
        assert isinstance(m["Port"], int), m
        assert isinstance(m["Tags"], dict), m


def test_catalog_datacenters_and_nodes(atoll):
    assert atoll.consul.catalog.datacenters() == ["dc1"]
    index, nodes = atoll.consul.catalog.nodes()
    assert int(index) >= 1
    assert sorted(n["Node"] for n in nodes) == atoll.node_names, nodes
    (mine,) = [n for n in nodes if n["Node"] == atoll.node]
    assert mine["Address"] == atoll.node_address
    # The node's ID is the one its agent reports, in the catalog and in service rows alike.
    node_id = atoll.consul.agent.self()["Config"]["NodeID"]
    assert mine["ID"] == node_id, mine
    ids = {n["Node"]: n["ID"] for n in nodes}
    assert len(set(ids.values())) == len(ids), ids
    _, rows = atoll.consul.catalog.service("consul")
    assert rows and all(r["ID"] == ids[r["Node"]] for r in rows), (rows, ids)
    for node in nodes:
        assert node["Datacenter"] == "dc1"
        assert isinstance(node["TaggedAddresses"], dict)
        assert isinstance(node["Meta"], dict)
        assert isinstance(node["CreateIndex"], int) and isinstance(node["ModifyIndex"], int)


def test_consul_service_is_in_the_catalog(atoll):
    # A Consul server always registers itself as the "consul" service (port 8300).
    _, services = atoll.consul.catalog.services()
    assert "consul" in services, services
    _, entries = atoll.consul.catalog.service("consul")
    assert sorted(e["Node"] for e in entries) == atoll.server_names
    assert {e["ServicePort"] for e in entries} == {8300}


def test_agent_checks_do_not_list_serf_health(atoll):
    # serfHealth lives in the catalog (health endpoints) only: the agent's own
    # check list holds what was registered with the agent.
    assert atoll.consul.agent.checks() == {}
    _, node_checks = atoll.consul.health.node(atoll.node)
    assert "serfHealth" in [c["CheckID"] for c in node_checks]


# ---------------------------------------------------------------------------
# headers


READ_PATHS = [
    "/v1/agent/self",
    "/v1/agent/members",
    "/v1/agent/services",
    "/v1/agent/checks",
    "/v1/catalog/datacenters",
    "/v1/catalog/nodes",
    "/v1/catalog/services",
    "/v1/catalog/service/web",
    "/v1/catalog/node/{node}",
    "/v1/health/service/web",
    "/v1/health/checks/web",
    "/v1/health/node/{node}",
    "/v1/health/state/any",
    "/v1/kv/?recurse",
    "/v1/kv/does/not/exist",
    "/v1/status/leader",
    "/v1/status/peers",
]


def test_consul_headers_on_every_read(atoll):
    atoll.register_service({"Name": "web", "Port": 80})
    atoll.put("/v1/kv/some/key", data=b"v")
    for template in READ_PATHS:
        path = template.format(node=atoll.node)
        r = atoll.get(path)
        expected = 404 if "does/not/exist" in path else 200
        assert r.status_code == expected, (path, r.status_code, r.text)
        assert index_of(r) >= 1, path
        assert r.headers.get("X-Consul-KnownLeader") == "true", (path, dict(r.headers))
        last_contact = r.headers.get("X-Consul-LastContact")
        assert last_contact is not None and last_contact.isdigit(), (path, dict(r.headers))
        if r.status_code == 200:
            assert "application/json" in r.headers.get("Content-Type", ""), (path, r.headers)
            r.json()


# ---------------------------------------------------------------------------
# agent service registration through py-consul


def test_register_service_with_py_consul_and_read_it_back(atoll):
    c = atoll.consul
    assert c.agent.service.register(
        "web",
        service_id="web-1",
        address="127.0.0.2",
        port=8080,
        tags=["v1", "primary"],
        meta={"version": "1.2"},
        check=consul.Check.ttl("30s"),
    )
    svc = c.agent.services()["web-1"]
    assert svc["ID"] == "web-1"
    assert svc["Service"] == "web"
    assert svc["Tags"] == ["v1", "primary"]
    assert svc["Address"] == "127.0.0.2"
    assert svc["Port"] == 8080 and isinstance(svc["Port"], int)
    assert svc["Meta"] == {"version": "1.2"}
    assert svc["Weights"] == {"Passing": 1, "Warning": 1}
    assert svc["EnableTagOverride"] is False
    assert svc["Datacenter"] == "dc1"

    checks = c.agent.checks()
    assert "service:web-1" in checks, checks
    check = checks["service:web-1"]
    assert check["ServiceID"] == "web-1"
    assert check["ServiceName"] == "web"
    assert check["Node"] == atoll.node
    # A TTL check starts critical until someone reports in.
    assert check["Status"] == "critical"
    assert check["Type"] == "ttl"

    def catalog_entry():
        _, entries = c.catalog.service("web")
        return entries[0] if entries else None

    entry = wait_for(catalog_entry, message="web in the catalog")
    assert entry["Node"] == atoll.node
    assert entry["Address"] == atoll.node_address
    assert entry["Datacenter"] == "dc1"
    assert entry["ServiceID"] == "web-1"
    assert entry["ServiceName"] == "web"
    assert entry["ServiceTags"] == ["v1", "primary"]
    assert entry["ServiceAddress"] == "127.0.0.2"
    assert entry["ServicePort"] == 8080
    assert entry["ServiceMeta"] == {"version": "1.2"}
    assert isinstance(entry["CreateIndex"], int) and isinstance(entry["ModifyIndex"], int)
    assert entry["ServiceWeights"] == {"Passing": 1, "Warning": 1}

    _, services = c.catalog.services()
    assert set(services["web"]) == {"v1", "primary"}


def test_service_id_defaults_to_name_and_reregister_updates(atoll):
    c = atoll.consul
    assert c.agent.service.register("cache", port=6379)
    assert "cache" in c.agent.services()
    assert c.agent.service.register("cache", port=6380, tags=["new"])
    services = c.agent.services()
    assert [k for k in services if services[k]["Service"] == "cache"] == ["cache"]
    assert services["cache"]["Port"] == 6380

    def updated():
        _, entries = c.catalog.service("cache")
        return len(entries) == 1 and entries[0]["ServicePort"] == 6380 and entries[0]["ServiceTags"] == ["new"]

    wait_for(updated, message="catalog to show the re-registered cache service once")


def test_catalog_and_health_tag_filters(atoll):
    c = atoll.consul
    c.agent.service.register("api", service_id="api-a", port=1, tags=["blue", "canary"])
    c.agent.service.register("api", service_id="api-b", port=2, tags=["green"])
    wait_for(lambda: catalog_service_ids(atoll, "api") == {"api-a", "api-b"}, message="both api instances")

    _, blue = c.catalog.service("api", tag="blue")
    assert [e["ServiceID"] for e in blue] == ["api-a"]
    _, none = c.catalog.service("api", tag="purple")
    assert none == []
    _, green = c.health.service("api", tag="green")
    assert [e["Service"]["ID"] for e in green] == ["api-b"]
    # Several tags must all match.
    _, both = c.health.service("api", tag=["blue", "canary"])
    assert [e["Service"]["ID"] for e in both] == ["api-a"]
    _, mismatch = c.health.service("api", tag=["blue", "green"])
    assert mismatch == []
    # Tags are matched case-insensitively in Consul's catalog filters.
    r = atoll.get("/v1/catalog/service/api", params={"tag": "BLUE"})
    assert [e["ServiceID"] for e in r.json()] == ["api-a"]


def test_health_service_entries_and_passing_filter(atoll):
    c = atoll.consul
    c.agent.service.register("db", service_id="db-1", port=5432, check=consul.Check.ttl("60s"))
    c.agent.service.register("db", service_id="db-2", port=5433)  # no check at all
    wait_for(lambda: catalog_service_ids(atoll, "db") == {"db-1", "db-2"}, message="db instances")

    _, entries = c.health.service("db")
    by_id = {e["Service"]["ID"]: e for e in entries}
    assert set(by_id) == {"db-1", "db-2"}
    e1 = by_id["db-1"]
    assert e1["Node"]["Node"] == atoll.node
    assert e1["Node"]["Address"] == atoll.node_address
    assert e1["Service"]["Service"] == "db"
    assert e1["Service"]["Port"] == 5432
    check_ids = sorted(ch["CheckID"] for ch in e1["Checks"])
    assert check_ids == ["serfHealth", "service:db-1"]
    serf = next(ch for ch in e1["Checks"] if ch["CheckID"] == "serfHealth")
    assert serf["Status"] == "passing" and serf["ServiceID"] == ""
    assert [ch["CheckID"] for ch in by_id["db-2"]["Checks"]] == ["serfHealth"]

    def passing_ids():
        _, entries = c.health.service("db", passing=True)
        return {e["Service"]["ID"] for e in entries}

    # db-1's TTL check starts critical.
    assert passing_ids() == {"db-2"}
    assert c.agent.check.ttl_pass("service:db-1", notes="all good")
    wait_for(lambda: passing_ids() == {"db-1", "db-2"}, message="db-1 passing")
    assert c.agent.checks()["service:db-1"]["Output"] == "all good"

    # ?passing keeps only instances whose checks are all passing: warning is out too.
    assert c.agent.check.ttl_warn("service:db-1", notes="slow")
    wait_for(lambda: passing_ids() == {"db-2"}, message="db-1 (warning) filtered by ?passing")
    _, all_entries = c.health.service("db")
    assert {e["Service"]["ID"] for e in all_entries} == {"db-1", "db-2"}

    assert c.agent.check.ttl_fail("service:db-1", notes="down")
    wait_check_status(atoll, "service:db-1", "critical")
    assert passing_ids() == {"db-2"}
    # The bare flag form (?passing with no value) means the same thing.
    raw = atoll.get_json("/v1/health/service/db?passing")
    assert {e["Service"]["ID"] for e in raw} == {"db-2"}


def test_multiple_service_checks_get_numbered_ids(atoll):
    atoll.register_service(
        {
            "ID": "multi-1",
            "Name": "multi",
            "Port": 9000,
            "Checks": [{"TTL": "60s", "Status": "passing"}, {"TTL": "60s", "Status": "passing"}],
        }
    )
    checks = atoll.get_json("/v1/agent/checks")
    assert {"service:multi-1:1", "service:multi-1:2"} <= set(checks), checks
    assert checks["service:multi-1:1"]["Status"] == "passing"
    wait_for(
        lambda: [e["Service"]["ID"] for e in service_entries(atoll, "multi", passing=1)] == ["multi-1"],
        message="multi-1 passing",
    )
    r = atoll.put("/v1/agent/check/fail/service:multi-1:2")
    assert r.status_code == 200, r.text
    wait_for(lambda: service_entries(atoll, "multi", passing=1) == [], message="multi-1 excluded")
    health_checks = atoll.get_json("/v1/health/checks/multi")
    assert sorted(ch["CheckID"] for ch in health_checks) == ["service:multi-1:1", "service:multi-1:2"]
    status = {ch["CheckID"]: ch["Status"] for ch in health_checks}
    assert status == {"service:multi-1:1": "passing", "service:multi-1:2": "critical"}


def test_deregister_service_removes_it_and_its_checks(atoll):
    c = atoll.consul
    c.agent.service.register("gone", service_id="gone-1", port=1, check=consul.Check.ttl("60s"))
    wait_for(lambda: catalog_service_ids(atoll, "gone") == {"gone-1"}, message="gone-1 in catalog")
    assert c.agent.service.deregister("gone-1")
    assert "gone-1" not in c.agent.services()
    assert "service:gone-1" not in c.agent.checks()
    wait_for(lambda: catalog_service_ids(atoll, "gone") == set(), message="gone-1 out of catalog")
    _, services = c.catalog.services()
    assert "gone" not in services
    _, checks = c.health.checks("gone")
    assert checks == []


def test_deregister_unknown_service_is_404(atoll):
    r = atoll.put("/v1/agent/service/deregister/no-such-service")
    assert r.status_code == 404, (r.status_code, r.text)
    assert "no-such-service" in r.text


# ---------------------------------------------------------------------------
# agent checks


def test_agent_check_register_update_deregister(atoll):
    c = atoll.consul
    assert c.agent.check.register("disk", check=consul.Check.ttl("60s"), check_id="disk-check", notes="n")
    check = c.agent.checks()["disk-check"]
    assert check["Name"] == "disk"
    assert check["ServiceID"] == ""
    assert check["Notes"] == "n"
    assert check["Status"] == "critical"

    r = atoll.put("/v1/agent/check/update/disk-check", json={"Status": "warning", "Output": "disk 91% full"})
    assert r.status_code == 200, r.text
    check = c.agent.checks()["disk-check"]
    assert check["Status"] == "warning"
    assert check["Output"] == "disk 91% full"

    # A node-level check shows in the node's health and state lists but in no service.
    def node_check():
        _, checks = c.health.node(atoll.node)
        return {ch["CheckID"]: ch["Status"] for ch in checks}

    wait_for(lambda: node_check().get("disk-check") == "warning", message="disk-check in health/node")
    assert node_check()["serfHealth"] == "passing"
    _, warning = c.health.state("warning")
    assert [ch["CheckID"] for ch in warning] == ["disk-check"]

    assert c.agent.check.deregister("disk-check")
    assert "disk-check" not in c.agent.checks()
    wait_for(lambda: "disk-check" not in node_check(), message="disk-check gone from health/node")


def test_check_attached_to_service_by_service_id(atoll):
    c = atoll.consul
    c.agent.service.register("queue", service_id="queue-1", port=5672)
    assert c.agent.check.register(
        "queue depth", check=consul.Check.ttl("60s"), check_id="queue-depth", service_id="queue-1"
    )
    check = c.agent.checks()["queue-depth"]
    assert check["ServiceID"] == "queue-1"
    assert check["ServiceName"] == "queue"

    def ids():
        _, checks = c.health.checks("queue")
        return sorted(ch["CheckID"] for ch in checks)

    wait_for(lambda: ids() == ["queue-depth"], message="queue-depth in health/checks/queue")
    _, passing = c.health.service("queue", passing=True)
    assert passing == []
    c.agent.check.ttl_pass("queue-depth")
    wait_for(lambda: len(c.health.service("queue", passing=True)[1]) == 1, message="queue passing")


def test_check_update_rejects_unknown_status(atoll):
    atoll.consul.agent.check.register("x", check=consul.Check.ttl("60s"), check_id="x")
    r = atoll.put("/v1/agent/check/update/x", json={"Status": "bogus"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "status" in r.text.lower()
    assert atoll.consul.agent.checks()["x"]["Status"] == "critical"


@pytest.mark.parametrize("verb", ["pass", "warn", "fail"])
def test_ttl_update_of_unknown_check_is_rejected(atoll, verb):
    before = atoll.get_json("/v1/agent/checks")
    r = atoll.put(f"/v1/agent/check/{verb}/no-such-check")
    assert r.status_code in (400, 404), (r.status_code, r.text)
    assert "no-such-check" in r.text
    assert atoll.get_json("/v1/agent/checks") == before


def test_health_state_lists(atoll):
    c = atoll.consul
    c.agent.service.register("s", service_id="s-1", port=1, check=consul.Check.ttl("60s"))
    wait_for(lambda: catalog_service_ids(atoll, "s") == {"s-1"}, message="s-1")

    def ids(state):
        _, checks = c.health.state(state)
        return sorted(ch["CheckID"] for ch in checks)

    wait_for(lambda: ids("critical") == ["service:s-1"], message="critical list")
    assert "serfHealth" in ids("passing")
    assert "service:s-1" not in ids("passing")
    # One serfHealth per node.
    assert ids("any") == sorted(["serfHealth"] * len(atoll.node_names) + ["service:s-1"])
    assert ids("warning") == []
    r = atoll.get("/v1/health/state/bogus")
    assert r.status_code == 400, (r.status_code, r.text)


# ---------------------------------------------------------------------------
# catalog register / deregister


def test_catalog_register_external_node_and_deregister(atoll):
    c = atoll.consul
    assert c.catalog.register(
        "ext-db",
        "127.0.0.5",
        service={"ID": "pg-1", "Service": "pg", "Port": 5432, "Tags": ["primary"]},
        check={"CheckID": "pg-alive", "Name": "pg alive", "Status": "passing", "ServiceID": "pg-1"},
    )
    _, nodes = c.catalog.nodes()
    assert sorted(n["Node"] for n in nodes) == sorted(atoll.node_names + ["ext-db"])

    _, node = c.catalog.node("ext-db")
    assert node["Node"]["Node"] == "ext-db"
    assert node["Node"]["Address"] == "127.0.0.5"
    assert set(node["Services"]) == {"pg-1"}
    assert node["Services"]["pg-1"]["Service"] == "pg"
    assert node["Services"]["pg-1"]["Port"] == 5432

    _, entries = c.catalog.service("pg")
    assert len(entries) == 1
    assert entries[0]["Node"] == "ext-db"
    assert entries[0]["Address"] == "127.0.0.5"
    assert entries[0]["ServiceAddress"] == ""

    _, healthy = c.health.service("pg", passing=True)
    assert [e["Service"]["ID"] for e in healthy] == ["pg-1"]
    assert "pg-alive" in [ch["CheckID"] for ch in healthy[0]["Checks"]]

    # The external node is not the agent's: its service is not in /v1/agent/services.
    assert "pg-1" not in c.agent.services()

    assert c.catalog.deregister("ext-db", service_id="pg-1")
    _, entries = c.catalog.service("pg")
    assert entries == []
    _, node = c.catalog.node("ext-db")
    assert not node["Services"], node

    assert c.catalog.deregister("ext-db")
    _, nodes = c.catalog.nodes()
    assert sorted(n["Node"] for n in nodes) == atoll.node_names


def test_catalog_register_rejects_missing_node_and_address(atoll):
    before = atoll.get_json("/v1/catalog/nodes")
    r = atoll.put("/v1/catalog/register", json={"Address": "127.0.0.9"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "node" in r.text.lower()
    r = atoll.put("/v1/catalog/register", json={"Node": "no-address"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "address" in r.text.lower()
    assert atoll.get_json("/v1/catalog/nodes") == before


# ---------------------------------------------------------------------------
# bad input


BAD_REGISTRATIONS = [
    pytest.param(b'{"Name": "web", "Port": 80', "decode", id="truncated-json"),
    pytest.param(b"not json at all", "decode", id="garbage"),
    pytest.param(b'{"Name": "web", "Port": "eighty"}', "port", id="port-string"),
    pytest.param(b'{"Name": 5, "Port": 80}', "name", id="name-number"),
    pytest.param(b'{"Name": "web", "Tags": "a,b"}', "tags", id="tags-string"),
    pytest.param(b'{"Name": ""}', "name", id="empty-name"),
    pytest.param(b'{"Port": 80}', "name", id="missing-name"),
    pytest.param(b'{"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/"}}', "interval", id="http-no-interval"),
]


@pytest.mark.parametrize("body,word", BAD_REGISTRATIONS)
def test_bad_service_registration_is_rejected_and_not_stored(atoll, body, word):
    index_before = index_of(atoll.get("/v1/catalog/services"))
    checks_before = atoll.get_json("/v1/agent/checks")
    r = atoll.put("/v1/agent/service/register", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.text.strip(), "error body must say what is wrong"
    assert word in r.text.lower(), f"error {r.text!r} does not mention {word!r}"
    assert atoll.get_json("/v1/agent/services") == {}
    assert atoll.get_json("/v1/agent/checks") == checks_before
    after = atoll.get("/v1/catalog/services")
    assert "web" not in after.json()
    assert index_of(after) == index_before, "a rejected write must not advance the index"


def test_bad_check_registration_is_rejected(atoll):
    before = atoll.get_json("/v1/agent/checks")
    r = atoll.put("/v1/agent/check/register", json={"TTL": "10s"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "name" in r.text.lower()
    r = atoll.put("/v1/agent/check/register", data=b'{"Name": "c", "TTL": 10', headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert atoll.get_json("/v1/agent/checks") == before


def test_error_bodies_are_json_naming_the_field(atoll):
    # atoll departs from Consul here on purpose: errors are a JSON object with the message
    # and, when one field is at fault, its name (clients that print the body still work).
    r = atoll.put("/v1/agent/service/register", data=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    assert "decode" in r.json()["error"], r.text
    r = atoll.put("/v1/agent/service/register", json={"Name": "web", "Port": "eighty"})
    assert r.status_code == 400
    assert r.json()["field"].lower() == "port", r.text


def test_wrong_method_is_405(atoll):
    r = atoll.get("/v1/agent/service/register")
    assert r.status_code == 405, (r.status_code, r.text)
    r = atoll.delete("/v1/catalog/services")
    assert r.status_code == 405, (r.status_code, r.text)


# ---------------------------------------------------------------------------
# KV


def test_kv_put_get_flags_and_indexes(atoll):
    kv = atoll.consul.kv
    assert kv.put("app/config", "v1") is True
    index, item = kv.get("app/config")
    assert int(index) >= item["ModifyIndex"]
    assert item["Key"] == "app/config"
    assert item["Value"] == b"v1"
    assert item["Flags"] == 0
    assert item["LockIndex"] == 0
    assert item["CreateIndex"] == item["ModifyIndex"]
    created = item["CreateIndex"]

    assert kv.put("app/config", "v2", flags=42) is True
    _, item = kv.get("app/config")
    assert item["Value"] == b"v2"
    assert item["Flags"] == 42
    assert item["CreateIndex"] == created
    assert item["ModifyIndex"] > created

    assert kv.put("app/big-flags", "x", flags=2**64 - 1) is True
    assert kv.get("app/big-flags")[1]["Flags"] == 2**64 - 1

    index, missing = kv.get("app/missing")
    assert missing is None
    assert int(index) >= 1


def test_kv_binary_empty_and_unicode_keys(atoll):
    kv = atoll.consul.kv
    blob = bytes(range(256)) * 4 + b"\x00\xff\xfe"
    assert kv.put("bin/blob", blob) is True
    assert kv.get("bin/blob")[1]["Value"] == blob
    r = atoll.get("/v1/kv/bin/blob", params={"raw": ""})
    assert r.status_code == 200
    assert r.content == blob

    # An empty value is stored as null, as Consul does.
    assert kv.put("bin/empty", b"") is True
    r = atoll.get("/v1/kv/bin/empty")
    assert r.status_code == 200
    assert r.json()[0]["Value"] is None

    key = "unicode/ünï cödé/key"
    assert kv.put(key, "ok") is True
    _, item = kv.get(key)
    assert item["Key"] == key
    assert item["Value"] == b"ok"


def test_kv_raw_json_shape(atoll):
    atoll.put("/v1/kv/shape", data=b"hello")
    data = atoll.get_json("/v1/kv/shape")
    assert isinstance(data, list) and len(data) == 1
    item = data[0]
    assert set(item) >= {"Key", "Value", "Flags", "CreateIndex", "ModifyIndex", "LockIndex"}
    assert base64.b64decode(item["Value"]) == b"hello"
    assert all(isinstance(item[k], int) for k in ("Flags", "CreateIndex", "ModifyIndex", "LockIndex"))


def test_kv_recurse_keys_and_separator(atoll):
    kv = atoll.consul.kv
    for key in ["cfg/a", "cfg/b", "cfg/sub/c", "cfg/sub/deeper/d", "cfgx", "other/z"]:
        assert kv.put(key, key.upper())
    _, items = kv.get("cfg/", recurse=True)
    assert [i["Key"] for i in items] == ["cfg/a", "cfg/b", "cfg/sub/c", "cfg/sub/deeper/d"]
    assert [i["Value"] for i in items] == [b"CFG/A", b"CFG/B", b"CFG/SUB/C", b"CFG/SUB/DEEPER/D"]

    _, keys = kv.get("cfg", keys=True)
    assert keys == ["cfg/a", "cfg/b", "cfg/sub/c", "cfg/sub/deeper/d", "cfgx"]
    _, keys = kv.get("cfg/", keys=True, separator="/")
    assert keys == ["cfg/a", "cfg/b", "cfg/sub/"]
    _, keys = kv.get("", keys=True, separator="/")
    assert keys == ["cfg/", "cfgx", "other/"]

    index, nothing = kv.get("nope/", recurse=True)
    assert nothing is None
    r = atoll.get("/v1/kv/nope/", params={"keys": ""})
    assert r.status_code == 404


def test_kv_cas(atoll):
    kv = atoll.consul.kv
    # cas=0: only create.
    assert kv.put("lock", "first", cas=0) is True
    assert kv.put("lock", "second", cas=0) is False
    _, item = kv.get("lock")
    assert item["Value"] == b"first"
    modify = item["ModifyIndex"]

    assert kv.put("lock", "stale", cas=modify + 1000) is False
    assert kv.get("lock")[1]["Value"] == b"first"
    assert kv.put("lock", "third", cas=modify) is True
    _, item = kv.get("lock")
    assert item["Value"] == b"third"
    assert kv.put("lock", "again", cas=modify) is False, "the old index must no longer match"

    # DELETE with cas.
    assert kv.delete("lock", cas=item["ModifyIndex"] + 1000) is False
    assert kv.get("lock")[1] is not None
    assert kv.delete("lock", cas=item["ModifyIndex"]) is True
    assert kv.get("lock")[1] is None


def test_kv_delete_single_and_recurse(atoll):
    kv = atoll.consul.kv
    for key in ["d/1", "d/2", "d/x/3", "dz", "keep/1"]:
        kv.put(key, "v")
    assert kv.delete("d/1") is True
    assert kv.get("d/1")[1] is None
    assert kv.get("d/2")[1] is not None
    assert kv.delete("d/", recurse=True) is True
    _, keys = kv.get("", keys=True)
    assert keys == ["dz", "keep/1"]
    # Deleting what is not there still succeeds.
    assert kv.delete("never/existed") is True


def test_kv_value_size_limit(atoll):
    exact = b"x" * (512 * KIB)
    r = atoll.put("/v1/kv/size/exact", data=exact)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    assert atoll.get("/v1/kv/size/exact", params={"raw": ""}).content == exact

    too_big = b"y" * (512 * KIB + 1)
    r = atoll.put("/v1/kv/size/too-big", data=too_big)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    assert r.text.strip(), "413 must explain the limit"
    assert atoll.get("/v1/kv/size/too-big").status_code == 404
    # An oversized update leaves the old value alone.
    r = atoll.put("/v1/kv/size/exact", data=too_big)
    assert r.status_code == 413
    assert atoll.get("/v1/kv/size/exact", params={"raw": ""}).content == exact


# ---------------------------------------------------------------------------
# blocking queries


def _blocking(inst, path, index, wait, timeout=60):
    sep = "&" if "?" in path else "?"
    started = time.monotonic()
    r = requests.get(inst.url(f"{path}{sep}index={index}&wait={wait}"), timeout=timeout)
    return r, time.monotonic() - started


def _blocking_cases(inst):
    """(read path, write that changes what the path returns)."""
    node = inst.node

    def reg(name, **extra):
        return lambda: inst.register_service({"Name": name, "Port": 1, **extra})

    return {
        "kv-key": ("/v1/kv/watch/me", lambda: inst.put("/v1/kv/watch/me", data=b"1")),
        "kv-prefix": ("/v1/kv/watchdir/?recurse", lambda: inst.put("/v1/kv/watchdir/x", data=b"1")),
        "kv-keys": ("/v1/kv/watchkeys/?keys", lambda: inst.put("/v1/kv/watchkeys/y", data=b"1")),
        "catalog-services": ("/v1/catalog/services", reg("b-svc")),
        "catalog-service": ("/v1/catalog/service/b-one", reg("b-one")),
        "catalog-nodes": (
            "/v1/catalog/nodes",
            lambda: inst.put("/v1/catalog/register", json={"Node": "b-node", "Address": "127.0.0.7"}),
        ),
        "catalog-node": (f"/v1/catalog/node/{node}", reg("b-on-node")),
        "health-service": ("/v1/health/service/b-hs", reg("b-hs")),
        "health-checks": ("/v1/health/checks/b-hc", reg("b-hc", Check={"TTL": "60s"})),
        "health-node": (f"/v1/health/node/{node}", reg("b-hn", Check={"TTL": "60s"})),
        "health-state": ("/v1/health/state/critical", reg("b-crit", Check={"TTL": "60s"})),
        "agent-services": ("/v1/agent/services", reg("b-agent")),
        "agent-checks": ("/v1/agent/checks", reg("b-agentc", Check={"TTL": "60s"})),
    }


BLOCKING_NAMES = [
    "kv-key",
    "kv-prefix",
    "kv-keys",
    "catalog-services",
    "catalog-service",
    "catalog-nodes",
    "catalog-node",
    "health-service",
    "health-checks",
    "health-node",
    "health-state",
    "agent-services",
    "agent-checks",
]


@pytest.mark.parametrize("case", BLOCKING_NAMES)
def test_blocking_query_returns_soon_after_a_write(atoll, case):
    path, write = _blocking_cases(atoll)[case]
    first = atoll.get(path)
    assert first.status_code in (200, 404)
    index = index_of(first)
    body_before = first.content

    result: dict = {}

    def block():
        try:
            result["resp"], result["elapsed"] = _blocking(atoll, path, index, "30s")
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    t = threading.Thread(target=block, daemon=True)
    t.start()
    write()
    t.join(timeout=15)
    assert not t.is_alive(), f"blocking query on {path} did not return within 15s of a write (wait was 30s)"
    assert "error" not in result, result.get("error")
    resp = result["resp"]
    assert resp.status_code == 200, (resp.status_code, resp.text)
    assert index_of(resp) > index, f"{path}: index {index} -> {index_of(resp)}"
    assert resp.content != body_before, f"{path}: body did not change after the write"
    assert result["elapsed"] < 10


def test_blocking_query_waits_for_the_wait_time_when_nothing_changes(atoll):
    # Prime every watched resource, then block on all of them at once.
    atoll.put("/v1/kv/idle/key", data=b"v")
    atoll.register_service({"Name": "idle", "Port": 1})
    paths = [
        "/v1/kv/idle/key",
        "/v1/kv/idle/?recurse",
        "/v1/catalog/services",
        "/v1/catalog/service/idle",
        "/v1/catalog/nodes",
        f"/v1/catalog/node/{atoll.node}",
        "/v1/health/service/idle",
        "/v1/health/state/any",
        f"/v1/health/node/{atoll.node}",
        "/v1/agent/services",
    ]
    start_indexes = {p: index_of(atoll.get(p)) for p in paths}
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = {p: pool.submit(_blocking, atoll, p, start_indexes[p], "1s") for p in paths}
        results = {p: f.result() for p, f in futures.items()}
    problems = []
    for p, (resp, elapsed) in results.items():
        if resp.status_code != 200:
            problems.append(f"{p}: status {resp.status_code}")
        elif not 0.9 <= elapsed <= 3.5:
            problems.append(f"{p}: returned after {elapsed:.2f}s (wait=1s)")
        elif index_of(resp) != start_indexes[p]:
            problems.append(f"{p}: index moved {start_indexes[p]} -> {index_of(resp)} with no write")
    assert not problems, problems


def test_blocking_query_with_stale_index_returns_immediately(atoll):
    atoll.put("/v1/kv/stale", data=b"1")
    index = index_of(atoll.get("/v1/kv/stale"))
    atoll.put("/v1/kv/stale", data=b"2")
    r, elapsed = _blocking(atoll, "/v1/kv/stale", index, "20s")
    assert elapsed < 2, elapsed
    assert index_of(r) > index
    assert base64.b64decode(r.json()[0]["Value"]) == b"2"


def test_blocking_via_py_consul_kv(atoll):
    kv = atoll.consul.kv
    kv.put("pc/key", "a")
    index, _ = kv.get("pc/key")
    started = time.monotonic()
    same_index, item = kv.get("pc/key", index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert same_index == index
    assert item["Value"] == b"a"
    assert 0.9 <= elapsed <= 3.5, elapsed


def test_index_never_goes_backwards(atoll):
    paths = ["/v1/catalog/services", "/v1/kv/mono/?recurse", "/v1/health/state/any", "/v1/catalog/nodes"]
    last = {p: index_of(atoll.get(p)) for p in paths}
    writes = []
    for i in range(12):
        writes.append(lambda i=i: atoll.put(f"/v1/kv/mono/{i}", data=b"x"))
        writes.append(lambda i=i: atoll.register_service({"Name": f"mono{i % 3}", "ID": f"mono-{i}", "Port": i + 1}))
        if i % 4 == 3:
            writes.append(lambda i=i: atoll.put(f"/v1/agent/service/deregister/mono-{i - 1}"))
            writes.append(lambda i=i: atoll.delete(f"/v1/kv/mono/{i - 2}"))
    for write in writes:
        r = write()
        assert r is None or r.status_code == 200, r.text
        for p in paths:
            now = index_of(atoll.get(p))
            assert now >= last[p], f"{p}: index went back from {last[p]} to {now}"
            last[p] = now
    kv_index = index_of(atoll.get("/v1/kv/mono/?recurse"))
    atoll.put("/v1/kv/mono/final", data=b"x")
    assert index_of(atoll.get("/v1/kv/mono/?recurse")) > kv_index
