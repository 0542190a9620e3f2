"""Shared helpers for the cluster benchmarks: a loopback cluster of `atoll agent` processes.

Each node gets its own loopback address 127.A.B.x (A and B random per run)
and listens on the default ports 8300 (Raft/RPC), 8500 (HTTP) and 8600 (DNS).
State lives in a temporary directory removed at the end. The only processes
ever signalled are the ones started here, by their PID.

Standard library only, apart from `requests` in the scripts that drive load.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchlib import atoll_bin

RPC_PORT = 8300
HTTP_PORT = 8500
DNS_PORT = 8600

# Never route the benchmark's own requests through an HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ports_free(ip: str) -> bool:
    for port, kind in ((RPC_PORT, socket.SOCK_STREAM), (HTTP_PORT, socket.SOCK_STREAM),
                       (DNS_PORT, socket.SOCK_STREAM), (DNS_PORT, socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


class AddressPool:
    """Loopback IPs whose atoll ports are free, never the same one twice."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.a = rng.randint(10, 250)
        self.b = rng.randint(0, 255)
        self.host = 1

    def take(self) -> str:
        for _ in range(1000):
            if self.host > 250:
                self.a, self.b, self.host = self.rng.randint(10, 250), self.rng.randint(0, 255), 1
            ip = f"127.{self.a}.{self.b}.{self.host}"
            self.host += 1
            if ports_free(ip):
                return ip
        raise SystemExit("no loopback address with free atoll ports")


def http_json(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 2.0):
    """(status, decoded JSON or None); raises OSError when there is no answer."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            data = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        data, status = e.read(), e.code
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, None


class Node:
    def __init__(self, root: Path, name: str, ip: str, server: bool, join: list[str],
                 expect: int | None = None, extra: list[str] | None = None) -> None:
        self.name = name
        self.ip = ip
        self.server = server
        self.join = [j for j in join if j != ip]
        self.expect = expect
        self.extra = list(extra or [])
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def rpc_addr(self) -> str:
        return f"{self.ip}:{RPC_PORT}"

    @property
    def base_url(self) -> str:
        return f"http://{self.ip}:{HTTP_PORT}"

    def command(self) -> list[str]:
        cmd = [atoll_bin(), "agent", "--data-dir", str(self.dir / "data"), "--bind", self.ip,
               "--node", self.name]
        if self.server:
            cmd += ["--server", "--bootstrap-expect", str(self.expect)]
        for j in self.join:
            cmd += ["--retry-join", j]
        return cmd + self.extra

    def spawn(self) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} already running")
        self.starts += 1
        env = dict(os.environ)
        env.setdefault("ATOLL_LOG", "warn")
        env.setdefault("NO_COLOR", "1")
        with open(self.dir / f"run-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.dir)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the process stays, silent (its kernel still accepts connections)."""
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 15) -> str:
        path = self.dir / f"run-{max(self.starts, 1)}.log"
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"--- {self.name} ---\n" + "\n".join(text)

    def leader(self, timeout: float = 1.0) -> str:
        try:
            status, value = http_json(self.base_url + "/v1/status/leader", timeout=timeout)
        except OSError:
            return ""
        return value if status == 200 and isinstance(value, str) else ""

    def peers(self, timeout: float = 1.0) -> list[str]:
        try:
            status, value = http_json(self.base_url + "/v1/status/peers", timeout=timeout)
        except OSError:
            return []
        return value if status == 200 and isinstance(value, list) else []


class Cluster:
    """`servers` servers started in random order; clients added on demand."""

    def __init__(self, servers: int = 3, seed: int | None = None, server_args: list[str] | None = None) -> None:
        self.seed = seed if seed is not None else time.time_ns() % 1_000_000
        self.rng = random.Random(self.seed)
        self.pool = AddressPool(self.rng)
        self.root = Path(tempfile.mkdtemp(prefix="atoll-cluster-bench-"))
        ips = [self.pool.take() for _ in range(servers)]
        self.servers = [Node(self.root, f"s{i + 1}", ip, True, ips, expect=servers, extra=server_args)
                        for i, ip in enumerate(ips)]
        self.clients: list[Node] = []

    def __enter__(self) -> "Cluster":
        binary = atoll_bin()
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"atoll binary not found at {binary} (build it or set ATOLL_BIN)")
        try:
            order = list(self.servers)
            self.rng.shuffle(order)
            for node in order:
                node.spawn()
            self.wait_agreement(timeout=60)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def nodes(self) -> list[Node]:
        return self.servers + self.clients

    def add_client(self, name: str, extra: list[str] | None = None) -> Node:
        node = Node(self.root, name, self.pool.take(), False, [s.ip for s in self.servers], extra=extra)
        self.clients.append(node)
        return node

    def logs(self) -> str:
        return "\n".join(n.log_tail() for n in self.nodes if n.starts)

    def agreement(self) -> Node | None:
        """The leader when every running node names the same running server and the
        running servers all list it among their peers."""
        for node in self.nodes:
            if node.starts and not node.running() and node.proc is not None and node.proc.returncode != -9:
                raise SystemExit(f"{node.name} exited with {node.proc.returncode}\n{node.log_tail()}")
        live = [n for n in self.nodes if n.running()]
        names = {n.leader() for n in live}
        if len(names) != 1 or "" in names:
            return None
        (addr,) = names
        leader = next((s for s in self.servers if s.rpc_addr == addr and s.running()), None)
        if leader is None:
            return None
        if any(addr not in s.peers() for s in live if s.server):
            return None
        return leader

    def wait_agreement(self, timeout: float) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.agreement()
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise SystemExit(f"the cluster did not agree on a leader within {timeout:.0f}s\n{self.logs()}")

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.kill9()
            except Exception:  # noqa: BLE001 - stop the others anyway
                pass
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------
# a minimal DNS client (A records, UDP)


def _skip_name(data: bytes, at: int) -> int:
    """Offset just past the (possibly compressed) domain name starting at `at`."""
    while at < len(data):
        length = data[at]
        if length & 0xC0 == 0xC0:
            return at + 2
        if length == 0:
            return at + 1
        at += 1 + length
    raise OSError("truncated DNS name")


def dns_a_addresses(server_ip: str, name: str, timeout: float = 1.0) -> list[str]:
    """The addresses of the A records `server_ip`:8600 returns for `name` ([] for NXDOMAIN)."""
    qid = random.randint(0, 0xFFFF)
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = header + qname + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server_ip, DNS_PORT))
        for _ in range(10):
            data, _ = s.recvfrom(4096)
            if len(data) < 12 or struct.unpack(">H", data[:2])[0] != qid:
                continue
            qdcount, ancount = struct.unpack(">HH", data[4:8])
            at = 12
            for _ in range(qdcount):
                at = _skip_name(data, at) + 4
            addresses = []
            for _ in range(ancount):
                at = _skip_name(data, at)
                rtype, _, _, length = struct.unpack(">HHIH", data[at:at + 10])
                at += 10
                if rtype == 1 and length == 4:
                    addresses.append(socket.inet_ntoa(data[at:at + 4]))
                at += length
            return addresses
    raise OSError("no matching DNS answer")


def dns_a_count(server_ip: str, name: str, timeout: float = 1.0) -> int:
    """How many A records `server_ip`:8600 returns for `name` (0 for NXDOMAIN/empty)."""
    return len(dns_a_addresses(server_ip, name, timeout))
