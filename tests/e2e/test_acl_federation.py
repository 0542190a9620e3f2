"""ACLs across two federated datacenters: dc1 is the primary, dc2 replicates it.

Both datacenters run one server each on their loopback /24 (federation_util.py), with
`--acl-enabled --acl-default-policy deny --primary-datacenter dc1`; dc2's server reads
dc1 with `--acl-replication-token` (the bootstrap token, chosen up front). What is checked,
as Consul 1.10 behaves: the bootstrap is done in dc1 and refused in dc2; a policy and a
global token made in dc1 work in dc2 once replicated; a local token made in dc2 works there
only (403 `ACL not found` in dc1, also through `?dc=`); a token deleted in dc1 stops working
in dc2; a policy or global token written in dc2 is carried out in dc1 and comes back by
replication; `/v1/acl/replication` in Consul's shape; `?dc=dc2` asked of dc1 with a global
token is resolved in dc2; replicated tokens keep working in dc2 while its WAN link is cut,
and replication resumes after the heal.

Every wait is bounded. Not marked client_api: it runs in the `dev` pass of scripts/test.sh.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from conftest import require_binary, wait_for
from federation_util import FORM_TIMEOUT, Federation, running, session_from


BOOT = str(uuid.uuid4())  # the bootstrap token's SecretID, also dc2's replication token
LAYOUT = (("dc1", 1, 0), ("dc2", 1, 0))
WAN_TIMEOUT = 60.0  # started -> each datacenter lists the other
REPLICATION = 30.0  # a change in dc1 -> seen in dc2 (a blocking query: usually well under a second)
RECOVERY = 90.0  # healed -> gossip finds dc2 alive again and replication catches up
KV_READ = 'key_prefix "" { policy = "read" }'
ACL_WRITE = 'acl = "write"'
STATUS_FIELDS = {"Enabled", "Running", "SourceDatacenter", "ReplicationType", "ReplicatedIndex",
                 "ReplicatedRoleIndex", "ReplicatedTokenIndex", "LastSuccess", "LastError", "LastErrorMessage"}
ZERO_TIME = "0001-01-01T00:00:00Z"


def auth(secret: str) -> dict[str, str]:
    return {"X-Consul-Token": secret}


@pytest.fixture(scope="module")
def fed(tmp_path_factory, request):
    """dc1 and dc2 with ACLs on (default deny), dc1 bootstrapped with BOOT, dc2 replicating it."""
    require_binary()
    federation = Federation(tmp_path_factory.mktemp("acl-federation"), layout=LAYOUT)
    for node in federation.nodes:
        node.extra_args += ["--acl-enabled", "--acl-default-policy", "deny", "--primary-datacenter", "dc1"]
    federation["dc2"].server.extra_args += ["--acl-replication-token", BOOT]
    yield from running(federation, request, "acl-federation", lambda: _start(federation))


def _start(fed: Federation) -> None:
    fed.remove_stale_rules()
    fed.check_ports()
    for node in fed.nodes:
        node.spawn()

    def formed() -> bool:
        fed.check_exits()
        return all(dc.cluster.agreement() for dc in fed.dcs.values())

    wait_for(formed, timeout=FORM_TIMEOUT, interval=0.1, message=lambda: "a leader in each datacenter\n" + fed.logs())
    # Default deny hides the WAN members from a request without a token; the datacenter list is open.
    for name, other in (("dc1", "dc2"), ("dc2", "dc1")):
        server = fed[name].server
        wait_for(lambda: other in server.get_json("/v1/catalog/datacenters"), timeout=WAN_TIMEOUT, interval=0.25,
                 message=lambda: f"{name} to know {other}\n" + fed.logs())
    dc1 = fed["dc1"].server
    r = dc1.put("/v1/acl/bootstrap", json={"BootstrapSecret": BOOT}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["SecretID"] == BOOT and r.json()["Local"] is False
    dc2 = fed["dc2"].server
    wait_for(lambda: dc2.get("/v1/acl/token/self", headers=auth(BOOT)).status_code == 200, timeout=REPLICATION,
             interval=0.1, message=lambda: "the bootstrap token replicated into dc2\n" + fed.logs())


def _policy(node, name: str, rules: str, token: str = BOOT) -> dict:
    r = node.put("/v1/acl/policy", json={"Name": name, "Rules": rules}, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _token(node, policy: str, local: bool = False, token: str = BOOT) -> dict:
    body = {"Description": f"test {policy}", "Policies": [{"Name": policy}], "Local": local}
    r = node.put("/v1/acl/token", json=body, headers=auth(token), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _self(node, secret: str, session=requests, query: str = "") -> requests.Response:
    return session.get(node.url(f"/v1/acl/token/self{query}"), headers=auth(secret), timeout=10)


def _wait_resolves(node, secret: str, timeout: float = REPLICATION, session=requests) -> None:
    wait_for(lambda: _self(node, secret, session).status_code == 200, timeout=timeout, interval=0.1,
             message=f"the token to resolve on {node.name}")


# ---------------------------------------------------------------------------


def test_bootstrap_is_done_in_the_primary_and_refused_in_dc2(fed):
    r = fed["dc2"].server.put("/v1/acl/bootstrap", timeout=10)
    assert r.status_code == 400, r.text
    assert "primary datacenter" in r.text and "dc1" in r.text
    # dc1 was bootstrapped once already.
    r = fed["dc1"].server.put("/v1/acl/bootstrap", timeout=10)
    assert r.status_code == 403 and "ACL bootstrap no longer allowed" in r.text


def test_replication_status_has_consuls_shape(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    secondary = dc2.get_json("/v1/acl/replication")
    assert set(secondary) == STATUS_FIELDS, secondary
    assert secondary["Enabled"] is True and secondary["Running"] is True
    assert secondary["SourceDatacenter"] == "dc1"
    assert secondary["ReplicationType"] == "tokens"
    assert secondary["ReplicatedIndex"] > 0 and secondary["ReplicatedTokenIndex"] > 0
    assert secondary["LastSuccess"] != ZERO_TIME
    assert secondary["LastSuccess"].endswith("Z")
    primary = dc1.get_json("/v1/acl/replication")
    assert set(primary) == STATUS_FIELDS
    assert (primary["Enabled"], primary["Running"], primary["SourceDatacenter"]) == (False, False, "dc1")
    assert (primary["ReplicatedIndex"], primary["LastSuccess"]) == (0, ZERO_TIME)
    # The index follows dc1's ACL index.
    index = int(dc1.get("/v1/acl/policies", headers=auth(BOOT)).headers["X-Consul-Index"])
    wait_for(lambda: dc2.get_json("/v1/acl/replication")["ReplicatedIndex"] >= index, timeout=REPLICATION,
             interval=0.1, message="dc2's replicated index to reach dc1's ACL index")


def test_a_policy_and_global_token_made_in_dc1_work_in_dc2(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    assert dc2.put("/v1/kv/fed/acl", data=b"v", headers=auth(BOOT)).json() is True
    policy = _policy(dc1, "fed-kv-read", KV_READ)
    token = _token(dc1, "fed-kv-read")
    assert token["Local"] is False
    _wait_resolves(dc2, token["SecretID"])
    r = dc2.get("/v1/kv/fed/acl?raw", headers=auth(token["SecretID"]))
    assert (r.status_code, r.content) == (200, b"v")
    assert dc2.put("/v1/kv/fed/acl", data=b"w", headers=auth(token["SecretID"])).status_code == 403
    assert dc2.get("/v1/kv/fed/acl").status_code == 403, "default deny without a token"
    # dc2 lists what it replicated, with dc1's ids.
    replicated = dc2.get(f"/v1/acl/policy/{policy['ID']}", headers=auth(BOOT))
    assert replicated.status_code == 200 and replicated.json()["Rules"] == KV_READ
    listed = dc2.get(f"/v1/acl/token/{token['AccessorID']}", headers=auth(BOOT)).json()
    assert listed["SecretID"] == token["SecretID"] and [p["Name"] for p in listed["Policies"]] == ["fed-kv-read"]


def test_a_policy_change_in_dc1_reaches_dc2(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    policy = _policy(dc1, "fed-changing", 'key_prefix "" { policy = "deny" }')
    token = _token(dc1, "fed-changing")
    dc1.put("/v1/kv/fed/changing", data=b"x", headers=auth(BOOT)).raise_for_status()
    _wait_resolves(dc2, token["SecretID"])
    assert dc2.get("/v1/kv/fed/changing?dc=dc1", headers=auth(token["SecretID"])).status_code == 403
    r = dc1.put(f"/v1/acl/policy/{policy['ID']}", json={"Name": "fed-changing", "Rules": KV_READ},
                headers=auth(BOOT))
    assert r.status_code == 200, r.text
    wait_for(lambda: dc2.get(f"/v1/acl/policy/{policy['ID']}", headers=auth(BOOT)).json()["Rules"] == KV_READ,
             timeout=REPLICATION, interval=0.1, message="the changed rules in dc2")


def test_a_local_token_of_dc2_works_there_only(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    _policy(dc1, "fed-local-kv", KV_READ)
    wait_for(lambda: dc2.get("/v1/acl/policy/name/fed-local-kv", headers=auth(BOOT)).status_code == 200,
             timeout=REPLICATION, interval=0.1, message="the policy replicated into dc2")
    local = _token(dc2, "fed-local-kv", local=True)
    assert local["Local"] is True
    assert _self(dc2, local["SecretID"]).status_code == 200
    r = _self(dc1, local["SecretID"])
    assert (r.status_code, r.text) == (403, "ACL not found")
    # Through ?dc= the token travels to dc1 and is resolved there: unknown.
    r = _self(dc2, local["SecretID"], query="?dc=dc1")
    assert (r.status_code, r.text) == (403, "ACL not found")
    # And it stays out of dc1's tables: replication never sends it back nor deletes it.
    accessors = [t["AccessorID"] for t in dc1.get("/v1/acl/tokens", headers=auth(BOOT)).json()]
    assert local["AccessorID"] not in accessors
    _policy(dc1, "fed-after-local", KV_READ)  # a change upstream: one more replication round
    wait_for(lambda: dc2.get("/v1/acl/policy/name/fed-after-local", headers=auth(BOOT)).status_code == 200,
             timeout=REPLICATION, interval=0.1, message="the next replication round")
    assert _self(dc2, local["SecretID"]).status_code == 200
    # Changing it in dc2 stays in dc2 too (an update restates Local, as Consul wants).
    r = dc2.put(f"/v1/acl/token/{local['AccessorID']}", json={"Description": "changed here", "Local": True,
                                                                "Policies": [{"Name": "fed-local-kv"}]},
                headers=auth(BOOT))
    assert r.status_code == 200 and r.json()["Description"] == "changed here", r.text


def test_a_token_deleted_in_dc1_stops_working_in_dc2(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    token = _token(dc1, "global-management")
    _wait_resolves(dc2, token["SecretID"])
    r = dc1.delete(f"/v1/acl/token/{token['AccessorID']}", headers=auth(BOOT))
    assert r.status_code == 200 and r.json() is True
    wait_for(lambda: _self(dc2, token["SecretID"]).status_code == 403, timeout=REPLICATION, interval=0.1,
             message="the deleted token refused in dc2")
    assert _self(dc2, token["SecretID"]).text == "ACL not found"


def test_policy_and_global_token_writes_in_dc2_go_to_the_primary(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    policy = _policy(dc2, "fed-made-in-dc2", KV_READ)
    # Carried out in dc1 at once, then replicated back.
    assert dc1.get(f"/v1/acl/policy/{policy['ID']}", headers=auth(BOOT)).status_code == 200
    wait_for(lambda: dc2.get(f"/v1/acl/policy/{policy['ID']}", headers=auth(BOOT)).status_code == 200,
             timeout=REPLICATION, interval=0.1, message="the policy back in dc2")
    token = _token(dc2, "fed-made-in-dc2")
    assert token["Local"] is False
    assert _self(dc1, token["SecretID"]).status_code == 200
    _wait_resolves(dc2, token["SecretID"])
    # A delete of a global token made in dc2 goes to dc1 as well.
    assert dc2.delete(f"/v1/acl/token/{token['AccessorID']}", headers=auth(BOOT)).json() is True
    assert _self(dc1, token["SecretID"]).status_code == 403
    wait_for(lambda: _self(dc2, token["SecretID"]).status_code == 403, timeout=REPLICATION, interval=0.1,
             message="the deleted token gone from dc2")
    # Bad input forwarded to dc1 comes back as dc1's 400 naming the field.
    r = dc2.put("/v1/acl/policy", json={"Name": "bad name!", "Rules": ""}, headers=auth(BOOT))
    assert r.status_code == 400 and "Name" in r.text, r.text
    # A token without acl:write cannot write there either.
    reader = _token(dc1, "fed-made-in-dc2")
    _wait_resolves(dc2, reader["SecretID"])
    r = dc2.put("/v1/acl/policy", json={"Name": "fed-denied", "Rules": KV_READ}, headers=auth(reader["SecretID"]))
    assert r.status_code == 403, r.text


def test_dc_forwarding_resolves_the_token_in_the_target_datacenter(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    _policy(dc1, "fed-forward-kv", KV_READ)
    token = _token(dc1, "fed-forward-kv")
    dc2.put("/v1/kv/fed/forward", data=b"in-dc2", headers=auth(BOOT)).raise_for_status()
    _wait_resolves(dc2, token["SecretID"])
    for headers, query in ((auth(token["SecretID"]), ""), ({}, f"&token={token['SecretID']}")):
        r = dc1.get(f"/v1/kv/fed/forward?dc=dc2&raw{query}", headers=headers)
        assert (r.status_code, r.content) == (200, b"in-dc2")
    assert dc1.get("/v1/kv/fed/forward?dc=dc2").status_code == 403
    # A local token of dc1 is unknown in dc2.
    local = _token(dc1, "fed-forward-kv", local=True)
    r = dc1.get("/v1/kv/fed/forward?dc=dc2", headers=auth(local["SecretID"]))
    assert (r.status_code, r.text) == (403, "ACL not found")
    assert dc1.get("/v1/kv/fed/forward?dc=dc1", headers=auth(local["SecretID"])).status_code == 404


def test_replicated_tokens_work_while_the_wan_is_cut_and_replication_resumes(fed):
    dc1, dc2 = fed["dc1"].server, fed["dc2"].server
    _policy(dc1, "fed-cut-kv", KV_READ)
    before = _token(dc1, "fed-cut-kv")
    _wait_resolves(dc2, before["SecretID"])
    error_before = dc2.get_json("/v1/acl/replication")["LastError"]
    fed.cut("dc2")
    try:
        probe = session_from(fed.probe_ip("dc2"))
        # dc1 cannot be reached from dc2 any more...
        wait_for(lambda: probe.get(dc2.url("/v1/kv/x?dc=dc1"), headers=auth(BOOT), timeout=10).status_code == 500,
                 timeout=RECOVERY, interval=0.5, message="dc1 out of dc2's reach")
        # ...and replication fails. (A query parked in dc1 before the cut may still end
        # normally: on loopback its connection leaves from 127.0.0.1, which the cut lets
        # reach dc1's HTTP port; once it ends, the next round finds dc1 unreachable.)
        wait_for(lambda: probe.get(dc2.url("/v1/acl/replication"), timeout=10).json()["LastError"] != error_before,
                 timeout=RECOVERY, interval=0.5, message="a failed replication round reported")
        assert probe.get(dc2.url("/v1/acl/replication"), timeout=10).json()["LastErrorMessage"] != ""
        # What was replicated still resolves there, from dc2's own state.
        assert _self(dc2, before["SecretID"], session=probe).status_code == 200
        during = _token(dc1, "fed-cut-kv")
        assert _self(dc2, during["SecretID"], session=probe).status_code == 403
    finally:
        fed.heal()
    # The two lone servers declared each other failed; after the heal they take each other
    # back by gossip alone (an exchange with a failed member while none is alive), and
    # replication resumes by itself.
    assert _self(dc2, before["SecretID"]).status_code == 200
    wait_for(lambda: _self(dc2, during["SecretID"]).status_code == 200, timeout=RECOVERY, interval=0.25,
             message=lambda: "replication to resume: " + dc2.get("/v1/acl/replication").text + " members: "
             + dc2.get("/v1/agent/members?wan=1", headers=auth(BOOT)).text)
    assert _self(dc2, before["SecretID"]).status_code == 200
    status = dc2.get_json("/v1/acl/replication")
    assert status["Running"] is True and status["LastSuccess"] >= status["LastError"]
