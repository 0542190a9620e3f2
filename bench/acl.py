#!/usr/bin/env python3
"""What ACL checks cost: KV reads/s and writes/s with ACLs off, then with ACLs on.

Two runs of `atoll dev` from the same binary, one after the other: first without ACLs, then
with `--acl-enabled --acl-default-policy deny`, bootstrapped, and every request carrying a
token whose one policy is `key_prefix "bench/" { policy = "write" }` (so each request resolves
the token and decides a prefix rule). Each phase sends N requests over K keep-alive connections
(bounded in count and time); the script prints both figures and their ratio. Compare release
builds: a debug build's figures say nothing about the checks.

Usage: bench/acl.py [ATOLL_BINARY] [-n N] [-k K] [--max-seconds S]
(the binary defaults to ATOLL_BIN, else target/release/atoll).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.request

from benchlib import Atoll, build_request, env_float, env_int, percentile
from register import Phase, run_phase

ACL_ARGS = "--acl-enabled --acl-default-policy deny"
RULES = 'key_prefix "bench/" { policy = "write" }'
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(base_url: str, method: str, path: str, body: dict | None = None, token: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url + path, data=data, method=method)
    if token:
        request.add_header("X-Consul-Token", token)
    with _OPENER.open(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def bench_token(base_url: str) -> str:
    """Bootstraps ACLs and makes the token the ACL phases send."""
    management = call(base_url, "PUT", "/v1/acl/bootstrap")["SecretID"]
    policy = call(base_url, "PUT", "/v1/acl/policy", {"Name": "bench", "Rules": RULES}, management)
    token = call(base_url, "PUT", "/v1/acl/token", {"Policies": [{"ID": policy["ID"]}]}, management)
    return token["SecretID"]


def with_token(request: bytes, token: str | None) -> bytes:
    if not token:
        return request
    return request.replace(b"\r\n", f"\r\nX-Consul-Token: {token}\r\n".encode(), 1)


async def measure(args, atoll: Atoll, token: str | None) -> dict[str, float]:
    host = "localhost"

    def put(i: int) -> bytes:
        return with_token(build_request("PUT", f"/v1/kv/bench/key-{i % 1000}", host, f"v-{i}".encode()), token)

    def get(i: int) -> bytes:
        return with_token(build_request("GET", f"/v1/kv/bench/key-{i % 1000}", host), token)

    await run_phase(Phase("warm-up", 1000, put), atoll.host, atoll.port, 4, 20)
    rates = {}
    for label, make in (("KV writes", put), ("KV reads", get)):
        phase = Phase(label, args.count, make)
        elapsed = await run_phase(phase, atoll.host, atoll.port, args.concurrency, args.max_seconds)
        failed = sum(phase.errors.values())
        if failed:
            raise SystemExit(f"{label}: {failed} requests failed: {phase.errors}; {phase.first_error_detail}")
        lat = sorted(phase.latencies)
        rates[label] = len(lat) / elapsed
        rates[label + " p50"] = percentile(lat, 50) * 1000
        rates[label + " p99"] = percentile(lat, 99) * 1000
    return rates


def run(args, acl: bool) -> dict[str, float]:
    previous = os.environ.get("ATOLL_ARGS", "")
    if acl:
        os.environ["ATOLL_ARGS"] = f"{previous} {ACL_ARGS}"
    try:
        with Atoll() as atoll:
            token = bench_token(atoll.base_url) if acl else None
            return asyncio.run(measure(args, atoll, token))
    finally:
        os.environ["ATOLL_ARGS"] = previous


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binary", nargs="?", help="atoll binary (default: ATOLL_BIN, else target/release/atoll)")
    p.add_argument("--count", "-n", type=int, default=env_int("N", 5000))
    p.add_argument("--concurrency", "-k", type=int, default=env_int("K", 16))
    p.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 60.0))
    args = p.parse_args()
    if args.binary:
        os.environ["ATOLL_BIN"] = args.binary
    print(f"{args.count} requests per phase over {args.concurrency} connections\n")
    off = run(args, acl=False)
    on = run(args, acl=True)
    print(f"{'':<12} {'ACLs off':>12} {'ACLs on':>12} {'on/off':>8}   p50 off/on ms   p99 off/on ms")
    for label in ("KV writes", "KV reads"):
        print(f"{label:<12} {off[label]:>10,.0f}/s {on[label]:>10,.0f}/s {on[label] / off[label]:>8.2f}"
              f"   {off[label + ' p50']:5.2f} / {on[label + ' p50']:5.2f}"
              f"   {off[label + ' p99']:5.2f} / {on[label + ' p99']:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
