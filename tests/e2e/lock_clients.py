"""Lock clients the session tests run: py-consul contenders for a leader key, and a client
that follows `consul lock`'s key layout (api/lock.go), written with py-consul.

Run as a script, `python3 lock_clients.py contend HOST PORT KEY HISTORY`, it is one
contender of a leader election: it creates a TTL session, waits for the key, and once it
holds it appends `acquired`/`held` lines (monotonic time, LockIndex) to HISTORY while it
renews the session, until it is killed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import consul
import requests

LOCK_FLAG = 0x2DDCCBC058A50C18
LOCK_KEY = ".lock"
SESSION_TTL = 10


def append(path: str, record: dict) -> None:
    line = json.dumps(record) + "\n"
    # One write per line, opened for append: lines of processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def retrying(call, *args, **kwargs):
    """`call`, retried while the cluster cannot answer (a leader election in progress):
    500s and refused or reset connections. Everything else is raised."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return call(*args, **kwargs)
        except (consul.ConsulException, OSError, requests.RequestException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def contend(host: str, port: int, key: str, history: str, lock_delay: int = 1) -> None:
    c = consul.Consul(host=host, port=port, connections_timeout=10)
    session = retrying(c.session.create, name=f"contender-{os.getpid()}", ttl=SESSION_TTL,
                       lock_delay=lock_delay, checks=[])

    def renew_forever():
        # The session lives while this process does, waiting or holding, as Patroni's does.
        while True:
            time.sleep(SESSION_TTL / 3)
            retrying(c.session.renew, session)

    threading.Thread(target=renew_forever, daemon=True).start()
    index = None
    while True:
        if retrying(c.kv.put, key, str(os.getpid()), acquire=session):
            break
        index, _ = retrying(c.kv.get, key, index=index, wait="2s")
    _, entry = retrying(c.kv.get, key, consistency="consistent")
    append(history, {"pid": os.getpid(), "event": "acquired", "t": time.monotonic(), "lock_index": entry["LockIndex"], "session": session})
    while True:
        # Only a consistent read that names this session counts as holding; while the
        # cluster cannot answer, nothing is recorded.
        _, entry = retrying(c.kv.get, key, consistency="consistent")
        if entry is None or entry.get("Session") != session:
            append(history, {"pid": os.getpid(), "event": "lost", "t": time.monotonic()})
            return
        append(history, {"pid": os.getpid(), "event": "held", "t": time.monotonic(), "lock_index": entry["LockIndex"]})
        time.sleep(0.3)


def read_history(path) -> list[dict]:
    """The records contenders appended to `path`, in the order they were written."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_never_two_holders(records: list[dict]) -> list[tuple[float, float, int]]:
    """Checks a recorded election: each holder's span (from `acquired` to its last `held`)
    saw one lock index, spans are disjoint, and every holder had its own lock index.
    Returns the spans (start, end, lock index) in time order."""
    spans: dict[int, tuple[float, float, int]] = {}
    for r in records:
        if r["event"] in ("acquired", "held"):
            start, end, index = spans.get(r["pid"], (r["t"], r["t"], r["lock_index"]))
            assert r["lock_index"] == index, f"{r['pid']} saw the lock change hands while holding it"
            spans[r["pid"]] = (min(start, r["t"]), max(end, r["t"]), index)
    ordered = sorted(spans.values())
    for (_, end, _), (start, _, _) in zip(ordered, ordered[1:]):
        assert end < start, f"two holders at once: {ordered}"
    assert len({index for _, _, index in ordered}) == len(ordered)
    return ordered


class ConsulLayoutLock:
    """`consul lock PREFIX` (-n 1) with py-consul: a session, then `PREFIX/.lock` acquired
    with LockFlagValue; released and cleaned up as api.Lock.Unlock/Destroy do."""

    def __init__(self, client: "consul.Consul", prefix: str, name: str = "python lock") -> None:
        self.c = client
        self.key = f"{prefix.strip('/')}/{LOCK_KEY}"
        self.name = name
        self.session: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, timeout: float = 60.0) -> bool:
        self.session = self.c.session.create(name=self.name, ttl=15)
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()
        deadline = time.monotonic() + timeout
        index = None
        while time.monotonic() < deadline:
            index, entry = self.c.kv.get(self.key, index=index, wait="1s")
            if entry is not None:
                if entry["Flags"] != LOCK_FLAG:
                    raise RuntimeError("Existing key does not match lock use")
                if entry.get("Session") and entry["Session"] != self.session:
                    continue
            if self.c.kv.put(self.key, None, acquire=self.session, flags=LOCK_FLAG):
                return True
            _, entry = self.c.kv.get(self.key)
            if entry is None or not entry.get("Session"):
                time.sleep(0.5)  # lock delay
        return False

    def _renew(self) -> None:
        while not self._stop.wait(7.5):
            try:
                self.c.session.renew(self.session)
            except consul.NotFound:
                return

    def release(self) -> None:
        self.c.kv.put(self.key, None, release=self.session, flags=LOCK_FLAG)
        _, entry = self.c.kv.get(self.key)
        if entry is not None and not entry.get("Session"):
            self.c.kv.delete(self.key, cas=entry["ModifyIndex"])
        self._stop.set()
        self.c.session.destroy(self.session)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "contend":
        contend(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        sys.exit("usage: lock_clients.py contend HOST PORT KEY HISTORY")
