#!/usr/bin/env python3
"""The servers with many compute nodes, simulated by `atoll nodesim` (issue 11).

    bench/nodes.py [--servers 3] [--counts 0,30,1000,5000] [--membership none]
                   [--containers-nodes 1000] [--instances 10000] [--apps 10]

For each node count: a fresh cluster of --servers servers on loopback
(clusterlib), then one `atoll nodesim` process running that many simulated
compute nodes (none for 0), all registered; then

  (a) `hey -n 5000 -c 16` KV PUTs to the leader: writes/s, the leader's CPU
      time per 1,000 writes (user + system, /proc/PID/stat), and, before the
      load, the leader's idle CPU per second with the nodes attached;

  (b) at --probe-nodes nodes (1,000), --probes (20) times: a catalog node
      registered through a server by the simulator (`POST /probe` on its
      stats address), and the time from its acknowledgement to every simulated
      node's view (its stream's applied index) holding it: p50, p99, max over
      the nodes, each the median over the probes;

then, on the cluster with --containers-nodes nodes (skipped with 0),

  (c) --instances instances across --apps apps submitted through POST /v2/apps
      (all at once), and the time until every one is reported running
      (`tasksRunning` summed over /v2/apps, polled on a follower every 0.25 s):
      containers/s.

Environment: ATOLL_BIN (the binary, release build recommended), HEY_BIN (hey),
ATOLL_E2E_SEED. Everything runs on one machine: the servers, the simulator
and the load generator share its cores, which the figures include.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchlib import atoll_bin
from clusterlib import Cluster, http_json


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (every thread, ended ones too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Simulator:
    def __init__(self, root: Path, servers: list[str], nodes: int, membership: str, octet: int) -> None:
        self.nodes = nodes
        self.stats_addr = f"127.0.0.1:{free_port()}"
        cmd = [atoll_bin(), "nodesim", "--nodes", str(nodes), "--membership", membership,
               "--address-octet", str(octet), "--stats", self.stats_addr]
        for s in servers:
            cmd += ["--join", s]
        self.log = root / "nodesim.log"
        env = dict(os.environ)
        env.setdefault("ATOLL_LOG", "warn")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def stats(self) -> dict:
        if self.proc.poll() is not None:
            raise SystemExit(f"nodesim exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        status, value = http_json(f"http://{self.stats_addr}/", timeout=5)
        return value if status == 200 and isinstance(value, dict) else {}

    def wait_registered(self, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if self.stats().get("registered") == self.nodes:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.5)
        failures = [line for line in self.log.read_text(errors="replace").splitlines() if "failed" in line]
        raise SystemExit(f"only {self.stats().get('registered')} of {self.nodes} nodes registered in {timeout:.0f}s; "
                         f"counters {self.stats()}; the simulator's last failures:\n" + "\n".join(failures[-20:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def hey_puts(url: str, n: int, c: int) -> tuple[float, int]:
    """(requests/s, 2xx answers) of `hey -n N -c C` KV PUTs."""
    binary = os.environ.get("HEY_BIN", "hey")
    out = subprocess.run([binary, "-n", str(n), "-c", str(c), "-t", "20", "-m", "PUT", "-d", "value", url],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"hey failed: {out.stderr}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    ok = sum(int(k) for code, k in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out.stdout) if code.startswith("2"))
    return (float(rate.group(1)) if rate else 0.0), ok


def leader_pid(cluster: Cluster):
    leader = cluster.wait_agreement(timeout=60)
    assert leader.proc is not None
    return leader, leader.proc.pid


def writes_row(cluster: Cluster, nodes: int, writes: int, conc: int, sim: Simulator | None) -> str:
    leader, pid = leader_pid(cluster)
    settle = 5.0
    time.sleep(settle)
    idle0 = cpu_seconds(pid)
    time.sleep(5.0)
    idle = (cpu_seconds(pid) - idle0) / 5.0
    before = cpu_seconds(pid)
    sim_before = cpu_seconds(sim.proc.pid) if sim else 0.0
    rate, ok = hey_puts(f"{leader.base_url}/v1/kv/bench/nodes", writes, conc)
    used = cpu_seconds(pid) - before
    sim_used = (cpu_seconds(sim.proc.pid) - sim_before) if sim else 0.0
    per_1000 = used / max(ok, 1) * 1000
    sim_rss = f"{rss_mb(sim.proc.pid):7.0f} MB" if sim else "      -"
    return (f"{nodes:>6} nodes  {rate:8,.0f} writes/s ({ok} ok)  leader CPU {per_1000:5.2f} s per 1,000 writes  "
            f"leader idle CPU {idle:5.2f} s/s  leader RSS {rss_mb(pid):5.0f} MB  "
            f"simulator CPU {sim_used:5.1f} s, RSS {sim_rss}")


def probe_row(sim: Simulator, nodes: int, probes: int) -> str:
    p50s, p99s, maxes, short = [], [], [], 0
    for _ in range(probes):
        status, value = http_json(f"http://{sim.stats_addr}/probe", method="POST", body=b"", timeout=120)
        if status != 200 or not isinstance(value, dict) or value.get("p50_ms") is None:
            raise SystemExit(f"probe failed: {status} {value}")
        if value["reached"] < value["nodes"]:
            short += 1
        p50s.append(value["p50_ms"])
        p99s.append(value["p99_ms"])
        maxes.append(value["max_ms"])
        time.sleep(0.5)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    line = (f"{nodes:>6} nodes  catalog change -> every node's view, median of {probes} probes: "
            f"p50 {med(p50s):.1f} ms  p99 {med(p99s):.1f} ms  max {med(maxes):.1f} ms (worst max {max(maxes):.1f} ms)")
    if short:
        line += f"; {short} probe(s) did not reach every node within 60 s"
    return line


def running_total(server, apps: list[str]) -> int:
    status, value = http_json(f"{server.base_url}/v2/apps?embed=apps.counts", timeout=30)
    if status != 200 or not isinstance(value, dict):
        return -1
    return sum(a.get("tasksRunning", 0) for a in value.get("apps", []) if a.get("id") in apps)


def containers_row(cluster: Cluster, nodes: int, instances: int, apps: int, timeout: float) -> str:
    leader, _ = leader_pid(cluster)
    follower = next(s for s in cluster.servers if s is not leader)
    per_app = instances // apps
    ids = [f"/bench/app{i}" for i in range(apps)]
    start = time.monotonic()
    for app_id in ids:
        body = json.dumps({"id": app_id, "cmd": "sleep 100000", "cpus": 0.01, "mem": 1,
                           "instances": per_app, "portDefinitions": [{"port": 0}]}).encode()
        status, value = http_json(f"{leader.base_url}/v2/apps", method="POST", body=body, timeout=30)
        if status != 201:
            raise SystemExit(f"POST /v2/apps {app_id}: {status} {value}")
    submitted = time.monotonic() - start
    total = per_app * apps
    running = 0
    while time.monotonic() - start < timeout:
        running = running_total(follower, ids)
        if running >= total:
            break
        time.sleep(0.25)
    took = time.monotonic() - start
    if running < total:
        return f"{nodes:>6} nodes  only {running} of {total} running after {took:.0f}s"
    return (f"{nodes:>6} nodes  {total} instances in {apps} apps: submitted in {submitted:.1f}s, "
            f"all running after {took:.1f}s: {total / took:,.0f} containers/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--counts", default="0,30,1000,5000")
    parser.add_argument("--membership", default="none", choices=["heartbeat", "pool", "none"])
    parser.add_argument("--probe-nodes", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--writes", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--containers-nodes", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--register-timeout", type=float, default=600)
    parser.add_argument("--run-timeout", type=float, default=900)
    args = parser.parse_args()
    if shutil.which(os.environ.get("HEY_BIN", "hey")) is None:
        raise SystemExit("hey not found (Debian: apt-get install hey)")
    counts = [int(c) for c in args.counts.split(",") if c]
    print(f"{args.servers} server(s) on loopback, `atoll nodesim --membership {args.membership}`, "
          f"hey -n {args.writes} -c {args.concurrency} KV PUTs to the leader", flush=True)
    plan = [(n, False) for n in counts]
    if args.containers_nodes:
        plan.append((args.containers_nodes, True))
    for nodes, containers in plan:
        with Cluster(servers=args.servers) as cluster:
            sim = None
            try:
                if nodes:
                    octet = cluster.rng.randint(10, 250)
                    sim = Simulator(cluster.root, [s.rpc_addr for s in cluster.servers], nodes,
                                    args.membership, octet)
                    took = sim.wait_registered(args.register_timeout)
                    print(f"{nodes:>6} nodes registered in {took:.1f}s", flush=True)
                if containers:
                    print(containers_row(cluster, nodes, args.instances, args.apps, args.run_timeout), flush=True)
                else:
                    print(writes_row(cluster, nodes, args.writes, args.concurrency, sim), flush=True)
                    if sim and nodes == args.probe_nodes and args.probes:
                        print(probe_row(sim, nodes, args.probes), flush=True)
            finally:
                if sim:
                    sim.close()


if __name__ == "__main__":
    sys.exit(main())
