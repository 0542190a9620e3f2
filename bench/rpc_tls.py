#!/usr/bin/env python3
"""Committed KV writes/s on a 3-server cluster with the RPC port in plain TCP, then with
mutual TLS (--verify-incoming --verify-outgoing --verify-server-hostname).

    bench/rpc_tls.py [BINARY] [--count N] [--workers W] [--max-seconds S]

For each mode a fresh 3-server cluster is started on loopback addresses (clusterlib), and
two phases of N writes from W threads are run: to a follower (each write forwarded to the
leader over RPC, then replicated over RPC) and to the leader (replicated only). The
certificates are made by `atoll tls` (one per server, `--server --dc dc1`). Prints each
phase's rate and latency, then the TLS/plain ratio of each rate.

Environment: N (3000), WORKERS (16), MAX_SECONDS (per phase, 120), ATOLL_BIN (or BINARY).
Every phase is bounded in count and time. The load generator shares the machine with the
servers; the ratio is what to read, not the absolute rates.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import atoll_bin, env_float, env_int
from cluster_writes import Phase, kv_put
from clusterlib import Cluster


def make_certificates(directory: Path, servers: int) -> tuple[Path, list[tuple[Path, Path]]]:
    """A CA and `servers` server certificates made by `atoll tls`: (CA, [(cert, key)])."""
    subprocess.run([atoll_bin(), "tls", "ca", "create"], cwd=directory, check=True, capture_output=True,
                   timeout=60)
    for _ in range(servers):
        subprocess.run([atoll_bin(), "tls", "cert", "create", "--server", "--dc", "dc1"], cwd=directory,
                       check=True, capture_output=True, timeout=60)
    pairs = [(directory / f"dc1-server-consul-{i}.pem", directory / f"dc1-server-consul-{i}-key.pem")
             for i in range(servers)]
    return directory / "consul-agent-ca.pem", pairs


def run_mode(label: str, args, tls: tuple[Path, list[tuple[Path, Path]]] | None) -> dict[str, float]:
    rates: dict[str, float] = {}
    cluster = Cluster(servers=3)
    if tls is not None:
        ca, pairs = tls
        for server, (cert, key) in zip(cluster.servers, pairs):
            server.extra = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-file", str(ca),
                            "--verify-incoming", "--verify-outgoing", "--verify-server-hostname"]
    with cluster:
        leader = cluster.wait_agreement(timeout=60)
        follower = next(s for s in cluster.servers if s is not leader)
        for name, target in (("follower", follower), ("leader", leader)):
            phase = Phase(f"{label} kv -> {name}", target, args.count, args.workers, args.max_seconds,
                          kv_put(f"bench-{label.strip()}-{name}"))
            phase.run()
            print(phase.report(), flush=True)
            rates[name] = len(phase.latencies) / phase.wall if phase.wall > 0 else 0.0
    return rates


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binary", nargs="?", help="the atoll binary (default: ATOLL_BIN or the build's)")
    p.add_argument("--count", "-n", type=int, default=env_int("N", 3000))
    p.add_argument("--workers", "-w", type=int, default=env_int("WORKERS", 16))
    p.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 120.0))
    args = p.parse_args()
    if args.binary:
        os.environ["ATOLL_BIN"] = str(Path(args.binary).resolve())
    with tempfile.TemporaryDirectory(prefix="atoll-bench-rpc-tls-") as directory:
        tls = make_certificates(Path(directory), 3)
        plain = run_mode("plain", args, None)
        mutual = run_mode("mTLS ", args, tls)
    for name in ("follower", "leader"):
        ratio = mutual[name] / plain[name] if plain[name] else float("nan")
        print(f"kv -> {name:<9} plain {plain[name]:8.0f}/s   mTLS {mutual[name]:8.0f}/s   "
              f"mTLS/plain {ratio:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
