#!/usr/bin/env python3
"""Storage footprint: atoll's data dir against etcd's for the same keys, and under churn.

    python3 bench/footprint.py [--keys 150000] [--writers 32] [--churn-seconds 0]

Phase 1, for each system in turn (a fresh `atoll dev` and a fresh single etcd
member, each with a new data dir on free 127.0.0.1 ports): KEYS keys of
VALUE_BYTES bytes written by WRITERS threads over keep-alive connections.
Reports the time to write, the data dir's size, the RSS afterwards, and for
atoll the time from a restart (kill, start on the same data dir) until a key
reads back.

Phase 2 (with --churn-seconds S > 0): for S seconds the same writers overwrite
random keys and delete and re-create some, against each system in turn; the
data dir's size is printed every INTERVAL seconds. etcd gets its documented
maintenance during the churn (compaction to the current revision and a
defragmentation every 60 s, as `etcd --auto-compaction` and an operator's
defrag would), atoll none.

Environment: KEYS, WRITERS, VALUE_BYTES (100), INTERVAL (10), ATOLL_BIN,
ETCD_BIN. Every loop is bounded in count and time; only processes started here
are stopped, by PID.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchlib import atoll_bin, env_int, free_port, proc_status_kb

MAX_SECONDS = 900  # per write phase


def dir_bytes(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:  # a snapshot file replaced while the dir is walked
            pass
    return total


def snapshot_stats(log_path: Path) -> str:
    """What atoll's `snapshot taken` log lines say: how many, write time, size."""
    took, size = [], []
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in lines:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "snapshot taken" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        try:
            took.append(int(fields["took_ms"]))
            size.append(int(fields["bytes"]))
        except (KeyError, ValueError):
            continue
    if not took:
        return "no snapshot logged"
    took.sort()
    return (f"{len(took)} snapshots, write time median {took[len(took) // 2]} ms, max {took[-1]} ms, "
            f"last {size[-1] / 1e6:.1f} MB")


def breakdown(target) -> str:
    """For atoll: the database file and the snapshot files, apart."""
    data = target.data_dir()
    redb = data / "atoll.redb"
    snaps = data / "snapshots"
    redb_mb = redb.stat().st_size / 1e6 if redb.exists() else 0.0
    snaps_mb = dir_bytes(snaps) / 1e6 if snaps.exists() else 0.0
    return f"(atoll.redb {redb_mb:.1f}, snapshots/ {snaps_mb:.1f})"


class Target:
    """A system under test: how to write, delete and read one key."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, conn, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def rss_mb(self) -> float:
        kb = proc_status_kb(self.proc.pid, "VmRSS") if self.proc else None
        return (kb or 0) / 1024

    def wait_ready(self, timeout: float = 120.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n" + (self.root / "log").read_text()[-2000:])
            try:
                if self.ready():
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"{self.name} not ready after {timeout:.0f}s")


class Atoll(Target):
    name = "atoll"

    def start(self) -> None:
        if not self.port:
            self.port, self.dns = free_port(), free_port()
        self.log = open(self.root / "log", "ab")
        self.proc = subprocess.Popen(
            [atoll_bin(), "dev", "--data-dir", str(self.root / "data"), "--http-addr",
             f"127.0.0.1:{self.port}", "--dns-addr", f"127.0.0.1:{self.dns}", "--node", "bench",
             "--serf-wan-port", "0"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        conn = self.connection()
        try:
            status, body = self.request(conn, "GET", "/v1/kv/k/000000", None)
            return status == 200
        finally:
            conn.close()

    def put(self, conn, key: str, value: bytes) -> bool:
        status, _ = self.request(conn, "PUT", f"/v1/kv/{key}", value)
        return status == 200

    def delete(self, conn, key: str) -> bool:
        status, _ = self.request(conn, "DELETE", f"/v1/kv/{key}", None)
        return status == 200

    def data_dir(self) -> Path:
        return self.root / "data"

    def maintain(self) -> None:
        pass


class Etcd(Target):
    name = "etcd"

    def start(self) -> None:
        self.port, peer = free_port(), free_port()
        self.log = open(self.root / "log", "ab")
        self.proc = subprocess.Popen(
            [os.environ.get("ETCD_BIN", "etcd"), "--name", "e0", "--data-dir", str(self.root / "data"),
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--listen-client-urls", f"http://127.0.0.1:{self.port}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.port}",
             "--initial-cluster", f"e0=http://127.0.0.1:{peer}", "--log-level", "error"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    @staticmethod
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def ready(self) -> bool:
        conn = self.connection()
        try:
            status, _ = self.request(conn, "POST", "/v3/kv/range", json.dumps({"key": self.b64(b"x")}).encode())
            return status == 200
        finally:
            conn.close()

    def put(self, conn, key: str, value: bytes) -> bool:
        body = json.dumps({"key": self.b64(key.encode()), "value": self.b64(value)}).encode()
        status, _ = self.request(conn, "POST", "/v3/kv/put", body)
        return status == 200

    def delete(self, conn, key: str) -> bool:
        body = json.dumps({"key": self.b64(key.encode())}).encode()
        status, _ = self.request(conn, "POST", "/v3/kv/deleterange", body)
        return status == 200

    def data_dir(self) -> Path:
        return self.root / "data"

    def maintain(self) -> None:
        conn = self.connection()
        try:
            _, body = self.request(conn, "POST", "/v3/kv/range", json.dumps({"key": self.b64(b"x")}).encode())
            revision = int(json.loads(body)["header"]["revision"])
            self.request(conn, "POST", "/v3/kv/compaction", json.dumps({"revision": revision}).encode())
            self.request(conn, "POST", "/v3/maintenance/defragment", b"{}")
        finally:
            conn.close()


def run_writers(target: Target, writers: int, work, seconds: float) -> tuple[int, int]:
    """Runs `work(conn, worker, i)` from `writers` threads until it returns False or the time
    is up; returns (acknowledged, failed)."""
    counts = [0, 0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(w: int) -> None:
        conn = target.connection()
        i = 0
        ok = bad = 0
        while time.monotonic() < deadline:
            result = work(conn, w, i)
            if result is None:
                break
            if result:
                ok += 1
            else:
                bad += 1
            i += 1
        conn.close()
        with lock:
            counts[0] += ok
            counts[1] += bad

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=env_int("KEYS", 150000))
    parser.add_argument("--writers", type=int, default=env_int("WRITERS", 32))
    parser.add_argument("--value-bytes", type=int, default=env_int("VALUE_BYTES", 100))
    parser.add_argument("--churn-seconds", type=float, default=0)
    parser.add_argument("--interval", type=float, default=float(os.environ.get("INTERVAL", "10")))
    parser.add_argument("--only", choices=["atoll", "etcd"])
    args = parser.parse_args()
    value = b"v" * args.value_bytes
    payload = args.keys * (len("k/000000") + args.value_bytes)
    print(f"{args.keys} keys of {args.value_bytes} bytes, {args.writers} writers; payload {payload / 1e6:.1f} MB")
    root = Path(tempfile.mkdtemp(prefix="footprint-bench-"))
    try:
        for kind in (Atoll, Etcd):
            if args.only and kind.name != args.only:
                continue
            sub = root / kind.name
            sub.mkdir()
            target = kind(sub)
            target.start()
            target.wait_ready() if kind is Etcd else wait_started(target)
            try:
                per = (args.keys + args.writers - 1) // args.writers

                def write(conn, w, i):
                    n = w * per + i
                    if i >= per or n >= args.keys:
                        return None
                    return target.put(conn, f"k/{n:06d}", value)

                start = time.monotonic()
                ok, bad = run_writers(target, args.writers, write, MAX_SECONDS)
                took = time.monotonic() - start
                time.sleep(1)
                size = dir_bytes(target.data_dir())
                print(f"{kind.name}: {ok} keys written in {took:.1f} s ({ok / took:,.0f}/s, {bad} failed); "
                      f"data dir {size / 1e6:.1f} MB; RSS {target.rss_mb():.0f} MB")
                if kind is Atoll:
                    conn = target.connection()
                    _, body = target.request(conn, "GET", "/v1/operator/raft/storage", None)
                    conn.close()
                    report = json.loads(body)
                    mb = lambda key: report[key] / 1e6  # noqa: E731 - a local shorthand
                    print(f"atoll: data dir {breakdown(target)}; file {mb('FileBytes'):.1f} MB, in use {mb('AllocatedBytes'):.1f} MB, "
                          f"stored {mb('StoredBytes'):.1f} MB: log {report['LogEntries']} entries "
                          f"{mb('LogBytes'):.1f} MB, snapshot at {report['SnapshotIndex']} "
                          f"{mb('SnapshotBytes'):.1f} MB")
                    target.stop()
                    target.start()
                    took = target.wait_ready()
                    print(f"atoll: {snapshot_stats(target.root / 'log')}")
                    print(f"atoll: restart until a key reads back {took:.2f} s; RSS {target.rss_mb():.0f} MB; "
                          f"data dir {dir_bytes(target.data_dir()) / 1e6:.1f} MB {breakdown(target)}")
                if args.churn_seconds > 0:
                    churn(target, args, value)
            finally:
                target.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def wait_started(target: Target) -> None:
    """atoll before any key exists: ready once it has a leader."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = target.connection()
            status, body = target.request(conn, "GET", "/v1/status/leader", None)
            conn.close()
            if status == 200 and json.loads(body):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("atoll not ready")


def churn(target: Target, args, value: bytes) -> None:
    """Overwrites, deletes and re-creates keys for --churn-seconds, printing the data dir's size."""
    rng = random.Random(7)
    stop_at = time.monotonic() + args.churn_seconds
    next_maintenance = time.monotonic() + 60
    print(f"{target.name} churn: t(s) data-dir(MB)")
    while time.monotonic() < stop_at:
        window = min(args.interval, stop_at - time.monotonic())

        def work(conn, w, i):
            n = rng.randrange(args.keys)
            if rng.random() < 0.2:
                return target.delete(conn, f"k/{n:06d}")
            return target.put(conn, f"k/{n:06d}", value)

        run_writers(target, args.writers, work, window)
        if time.monotonic() >= next_maintenance:
            target.maintain()
            next_maintenance += 60
        elapsed = args.churn_seconds - (stop_at - time.monotonic())
        detail = f"  {breakdown(target)}" if target.name == "atoll" else ""
        print(f"  {elapsed:6.0f} {dir_bytes(target.data_dir()) / 1e6:8.1f}{detail}")
    if target.name == "atoll":
        print(f"atoll churn: {snapshot_stats(target.root / 'log')}")


if __name__ == "__main__":
    main()
