#!/usr/bin/env python3
"""Federation: what a request to another datacenter costs, and how fast the WAN pool reacts.

    python3 bench/federation.py [-n 2000] [--rounds 3]

Starts three federated datacenters on loopback with the end-to-end suite's
harness (tests/e2e/federation_util.py: dc1 with 3 servers and a compute node
on 127.0.1.x, dc2 and dc3 with a server and a compute node each on 127.0.2.x
and 127.0.3.x; one `--retry-join-wan` per other datacenter) and measures:

* added latency of `?dc=`: N `GET /v1/kv/KEY` asked of dc2's server (the
  baseline: where a forwarded read is answered), N to dc1's compute node with
  `?dc=dc2` (compute node -> dc1 server -> dc2 server) and N without (dc1's own
  key), the same from a dc1 server (one hop less), each over one keep-alive
  connection; p50/p99 of each and what the hops add to the baseline;
* added latency of remote DNS: N UDP lookups of `web.service.consul` and N of
  `web.service.dc2.consul` at dc1's compute node;
* WAN failure detection, over R rounds: iptables cuts dc3 off the other two
  (as the end-to-end test does); time until dc1's first server shows dc3's
  server failed in `/v1/agent/members?wan=1`; after the heal, time until it
  shows it alive and until `?dc=dc3` answers again;
* failover of a prepared query, over R rounds: `web` with `NearestN: 2` in dc1,
  whose only local instance's TTL check is failed; time until
  `/v1/query/web/execute` answers from another datacenter, and after the check
  passes again, until it answers from dc1.

Needs root for iptables (the cut rounds are skipped otherwise, with a note),
py-consul is not needed; requests and dnspython are. Environment: N, ROUNDS,
ATOLL_BIN (default target/release/atoll), ATOLL_E2E_FED_NET (move the layout
to another 127.X).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchlib import env_int, percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import dns.message  # noqa: E402 - after the path set-up, with the harness
import dns.rdatatype  # noqa: E402
from federation_util import ALIVE, DNS_PORT, FAILED, Federation, wan_members  # noqa: E402

ROUND_LIMIT = 120.0  # seconds any one wait may take


def wait(predicate, limit: float = ROUND_LIMIT, interval: float = 0.05) -> float:
    """Seconds until predicate() is true (polled every `interval`); raises after `limit`."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except (requests.RequestException, OSError, KeyError, ValueError):
            pass
        if time.monotonic() - start > limit:
            raise TimeoutError(f"not within {limit:.0f}s")
        time.sleep(interval)


def http_latencies(url: str, count: int) -> list[float]:
    session = requests.Session()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        r = session.get(url, timeout=10)
        times.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} -> {r.status_code}: {r.text}")
    return sorted(times)


def dns_latencies(ip: str, name: str, count: int) -> list[float]:
    query = dns.message.make_query(name, "A").to_wire()
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((ip, DNS_PORT))
        for i in range(count):
            packet = (i & 0xFFFF).to_bytes(2, "big") + query[2:]
            start = time.perf_counter()
            s.send(packet)
            reply = dns.message.from_wire(s.recv(4096))
            times.append(time.perf_counter() - start)
            if not any(rrset.rdtype == dns.rdatatype.A for rrset in reply.answer):
                raise RuntimeError(f"{name} at {ip}: no A record: {reply}")
    return sorted(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--count", type=int, default=env_int("N", 2000))
    parser.add_argument("--rounds", type=int, default=env_int("ROUNDS", 3))
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="atoll-bench-federation-"))
    fed = Federation(root)
    rows: list[tuple[str, str]] = []
    try:
        print("starting dc1 (3 servers + 1 compute), dc2 and dc3 (1 + 1 each)...", flush=True)
        started = time.monotonic()
        fed.start()
        rows.append(("start to a full WAN pool", f"{time.monotonic() - started:.2f} s"))
        dc1, dc2, dc3 = fed["dc1"], fed["dc2"], fed["dc3"]

        dc1.client.put("/v1/kv/bench/key", data=b"dc1").raise_for_status()
        dc2.client.put("/v1/kv/bench/key", data=b"dc2").raise_for_status()
        for dc in (dc1, dc2):
            dc.client.put("/v1/agent/service/register",
                          json={"Name": "web", "ID": f"web-{dc.name}", "Port": 8080,
                                "Check": {"CheckID": f"web-{dc.name}-ttl", "TTL": "30m",
                                          "Status": "passing"}}).raise_for_status()
        dc3.client.put("/v1/agent/service/register", json={"Name": "web", "ID": "web-dc3", "Port": 8080}
                       ).raise_for_status()
        for dc in (dc1, dc2, dc3):
            wait(lambda dc=dc: dc.server.get_json("/v1/health/service/web?passing"), limit=30)

        # -- latency of ?dc= --------------------------------------------------
        # The baseline is the same read asked of dc2's server itself, where the forwarded
        # read is answered: the difference is what the hops add. (A default-consistency read
        # in dc1 asks dc1's leader, which dc2's single server is for itself.)
        print(f"HTTP at dc2's server: {args.count} local reads...", flush=True)
        baseline = http_latencies(dc2.server.url("/v1/kv/bench/key"), args.count)
        rows.append(("GET /v1/kv at dc2's server, local: p50 / p99",
                     f"{ms(percentile(baseline, 50))} / {ms(percentile(baseline, 99))} ms"))
        for origin, label in ((dc1.client, "compute node"), (dc1.server, "server")):
            print(f"HTTP from dc1's {label}: {args.count} local and {args.count} ?dc=dc2 reads...", flush=True)
            local = http_latencies(origin.url("/v1/kv/bench/key"), args.count)
            remote = http_latencies(origin.url("/v1/kv/bench/key?dc=dc2"), args.count)
            for name, values in (("local (dc1)", local), ("?dc=dc2", remote)):
                rows.append((f"GET /v1/kv from dc1 {label}, {name}: p50 / p99",
                             f"{ms(percentile(values, 50))} / {ms(percentile(values, 99))} ms"))
            rows.append((f"added by ?dc=dc2 from dc1 {label} (vs dc2 local): p50 / p99",
                         f"{ms(percentile(remote, 50) - percentile(baseline, 50))} / "
                         f"{ms(percentile(remote, 99) - percentile(baseline, 99))} ms"))

        print(f"DNS at dc1's compute node: {args.count} local and {args.count} dc2 lookups...", flush=True)
        local = dns_latencies(dc1.client.ip, "web.service.consul", args.count)
        remote = dns_latencies(dc1.client.ip, "web.service.dc2.consul", args.count)
        for name, values in (("web.service.consul", local), ("web.service.dc2.consul", remote)):
            rows.append((f"DNS {name}: p50 / p99", f"{ms(percentile(values, 50))} / {ms(percentile(values, 99))} ms"))
        rows.append(("added by the remote DNS lookup: p50 / p99",
                     f"{ms(percentile(remote, 50) - percentile(local, 50))} / "
                     f"{ms(percentile(remote, 99) - percentile(local, 99))} ms"))

        # -- WAN cut and heal -------------------------------------------------
        cut_name = dc3.wan_name(dc3.server)
        if os.geteuid() == 0 and shutil.which("iptables"):
            to_failed, to_alive, to_through = [], [], []
            for round_no in range(1, args.rounds + 1):
                print(f"WAN cut round {round_no}/{args.rounds}...", flush=True)
                fed.wait_wan()
                try:
                    fed.cut("dc3")
                    to_failed.append(wait(lambda: wan_members(dc1.server)[cut_name]["Status"] == FAILED))
                finally:
                    fed.heal()
                healed = time.monotonic()
                to_alive.append(wait(lambda: wan_members(dc1.server)[cut_name]["Status"] == ALIVE))
                # The key is not in dc3: a 404 from there (not a 500) means the request got through.
                wait(lambda: dc1.client.get("/v1/kv/bench/key?dc=dc3").status_code == 404)
                to_through.append(time.monotonic() - healed)
            rows.append(("WAN cut -> shown failed", summary(to_failed)))
            rows.append(("heal -> shown alive", summary(to_alive)))
            rows.append(("heal -> ?dc=dc3 answers", summary(to_through)))
        else:
            rows.append(("WAN cut rounds", "skipped (need root and iptables)"))

        # -- prepared query failover ------------------------------------------
        r = dc1.server.post("/v1/query", json={"Name": "web", "Service": {"Service": "web",
                                                                           "Failover": {"NearestN": 2}}})
        r.raise_for_status()

        def answered_from() -> str:
            res = dc1.client.get("/v1/query/web/execute", timeout=5)
            res.raise_for_status()
            return res.json()["Datacenter"]

        to_remote, to_local = [], []
        for round_no in range(1, args.rounds + 1):
            print(f"failover round {round_no}/{args.rounds}...", flush=True)
            dc1.client.put("/v1/agent/check/fail/web-dc1-ttl").raise_for_status()
            to_remote.append(wait(lambda: answered_from() != "dc1", interval=0.01))
            dc1.client.put("/v1/agent/check/pass/web-dc1-ttl").raise_for_status()
            to_local.append(wait(lambda: answered_from() == "dc1", interval=0.01))
        rows.append(("local instance fails -> query answers from another DC", summary(to_remote)))
        rows.append(("local instance passes -> query answers from dc1", summary(to_local)))
    except BaseException:
        print(fed.logs(), file=sys.stderr)
        raise
    finally:
        try:
            fed.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
            print_table(rows)
    return 0


def print_table(rows: list[tuple[str, str]]) -> None:
    """What was measured (also what was, before a failure)."""
    if not rows:
        return
    width = max(len(name) for name, _ in rows)
    print()
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    sys.exit(main())
