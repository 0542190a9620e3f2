#!/usr/bin/env python3
"""Lock handoff: how long a KV lock stays unheld when its holder goes, by the way it goes.

    bench/lock_handoff.py [--rounds R] [--ttl SECONDS] [--lock-delay SECONDS]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP). Each round, a holder
takes `bench/handoff` with a session (TTL and lock delay as given) while a contender with
its own session waits on the key with blocking queries and tries to acquire it whenever
the key shows no holder (retrying every 50 ms while the lock delay refuses it). The holder
then goes in one of three ways:

- release: `PUT /v1/kv/KEY?release=S` (no lock delay applies);
- destroy: `PUT /v1/session/destroy/S` (an invalidation: the lock delay applies);
- death:   it stops renewing right after a renewal, as a killed process does (the leader
           invalidates the session 2 x TTL after that renewal, then the lock delay applies).

For each, prints when the contender saw the key free and when it held it, counted from the
holder's going (for death, from its last renewal), next to what the rules predict.

Environment: R, TTL, LOCK_DELAY (defaults 2, 10, 1), ATOLL_BIN, ATOLL_HTTP, ATOLL_PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time

from benchlib import Atoll, env_float, env_int

KEY = "bench/handoff"


class Client:
    def __init__(self, host: str, port: int, timeout: float = 60) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def call(self, method: str, path: str, body: bytes = b""):
        self.conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status not in (200, 404):
            raise SystemExit(f"{method} {path}: {response.status} {data[:200]!r}")
        return response, (json.loads(data) if data else None)

    def session(self, ttl: float, lock_delay: float) -> str:
        body = json.dumps({"TTL": f"{ttl:g}s", "LockDelay": f"{lock_delay:g}s", "Checks": []}).encode()
        return self.call("PUT", "/v1/session/create", body)[1]["ID"]

    def acquire(self, session: str) -> bool:
        return self.call("PUT", f"/v1/kv/{KEY}?acquire={session}", b"x")[1] is True


def contend(host: str, port: int, session: str, started: threading.Event, result: dict) -> None:
    """Waits for the key to be free, then acquires it; records when each happened."""
    client = Client(host, port)
    index = 0
    started.set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response, body = client.call("GET", f"/v1/kv/{KEY}?index={index}&wait=30s")
        index = int(response.getheader("X-Consul-Index", "0"))
        entry = body[0] if body else None
        if entry is not None and entry.get("Session"):
            continue
        result.setdefault("free", time.monotonic())
        while time.monotonic() < deadline:
            if client.acquire(session):
                result["held"] = time.monotonic()
                return
            time.sleep(0.05)
    raise SystemExit("the contender never got the lock")


def round_trip(host: str, port: int, way: str, ttl: float, lock_delay: float) -> tuple[float, float]:
    holder = Client(host, port)
    held_by = holder.session(ttl, lock_delay)
    if not holder.acquire(held_by):
        raise SystemExit("the holder could not take the key")
    contender = Client(host, port).session(60, 0)
    started, result = threading.Event(), {}
    thread = threading.Thread(target=contend, args=(host, port, contender, started, result))
    thread.start()
    started.wait()
    time.sleep(0.5)  # the contender is parked on the key
    if way == "release":
        gone = time.monotonic()
        holder.call("PUT", f"/v1/kv/{KEY}?release={held_by}")
    elif way == "destroy":
        gone = time.monotonic()
        holder.call("PUT", f"/v1/session/destroy/{held_by}")
    else:
        holder.call("PUT", f"/v1/session/renew/{held_by}")
        gone = time.monotonic()
        holder.conn.close()
    thread.join()
    # Leave the key free for the next round.
    helper = Client(host, port)
    helper.call("PUT", f"/v1/session/destroy/{contender}")
    helper.call("DELETE", f"/v1/kv/{KEY}")
    return result["free"] - gone, result["held"] - gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=env_int("R", 2))
    parser.add_argument("--ttl", type=float, default=env_float("TTL", 10))
    parser.add_argument("--lock-delay", type=float, default=env_float("LOCK_DELAY", 1))
    args = parser.parse_args()
    predicted = {
        "release": (0.0, 0.0),
        "destroy": (0.0, args.lock_delay),
        "death": (2 * args.ttl, 2 * args.ttl + args.lock_delay),
    }
    with Atoll() as atoll:
        print(f"TTL {args.ttl:g}s, lock delay {args.lock_delay:g}s, {args.rounds} rounds each")
        print(f"{'way':<8} {'free after':>11} {'held after':>11}   predicted (free, held)")
        for way in ("release", "destroy", "death"):
            for _ in range(args.rounds):
                free, held = round_trip(atoll.host, atoll.port, way, args.ttl, args.lock_delay)
                p_free, p_held = predicted[way]
                print(f"{way:<8} {free:10.3f}s {held:10.3f}s   ({p_free:g}s, {p_held:g}s)")


if __name__ == "__main__":
    main()
