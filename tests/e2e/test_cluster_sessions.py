"""Sessions and locks through the compute (client) nodes of a 3-server cluster, with the
leader killed in the middle: sessions are replicated state, so they survive the leader,
and the new leader re-arms their TTL timers, so an idle one still expires; a leader
election among processes never has two holders, across a leader kill and a holder kill.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import consul

from cluster_util import FAILOVER_LIMIT, HTTP_PORT
from conftest import wait_for
from lock_clients import SESSION_TTL, assert_never_two_holders, read_history, retrying

HERE = Path(__file__).resolve().parent
TTL = 10  # seconds: Consul's smallest session TTL


def session_exists(c: "consul.Consul", session: str) -> bool:
    return retrying(c.session.info, session)[1] is not None


def holder(c: "consul.Consul", key: str) -> str | None:
    entry = retrying(c.kv.get, key, consistency="consistent")[1]
    return entry.get("Session") if entry else None


def test_a_session_survives_a_leader_kill_and_an_idle_one_still_expires(new_cluster):
    cluster = new_cluster("sessleader")
    cluster.add_servers(3)
    client = cluster.add_client()
    cluster.start()
    c = consul.Consul(host=client.ip, port=HTTP_PORT, connections_timeout=10)

    kept = retrying(c.session.create, name="kept", ttl=TTL, lock_delay=0, checks=[])
    idle = retrying(c.session.create, name="idle", ttl=TTL, lock_delay=0, checks=[])
    idle_created = time.monotonic()
    assert retrying(c.kv.put, "locks/kept", "a", acquire=kept)
    assert retrying(c.kv.put, "locks/idle", "b", acquire=idle)

    stop = threading.Event()

    def renew_kept():
        while not stop.wait(TTL / 4):
            retrying(c.session.renew, kept)

    renewer = threading.Thread(target=renew_kept, daemon=True)
    renewer.start()
    try:
        old = cluster.leader()
        old.kill9()
        killed_at = time.monotonic()
        new = cluster.wait_converged(timeout=FAILOVER_LIMIT + 20)
        assert new is not old
        # Both sessions and their locks came through the leader change.
        assert session_exists(c, kept) and session_exists(c, idle)
        assert holder(c, "locks/kept") == kept
        assert holder(c, "locks/idle") == idle

        # The new leader armed a timer for the idle session: at most 2 x TTL after it took
        # over (plus the election), never before one TTL after the session was made.
        wait_for(lambda: not session_exists(c, idle), timeout=FAILOVER_LIMIT + 2 * TTL + 10, interval=0.5,
                 message=lambda: "the idle session to expire under the new leader\n" + cluster.logs())
        gone_after = time.monotonic() - idle_created
        assert gone_after >= TTL, f"expired {gone_after:.1f}s after creation, before its TTL"
        print(f"leader killed -> idle session gone: {time.monotonic() - killed_at:.1f}s (TTL {TTL}s)")
        assert holder(c, "locks/idle") is None, "the expired session's lock was released"
        entry = retrying(c.kv.get, "locks/idle")[1]
        assert entry is not None and entry["Value"] == b"b", "release keeps the key (behavior release)"

        # The renewed one lives on, still holding its lock, and a second server can answer it.
        assert session_exists(c, kept)
        assert holder(c, "locks/kept") == kept
        other = next(s for s in cluster.live_servers() if s is not new)
        assert session_exists(consul.Consul(host=other.ip, port=HTTP_PORT), kept)
    finally:
        stop.set()
        renewer.join(15)
    retrying(c.session.destroy, kept)
    assert holder(c, "locks/kept") is None


def test_a_leader_election_through_compute_nodes_survives_leader_and_holder_kills(new_cluster, tmp_path):
    """Three processes contend for one key through two compute nodes. The Raft leader is
    killed while one holds it (the holder keeps it), then the holder is killed (the next one
    takes over only after the session's TTL and lock delay); the recorded history never
    shows two holders."""
    cluster = new_cluster("sesselect")
    cluster.add_servers(3)
    clients = [cluster.add_client("c1"), cluster.add_client("c2")]
    cluster.start()
    history = tmp_path / "history.jsonl"
    script = HERE / "lock_clients.py"
    procs = [
        subprocess.Popen([sys.executable, str(script), "contend", clients[i % 2].ip, str(HTTP_PORT),
                          "service/primary", str(history)])
        for i in range(3)
    ]

    def acquisitions():
        return [r for r in read_history(history) if r["event"] == "acquired"]

    try:
        first = wait_for(acquisitions, timeout=30, message=lambda: "a first holder\n" + cluster.logs())[0]
        old = cluster.leader()
        old.kill9()
        cluster.wait_converged(timeout=FAILOVER_LIMIT + 20)
        settled = time.monotonic()

        # The holder confirms it still holds the key (consistent reads under the new
        # leader) with the same lock index; nobody else acquired it.
        def held_since_new_leader():
            return [r for r in read_history(history)
                    if r["event"] == "held" and r["pid"] == first["pid"] and r["t"] > settled]

        wait_for(held_since_new_leader, timeout=20, message="the holder to hold on under the new leader")
        assert len(acquisitions()) == 1, "the lock changed hands at the leader change"

        victim = next(p for p in procs if p.pid == first["pid"])
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        second = wait_for(lambda: acquisitions()[1:], timeout=2 * SESSION_TTL + 20, interval=0.3,
                          message=lambda: "a new holder\n" + cluster.logs())[0]
        took = second["t"] - killed_at
        print(f"holder killed -> next holder: {took:.1f}s (TTL {SESSION_TTL}s, lock delay 1s)")
        # The holder last renewed at most a third of the TTL before it died, and a session
        # lives at least its TTL after a renewal.
        floor = SESSION_TTL - SESSION_TTL / 3
        assert took >= floor, f"taken over {took:.1f}s after the kill, before the session's TTL"
        assert second["lock_index"] == first["lock_index"] + 1
        wait_for(lambda: [r for r in read_history(history) if r["event"] == "held" and r["pid"] == second["pid"]],
                 timeout=10, message="the new holder to confirm it holds the key")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(5)
    assert len(assert_never_two_holders(read_history(history))) == 2
