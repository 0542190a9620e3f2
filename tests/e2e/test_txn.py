"""Consul transactions (`PUT /v1/txn`), driven by py-consul's `Txn` and by raw requests for
the error shapes, including the sequence Vault's Consul storage sends."""

from __future__ import annotations

import base64

import consul
import pytest


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kv(verb: str, key: str, **fields) -> dict:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


def tree(atoll, prefix: str = "") -> tuple[int, str]:
    """Every entry under a prefix as the KV API lists it (404 when there is none)."""
    resp = atoll.get(f"/v1/kv/{prefix}?recurse")
    return resp.status_code, resp.text


def value_of(c: consul.Consul, key: str):
    _, entry = c.kv.get(key)
    return None if entry is None else entry["Value"]


def test_py_consul_txn_applies_every_operation_in_order(atoll):
    c = atoll.consul
    answer = c.txn.put([
        kv("check-not-exists", "txn/a"),
        kv("set", "txn/a", Value=b64("one"), Flags=7),
        kv("set", "txn/b", Value=b64("two")),
        kv("get", "txn/a"),
        kv("get-tree", "txn/"),
    ])
    assert answer["Errors"] is None
    results = [r["KV"] for r in answer["Results"]]
    assert [r["Key"] for r in results] == ["txn/a", "txn/b", "txn/a", "txn/a", "txn/b"]
    assert results[0]["Value"] is None, "a write returns the entry without its value"
    assert (results[0]["Flags"], results[0]["CreateIndex"]) == (7, results[0]["ModifyIndex"])
    assert base64.b64decode(results[2]["Value"]) == b"one"
    assert base64.b64decode(results[4]["Value"]) == b"two"
    assert value_of(c, "txn/a") == b"one" and value_of(c, "txn/b") == b"two"
    index = results[0]["ModifyIndex"]
    assert results[1]["ModifyIndex"] == index, "one transaction is one Raft entry"

    # Later operations see earlier ones: a cas on the index the same entry wrote.
    resp = atoll.put("/v1/txn", json=[
        kv("delete", "txn/b"),
        kv("check-not-exists", "txn/b"),
        kv("check-index", "txn/a", Index=index),
        kv("cas", "txn/a", Value=b64("three"), Index=index),
        kv("get-or-empty", "txn/b"),
    ])
    assert resp.status_code == 200, resp.text
    assert int(resp.headers["X-Consul-Index"]) > index
    body = resp.json()
    assert body["Errors"] is None
    assert [r["KV"]["Key"] for r in body["Results"]] == ["txn/a", "txn/a", "txn/b"]
    assert body["Results"][2]["KV"]["Value"] is None
    assert value_of(c, "txn/a") == b"three" and value_of(c, "txn/b") is None


def test_a_failing_operation_applies_nothing(atoll):
    c = atoll.consul
    c.kv.put("txn/keep", "kept")
    _, entry = c.kv.get("txn/keep")
    before = tree(atoll, "txn/")
    resp = atoll.put("/v1/txn", json=[
        kv("set", "txn/new", Value=b64("x")),
        kv("check-index", "txn/keep", Index=entry["ModifyIndex"] + 100),
        kv("delete", "txn/keep"),
        kv("get", "txn/missing"),
    ])
    assert resp.status_code == 409, resp.text
    assert resp.json() == {
        "Results": None,
        "Errors": [
            {"OpIndex": 1, "What": f'failed index check for key "txn/keep", current modify index '
                                   f'{entry["ModifyIndex"]} != {entry["ModifyIndex"] + 100}'},
            {"OpIndex": 3, "What": 'key "txn/missing" doesn\'t exist'},
        ],
    }
    assert tree(atoll, "txn/") == before
    with pytest.raises(consul.ConsulException, match="409"):
        c.txn.put([kv("cas", "txn/keep", Value=b64("y"), Index=1)])
    assert value_of(c, "txn/keep") == b"kept"


def test_lock_verbs_follow_sessions_and_lock_delay(atoll):
    c = atoll.consul
    holder = c.session.create(lock_delay=30)
    other = c.session.create(lock_delay=0)
    answer = c.txn.put([kv("lock", "txn/lock", Value=b64("h"), Session=holder)])
    locked = answer["Results"][0]["KV"]
    assert (locked["Session"], locked["LockIndex"]) == (holder, 1)

    resp = atoll.put("/v1/txn", json=[
        kv("lock", "txn/lock", Session=other),
        kv("unlock", "txn/lock", Session=other),
        kv("lock", "txn/other", Session="no-such-session"),
    ])
    assert resp.status_code == 409
    assert resp.json()["Errors"] == [
        {"OpIndex": 0, "What": 'failed to lock key "txn/lock", lock is already held'},
        {"OpIndex": 1, "What": 'failed to unlock key "txn/lock", lock isn\'t held, or is held by another session'},
        {"OpIndex": 2, "What": 'invalid session "no-such-session"'},
    ]

    # The holder's session ends: the key is released and stays in its lock delay.
    assert c.session.destroy(holder) is True
    resp = atoll.put("/v1/txn", json=[kv("set", "txn/x", Value=b64("1")),
                                      kv("lock", "txn/lock", Session=other)])
    assert resp.status_code == 409
    assert resp.json()["Errors"] == [
        {"OpIndex": 1, "What": 'failed to lock key "txn/lock" due to lock delay'}]
    assert value_of(c, "txn/x") is None

    # A key never locked has no delay; the lock index counts each new holder.
    answer = c.txn.put([kv("lock", "txn/fresh", Session=other),
                        kv("unlock", "txn/fresh", Session=other),
                        kv("lock", "txn/fresh", Session=other)])
    assert [r["KV"]["LockIndex"] for r in answer["Results"]] == [1, 1, 2]
    assert c.kv.get("txn/fresh")[1]["Session"] == other


def test_vault_check_session_guards_its_writes(atoll):
    """Vault's storage: each write is `check-session` on its held lock key, then the write;
    once its session no longer holds the lock, the write must fail at OpIndex 0."""
    c = atoll.consul
    sid = c.session.create(lock_delay=0, ttl=30)
    assert c.kv.put("vault/core/lock", "leader", acquire=sid) is True

    def guarded_write(value: str):
        return atoll.put("/v1/txn", json=[
            kv("check-session", "vault/core/lock", Session=sid),
            kv("set", "vault/logical/entry", Value=b64(value)),
            kv("delete", "vault/logical/old"),
            kv("get-or-empty", "vault/logical/entry"),
        ])

    c.kv.put("vault/logical/old", "stale")
    resp = guarded_write("first")
    assert resp.status_code == 200, resp.text
    results = resp.json()["Results"]
    assert results[0]["KV"]["Session"] == sid
    assert base64.b64decode(results[2]["KV"]["Value"]) == b"first"
    assert value_of(c, "vault/logical/old") is None

    assert c.kv.put("vault/core/lock", "leader", release=sid) is True
    resp = guarded_write("second")
    assert resp.status_code == 409
    assert resp.json() == {"Results": None, "Errors": [{
        "OpIndex": 0,
        "What": f'failed session check for key "vault/core/lock", current session "" != "{sid}"'}]}
    assert value_of(c, "vault/logical/entry") == b"first"


def test_read_only_transactions_and_the_operation_limit(atoll):
    c = atoll.consul
    c.kv.put("txn/r", "read")
    for mode in ("", "?stale", "?consistent"):
        resp = atoll.put(f"/v1/txn{mode}", json=[kv("get-or-empty", "txn/none")] * 63 + [kv("get", "txn/r")])
        assert resp.status_code == 200, (mode, resp.text)
        results = resp.json()["Results"]
        assert len(results) == 64
        assert results[0]["KV"] == {"Key": "txn/none", "Value": None, "Flags": 0, "LockIndex": 0,
                                    "CreateIndex": 0, "ModifyIndex": 0}
        assert base64.b64decode(results[63]["KV"]["Value"]) == b"read"
    resp = atoll.put("/v1/txn?stale&consistent", json=[kv("get", "txn/r")])
    assert resp.status_code == 400

    # Consul 1.10 allows 64 operations, reads included: Vault's probe of 128 reads is refused
    # (and Vault falls back to what 1.10 offers).
    resp = atoll.put("/v1/txn", json=[kv("get-or-empty", "vault/none")] * 128)
    assert resp.status_code == 413
    assert resp.text == "Transaction contains too many operations (128 > 64)"
    resp = atoll.put("/v1/txn", json=[kv("set", f"txn/many/{i}", Value=b64("v")) for i in range(65)])
    assert resp.status_code == 413
    assert c.kv.get("txn/many/", recurse=True)[1] is None


@pytest.mark.parametrize("body, field", [
    ([kv("teleport", "txn/k")], "[0].KV.Verb"),
    ([kv("get", "txn/k"), kv("set", "", Value=b64("x"))], "[1].KV.Key"),
    ([kv("set", "txn/k", Value="***not base64***")], "[0].KV.Value"),
    ([kv("set", "txn/k", Flags="many")], "[0].kv.flags"),
    ([{"Nothing": {}}], "[0]"),
    ([{"Node": {"Verb": "set", "Node": {"Address": "10.0.0.1"}}}], "[0].Node.Node.Node"),
    ([{"Service": {"Verb": "jump", "Node": "n", "Service": {"Service": "s"}}}], "[0].Service.Verb"),
    ([{"Check": {"Verb": "set", "Check": {"CheckID": "c"}}}], "[0].Check.Check.Node"),
])
def test_bad_input_is_a_400_naming_the_field(atoll, body, field):
    before = tree(atoll)
    resp = atoll.put("/v1/txn", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == field
    assert tree(atoll) == before


def test_malformed_json_is_a_400(atoll):
    for text in ("{not json", '{"KV": {}}', ""):
        resp = atoll.put("/v1/txn", data=text)
        assert resp.status_code == 400, (text, resp.text)
        assert resp.json()["error"]


def test_catalog_operations(atoll):
    c = atoll.consul
    answer = c.txn.put([
        {"Node": {"Verb": "set", "Node": {"Node": "txn-node", "Address": "10.1.2.3",
                                          "Meta": {"rack": "r1"}}}},
        {"Service": {"Verb": "set", "Node": "txn-node",
                     "Service": {"ID": "api-1", "Service": "api", "Port": 8080, "Tags": ["v1"]}}},
        {"Check": {"Verb": "set", "Check": {"Node": "txn-node", "CheckID": "api-alive",
                                            "Name": "alive", "Status": "passing", "ServiceID": "api-1"}}},
        {"Service": {"Verb": "get", "Node": "txn-node", "Service": {"ID": "api-1"}}},
    ])
    node, service, check, read = (r for r in answer["Results"])
    assert node["Node"]["Node"] == "txn-node" and node["Node"]["Meta"] == {"rack": "r1"}
    assert (service["Service"]["ID"], service["Service"]["Port"]) == ("api-1", 8080)
    assert (check["Check"]["Status"], check["Check"]["ServiceName"]) == ("passing", "api")
    assert read["Service"]["Tags"] == ["v1"]
    _, instances = c.health.service("api", passing=True)
    assert [i["Service"]["ID"] for i in instances] == ["api-1"]

    index = service["Service"]["ModifyIndex"]
    resp = atoll.put("/v1/txn", json=[
        {"Service": {"Verb": "delete-cas", "Node": "txn-node",
                     "Service": {"ID": "api-1", "ModifyIndex": index + 1}}},
        {"Node": {"Verb": "get", "Node": {"Node": "nowhere"}}},
    ])
    assert resp.status_code == 409
    assert resp.json()["Errors"] == [
        {"OpIndex": 0, "What": 'failed to delete service "api-1" on node "txn-node", index is stale'},
        {"OpIndex": 1, "What": 'node "nowhere" doesn\'t exist'},
    ]
    assert c.catalog.service("api")[1] != []

    c.txn.put([
        {"Service": {"Verb": "delete-cas", "Node": "txn-node",
                     "Service": {"ID": "api-1", "ModifyIndex": index}}},
        {"Node": {"Verb": "delete", "Node": {"Node": "txn-node"}}},
    ])
    assert c.catalog.service("api")[1] == []
    assert c.catalog.node("txn-node")[1] is None
