"""Consul's ACL endpoints against `atoll dev --acl-enabled --acl-default-policy deny`:
bootstrap and its reset file, tokens and policies through py-consul (and raw requests for
wire details), hidden secrets, the agent's tokens, and tokens surviving a kill -9."""

from __future__ import annotations

import re
import threading
import uuid

import consul
import pytest
import requests

ACL_ARGS = ["--acl-enabled", "--acl-default-policy", "deny"]
GLOBAL_MANAGEMENT = "00000000-0000-0000-0000-000000000001"
ANONYMOUS = "00000000-0000-0000-0000-000000000002"

# Rules as py-consul sends them: a dict, which it encodes as a JSON string.
KV_READ = {"key_prefix": {"": {"policy": "read"}}}
ACL_READ_HCL = 'acl = "read"\n# readers of tokens and policies\nkey_prefix "" { policy = "read" }\n'


@pytest.fixture
def acl(atoll_factory):
    return atoll_factory.start("acl", extra_args=ACL_ARGS)


def client(inst, token: str | None = None) -> consul.Consul:
    return consul.Consul(host=inst.node_address, port=inst.http_port, token=token, connections_timeout=30)


def auth(secret: str) -> dict[str, str]:
    return {"X-Consul-Token": secret}


def reset_index_of(text: str) -> int:
    match = re.fullmatch(r"Permission denied: ACL bootstrap no longer allowed \(reset index: (\d+)\)", text)
    assert match, text
    return int(match.group(1))


def test_with_acls_off_every_acl_path_answers_401(atoll):
    for method, path in [
        ("PUT", "/v1/acl/bootstrap"),
        ("GET", "/v1/acl/tokens"),
        ("GET", "/v1/acl/token/self"),
        ("GET", f"/v1/acl/token/{ANONYMOUS}"),
        ("PUT", "/v1/acl/policy"),
        ("GET", "/v1/acl/policies"),
        ("GET", "/v1/acl/policy/name/global-management"),
        ("PUT", "/v1/agent/token/default"),
    ]:
        r = requests.request(method, atoll.url(path), json={}, timeout=10)
        assert (r.status_code, r.text) == (401, "ACL support disabled"), f"{method} {path}"
    with pytest.raises(consul.ACLDisabled):
        atoll.consul.acl.token.list()
    self_info = atoll.get_json("/v1/agent/self")
    assert self_info["DebugConfig"]["ACLsEnabled"] is False


def test_bootstrap_once_then_again_only_through_the_reset_file(acl):
    c = client(acl)
    root = c.acl.bootstrap()
    assert root["Description"] == "Bootstrap Token (Global Management)"
    assert root["Policies"] == [{"ID": GLOBAL_MANAGEMENT, "Name": "global-management"}]
    assert root["ID"] == root["SecretID"]
    assert uuid.UUID(root["AccessorID"]) and uuid.UUID(root["SecretID"])

    r = acl.put("/v1/acl/bootstrap")
    assert r.status_code == 403
    first_reset = reset_index_of(r.text)
    assert first_reset == root["CreateIndex"]
    with pytest.raises(consul.ACLPermissionDenied):
        c.acl.bootstrap()

    # A wrong index in the file does not reset.
    reset_file = acl.data_dir / "acl-bootstrap-reset"
    reset_file.write_text(f"{first_reset + 1000}\n")
    r = acl.put("/v1/acl/bootstrap")
    assert r.status_code == 403 and reset_index_of(r.text) == first_reset

    reset_file.write_text(f"{first_reset}\n")
    second = acl.put("/v1/acl/bootstrap")
    assert second.status_code == 200, second.text
    assert not reset_file.exists(), "a used reset file is removed"
    again = acl.put("/v1/acl/bootstrap")
    assert again.status_code == 403
    assert reset_index_of(again.text) == second.json()["CreateIndex"] > first_reset
    # Both management tokens work.
    for secret in (root["SecretID"], second.json()["SecretID"]):
        assert acl.get("/v1/acl/policies", headers=auth(secret)).status_code == 200


def test_tokens_and_policies_crud_hidden_secrets_and_the_agents_tokens(acl):
    root = client(acl).acl.bootstrap()
    admin = client(acl, token=root["SecretID"])

    # Without a token (anonymous, no policies, default deny) and with an unknown one.
    r = acl.get("/v1/acl/policies")
    assert (r.status_code, r.text) == (403, "Permission denied")
    r = acl.get("/v1/acl/policies", headers=auth(str(uuid.uuid4())))
    assert (r.status_code, r.text) == (403, "ACL not found")
    r = acl.get("/v1/acl/token/self", headers=auth(str(uuid.uuid4())))
    assert (r.status_code, r.text) == (403, "ACL not found")

    # Policies.
    names = {p["Name"] for p in admin.acl.policy.list()}
    assert names == {"global-management"}
    kv = admin.acl.policy.create(name="kv-read", description="reads KV", rules=KV_READ)
    assert kv["Name"] == "kv-read" and "Rules" in kv and uuid.UUID(kv["ID"])
    readers = acl.put(
        "/v1/acl/policy",
        headers=auth(root["SecretID"]),
        json={"Name": "acl-readers", "Rules": ACL_READ_HCL},
    )
    assert readers.status_code == 200, readers.text
    readers = readers.json()
    assert readers["Rules"] == ACL_READ_HCL
    listed = admin.acl.policy.list()
    assert {p["Name"] for p in listed} == {"global-management", "kv-read", "acl-readers"}
    assert all("Rules" not in p for p in listed)
    by_name = acl.get("/v1/acl/policy/name/kv-read", headers=auth(root["SecretID"]))
    assert by_name.status_code == 200 and by_name.json()["ID"] == kv["ID"]
    updated = admin.acl.policy.update(kv["ID"], "kv-readers", description="reads all KV", rules=KV_READ)
    assert updated["Name"] == "kv-readers" and updated["ModifyIndex"] > kv["ModifyIndex"]
    assert updated["CreateIndex"] == kv["CreateIndex"]

    # Bad policies: 400 naming the field; nothing stored.
    for body, field in [
        ({"Name": "bad", "Rules": 'key_prefix "" { policy = "reed" }'}, "Rules"),
        ({"Name": "bad", "Rules": 'nonsense "x" { policy = "read" }'}, "Rules"),
        ({"Name": "bad name!", "Rules": ""}, "Name"),
        ({"Name": "KV-READERS", "Rules": ""}, "Name"),
    ]:
        r = acl.put("/v1/acl/policy", headers=auth(root["SecretID"]), json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["field"] == field, (body, r.text)
    r = acl.put("/v1/acl/policy", headers=auth(root["SecretID"]), json={"Name": "bad", "Rules": "key {"})
    assert "Failed to parse ACL rules: line 1" in r.json()["error"]
    r = acl.delete(f"/v1/acl/policy/{GLOBAL_MANAGEMENT}", headers=auth(root["SecretID"]))
    assert r.status_code == 400 and "global-management" in r.text

    # Tokens.
    reader = admin.acl.token.create(description="reader", policies_name=["acl-readers"])
    assert reader["Policies"] == [{"ID": readers["ID"], "Name": "acl-readers"}]
    assert uuid.UUID(reader["SecretID"])
    kv_token = admin.acl.token.create(description="kv", policies_id=[kv["ID"]])
    r = acl.put(
        "/v1/acl/token",
        headers=auth(root["SecretID"]),
        json={"Description": "x", "Policies": [{"Name": "no-such-policy"}]},
    )
    assert r.status_code == 400 and "no-such-policy" in r.text
    r = acl.put("/v1/acl/token", headers=auth(root["SecretID"]), json={"AccessorID": "not-a-uuid"})
    assert r.status_code == 400 and r.json()["field"] == "AccessorID"

    # A reader sees tokens with their secrets hidden, and cannot write.
    reader_client = client(acl, token=reader["SecretID"])
    seen = reader_client.acl.token.read(kv_token["AccessorID"])
    assert seen["SecretID"] == "<hidden>" and seen["Description"] == "kv"
    assert all(t["SecretID"] == "<hidden>" for t in reader_client.acl.token.list())
    assert admin.acl.token.read(kv_token["AccessorID"])["SecretID"] == kv_token["SecretID"]
    with pytest.raises(consul.ACLPermissionDenied):
        reader_client.acl.token.create(description="nope")
    me = reader_client.acl.token.read_self()
    assert me["AccessorID"] == reader["AccessorID"] and me["SecretID"] == reader["SecretID"]
    # Unknown token ids: Consul's 403.
    r = acl.get(f"/v1/acl/token/{uuid.uuid4()}", headers=auth(root["SecretID"]))
    assert (r.status_code, r.text) == (403, "ACL not found")

    # Listing by policy; the anonymous token is listed.
    all_ids = {t["AccessorID"] for t in admin.acl.token.list()}
    assert {ANONYMOUS, root["AccessorID"], reader["AccessorID"], kv_token["AccessorID"]} <= all_ids
    assert [t["AccessorID"] for t in admin.acl.token.list(policy=kv["ID"])] == [kv_token["AccessorID"]]
    assert [t["AccessorID"] for t in admin.acl.token.list(policy=GLOBAL_MANAGEMENT)] == [root["AccessorID"]]

    # Update, clone, delete.
    changed = admin.acl.token.update(kv_token["AccessorID"], description="kv and acl", policies_name=["kv-readers", "acl-readers"])
    assert changed["Description"] == "kv and acl"
    assert {p["Name"] for p in changed["Policies"]} == {"kv-readers", "acl-readers"}
    assert changed["SecretID"] == kv_token["SecretID"], "an update keeps the secret"
    copy = admin.acl.token.clone(kv_token["AccessorID"], description="copy")
    assert copy["AccessorID"] != kv_token["AccessorID"] and copy["SecretID"] != kv_token["SecretID"]
    assert copy["Description"] == "copy" and copy["Policies"] == changed["Policies"]
    assert admin.acl.token.delete(copy["AccessorID"]) is True
    r = acl.get("/v1/acl/policies", headers=auth(copy["SecretID"]))
    assert (r.status_code, r.text) == (403, "ACL not found")
    r = acl.delete(f"/v1/acl/token/{ANONYMOUS}", headers=auth(root["SecretID"]))
    assert r.status_code == 400

    # A blocking list wakes when a token is written.
    first = acl.get("/v1/acl/tokens", headers=auth(root["SecretID"]))
    index = int(first.headers["X-Consul-Index"])
    answer: dict = {}

    def block():
        answer["r"] = acl.get(f"/v1/acl/tokens?index={index}&wait=10s", headers=auth(root["SecretID"]), timeout=20)

    waiter = threading.Thread(target=block)
    waiter.start()
    late = admin.acl.token.create(description="late")
    waiter.join(timeout=15)
    assert not waiter.is_alive()
    assert int(answer["r"].headers["X-Consul-Index"]) > index
    assert late["AccessorID"] in {t["AccessorID"] for t in answer["r"].json()}

    # The agent's tokens: acl:write needed, unknown types refused; the default token then
    # stands in for requests without one.
    r = acl.put("/v1/agent/token/default", headers=auth(reader["SecretID"]), json={"Token": reader["SecretID"]})
    assert (r.status_code, r.text) == (403, "Permission denied")
    r = acl.put("/v1/agent/token/nonsense", headers=auth(root["SecretID"]), json={"Token": "x"})
    assert r.status_code == 400 and "nonsense" in r.text
    r = acl.put("/v1/agent/token/acl_token", headers=auth(root["SecretID"]), json={"Token": reader["SecretID"]})
    assert r.status_code == 200, r.text
    assert acl.get("/v1/acl/policies").status_code == 200, "the default token applies"
    assert acl.get_json("/v1/acl/token/self")["AccessorID"] == reader["AccessorID"]
    r = acl.put("/v1/agent/token/default", headers=auth(root["SecretID"]), json={"Token": ""})
    assert r.status_code == 200
    assert acl.get("/v1/acl/policies").status_code == 403
    debug = acl.get_json("/v1/agent/self", headers=auth(root["SecretID"]))["DebugConfig"]
    assert debug["ACLsEnabled"] is True and debug["ACLDefaultPolicy"] == "deny"

    # Tokens and policies survive a kill -9.
    acl.restart(kill=True)
    assert client(acl, token=reader["SecretID"]).acl.token.read_self()["AccessorID"] == reader["AccessorID"]
    assert {p["Name"] for p in admin.acl.policy.list()} == {"global-management", "kv-readers", "acl-readers"}
    r = acl.get("/v1/acl/policies", headers=auth(kv_token["SecretID"]))
    assert r.status_code == 200, "its updated policies hold after the restart"
    r = acl.put("/v1/acl/bootstrap")
    assert r.status_code == 403 and reset_index_of(r.text) == root["CreateIndex"]
