"""Network namespaces joined by a bridge, and iptables partitions between them.

A `Network` gives every node its own network namespace with one interface
(`eth0`) on a private /24 (a random 10.A.B.0/24 that no address or route of
the host covers). The bridge lives in a namespace of its own (the hub), so
the host's firewall (Docker's FORWARD policy, br_netfilter) never sees the
traffic between nodes. The test process reaches every node through one more
veth pair whose root-namespace end holds the .254 address of the subnet; the
partitions below never touch that address, so a test can always ask each
side of a partition what it thinks.

Links are cut with iptables rules INSIDE the namespaces: `drop(a, b)` makes
`a` drop every packet arriving from `b` (one-way loss); `cut(a, b)` does it
in both directions. `heal()` deletes exactly the rules this object added.
`close()` removes the namespaces and the root veth, also after a failure;
processes started in a namespace must be stopped before it.

Names carry the test process's pid and a counter (`atl-<pid>-<n>-s1`), so
parallel runs and other users of the machine never collide with them.
Needs root and the `ip` and `iptables` commands (Debian iproute2, iptables).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import shutil
import subprocess
import threading
from dataclasses import dataclass

from conftest import require

_COUNTER = itertools.count(1)
CMD_TIMEOUT = 20.0
ROOT_HOST = 254  # the test process's address on every subnet


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def require_netns() -> None:
    """Skip (or, under CI, fail) unless this process can build namespaces and firewall them."""
    require(os.geteuid() == 0, "network namespaces need root")
    require(_tool("ip") is not None, "command 'ip' not installed (Debian package iproute2)")
    require(_tool("iptables") is not None, "command 'iptables' not installed (Debian package iptables)")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address or a route in."""
    nets = []
    for args in (("ip", "-4", "-o", "addr", "show"), ("ip", "-4", "route", "show", "table", "all")):
        for line in run(*args).stdout.splitlines():
            for word in line.split():
                try:
                    if "/" in word:
                        nets.append(ipaddress.ip_network(word, strict=False))
                    elif word.count(".") == 3:
                        nets.append(ipaddress.ip_network(f"{word}/32"))
                except ValueError:
                    continue
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network) and n.prefixlen > 0]


def free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A 10.A.B.0/24 that overlaps nothing the host uses."""
    used = _used_networks()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(16, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet on this host")


@dataclass(frozen=True)
class Host:
    """One node's namespace and address."""

    name: str  # the node's short name (s1, c1, ...)
    netns: str
    ip: str

    def wrap(self) -> list[str]:
        """The command prefix that runs a program inside this namespace."""
        return ["ip", "netns", "exec", self.netns]


class Network:
    """Namespaces on one bridge, with partitions between them (see the module docstring)."""

    def __init__(self, names: list[str], rng: random.Random) -> None:
        self.rng = rng
        n = next(_COUNTER)
        pid = os.getpid()
        self.prefix = f"atl-{pid}-{n}"
        self.hub = f"{self.prefix}-hub"
        # Interface names are at most 15 characters and the root one must be unique host-wide.
        self.root_link = f"atl{pid % 100000}x{n}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: dict[str, Host] = {}
        self._names = list(names)
        self._created_netns: list[str] = []
        self._root_link_created = False
        self._rules: list[tuple[str, str]] = []  # (namespace, source address) with a DROP rule
        self._lock = threading.Lock()

    # -- building ---------------------------------------------------------
    def create(self) -> "Network":
        require_netns()
        self.subnet = free_subnet(self.rng)
        base = self.subnet.network_address
        self._netns_add(self.hub)
        run("ip", "-n", self.hub, "link", "set", "lo", "up")
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, name in enumerate(self._names, start=1):
            host = Host(name, f"{self.prefix}-{name}", str(base + i))
            self._netns_add(host.netns)
            port = f"p{i}"
            run("ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)
            run("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/{self.subnet.prefixlen}", "dev", "eth0")
            run("ip", "-n", host.netns, "link", "set", "eth0", "up")
            run("ip", "-n", host.netns, "link", "set", "lo", "up")
            self.hosts[name] = host
        run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "up0", "netns", self.hub)
        self._root_link_created = True
        run("ip", "-n", self.hub, "link", "set", "up0", "master", "br0", "up")
        run("ip", "addr", "add", f"{self.root_ip}/{self.subnet.prefixlen}", "dev", self.root_link)
        run("ip", "link", "set", self.root_link, "up")
        return self

    def _netns_add(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._created_netns.append(name)

    @property
    def root_ip(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + ROOT_HOST)

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def by_ip(self, ip: str) -> Host:
        return next(h for h in self.hosts.values() if h.ip == ip)

    # -- partitions -------------------------------------------------------
    def drop(self, receiver: str, sender: str) -> None:
        """One-way loss: `receiver` drops every packet from `sender` (by its address)."""
        rx, tx = self.hosts[receiver], self.hosts[sender]
        with self._lock:
            if (rx.netns, tx.ip) in self._rules:
                return
            run("ip", "netns", "exec", rx.netns, "iptables", "-w", "-I", "INPUT", "-s", tx.ip, "-j", "DROP")
            self._rules.append((rx.netns, tx.ip))

    def cut(self, a: str, b: str) -> None:
        """No packet passes between `a` and `b` in either direction."""
        self.drop(a, b)
        self.drop(b, a)

    def isolate(self, name: str, others: list[str] | None = None) -> None:
        """Cut `name` off from every other node (or from `others`); the test process still reaches it."""
        for other in others if others is not None else self.hosts:
            if other != name:
                self.cut(name, other)

    def split(self, side_a: list[str], side_b: list[str]) -> None:
        for a in side_a:
            for b in side_b:
                self.cut(a, b)

    def heal(self) -> None:
        """Delete exactly the rules added here; every link works again."""
        with self._lock:
            errors = []
            while self._rules:
                netns, source = self._rules.pop()
                proc = run("ip", "netns", "exec", netns, "iptables", "-w", "-D", "INPUT", "-s", source, "-j",
                           "DROP", check=False)
                if proc.returncode != 0:
                    errors.append(f"{netns}: {proc.stderr.strip()}")
            if errors:
                raise RuntimeError("could not delete iptables rules: " + "; ".join(errors))

    def rules(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._rules)

    def input_rules(self, name: str) -> list[str]:
        """The INPUT rules of a node's namespace as iptables -S prints them."""
        out = run("ip", "netns", "exec", self.hosts[name].netns, "iptables", "-w", "-S", "INPUT").stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    # -- teardown ---------------------------------------------------------
    def close(self) -> None:
        """Remove what create() made; safe to call more than once, and after a half-done create()."""
        errors = []
        with self._lock:
            self._rules.clear()  # the namespaces go, and their rules with them
        if self._root_link_created:
            proc = run("ip", "link", "del", self.root_link, check=False)
            if proc.returncode != 0 and "Cannot find" not in proc.stderr:
                errors.append(proc.stderr.strip())
            self._root_link_created = False
        while self._created_netns:
            name = self._created_netns.pop()
            proc = run("ip", "netns", "del", name, check=False)
            if proc.returncode != 0:
                errors.append(f"{name}: {proc.stderr.strip()}")
        if errors:
            raise RuntimeError("network cleanup: " + "; ".join(errors))


class NetnsPool:
    """Hands out the network's node addresses in order, for cluster_util.Cluster.

    A node started on one of them runs inside that address's namespace.
    """

    def __init__(self, network: Network) -> None:
        self.network = network
        self._left = [h.ip for h in network.hosts.values()]

    def take(self) -> str:
        if not self._left:
            raise RuntimeError(f"the network {self.network.prefix} has no address left")
        return self._left.pop(0)

    def wrap(self, ip: str) -> list[str]:
        return self.network.by_ip(ip).wrap()
