"""Prepared queries (/v1/query) through python-consul, plain HTTP and DNS (dnspython)."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from conftest import wait_for

pytestmark = pytest.mark.client_api

TIMEOUT = 3.0


def ask(inst, name, rdtype="A"):
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, inst.dns_host, timeout=TIMEOUT, port=inst.dns_port)


def answer_records(msg):
    return [(rrset.ttl, rd) for rrset in msg.answer for rd in rrset]


@pytest.fixture
def services(atoll):
    atoll.register_service({"ID": "pq-web-1", "Name": "pqweb", "Port": 8080, "Tags": ["primary"]})
    atoll.register_service(
        {"ID": "pq-web-2", "Name": "pqweb", "Port": 8081, "Tags": ["secondary"], "Address": "127.0.0.2"}
    )
    wait_for(
        lambda: len(atoll.get_json("/v1/health/service/pqweb")) == 2,
        timeout=10.0,
        message="pqweb registered",
    )
    return atoll


def test_python_consul_creates_executes_explains_and_deletes(services):
    c = services.consul
    created = c.query.create("pqweb", name="pq-web", tags=["primary"])
    query_id = created["ID"]
    listed = {q["ID"]: q for q in c.query.list()}
    assert listed[query_id]["Name"] == "pq-web"
    assert listed[query_id]["Service"]["Tags"] == ["primary"]

    result = c.query.execute("pq-web")
    assert result["Service"] == "pqweb"
    assert result["Datacenter"] == "dc1"
    assert result["Failovers"] == 0
    assert [n["Service"]["ID"] for n in result["Nodes"]] == ["pq-web-1"]
    assert c.query.execute(query_id)["Nodes"][0]["Service"]["ID"] == "pq-web-1"

    explained = c.query.explain("pq-web")
    assert explained["Query"]["Service"]["Service"] == "pqweb"
    c.query.delete(query_id)
    assert query_id not in [q["ID"] for q in c.query.list()]
    r = services.get("/v1/query/pq-web/execute")
    assert (r.status_code, r.text) == (404, "Query not found")


def test_templates_render_the_name_asked_for(services):
    r = services.post(
        "/v1/query",
        json={
            "Name": "pq-",
            "Template": {"Type": "name_prefix_match", "Regexp": "^pq-(.+)$"},
            "Service": {"Service": "${match(1)}", "OnlyPassing": True},
        },
    )
    assert r.status_code == 200, r.text
    result = services.get_json("/v1/query/pq-pqweb/execute?limit=1")
    assert result["Service"] == "pqweb"
    assert len(result["Nodes"]) == 1
    explained = services.get_json("/v1/query/pq-other/explain")
    assert explained["Query"]["Service"]["Service"] == "other"
    assert services.get_json("/v1/query/pq-other/execute")["Nodes"] == []
    services.delete(f"/v1/query/{r.json()['ID']}")


def test_bad_definitions_are_refused(services):
    r = services.post("/v1/query", json={"Name": "nothing"})
    assert r.status_code == 400
    assert "Must provide a Service name to query" in r.text
    r = services.post("/v1/query", json={"Service": {"Service": "x"}, "Template": {"Type": "glob"}})
    assert r.status_code == 400
    assert "Bad Template.Type 'glob'" in r.text


def test_dns_answers_a_query_with_its_ttl(services):
    r = services.post("/v1/query", json={"Name": "pqdns", "Service": {"Service": "pqweb"}, "DNS": {"TTL": "15s"}})
    assert r.status_code == 200, r.text
    try:
        for name in ("pqdns.query.consul", "pqdns.query.dc1.consul"):
            msg = ask(services, name)
            assert msg.rcode() == dns.rcode.NOERROR
            records = answer_records(msg)
            assert sorted(rd.address for _, rd in records) == sorted([services.node_address, "127.0.0.2"])
            assert {ttl for ttl, _ in records} == {15}
        srv = ask(services, "pqdns.query.consul", "SRV")
        assert sorted(rd.port for _, rd in answer_records(srv)) == [8080, 8081]
        missing = ask(services, "no-such-query.query.consul")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert any(rrset.rdtype == dns.rdatatype.SOA for rrset in missing.authority)
    finally:
        services.delete(f"/v1/query/{r.json()['ID']}")
