#!/usr/bin/env python3
"""Blocking-query fan-out: how fast W parked watchers wake on one change.

    bench/watchers.py [--watchers W] [--wait 60s] [--settle 1.5]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP), reads the
current catalog index, and opens W TCP connections, each sending one
GET /v1/catalog/services?index=CUR&wait=60s. Once every request is written
and the watchers have settled, it reads atoll's RSS, records t0 and makes one
service registration. For every watcher it measures t0 -> complete response.
Prints how many woke, the p50/p99/max wake-up latency and atoll's memory
while it held the watchers.

The client is a single asyncio process; its own time to take in W responses
is part of the tail it reports.

Environment: W (10000), WAIT ("60s"), SETTLE (1.5), WAKE_TIMEOUT (30),
MAX_SECONDS (150, whole run), ATOLL_BIN, ATOLL_HTTP, ATOLL_PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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
)


class Watcher(asyncio.Protocol):
    """One blocking query on its own connection; timestamps its response."""

    __slots__ = ("request", "run", "transport", "buf", "first_at", "done_at",
                 "status", "index", "closed_early", "header_end", "length", "chunked")

    def __init__(self, request: bytes, run: "Run") -> None:
        self.request = request
        self.run = run
        self.transport = None
        self.buf = bytearray()
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.status: int | None = None
        self.index: int | None = None
        self.closed_early = False
        self.header_end = -1
        self.length: int | None = None
        self.chunked = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.buf += data
        if self.done_at is None and self._complete():
            self.done_at = now
            self.run.finished(self)

    def connection_lost(self, exc) -> None:
        if self.done_at is None:
            self.closed_early = True
            self.done_at = time.perf_counter()
            self.run.finished(self)

    def _complete(self) -> bool:
        if self.header_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            self.header_end = end + 4
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                self.status = int(head[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            for line in head[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                v = v.strip()
                if k == "content-length":
                    self.length = int(v)
                elif k == "transfer-encoding" and v.lower() == "chunked":
                    self.chunked = True
                elif k == "x-consul-index":
                    try:
                        self.index = int(v)
                    except ValueError:
                        pass
        if self.length is not None:
            return len(self.buf) - self.header_end >= self.length
        if self.chunked:
            return self.buf.endswith(b"0\r\n\r\n")
        return False  # delimited by close: connection_lost completes it


class Run:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.all_done = asyncio.get_running_loop().create_future()

    def finished(self, _w: Watcher) -> None:
        self.done += 1
        if self.done >= self.total and not self.all_done.done():
            self.all_done.set_result(None)


def raise_nofile(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def main_async(args) -> int:
    loop = asyncio.get_running_loop()
    run_deadline = time.monotonic() + args.max_seconds
    with Atoll() as atoll:
        hosthdr = f"{atoll.host}:{atoll.port}"
        print(f"atoll at {atoll.base_url}" + (f" (pid {atoll.pid})" if atoll.pid else ""))
        _, headers = http_get_json(atoll.base_url, "/v1/catalog/services")
        cur = int({k.lower(): v for k, v in headers.items()}["x-consul-index"])
        rss_idle = atoll.rss_kb()
        print(f"catalog index {cur}; atoll VmRSS before watchers {fmt_mb(rss_idle)}")

        request = build_request("GET", f"/v1/catalog/services?index={cur}&wait={args.wait}", hosthdr)
        run = Run(args.watchers)
        watchers: list[Watcher] = []
        connect_errors: dict[str, int] = {}
        gate = asyncio.Semaphore(args.connect_concurrency)

        async def open_one() -> None:
            async with gate:
                w = Watcher(request, run)
                try:
                    await asyncio.wait_for(
                        loop.create_connection(lambda: w, atoll.host, atoll.port), timeout=15)
                except (OSError, asyncio.TimeoutError) as e:
                    name = type(e).__name__
                    connect_errors[name] = connect_errors.get(name, 0) + 1
                    run.total -= 1
                    return
                watchers.append(w)

        t_open = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(args.watchers))),
                                   timeout=args.open_timeout)
        except asyncio.TimeoutError:
            print(f"opening watchers exceeded {args.open_timeout:.0f} s; measuring those open")
            run.total = len(watchers)
        opened_in = time.perf_counter() - t_open
        print(f"opened {len(watchers)} of {args.watchers} watcher connections in {opened_in:.2f} s"
              + (f"; connect errors {connect_errors}" if connect_errors else ""))

        # Open the writer's connection before t0 so t0 is not a TCP handshake.
        reg_reader, reg_writer = await asyncio.open_connection(atoll.host, atoll.port)

        await asyncio.sleep(args.settle)
        early = [w for w in watchers if w.done_at is not None]
        early_ids = {id(w) for w in early}
        rss_hold = atoll.rss_kb()
        hwm_hold = proc_status_kb(atoll.pid, "VmHWM") if atoll.pid else None
        threads_hold = proc_status_kb(atoll.pid, "Threads") if atoll.pid else None
        print(f"holding {len(watchers) - len(early)} parked watchers after {args.settle:.1f} s settle:"
              f" atoll VmRSS {fmt_mb(rss_hold)}, VmHWM {fmt_mb(hwm_hold)}"
              + (f" (+{(rss_hold - rss_idle) / 1024:.1f} MB,"
                 f" {(rss_hold - rss_idle) * 1024 / max(1, len(watchers)):,.0f} bytes per watcher)"
                 if rss_hold and rss_idle else "")
              + (f"; {threads_hold} threads" if threads_hold else ""))
        if early:
            statuses: dict[str, int] = {}
            for w in early:
                key = "closed" if w.closed_early else f"HTTP {w.status} index {w.index}"
                statuses[key] = statuses.get(key, 0) + 1
            print(f"  {len(early)} watchers returned before any change: {statuses}")

        body = json.dumps({"ID": "wake-1", "Name": "wake", "Address": "127.0.0.2",
                           "Port": 9000}).encode()
        t0 = time.perf_counter()
        reg_writer.write(build_request("PUT", "/v1/agent/service/register", hosthdr, body))
        reg_status, reg_headers, _ = await asyncio.wait_for(read_response(reg_reader), timeout=30)
        reg_latency = time.perf_counter() - t0
        reg_writer.close()

        remaining = max(1.0, min(args.wake_timeout, run_deadline - time.monotonic()))
        if run.done < run.total:
            try:
                await asyncio.wait_for(asyncio.shield(run.all_done), timeout=remaining)
            except asyncio.TimeoutError:
                pass
        t_end = time.perf_counter()

        woke = [w for w in watchers if id(w) not in early_ids and w.done_at is not None
                and not w.closed_early and w.status == 200]
        failed = [w for w in watchers if id(w) not in early_ids and w.done_at is not None
                  and (w.closed_early or w.status != 200)]
        pending = [w for w in watchers if w.done_at is None]
        stale = [w for w in woke if w.index is not None and w.index <= cur]
        lat = sorted(w.done_at - t0 for w in woke)
        first = sorted(w.first_at - t0 for w in woke if w.first_at is not None)

        print(f"\nregistration answered HTTP {reg_status} in {reg_latency * 1000:.2f} ms"
              f" (X-Consul-Index {reg_headers.get('x-consul-index')})")
        print(f"woke: {len(woke)} of {len(watchers)} parked watchers"
              f" (early {len(early)}, failed {len(failed)}, still waiting {len(pending)}"
              f" after {t_end - t0:.1f} s)")
        if stale:
            print(f"  {len(stale)} woke with X-Consul-Index <= {cur} (no newer index)")
        if lat:
            print(f"wake-up latency, t0 -> complete response: p50 {percentile(lat, 50) * 1000:.1f} ms,"
                  f" p99 {percentile(lat, 99) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
            print(f"  first byte: p50 {percentile(first, 50) * 1000:.1f} ms,"
                  f" p99 {percentile(first, 99) * 1000:.1f} ms, max {first[-1] * 1000:.1f} ms")
        if failed:
            statuses = {}
            for w in failed:
                key = "closed" if w.closed_early else f"HTTP {w.status}"
                statuses[key] = statuses.get(key, 0) + 1
            print(f"  failed responses: {statuses}")
        for w in watchers:
            if w.transport is not None:
                w.transport.close()
        await asyncio.sleep(1.0)
        if atoll.pid:
            print(f"atoll after the watchers disconnected (1 s later): VmRSS {fmt_mb(atoll.rss_kb())},"
                  f" VmHWM {fmt_mb(proc_status_kb(atoll.pid, 'VmHWM'))}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--watchers", "-w", type=int, default=env_int("W", 10000))
    p.add_argument("--wait", default=os.environ.get("WAIT", "60s"))
    p.add_argument("--settle", type=float, default=env_float("SETTLE", 1.5))
    p.add_argument("--wake-timeout", type=float, default=env_float("WAKE_TIMEOUT", 30))
    p.add_argument("--open-timeout", type=float, default=env_float("OPEN_TIMEOUT", 40))
    p.add_argument("--connect-concurrency", type=int, default=env_int("CONNECT_CONCURRENCY", 256))
    p.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 150))
    args = p.parse_args()
    if args.watchers < 1:
        p.error("--watchers must be positive")
    soft, hard = raise_nofile(args.watchers + 256)
    if soft < args.watchers + 64:
        p.error(f"RLIMIT_NOFILE is {soft} (hard {hard}); too low for {args.watchers} watchers")
    print(f"RLIMIT_NOFILE {soft} (hard {hard}); atoll started from here inherits it")
    # The whole run is bounded even if atoll stops answering.
    try:
        return asyncio.run(asyncio.wait_for(main_async(args), timeout=args.max_seconds + 30))
    except asyncio.TimeoutError:
        print(f"gave up after {args.max_seconds + 30:.0f} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
