#!/usr/bin/env python3
"""What a scrape costs: time and size of /metrics with a catalog of S services on M nodes.

    bench/metrics.py [--services 1000] [--nodes 100] [--scrapes 200]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP), registers S service
instances (each its own service name) spread over M nodes through
`PUT /v1/catalog/register` from K threads, each with a keep-alive connection, and sends a
few DNS-free requests of other routes so that the HTTP series exist. Then, one at a time
over one keep-alive connection, N scrapes of `GET /metrics` and N of
`GET /v1/agent/metrics` (Consul's JSON): the median and p99 time of each, and the answer's
size in bytes and sample lines (text) or entries (JSON).

Environment: S, M, N, K (defaults 1000, 100, 200, 16), ATOLL_BIN, ATOLL_HTTP, ATOLL_ARGS.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time

from benchlib import Atoll, env_int, percentile


def register_all(host: str, port: int, services: int, nodes: int, connections: int) -> float:
    """Registers the catalog; returns the seconds it took."""
    failures: list[str] = []
    started = time.monotonic()

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        for i in range(offset, services, connections):
            node = i % nodes
            body = json.dumps({
                "Node": f"bench-node-{node}",
                "Address": f"127.2.{node // 250}.{node % 250 + 1}",
                "Service": {"ID": f"svc-{i}", "Service": f"svc-{i}", "Port": 10000 + i % 50000},
            })
            conn.request("PUT", "/v1/catalog/register", body=body)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures.append(f"svc-{i}: {response.status}")
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} registrations failed, first: {failures[0]}")
    return time.monotonic() - started


def measure(host: str, port: int, path: str, scrapes: int) -> tuple[list[float], int, int]:
    """Times `scrapes` GETs of `path`: the times (ms), the last answer's size and its sample
    lines (text) or entries (JSON)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    times: list[float] = []
    body = b""
    for _ in range(scrapes):
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        times.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise SystemExit(f"GET {path} -> {response.status}: {body[:200]!r}")
    conn.close()
    if path == "/metrics":
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    else:
        parsed = json.loads(body)
        series = sum(len(parsed[k]) for k in ("Gauges", "Counters", "Samples"))
    return sorted(times), len(body), series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", "-s", type=int, default=env_int("S", 1000))
    parser.add_argument("--nodes", "-m", type=int, default=env_int("M", 100))
    parser.add_argument("--scrapes", "-n", type=int, default=env_int("N", 200))
    parser.add_argument("--connections", "-k", type=int, default=env_int("K", 16))
    args = parser.parse_args()

    with Atoll() as atoll:
        took = register_all(atoll.host, atoll.port, args.services, args.nodes, args.connections)
        print(f"registered {args.services} services on {args.nodes} nodes in {took:.1f} s")
        conn = http.client.HTTPConnection(atoll.host, atoll.port, timeout=30)
        for path in ("/v1/catalog/services", "/v1/health/service/svc-1", "/v1/kv/missing",
                     "/v1/agent/self", "/v1/status/leader"):
            conn.request("GET", path)
            conn.getresponse().read()
        conn.close()
        for path in ("/metrics", "/v1/agent/metrics"):
            times, size, series = measure(atoll.host, atoll.port, path, args.scrapes)
            print(
                f"{path}: median {statistics.median(times):.2f} ms, p99 "
                f"{percentile(times, 99):.2f} ms over {args.scrapes} scrapes; "
                f"{size} bytes, {series} {'sample lines' if path == '/metrics' else 'entries'}"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
