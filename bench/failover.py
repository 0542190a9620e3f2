#!/usr/bin/env python3
"""Leader failover: time from kill -9 of the leader to the next acknowledged write.

    bench/failover.py [--kills K] [--max-seconds S]

Starts a 3-server cluster on loopback addresses (127.A.B.x, ports 8300, 8500,
8600) and repeats K times: find the leader, SIGKILL it, and time how long it
takes until a KV write through one of the two survivors is acknowledged. The
writer tries the survivors in turn with a short timeout per request, as a
client with a list of servers would. Then the killed server is restarted on
its data dir and the round ends once all three servers agree on the leader
again and the restarted one has caught up. Also shown: when a survivor first
names a new leader (polled every 20 ms in the background). A write attempt
that times out is retried at once, so the write time has a resolution of
about one REQUEST_TIMEOUT.

Environment: FAILOVER_KILLS (20), MAX_SECONDS (total, 600), REQUEST_TIMEOUT
(per write attempt, 0.2 s), ATOLL_BIN, ATOLL_E2E_SEED (replay addresses and
start order).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import requests

from benchlib import env_float, env_int, percentile
from clusterlib import Cluster

ROUND_LIMIT = 60.0  # one write after a kill, and one recovery, must finish within this


class LeaderWatch(threading.Thread):
    """Polls the survivors' /v1/status/leader every 20 ms; notes when one names a new leader."""

    def __init__(self, survivors, old_leader: str, started: float) -> None:
        super().__init__(daemon=True)
        self.survivors = survivors
        self.old_leader = old_leader
        self.started = started
        self.seen: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = self.started + ROUND_LIMIT
        while not self.stop.is_set() and time.monotonic() < deadline:
            for node in self.survivors:
                name = node.leader(timeout=0.2)
                if name and name != self.old_leader:
                    self.seen = time.monotonic() - self.started
                    return
            self.stop.wait(0.02)


def timed_write(session: requests.Session, survivors, key: str, value: str, started: float,
                request_timeout: float) -> tuple[float, str, int]:
    """Retry PUT key=value through the survivors in turn; return (seconds, via, attempts)."""
    deadline = started + ROUND_LIMIT
    attempt = 0
    while time.monotonic() < deadline:
        node = survivors[attempt % len(survivors)]
        attempt += 1
        try:
            r = session.put(f"{node.base_url}/v1/kv/{key}", data=value, timeout=request_timeout)
            if r.status_code == 200 and r.json() is True:
                return time.monotonic() - started, node.name, attempt
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.01)
    raise SystemExit(f"no write acknowledged within {ROUND_LIMIT:.0f}s of the kill")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=env_int("FAILOVER_KILLS", 20))
    parser.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 600.0))
    args = parser.parse_args()
    request_timeout = env_float("REQUEST_TIMEOUT", 0.2)
    seed = int(os.environ["ATOLL_E2E_SEED"]) if os.environ.get("ATOLL_E2E_SEED") else None

    write_times: list[float] = []
    leader_times: list[float] = []
    bench_start = time.monotonic()
    with Cluster(servers=3, seed=seed) as cluster:
        print(f"3 servers: {', '.join(f'{s.name}={s.ip}' for s in cluster.servers)} (seed {cluster.seed})")
        print(f"{args.kills} leader kills, write timeout {request_timeout}s per attempt\n")
        print(f"{'round':>5}  {'killed':>6}  {'new leader':>10}  {'first write':>11}  via")
        session = requests.Session()
        session.trust_env = False
        for round_no in range(1, args.kills + 1):
            if time.monotonic() - bench_start > args.max_seconds:
                print(f"stopping: MAX_SECONDS={args.max_seconds:.0f} reached")
                break
            leader = cluster.wait_agreement(timeout=ROUND_LIMIT)
            survivors = [s for s in cluster.servers if s is not leader]
            leader.kill9()
            killed_at = time.monotonic()
            watch = LeaderWatch(survivors, leader.rpc_addr, killed_at)
            watch.start()
            took, via, attempts = timed_write(session, survivors, f"failover/{round_no}", str(round_no),
                                              killed_at, request_timeout)
            watch.join(timeout=ROUND_LIMIT)
            watch.stop.set()
            write_times.append(took)
            seen = watch.seen
            if seen is not None:
                leader_times.append(seen)
            seen_text = f"{seen:9.3f}s" if seen is not None else f"{'-':>10}"
            print(f"{round_no:>5}  {leader.name:>6}  {seen_text}  {took:10.3f}s  {via} "
                  f"(attempt {attempts})", flush=True)

            # Bring it back on the same data dir and wait until it is a healthy follower.
            leader.spawn()
            cluster.wait_agreement(timeout=ROUND_LIMIT)
            recover_deadline = time.monotonic() + ROUND_LIMIT
            while True:
                try:
                    r = requests.get(f"{leader.base_url}/v1/kv/failover/{round_no}?stale&raw", timeout=1)
                    if r.status_code == 200 and r.text == str(round_no):
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > recover_deadline:
                    raise SystemExit(f"{leader.name} did not catch up after its restart\n{cluster.logs()}")
                time.sleep(0.05)

    if not write_times:
        print("no rounds completed")
        return 1
    values = sorted(write_times)
    print(f"\nkill -> first acknowledged write over {len(values)} kills: "
          f"min {values[0]:.3f}s  median {statistics.median(values):.3f}s  "
          f"p90 {percentile(values, 90):.3f}s  max {values[-1]:.3f}s")
    if leader_times:
        lt = sorted(leader_times)
        print(f"kill -> a survivor names a new leader ({len(lt)} rounds): "
              f"min {lt[0]:.3f}s  median {statistics.median(lt):.3f}s  "
              f"p90 {percentile(lt, 90):.3f}s  max {lt[-1]:.3f}s")
    print(f"total {time.monotonic() - bench_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
