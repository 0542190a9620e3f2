"""The agent's own endpoints as Consul clients read them: self, members, host, version,
maintenance mode (and its effect on DNS and health), local health for load balancers,
tagged addresses, node services and user events."""

from __future__ import annotations

import base64
import threading

import dns.message
import dns.query
import dns.rdatatype
import requests

from conftest import stays, wait_for


def dns_addresses(inst, name):
    q = dns.message.make_query(name, "A")
    msg = dns.query.udp(q, inst.dns_host, timeout=3.0, port=inst.dns_port)
    return sorted(rd.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def passing_ids(inst, name):
    _, entries = inst.consul.health.service(name, passing=True)
    return sorted(e["Service"]["ID"] for e in entries)


def test_agent_self_reports_config_stats_and_member(atoll):
    me = atoll.consul.agent.self()
    config = me["Config"]
    assert config["NodeName"] == atoll.node and config["Datacenter"] == "dc1"
    assert config["Server"] is True and config["Version"]
    assert len(config["NodeID"]) == 36
    # The node's LAN coordinate (a lone dev node's stays at the origin).
    assert len(me["Coord"]["Vec"]) == 8 and me["Coord"]["Height"] > 0, me["Coord"]
    assert me["DebugConfig"]["NodeName"] == atoll.node and "DataDir" in me["DebugConfig"]
    stats = me["Stats"]
    assert stats["consul"]["server"] == "true"
    assert stats["consul"]["leader"] == "true"
    assert stats["consul"]["known_datacenters"] == "1"
    assert stats["consul"]["leader_addr"]
    raft = stats["raft"]
    assert raft["state"] == "Leader" and int(raft["term"]) >= 1
    assert int(raft["applied_index"]) >= 1 and int(raft["last_log_index"]) >= int(raft["applied_index"])
    assert raft["num_peers"] == "0"
    runtime = stats["runtime"]
    assert runtime["os"] == "linux" and int(runtime["cpu_count"]) >= 1 and int(runtime["goroutines"]) >= 1
    assert stats["build"]["version"] == config["Version"]
    assert me["Member"]["Name"] == atoll.node and me["Member"]["Status"] == 1
    assert isinstance(me["Meta"], dict)


def test_agent_members_have_consul_member_json(atoll):
    members = atoll.consul.agent.members()
    assert [m["Name"] for m in members] == [atoll.node]
    member = members[0]
    assert member["Status"] == 1 and isinstance(member["Port"], int) and member["Addr"]
    tags = member["Tags"]
    assert tags["role"] == "consul" and tags["dc"] == "dc1"
    for key in ("build", "vsn", "vsn_min", "vsn_max", "id", "segment", "port"):
        assert key in tags, key
    assert tags["id"] == atoll.consul.agent.self()["Config"]["NodeID"]
    for key in ("ProtocolMin", "ProtocolMax", "ProtocolCur", "DelegateMin", "DelegateMax", "DelegateCur"):
        assert isinstance(member[key], int), key


def test_host_version_reload_and_token(atoll):
    host = atoll.get_json("/v1/agent/host")
    assert host["Memory"]["total"] > 0 and host["Memory"]["total"] >= host["Memory"]["available"]
    assert len(host["CPU"]) >= 1 and "modelName" in host["CPU"][0]
    assert host["Host"]["os"] == "linux" and host["Host"]["hostname"]
    assert host["Disk"]["total"] > 0 and host["CollectionTime"] > 0
    assert host["Errors"] is None

    version = atoll.get_json("/v1/agent/version")
    assert set(version) == {"SHA", "BuildDate", "HumanVersion", "FIPS"}
    assert version["HumanVersion"] == atoll.consul.agent.self()["Config"]["Version"]

    resp = atoll.put("/v1/agent/reload")
    assert resp.status_code == 200 and resp.text == ""

    resp = atoll.put("/v1/agent/token/default", json={"Token": "x"})
    assert resp.status_code == 401 and resp.text == "ACL support disabled"


def test_node_maintenance_hides_every_instance(atoll):
    c = atoll.consul
    c.agent.service.register("web", service_id="web-1", port=8080)
    wait_for(lambda: dns_addresses(atoll, "web.service.consul") == [atoll.node_address], message="web in DNS")
    assert passing_ids(atoll, "web") == ["web-1"]

    assert c.agent.maintenance(True, "kernel upgrade") is True
    check = c.agent.checks()["_node_maintenance"]
    assert check["Status"] == "critical" and check["Name"] == "Node Maintenance Mode"
    assert check["Notes"] == "kernel upgrade" and check["ServiceID"] == ""
    assert passing_ids(atoll, "web") == []
    wait_for(lambda: dns_addresses(atoll, "web.service.consul") == [], message="web gone from DNS")

    # Enabling again keeps the first reason, as Consul does.
    assert c.agent.maintenance(True) is True
    assert c.agent.checks()["_node_maintenance"]["Notes"] == "kernel upgrade"

    assert c.agent.maintenance(False) is True
    assert "_node_maintenance" not in c.agent.checks()
    assert passing_ids(atoll, "web") == ["web-1"]
    wait_for(lambda: dns_addresses(atoll, "web.service.consul") == [atoll.node_address], message="web back")

    # Without a reason, Consul's default note.
    c.agent.maintenance(True)
    assert "no reason was provided" in c.agent.checks()["_node_maintenance"]["Notes"]
    c.agent.maintenance(False)


def test_service_maintenance_hides_one_instance(atoll):
    c = atoll.consul
    c.agent.service.register("api", service_id="api-1", port=9001)
    c.agent.service.register("api", service_id="api-2", port=9002, address="127.0.0.2")
    wait_for(lambda: len(dns_addresses(atoll, "api.service.consul")) == 2, message="two api instances")

    assert c.agent.service.maintenance("api-2", True, "draining") is True
    check = c.agent.checks()["_service_maintenance:api-2"]
    assert check["Status"] == "critical" and check["ServiceID"] == "api-2"
    assert check["Name"] == "Service Maintenance Mode" and check["Notes"] == "draining"
    assert passing_ids(atoll, "api") == ["api-1"]
    wait_for(lambda: dns_addresses(atoll, "api.service.consul") == [atoll.node_address], message="api-2 hidden")

    health = atoll.get("/v1/agent/health/service/id/api-2")
    assert health.status_code == 503 and health.json()["AggregatedStatus"] == "maintenance"
    text = atoll.get("/v1/agent/health/service/id/api-2", params={"format": "text"})
    assert (text.status_code, text.text) == (503, "maintenance")
    by_name = atoll.get("/v1/agent/health/service/name/api")
    assert by_name.status_code == 503
    assert sorted(e["AggregatedStatus"] for e in by_name.json()) == ["maintenance", "passing"]

    c.agent.service.maintenance("api-2", False)
    assert passing_ids(atoll, "api") == ["api-1", "api-2"]
    wait_for(lambda: len(dns_addresses(atoll, "api.service.consul")) == 2, message="api-2 back")


def test_maintenance_refuses_bad_input(atoll):
    resp = atoll.put("/v1/agent/maintenance")
    assert resp.status_code == 400 and "enable" in resp.text
    resp = atoll.put("/v1/agent/maintenance", params={"enable": "maybe"})
    assert resp.status_code == 400 and "enable" in resp.text
    resp = atoll.put("/v1/agent/service/maintenance/nope", params={"enable": "true"})
    assert resp.status_code == 404 and resp.text == 'No service registered with ID "nope"'
    assert "_node_maintenance" not in atoll.consul.agent.checks()


def test_local_health_codes_follow_the_checks(atoll):
    c = atoll.consul
    c.agent.service.register("lb", service_id="lb-1", port=7001, check={"TTL": "60s", "CheckID": "lb-ttl"})
    url = "/v1/agent/health/service/id/lb-1"
    # A new TTL check starts critical.
    assert atoll.get(url).status_code == 503
    c.agent.check.ttl_pass("lb-ttl")
    resp = atoll.get(url)
    assert resp.status_code == 200
    body = resp.json()
    assert body["AggregatedStatus"] == "passing" and body["Service"]["ID"] == "lb-1"
    assert [ch["CheckID"] for ch in body["Checks"]] == ["lb-ttl"]
    c.agent.check.ttl_warn("lb-ttl")
    assert atoll.get(url, params={"format": "text"}).status_code == 429
    assert atoll.get("/v1/agent/health/service/name/lb").status_code == 429

    missing = atoll.get("/v1/agent/health/service/id/none")
    assert missing.status_code == 404 and missing.json()["Service"] is None
    missing = atoll.get("/v1/agent/health/service/name/none", params={"format": "text"})
    assert (missing.status_code, missing.text) == (404, "ServiceName none Not Found")


def test_tagged_addresses_agent_service_and_node_services(atoll):
    body = {
        "ID": "db-1",
        "Name": "db",
        "Port": 5432,
        "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 5432}, "wan": {"address": "1.2.3.4", "port": 15432}},
    }
    atoll.register_service(body)
    svc = atoll.get_json("/v1/agent/service/db-1")
    assert svc["TaggedAddresses"] == {
        "lan": {"Address": "10.0.0.5", "Port": 5432},
        "wan": {"Address": "1.2.3.4", "Port": 15432},
    }
    assert svc["Weights"] == {"Passing": 1, "Warning": 1} and len(svc["ContentHash"]) == 16
    assert "CreateIndex" not in svc

    _, entries = atoll.consul.catalog.service("db")
    assert entries[0]["ServiceTaggedAddresses"]["wan"]["Address"] == "1.2.3.4"
    assert entries[0]["TaggedAddresses"]["lan_ipv4"] == atoll.node_address
    _, health = atoll.consul.health.service("db")
    assert health[0]["Service"]["TaggedAddresses"]["lan"]["Port"] == 5432

    node_services = atoll.get_json(f"/v1/catalog/node-services/{atoll.node}")
    assert node_services["Node"]["Node"] == atoll.node
    assert "db-1" in [s["ID"] for s in node_services["Services"]]
    assert atoll.get_json("/v1/catalog/node-services/no-such-node") == {"Node": None, "Services": []}
    _, node = atoll.consul.catalog.node(atoll.node)
    assert node["Services"]["db-1"]["TaggedAddresses"]["lan"]["Address"] == "10.0.0.5"

    bad = dict(body, TaggedAddresses={"lan": {"Port": 1}})
    resp = atoll.put("/v1/agent/service/register", json=bad)
    assert resp.status_code == 400 and "TaggedAddresses.lan.Address" in resp.text

    # A changed definition changes the content hash; ?hash= blocks while it is the same.
    before = svc["ContentHash"]
    resp = atoll.get("/v1/agent/service/db-1", params={"hash": before, "wait": "100ms"})
    assert resp.json()["ContentHash"] == before
    atoll.register_service(dict(body, Port=5433))
    assert atoll.get_json("/v1/agent/service/db-1")["ContentHash"] != before


def test_user_events_fire_list_and_block(atoll):
    c = atoll.consul
    index, events = c.event.list()
    assert events == [] and int(index) >= 1

    assert c.event.fire("deploy", "v1.2") is not None
    index, events = c.event.list(name="deploy")
    assert len(events) == 1
    event = events[0]
    assert event["Name"] == "deploy" and event["Payload"] == b"v1.2"
    assert event["Version"] == 1 and event["LTime"] >= 1 and len(event["ID"]) == 36
    raw = atoll.get_json("/v1/event/list", params={"name": "deploy"})
    assert base64.b64decode(raw[0]["Payload"]) == b"v1.2"

    # A blocking list returns when a new event arrives, with another index.
    result = {}

    def wait():
        result["answer"] = c.event.list(name="deploy", index=index, wait="30s")

    waiter = threading.Thread(target=wait)
    waiter.start()
    stays(lambda: waiter.is_alive(), 0.5, message="blocking list returned before a new event")
    fired = atoll.put("/v1/event/fire/deploy", data=b"v1.3").json()
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    new_index, events = result["answer"]
    assert new_index != index and [e["ID"] for e in events][-1] == fired["ID"]
    assert fired["LTime"] == event["LTime"] + 1 and fired["Payload"] == base64.b64encode(b"v1.3").decode()

    # Nothing new: the wait ends with the same index.
    same_index, _ = c.event.list(name="deploy", index=new_index, wait="100ms")
    assert same_index == new_index

    # Filters: an event for another node is not listed here.
    c.event.fire("elsewhere", node="^other-node$")
    c.event.fire("here", node=atoll.node)
    c.event.fire("no-such-service", service="nope")
    names = [e["Name"] for e in c.event.list()[1]]
    assert "here" in names and "elsewhere" not in names and "no-such-service" not in names


def test_event_fire_refuses_bad_input(atoll):
    resp = atoll.put("/v1/event/fire/x", params={"tag": "v1"})
    assert resp.status_code == 400 and "tag" in resp.text
    resp = atoll.put("/v1/event/fire/x", params={"node": "a{2}"})
    assert resp.status_code == 400 and "node" in resp.text
    resp = atoll.put("/v1/event/fire/x", data=b"x" * 600)
    assert resp.status_code == 400 and "payload" in resp.text
    assert atoll.consul.event.list()[1] == []


def test_events_are_kept_to_the_last_256(atoll):
    session = requests.Session()
    for i in range(260):
        resp = session.put(atoll.url("/v1/event/fire/bulk"), data=str(i).encode())
        assert resp.status_code == 200
    events = atoll.get_json("/v1/event/list")
    assert len(events) == 256
    assert base64.b64decode(events[0]["Payload"]) == b"4" and base64.b64decode(events[-1]["Payload"]) == b"259"


def test_force_leave_prune_of_unknown_node_is_404(atoll):
    resp = atoll.put("/v1/agent/force-leave/ghost", params={"prune": "1"})
    assert resp.status_code == 404
