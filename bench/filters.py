#!/usr/bin/env python3
"""The cost of `?filter=` on large listings: health and catalog of one service of 10,000 instances.

    bench/filters.py [--instances N] [--requests R] [--max-seconds S]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP), registers N instances of
the service `bench` on N/100 nodes through `PUT /v1/catalog/register` over K keep-alive
connections (each instance with a tag, a `zone` meta and a node meta), then, one request at
a time over one keep-alive connection, R rounds of each variant in turn:

* `GET /v1/health/service/bench` and `GET /v1/catalog/service/bench` without a filter;
* the same with a filter every instance passes (the answer is as large as without one, so the
  difference is the cost of evaluating the expression on N instances);
* the same with a selective filter (a quarter of the instances).

Prints requests/s, latency (p50, p99, max) and the answer's size for each, and the extra time
per evaluated instance: (mean with the all-passing filter - mean without) / N.

Environment: N, R, K, MAX_SECONDS (defaults 10000, 30, 16, 120), ATOLL_BIN, ATOLL_HTTP,
ATOLL_PID.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import time
import urllib.parse

from benchlib import Atoll, build_request, env_float, env_int, fmt_mb, http_get_json, percentile
from register import Phase, report, run_phase

ZONES = ("a", "b", "c", "d")
INSTANCES_PER_NODE = 100

# (listing, path, [(label, filter)]): the first filter lets every instance through, so its
# answer is as large as the unfiltered one and the difference is the evaluation alone.
LISTINGS = [
    ("health", "/v1/health/service/bench", [
        ("filter all pass",
         'Service.Meta.zone != "z" and Node.Meta.rack matches "^rack-" and Checks.Status != critical'),
        ("filter 1/4", 'Service.Meta.zone == "a"'),
    ]),
    ("catalog", "/v1/catalog/service/bench", [
        ("filter all pass",
         'ServiceMeta.zone != "z" and NodeMeta.rack matches "^rack-" and ServiceTags is not empty'),
        ("filter 1/4", 'ServiceMeta.zone == "a"'),
    ]),
]


def registration(i: int) -> dict:
    node = i // INSTANCES_PER_NODE
    return {
        "Node": f"bench-node-{node}",
        "Address": f"127.1.{node // 250}.{node % 250 + 1}",
        "NodeMeta": {"rack": f"rack-{node % 8}"},
        "Service": {
            "ID": f"bench-{i}",
            "Service": "bench",
            "Tags": [f"shard-{i % 10}"],
            "Port": 20000 + i % 40000,
            "Meta": {"zone": ZONES[i % len(ZONES)], "idx": str(i)},
        },
    }


def measure(host: str, port: int, paths: list[str], rounds: int, max_seconds: float):
    """Rounds of one GET of each path in turn over one keep-alive connection, so that load
    from elsewhere on the machine falls on every variant alike: per path, the latencies (s)
    and the last answer's size."""
    connection = http.client.HTTPConnection(host, port, timeout=120)
    latencies: list[list[float]] = [[] for _ in paths]
    sizes = [0] * len(paths)
    deadline = time.monotonic() + max_seconds
    try:
        for _ in range(rounds):
            if time.monotonic() >= deadline:
                break
            for i, path in enumerate(paths):
                t = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                latencies[i].append(time.perf_counter() - t)
                if response.status != 200:
                    raise SystemExit(f"GET {path}: HTTP {response.status} {body[:200]!r}")
                sizes[i] = len(body)
    finally:
        connection.close()
    return latencies, sizes


async def register_all(atoll: Atoll, count: int, concurrency: int, max_seconds: float) -> None:
    hosthdr = f"{atoll.host}:{atoll.port}"

    def request(i: int) -> bytes:
        return build_request("PUT", "/v1/catalog/register", hosthdr, json.dumps(registration(i)).encode())

    phase = Phase("catalog register (PUT /v1/catalog/register)", count, request)
    elapsed = await run_phase(phase, atoll.host, atoll.port, concurrency, max_seconds)
    report(phase, elapsed, concurrency)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", "-n", type=int, default=env_int("N", 10000))
    p.add_argument("--requests", "-r", type=int, default=env_int("R", 30))
    p.add_argument("--concurrency", "-k", type=int, default=env_int("K", 16))
    p.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 120))
    args = p.parse_args()
    if args.instances < 1 or args.requests < 1 or args.concurrency < 1:
        p.error("instances, requests and concurrency must be positive")

    with Atoll() as atoll:
        print(f"atoll at {atoll.base_url}" + (f" (pid {atoll.pid})" if atoll.pid else ""))
        asyncio.run(register_all(atoll, args.instances, args.concurrency, args.max_seconds))
        entries, _ = http_get_json(atoll.base_url, "/v1/catalog/service/bench", timeout=60)
        instances = len(entries)
        print(f"  check: {instances} instances of bench in the catalog (sent {args.instances})\n")
        if instances == 0:
            return 1

        print(f"{args.requests} rounds per listing, each one GET of every variant in turn over one"
              f" keep-alive connection, bound {args.max_seconds:.0f} s per listing")
        for kind, path, filters in LISTINGS:
            variants = [("no filter", None), *filters]
            paths = [path if f is None else f"{path}?filter={urllib.parse.quote(f)}" for _, f in variants]
            latencies, sizes = measure(atoll.host, atoll.port, paths, args.requests, args.max_seconds)
            means = []
            for (label, expression), lat, size in zip(variants, latencies, sizes):
                lat = sorted(lat)
                total = sum(lat)
                means.append(total / len(lat))
                print(f"{kind}, {label}: {len(lat)} requests, {len(lat) / total:,.1f} requests/s,"
                      f" p50 {percentile(lat, 50) * 1000:.1f} ms, p99 {percentile(lat, 99) * 1000:.1f} ms,"
                      f" max {lat[-1] * 1000:.1f} ms, answer {size / 1024:,.0f} KiB")
                if expression is not None:
                    print(f"    filter: {expression}")
            extra = means[1] - means[0]
            print(f"{kind}: an all-passing filter adds {extra * 1000:+.2f} ms per request,"
                  f" {extra / instances * 1e6:+.2f} us per evaluated instance\n")
        if atoll.pid:
            print(f"\natoll memory: VmRSS {fmt_mb(atoll.rss_kb())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
