#!/usr/bin/env python3
"""Blocking-query fan-out: what W parked watchers cost and which of them wake.

    bench/watchers.py [--watchers W] [--watch catalog|service] [--procs P]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP) and opens W
TCP connections, each sending one blocking query, from P client processes
(one per 16,000 watchers unless told), spread over source addresses
127.0.0.2, 127.0.0.3, ... (SOURCE_SPAN connections each: loopback has ~28k
ephemeral ports per source address). Once every request is written and the
watchers have settled, it reads atoll's RSS and makes the writes below; for
every watcher it measures t0 -> complete response. Then it closes every
connection and reads atoll's RSS 1 s and SETTLE_AFTER s later.

--watch catalog (default): GET /v1/catalog/services?index=CUR; one service
registration must wake every watcher.

--watch service: GET /v1/health/service/bench-b?index=CUR (bench-b is
registered first). GRANULAR_WRITES registrations of another service
(bench-a) must answer none of them (counted after GRANULAR_WINDOW s; atoll's
CPU time meanwhile, against the same time before without writes, shows
watchers woken in vain); then a change of bench-b must wake all.

Prints how many woke, the p50/p99/max wake-up latency, and atoll's VmRSS
before the watchers, while they are parked (and the growth per watcher), and
after they disconnected.

The clients are Python asyncio processes; their time to take in W responses
is part of the tail they report.

Environment: W (10000), WATCH (catalog), PROCS (W/16000 rounded up),
SOURCE_SPAN (20000), WAIT ("300s"), SETTLE (2), SETTLE_AFTER (10),
GRANULAR_WRITES (5), GRANULAR_WINDOW (2), WAKE_TIMEOUT (60), OPEN_TIMEOUT (240),
CONNECT_CONCURRENCY (256 per process), MAX_SECONDS (600, whole run),
ATOLL_BIN, ATOLL_HTTP, ATOLL_PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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

SERVICE_B = "bench-b"
SERVICE_A = "bench-a"


# ----- client process: holds its share of the watchers -----


class Watcher(asyncio.Protocol):
    """One blocking query on its own connection; timestamps its response."""

    __slots__ = ("request", "client", "transport", "buf", "done_at",
                 "status", "index", "closed_early", "header_end", "length", "chunked")

    def __init__(self, request: bytes, client: "Client") -> None:
        self.request = request
        self.client = client
        self.transport = None
        self.buf = bytearray()
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
        now = time.monotonic()
        self.buf += data
        if self.done_at is None and self._complete():
            self.done_at = now
            self.client.finished()

    def connection_lost(self, exc) -> None:
        if self.done_at is None:
            self.closed_early = True
            self.done_at = time.monotonic()
            self.client.finished()

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


class Client:
    def __init__(self) -> None:
        self.watchers: list[Watcher] = []
        self.done = 0
        self.all_done = asyncio.Event()

    def finished(self) -> None:
        self.done += 1
        if self.done >= len(self.watchers):
            self.all_done.set()


def emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def child_main(args) -> int:
    loop = asyncio.get_running_loop()
    request = build_request("GET", args.path, f"{args.host}:{args.port}")
    client = Client()
    errors: dict[str, int] = {}
    gate = asyncio.Semaphore(args.connect_concurrency)
    sources = args.sources.split(",")

    async def open_one(i: int) -> None:
        async with gate:
            w = Watcher(request, client)
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: w, args.host, args.port,
                    local_addr=(sources[i * len(sources) // args.count], 0)), timeout=15)
            except (OSError, asyncio.TimeoutError) as e:
                name = type(e).__name__
                errors[name] = errors.get(name, 0) + 1
                return
            client.watchers.append(w)

    try:
        await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(args.count))),
                               timeout=args.open_timeout)
    except asyncio.TimeoutError:
        errors["open timeout"] = errors.get("open timeout", 0) + 1
    if len(client.watchers) == 0:
        client.all_done.set()
    emit({"opened": len(client.watchers), "errors": errors})

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        command, *rest = line.decode().split()
        if command == "count":
            emit({"done": client.done})
        elif command == "wait":
            timeout = float(rest[0])
            try:
                await asyncio.wait_for(client.all_done.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
            ws = client.watchers
            emit({
                "done_at": [w.done_at for w in ws
                            if w.done_at is not None and not w.closed_early and w.status == 200],
                "index": [w.index for w in ws
                          if w.done_at is not None and not w.closed_early and w.status == 200],
                "failed": sum(1 for w in ws if w.done_at is not None
                              and (w.closed_early or w.status != 200)),
                "pending": sum(1 for w in ws if w.done_at is None),
            })
        elif command == "close":
            for w in client.watchers:
                if w.transport is not None:
                    w.transport.close()
            await asyncio.sleep(0.5)
            emit({"closed": len(client.watchers)})
            break
    return 0


# ----- parent: starts atoll and the clients, makes the writes, reads memory -----


def raise_nofile(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:  # root may raise the hard limit (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft, hard = needed, needed
        except (ValueError, OSError):
            pass
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Procs:
    """The client processes, each answering one JSON line per command."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    async def ask(self, command: str | None, timeout: float) -> list[dict]:
        if command is not None:
            for p in self.procs:
                p.stdin.write((command + "\n").encode())
            await asyncio.gather(*(p.stdin.drain() for p in self.procs))

        async def one(p):
            line = await asyncio.wait_for(p.stdout.readline(), timeout=timeout)
            return json.loads(line) if line else {}
        return list(await asyncio.gather(*(one(p) for p in self.procs)))

    async def stop(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                try:
                    await asyncio.wait_for(p.wait(), timeout=5)
                except asyncio.TimeoutError:
                    p.kill()
                    await p.wait()


async def register(host: str, port: int, name: str, service_port: int) -> tuple[float, int]:
    """One registration on a connection opened beforehand; returns (t0, status)."""
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"ID": f"{name}-1", "Name": name, "Address": "127.0.0.2",
                       "Port": service_port}).encode()
    t0 = time.monotonic()
    writer.write(build_request("PUT", "/v1/agent/service/register", f"{host}:{port}", body))
    status, _, _ = await asyncio.wait_for(read_response(reader), timeout=30)
    writer.close()
    return t0, status


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process, in seconds."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def rss_line(atoll: Atoll, label: str, base: int | None, watchers: int) -> int | None:
    rss = atoll.rss_kb()
    extra = ""
    if rss and base:
        extra = (f" (+{(rss - base) / 1024:.1f} MB,"
                 f" {(rss - base) * 1024 / max(1, watchers):,.0f} bytes per watcher)")
    print(f"atoll VmRSS {label}: {fmt_mb(rss)}{extra}", flush=True)
    return rss


async def main_async(args) -> int:
    run_deadline = time.monotonic() + args.max_seconds
    # Thousands of watchers come from each source address: no per-client limit.
    with Atoll(args=("--http-max-conns-per-client", "0")) as atoll:
        host, port = atoll.host, atoll.port
        print(f"atoll at {atoll.base_url}" + (f" (pid {atoll.pid})" if atoll.pid else ""))
        if args.watch == "service":
            await register(host, port, SERVICE_B, 9000)
            path = f"/v1/health/service/{SERVICE_B}"
        else:
            path = "/v1/catalog/services"
        _, headers = http_get_json(atoll.base_url, path)
        cur = int({k.lower(): v for k, v in headers.items()}["x-consul-index"])
        await asyncio.sleep(1.0)
        rss_idle = rss_line(atoll, "before the watchers", None, 0)
        print(f"{path} index {cur}; {args.watchers} watchers from {args.procs} client"
              f" process(es) over {math.ceil(args.watchers / args.source_span)} source address(es)",
              flush=True)

        per_proc = [args.watchers // args.procs + (1 if i < args.watchers % args.procs else 0)
                    for i in range(args.procs)]
        procs = []
        next_source = 2
        for count in per_proc:
            # Each process has source addresses of its own, SOURCE_SPAN connections at most each.
            n = max(1, math.ceil(count / args.source_span))
            sources = ",".join(f"127.0.0.{next_source + i}" for i in range(n))
            next_source += n
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, os.path.abspath(__file__), "--child",
                "--host", host, "--port", str(port),
                "--path", f"{path}?index={cur}&wait={args.wait}",
                "--count", str(count), "--sources", sources,
                "--connect-concurrency", str(args.connect_concurrency),
                "--open-timeout", str(args.open_timeout),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 26))
        clients = Procs(procs)
        try:
            return await drive(args, atoll, clients, path, cur, rss_idle, run_deadline)
        finally:
            for p in procs:
                if p.returncode is None and p.stdin is not None:
                    p.stdin.close()
            await clients.stop()


async def drive(args, atoll: Atoll, clients: Procs, path: str, cur: int,
                rss_idle: int | None, run_deadline: float) -> int:
    host, port = atoll.host, atoll.port
    t_open = time.monotonic()
    opened = await clients.ask(None, timeout=args.open_timeout + 30)
    total = sum(o.get("opened", 0) for o in opened)
    errors: dict[str, int] = {}
    for o in opened:
        for k, v in o.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    print(f"opened {total} of {args.watchers} watcher connections in"
          f" {time.monotonic() - t_open:.1f} s" + (f"; errors {errors}" if errors else ""),
          flush=True)
    await asyncio.sleep(args.settle)
    early = sum(c["done"] for c in await clients.ask("count", timeout=30))
    rss_line(atoll, f"with {total - early} parked watchers", rss_idle, total)
    if atoll.pid:
        print(f"  VmHWM {fmt_mb(proc_status_kb(atoll.pid, 'VmHWM'))},"
              f" {proc_status_kb(atoll.pid, 'Threads')} threads")
    if early:
        print(f"  {early} watchers returned before any change")

    if args.watch == "service":
        cpu_quiet = cpu_seconds(atoll.pid)
        await asyncio.sleep(args.granular_window)
        cpu_before = cpu_seconds(atoll.pid)
        t_a = time.monotonic()
        for i in range(args.granular_writes):
            _, status = await register(host, port, SERVICE_A, 9001 + i)
        await asyncio.sleep(max(0.0, args.granular_window - (time.monotonic() - t_a)))
        cpu_after = cpu_seconds(atoll.pid)
        woken = sum(c["done"] for c in await clients.ask("count", timeout=30)) - early
        print(f"\n{args.granular_writes} registrations of {SERVICE_A} (last HTTP {status}):"
              f" {woken} of {total - early} watchers of {SERVICE_B} answered within"
              f" {args.granular_window:.1f} s (expected 0)")
        if cpu_quiet is not None and cpu_before is not None and cpu_after is not None:
            # Watchers woken in vain answer nothing but cost CPU: this is where they show.
            print(f"  atoll CPU time meanwhile: {(cpu_after - cpu_before) * 1000:.0f} ms"
                  f" (the same time before, without a write: {(cpu_before - cpu_quiet) * 1000:.0f} ms)")
        early += woken
        t0, status = await register(host, port, SERVICE_B, 9002)
        what = f"change of {SERVICE_B}"
    else:
        t0, status = await register(host, port, "wake", 9000)
        what = "registration"
    remaining = max(1.0, min(args.wake_timeout, run_deadline - time.monotonic()))
    results = await clients.ask(f"wait {remaining}", timeout=remaining + 60)
    lat = sorted(t - t0 for r in results for t in r["done_at"] if t >= t0)
    stale = sum(1 for r in results for i in r["index"] if i is not None and i <= cur)
    failed = sum(r["failed"] for r in results)
    pending = sum(r["pending"] for r in results)
    print(f"\n{what} answered HTTP {status}")
    print(f"woke: {len(lat)} of {total - early} parked watchers"
          f" (failed {failed}, still waiting {pending})")
    if stale:
        print(f"  {stale} answered with X-Consul-Index <= {cur} (no newer index)")
    if lat:
        print(f"wake-up latency, t0 -> complete response: p50 {percentile(lat, 50) * 1000:.1f} ms,"
              f" p99 {percentile(lat, 99) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")

    await clients.ask("close", timeout=120)
    await asyncio.sleep(1.0)
    rss_line(atoll, "1 s after the watchers disconnected", rss_idle, total)
    await asyncio.sleep(max(0.0, args.settle_after - 1.0))
    rss_line(atoll, f"{args.settle_after:.0f} s after the watchers disconnected", rss_idle,
             total)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--watchers", "-w", type=int, default=env_int("W", 10000))
    p.add_argument("--watch", choices=("catalog", "service"),
                   default=os.environ.get("WATCH", "catalog"))
    p.add_argument("--procs", type=int, default=env_int("PROCS", 0))
    p.add_argument("--source-span", type=int, default=env_int("SOURCE_SPAN", 20000))
    p.add_argument("--wait", default=os.environ.get("WAIT", "300s"))
    p.add_argument("--settle", type=float, default=env_float("SETTLE", 2))
    p.add_argument("--settle-after", type=float, default=env_float("SETTLE_AFTER", 10))
    p.add_argument("--granular-window", type=float, default=env_float("GRANULAR_WINDOW", 2))
    p.add_argument("--granular-writes", type=int, default=env_int("GRANULAR_WRITES", 5))
    p.add_argument("--wake-timeout", type=float, default=env_float("WAKE_TIMEOUT", 60))
    p.add_argument("--open-timeout", type=float, default=env_float("OPEN_TIMEOUT", 240))
    p.add_argument("--connect-concurrency", type=int, default=env_int("CONNECT_CONCURRENCY", 256))
    p.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 600))
    # A client process's own arguments.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sources", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        raise_nofile(args.count + 64)
        try:
            return asyncio.run(asyncio.wait_for(child_main(args), timeout=args.max_seconds + 60))
        except asyncio.TimeoutError:
            return 1
    if args.watchers < 1:
        p.error("--watchers must be positive")
    if args.procs < 1:
        args.procs = max(1, math.ceil(args.watchers / 16000))
    soft, hard = raise_nofile(args.watchers + 1024)
    if soft < args.watchers + 256:
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
