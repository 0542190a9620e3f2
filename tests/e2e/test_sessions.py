"""Consul sessions and KV locks, driven by py-consul (and raw requests for wire details),
plus `atoll lock` contending with a client that follows `consul lock`'s key layout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import consul
import pytest
import requests
from consul.check import Check

from conftest import atoll_bin, stays, wait_for
from lock_clients import LOCK_FLAG, ConsulLayoutLock, assert_never_two_holders, read_history

HERE = Path(__file__).resolve().parent


def index_of(resp: requests.Response) -> int:
    return int(resp.headers["X-Consul-Index"])


# ---------------------------------------------------------------------------
# sessions


def test_session_create_info_list_node_renew_destroy(atoll):
    c = atoll.consul
    sid = c.session.create(name="web-lock")
    index, info = c.session.info(sid)
    assert int(index) >= 1
    assert info["ID"] == sid and info["Name"] == "web-lock"
    assert info["Node"] == atoll.node, "the default node is the agent's"
    assert info["LockDelay"] == 15_000_000_000
    assert info["Behavior"] == "release"
    assert info["TTL"] == ""
    assert info["NodeChecks"] == ["serfHealth"]
    assert info["ServiceChecks"] is None
    assert "Checks" not in info
    assert info["CreateIndex"] == info["ModifyIndex"] >= 1

    ttl_sid = c.session.create(ttl=20, lock_delay=0, behavior="delete", checks=[])
    _, ttl_info = c.session.info(ttl_sid)
    assert (ttl_info["TTL"], ttl_info["LockDelay"], ttl_info["Behavior"]) == ("20s", 0, "delete")
    assert ttl_info["NodeChecks"] == []

    _, listed = c.session.list()
    assert {s["ID"] for s in listed} == {sid, ttl_sid}
    _, on_node = c.session.node(atoll.node)
    assert {s["ID"] for s in on_node} == {sid, ttl_sid}
    assert c.session.node("nobody")[1] == []

    renewed = c.session.renew(ttl_sid)
    assert renewed["ID"] == ttl_sid and renewed["TTL"] == "20s"

    assert c.session.destroy(sid) is True
    assert c.session.info(sid)[1] is None
    assert c.session.destroy(sid) is True, "destroy is idempotent"
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)
    resp = atoll.put(f"/v1/session/renew/{sid}")
    assert resp.status_code == 404 and resp.text == f"Session id '{sid}' not found"


def test_session_reads_block_until_a_session_changes(atoll):
    c = atoll.consul
    index, _ = c.session.list()
    result = {}

    def watch():
        result["answer"] = c.session.list(index=index, wait="10s")

    watcher = threading.Thread(target=watch)
    started = time.monotonic()
    watcher.start()
    time.sleep(0.3)
    sid = c.session.create()
    watcher.join(15)
    new_index, sessions = result["answer"]
    assert int(new_index) > int(index) and [s["ID"] for s in sessions] == [sid]
    assert time.monotonic() - started < 5


def test_session_create_is_refused_as_consul_refuses_it(atoll):
    c = atoll.consul
    resp = atoll.put("/v1/session/create", data=json.dumps({"TTL": "5s"}))
    assert resp.status_code == 500
    assert resp.text == "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
    resp = atoll.put("/v1/session/create", data=json.dumps({"TTL": "25h"}))
    assert resp.status_code == 500 and resp.text.startswith("Invalid Session TTL")
    resp = atoll.put("/v1/session/create", data=json.dumps({"TTL": "soon"}))
    assert resp.status_code == 400 and resp.json()["field"] == "TTL"
    resp = atoll.put("/v1/session/create", data=json.dumps({"Behavior": "keep"}))
    assert resp.status_code == 400 and resp.json()["field"] == "Behavior"
    assert "Invalid Behavior setting 'keep'" in resp.json()["error"]
    resp = atoll.put("/v1/session/create", data=json.dumps({"LockDelay": "later"}))
    assert resp.status_code == 400 and resp.json()["field"] == "LockDelay"
    resp = atoll.put("/v1/session/create", data="{not json")
    assert resp.status_code == 400
    with pytest.raises(consul.ConsulException, match="Missing node registration"):
        c.session.create(node="no-such-node")
    with pytest.raises(consul.ConsulException, match="Missing check 'nope' registration"):
        c.session.create(checks=["serfHealth", "nope"])
    c.agent.check.register("crit", Check.ttl("30s"), check_id="crit")  # starts critical
    with pytest.raises(consul.ConsulException, match="Check 'crit' is in critical state"):
        c.session.create(checks=["crit"])
    # Lock delays: Go text, nanoseconds, and a small number read as seconds.
    for given, expected in (("1500ms", 1_500_000_000), (2_000_000_000, 2_000_000_000), (5, 5_000_000_000)):
        sid = atoll.put("/v1/session/create", data=json.dumps({"LockDelay": given})).json()["ID"]
        assert c.session.info(sid)[1]["LockDelay"] == expected
    assert len(c.session.list()[1]) == 3, "refused sessions left nothing behind"


# ---------------------------------------------------------------------------
# KV locks


def test_acquire_and_release_follow_consuls_rules(atoll):
    c = atoll.consul
    a = c.session.create(lock_delay=0)
    b = c.session.create(lock_delay=0)
    assert c.kv.put("locks/leader", "a", acquire=a) is True
    resp = atoll.get("/v1/kv/locks/leader")
    entry = resp.json()[0]
    assert (entry["Session"], entry["LockIndex"]) == (a, 1)
    assert index_of(resp) == entry["ModifyIndex"], "a single key's index is its ModifyIndex"
    # The holder again: value written, lock index kept.
    assert c.kv.put("locks/leader", "a2", acquire=a) is True
    _, entry = c.kv.get("locks/leader")
    assert (entry["Value"], entry["LockIndex"]) == (b"a2", 1)
    # Another session is refused; the key is unchanged.
    assert c.kv.put("locks/leader", "b", acquire=b) is False
    assert c.kv.put("locks/leader", "b", release=b) is False
    assert c.kv.get("locks/leader")[1]["Value"] == b"a2"
    # Released by its holder: no session, lock index kept; then b takes it (lock index 2).
    assert c.kv.put("locks/leader", "free", release=a) is True
    _, entry = c.kv.get("locks/leader")
    assert ("Session" not in entry or not entry["Session"]) and entry["LockIndex"] == 1
    assert c.kv.put("locks/leader", "b", acquire=b) is True
    assert c.kv.get("locks/leader")[1]["LockIndex"] == 2
    # Unknown session: Consul's 500 whose body starts with "invalid session".
    resp = atoll.put("/v1/kv/locks/leader?acquire=00000000-0000-0000-0000-000000000000", data="x")
    assert resp.status_code == 500 and resp.text.startswith("invalid session")
    # acquire, release and cas do not combine.
    resp = atoll.put(f"/v1/kv/locks/leader?acquire={b}&cas=3", data="x")
    assert resp.status_code == 400 and "Conflicting flags" in resp.json()["error"]
    # A 64-bit flag survives (consul lock's semaphore flag is above i64).
    assert c.kv.put("locks/flagged", "x", flags=0xE0F69A2BAA414DE0) is True
    assert c.kv.get("locks/flagged")[1]["Flags"] == 0xE0F69A2BAA414DE0
    # Every KV read has an index, a 404 too.
    resp = atoll.get("/v1/kv/locks/absent")
    assert resp.status_code == 404 and index_of(resp) >= 1


def test_destroying_a_session_releases_or_deletes_its_keys(atoll):
    c = atoll.consul
    rel = c.session.create(lock_delay=0)
    dele = c.session.create(lock_delay=0, behavior="delete")
    assert c.kv.put("held/rel", "1", acquire=rel) and c.kv.put("held/del", "2", acquire=dele)
    before = c.kv.get("held/rel")[1]
    c.session.destroy(rel)
    after = c.kv.get("held/rel")[1]
    assert not after.get("Session") and after["LockIndex"] == before["LockIndex"]
    assert after["Value"] == b"1" and after["ModifyIndex"] > before["ModifyIndex"]
    c.session.destroy(dele)
    assert c.kv.get("held/del")[1] is None


def test_lock_delay_refuses_the_key_after_invalidation_only(atoll):
    c = atoll.consul
    holder = c.session.create(lock_delay=2)
    other = c.session.create(lock_delay=0)
    assert c.kv.put("delayed", "h", acquire=holder)
    # A release does not start the delay.
    assert c.kv.put("delayed", "h", release=holder)
    assert c.kv.put("delayed", "o", acquire=other)
    assert c.kv.put("delayed", "o", release=other)
    assert c.kv.put("delayed", "h", acquire=holder)
    destroyed_at = time.monotonic()
    c.session.destroy(holder)
    assert c.kv.put("delayed", "o", acquire=other) is False, "the key is in its lock delay"
    wait_for(lambda: c.kv.put("delayed", "o", acquire=other), timeout=5, interval=0.2, message="the lock delay to pass")
    assert time.monotonic() - destroyed_at >= 1.5


def test_a_tied_check_turning_critical_invalidates_the_session(atoll):
    c = atoll.consul
    c.agent.check.register("guard", Check.ttl("60s"), check_id="guard")
    c.agent.check.ttl_pass("guard")
    sid = c.session.create(checks=["serfHealth", "guard"], lock_delay=0)
    assert c.kv.put("guarded", "v", acquire=sid)
    c.agent.check.ttl_warn("guard")
    assert c.session.info(sid)[1] is not None, "warning does not invalidate"
    c.agent.check.ttl_fail("guard")
    assert c.session.info(sid)[1] is None
    assert not c.kv.get("guarded")[1].get("Session")
    # Deregistering a tied check invalidates too.
    c.agent.check.ttl_pass("guard")
    sid = c.session.create(checks=["guard"])
    c.agent.check.deregister("guard")
    assert c.session.info(sid)[1] is None


def test_ttl_sessions_expire_after_twice_their_ttl_unless_renewed(atoll):
    c = atoll.consul
    created = time.monotonic()
    idle = c.session.create(ttl=10, lock_delay=0, checks=[])
    kept = c.session.create(ttl=10, lock_delay=0, checks=[])
    assert c.kv.put("ttl/idle", "x", acquire=idle)

    def idle_gone():
        c.session.renew(kept)
        return c.session.info(idle)[1] is None

    wait_for(idle_gone, timeout=26, interval=1.0, message="the unrenewed session to expire")
    lived = time.monotonic() - created
    assert 10 <= lived <= 23, f"a 10s session expired after {lived:.1f}s"
    assert not c.kv.get("ttl/idle")[1].get("Session"), "its key was released"
    assert c.session.info(kept)[1] is not None, "the renewed session lives on"
    c.session.destroy(kept)


def test_leader_election_survives_a_killed_holder(atoll, tmp_path):
    """Contenders (processes) take `service/leader` through TTL sessions; the holder is
    killed, the next takes over after the TTL grace and the lock delay, and the recorded
    history never shows two holders at once."""
    history = tmp_path / "history.jsonl"
    script = HERE / "lock_clients.py"
    procs = [
        subprocess.Popen([sys.executable, str(script), "contend", "127.0.0.1", str(atoll.http_port), "service/leader", str(history)])
        for _ in range(3)
    ]
    try:
        def holders():
            return [r for r in read_history(history) if r["event"] == "acquired"]

        first = wait_for(lambda: holders(), timeout=15, message="a first holder")[0]
        victim = next(p for p in procs if p.pid == first["pid"])
        time.sleep(1.0)
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        second = wait_for(lambda: holders()[1:], timeout=30, interval=0.3, message="a new holder")[0]
        took = second["t"] - killed_at
        assert took >= 1.0, f"taken over {took:.1f}s after the kill, before the lock delay"
        assert second["lock_index"] == first["lock_index"] + 1
        time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(5)
    assert len(assert_never_two_holders(read_history(history))) >= 2


# ---------------------------------------------------------------------------
# atoll lock


def atoll_lock(atoll, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [str(atoll_bin()), "lock", "--http-addr", atoll.http_addr, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_atoll_lock_refuses_bad_input(atoll):
    for args in (["--", "true"], ["", "--", "true"], ["jobs/x"], ["-n", "0", "jobs/x", "--", "true"]):
        proc = atoll_lock(atoll, *args)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode != 0, args
        assert err.strip(), f"no message for {args}"


def test_atoll_lock_contends_with_a_consul_lock_layout_client(atoll, tmp_path):
    c = atoll.consul
    marker = tmp_path / "inside"
    # Our client holds PREFIX/.lock as `consul lock` would: atoll lock must wait.
    python_lock = ConsulLayoutLock(c, "jobs/nightly")
    assert python_lock.acquire(timeout=10)
    _, entry = c.kv.get("jobs/nightly/.lock")
    assert entry["Flags"] == LOCK_FLAG and entry["Session"] == python_lock.session
    proc = atoll_lock(atoll, "jobs/nightly", "--", "sh", "-c", f"touch {marker}; sleep 1; exit 7")
    stays(lambda: not marker.exists(), 1.5, "atoll lock ran while another client held the lock")
    python_lock.release()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, (out, err)
    assert marker.exists()
    # It released and cleaned up: no key left, no session left.
    assert c.kv.get("jobs/nightly/.lock")[1] is None
    assert c.session.list()[1] == []

    # And the other way round: while atoll lock holds it, our client cannot.
    marker.unlink()
    proc = atoll_lock(atoll, "--name", "nightly", "jobs/nightly", "--", f"touch {marker}; sleep 3")
    wait_for(marker.exists, timeout=10, message="atoll lock to run its command")
    _, entry = c.kv.get("jobs/nightly/.lock")
    assert entry["Flags"] == LOCK_FLAG and entry["Session"]
    assert c.session.info(entry["Session"])[1]["Name"] == "nightly"
    contender = ConsulLayoutLock(c, "jobs/nightly")
    assert contender.acquire(timeout=1.0) is False
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert contender.acquire(timeout=10), "the lock is free once atoll lock ended"
    contender.release()


def test_atoll_lock_semaphore_uses_consuls_layout(atoll, tmp_path):
    c = atoll.consul
    procs = [atoll_lock(atoll, "-n", "2", "jobs/pool", "--", "sleep 4") for _ in range(3)]

    def record():
        _, entry = c.kv.get("jobs/pool/.lock")
        return entry and json.loads(entry["Value"])

    held = wait_for(lambda: (r := record()) and len(r["Holders"]) == 2 and r, timeout=10, message="two holders")
    assert held["Limit"] == 2
    _, entry = c.kv.get("jobs/pool/.lock")
    assert entry["Flags"] == 0xE0F69A2BAA414DE0
    for holder in held["Holders"]:
        _, contender = c.kv.get(f"jobs/pool/{holder}")
        assert contender["Session"] == holder and contender["Flags"] == 0xE0F69A2BAA414DE0
    stays(lambda: (r := record()) is None or len(r["Holders"]) <= 2, 2.0, "more than two holders")
    for p in procs:
        p.communicate(timeout=40)
        assert p.returncode == 0
    assert c.kv.get("jobs/pool", recurse=True)[1] is None, "everything was cleaned up"
