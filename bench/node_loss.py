#!/usr/bin/env python3
"""Compute node loss: how long until its instances leave DNS, and until replacements run.

    bench/node_loss.py [--rounds R] [--instances N] [--heartbeat-ttl S] [--loss kill|stop|both]

Starts 3 servers and 3 compute (client) nodes on loopback addresses
(127.A.B.x, ports 8300, 8301, 8500, 8600), deploys an exec app of N instances
(`sleep`, one dynamic port each, so each instance is a service instance),
then repeats R times for each kind of loss: SIGKILL (`kill`: the process
dies, its sockets close) or SIGSTOP (`stop`: the node goes silent, as a
frozen or cut-off machine) the compute node running the most instances,
and time, from the signal,

  out of DNS    until a server's DNS answer for the app's service holds no
                address of the dead node (polled every 20 ms);
  replaced      until the app has N tasks TASK_RUNNING again, none on the
                dead node, and DNS lists N instances again.

A killed node is started again on its data dir between rounds (its orphaned
processes are stopped by it, not run twice); a stopped one gets SIGCONT and
the round ends once it is passing again.

Environment: ROUNDS (5), INSTANCES (6), LOSS (both), HEARTBEAT_TTL (the
nodes' --heartbeat-ttl, seconds; default 5 as atoll's; it applies only to
nodes without a LAN pool), NODE_ARGS (more flags for every node, e.g.
"--serf-lan-port 0" to measure the heartbeats), MAX_SECONDS (total, 900),
ATOLL_BIN, ATOLL_E2E_SEED.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import requests

from benchlib import env_float, env_int, percentile
from clusterlib import Cluster, dns_a_addresses

APP = "/lossbench"
SERVICE = "lossbench.service.consul"
POLL = 0.02
ROUND_LIMIT = 60.0


def running_tasks(server) -> list[dict]:
    r = requests.get(f"{server.base_url}/v2/apps{APP}/tasks", timeout=2)
    r.raise_for_status()
    return [t for t in r.json()["tasks"] if t["state"] == "TASK_RUNNING"]


def dns_addresses(server) -> list[str]:
    try:
        return dns_a_addresses(server.ip, SERVICE)
    except OSError:
        return []


def node_passing(server, node: str) -> bool:
    r = requests.get(f"{server.base_url}/v1/health/node/{node}", timeout=2)
    r.raise_for_status()
    return any(c["CheckID"] == "serfHealth" and c["Status"] == "passing" for c in r.json())


def pool_whole(server, names: list[str]) -> bool:
    """Every node listed alive by the server's LAN pool (a member the pool lists carries no
    `raft_id` tag; one listed from the Raft membership does)."""
    members = {m["Name"]: m for m in requests.get(f"{server.base_url}/v1/agent/members", timeout=2).json()}
    return all(name in members and members[name]["Status"] == 1 and "raft_id" not in members[name]["Tags"]
               for name in names)


def wait(predicate, limit: float, what: str, cluster: Cluster):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.RequestException, OSError):
            value = None
        if value:
            return value
        time.sleep(POLL)
    raise SystemExit(f"timed out after {limit:.0f}s waiting for {what}\n{cluster.logs()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=env_int("ROUNDS", 5))
    parser.add_argument("--instances", type=int, default=env_int("INSTANCES", 6))
    parser.add_argument("--heartbeat-ttl", type=float, default=env_float("HEARTBEAT_TTL", 5.0))
    parser.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 900.0))
    parser.add_argument("--loss", choices=("kill", "stop", "both"), default=os.environ.get("LOSS", "both"))
    args = parser.parse_args()
    seed = int(os.environ["ATOLL_E2E_SEED"]) if os.environ.get("ATOLL_E2E_SEED") else None
    ttl_args = ["--heartbeat-ttl", str(args.heartbeat_ttl)] + os.environ.get("NODE_ARGS", "").split()
    losses = ["kill", "stop"] if args.loss == "both" else [args.loss]
    lan = "--serf-lan-port 0" not in " ".join(ttl_args)
    started = time.monotonic()

    with Cluster(servers=3, seed=seed, server_args=ttl_args) as cluster:
        clients = [cluster.add_client(f"c{i}", extra=ttl_args) for i in (1, 2, 3)]
        for client in clients:
            client.spawn()
        leader = cluster.wait_agreement(timeout=60)
        print(f"3 servers + 3 compute nodes (seed {cluster.seed}), heartbeat TTL {args.heartbeat_ttl:g} s, "
              f"{args.instances} instances of {APP}\n")
        app = {"id": APP, "cmd": "exec sleep 100000", "instances": args.instances, "cpus": 0.01, "mem": 8,
               "portDefinitions": [{"port": 0}]}
        wait(lambda: requests.put(f"{leader.base_url}/v2/apps{APP}", json=app, timeout=5).status_code in (200, 201),
             30, "the app to be accepted", cluster)
        wait(lambda: len(running_tasks(leader)) == args.instances
             and len(dns_addresses(leader)) == args.instances, 60, "every instance running and in DNS", cluster)

        figures: dict[str, tuple[list[float], list[float]]] = {}
        for loss in losses:
            out_of_dns: list[float] = []
            replaced: list[float] = []
            figures[loss] = (out_of_dns, replaced)
            print(f"\n{'SIGKILL' if loss == 'kill' else 'SIGSTOP'} of the busiest compute node")
            print(f"{'round':>5}  {'node':>6}  {'lost':>4}  {'out of DNS':>10}  {'replaced':>9}")
            for round_no in range(1, args.rounds + 1):
                if time.monotonic() - started > args.max_seconds:
                    print("stopping: MAX_SECONDS reached")
                    break
                server = cluster.wait_agreement(timeout=30)
                if lan:
                    # Measure the pool, not the heartbeats that judge nodes it has not heard of.
                    wait(lambda: pool_whole(server, [n.name for n in cluster.nodes]), 30,
                         "every node in the leader's LAN pool", cluster)
                tasks = running_tasks(server)
                by_host: dict[str, int] = {}
                for t in tasks:
                    by_host[t["host"]] = by_host.get(t["host"], 0) + 1
                dead_ip = max(by_host, key=by_host.get)
                dead = next(c for c in clients if c.ip == dead_ip)
                if loss == "kill":
                    dead.kill9()
                else:
                    dead.freeze()
                lost_at = time.monotonic()
                wait(lambda: dead_ip not in dns_addresses(server), ROUND_LIMIT, "the lost node out of DNS", cluster)
                gone = time.monotonic() - lost_at

                def back() -> bool:
                    now = running_tasks(server)
                    return (len(now) == args.instances and all(t["host"] != dead_ip for t in now)
                            and len(dns_addresses(server)) == args.instances)

                wait(back, ROUND_LIMIT, "replacements running and in DNS", cluster)
                done = time.monotonic() - lost_at
                out_of_dns.append(gone)
                replaced.append(done)
                print(f"{round_no:>5}  {dead.name:>6}  {by_host[dead_ip]:>4}  {gone:>9.3f}s  {done:>8.3f}s",
                      flush=True)
                if loss == "kill":
                    dead.spawn()
                else:
                    dead.thaw()
                wait(lambda: node_passing(server, dead.name), ROUND_LIMIT, f"{dead.name} passing again", cluster)
                cluster.wait_agreement(timeout=30)

        print()
        for loss, (out_of_dns, replaced) in figures.items():
            what = "kill -9" if loss == "kill" else "SIGSTOP"
            for label, values in ((f"{what} -> out of DNS", out_of_dns),
                                  (f"{what} -> replacements running", replaced)):
                if values:
                    print(f"{label} over {len(values)} rounds: min {min(values):.3f}s  "
                          f"median {statistics.median(values):.3f}s  p90 {percentile(sorted(values), 90):.3f}s  "
                          f"max {max(values):.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
