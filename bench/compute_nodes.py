#!/usr/bin/env python3
"""What compute nodes cost the leader: writes/s and leader CPU per 1,000 writes with 0 and N
real compute nodes (issue 11's table).

    bench/compute_nodes.py

For each node count in NODES (default "0 30"): a fresh cluster of SERVERS servers (default 1)
on loopback addresses, plus that many `atoll agent` compute nodes, each holding a copy of the
state streamed from a server (waited for through /v1/agent/self Stats.feed). Then
`hey -n WRITES -c CONCURRENCY -m PUT` KV PUTs to the leader, and from /proc the leader's CPU
time (user + system) over the run and its RSS after it. Prints one table row per count.

Environment: NODES ("0 30"), SERVERS (1), WRITES (5000), CONCURRENCY (16), ATOLL_BIN.
Everything runs on this machine: the compute nodes, `hey` and the servers share its cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from benchlib import env_int, proc_status_kb
from clusterlib import Cluster, http_json

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the ")" they are the 12th and 13th.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def holds_copy(node) -> bool:
    try:
        status, body = http_json(node.base_url + "/v1/agent/self", timeout=2.0)
    except OSError:
        return False
    if status != 200:
        return False
    feed = body.get("Stats", {}).get("feed")
    return bool(feed) and int(feed.get("snapshots", "0")) + int(feed.get("resumes", "0")) >= 1


def registered(leader, names: set[str]) -> bool:
    try:
        status, body = http_json(leader.base_url + "/v1/catalog/nodes", timeout=2.0)
    except OSError:
        return False
    return status == 200 and names <= {n["Node"] for n in body}


def wait(what: str, predicate, timeout: float, logs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}\n{logs()}")


def measure(nodes: int, servers: int, writes: int, concurrency: int) -> dict:
    with Cluster(servers=servers) as cluster:
        leader = cluster.wait_agreement(timeout=60)
        clients = [cluster.add_client(f"c{i + 1}") for i in range(nodes)]
        for client in clients:
            client.spawn()
        for client in clients:
            wait(f"{client.name} to hold a copy", lambda c=client: holds_copy(c), 120, cluster.logs)
        wait("every compute node in the catalog", lambda: registered(leader, {c.name for c in clients}),
             120, cluster.logs)
        leader = cluster.wait_agreement(timeout=60)
        assert leader.proc is not None
        pid = leader.proc.pid
        time.sleep(2)  # let registrations and first checks settle
        before = cpu_seconds(pid)
        run = subprocess.run(
            ["hey", "-n", str(writes), "-c", str(concurrency), "-m", "PUT", "-d", "value",
             f"{leader.base_url}/v1/kv/bench/key"],
            capture_output=True, text=True, timeout=600)
        after = cpu_seconds(pid)
        if run.returncode != 0:
            raise SystemExit(f"hey failed: {run.stderr}")
        rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", run.stdout).group(1))
        ok = re.search(r"\[200\]\s+(\d+) responses", run.stdout)
        return {
            "nodes": nodes,
            "writes_per_s": rate,
            "ok": int(ok.group(1)) if ok else 0,
            "cpu_per_1000": (after - before) / writes * 1000,
            "rss_mb": (proc_status_kb(pid, "VmRSS") or 0) / 1024,
        }


def main() -> int:
    if shutil.which("hey") is None:
        print("hey is not installed", file=sys.stderr)
        return 1
    counts = [int(n) for n in os.environ.get("NODES", "0 30").split()]
    servers = env_int("SERVERS", 1)
    writes = env_int("WRITES", 5000)
    concurrency = env_int("CONCURRENCY", 16)
    print(f"{servers} server(s); hey -n {writes} -c {concurrency} KV PUTs to the leader")
    print("| compute nodes | writes/s | leader CPU per 1,000 writes | leader RSS | 200s |")
    print("|---|---|---|---|---|")
    for nodes in counts:
        row = measure(nodes, servers, writes, concurrency)
        print(f"| {row['nodes']} | {row['writes_per_s']:,.0f} | {row['cpu_per_1000']:.2f} s "
              f"| {row['rss_mb']:.0f} MB | {row['ok']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
