#!/usr/bin/env python3
"""Large state: restart time, memory, and writes while a snapshot of it is taken.

    bench/large_state.py [--data-dir D] [--keys N] [--instances M] [--writes W]

The data dir (default /tmp/atoll-large-state) is built once, if it holds no
atoll.redb yet, by the `large_state` example of atoll-raft, which writes N KV
entries (1,000,000, 100-byte values) and M service instances (100,000) through
the node's own Raft storage and takes a snapshot, so its format is what a node
writes. Each run copies it to a temporary dir (a run writes to its copy) and:

1. starts `atoll dev --data-dir COPY --snapshot-after-entries S` (S = 2000) on
   free 127.0.0.1 ports and times it until `/v1/status/leader` answers non-empty
   and a KV read of one of the N keys answers 200 (the restart time);
2. reads VmRSS once it serves, then resets VmHWM (writing 5 to
   /proc/PID/clear_refs) so the peak covers the next step only;
3. sends W KV puts (20,000, 100-byte values) over K keep-alive connections
   (8), bounded by --max-seconds (120). Every S entries the node takes a
   snapshot of the whole state while these writes go on. Reports writes/s, the
   longest gap between two acknowledged writes, p50/p99/max latency over the
   whole run and of the writes that overlapped a snapshot (from the node's
   `snapshot taken` log lines, when it logs them), and VmHWM against the RSS
   before the load.

Environment: ATOLL_BIN, LARGE_STATE_BIN (the example binary; default
target/release/examples/large_state), ATOLL_ARGS (more flags for atoll dev).
Only the atoll this script starts is signalled, by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from benchlib import (
    REPO_ROOT,
    atoll_bin,
    build_request,
    fmt_mb,
    free_port,
    percentile,
    proc_status_kb,
    read_response,
    response_keeps_alive,
)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROBE_KEY = "large/000/key-00000000"


def example_bin() -> str:
    return os.environ.get("LARGE_STATE_BIN") or str(
        REPO_ROOT / "target" / "release" / "examples" / "large_state")


def build_data_dir(path: Path, keys: int, instances: int, timeout: float) -> None:
    binary = example_bin()
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} not found: cargo build --release -p atoll-raft "
                         "--example large_state (or set LARGE_STATE_BIN)")
    print(f"building {path} with {keys:,} keys and {instances:,} instances ...", flush=True)
    t = time.monotonic()
    subprocess.run([binary, str(path), str(keys), str(instances)], check=True,
                   timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"  built in {time.monotonic() - t:.1f} s\n", flush=True)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def get_status(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except (OSError, ValueError):
        return 0, b""


ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")


def log_events(log_path: str) -> list[tuple[float, str]]:
    """(unix time, line) of each log line that mentions a snapshot."""
    events = []
    with open(log_path, errors="replace") as f:
        for raw in f:
            line = ANSI.sub("", raw).strip()
            if "snapshot" not in line:
                continue
            m = STAMP.match(line)
            if not m:
                continue
            stamp = m.group(1)
            if "." in stamp:
                head, frac = stamp.split(".")
                stamp = f"{head}.{frac[:6]}"
                fmt = "%Y-%m-%dT%H:%M:%S.%f"
            else:
                fmt = "%Y-%m-%dT%H:%M:%S"
            when = datetime.strptime(stamp, fmt).replace(tzinfo=timezone.utc).timestamp()
            events.append((when, line))
    return events


def snapshot_windows(events: list[tuple[float, str]]) -> list[tuple[float, float]]:
    """(start, end) unix times of each snapshot the node logged as taken, with its duration."""
    windows = []
    for when, line in events:
        m = re.search(r"snapshot taken.*?took_ms=(\d+)", line)
        if m:
            windows.append((when - int(m.group(1)) / 1000.0, when))
    return windows


class Load:
    def __init__(self, count: int, value: bytes) -> None:
        self.count = count
        self.value = value
        self.next_i = 0
        # (wall-clock start, wall-clock end) of each acknowledged write
        self.done: list[tuple[float, float]] = []
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None

    def take(self) -> int | None:
        if self.next_i >= self.count:
            return None
        self.next_i += 1
        return self.next_i - 1

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.first_error = self.first_error or detail


async def writer(load: Load, host: str, port: int, deadline: float) -> None:
    hosthdr = f"{host}:{port}"
    reader = conn = None
    try:
        while time.monotonic() < deadline:
            i = load.take()
            if i is None:
                return
            if conn is None:
                reader, conn = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            request = build_request("PUT", f"/v1/kv/bench/w-{i}", hosthdr, load.value)
            start = time.time()
            try:
                conn.write(request)
                status, headers, body = await asyncio.wait_for(
                    read_response(reader), timeout=max(1.0, deadline - time.monotonic()))
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                load.error(type(e).__name__, f"write {i}: {e!r}")
                conn.close()
                reader = conn = None
                continue
            end = time.time()
            if status == 200:
                load.done.append((start, end))
            else:
                load.error(f"HTTP {status}", f"write {i}: {status} {body[:200]!r}")
            if not response_keeps_alive(headers):
                conn.close()
                reader = conn = None
    finally:
        if conn is not None:
            conn.close()


async def sample_rss(pid: int, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        rss = proc_status_kb(pid, "VmRSS")
        if rss:
            peak[0] = max(peak[0], rss)
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            pass


async def run_load(load: Load, host: str, port: int, writers: int, max_seconds: float,
                   pid: int) -> tuple[float, int]:
    deadline = time.monotonic() + max_seconds
    stop = asyncio.Event()
    peak = [0]
    sampler = asyncio.create_task(sample_rss(pid, stop, peak))
    t = time.perf_counter()
    await asyncio.gather(*(writer(load, host, port, deadline) for _ in range(writers)))
    elapsed = time.perf_counter() - t
    stop.set()
    await sampler
    return elapsed, peak[0]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/tmp/atoll-large-state")
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--instances", type=int, default=100_000)
    p.add_argument("--writes", type=int, default=20_000)
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--start-timeout", type=float, default=120)
    p.add_argument("--snapshot-after-entries", type=int, default=2000)
    args = p.parse_args()

    source = Path(args.data_dir)
    if not (source / "atoll.redb").exists():
        build_data_dir(source, args.keys, args.instances, timeout=3600)
    binary = atoll_bin()
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"atoll binary not found at {binary} (build it or set ATOLL_BIN)")

    work = Path(tempfile.mkdtemp(prefix="atoll-large-"))
    proc = None
    log = tempfile.NamedTemporaryFile(prefix="atoll-large-", suffix=".log", delete=False)
    try:
        copy = work / "data"
        shutil.copytree(source, copy)
        print(f"data dir: {source} ({dir_size(copy) / 2**20:.0f} MiB), copied for this run")
        port, dns_port = free_port(), free_port()
        while dns_port == port:
            dns_port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [binary, "dev", "--data-dir", str(copy), "--http-addr", f"127.0.0.1:{port}",
               "--dns-addr", f"127.0.0.1:{dns_port}", "--node", "bench", "--serf-wan-port", "0",
               "--snapshot-after-entries", str(args.snapshot_after_entries),
               *os.environ.get("ATOLL_ARGS", "").split()]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        leader_at = None
        deadline = t0 + args.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit("atoll exited while starting:\n" + Path(log.name).read_text())
            if leader_at is None:
                status, body = get_status(base + "/v1/status/leader")
                if status == 200 and body.strip() not in (b"", b'""'):
                    leader_at = time.monotonic()
            if leader_at is not None:
                status, _ = get_status(base + "/v1/kv/" + PROBE_KEY)
                if status == 200:
                    break
            time.sleep(0.02)
        else:
            raise SystemExit(f"atoll not serving after {args.start_timeout:.0f} s")
        serving = time.monotonic() - t0
        print(f"restart: leader after {leader_at - t0:.2f} s, serving (KV read 200) after"
              f" {serving:.2f} s")
        start_hwm = proc_status_kb(proc.pid, "VmHWM")
        time.sleep(1.0)
        rss_before = proc_status_kb(proc.pid, "VmRSS")
        print(f"memory once serving: VmRSS {fmt_mb(rss_before)}, VmHWM during start"
              f" {fmt_mb(start_hwm)}")
        try:
            with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
                f.write("5")
            hwm_reset = True
        except OSError:
            hwm_reset = False
            print("  (cannot reset VmHWM; the peak below includes the start)")

        value = bytes((ord("a") + i % 26) for i in range(100))
        load = Load(args.writes, value)
        mark = len(log_events(log.name))
        elapsed, sampled_peak = asyncio.run(
            run_load(load, "127.0.0.1", port, args.writers, args.max_seconds, proc.pid))
        hwm = proc_status_kb(proc.pid, "VmHWM")
        rss_after = proc_status_kb(proc.pid, "VmRSS")
        events = log_events(log.name)[mark:]
        windows = snapshot_windows(events)

        acks = sorted(end for _, end in load.done)
        gaps = [b - a for a, b in zip(acks, acks[1:])]
        lat = sorted(end - start for start, end in load.done)
        print(f"\nwrites: {len(load.done):,} acknowledged of {load.next_i:,} sent over"
              f" {args.writers} keep-alive connections in {elapsed:.1f} s"
              f" ({len(load.done) / elapsed:,.0f}/s)")
        if load.errors:
            print(f"  errors: {load.errors}; first: {load.first_error}")
        if gaps:
            worst = max(range(len(gaps)), key=gaps.__getitem__)
            print(f"  longest gap between acknowledged writes: {ms(gaps[worst])}"
                  f" (at {acks[worst] - acks[0]:.1f} s into the run)")
        print(f"  latency p50 {ms(percentile(lat, 50))}, p99 {ms(percentile(lat, 99))},"
              f" max {ms(lat[-1]) if lat else 'n/a'}")
        if windows:
            during = sorted(end - start for start, end in load.done
                            if any(start < w_end and end > w_start for w_start, w_end in windows))
            took = sorted(w_end - w_start for w_start, w_end in windows)
            inside = [b - a for a, b in zip(acks, acks[1:])
                      if any(a < w_end and b > w_start for w_start, w_end in windows)]
            print(f"  snapshots taken during the run: {len(windows)}, each"
                  f" {ms(took[0])} .. {ms(took[-1])}")
            print(f"  writes overlapping a snapshot: {len(during):,}; p50"
                  f" {ms(percentile(during, 50))}, p99 {ms(percentile(during, 99))},"
                  f" max {ms(during[-1]) if during else 'n/a'}; longest gap"
                  f" {ms(max(inside)) if inside else 'n/a'}")
            print("  longest gaps (start into the run; where in a snapshot, from its start):")
            for g in sorted(range(len(gaps)), key=gaps.__getitem__, reverse=True)[:5]:
                where = "outside snapshots"
                for n, (w_start, w_end) in enumerate(windows):
                    if acks[g] < w_end and acks[g + 1] > w_start:
                        where = (f"snapshot {n + 1} at +{ms(max(0.0, acks[g] - w_start))}"
                                 f" of {ms(w_end - w_start)}")
                        break
                print(f"    {ms(gaps[g])} at {acks[g] - acks[0]:.2f} s, {where}")
        else:
            print("  (the node logged no `snapshot taken` lines; the gap above is the figure)")
        for _, line in events[:6]:
            print("  log:", line[:200])
        label = "VmHWM during the writes" if hwm_reset else "VmHWM"
        print(f"\nmemory: VmRSS before the writes {fmt_mb(rss_before)}, {label} {fmt_mb(hwm)}"
              f" ({hwm / rss_before:.2f}x), sampled VmRSS peak {fmt_mb(sampled_peak)},"
              f" VmRSS after {fmt_mb(rss_after)}" if hwm and rss_before else "memory: n/a")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        os.unlink(log.name)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
