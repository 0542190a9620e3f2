"""Durability: whatever atoll acknowledged survives kill -9 and clean restarts."""

from __future__ import annotations

import base64
import itertools
import os
import random
import signal
import threading
import time

import requests

from conftest import wait_for

ROUNDS = 3
MAX_WRITES = 2000  # per round
MAX_SECONDS = 10.0  # per round
WRITERS = 4


def _seed() -> int:
    seed = int(os.environ.get("ATOLL_E2E_SEED", time.time_ns() % 1_000_000))
    print(f"crash test seed: {seed} (set ATOLL_E2E_SEED to replay)")
    return seed


def _hammer_then_kill(inst, write, kill_after: int, writers: int = WRITERS) -> tuple[dict, set]:
    """Run `writers` threads calling write(session, i); SIGKILL atoll once
    `kill_after` writes were acknowledged (or at the deadline).

    Returns ({i: ack payload} for every 200, {every i attempted}).
    """
    counter = itertools.count()
    lock = threading.Lock()
    acked: dict[int, object] = {}
    attempted: set[int] = set()
    reached = threading.Event()
    stop = threading.Event()
    deadline = time.monotonic() + MAX_SECONDS

    def writer():
        session = requests.Session()
        while not stop.is_set() and time.monotonic() < deadline:
            i = next(counter)
            if i >= MAX_WRITES:
                break
            with lock:
                attempted.add(i)
            try:
                ok, payload = write(session, i)
            except requests.RequestException:
                break  # the server is gone
            if ok:
                with lock:
                    acked[i] = payload
                    if len(acked) >= kill_after:
                        reached.set()

    def killer():
        reached.wait(timeout=MAX_SECONDS)
        # SIGKILL from this thread while the writers still have requests in flight.
        os.kill(inst.pid, signal.SIGKILL)
        stop.set()

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(writers)]
    k = threading.Thread(target=killer, daemon=True)
    k.start()
    for t in threads:
        t.start()
    k.join(timeout=MAX_SECONDS + 10)
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "writer threads hung after the kill"
    inst.proc.wait(timeout=10)
    assert inst.proc.returncode == -signal.SIGKILL, inst.proc.returncode
    return acked, attempted


def test_acknowledged_registrations_survive_kill_9(atoll_factory):
    rng = random.Random(_seed())
    inst = atoll_factory.start("crash-svc")
    all_acked: dict[str, int] = {}
    all_attempted: set[str] = set()
    for rnd in range(ROUNDS):
        name = f"crash{rnd}"

        def write(session, i, rnd=rnd, name=name):
            sid = f"crash{rnd}-{i}"
            port = 1024 + i
            r = session.put(
                inst.url("/v1/agent/service/register"),
                json={"ID": sid, "Name": name, "Port": port, "Tags": [f"t{i}"], "Meta": {"i": str(i)}},
                timeout=10,
            )
            return r.status_code == 200, (sid, port)

        kill_after = rng.randint(20, 1500)
        acked, attempted = _hammer_then_kill(inst, write, kill_after)
        assert acked, "no registration was acknowledged before the kill"
        print(f"round {rnd}: {len(acked)} acknowledged of {len(attempted)} attempted, kill after {kill_after}")
        for sid, port in acked.values():
            all_acked[sid] = port
        all_attempted.update(f"crash{rnd}-{i}" for i in attempted)

        inst.restart(kill=True)

        services = inst.get_json("/v1/agent/services")
        missing = sorted(set(all_acked) - set(services))
        assert not missing, f"{len(missing)} acknowledged registrations lost after kill -9 (e.g. {missing[:5]})"
        wrong = [sid for sid, port in all_acked.items() if services[sid]["Port"] != port]
        assert not wrong, f"registrations came back with other data: {wrong[:5]}"
        phantom = sorted(s for s in services if s.startswith("crash") and s not in all_attempted)
        assert not phantom, f"services that were never sent: {phantom[:5]}"

        catalog = inst.get_json("/v1/catalog/services")
        for r in range(rnd + 1):
            want = {sid for sid in all_acked if sid.startswith(f"crash{r}-")}
            if want:
                assert f"crash{r}" in catalog, f"crash{r} missing from /v1/catalog/services"

        def catalog_has_all(r=rnd):
            got = {e["ServiceID"] for e in inst.get_json(f"/v1/catalog/service/crash{r}")}
            return {sid for sid in all_acked if sid.startswith(f"crash{r}-")} <= got

        wait_for(catalog_has_all, timeout=15, message=f"catalog to list every acknowledged crash{rnd} instance")


def test_acknowledged_kv_writes_survive_kill_9(atoll_factory):
    _kv_writes_survive_kill_9(atoll_factory, "crash-kv", WRITERS, offset=1)


def test_acknowledged_kv_writes_of_64_concurrent_writers_survive_kill_9(atoll_factory):
    """With 64 writers in flight, writes share entries and fsyncs (group commit): a kill in
    the middle of a group loses nothing that was acknowledged, and nothing half-applied."""
    _kv_writes_survive_kill_9(atoll_factory, "crash-kv64", 64, offset=2)


def _kv_writes_survive_kill_9(atoll_factory, name: str, writers: int, offset: int):
    rng = random.Random(_seed() + offset)
    inst = atoll_factory.start(name)
    expected: dict[str, bytes] = {}
    attempted_keys: set[str] = set()
    for rnd in range(2):

        def write(session, i, rnd=rnd):
            key = f"crash/{rnd}/{i:05d}"
            value = f"value-{rnd}-{i}-".encode() * (1 + i % 7)
            r = session.put(inst.url(f"/v1/kv/{key}"), data=value, timeout=10)
            return r.status_code == 200 and r.text.strip() == "true", (key, value)

        acked, attempted = _hammer_then_kill(inst, write, rng.randint(20, 1500), writers)
        assert acked
        print(f"round {rnd}: {len(acked)} acknowledged of {len(attempted)} attempted by {writers} writers")
        for key, value in acked.values():
            expected[key] = value
        attempted_keys.update(f"crash/{rnd}/{i:05d}" for i in attempted)
        inst.restart(kill=True)
        items = inst.get_json("/v1/kv/crash/?recurse")
        stored = {i["Key"]: base64.b64decode(i["Value"] or "") for i in items}
        lost = sorted(k for k in expected if k not in stored)
        assert not lost, f"{len(lost)} acknowledged KV writes lost (e.g. {lost[:5]})"
        corrupt = sorted(k for k, v in expected.items() if stored[k] != v)
        assert not corrupt, f"KV values changed across the crash: {corrupt[:5]}"
        phantom = sorted(k for k in stored if k not in attempted_keys)
        assert not phantom, f"keys that were never sent: {phantom[:5]}"


def test_state_survives_clean_restart(atoll_factory):
    inst = atoll_factory.start("clean")
    blob = bytes(range(256))
    assert inst.put("/v1/kv/keep/text", data=b"hello").status_code == 200
    assert inst.put("/v1/kv/keep/blob", data=blob, params={"flags": 77}).status_code == 200
    assert inst.put("/v1/kv/keep/nested/deep", data=b"d").status_code == 200
    inst.register_service({"ID": "persist-1", "Name": "persist", "Port": 4242, "Tags": ["x"], "Check": {"TTL": "60s"}})
    before_items = {i["Key"]: i for i in inst.get_json("/v1/kv/keep/?recurse")}
    before_index = int(inst.get("/v1/kv/keep/?recurse").headers["X-Consul-Index"])
    before_catalog_index = int(inst.get("/v1/catalog/services").headers["X-Consul-Index"])

    assert inst.stop(signal.SIGTERM) == 0, inst.logs()
    inst.start()

    after_items = {i["Key"]: i for i in inst.get_json("/v1/kv/keep/?recurse")}
    assert set(after_items) == set(before_items)
    for key, item in before_items.items():
        got = after_items[key]
        for field in ("Value", "Flags", "CreateIndex", "ModifyIndex", "LockIndex"):
            assert got[field] == item[field], (key, field, item[field], got[field])
    assert base64.b64decode(after_items["keep/blob"]["Value"]) == blob
    assert after_items["keep/blob"]["Flags"] == 77

    r = inst.get("/v1/kv/keep/?recurse")
    assert int(r.headers["X-Consul-Index"]) >= before_index, "index went backwards across a restart"
    assert int(inst.get("/v1/catalog/services").headers["X-Consul-Index"]) >= before_catalog_index

    services = inst.get_json("/v1/agent/services")
    assert services["persist-1"]["Port"] == 4242
    assert services["persist-1"]["Tags"] == ["x"]
    assert "service:persist-1" in inst.get_json("/v1/agent/checks")
    wait_for(
        lambda: {e["ServiceID"] for e in inst.get_json("/v1/catalog/service/persist")} == {"persist-1"},
        message="persist-1 in the catalog after restart",
    )

    # New writes continue the index sequence instead of restarting it.
    assert inst.put("/v1/kv/keep/new", data=b"n").status_code == 200
    new_item = inst.get_json("/v1/kv/keep/new")[0]
    assert new_item["ModifyIndex"] > max(i["ModifyIndex"] for i in before_items.values())


def test_second_process_cannot_share_a_data_dir(atoll_factory, tmp_path):
    first = atoll_factory.start("owner")
    second = atoll_factory.create("intruder", data_dir=first.data_dir)
    second.spawn()
    code = second.wait_exit(timeout=20)
    if code is None:
        second.kill9()
    assert code is not None and code != 0, "a second atoll opened a data dir that is in use"
    assert first.running()
    assert first.leader()


def test_kill_9_while_a_snapshot_file_is_written_loses_nothing(atoll_factory):
    """A snapshot is a file written beside the log: killed while one is being written, the
    node restarts from the previous snapshot and the log, with every acknowledged write, and
    removes the file it left half written."""
    rng = random.Random(_seed() + 3)
    inst = atoll_factory.start("crash-snap", extra_args=["--snapshot-after-entries", "30"])
    snapshots = inst.data_dir / "snapshots"
    # State large enough that each snapshot takes a while to write.
    filler = base64.b64encode(b"f" * 2048).decode()
    for batch in range(40):
        ops = [{"KV": {"Verb": "set", "Key": f"fill/{batch:02d}/{i:02d}", "Value": filler}} for i in range(64)]
        r = requests.put(inst.url("/v1/txn"), json=ops, timeout=30)
        assert r.status_code == 200, r.text
    expected: dict[str, bytes] = {}
    caught_writing = 0
    for rnd in range(3):
        counter = itertools.count()
        acked: dict[str, bytes] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def writer(rnd=rnd):
            session = requests.Session()
            while not stop.is_set():
                i = next(counter)
                if i >= MAX_WRITES:
                    return
                key, value = f"snapcrash/{rnd}/{i:05d}", f"v{rnd}-{i}".encode() * (1 + i % 5)
                try:
                    r = session.put(inst.url(f"/v1/kv/{key}"), data=value, timeout=10)
                except requests.RequestException:
                    return
                if r.status_code == 200 and r.text.strip() == "true":
                    with lock:
                        acked[key] = value

        threads = [threading.Thread(target=writer, daemon=True) for _ in range(WRITERS)]
        for t in threads:
            t.start()
        # Kill at the first moment a snapshot file is being written after a random delay
        # (or at the deadline).
        time.sleep(rng.uniform(0.2, 1.5))
        deadline = time.monotonic() + MAX_SECONDS
        while time.monotonic() < deadline:
            if any(p.name.endswith(".tmp") for p in snapshots.glob("*")):
                caught_writing += 1
                break
            time.sleep(0.001)
        os.kill(inst.pid, signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "writer threads hung after the kill"
        inst.proc.wait(timeout=10)
        assert acked, "no write acknowledged before the kill"
        expected.update(acked)
        stray = {p.name for p in snapshots.glob("*.tmp")}
        inst.restart(kill=True)
        items = inst.get_json("/v1/kv/snapcrash/?recurse")
        stored = {i["Key"]: base64.b64decode(i["Value"] or "") for i in items}
        lost = sorted(k for k in expected if k not in stored)
        assert not lost, f"{len(lost)} acknowledged KV writes lost (e.g. {lost[:5]})"
        changed = sorted(k for k, v in expected.items() if stored[k] != v)
        assert not changed, f"KV values changed across the crash: {changed[:5]}"
        assert len(inst.get_json("/v1/kv/fill/?keys")) == 40 * 64
        # The half-written files the kill left are gone (the node may be writing new ones).
        left = stray & {p.name for p in snapshots.glob("*")}
        assert not left, f"files of the interrupted snapshot left behind: {sorted(left)}"
    # The kill must have hit a snapshot write at least once, or the test proved nothing.
    assert caught_writing >= 1, "no kill landed while a snapshot file was being written"
