"""`?filter=` expressions, `?node-meta=` and `?near=` on the catalog, health and agent listings.

py-consul passes `filter_expr` and `node_meta` itself; raw requests check the wire details
(status codes, error bodies, blocking indexes).
"""

from __future__ import annotations

import threading

import consul
import pytest

NODES = {
    "f-1": ("127.0.0.11", {"rack": "r1", "env": "prod"}),
    "f-2": ("127.0.0.12", {"rack": "r2", "env": "prod"}),
    "f-3": ("127.0.0.13", {"rack": "r1", "env": "staging"}),
}

# id -> (node, name, tags, port, meta, check status or None)
SERVICES = {
    "web-1": ("f-1", "web", ["primary", "v1"], 8001, {"version": "1"}, "passing"),
    "web-2": ("f-2", "web", ["secondary", "v1"], 8002, {"version": "2"}, "critical"),
    "web-3": ("f-3", "web", ["secondary", "v2"], 8003, {"version": "2"}, "warning"),
    "db-1": ("f-3", "db", ["primary"], 5432, {}, None),
}


def register_instance(inst, service_id: str, node: str, name: str, tags, port, meta, status) -> None:
    address, node_meta = NODES[node]
    body = {
        "Node": node,
        "Address": address,
        "NodeMeta": node_meta,
        "Service": {"ID": service_id, "Service": name, "Tags": tags, "Port": port, "Meta": meta},
    }
    if status is not None:
        body["Check"] = {
            "CheckID": f"{service_id}-alive",
            "Name": f"{service_id} alive",
            "Status": status,
            "ServiceID": service_id,
        }
    r = inst.put("/v1/catalog/register", json=body)
    assert r.status_code == 200, r.text


@pytest.fixture
def catalog(atoll):
    for service_id, (node, name, tags, port, meta, status) in SERVICES.items():
        register_instance(atoll, service_id, node, name, tags, port, meta, status)
    atoll.register_service({"ID": "api", "Name": "api", "Tags": ["a"], "Port": 9000, "Check": {"TTL": "60s"}})
    atoll.register_service({"ID": "cache", "Name": "cache", "Tags": ["b"], "Port": 9001, "Meta": {"tier": "hot"}})
    return atoll


def service_ids(entries) -> set[str]:
    return {e["ServiceID"] if "ServiceID" in e else e["Service"]["ID"] for e in entries}


def test_catalog_service_filter(catalog):
    c = catalog.consul

    def ids(expression: str) -> set[str]:
        _, entries = c.catalog.service("web", filter_expr=expression)
        return service_ids(entries)

    assert ids('ServiceMeta.version == "2"') == {"web-2", "web-3"}
    assert ids("primary in ServiceTags") == {"web-1"}
    assert ids("ServiceTags not contains primary") == {"web-2", "web-3"}
    assert ids("NodeMeta.rack == r1 and ServiceTags contains v2") == {"web-3"}
    assert ids('ServicePort != 8001 and not (Node == "f-2")') == {"web-3"}
    assert ids('Node matches "^f-[12]$"') == {"web-1", "web-2"}
    assert ids('NodeMeta["env"] == staging or ServiceTags contains primary') == {"web-1", "web-3"}
    # `and` binds tighter than `or`.
    assert ids("ServicePort == 8001 or ServicePort == 8002 and NodeMeta.rack == r1") == {"web-1"}
    assert ids("ServiceMeta.version == `9`") == set()
    # Combined with the endpoint's own parameters.
    _, entries = c.catalog.service("web", tag="v1", filter_expr="NodeMeta.rack == r2")
    assert service_ids(entries) == {"web-2"}


def test_health_service_filter_on_nested_fields_and_checks(catalog):
    c = catalog.consul

    def ids(expression: str, **kwargs) -> set[str]:
        _, entries = c.health.service("web", filter_expr=expression, **kwargs)
        return service_ids(entries)

    # A selector through the list of checks matches when any check does.
    assert ids("Checks.Status == critical") == {"web-2"}
    assert ids("Checks.Status != critical") == {"web-1", "web-3"}
    assert ids('Service.Meta.version == "2" and Node.Meta.rack == r2') == {"web-2"}
    assert ids("Service.Tags contains secondary and Checks is not empty") == {"web-2", "web-3"}
    assert ids('Node.Node == "f-1"', passing=True) == {"web-1"}
    assert ids("Node.Meta.env == prod", passing=True) == {"web-1"}
    assert ids("Service.Port == 8003") == {"web-3"}


def test_health_checks_state_and_node_filter(catalog):
    c = catalog.consul
    _, checks = c.health.checks("web", filter_expr="Status == warning")
    assert [ch["CheckID"] for ch in checks] == ["web-3-alive"]
    _, checks = c.health.state("any", filter_expr="ServiceName == web and Status != passing")
    assert {ch["CheckID"] for ch in checks} == {"web-2-alive", "web-3-alive"}
    _, checks = c.health.state("critical", filter_expr='Node == "f-2"')
    assert {ch["CheckID"] for ch in checks} == {"web-2-alive"}
    _, checks = c.health.node("f-3", filter_expr="ServiceTags contains v2")
    assert [ch["CheckID"] for ch in checks] == ["web-3-alive"]
    _, checks = c.health.node("f-3", filter_expr="ServiceTags contains nothing")
    assert checks == []


def test_catalog_nodes_and_node_services_filter(catalog):
    c = catalog.consul
    _, nodes = c.catalog.nodes(filter_expr="Meta.rack == r1")
    assert {n["Node"] for n in nodes} == {"f-1", "f-3"}
    _, nodes = c.catalog.nodes(filter_expr=r"Address matches `^127\.0\.0\.1[23]$`")
    assert {n["Node"] for n in nodes} == {"f-2", "f-3"}
    _, node = c.catalog.node("f-3", filter_expr='"primary" in Tags')
    assert node["Node"]["Node"] == "f-3"
    assert set(node["Services"]) == {"db-1"}
    _, node = c.catalog.node("f-3")
    assert set(node["Services"]) == {"db-1", "web-3"}


def test_agent_services_and_checks_filter(catalog):
    c = catalog.consul
    assert set(c.agent.services(filter_expr="Service == api")) == {"api"}
    assert set(c.agent.services(filter_expr="Meta.tier == hot or Port == 9000")) == {"api", "cache"}
    assert set(c.agent.services(filter_expr="b in Tags")) == {"cache"}
    assert set(c.agent.checks(filter_expr="ServiceID == api")) == {"service:api"}
    assert c.agent.checks(filter_expr="ServiceID == cache") == {}


def test_node_meta_on_catalog_and_health(catalog):
    c = catalog.consul
    _, nodes = c.catalog.nodes(node_meta={"rack": "r1", "env": "prod"})
    assert {n["Node"] for n in nodes} == {"f-1"}
    _, entries = c.catalog.service("web", node_meta={"rack": "r1"})
    assert service_ids(entries) == {"web-1", "web-3"}
    _, services = c.catalog.services(node_meta={"env": "staging"})
    assert set(services) == {"db", "web"}
    _, entries = c.health.service("web", node_meta={"env": "staging"})
    assert service_ids(entries) == {"web-3"}
    _, checks = c.health.state("any", node_meta={"rack": "r2"})
    assert {ch["CheckID"] for ch in checks} == {"web-2-alive"}
    _, checks = c.health.checks("web", node_meta={"rack": "r1"})
    assert {ch["CheckID"] for ch in checks} == {"web-1-alive", "web-3-alive"}
    # node-meta and filter together: both must hold.
    _, entries = c.health.service("web", node_meta={"rack": "r1"}, filter_expr="Service.Port == 8001")
    assert service_ids(entries) == {"web-1"}
    r = catalog.get("/v1/health/state/any", params={"node-meta": "rack"})
    assert r.status_code == 400, r.text
    assert "node-meta" in r.text


def test_near_keeps_the_order_while_no_node_has_coordinates(catalog):
    for path in ("/v1/health/service/web", "/v1/catalog/service/web", "/v1/catalog/nodes", "/v1/health/state/any"):
        plain = catalog.get_json(path)
        for near in ("_agent", "f-3", "no-such-node"):
            assert catalog.get_json(path, params={"near": near}) == plain, (path, near)


BAD_EXPRESSIONS = [
    # (expression, what the message must say)
    ("Service.Port ==", "1:16 (15): no match found, expected:"),
    ("Service.Port = 80", "1:14 (13): no match found"),
    ("(Node.Node == a", "1:16 (15): no match found"),
    ("Node.Node == a Service.Port == 1", "1:16 (15): no match found"),
    ("Service.Nope == 1", 'Selector "Service.Nope" is not valid'),
    ("Service.Port matches x", 'Invalid match operator "matches"'),
    ("Service.Port == eighty", "Failed to coerce value"),
    ('Node.Node matches "("', "Failed to compile regular expression"),
]


@pytest.mark.parametrize("expression,detail", BAD_EXPRESSIONS)
def test_bad_expressions_are_400_naming_what_is_wrong(catalog, expression, detail):
    r = catalog.get("/v1/health/service/web", params={"filter": expression})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == "filter", body
    assert body["error"].startswith("Failed to create boolean expression evaluator: "), body
    assert detail in body["error"], body
    # The catalog is untouched.
    _, entries = catalog.consul.catalog.service("web")
    assert service_ids(entries) == {"web-1", "web-2", "web-3"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/catalog/nodes",
        "/v1/catalog/service/web",
        "/v1/catalog/node/f-1",
        "/v1/health/node/f-1",
        "/v1/health/checks/web",
        "/v1/health/service/web",
        "/v1/health/state/any",
    ],
)
def test_every_filtering_endpoint_refuses_unknown_selectors(catalog, path):
    r = catalog.get(path, params={"filter": "NoSuchField == 1"})
    assert r.status_code == 400, (path, r.text)
    assert 'Selector "NoSuchField" is not valid' in r.json()["error"], r.text
    r = catalog.get(path, params={"filter": "not"})
    assert r.status_code == 400, (path, r.text)
    assert "1:4 (3): no match found" in r.json()["error"], r.text


def test_py_consul_raises_on_a_bad_expression(catalog):
    with pytest.raises(consul.ConsulException) as raised:
        catalog.consul.catalog.service("web", filter_expr="ServiceTags ===")
    assert "Failed to create boolean expression evaluator" in str(raised.value)


def test_blocking_query_with_a_filter_reports_the_unfiltered_index(catalog):
    path = "/v1/health/service/web"
    expression = 'Service.Meta.version == "3"'
    plain = catalog.get(path)
    filtered = catalog.get(path, params={"filter": expression})
    assert filtered.status_code == 200 and filtered.json() == []
    index = int(filtered.headers["X-Consul-Index"])
    assert index == int(plain.headers["X-Consul-Index"])

    answer: dict = {}

    def block():
        r = catalog.get(path, params={"filter": expression, "index": index, "wait": "30s"}, timeout=40)
        answer["response"] = r

    waiter = threading.Thread(target=block)
    waiter.start()
    try:
        register_instance(catalog, "web-4", "f-1", "web", ["v3"], 8004, {"version": "3"}, "passing")
    finally:
        waiter.join(timeout=45)
    r = answer["response"]
    assert r.status_code == 200, r.text
    # Whether the query was parked when the registration landed or started after it, the
    # answer is the new instance at an index above the one it waited on.
    assert service_ids(r.json()) == {"web-4"}
    assert int(r.headers["X-Consul-Index"]) > index
