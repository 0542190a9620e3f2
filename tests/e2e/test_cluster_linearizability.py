"""Linearizability of the KV store of a 3-server cluster under crashes and pauses.

Three `atoll agent --server` processes run on their own loopback IPs
(127.A.B.1-3, A and B random). Client threads issue puts, gets and
compare-and-sets on a few keys against random servers while a nemesis thread
kills servers with SIGKILL (restarting them on the same data dir) and freezes
them with SIGSTOP (a frozen server looks partitioned to everyone else). Every
operation is recorded with its invocation and completion time; afterwards
the cluster is healed, each key is read once more with ?consistent, and the
whole history must be linearizable (see linearizability.py).

How operations are recorded, and how the history is checked: lin_cluster.py.

The test runs ATOLL_E2E_LIN_RUNS times (default 3), with seeds ATOLL_E2E_SEED,
ATOLL_E2E_SEED + 1, ... Each seed fixes the random choices (addresses, start
order, the clients' choices, and the nemesis plan: which fault, after how long,
on which server, for how long; "-leader" faults hit whoever leads then).
Thread timing is not replayable. A run whose history is not linearizable keeps
it in target/e2e-artifacts/ (ATOLL_E2E_ARTIFACTS) and prints its seed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import free_port, require, require_binary, wait_for
from lin_cluster import Clients, check_history, join_threads, never_sent
from linearizability import History

RPC_PORT = 8300
HTTP_PORT = 8500
DNS_PORT = 8600

SERVERS = 3
CLIENTS = 4
RUN_SECONDS = 20.0  # clients and nemesis run this long
FORM_TIMEOUT = 30.0  # servers spawned -> one leader everybody names
RECOVER_TIMEOUT = 20.0  # everything healed -> one leader everybody names
STOP_TIMEOUT = 5.0

SEED = int(os.environ.get("ATOLL_E2E_SEED", time.time_ns() % 1_000_000))
# Each run of the test is one seed: SEED, SEED + 1, ... (ATOLL_E2E_LIN_RUNS of them).
RUNS = int(os.environ.get("ATOLL_E2E_LIN_RUNS", "3"))
SEEDS = [SEED + i for i in range(RUNS)]


# ---------------------------------------------------------------------------
# servers


def _ports_free(ip: str) -> bool:
    for port, kind in ((RPC_PORT, socket.SOCK_STREAM), (HTTP_PORT, socket.SOCK_STREAM),
                       (DNS_PORT, socket.SOCK_STREAM), (DNS_PORT, socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def pick_ips(rng: random.Random, count: int) -> list[str]:
    """`count` loopback IPs 127.A.B.1.. whose atoll ports are all free."""
    for _ in range(50):
        a, b = rng.randint(10, 250), rng.randint(0, 255)
        ips = [f"127.{a}.{b}.{i}" for i in range(1, count + 1)]
        if all(_ports_free(ip) for ip in ips):
            return ips
    raise RuntimeError("no block of loopback addresses with free atoll ports")


class Server:
    """One `atoll agent --server` process; restartable on the same data dir."""

    def __init__(self, binary: Path, root: Path, name: str, ip: str, peers: list[str]) -> None:
        self.binary = binary
        self.name = name
        self.ip = ip
        self.peers = [p for p in peers if p != ip]
        self.workdir = root / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.paused = False
        self.killed_by_us = False
        self.closed = False  # set by close(): no more restarts
        self.unexpected_exits: list[str] = []
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{self.name}({self.ip})"

    @property
    def rpc_addr(self) -> str:
        return f"{self.ip}:{RPC_PORT}"

    def url(self, path: str) -> str:
        return f"http://{self.ip}:{HTTP_PORT}{path}"

    def command(self) -> list[str]:
        cmd = [str(self.binary), "agent", "--server", "--bootstrap-expect", str(SERVERS),
               "--data-dir", str(self.data_dir), "--bind", self.ip, "--node", self.name, "--datacenter", "dc1"]
        for peer in self.peers:
            cmd += ["--retry-join", peer]
        return cmd

    def log_path(self) -> Path:
        return self.workdir / f"atoll-{max(self.starts, 1)}.log"

    def spawn(self) -> None:
        with self.lock:
            if self.closed:
                return
            assert not self.running(), f"{self} already running"
            self.starts += 1
            self.paused = False
            self.killed_by_us = False
            env = dict(os.environ)
            env.setdefault("ATOLL_LOG", "info,openraft=warn")
            with open(self.log_path(), "wb") as log:
                self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def note_exit(self) -> bool:
        """True when the process is gone; records exits we did not cause."""
        if self.proc is None or self.proc.poll() is None:
            return False
        if not self.killed_by_us:
            entry = f"{self} run {self.starts} exited with {self.proc.returncode}"
            if entry not in self.unexpected_exits:
                self.unexpected_exits.append(entry)
        return True

    def kill9(self) -> None:
        with self.lock:
            if self.running():
                assert self.proc is not None
                self.killed_by_us = True
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)
            self.paused = False

    def pause(self) -> None:
        with self.lock:
            if self.running() and not self.paused:
                assert self.proc is not None
                os.kill(self.proc.pid, signal.SIGSTOP)
                self.paused = True

    def resume(self) -> None:
        with self.lock:
            if self.running() and self.paused:
                assert self.proc is not None
                os.kill(self.proc.pid, signal.SIGCONT)
            self.paused = False

    def close(self) -> None:
        """Stop by PID: SIGCONT if frozen, SIGTERM, then SIGKILL after STOP_TIMEOUT."""
        with self.lock:
            self.closed = True
        self.resume()
        with self.lock:
            if not self.running():
                return
            assert self.proc is not None
            self.killed_by_us = True
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)

    def leader(self, timeout: float = 1.0) -> str:
        r = requests.get(self.url("/v1/status/leader"), timeout=timeout)
        if r.status_code != 200:
            return ""
        value = r.json()
        return value if isinstance(value, str) else ""

    def logs(self, tail: int = 25) -> str:
        path = self.log_path()
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = text.splitlines()[-tail:]
        return f"--- {self} run {self.starts} ({path}) ---\n" + "\n".join(lines)


def agreed_leader(servers: list[Server]) -> Server | None:
    """The server every server names as leader, if they all agree."""
    names = {s.leader() for s in servers}
    if len(names) != 1 or "" in names:
        return None
    (addr,) = names
    return next((s for s in servers if s.rpc_addr == addr), None)


def leader_guess(servers: list[Server]) -> Server | None:
    """Whoever the first answering server names as leader (may be stale)."""
    for s in servers:
        if s.paused or not s.running():
            continue
        try:
            addr = s.leader(timeout=0.5)
        except requests.RequestException:
            continue
        for t in servers:
            if t.rpc_addr == addr:
                return t
    return None


# ---------------------------------------------------------------------------
# the nemesis


@dataclass(frozen=True)
class Fault:
    """One planned fault: drawn from the seed before the run starts."""

    gap: float  # seconds of calm before it
    kind: str  # kill, kill-leader, pause, pause-leader, pause-two
    pick: int  # which server (index) when the kind names no leader or none is known
    second: int  # the other server of pause-two (never equal to pick)
    hold: float  # how long the server stays down or frozen

    def describe(self) -> str:
        who = f"s{self.pick + 1}" + (f"+s{self.second + 1}" if self.kind == "pause-two" else "")
        return f"after {self.gap:.2f}s {self.kind} ({who} unless the leader is meant) for {self.hold:.2f}s"


def nemesis_plan(seed: int, count: int = 50) -> list[Fault]:
    """The nemesis schedule of a seed: the same seed gives the same faults in the same order.

    Only "-leader" faults depend on the run: they hit whichever server leads at
    that moment (the planned pick when no leader is known).
    """
    rng = random.Random(f"nemesis-{seed}")
    plan = []
    for _ in range(count):
        gap = rng.uniform(0.8, 1.5)
        kind = rng.choice(["kill", "kill-leader", "pause", "pause-leader", "pause-two"])
        pick, second = rng.sample(range(SERVERS), 2)
        hold = {"kill": (0.3, 1.5), "kill-leader": (0.3, 1.5), "pause": (2.0, 4.0),
                "pause-leader": (2.0, 4.0), "pause-two": (1.5, 2.5)}[kind]
        plan.append(Fault(gap, kind, pick, second, rng.uniform(*hold)))
    return plan


class Nemesis:
    def __init__(self, servers: list[Server], plan: list[Fault], deadline: float, stop: threading.Event) -> None:
        self.servers = servers
        self.plan = plan
        self.deadline = deadline
        self.stop = stop
        self.t0 = time.monotonic()
        self.events: list[str] = []
        self.faults = 0
        self.error: BaseException | None = None

    def log(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:7.3f}s {text}")

    def heal(self) -> None:
        """SIGCONT frozen servers, restart dead ones."""
        for s in self.servers:
            if s.paused:
                s.resume()
                self.log(f"SIGCONT {s}")
        for s in self.servers:
            if s.note_exit():
                if not s.killed_by_us:
                    self.log(f"{s} had exited on its own with {s.proc.returncode if s.proc else None}")
                s.spawn()
                self.log(f"restarted {s}")

    def wait_all_answer(self, timeout: float) -> None:
        """Give a restarted server a chance to rejoin before the next fault (not an assertion)."""
        end = min(time.monotonic() + timeout, self.deadline)
        for _ in range(200):
            if time.monotonic() >= end or self.stop.is_set():
                return
            try:
                if all(s.leader(timeout=0.5) for s in self.servers):
                    return
            except requests.RequestException:
                pass
            self.stop.wait(0.1)

    def target(self, fault: Fault) -> Server:
        if fault.kind.endswith("-leader"):
            found = leader_guess(self.servers)
            if found is not None:
                return found
        return self.servers[fault.pick]

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.log(f"nemesis error {exc!r}")
        finally:
            try:
                self.heal()
            except BaseException as exc:  # noqa: BLE001
                self.error = self.error or exc

    def _run(self) -> None:
        for fault in self.plan:
            if self.stop.wait(fault.gap):
                return
            if time.monotonic() > self.deadline - 2.0:
                return
            self.faults += 1
            if fault.kind in ("kill", "kill-leader"):
                victim = self.target(fault)
                victim.kill9()
                self.log(f"{fault.kind}: SIGKILL {victim}")
                self.stop.wait(fault.hold)
                victim.spawn()
                self.log(f"restarted {victim}")
            elif fault.kind in ("pause", "pause-leader"):
                victim = self.target(fault)
                victim.pause()
                self.log(f"{fault.kind}: SIGSTOP {victim}")
                self.stop.wait(fault.hold)
                victim.resume()
                self.log(f"SIGCONT {victim}")
            else:
                victims = [self.servers[fault.pick], self.servers[fault.second]]
                for v in victims:
                    v.pause()
                self.log(f"pause-two: SIGSTOP {victims} (no quorum)")
                self.stop.wait(fault.hold)
                for v in victims:
                    v.resume()
                self.log(f"SIGCONT {victims}")
            self.heal()
            self.wait_all_answer(5.0)


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(params=SEEDS, ids=lambda seed: f"seed{seed}")
def cluster(request, tmp_path):
    seed = request.param
    binary = require_binary()
    try:
        help_text = subprocess.run([str(binary), "agent", "--help"], capture_output=True, text=True,
                                   timeout=20, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        help_text = f"{exc!r}"
    require("--bootstrap-expect" in help_text and "--retry-join" in help_text,
            "this atoll build has no multi-server `agent --server --bootstrap-expect`")
    rng = random.Random(seed)
    print(f"cluster linearizability seed: {seed} (replay: ATOLL_E2E_SEED={seed} ATOLL_E2E_LIN_RUNS=1)")
    ips = pick_ips(rng, SERVERS)
    servers = [Server(binary, tmp_path, f"lin-s{i + 1}", ip, ips) for i, ip in enumerate(ips)]
    try:
        yield servers, rng, seed
    finally:
        errors = []
        for s in servers:
            try:
                s.close()
            except Exception as exc:  # noqa: BLE001 - stop the others first
                errors.append(exc)
        if errors:
            raise errors[0]


def _logs(servers: list[Server]) -> str:
    return "\n".join(s.logs() for s in servers)


# ---------------------------------------------------------------------------
# the test


def test_kv_is_linearizable_under_crashes_and_pauses(cluster, tmp_path):
    servers, rng, seed = cluster
    plan = nemesis_plan(seed)
    order = list(servers)
    rng.shuffle(order)
    for s in order:
        s.spawn()
    wait_for(lambda: agreed_leader(servers), timeout=FORM_TIMEOUT, interval=0.1,
             message=lambda: f"3 servers (started in order {order}) to agree on a leader\n{_logs(servers)}")

    history = History()
    stop = threading.Event()
    deadline = time.monotonic() + RUN_SECONDS
    clients = Clients(servers, history, deadline, stop, seed)
    nemesis = Nemesis(servers, plan, deadline, stop)
    threads = clients.threads(CLIENTS) + [threading.Thread(target=nemesis.run, name="nemesis", daemon=True)]
    for t in threads:
        t.start()
    join_threads(threads, deadline, stop, STOP_TIMEOUT)
    assert nemesis.error is None, f"nemesis failed: {nemesis.error!r}\n" + "\n".join(nemesis.events)

    # Heal everything and wait for the cluster to settle on one leader again.
    nemesis.heal()
    wait_for(lambda: agreed_leader(servers), timeout=RECOVER_TIMEOUT, interval=0.1,
             message=lambda: "the healed cluster to agree on a leader\n" + "\n".join(nemesis.events)
             + "\n" + _logs(servers))

    # One final consistent read per key: the value a complete history ends with.
    finals = clients.final_reads(servers, rng, logs=lambda: _logs(servers))

    ops = history.ops()
    dump = tmp_path / "history.json"
    print(f"nemesis: {len(nemesis.events)} events, {nemesis.faults} faults")
    print("\n".join(nemesis.events))
    print(f"client stats: {dict(sorted(clients.stats.items()))}")
    print(f"final values: {finals}")
    print(f"history: {len(ops)} operations, written to {dump}")

    for s in servers:
        s.note_exit()
    exits = [e for s in servers for e in s.unexpected_exits]
    assert not exits, "servers exited without being killed:\n" + "\n".join(exits) + "\n" + _logs(servers)
    assert not clients.anomalies, "unexpected answers:\n" + "\n".join(clients.anomalies)

    # (c) the run did something: enough acknowledged operations, faults injected.
    stats = clients.stats
    assert nemesis.faults >= 3, f"only {nemesis.faults} faults injected"
    assert stats["put-true"] + stats["cas-true"] >= 20, f"too few acknowledged writes: {dict(stats)}"
    assert stats["get-ok"] >= 20, f"too few successful reads: {dict(stats)}"
    assert stats["cas-true"] >= 1 and stats["cas-false"] + stats["cas-true"] >= 5, f"too few cas: {dict(stats)}"

    # (a) + (b): the history, final reads included, is linearizable.
    record = {"seed": seed, "nemesis_plan": [f.describe() for f in plan[:nemesis.faults]],
              "nemesis": nemesis.events, "stats": dict(clients.stats)}
    check_history(ops, record, dump, str(seed),
                  f"replay the run with ATOLL_E2E_SEED={seed} ATOLL_E2E_LIN_RUNS=1",
                  lambda: f"seed {seed}; nemesis timeline (seconds since the clients started):\n"
                  + "\n".join(nemesis.events) + "\n" + _logs(servers))


def test_requests_that_never_left_are_told_apart_from_unknown_outcomes():
    """Refused connections are "never sent"; a server that accepts and then stays silent is not."""
    port = free_port()
    with pytest.raises(requests.RequestException) as refused:
        requests.put(f"http://127.0.0.1:{port}/v1/kv/x", data=b"v", timeout=1.0)
    assert never_sent(refused.value), repr(refused.value)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the handshake; nobody ever answers
        with pytest.raises(requests.RequestException) as timed_out:
            requests.put(f"http://127.0.0.1:{silent.getsockname()[1]}/v1/kv/x", data=b"v", timeout=0.3)
    assert isinstance(timed_out.value, requests.exceptions.ReadTimeout), repr(timed_out.value)
    assert not never_sent(timed_out.value), repr(timed_out.value)
