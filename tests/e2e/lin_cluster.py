"""Concurrent KV clients recording a history, and the check of that history.

Shared by the cluster linearizability tests (crashes and pauses, network
partitions). Client threads issue puts, gets and compare-and-sets on a few
keys against the servers they are given; every operation is recorded with
its invocation and completion time (linearizability.History):
* every written value is unique, so a cas can be modelled on values: the
  client reads the key (value X at ModifyIndex I, or absent = index 0), then
  PUTs ?cas=I; that succeeds exactly when the key still holds X. The read is
  recorded as a get of its own and the PUT as cas(expected=X, new=V);
* a write answered 5xx, timed out or cut off has an unknown outcome (it may
  take effect later, or never); a write whose TCP connection could not even
  be opened was never sent and is left out;
* a read that was not answered 200/404 observed nothing and is left out.
A server is anything with `name` and `url(path)`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import pytest
import requests
import urllib3

from conftest import wait_for
from linearizability import History, check_detailed

KEYS = ("lin/a", "lin/b", "lin/c")
HTTP_TIMEOUT = 2.0  # per request
MAX_OPS_PER_CLIENT = 5000
# Pause between a client's operations: a run records a few thousand operations.
OP_PAUSE = 0.01
CHECK_TIME_LIMIT = 30.0
# Where the history of a failed run is kept (pytest's tmp_path is removed by later runs).
ARTIFACTS = Path(os.environ.get("ATOLL_E2E_ARTIFACTS", Path(__file__).resolve().parents[2] / "target" / "e2e-artifacts"))


class KvServer(Protocol):
    name: str

    def url(self, path: str) -> str: ...


def never_sent(exc: BaseException) -> bool:
    """True when the TCP connection could not be opened, so no byte reached a server."""
    seen = 0
    stack: list[BaseException] = [exc]
    while stack and seen < 20:
        e = stack.pop()
        seen += 1
        if isinstance(e, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
            return True
        if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
            stack.append(e.reason)
        stack += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                stack.append(nxt)
    return False


class Clients:
    """Runs the client threads and keeps statistics next to the history."""

    def __init__(self, servers: Sequence[KvServer], history: History, deadline: float, stop: threading.Event,
                 seed: int, keys: Sequence[str] = KEYS) -> None:
        self.servers = list(servers)
        self.keys = tuple(keys)
        self.seed = seed
        self.history = history
        self.deadline = deadline
        self.stop = stop
        self.stats: Counter = Counter()
        self.anomalies: list[str] = []
        self.lock = threading.Lock()

    def count(self, what: str) -> None:
        with self.lock:
            self.stats[what] += 1

    def anomaly(self, text: str) -> None:
        with self.lock:
            if len(self.anomalies) < 50:
                self.anomalies.append(text)

    # -- one request each -------------------------------------------------
    def read(self, process: str, server: KvServer, key: str) -> tuple[bool, str | None, int]:
        """A ?consistent read recorded as a get; returns (answered, value, ModifyIndex)."""
        op = self.history.invoke(process, "get", key, server=server.name)
        try:
            r = requests.get(server.url(f"/v1/kv/{key}?consistent"), timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            self.history.unknown(op, f"{type(exc).__name__}")
            self.count("get-error")
            return False, None, 0
        if r.status_code == 404:
            self.history.ok(op, None)
            self.count("get-ok")
            return True, None, 0
        if r.status_code == 200:
            try:
                (entry,) = r.json()
                raw = entry.get("Value")
                value = None if raw is None else base64.b64decode(raw).decode()
                index = int(entry["ModifyIndex"])
            except (ValueError, KeyError, TypeError) as exc:
                self.history.unknown(op, "unparsable")
                self.anomaly(f"{server}: GET {key} -> unparsable body {r.text[:200]!r} ({exc})")
                return False, None, 0
            if value is None:
                self.anomaly(f"{server}: GET {key} -> entry without a value: {r.text[:200]!r}")
            self.history.ok(op, value)
            self.count("get-ok")
            return True, value, index
        self.history.unknown(op, f"HTTP {r.status_code}")
        self.count(f"get-{r.status_code}")
        if r.status_code < 500:
            self.anomaly(f"{server}: GET {key} -> {r.status_code} {r.text[:200]!r}")
        return False, None, 0

    def write(self, process: str, server: KvServer, key: str, value: str, cas: tuple[str | None, int] | None) -> None:
        """PUT (plain, or ?cas=INDEX when cas=(expected value, index))."""
        if cas is None:
            op = self.history.invoke(process, "put", key, value=value, server=server.name)
            path, kind = f"/v1/kv/{key}", "put"
        else:
            op = self.history.invoke(process, "cas", key, expected=cas[0], new=value, server=server.name)
            path, kind = f"/v1/kv/{key}?cas={cas[1]}", "cas"
        try:
            r = requests.put(server.url(path), data=value.encode(), timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            if never_sent(exc):
                self.history.failed(op)
                self.count(f"{kind}-not-sent")
            else:
                self.history.unknown(op, type(exc).__name__)
                self.count(f"{kind}-unknown")
            return
        body = r.text.strip()
        if r.status_code == 200 and body in ("true", "false"):
            if kind == "put" and body == "false":
                self.history.unknown(op, "plain PUT answered false")
                self.anomaly(f"{server}: plain PUT {key} answered false")
                return
            self.history.ok(op, body == "true")
            self.count(f"{kind}-{body}")
            return
        self.history.unknown(op, f"HTTP {r.status_code}")
        self.count(f"{kind}-{r.status_code}")
        if r.status_code < 500:
            self.anomaly(f"{server}: PUT {path} -> {r.status_code} {body[:200]!r}")

    # -- the loop ---------------------------------------------------------
    def run(self, cid: int) -> None:
        rng = random.Random(self.seed * 1000 + cid)
        process = f"c{cid}"
        for seq in range(MAX_OPS_PER_CLIENT):
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                return
            server = rng.choice(self.servers)
            key = rng.choice(self.keys)
            value = f"{process}-{seq}"
            roll = rng.random()
            try:
                if roll < 0.4:
                    self.read(process, server, key)
                elif roll < 0.75:
                    self.write(process, server, key, value, None)
                else:
                    answered, seen, index = self.read(process, server, key)
                    if answered:
                        self.write(process, server, key, value, (seen, index))
            except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
                self.anomaly(f"{process}: client error {exc!r}")
                return
            self.stop.wait(OP_PAUSE)


    def threads(self, count: int) -> list[threading.Thread]:
        return [threading.Thread(target=self.run, args=(i,), name=f"client-{i}", daemon=True) for i in range(count)]

    def final_reads(self, servers: Sequence[KvServer], rng: random.Random, timeout: float = 15.0,
                    logs: Callable[[], str] = lambda: "") -> dict[str, str | None]:
        """One ?consistent read per key through a random server, recorded: the value the history ends with."""
        finals: dict[str, str | None] = {}
        for key in self.keys:
            def final_read(key=key):
                server = rng.choice(list(servers))
                answered, value, _ = self.read("final", server, key)
                if answered:
                    finals[key] = value
                return answered
            wait_for(final_read, timeout=timeout, interval=0.1,
                     message=lambda key=key: f"a consistent read of {key} after healing\n{logs()}")
        return finals


def join_threads(threads: Sequence[threading.Thread], deadline: float, stop: threading.Event,
                 grace: float) -> None:
    """Wait for the client and nemesis threads to end on their own; then stop them; fail if stuck."""
    try:
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()) + HTTP_TIMEOUT * 3 + 10)
    finally:
        stop.set()
    stuck = [t.name for t in threads if t.is_alive()]
    for t in threads:
        t.join(timeout=HTTP_TIMEOUT * 3 + grace)
    assert not [t.name for t in threads if t.is_alive()], f"threads did not finish: {stuck}"


def check_history(ops: list[dict], record: dict[str, Any], dump: Path, name: str, replay: str,
                  context: Callable[[], str]) -> None:
    """Check the history (final reads included); keep it in ARTIFACTS and fail unless it is linearizable.

    "unknown" fails like a violation: the test cannot tell one from the other.
    """
    dump.write_text(json.dumps({**record, "history": ops}, indent=1, default=str))
    started = time.monotonic()
    result = check_detailed(ops, time_limit=CHECK_TIME_LIMIT)
    print(f"checker: {result.status} in {time.monotonic() - started:.1f}s: {result.info.splitlines()[0]}")
    if result.status != "ok":
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        kept = ARTIFACTS / f"linearizability-history-{name}.json"
        kept.write_text(dump.read_text())
        pytest.fail(
            f"{name}: {result.info}\n\n{context()}\n\nhistory kept in {kept}; check it again with "
            f"`python3 tests/e2e/linearizability.py {kept}`; {replay}"
        )
