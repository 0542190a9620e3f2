#!/usr/bin/env python3
"""Committed writes/s on a 3-server cluster, and how fast a lost node leaves DNS.

    bench/cluster_writes.py [--count N] [--workers W] [--max-seconds S]

Starts a 3-server cluster on loopback addresses (127.A.B.x, ports 8300, 8500,
8600), then runs four phases, each N writes from W threads with one
keep-alive requests.Session each:

  kv -> follower        PUT /v1/kv/bench/...   sent to a follower (forwarded)
  kv -> leader          PUT /v1/kv/bench/...   sent to the leader
  register -> follower  PUT /v1/agent/service/register   on a follower
  register -> leader    PUT /v1/agent/service/register   on the leader

A write is acknowledged only once Raft committed it, so this is the rate of
committed writes. Prints ops/s and per-request latency (p50, p99, max), then
checks every acknowledged write is visible through a consistent read.

Before those, "node loss -> leaves DNS": a client node (default
--heartbeat-ttl, 5 s) registers a service; it is killed with SIGKILL and a
server's DNS is asked for the service every 50 ms until it is gone. Repeated
DNS_ROUNDS times (restarting the client in between).

Environment: N (3000), WORKERS (16), MAX_SECONDS (per phase, 120),
DNS_ROUNDS (3), ATOLL_BIN, ATOLL_E2E_SEED. The load generator is one Python
process on the same machine as the three servers: on a small machine it
competes with them for CPU and caps what is measured.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time

import requests

from benchlib import env_float, env_int, percentile
from clusterlib import Cluster, Node, dns_a_count


class Phase:
    def __init__(self, name: str, target: Node, count: int, workers: int, max_seconds: float, send) -> None:
        self.name = name
        self.target = target
        self.count = count
        self.workers = workers
        self.max_seconds = max_seconds
        self.send = send  # (session, base_url, i) -> bool
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None
        self.acked: list[int] = []
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.wall = 0.0

    def worker(self, deadline: float) -> None:
        session = requests.Session()
        session.trust_env = False
        base = self.target.base_url
        while time.monotonic() < deadline:
            i = next(self.counter)
            if i >= self.count:
                break
            start = time.perf_counter()
            try:
                ok, detail = self.send(session, base, i)
            except requests.RequestException as e:
                ok, detail = False, f"{type(e).__name__}: {e}"
            took = time.perf_counter() - start
            with self.lock:
                if ok:
                    self.latencies.append(took)
                    self.acked.append(i)
                else:
                    kind = detail.split(":", 1)[0]
                    self.errors[kind] = self.errors.get(kind, 0) + 1
                    self.first_error = self.first_error or detail
        session.close()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        threads = [threading.Thread(target=self.worker, args=(deadline,), daemon=True)
                   for _ in range(self.workers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.max_seconds + 30)
        self.wall = time.perf_counter() - start

    def report(self) -> str:
        lat = sorted(self.latencies)
        ok = len(lat)
        rate = ok / self.wall if self.wall > 0 else 0.0
        line = (f"{self.name:<22} {ok:>6} ok in {self.wall:6.2f}s  {rate:8.0f} ops/s  "
                f"p50 {percentile(lat, 50) * 1000:6.2f} ms  p99 {percentile(lat, 99) * 1000:7.2f} ms  "
                f"max {(lat[-1] if lat else float('nan')) * 1000:7.2f} ms")
        if self.errors:
            line += f"\n{'':<22} errors {self.errors}; first: {self.first_error}"
        return line


def kv_put(prefix: str):
    def send(session: requests.Session, base: str, i: int):
        r = session.put(f"{base}/v1/kv/{prefix}/{i}", data=f"v{i}", timeout=10)
        if r.status_code == 200 and r.text.strip() == "true":
            return True, ""
        return False, f"HTTP {r.status_code}: {r.text[:200]}"
    return send


def register(prefix: str):
    def send(session: requests.Session, base: str, i: int):
        body = {"Name": prefix, "ID": f"{prefix}-{i}", "Port": 10000 + i % 50000}
        r = session.put(f"{base}/v1/agent/service/register", json=body, timeout=10)
        if r.status_code == 200:
            return True, ""
        return False, f"HTTP {r.status_code}: {r.text[:200]}"
    return send


def verify_kv(leader: Node, prefix: str, acked: list[int]) -> str:
    r = requests.get(f"{leader.base_url}/v1/kv/{prefix}/?keys&consistent", timeout=30)
    keys = set(r.json()) if r.status_code == 200 else set()
    missing = [i for i in acked if f"{prefix}/{i}" not in keys]
    return f"{len(acked) - len(missing)}/{len(acked)} acknowledged keys present" + (
        f", MISSING {len(missing)} (e.g. {missing[:5]})" if missing else "")


def verify_services(leader: Node, name: str, acked: list[int]) -> str:
    r = requests.get(f"{leader.base_url}/v1/catalog/service/{name}?consistent", timeout=30)
    ids = {e["ServiceID"] for e in r.json()} if r.status_code == 200 else set()
    missing = [i for i in acked if f"{name}-{i}" not in ids]
    return f"{len(acked) - len(missing)}/{len(acked)} acknowledged registrations in the catalog" + (
        f", MISSING {len(missing)} (e.g. {missing[:5]})" if missing else "")


def dns_loss(cluster: Cluster, rounds: int) -> list[float]:
    """Kill -9 a client node with a service; time until a server's DNS drops the service."""
    client = cluster.add_client("c1")
    server = cluster.servers[0]
    name = "lossy.service.consul"
    times: list[float] = []
    client.spawn()
    for round_no in range(1, rounds + 1):
        if not client.running():
            client.spawn()
        deadline = time.monotonic() + 60
        registered = False
        while time.monotonic() < deadline:
            try:
                if not registered:
                    r = requests.put(f"{client.base_url}/v1/agent/service/register",
                                     json={"Name": "lossy", "ID": "lossy-1", "Port": 4242}, timeout=2)
                    registered = r.status_code == 200
                if registered and dns_a_count(server.ip, name) == 1:
                    break
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.05)
        else:
            raise SystemExit(f"the client's service never showed up in DNS\n{cluster.logs()}")

        client.kill9()
        killed = time.monotonic()
        gone_at = None
        for _ in range(int(120 / 0.05)):  # bounded: 2 minutes at most
            try:
                if dns_a_count(server.ip, name) == 0:
                    gone_at = time.monotonic() - killed
                    break
            except OSError:
                pass
            if time.monotonic() - killed > 120:
                break
            time.sleep(0.05)
        if gone_at is None:
            print(f"round {round_no}: still in DNS 120 s after the kill")
            break
        times.append(gone_at)
        print(f"round {round_no}: client killed -> {name} gone from {server.name}'s DNS after {gone_at:.3f}s",
              flush=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", "-n", type=int, default=env_int("N", 3000))
    parser.add_argument("--workers", "-w", type=int, default=env_int("WORKERS", 16))
    parser.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 120.0))
    parser.add_argument("--dns-rounds", type=int, default=env_int("DNS_ROUNDS", 3))
    args = parser.parse_args()
    seed = int(os.environ["ATOLL_E2E_SEED"]) if os.environ.get("ATOLL_E2E_SEED") else None

    with Cluster(servers=3, seed=seed) as cluster:
        print(f"3 servers: {', '.join(f'{s.name}={s.ip}' for s in cluster.servers)} (seed {cluster.seed})\n")
        # First, while the state is small: a node joining later needs a snapshot, and one
        # bigger than an RPC request body may hold cannot be installed (see the report).
        print("node loss -> leaves DNS (client node, heartbeat TTL 5 s default, DNS polled every 50 ms)")
        times = dns_loss(cluster, args.dns_rounds)
        if times:
            t = sorted(times)
            print(f"node loss -> out of DNS over {len(t)} kills: min {t[0]:.3f}s  max {t[-1]:.3f}s")
        for client in cluster.clients:
            client.kill9()
        leader = cluster.wait_agreement(timeout=60)
        follower = next(s for s in cluster.servers if s is not leader)

        print(f"\n{args.count} writes per phase from {args.workers} threads (requests.Session each); "
              f"leader {leader.name}, follower {follower.name}\n")
        phases = [
            Phase("kv -> follower", follower, args.count, args.workers, args.max_seconds, kv_put("bench/f")),
            Phase("kv -> leader", leader, args.count, args.workers, args.max_seconds, kv_put("bench/l")),
            Phase("register -> follower", follower, args.count, args.workers, args.max_seconds,
                  register("bench-f")),
            Phase("register -> leader", leader, args.count, args.workers, args.max_seconds,
                  register("bench-l")),
        ]
        for phase in phases:
            phase.run()
            print(phase.report(), flush=True)
        if cluster.wait_agreement(timeout=30) is not leader:
            print("note: the leader changed during the run")

        print()
        leader = cluster.wait_agreement(timeout=30)
        print("check kv -> follower:", verify_kv(leader, "bench/f", phases[0].acked))
        print("check kv -> leader:", verify_kv(leader, "bench/l", phases[1].acked))
        print("check register -> follower:", verify_services(leader, "bench-f", phases[2].acked))
        print("check register -> leader:", verify_services(leader, "bench-l", phases[3].acked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
