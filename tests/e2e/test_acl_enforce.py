"""ACL enforcement: every endpoint group allowed, denied and filtered by the caller's token, as
Consul 1.10 decides it, against `atoll dev --acl-enabled --acl-default-policy deny`.

Tokens and policies are made through Consul's API (PUT /v1/acl/bootstrap, /v1/acl/policy,
/v1/acl/token); requests carry them as py-consul's `token=`, `X-Consul-Token`,
`Authorization: Bearer` or DC/OS's `Authorization: token=`.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import require_binary, wait_for

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ACL_ARGS = ["--acl-enabled", "--acl-default-policy", "deny"]


# ---------------------------------------------------------------------------
# helpers


class Acl:
    """A node with ACLs on and its management token."""

    def __init__(self, inst, management: str) -> None:
        self.inst = inst
        self.management = management

    def headers(self, token: str | None = None) -> dict:
        return {"X-Consul-Token": token or self.management}

    def policy(self, rules: str, name: str | None = None) -> str:
        body = {"Name": name or f"p-{uuid.uuid4().hex[:8]}", "Rules": rules}
        r = self.inst.put("/v1/acl/policy", json=body, headers=self.headers())
        assert r.status_code == 200, f"policy -> {r.status_code}: {r.text}"
        return r.json()["ID"]

    def token(self, *rules: str, secret: str | None = None) -> str:
        """A token holding one policy per rules text; answers its SecretID."""
        body: dict = {"Policies": [{"ID": self.policy(text)} for text in rules]}
        if secret is not None:
            body["SecretID"] = secret
        r = self.inst.put("/v1/acl/token", json=body, headers=self.headers())
        assert r.status_code == 200, f"token -> {r.status_code}: {r.text}"
        return r.json()["SecretID"]

    def give_anonymous(self, rules: str) -> None:
        policy = self.policy(rules)
        r = self.inst.put(
            f"/v1/acl/token/{ANONYMOUS_ACCESSOR}",
            json={"Policies": [{"ID": policy}]},
            headers=self.headers(),
        )
        assert r.status_code == 200, f"anonymous token -> {r.status_code}: {r.text}"

    def as_root(self, method: str, path: str, **kwargs):
        r = getattr(self.inst, method)(path, headers=self.headers(), **kwargs)
        assert r.status_code in (200, 201), f"{method} {path} -> {r.status_code}: {r.text}"
        return r


def bootstrap(inst) -> str:
    r = wait_for(
        lambda: (lambda r: r if r.status_code == 200 else None)(inst.put("/v1/acl/bootstrap")),
        timeout=15,
        message="ACL bootstrap",
    )
    return r.json()["SecretID"]


@pytest.fixture
def acl(atoll_factory) -> Acl:
    inst = atoll_factory.start("acl", extra_args=ACL_ARGS)
    return Acl(inst, bootstrap(inst))


def status(inst, method: str, path: str, token: str | None = None, **kwargs) -> int:
    headers = {"X-Consul-Token": token} if token else {}
    return getattr(inst, method)(path, headers=headers, **kwargs).status_code


def dns_rcode_and_addresses(inst, name: str):
    q = dns.message.make_query(name, "A")
    m = dns.query.udp(q, inst.dns_host, timeout=3, port=inst.dns_port)
    return m.rcode(), sorted(rd.address for rrset in m.answer for rd in rrset)


# ---------------------------------------------------------------------------
# KV and transactions


def test_kv_is_allowed_denied_and_filtered_by_key_rules(acl):
    import consul

    inst = acl.inst
    root = consul.Consul(host=inst.node_address, port=inst.http_port, token=acl.management)
    for key in ("app/a", "app/secret/b", "other"):
        assert root.kv.put(key, "v")
    secret = acl.token('key_prefix "app/" { policy = "write" }\nkey_prefix "app/secret/" { policy = "deny" }')
    mine = consul.Consul(host=inst.node_address, port=inst.http_port, token=secret)
    anonymous = consul.Consul(host=inst.node_address, port=inst.http_port)

    assert mine.kv.put("app/new", "x")
    _, entry = mine.kv.get("app/a")
    assert entry["Value"] == b"v"
    with pytest.raises(consul.ACLPermissionDenied):
        mine.kv.put("other", "x")
    with pytest.raises(consul.ACLPermissionDenied):
        mine.kv.get("app/secret/b")
    with pytest.raises(consul.ACLPermissionDenied):
        anonymous.kv.get("app/a")
    _, entries = mine.kv.get("", recurse=True)
    assert sorted(e["Key"] for e in entries) == ["app/a", "app/new"]
    _, keys = mine.kv.get("", keys=True)
    assert keys == ["app/a", "app/new"]
    # A recursive delete needs write on everything below the prefix.
    r = inst.delete("/v1/kv/app/?recurse", headers=acl.headers(secret))
    assert r.status_code == 403 and r.text == "Permission denied"
    _, still = root.kv.get("app/secret/b")
    assert still is not None

    # A transaction with one denied operation is refused whole.
    ops = [
        {"KV": {"Verb": "set", "Key": "app/t", "Value": "dg=="}},
        {"KV": {"Verb": "set", "Key": "other", "Value": "dg=="}},
    ]
    assert inst.put("/v1/txn", json=ops, headers=acl.headers(secret)).status_code == 403
    _, missing = root.kv.get("app/t")
    assert missing is None
    assert inst.put("/v1/txn", json=ops[:1], headers=acl.headers(secret)).status_code == 200


def test_policy_precedence_exact_over_prefix_and_deny_over_write(acl):
    inst = acl.inst
    for key in ("p/a", "p/exact"):
        acl.as_root("put", f"/v1/kv/{key}", data="v")
    # Two policies on the same prefix: deny wins over write.
    merged = acl.token('key_prefix "p/" { policy = "write" }', 'key_prefix "p/" { policy = "deny" }')
    assert status(inst, "get", "/v1/kv/p/a", merged) == 403
    # An exact rule beats the longest prefix; the longest prefix beats a shorter one.
    layered = acl.token(
        'key_prefix "" { policy = "deny" }\n'
        'key_prefix "p/" { policy = "read" }\n'
        'key "p/exact" { policy = "write" }'
    )
    assert status(inst, "get", "/v1/kv/p/a", layered) == 200
    assert status(inst, "put", "/v1/kv/p/a", layered, data="x") == 403
    assert status(inst, "put", "/v1/kv/p/exact", layered, data="x") == 200
    # Every way of carrying the token.
    assert inst.get(f"/v1/kv/p/a?token={layered}").status_code == 200
    assert inst.get("/v1/kv/p/a", headers={"Authorization": f"Bearer {layered}"}).status_code == 200
    # A secret that names no token.
    r = inst.get("/v1/kv/p/a", headers={"X-Consul-Token": str(uuid.uuid4())})
    assert r.status_code == 403 and "ACL not found" in r.text


# ---------------------------------------------------------------------------
# catalog, health, agent


def test_catalog_and_health_need_service_and_node_read(acl):
    inst = acl.inst
    for node, service in (("n2", "web"), ("n2", "db"), ("n3", "web")):
        acl.as_root("put", "/v1/catalog/register", json={
            "Node": node, "Address": "127.0.0.9",
            "Service": {"ID": f"{service}-{node}", "Service": service, "Port": 80},
        })
    reader = acl.token('service_prefix "web" { policy = "read" }\nnode "n2" { policy = "read" }')
    services = inst.get_json("/v1/catalog/services", headers=acl.headers(reader))
    assert list(services) == ["web"]
    web = inst.get_json("/v1/health/service/web", headers=acl.headers(reader))
    assert [e["Node"]["Node"] for e in web] == ["n2"]
    assert inst.get_json("/v1/health/service/db", headers=acl.headers(reader)) == []
    assert inst.get_json("/v1/catalog/nodes", headers=acl.headers(reader))[0]["Node"] == "n2"
    assert inst.get_json("/v1/catalog/node/n3", headers=acl.headers(reader)) is None
    # Anonymous (default deny, no rules) sees nothing and may not register.
    assert inst.get_json("/v1/catalog/services") == {}
    assert inst.get_json("/v1/health/state/any") == []
    body = {"Node": "n2", "Address": "127.0.0.9", "Service": {"Service": "web"}}
    assert status(inst, "put", "/v1/catalog/register", None, json=body) == 403
    assert status(inst, "put", "/v1/catalog/register", reader, json=body) == 403
    writer = acl.token('service "web" { policy = "write" }\nnode "n2" { policy = "write" }')
    assert status(inst, "put", "/v1/catalog/register", writer, json=body) == 200


def test_agent_endpoints_check_agent_node_and_service_rules(acl):
    inst = acl.inst
    node = inst.node
    for method, path in (("get", "/v1/agent/self"), ("get", "/v1/agent/metrics"), ("get", "/metrics"),
                         ("put", "/v1/agent/reload")):
        assert status(inst, method, path) == 403, path
    agent_reader = acl.token(f'agent "{node}" {{ policy = "read" }}')
    assert status(inst, "get", "/v1/agent/self", agent_reader) == 200
    assert status(inst, "get", "/metrics", agent_reader) == 200
    assert status(inst, "put", "/v1/agent/reload", agent_reader) == 403
    # Members are filtered by node:read.
    assert inst.get_json("/v1/agent/members", headers=acl.headers(agent_reader)) == []
    node_reader = acl.token(f'node "{node}" {{ policy = "read" }}')
    members = inst.get_json("/v1/agent/members", headers=acl.headers(node_reader))
    assert [m["Name"] for m in members] == [node]

    registration = {"ID": "api-1", "Name": "api", "Port": 9000, "Check": {"TTL": "30s"}}
    assert status(inst, "put", "/v1/agent/service/register", agent_reader, json=registration) == 403
    api_writer = acl.token('service "api" { policy = "write" }')
    assert status(inst, "put", "/v1/agent/service/register", api_writer, json=registration) == 200
    assert status(inst, "put", "/v1/agent/check/pass/service:api-1", None) == 403
    assert status(inst, "put", "/v1/agent/check/pass/service:api-1", api_writer) == 200
    assert inst.get_json("/v1/agent/services") == {}
    assert list(inst.get_json("/v1/agent/services", headers=acl.headers(api_writer))) == ["api-1"]
    assert status(inst, "put", "/v1/agent/service/deregister/api-1", agent_reader) == 403
    assert status(inst, "put", "/v1/agent/service/deregister/api-1", api_writer) == 200
    # Operator endpoints; status stays open.
    assert status(inst, "get", "/v1/operator/raft/configuration") == 403
    operator = acl.token('operator = "read"')
    assert status(inst, "get", "/v1/operator/raft/configuration", operator) == 200
    assert status(inst, "get", "/v1/status/leader") == 200


# ---------------------------------------------------------------------------
# sessions, events, prepared queries


def test_sessions_events_and_prepared_queries(acl):
    inst = acl.inst
    node = inst.node
    ops = acl.token(
        f'session "{node}" {{ policy = "write" }}\n'
        'event_prefix "deploy" { policy = "write" }\n'
        'query_prefix "web" { policy = "write" }\n'
        'service "web" { policy = "read" }\n'
        'node_prefix "" { policy = "read" }'
    )
    r = inst.put("/v1/session/create", json={}, headers=acl.headers(ops))
    assert r.status_code == 200, r.text
    session = r.json()["ID"]
    assert status(inst, "put", "/v1/session/create", None, json={}) == 403
    assert inst.get_json("/v1/session/list") == []
    assert [s["ID"] for s in inst.get_json("/v1/session/list", headers=acl.headers(ops))] == [session]
    assert status(inst, "put", f"/v1/session/renew/{session}") == 403
    assert status(inst, "put", f"/v1/session/destroy/{session}", ops) == 200

    assert status(inst, "put", "/v1/event/fire/deploy-web", ops) == 200
    assert status(inst, "put", "/v1/event/fire/other", ops) == 403
    assert inst.get_json("/v1/event/list") == []
    assert [e["Name"] for e in inst.get_json("/v1/event/list", headers=acl.headers(ops))] == ["deploy-web"]

    acl.as_root("put", "/v1/agent/service/register", json={"ID": "web-1", "Name": "web", "Port": 80})
    query = {"Name": "web-q", "Service": {"Service": "web"}}
    r = inst.post("/v1/query", json=query, headers=acl.headers(ops))
    assert r.status_code == 200, r.text
    qid = r.json()["ID"]
    assert status(inst, "post", "/v1/query", ops, json={"Name": "db-q", "Service": {"Service": "db"}}) == 403
    assert inst.get_json("/v1/query") == []
    assert status(inst, "get", f"/v1/query/{qid}") == 403
    executed = inst.get_json(f"/v1/query/{qid}/execute", headers=acl.headers(ops))
    assert [n["Service"]["ID"] for n in executed["Nodes"]] == ["web-1"]
    # Executing without service:read finds no instance.
    assert inst.get_json(f"/v1/query/{qid}/execute")["Nodes"] == []


# ---------------------------------------------------------------------------
# the anonymous token, the agent's default token and DNS


def test_anonymous_token_with_a_policy_and_dns_answers_only_what_it_may_read(acl):
    inst = acl.inst
    acl.as_root("put", "/v1/agent/service/register", json={"ID": "web-1", "Name": "web", "Port": 80})
    acl.as_root("put", "/v1/agent/service/register", json={"ID": "db-1", "Name": "db", "Port": 81})
    assert dns_rcode_and_addresses(inst, "web.service.consul")[0] == dns.rcode.NXDOMAIN
    assert dns_rcode_and_addresses(inst, f"{inst.node}.node.consul")[0] == dns.rcode.NXDOMAIN

    acl.give_anonymous('service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
                       'key_prefix "public/" { policy = "read" }')
    acl.as_root("put", "/v1/kv/public/x", data="1")
    assert status(inst, "get", "/v1/kv/public/x") == 200
    assert list(inst.get_json("/v1/catalog/services")) == ["web"]
    wait_for(lambda: dns_rcode_and_addresses(inst, "web.service.consul")[1] == [inst.node_address],
             timeout=10, message="web answered once anonymous may read it")
    assert dns_rcode_and_addresses(inst, "db.service.consul")[0] == dns.rcode.NXDOMAIN
    assert dns_rcode_and_addresses(inst, f"{inst.node}.node.consul")[0] == dns.rcode.NOERROR


def test_the_agents_default_token_answers_requests_without_one(acl):
    inst = acl.inst
    acl.as_root("put", "/v1/agent/service/register", json={"ID": "db-1", "Name": "db", "Port": 81})
    secret = acl.token('service "db" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
                       'key_prefix "" { policy = "read" }')
    acl.as_root("put", "/v1/kv/k", data="1")
    assert status(inst, "get", "/v1/kv/k") == 403
    assert dns_rcode_and_addresses(inst, "db.service.consul")[0] == dns.rcode.NXDOMAIN
    # Set at run time: requests without a token, and DNS, use it from then on.
    acl.as_root("put", "/v1/agent/token/default", json={"Token": secret})
    assert status(inst, "get", "/v1/kv/k") == 200
    wait_for(lambda: dns_rcode_and_addresses(inst, "db.service.consul")[1] == [inst.node_address],
             timeout=10, message="db answered with the default token")
    # And from the flag, after a restart.
    inst.stop()
    inst.extra_args = ACL_ARGS + ["--acl-default-token", secret]
    inst.start()
    assert status(inst, "get", "/v1/kv/k") == 200
    assert status(inst, "put", "/v1/kv/k", data="2") == 403


# ---------------------------------------------------------------------------
# Marathon


def test_marathon_with_and_without_an_app_rule(acl):
    inst = acl.inst
    app = lambda app_id: {"id": app_id, "cmd": "sleep 600", "instances": 0, "cpus": 0.01, "mem": 8}  # noqa: E731
    acl.as_root("post", "/v2/apps", json=app("/dev/x"))
    r = inst.post("/v2/apps", json=app("/prod/web"))
    assert r.status_code == 403 and r.json() == {"message": "Permission denied"}
    assert inst.get_json("/v2/apps") == {"apps": []}
    prod = acl.token('app_prefix "/prod/" { policy = "write" }')
    dcos = {"Authorization": f"token={prod}"}
    assert inst.post("/v2/apps", json=app("/prod/web"), headers=dcos).status_code == 201
    assert status(inst, "post", "/v2/apps", prod, json=app("/dev/y")) == 403
    ids = [a["id"] for a in inst.get_json("/v2/apps", headers=dcos)["apps"]]
    assert ids == ["/prod/web"]
    assert status(inst, "get", "/v2/apps/dev/x", prod) == 403
    assert status(inst, "delete", "/v2/apps/dev/x", prod) == 403
    # An app with a deployment in progress refuses a change (409): wait for its creation's.
    wait_for(lambda: inst.get_json("/v2/apps/prod/web", headers=dcos)["app"]["deployments"] == [],
             timeout=20, message="/prod/web's first deployment to finish")
    assert status(inst, "put", "/v2/apps/prod/web", prod, json={"instances": 0, "cmd": "sleep 601"}) in (200, 201)
    assert status(inst, "delete", "/v2/groups/dev", prod) == 403
    text = inst.get("/v2/groups", headers=dcos).text
    assert "/prod/web" in text and "/dev/x" not in text
    for deployment in inst.get_json("/v2/deployments", headers=dcos):
        assert "/dev/" not in str(deployment)
    assert inst.get("/v2/info").status_code == 200
    assert inst.get("/ping").status_code == 200


# ---------------------------------------------------------------------------
# the command line


def test_the_cli_sends_its_token_from_the_flag_or_the_environment(acl):
    inst = acl.inst
    secret = acl.token('key_prefix "cli/" { policy = "write" }')
    exe = str(require_binary())
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATOLL_HTTP_ADDR", "CONSUL_HTTP_ADDR", "ATOLL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN")}

    def kv_put(key, *extra, environment=None):
        return subprocess.run([exe, "kv", "put", key, "v", "--http-addr", inst.http_addr, *extra],
                              capture_output=True, timeout=30, env=environment or env,
                              stdin=subprocess.DEVNULL)

    denied = kv_put("cli/a")
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr, denied.stderr
    assert kv_put("cli/a", "--token", secret).returncode == 0
    assert kv_put("cli/b", environment={**env, "ATOLL_HTTP_TOKEN": secret}).returncode == 0
    assert kv_put("cli/c", environment={**env, "CONSUL_HTTP_TOKEN": secret}).returncode == 0
    assert kv_put("other", "--token", secret).returncode != 0
    got = subprocess.run([exe, "kv", "get", "cli/a", "--http-addr", inst.http_addr, "--token", secret],
                         capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert got.returncode == 0 and got.stdout.strip() == b"v", got


def test_marathon_event_stream_drops_events_of_apps_the_token_may_not_read(acl):
    import requests

    inst = acl.inst
    prod = acl.token('app_prefix "/prod/" { policy = "read" }')
    app = lambda app_id: {"id": app_id, "cmd": "sleep 600", "instances": 0, "cpus": 0.01, "mem": 8}  # noqa: E731
    seen: list[str] = []
    with requests.get(inst.url("/v2/events"), headers={"Authorization": f"token={prod}"},
                      stream=True, timeout=10) as stream:
        assert stream.status_code == 200
        # Events come in order: the first app's are dropped, the second's arrive.
        acl.as_root("post", "/v2/apps", json=app("/dev/hidden"))
        acl.as_root("post", "/v2/apps", json=app("/prod/shown"))
        for count, line in enumerate(stream.iter_lines(decode_unicode=True)):
            assert count < 500, f"no event of /prod/shown among {seen}"
            if line and line.startswith("data:"):
                seen.append(line)
                if "/prod/shown" in line:
                    break
    assert not any("/dev/hidden" in line for line in seen), seen
