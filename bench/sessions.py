#!/usr/bin/env python3
"""Session throughput: creates (Raft writes) and renewals (the leader's timers, no write).

    bench/sessions.py [--count N] [--concurrency K]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP) and, over K threads with a
keep-alive connection each, creates N TTL sessions (`PUT /v1/session/create`), renews each
of them once (`PUT /v1/session/renew/ID`), then acquires one key per session
(`PUT /v1/kv/KEY?acquire=ID`). Prints the rate and latency (p50, p99, max) of each phase and
checks that every session exists and every key is held.

Environment: N, K (defaults 2000, 16), ATOLL_BIN, ATOLL_HTTP, ATOLL_PID.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import http.client

from benchlib import Atoll, env_int, percentile


def run_phase(name, host, port, items, concurrency, request):
    """Runs `request(conn, item)` for every item over `concurrency` connections."""
    latencies: list[float] = []
    results: dict = {}
    lock = threading.Lock()
    queue = list(items)

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while True:
            with lock:
                if not queue:
                    break
                item = queue.pop()
            started = time.perf_counter()
            value = request(conn, item)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                results[item] = value
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    latencies.sort()
    print(
        f"{name:<8} {len(latencies):>6} in {took:6.2f}s  {len(latencies) / took:8.0f}/s  "
        f"p50 {percentile(latencies, 50) * 1000:6.1f} ms  p99 {percentile(latencies, 99) * 1000:6.1f} ms  "
        f"max {latencies[-1] * 1000:6.1f} ms"
    )
    return results


def call(conn, method, path, body=b""):
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise SystemExit(f"{method} {path}: {response.status} {data[:200]!r}")
    return json.loads(data) if data else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=env_int("N", 2000))
    parser.add_argument("--concurrency", type=int, default=env_int("K", 16))
    args = parser.parse_args()
    with Atoll() as atoll:
        body = json.dumps({"TTL": "60s", "LockDelay": "0s", "Checks": []}).encode()
        created = run_phase(
            "create", atoll.host, atoll.port, range(args.count), args.concurrency,
            lambda conn, i: call(conn, "PUT", "/v1/session/create", body)["ID"],
        )
        ids = list(created.values())
        run_phase(
            "renew", atoll.host, atoll.port, ids, args.concurrency,
            lambda conn, sid: call(conn, "PUT", f"/v1/session/renew/{sid}")[0]["ID"],
        )
        acquired = run_phase(
            "acquire", atoll.host, atoll.port, ids, args.concurrency,
            lambda conn, sid: call(conn, "PUT", f"/v1/kv/bench/locks/{sid}?acquire={sid}", b"x"),
        )
        conn = http.client.HTTPConnection(atoll.host, atoll.port, timeout=30)
        listed = call(conn, "GET", "/v1/session/list")
        keys = call(conn, "GET", "/v1/kv/bench/locks/?recurse")
        assert len(listed) == args.count, f"{len(listed)} sessions, expected {args.count}"
        assert all(acquired.values()), "an acquire was refused"
        assert sum(1 for k in keys if k.get("Session")) == args.count, "a key is not held"
        print(f"ok: {args.count} sessions, each renewed and holding its key")


if __name__ == "__main__":
    main()
