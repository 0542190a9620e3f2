#!/usr/bin/env python3
"""Catch-up of a new server from a snapshot: time, and the leader's memory meanwhile.

    python3 bench/catch_up.py [--keys 150000] [--value-bytes 100]

Starts 3 servers (`atoll agent --server`, loopback addresses of their own, default
ports) with `--snapshot-after-entries 1000`, writes KEYS keys of VALUE_BYTES bytes
through `/v1/txn` (64 keys a transaction, 16 threads), waits until a snapshot
covers them and the log before it is purged, so a newcomer can only be brought up
to date by a snapshot. Then it resets the leader's VmHWM (`/proc/PID/clear_refs`),
starts a fourth server joining them, and reports:

- the time from its start until it serves the last key written (`?stale`, from its
  own state) and its applied index reached the leader's;
- the leader's VmRSS before and its VmHWM during the catch-up (a snapshot sent whole
  from memory would show as the snapshot's size on top of the RSS);
- the newcomer's RSS and data dir afterwards, and the snapshot's size.

Environment: ATOLL_BIN. Every wait is bounded; only processes started here are
stopped, by PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from pathlib import Path

from benchlib import proc_status_kb
from clusterlib import Cluster, Node, http_json

TXN_KEYS = 64
THREADS = 16


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fill(base_url: str, keys: int, value: bytes) -> float:
    """Writes `keys` keys through /v1/txn; returns the seconds taken."""
    encoded = base64.b64encode(value).decode()
    batches = [range(start, min(start + TXN_KEYS, keys)) for start in range(0, keys, TXN_KEYS)]
    failures: list[str] = []
    lock = threading.Lock()

    def worker(mine: list[range]) -> None:
        for batch in mine:
            body = json.dumps([{"KV": {"Verb": "set", "Key": f"k/{n:07d}", "Value": encoded}}
                               for n in batch]).encode()
            for _attempt in range(5):
                try:
                    status, _ = http_json(base_url + "/v1/txn", "PUT", body, timeout=30)
                except OSError as e:
                    status = str(e)
                if status == 200:
                    break
                time.sleep(0.2)
            else:
                with lock:
                    failures.append(f"batch at {batch.start}: {status}")

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(batches[t::THREADS],)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{len(failures)} transactions failed, first: {failures[0]}")
    return time.monotonic() - started


def storage(node: Node) -> dict:
    status, report = http_json(node.base_url + "/v1/operator/raft/storage", timeout=10)
    if status != 200 or not isinstance(report, dict):
        raise SystemExit(f"storage report of {node.name}: {status}")
    return report


def applied(node: Node) -> int:
    try:
        status, body = http_json(node.base_url + "/v1/agent/self", timeout=2)
    except OSError:
        return -1
    if status != 200 or not isinstance(body, dict):
        return -1
    return int(body.get("Stats", {}).get("raft", {}).get("applied_index", -1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=150_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    value = b"v" * args.value_bytes
    with Cluster(servers=3, server_args=["--snapshot-after-entries", "1000"]) as cluster:
        leader = cluster.wait_agreement(timeout=60)
        took = fill(leader.base_url, args.keys, value)
        print(f"{args.keys} keys of {args.value_bytes} bytes written in {took:.1f} s")
        last_key = f"k/{args.keys - 1:07d}"
        deadline = time.monotonic() + args.timeout
        while True:
            report = storage(leader)
            if report["LogFirstIndex"] > 1 and report["SnapshotIndex"] >= report["LogLastIndex"] - 1000:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"no snapshot covering the writes: {report}")
            # Small writes move the log past the next snapshot threshold.
            http_json(leader.base_url + "/v1/kv/catch-up/tick", "PUT", b"x", timeout=10)
        leader = cluster.wait_agreement(timeout=30)
        report = storage(leader)
        print(f"leader snapshot at {report['SnapshotIndex']}: {report['SnapshotBytes'] / 1e6:.1f} MB; "
              f"data dir {report.get('DataDirBytes', report['FileBytes']) / 1e6:.1f} MB")
        pid = leader.proc.pid
        rss_before = proc_status_kb(pid, "VmRSS") or 0
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        newcomer = Node(cluster.root, "s4", cluster.pool.take(), True, [s.ip for s in cluster.servers],
                        expect=3, extra=["--snapshot-after-entries", "1000"])
        cluster.servers.append(newcomer)
        started = time.monotonic()
        newcomer.spawn()
        target = applied(leader)
        served = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if not newcomer.running():
                raise SystemExit(f"the newcomer exited\n{newcomer.log_tail()}")
            if served is None:
                try:
                    status, body = http_json(f"{newcomer.base_url}/v1/kv/{last_key}?stale", timeout=2)
                except OSError:
                    status = 0
                if status == 200:
                    served = time.monotonic() - started
            if served is not None and applied(newcomer) >= target:
                break
            time.sleep(0.05)
        else:
            print(newcomer.log_tail(60))
            print(leader.log_tail(60))
            raise SystemExit(f"the newcomer did not catch up in {args.timeout:.0f} s")
        caught_up = time.monotonic() - started
        if caught_up > 30:
            print(newcomer.log_tail(40))
            print(leader.log_tail(40))
        hwm = proc_status_kb(pid, "VmHWM") or 0
        print(f"new server: serves the last key after {served:.2f} s, applied index {target} after "
              f"{caught_up:.2f} s")
        print(f"leader: VmRSS before {rss_before / 1024:.0f} MB, VmHWM during the catch-up "
              f"{hwm / 1024:.0f} MB ({hwm / max(rss_before, 1):.2f}x)")
        time.sleep(1)
        print(f"new server: RSS {(proc_status_kb(newcomer.proc.pid, 'VmRSS') or 0) / 1024:.0f} MB, "
              f"data dir {dir_bytes(newcomer.dir / 'data') / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
