#!/usr/bin/env python3
"""Soak: mixed load on a 3-server cluster with a compute node, looking for leaks and drift.

    bench/soak.py [--seconds S] [--interval I] [--readers R]

Starts 3 servers and 1 compute node on loopback addresses (127.A.B.x, ports
8300, 8500, 8600) and, for S seconds (default 600), runs at once:

  kv        PUT /v1/kv/soak/k<i> round-robin to the three servers (paced);
  block     R readers parked on GET /v1/kv/soak/wake?index=&wait=20s, spread
            over the four nodes; a writer stores its clock in that key every
            second and each woken reader records write -> wake-up;
  dns       UDP A queries for a registered service and for consul.service,
            to a server and to the compute node (paced);
  reg       PUT /v1/agent/service/register and .../deregister on the compute
            node, at most 10 churn services alive at a time (paced);
  app       an exec app (busybox httpd, HTTP health check) scaled 1 -> 3 -> 1
            through PUT /v2/apps every 20 s; a step whose instances are not
            all running and healthy by the next step is an error; its latency
            is request -> every instance healthy.

Every I seconds (default 10) it prints one line per process: VmRSS and open
file descriptors (/proc/PID/status, /proc/PID/fd) and, for the requests sent
to that process in the interval, count/errors and p50/p99 latency in ms.

The verdict, over the run cut in thirds (the first is warm-up):
  * RSS flat: max of the last third <= max of the second third + 10 % (at
    least 4 MB), per process;
  * fds flat: max of the last third <= max of the second third + 10 % (at
    least 10), per process;
  * no error answers at all;
  * p99 steady: per kind, the median interval p99 of the last third <= 2 x
    that of the second third + 25 ms (wide: the machine may be shared, and
    a leak or a growing queue shows as a steady climb, not a blip).
Exits 1 when any of these fails.

Every loop is paced and bounded by count and by the deadline. Environment:
SOAK_SECONDS, ATOLL_ARGS (flags for every node, also --atoll-args), ATOLL_BIN,
ATOLL_E2E_SEED, BUSYBOX (/bin/busybox). The load
generator is one Python process on the same machine as the four nodes.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchlib import env_float, percentile, proc_status_kb
from clusterlib import DNS_PORT, Cluster, Node

KINDS = ("kv", "block", "dns", "reg", "app")
KV_RATE = 40.0  # per second, over all servers
DNS_RATE = 100.0
REG_RATE = 10.0
WAKE_EVERY = 1.0
BLOCK_WAIT = "20s"
APP_STEP = 20.0
APP_SCALES = (1, 3, 2, 3, 1)
CHURN_LIVE = 10
STATIC_SERVICE = "soak-static"


class Stats:
    """Per (process, kind) latencies and errors of the current interval, swapped out on read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.error_notes: list[str] = []
        self.total_errors = 0

    def ok(self, proc: str, kind: str, seconds: float) -> None:
        with self.lock:
            self.samples.setdefault((proc, kind), []).append(seconds)

    def error(self, proc: str, kind: str, note: str) -> None:
        with self.lock:
            self.errors[(proc, kind)] = self.errors.get((proc, kind), 0) + 1
            self.total_errors += 1
            if len(self.error_notes) < 20:
                self.error_notes.append(f"{proc} {kind}: {note}")

    def take(self):
        with self.lock:
            samples, errors = self.samples, self.errors
            self.samples, self.errors = {}, {}
        return samples, errors


def paced(rate: float, deadline: float, limit: int):
    """Yields 0, 1, 2, ... at `rate` per second until the deadline or `limit` items."""
    start = time.monotonic()
    for i in range(limit):
        due = start + i / rate
        now = time.monotonic()
        if due >= deadline or now >= deadline:
            return
        if due > now:
            time.sleep(due - now)
        yield i


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def timed(stats: Stats, node: Node, kind: str, call) -> None:
    """Runs call() -> (ok, note); records its latency or its error against `node`."""
    start = time.perf_counter()
    try:
        ok, note = call()
    except (requests.RequestException, OSError) as e:
        ok, note = False, f"{type(e).__name__}: {e}"
    if ok:
        stats.ok(node.name, kind, time.perf_counter() - start)
    else:
        stats.error(node.name, kind, note)


def answered(r: requests.Response) -> tuple[bool, str]:
    return r.status_code == 200, f"HTTP {r.status_code}: {r.text[:200]}"


# ---------------------------------------------------------------------------
# load


def kv_writer(stats: Stats, servers: list[Node], deadline: float, seconds: float) -> None:
    sessions = {s.name: session() for s in servers}
    for i in paced(KV_RATE, deadline, int(KV_RATE * seconds) + 1):
        node = servers[i % len(servers)]
        body = f"value {i} {secrets.token_hex(16)}".encode()
        timed(stats, node, "kv", lambda: answered(
            sessions[node.name].put(f"{node.base_url}/v1/kv/soak/k{i % 200}", data=body, timeout=5)))


def waker(stats: Stats, server: Node, deadline: float, seconds: float) -> None:
    s = session()
    for _ in paced(1 / WAKE_EVERY, deadline, int(seconds / WAKE_EVERY) + 1):
        stamp = repr(time.monotonic()).encode()
        timed(stats, server, "kv", lambda: answered(
            s.put(f"{server.base_url}/v1/kv/soak/wake", data=stamp, timeout=5)))


def blocking_reader(stats: Stats, node: Node, deadline: float, seconds: float) -> None:
    s = session()
    index = 0
    # Each wake-up is at most once a second; the bound is a safety net, not the pace.
    for _ in range(int(seconds / WAKE_EVERY) * 4 + 10):
        if time.monotonic() >= deadline:
            return
        try:
            r = s.get(f"{node.base_url}/v1/kv/soak/wake", params={"index": index, "wait": BLOCK_WAIT}, timeout=40)
        except requests.RequestException as e:
            stats.error(node.name, "block", f"{type(e).__name__}: {e}")
            time.sleep(0.5)
            continue
        if r.status_code == 404:  # not written yet: wait for its creation
            index = int(r.headers.get("X-Consul-Index", index) or index)
            continue
        if r.status_code != 200:
            stats.error(node.name, "block", f"HTTP {r.status_code}: {r.text[:200]}")
            time.sleep(0.5)
            continue
        new_index = int(r.headers.get("X-Consul-Index", "0") or 0)
        if new_index == index:
            continue  # the wait ran out with nothing new
        woken = time.monotonic()
        first = index == 0
        index = new_index
        if first:
            continue  # the first answer is not a wake-up
        try:
            written = float(base64.b64decode(r.json()[0]["Value"]))
        except (ValueError, KeyError, IndexError, TypeError):
            stats.error(node.name, "block", f"unreadable value {r.text[:200]}")
            continue
        stats.ok(node.name, "block", max(0.0, woken - written))


def dns_query(ip: str, name: str, timeout: float = 2.0) -> tuple[bool, str]:
    qid = random.randint(0, 0xFFFF)
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(header + qname + struct.pack(">HH", 1, 1), (ip, DNS_PORT))
        for _ in range(10):
            data, _ = sock.recvfrom(4096)
            if len(data) < 12 or struct.unpack(">H", data[:2])[0] != qid:
                continue
            rcode = data[3] & 0x0F
            ancount = struct.unpack(">H", data[6:8])[0]
            if rcode != 0 or ancount == 0:
                return False, f"{name}: rcode {rcode}, {ancount} answers"
            return True, ""
    return False, f"{name}: no matching answer"


def dns_client(stats: Stats, targets: list[Node], deadline: float, seconds: float) -> None:
    names = (f"{STATIC_SERVICE}.service.consul", "consul.service.consul")
    for i in paced(DNS_RATE, deadline, int(DNS_RATE * seconds) + 1):
        node = targets[i % len(targets)]
        name = names[(i // len(targets)) % len(names)]
        timed(stats, node, "dns", lambda: dns_query(node.ip, name))


def registrar(stats: Stats, compute: Node, deadline: float, seconds: float) -> None:
    s = session()
    base = compute.base_url
    for i in paced(REG_RATE, deadline, int(REG_RATE * seconds) + 1):
        if i % 2 == 0:
            n = i // 2
            body = {"ID": f"churn-{n}", "Name": "soak-churn", "Port": 20000 + n % 10000,
                    "Tags": ["soak"], "Check": {"TTL": "600s"}}
            timed(stats, compute, "reg", lambda: answered(
                s.put(f"{base}/v1/agent/service/register", json=body, timeout=5)))
        else:
            gone = i // 2 - CHURN_LIVE
            if gone >= 0:
                timed(stats, compute, "reg", lambda: answered(
                    s.put(f"{base}/v1/agent/service/deregister/churn-{gone}", timeout=5)))
    # Leave no churn service behind.
    for n in range(max(0, int(REG_RATE * seconds) // 2 - 2 * CHURN_LIVE), int(REG_RATE * seconds) // 2 + 1):
        try:
            s.put(f"{base}/v1/agent/service/deregister/churn-{n}", timeout=5)
        except requests.RequestException:
            pass


def app_definition(app_id: str, busybox: str, www: Path, instances: int) -> dict:
    return {
        "id": app_id,
        "cmd": f"exec {busybox} httpd -f -p $HOST:$PORT0 -h {www}",
        "instances": instances,
        "cpus": 0.01,
        "mem": 8,
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
        "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 5,
                          "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 3}],
    }


def app_converged(s: requests.Session, server: Node, app_id: str, instances: int) -> bool:
    r = s.get(f"{server.base_url}/v2/apps{app_id}/tasks", timeout=5)
    if r.status_code != 200:
        return False
    tasks = r.json().get("tasks", [])
    good = [t for t in tasks if t.get("state") == "TASK_RUNNING"
            and t.get("healthCheckResults") and all(h.get("alive") for h in t["healthCheckResults"])]
    return len(tasks) == instances and len(good) == instances


def app_scaler(stats: Stats, server: Node, app_id: str, definition: dict, deadline: float) -> None:
    s = session()
    url = f"{server.base_url}/v2/apps{app_id}"
    for step in itertools.count():
        step_end = time.monotonic() + APP_STEP
        if step_end > deadline or step > 10_000:
            return
        want = APP_SCALES[step % len(APP_SCALES)]
        body = {**definition, "instances": want} if step == 0 else {"instances": want}
        sent = time.perf_counter()
        try:
            r = s.put(url, json=body, timeout=10)
        except requests.RequestException as e:
            stats.error(server.name, "app", f"{type(e).__name__}: {e}")
            r = None
        if r is not None and r.status_code not in ((200, 201) if step == 0 else (200,)):
            stats.error(server.name, "app", f"HTTP {r.status_code}: {r.text[:200]}")
        elif r is not None:
            # The figure of an app step is the time from the request to every instance healthy.
            converged = False
            while time.monotonic() < step_end:
                try:
                    if app_converged(s, server, app_id, want):
                        converged = True
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            if converged:
                stats.ok(server.name, "app", time.perf_counter() - sent)
            else:
                stats.error(server.name, "app", f"{want} instances not running and healthy within {APP_STEP:.0f}s")
        while time.monotonic() < step_end:
            time.sleep(min(0.5, step_end - time.monotonic()))


# ---------------------------------------------------------------------------
# processes


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def app_processes(app_id: str) -> list[int]:
    """Live processes whose MARATHON_APP_ID is this run's app (what the exec driver starts)."""
    found = []
    want = f"MARATHON_APP_ID={app_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if want in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def remove_app(server: Node, app_id: str, timeout: float = 30.0) -> None:
    """Destroys the app and waits, bounded, for its processes to exit; SIGKILLs what is left."""
    try:
        requests.delete(f"{server.base_url}/v2/apps{app_id}", params={"force": "true"}, timeout=10)
    except requests.RequestException:
        pass
    deadline = time.monotonic() + timeout
    while app_processes(app_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in app_processes(app_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------
# report


def ms(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) * 1000 if values else float("nan")


def thirds(rows: list) -> tuple[list, list]:
    n = len(rows)
    return rows[n // 3: 2 * n // 3], rows[2 * n // 3:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=env_float("SOAK_SECONDS", 600.0))
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=64)
    parser.add_argument("--atoll-args", default=os.environ.get("ATOLL_ARGS", ""),
                        help="extra flags for every node, e.g. '--snapshot-after-entries 100000'")
    args = parser.parse_args()
    if args.seconds < 3 * args.interval:
        raise SystemExit("--seconds must cover at least three intervals")
    busybox = os.environ.get("BUSYBOX", "/bin/busybox")
    if not os.access(busybox, os.X_OK):
        raise SystemExit(f"{busybox} not found (Debian: busybox-static)")
    seed = int(os.environ["ATOLL_E2E_SEED"]) if os.environ.get("ATOLL_E2E_SEED") else None
    app_id = f"/soak{secrets.token_hex(3)}/web"
    www = Path(tempfile.mkdtemp(prefix="atoll-soak-www-"))
    (www / "index.html").write_text("soak\n")

    try:
        return run(args, seed, busybox, app_id, www)
    finally:
        shutil.rmtree(www, ignore_errors=True)


def run(args, seed: int | None, busybox: str, app_id: str, www: Path) -> int:
    stats = Stats()
    rows: list[dict] = []  # one per (interval, process)
    extra = shlex.split(args.atoll_args)
    with Cluster(servers=3, seed=seed, server_args=extra) as cluster:
        compute = cluster.add_client("c1", extra=extra)
        compute.spawn()
        leader = cluster.wait_agreement(timeout=60)
        servers = cluster.servers
        try:
            r = requests.put(f"{compute.base_url}/v1/agent/service/register",
                             json={"Name": STATIC_SERVICE, "Port": 9}, timeout=10)
            r.raise_for_status()
            print(f"3 servers + 1 compute node (seed {cluster.seed}), {args.seconds:.0f} s, {args.readers} parked "
                  f"readers; kv {KV_RATE:g}/s, dns {DNS_RATE:g}/s, reg {REG_RATE:g}/s, app {app_id} scaled "
                  f"every {APP_STEP:g} s; CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}\n",
                  flush=True)
            started = time.monotonic()
            deadline = started + args.seconds
            everyone = servers + [compute]
            threads = [
                threading.Thread(target=kv_writer, args=(stats, servers, deadline, args.seconds)),
                threading.Thread(target=waker, args=(stats, leader, deadline, args.seconds)),
                threading.Thread(target=dns_client, args=(stats, [servers[0], compute], deadline, args.seconds)),
                threading.Thread(target=registrar, args=(stats, compute, deadline, args.seconds)),
                threading.Thread(target=app_scaler, args=(stats, leader, app_id,
                                                          app_definition(app_id, busybox, www, 1), deadline)),
            ]
            threads += [threading.Thread(target=blocking_reader, args=(stats, everyone[i % 4], deadline, args.seconds))
                        for i in range(args.readers)]
            for t in threads:
                t.daemon = True
                t.start()

            next_tick = started + args.interval
            while next_tick <= deadline + 0.001:
                time.sleep(max(0.0, next_tick - time.monotonic()))
                samples, errors = stats.take()
                at = round(next_tick - started)
                for node in everyone:
                    pid = node.proc.pid if node.proc else 0
                    row = {"t": at, "proc": node.name, "rss": proc_status_kb(pid, "VmRSS"), "fds": fd_count(pid)}
                    cells = []
                    for kind in KINDS:
                        values = samples.get((node.name, kind), [])
                        errs = errors.get((node.name, kind), 0)
                        if not values and not errs:
                            continue
                        row[kind] = values
                        row[kind + "_errors"] = errs
                        cells.append(f"{kind} {len(values)}/{errs} {ms(values, 50):.1f}/{ms(values, 99):.1f}")
                    rows.append(row)
                    rss = "n/a" if row["rss"] is None else f"{row['rss'] / 1024:.1f}"
                    print(f"t={at:>4}s {node.name:>3} rss {rss:>6} MB fds {row['fds'] or 0:>4} | "
                          + "  ".join(cells), flush=True)
                    if not node.running():
                        stats.error(node.name, "proc", f"exited with {node.proc.returncode if node.proc else None}")
                next_tick += args.interval
            for t in threads:
                t.join(timeout=45)
        finally:
            remove_app(leader, app_id)
            left = app_processes(app_id)
    return verdict(rows, stats, cluster_names=[n.name for n in cluster.nodes], leftovers=left)


def verdict(rows: list[dict], stats: Stats, cluster_names: list[str], leftovers: list[int]) -> int:
    print("\n(count/errors p50/p99 ms per kind and interval)\n\nverdict (first third is warm-up):")
    failed = False

    def check(ok: bool, text: str) -> None:
        nonlocal failed
        failed |= not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {text}")

    for name in cluster_names:
        mine = [r for r in rows if r["proc"] == name]
        second, last = thirds(mine)
        for key, label, rel, floor, unit in (("rss", "RSS", 0.10, 4 * 1024, 1024), ("fds", "fds", 0.10, 10, 1)):
            a = [r[key] for r in second if r[key] is not None]
            b = [r[key] for r in last if r[key] is not None]
            if not a or not b:
                check(False, f"{name} {label}: not measured")
                continue
            limit = max(a) + max(rel * max(a), floor)
            fmt = (lambda v: f"{v / unit:.1f} MB") if unit > 1 else (lambda v: f"{v:.0f}")
            check(max(b) <= limit, f"{name} {label}: warm-up end {fmt(mine[len(mine) // 3][key] or 0)}, "
                  f"second third max {fmt(max(a))}, last third max {fmt(max(b))} (limit {fmt(limit)})")
    check(stats.total_errors == 0 and not leftovers,
          f"errors: {stats.total_errors}" + (f", app processes left: {leftovers}" if leftovers else ""))
    for note in stats.error_notes:
        print(f"       {note}")
    times = sorted({r["t"] for r in rows})
    for kind in KINDS:
        per_interval = []
        for t in times:
            values = [v for r in rows if r["t"] == t for v in r.get(kind, [])]
            if values:
                per_interval.append((t, ms(values, 99), len(values)))
        second, last = thirds(per_interval)
        if not second or not last:
            check(False, f"{kind} p99: too few intervals with answers")
            continue
        a = statistics.median(p for _, p, _ in second)
        b = statistics.median(p for _, p, _ in last)
        limit = 2.0 * a + 25.0
        total = sum(n for _, _, n in per_interval)
        check(b <= limit, f"{kind} p99 (median of intervals): second third {a:.1f} ms, last third {b:.1f} ms "
              f"(limit {limit:.1f} ms); {total} answers")
    print("\nverdict:", "FAIL" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
