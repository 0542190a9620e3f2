#!/usr/bin/env python3
"""Write throughput: service registrations and KV puts over keep-alive HTTP/1.1.

    bench/register.py [--count N] [--concurrency K] [--max-seconds S]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP) and, from
this separate process, sends N PUT /v1/agent/service/register with distinct
IDs over K concurrent keep-alive connections, then N PUT /v1/kv/bench/KEY the
same way. Each write is committed through Raft before atoll answers, so this
is the end-to-end rate of acknowledged writes. Prints writes/s and the
latency of each request (p50, p99, max), then checks that every write landed.

Environment: N, K, MAX_SECONDS (defaults 5000, 16, 120), ATOLL_BIN,
ATOLL_HTTP, ATOLL_PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from benchlib import (
    Atoll,
    build_request,
    env_float,
    env_int,
    fmt_mb,
    http_get_json,
    percentile,
    proc_status_kb,
    read_response,
    response_keeps_alive,
)


class Phase:
    def __init__(self, name: str, count: int, make_request) -> None:
        self.name = name
        self.count = count
        self.make_request = make_request  # i -> bytes
        self.next_i = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.reconnects = 0
        self.first_error_detail: str | None = None

    def take(self) -> int | None:
        if self.next_i >= self.count:
            return None
        i = self.next_i
        self.next_i += 1
        return i

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.first_error_detail is None:
            self.first_error_detail = detail


async def worker(phase: Phase, host: str, port: int, deadline: float, tls=None) -> None:
    reader = writer = None
    try:
        while time.monotonic() < deadline:
            i = phase.take()
            if i is None:
                return
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=tls,
                                            server_hostname="localhost" if tls else None), timeout=10)
            request = phase.make_request(i)
            t = time.perf_counter()
            try:
                writer.write(request)
                status, headers, body = await asyncio.wait_for(
                    read_response(reader), timeout=max(1.0, deadline - time.monotonic()))
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                phase.error(type(e).__name__, f"request {i}: {e!r}")
                writer.close()
                reader = writer = None
                phase.reconnects += 1
                continue
            phase.latencies.append(time.perf_counter() - t)
            if status != 200:
                phase.error(f"HTTP {status}", f"request {i}: HTTP {status} {body[:200]!r}")
            if not response_keeps_alive(headers):
                writer.close()
                reader = writer = None
                phase.reconnects += 1
    finally:
        if writer is not None:
            writer.close()


async def run_phase(phase: Phase, host: str, port: int, concurrency: int,
                    max_seconds: float, tls=None) -> float:
    """Runs the phase over `concurrency` keep-alive connections (TLS with the
    `ssl.SSLContext` `tls`, for the name localhost)."""
    deadline = time.monotonic() + max_seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(phase, host, port, deadline, tls) for _ in range(concurrency)))
    return time.perf_counter() - t0


def report(phase: Phase, elapsed: float, concurrency: int) -> None:
    lat = sorted(phase.latencies)
    done = len(lat)
    ok = done - sum(v for k, v in phase.errors.items() if k.startswith("HTTP"))
    print(f"{phase.name}: {done} requests over {concurrency} connections in {elapsed:.2f} s")
    print(f"  {ok / elapsed:,.0f} successful writes/s")
    print(f"  latency p50 {percentile(lat, 50) * 1000:.2f} ms, p99 {percentile(lat, 99) * 1000:.2f} ms,"
          f" max {lat[-1] * 1000 if lat else float('nan'):.2f} ms")
    if done < phase.count:
        print(f"  stopped at the time bound: {phase.count - done} of {phase.count} not sent")
    if phase.errors:
        print(f"  errors: {phase.errors}; first: {phase.first_error_detail}")
    if phase.reconnects:
        print(f"  reconnects: {phase.reconnects}")


async def main_async(args) -> int:
    with Atoll() as atoll:
        host, port, hosthdr = atoll.host, atoll.port, f"{atoll.host}:{atoll.port}"
        print(f"atoll at {atoll.base_url}" + (f" (pid {atoll.pid})" if atoll.pid else ""))
        print(f"client: one asyncio process, {args.concurrency} keep-alive connections,"
              f" {args.count} requests per phase, bound {args.max_seconds:.0f} s per phase\n")

        def register_request(i: int) -> bytes:
            body = json.dumps({"ID": f"bench-{i}", "Name": "bench", "Address": "127.0.0.2",
                               "Port": 10000 + i % 50000}).encode()
            return build_request("PUT", "/v1/agent/service/register", hosthdr, body)

        def kv_request(i: int) -> bytes:
            return build_request("PUT", f"/v1/kv/bench/key-{i}", hosthdr, f"value-{i}".encode())

        # Warm up the connection path so the first phase does not pay for it.
        await run_phase(Phase("warm-up", 50, lambda i: build_request(
            "GET", "/v1/status/leader", hosthdr)), host, port, 4, 10)

        reg = Phase("service register (PUT /v1/agent/service/register)", args.count, register_request)
        elapsed = await run_phase(reg, host, port, args.concurrency, args.max_seconds)
        report(reg, elapsed, args.concurrency)
        services, _ = http_get_json(atoll.base_url, "/v1/agent/services")
        present = sum(1 for k in services if k.startswith("bench-"))
        catalog, _ = http_get_json(atoll.base_url, "/v1/catalog/service/bench")
        print(f"  check: {present} bench-* services in /v1/agent/services,"
              f" {len(catalog)} in /v1/catalog/service/bench (sent {reg.next_i})\n")

        kv = Phase("KV put (PUT /v1/kv/bench/KEY)", args.count, kv_request)
        elapsed = await run_phase(kv, host, port, args.concurrency, args.max_seconds)
        report(kv, elapsed, args.concurrency)
        keys, _ = http_get_json(atoll.base_url, "/v1/kv/bench/?keys")
        print(f"  check: {len(keys or [])} keys under bench/ (sent {kv.next_i})\n")

        if atoll.pid:
            print(f"atoll memory after both phases: VmRSS {fmt_mb(atoll.rss_kb())},"
                  f" VmHWM {fmt_mb(proc_status_kb(atoll.pid, 'VmHWM'))}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", "-n", type=int, default=env_int("N", 5000))
    p.add_argument("--concurrency", "-k", type=int, default=env_int("K", 16))
    p.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 120))
    args = p.parse_args()
    if args.count < 1 or args.concurrency < 1:
        p.error("count and concurrency must be positive")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
