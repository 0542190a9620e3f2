#!/usr/bin/env python3
"""Container start to DNS: how long until a started task's host port is in the SRV answer.

A single-node `atoll dev` runs the Marathon app /bench/lat (Docker, bridge network, one
port mapping with a host port chosen by Docker). The app is scaled 0 -> N, and once all N
tasks are in DNS back to 0 and until DNS is empty again; ROUNDS times (10 x 10 = 100
container starts by default).

For every container start the latency is

    (first time its host port is in the SRV answer of lat-bench.service.consul)
  - (Docker's own `start` event timestamp for that container)

Both are wall-clock times on the same machine: the event's timeNano comes from
`docker events`, read by a subprocess for the whole run; DNS is polled over UDP every
POLL_MS by a thread, which stamps each answer with time.time_ns() when it arrives. The
figure therefore covers atoll's driver noticing the start, the Raft write of the task's
new state (with its fsync), applying it, and the DNS answer cache being invalidated,
plus up to one poll interval and the round trip of the query that saw it.

Knobs (environment): ROUNDS (10), INSTANCES (10), POLL_MS (2), PHASE_SECONDS (40, the
longest wait for one scale step), MAX_SECONDS (170, the whole run), IMAGE
(atoll-test-busybox:latest, built from the host's static busybox when missing),
ATOLL_ARGS (extra flags for `atoll dev`).

Needs: docker (an engine that answers), python3 with dnspython.
"""

from __future__ import annotations

import bisect
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from benchlib import REPO_ROOT, Atoll, atoll_bin, env_float, env_int, free_port, percentile

APP_ID = "/bench/lat"
SERVICE = "lat-bench.service.consul"  # the app id's segments reversed, joined by '-'
LABEL_FILTER = f"label=atoll.app_id={APP_ID}"
BUILD_IMAGE = REPO_ROOT / "crates" / "driver" / "tests" / "build_busybox_image.sh"

ROUNDS = env_int("ROUNDS", 10)
INSTANCES = env_int("INSTANCES", 10)
POLL_MS = env_float("POLL_MS", 2.0)
PHASE_SECONDS = env_float("PHASE_SECONDS", 40.0)
MAX_SECONDS = env_float("MAX_SECONDS", 170.0)
IMAGE = os.environ.get("IMAGE", "atoll-test-busybox:latest")

# Never route the benchmark's own requests through an HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# atoll


class DevAtoll(Atoll):
    """benchlib's Atoll, started here with a known DNS port and its own data directory.

    Readiness, logs and stopping (by PID) are benchlib's; the data directory is removed
    after atoll has stopped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dns_port = 0
        self.data_dir: str | None = None

    def __enter__(self) -> "DevAtoll":
        binary = atoll_bin()
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"atoll binary not found at {binary} (build it or set ATOLL_BIN)")
        self.port = free_port()
        self.dns_port = free_port()
        while self.dns_port == self.port:
            self.dns_port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="atoll-bench-dns-latency-")
        self._log = tempfile.NamedTemporaryFile(prefix="atoll-bench-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self.proc = subprocess.Popen(
            [binary, "dev", "--http-addr", f"127.0.0.1:{self.port}",
             "--dns-addr", f"127.0.0.1:{self.dns_port}", "--data-dir", self.data_dir,
             "--node", "bench", "--serf-wan-port", "0", *shlex.split(os.environ.get("ATOLL_ARGS", ""))],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


def marathon(base_url: str, method: str, path: str, body=None, timeout: float = 10.0):
    """(status, decoded JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, (json.loads(raw) if raw else None)
    except ValueError:
        return status, raw.decode(errors="replace")


def app_definition(instances: int) -> dict:
    return {
        "id": APP_ID,
        "instances": instances,
        "cpus": 0.01,
        "mem": 8,
        "args": ["/bin/busybox", "httpd", "-f", "-p", "8080"],
        "container": {
            "type": "DOCKER",
            "docker": {"image": IMAGE, "network": "BRIDGE"},
            "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
        },
    }


# ---------------------------------------------------------------------------
# Docker


def docker(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def ensure_image() -> None:
    if docker("image", "inspect", IMAGE).returncode == 0:
        return
    log(f"building {IMAGE} ...")
    proc = subprocess.run(["sh", str(BUILD_IMAGE), IMAGE], capture_output=True, text=True,
                          timeout=180)
    if proc.returncode != 0:
        raise SystemExit(f"building {IMAGE} failed:\n{proc.stdout}{proc.stderr}")


def labelled_containers() -> list[str]:
    proc = docker("ps", "-aq", "--no-trunc", "--filter", LABEL_FILTER)
    return proc.stdout.split() if proc.returncode == 0 else []


def remove_containers(ids: list[str]) -> None:
    if ids:
        docker("rm", "-f", *ids, timeout=60)


def host_port(container_id: str) -> int | None:
    """The host port Docker bound for 8080/tcp, read with `docker port`."""
    proc = docker("port", container_id, "8080/tcp")
    for line in proc.stdout.splitlines():
        _, _, port = line.strip().rpartition(":")
        if port.isdigit():
            return int(port)
    return None


class StartEvents:
    """`docker events` for the app's container starts: (container id, timeNano, host port)."""

    def __init__(self, since: float) -> None:
        self.proc = subprocess.Popen(
            ["docker", "events", "--since", f"{since:.6f}", "--filter", "type=container",
             "--filter", LABEL_FILTER, "--filter", "event=start", "--format", "{{json .}}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lock = threading.Lock()
        self.starts: list[dict] = []  # {"id", "start_ns", "port"}
        self._todo: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._mapper = threading.Thread(target=self._map, daemon=True)
        self._reader.start()
        self._mapper.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            cid = event.get("id") or (event.get("Actor") or {}).get("ID")
            nano = event.get("timeNano")
            if cid and nano:
                entry = {"id": cid, "start_ns": int(nano), "port": None}
                with self.lock:
                    self.starts.append(entry)
                self._todo.put(entry)

    def _map(self) -> None:
        while True:
            entry = self._todo.get()
            if entry is None:
                return
            port = host_port(entry["id"])
            if port is None:  # the binding may show a moment later; ask once more
                time.sleep(0.05)
                port = host_port(entry["id"])
            with self.lock:
                entry["port"] = port if port is not None else -1

    def snapshot(self) -> list[dict]:
        with self.lock:
            return [dict(e) for e in self.starts]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._todo.put(None)


# ---------------------------------------------------------------------------
# DNS


class SrvPoller:
    """Asks for the service's SRV records every POLL_MS and notes when each port appears.

    A port that leaves the answer and comes back counts as a new appearance.
    """

    def __init__(self, dns_port: int) -> None:
        self.dns_port = dns_port
        self.lock = threading.Lock()
        self.appearances: dict[int, list[int]] = {}  # port -> [time_ns of each appearance]
        self.current: frozenset[int] = frozenset()
        self.queries = 0
        self.failures = 0
        self.truncated = 0
        self.rcodes: dict[str, int] = {}
        self.duplicate_answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = POLL_MS / 1000.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            query = dns.message.make_query(SERVICE, dns.rdatatype.SRV, use_edns=0, payload=4096)
            try:
                reply = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=0.5)
                seen_ns = time.time_ns()
            except Exception:
                with self.lock:
                    self.queries += 1
                    self.failures += 1
                reply = None
            if reply is not None:
                rcode = dns.rcode.to_text(reply.rcode())
                ports: list[int] = []
                for rrset in reply.answer:
                    if rrset.rdtype == dns.rdatatype.SRV:
                        ports.extend(rr.port for rr in rrset)
                now_set = frozenset(ports)
                with self.lock:
                    self.queries += 1
                    self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1
                    if reply.flags & dns.flags.TC:
                        self.truncated += 1
                    if len(ports) != len(now_set):
                        self.duplicate_answers += 1
                    for port in now_set - self.current:
                        self.appearances.setdefault(port, []).append(seen_ns)
                    self.current = now_set
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    def ports(self) -> frozenset[int]:
        with self.lock:
            return self.current

    def first_appearance_after(self, port: int, after_ns: int) -> int | None:
        with self.lock:
            times = self.appearances.get(port, [])
            i = bisect.bisect_left(times, after_ns)
            return times[i] if i < len(times) else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------
# the run


class OutOfTime(Exception):
    pass


def wait_until(cond, timeout: float, hard_deadline: float, step: float = 0.01) -> bool:
    deadline = min(time.monotonic() + timeout, hard_deadline)
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    if time.monotonic() >= hard_deadline:
        raise OutOfTime()
    return cond()


def scale(atoll: DevAtoll, instances: int, hard_deadline: float, notes: list[str]) -> None:
    """PUT instances; while an earlier deployment still locks the app (409), try again."""
    deadline = min(time.monotonic() + PHASE_SECONDS, hard_deadline)
    conflicts = 0
    while True:
        status, body = marathon(atoll.base_url, "PUT", APP_ID.replace("/", "/v2/apps/", 1),
                                {"instances": instances})
        if status in (200, 201):
            if conflicts:
                notes.append(f"scale to {instances}: {conflicts} x 409 (app locked by the "
                             f"previous deployment) before it was accepted")
            return
        if status == 409 and time.monotonic() < deadline:
            conflicts += 1
            time.sleep(0.05)
            continue
        raise RuntimeError(f"PUT /v2/apps{APP_ID} instances={instances} -> {status}: {body}")


def run(atoll: DevAtoll, events: StartEvents, poller: SrvPoller, notes: list[str]):
    """Returns the wall-clock start (time_ns) of each round's scale-up, and rounds done."""
    hard_deadline = time.monotonic() + MAX_SECONDS
    status, body = marathon(atoll.base_url, "POST", "/v2/apps", app_definition(0))
    if status not in (200, 201):
        raise RuntimeError(f"POST /v2/apps -> {status}: {body}")
    round_starts: list[int] = []
    rounds_done = 0
    try:
        for r in range(ROUNDS):
            round_starts.append(time.time_ns())
            t0 = time.monotonic()
            scale(atoll, INSTANCES, hard_deadline, notes)
            seen = wait_until(lambda: len(poller.ports()) >= INSTANCES, PHASE_SECONDS,
                              hard_deadline)
            t_up = time.monotonic() - t0
            if not seen:
                notes.append(f"round {r + 1}: only {len(poller.ports())} of {INSTANCES} "
                             f"ports in DNS after {PHASE_SECONDS:.0f} s")
            # Every start of this round mapped to a host port before the containers go away.
            wanted = INSTANCES * (r + 1)
            wait_until(lambda: (len(snap := events.snapshot()) >= wanted
                                and all(e["port"] is not None for e in snap)),
                       5.0, hard_deadline)
            t1 = time.monotonic()
            scale(atoll, 0, hard_deadline, notes)
            empty = wait_until(lambda: not poller.ports(), PHASE_SECONDS, hard_deadline)
            t_down = time.monotonic() - t1
            if not empty:
                notes.append(f"round {r + 1}: DNS still lists {sorted(poller.ports())} "
                             f"{PHASE_SECONDS:.0f} s after scaling to 0")
            rounds_done += 1
            log(f"  round {r + 1}/{ROUNDS}: {INSTANCES} in DNS after {t_up:.2f} s, "
                f"DNS empty {t_down:.2f} s after scaling to 0")
    except OutOfTime:
        notes.append(f"stopped after {rounds_done} full rounds: MAX_SECONDS={MAX_SECONDS:.0f} "
                     f"reached")
    return round_starts, rounds_done


def report(events: StartEvents, poller: SrvPoller, round_starts: list[int],
           rounds_done: int, notes: list[str]) -> None:
    starts = sorted(events.snapshot(), key=lambda e: e["start_ns"])
    expected = rounds_done * INSTANCES
    latencies: list[float] = []
    unmapped = unseen = early = 0
    for entry in starts:
        if entry["port"] in (None, -1):
            unmapped += 1
            continue
        # The round the start belongs to, by wall clock; DNS was empty when it began.
        i = bisect.bisect_right(round_starts, entry["start_ns"]) - 1
        if i < 0:
            unseen += 1
            continue
        appeared = poller.first_appearance_after(entry["port"], round_starts[i])
        if appeared is None:
            unseen += 1
            continue
        latency_ms = (appeared - entry["start_ns"]) / 1e6
        if latency_ms < 0:
            early += 1
        latencies.append(latency_ms)
    latencies.sort()

    with poller.lock:
        queries, failures, truncated = poller.queries, poller.failures, poller.truncated
        rcodes, dups = dict(poller.rcodes), poller.duplicate_answers

    log("")
    log(f"container start -> host port in DNS SRV ({SERVICE}), {rounds_done} rounds of "
        f"0 -> {INSTANCES} -> 0")
    log(f"  container starts seen (docker start events): {len(starts)} (expected {expected})")
    log(f"  measured: {len(latencies)} of {len(starts)}"
        + (f" ({unmapped} without a host port, {unseen} never seen in DNS)"
           if unmapped or unseen else ""))
    if latencies:
        log(f"  p50 {percentile(latencies, 50):.1f} ms   p90 {percentile(latencies, 90):.1f} ms   "
            f"p99 {percentile(latencies, 99):.1f} ms   max {latencies[-1]:.1f} ms   "
            f"(min {latencies[0]:.1f} ms)")
    if early:
        log(f"  {early} ports were in DNS before Docker reported their container started")
    log(f"  DNS polls: {queries} every {POLL_MS:g} ms, {failures} timed out/failed, "
        f"{truncated} truncated (TC), rcodes {rcodes}"
        + (f", {dups} answers listing a port twice" if dups else ""))
    log("  The latency includes: atoll's Docker driver noticing the start, the Raft write of "
        "the task's state (fsync), applying it, DNS answer cache invalidation; plus up to one "
        "poll interval and the query round trip.")
    for note in notes:
        log(f"  note: {note}")


def main() -> int:
    if shutil.which("docker") is None or docker("version", "--format",
                                                "{{.Server.Version}}").returncode != 0:
        raise SystemExit("no Docker engine answers (docker version failed)")
    ensure_image()
    leftovers = labelled_containers()
    if leftovers:
        log(f"removing {len(leftovers)} containers left labelled atoll.app_id={APP_ID}")
        remove_containers(leftovers)

    notes: list[str] = []
    events = poller = None
    started = time.monotonic()
    try:
        with DevAtoll() as atoll:
            log(f"atoll dev (pid {atoll.pid}) http 127.0.0.1:{atoll.port} "
                f"dns 127.0.0.1:{atoll.dns_port}; {ROUNDS} rounds x {INSTANCES} instances, "
                f"DNS polled every {POLL_MS:g} ms")
            events = StartEvents(since=time.time() - 1.0)
            poller = SrvPoller(atoll.dns_port)
            try:
                round_starts, rounds_done = run(atoll, events, poller, notes)
            finally:
                status, body = marathon(atoll.base_url, "DELETE",
                                        APP_ID.replace("/", "/v2/apps/", 1) + "?force=true")
                if status not in (200, 202):
                    notes.append(f"DELETE /v2/apps{APP_ID} -> {status}: {body}")
                # Give atoll a moment to stop its containers itself.
                deadline = time.monotonic() + 15
                while labelled_containers() and time.monotonic() < deadline:
                    time.sleep(0.2)
                poller.close()
                time.sleep(0.3)  # the last start events and port look-ups
                events.close()
            report(events, poller, round_starts, rounds_done, notes)
    finally:
        if poller is not None:
            poller.close()
        if events is not None:
            events.close()
        leftovers = labelled_containers()
        if leftovers:
            log(f"removing {len(leftovers)} leftover containers labelled "
                f"atoll.app_id={APP_ID}")
            remove_containers(leftovers)
    log(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
