#!/usr/bin/env python3
"""Durable writes side by side: atoll and etcd in the same run, with `hey`.

    python3 bench/write_path.py [-n 20000] [-c 16] [--value-bytes 100] [--skip-cluster]

For each system it starts a fresh instance on free 127.0.0.1 ports with a new
data dir, waits until it serves, then runs `hey -n N -c C` against it:

  1. KV writes, one node:    atoll PUT /v1/kv/bench    etcd POST /v3/kv/put
  2. KV writes, 1 writer:    the same with -c 1 (N/10 requests): p50/p99 at low load
  3. registrations, one node: atoll PUT /v1/agent/service/register (atoll only)
  4. KV reads, one node:     atoll GET /v1/kv/bench    etcd POST /v3/kv/range
  5. KV writes, 3 servers, sent to a follower (atoll: 3 `atoll agent --server`
     on loopback addresses; etcd: a 3-member cluster), unless --skip-cluster.

Both acknowledge a write only once it is durable (fsync) on a quorum. The same
value (VALUE_BYTES of 'x') and the same key are written to both. Prints
requests/s, p50 and p99 latency and the non-2xx count for each, the ratio
atoll/etcd, and each data dir's size afterwards.

Needs: hey and etcd (Debian: apt-get install hey etcd-server). Environment:
N, C, VALUE_BYTES, ATOLL_BIN, ETCD_BIN (etcd), HEY_BIN (hey).
Only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import atoll_bin, env_int, free_port
from clusterlib import Cluster

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, body: bytes | None = None, method: str = "GET", timeout: float = 2.0) -> bytes:
    request = urllib.request.Request(url, data=body, method=method)
    with _OPENER.open(request, timeout=timeout) as response:
        return response.read()


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} not ready after {timeout:.0f}s")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Result:
    def __init__(self, text: str) -> None:
        rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
        self.rate = float(rate.group(1)) if rate else 0.0
        self.p50 = self._pct(text, "50%")
        self.p99 = self._pct(text, "99%")
        codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)
        self.ok = sum(int(n) for c, n in codes if c.startswith("2"))
        self.bad = sum(int(n) for c, n in codes if not c.startswith("2"))
        errors = text.split("Error distribution:")[1] if "Error distribution:" in text else ""
        self.errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors, re.M))

    @staticmethod
    def _pct(text: str, label: str) -> float:
        m = re.search(re.escape(label) + r" in ([\d.]+) secs", text)
        return float(m.group(1)) * 1000 if m else float("nan")

    def line(self, name: str) -> str:
        extra = f"  non-2xx {self.bad}" if self.bad else ""
        extra += f"  transport errors {self.errors}" if self.errors else ""
        return f"  {name:<44} {self.rate:>9,.0f}/s  p50 {self.p50:6.2f} ms  p99 {self.p99:7.2f} ms{extra}"


def hey(args: list[str], n: int, c: int) -> Result:
    binary = os.environ.get("HEY_BIN", "hey")
    cmd = [binary, "-n", str(n), "-c", str(c), "-t", "20", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"hey failed: {out.stderr}")
    return Result(out.stdout)


class Process:
    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


def etcd_cluster(root: Path, members: int) -> tuple[list[Process], list[str], list[Path]]:
    binary = os.environ.get("ETCD_BIN", "etcd")
    names = [f"e{i}" for i in range(members)]
    peers = [free_port() for _ in names]
    clients = [free_port() for _ in names]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peers))
    procs, urls, dirs = [], [], []
    root.mkdir(parents=True, exist_ok=True)
    for name, peer, client in zip(names, peers, clients):
        data = root / name
        cmd = [binary, "--name", name, "--data-dir", str(data),
               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--listen-client-urls", f"http://127.0.0.1:{client}",
               "--advertise-client-urls", f"http://127.0.0.1:{client}",
               "--initial-cluster", initial, "--initial-cluster-state", "new",
               "--log-level", "error"]
        procs.append(Process(cmd, root / f"{name}.log"))
        urls.append(f"http://127.0.0.1:{client}")
        dirs.append(data)
    key = base64.b64encode(b"bench").decode()
    for url in urls:
        wait_until(lambda: b"header" in http(url + "/v3/kv/range", json.dumps({"key": key}).encode(), "POST"),
                   "etcd")
    return procs, urls, dirs


def etcd_leader(urls: list[str]) -> int:
    for i, url in enumerate(urls):
        status = json.loads(http(url + "/v3/maintenance/status", b"{}", "POST"))
        if status.get("leader") == status.get("header", {}).get("member_id"):
            return i
    return 0


def atoll_dev(root: Path) -> tuple[Process, str]:
    port, dns = free_port(), free_port()
    while dns == port:
        dns = free_port()
    cmd = [atoll_bin(), "dev", "--data-dir", str(root / "atoll"), "--http-addr", f"127.0.0.1:{port}",
           "--dns-addr", f"127.0.0.1:{dns}", "--node", "bench", "--serf-wan-port", "0"]
    proc = Process(cmd, root / "atoll.log")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: json.loads(http(url + "/v1/status/leader") or b'""') != "", "atoll")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=env_int("N", 20000))
    parser.add_argument("-c", type=int, default=env_int("C", 16))
    parser.add_argument("--value-bytes", type=int, default=env_int("VALUE_BYTES", 100))
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--only-cluster", action="store_true")
    args = parser.parse_args()
    for tool in (os.environ.get("HEY_BIN", "hey"), os.environ.get("ETCD_BIN", "etcd")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (Debian: apt-get install hey etcd-server)")
    value = b"x" * args.value_bytes
    etcd_put = json.dumps({"key": base64.b64encode(b"bench").decode(),
                           "value": base64.b64encode(value).decode()})
    etcd_get = json.dumps({"key": base64.b64encode(b"bench").decode()})
    service = json.dumps({"ID": "bench-1", "Name": "bench", "Port": 8080, "Tags": ["a"]})
    n, c = args.n, args.c
    low_n = max(200, n // 10)
    print(f"hey -n {n} -c {c}, values of {args.value_bytes} bytes, every write durable")
    rows: dict[str, tuple[Result, Result | None]] = {}
    root = Path(tempfile.mkdtemp(prefix="write-path-bench-"))
    try:
        # One node each.
        if args.only_cluster:
            atoll_size = etcd_size = 0
            a_put = Result("")
        else:
            atoll_size, etcd_size, a_put = one_node(root, rows, value, etcd_put, etcd_get, service, n, c, low_n)
        if not args.skip_cluster:
            cluster_rows(root, rows, value, etcd_put, n, c)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(rows, a_put, atoll_size, etcd_size)


def one_node(root, rows, value, etcd_put, etcd_get, service, n, c, low_n):
    """The one-node rows; returns the data dirs' sizes and atoll's KV write result."""
    atoll, url = atoll_dev(root)
    try:
        a_put = hey(["-m", "PUT", "-d", value.decode(), url + "/v1/kv/bench"], n, c)
        a_low = hey(["-m", "PUT", "-d", value.decode(), url + "/v1/kv/bench"], low_n, 1)
        a_reg = hey(["-m", "PUT", "-d", service, url + "/v1/agent/service/register"], n, c)
        a_get = hey([url + "/v1/kv/bench"], n, c)
        atoll_size = dir_bytes(root / "atoll")
    finally:
        atoll.stop()
    procs, urls, dirs = etcd_cluster(root / "etcd1", 1)
    try:
        e_put = hey(["-m", "POST", "-d", etcd_put, urls[0] + "/v3/kv/put"], n, c)
        e_low = hey(["-m", "POST", "-d", etcd_put, urls[0] + "/v3/kv/put"], low_n, 1)
        e_get = hey(["-m", "POST", "-d", etcd_get, urls[0] + "/v3/kv/range"], n, c)
        etcd_size = dir_bytes(dirs[0])
    finally:
        for p in procs:
            p.stop()
    rows["KV writes/s, one node"] = (a_put, e_put)
    rows["KV writes/s, one node, 1 writer"] = (a_low, e_low)
    rows["registrations/s, one node"] = (a_reg, None)
    rows["KV reads/s, one node"] = (a_get, e_get)
    return atoll_size, etcd_size, a_put


def cluster_rows(root, rows, value, etcd_put, n, c):
    """KV writes through a follower of three servers, atoll then etcd."""
    with Cluster(servers=3) as cluster:
        leader = cluster.wait_agreement(timeout=60)
        follower = next(s for s in cluster.servers if s is not leader)
        a_cluster = hey(["-m", "PUT", "-d", value.decode(), follower.base_url + "/v1/kv/bench"], n, c)
    procs, urls, dirs = etcd_cluster(root / "etcd3", 3)
    try:
        lead = etcd_leader(urls)
        other = urls[(lead + 1) % len(urls)]
        e_cluster = hey(["-m", "POST", "-d", etcd_put, other + "/v3/kv/put"], n, c)
    finally:
        for p in procs:
            p.stop()
    rows["KV writes/s, 3 servers, to a follower"] = (a_cluster, e_cluster)


def report(rows, a_put, atoll_size, etcd_size):
    for name, (a, e) in rows.items():
        print(name)
        print(a.line("atoll"))
        if e is not None:
            print(e.line("etcd"))
            ratio = a.rate / e.rate if e.rate else float("nan")
            print(f"  {'atoll / etcd':<44} {ratio:>9.2f}")
    if "registrations/s, one node" in rows:
        print(f"registrations / KV writes (atoll): {rows['registrations/s, one node'][0].rate / max(1.0, a_put.rate):.2f}")
        print(f"data dir after the one-node runs: atoll {atoll_size / 1e6:.1f} MB, etcd {etcd_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
