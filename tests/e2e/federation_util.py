"""Several datacenters on one machine, federated over the WAN gossip pool.

Each datacenter is its own cluster of real `atoll agent` processes
(cluster_util.Node) on a loopback /24 of its own: dc1 on 127.0.1.x, dc2 on
127.0.2.x, dc3 on 127.0.3.x, every node on the default ports of its IP (8300
RPC, 8302 WAN gossip on servers, 8500 HTTP, 8600 DNS). The random addresses
of cluster_util's pool are 127.A.B.x with A >= 10, so they never meet these.
Servers are numbered from .1, compute nodes follow them.

Only ONE server of each other datacenter is given `--retry-join-wan` (the
first server of dc1, 127.0.1.1), with a retry interval of 1 s: the rest of the
pool must follow from that single join (flood join inside a datacenter,
gossip across them).

WAN cuts (`Federation.cut`) are iptables DROP rules on the loopback
interface, in the INPUT chain, between one datacenter's /24 and the others',
in both directions. A connection whose source address is not bound picks
127.0.0.1 on loopback, which no /24 rule would catch; so the cut also drops
what 127.0.0.1 sends to the cut datacenter's WAN, HTTP and DNS ports and to
the others' WAN port. While a cut holds, the test process talks to the cut
datacenter from an address of its own /24 (`Federation.probe_ip`), which the
rules let through. Every rule carries a comment naming this process, and
`heal` deletes exactly the rules added.

ATOLL_E2E_FED_NET moves the whole layout to another 127.X (default `127.0`)
when 127.0.1-3.x are taken on the machine. Logs of every node are kept in
its work dir; `Federation.logs()` gathers their tails and `keep_logs` copies
them for a failed run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import dns.message
import dns.query
import requests
import requests.adapters

from cluster_util import Cluster, Node
from conftest import GiveUp, require, require_tool, wait_for

RPC_PORT = 8300
WAN_PORT = 8302
HTTP_PORT = 8500
DNS_PORT = 8600

NET = os.environ.get("ATOLL_E2E_FED_NET", "127.0").strip() or "127.0"
FORM_TIMEOUT = 40.0  # processes spawned -> a leader in every datacenter
WAN_TIMEOUT = 60.0  # leaders known -> every server in every server's WAN pool, alive
RETRY_INTERVAL_WAN = 1  # --retry-interval-wan of the one joining server per datacenter
COMMENT = f"atoll-e2e-fed-{os.getpid()}"
PROBE_HOST = 254  # the test process's own address in a datacenter's /24 while it is cut off

# Serf's member states as /v1/agent/members numbers them.
ALIVE, LEAVING, LEFT, FAILED = 1, 2, 3, 4

ARTIFACTS = Path(os.environ.get("ATOLL_E2E_ARTIFACTS", Path(__file__).resolve().parents[2] / "target" / "e2e-artifacts"))


def dc_prefix(index: int) -> str:
    """The /24 of datacenter number `index` (1-based), without the last octet: `127.0.1`."""
    return f"{NET}.{index}"


def _bindable(ip: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # As a listener does: connections of an earlier run in TIME_WAIT do not hold the port.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def busy_ports(ip: str, server: bool) -> list[str]:
    """The atoll ports of `ip` something else already holds (`PORT/tcp`, `PORT/udp`)."""
    wanted = [(RPC_PORT, socket.SOCK_STREAM), (HTTP_PORT, socket.SOCK_STREAM), (DNS_PORT, socket.SOCK_STREAM),
              (DNS_PORT, socket.SOCK_DGRAM)]
    if server:
        wanted += [(WAN_PORT, socket.SOCK_STREAM), (WAN_PORT, socket.SOCK_DGRAM)]
    return [f"{port}/{'tcp' if kind == socket.SOCK_STREAM else 'udp'}" for port, kind in wanted
            if not _bindable(ip, port, kind)]


class FixedAddresses:
    """cluster_util's address pool for one datacenter: its /24, hosts .1, .2, ... in order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.next_host = 1

    def take(self) -> str:
        ip = f"{self.prefix}.{self.next_host}"
        self.next_host += 1
        return ip

    def wrap(self, ip: str) -> list[str]:
        return []


class Datacenter:
    """One datacenter: `servers` servers and `clients` compute nodes on its /24."""

    def __init__(self, root: Path, name: str, index: int, servers: int, clients: int,
                 join_wan: str | None) -> None:
        self.name = name
        self.index = index
        self.prefix = dc_prefix(index)
        self.cluster = Cluster(root, FixedAddresses(self.prefix), name)  # type: ignore[arg-type]
        self.cluster.add_servers(servers, datacenter=name)
        for i in range(clients):
            self.cluster.add_client(f"c{i + 1}", datacenter=name)
        self.join_wan = join_wan
        if join_wan is not None:
            self.servers[0].extra_args += ["--retry-join-wan", join_wan,
                                           "--retry-interval-wan", str(RETRY_INTERVAL_WAN)]

    def __repr__(self) -> str:
        return f"<{self.name} {[n.name for n in self.nodes]}>"

    @property
    def nodes(self) -> list[Node]:
        return self.cluster.nodes

    @property
    def servers(self) -> list[Node]:
        return self.cluster.servers

    @property
    def clients(self) -> list[Node]:
        return self.cluster.clients

    @property
    def server(self) -> Node:
        return self.servers[0]

    @property
    def client(self) -> Node:
        return self.clients[0]

    def wan_name(self, node: Node) -> str:
        return f"{node.name}.{self.name}"

    def leader(self) -> Node:
        return self.cluster.wait_converged(timeout=FORM_TIMEOUT)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def wan_members(node: Node, timeout: float = 3.0) -> dict[str, dict]:
    """`/v1/agent/members?wan=1` of `node`, by member name."""
    r = node.get("/v1/agent/members?wan=1", timeout=timeout)
    assert r.status_code == 200, f"{node.name}: members?wan=1 -> {r.status_code}: {r.text}"
    return {m["Name"]: m for m in r.json()}


class SourceAdapter(requests.adapters.HTTPAdapter):
    """Connections from a chosen local address (to get through a cut that drops 127.0.0.1)."""

    def __init__(self, source_ip: str, **kwargs) -> None:
        self.source_ip = source_ip
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source_ip, 0)
        return super().init_poolmanager(*args, **kwargs)


def session_from(source_ip: str) -> requests.Session:
    """A requests session whose connections leave from `source_ip`."""
    session = requests.Session()
    adapter = SourceAdapter(source_ip)
    session.mount("http://", adapter)
    return session


class Federation:
    """dc1 (3 servers + 1 compute node), dc2 and dc3 (1 server + 1 compute node each)."""

    LAYOUT = (("dc1", 3, 1), ("dc2", 1, 1), ("dc3", 1, 1))

    def __init__(self, root: Path, wan: bool = True, layout: Iterable[tuple[str, int, int]] = LAYOUT) -> None:
        self.root = Path(root)
        self.wan = wan
        self.dcs: dict[str, Datacenter] = {}
        first_server: str | None = None
        for index, (name, servers, clients) in enumerate(layout, start=1):
            join = first_server if (wan and first_server is not None) else None
            dc = Datacenter(self.root, name, index, servers, clients, join)
            if first_server is None:
                first_server = dc.server.ip
            self.dcs[name] = dc
        self._rules: list[list[str]] = []
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Datacenter:
        return self.dcs[name]

    # -- what it holds ----------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        return [n for dc in self.dcs.values() for n in dc.nodes]

    @property
    def servers(self) -> list[Node]:
        return [n for dc in self.dcs.values() for n in dc.servers]

    def dc_of(self, node: Node) -> Datacenter:
        return next(dc for dc in self.dcs.values() if node in dc.nodes)

    def wan_names(self) -> set[str]:
        """Every server's WAN member name (`NODE.DC`)."""
        return {dc.wan_name(s) for dc in self.dcs.values() for s in dc.servers}

    # -- lifecycle --------------------------------------------------------
    def check_ports(self) -> None:
        busy = {n.ip: busy_ports(n.ip, n.server) for n in self.nodes}
        busy = {ip: ports for ip, ports in busy.items() if ports}
        assert not busy, (f"ports already in use: {busy}; another federation run may be going on, "
                          "or set ATOLL_E2E_FED_NET to another 127.X")

    def start(self) -> "Federation":
        self.remove_stale_rules()
        self.check_ports()
        for node in self.nodes:
            node.spawn()

        def formed() -> bool:
            self.check_exits()
            return all(dc.cluster.agreement() for dc in self.dcs.values())

        wait_for(formed, timeout=FORM_TIMEOUT, interval=0.1,
                 message=lambda: "a leader every node of its datacenter names, in every datacenter\n" + self.logs())
        if self.wan:
            self.wait_wan()
        return self

    def check_exits(self) -> None:
        """Stop any wait at once (GiveUp) when a node exited that was not killed here."""
        for dc in self.dcs.values():
            try:
                dc.cluster.check_exits()
            except AssertionError as exc:
                raise GiveUp(str(exc)) from None

    def wan_view(self, server: Node) -> dict[str, int]:
        """Member name -> status in `server`'s WAN pool."""
        return {name: m["Status"] for name, m in wan_members(server).items()}

    def wan_complete(self, servers: Iterable[Node] | None = None) -> bool:
        """Every live server lists every server of every datacenter, alive."""
        self.check_exits()
        want = {name: ALIVE for name in self.wan_names()}
        for server in servers if servers is not None else self.servers:
            if not server.running():
                continue
            if self.wan_view(server) != want:
                return False
        return True

    def wait_wan(self, timeout: float = WAN_TIMEOUT) -> None:
        wait_for(self.wan_complete, timeout=timeout, interval=0.25,
                 message=lambda: "every server's WAN pool to list every server alive: "
                 + self._wan_summary() + "\n" + self.logs())

    def _wan_summary(self) -> str:
        views = []
        for server in self.servers:
            try:
                views.append(f"{server.name}: {self.wan_view(server)}")
            except Exception as exc:  # noqa: BLE001 - a summary for a failure message
                views.append(f"{server.name}: {exc!r}")
        return "; ".join(views)

    def restart(self, node: Node, drop_args: Iterable[str] = ()) -> None:
        """kill -9 `node` and start it again on its data dir, without the flags (and their values) named."""
        node.kill9()
        dropped = set(drop_args)
        kept: list[str] = []
        args = iter(node.extra_args)
        for arg in args:
            if arg in dropped:
                next(args, None)
                continue
            kept.append(arg)
        node.extra_args = kept
        # The ports were just released; retry a spawn that lost the race for them.
        deadline = time.monotonic() + 10.0
        while True:
            node.spawn()
            time.sleep(0.3)
            if node.running() or time.monotonic() >= deadline or "in use" not in node.output():
                break
        self.dc_of(node).cluster.wait_converged(timeout=FORM_TIMEOUT)

    def logs(self, tail: int = 15) -> str:
        return "\n".join(n.logs(tail=tail) for n in self.nodes if n.starts)

    def keep_logs(self, destination: Path) -> Path:
        """Copy every node's log files under `destination`; returns it."""
        destination.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            for log in node.workdir.glob("atoll-*.log"):
                shutil.copy2(log, destination / f"{node.name}-{log.name}")
        return destination

    def close(self) -> None:
        errors: list[BaseException] = []
        try:
            self.heal()
        except Exception as exc:  # noqa: BLE001 - stop the processes anyway
            errors.append(exc)
        for dc in self.dcs.values():
            try:
                dc.cluster.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- WAN cuts -----------------------------------------------------------
    def probe_ip(self, dc: str) -> str:
        """The test process's own address inside `dc`'s /24, which a cut does not drop."""
        return f"{self.dcs[dc].prefix}.{PROBE_HOST}"

    def _rule(self, *spec: str) -> None:
        iptables = require_tool("iptables", "/usr/sbin/iptables", "/sbin/iptables")
        rule = ["INPUT", "-i", "lo", *spec, "-m", "comment", "--comment", COMMENT, "-j", "DROP"]
        subprocess.run([iptables, "-w", "-I", *rule], check=True, capture_output=True, text=True, timeout=20)
        with self._lock:
            self._rules.append(rule)

    def cut(self, name: str) -> None:
        """Cut datacenter `name` off from the others (both directions); the test process still reaches all."""
        require(os.geteuid() == 0, "iptables rules need root")
        require_tool("iptables", "/usr/sbin/iptables", "/sbin/iptables")
        cut = f"{self.dcs[name].prefix}.0/24"
        for other in self.dcs.values():
            if other.name == name:
                continue
            net = f"{other.prefix}.0/24"
            self._rule("-s", net, "-d", cut)
            self._rule("-s", cut, "-d", net)
            # Connections from an unbound source leave from 127.0.0.1.
            self._rule("-s", "127.0.0.1", "-d", net, "-p", "tcp", "--dport", str(WAN_PORT))
        for proto, port in (("tcp", WAN_PORT), ("udp", WAN_PORT), ("tcp", HTTP_PORT), ("tcp", DNS_PORT),
                            ("udp", DNS_PORT)):
            self._rule("-s", "127.0.0.1", "-d", cut, "-p", proto, "--dport", str(port))

    @staticmethod
    def remove_stale_rules() -> list[str]:
        """Delete cut rules a run that died mid-cut left behind (their comment names a dead pid)."""
        iptables = shutil.which("iptables") or "/usr/sbin/iptables"
        if os.geteuid() != 0 or not os.access(iptables, os.X_OK):
            return []
        listed = subprocess.run([iptables, "-w", "-S", "INPUT"], capture_output=True, text=True, timeout=20)
        removed = []
        for line in listed.stdout.splitlines():
            words = line.split()
            if words[:2] != ["-A", "INPUT"] or "--comment" not in words:
                continue
            comment = words[words.index("--comment") + 1].strip('"')
            prefix, _, pid = comment.rpartition("-")
            if prefix != COMMENT.rpartition("-")[0] or not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            subprocess.run([iptables, "-w", "-D", *words[1:]], capture_output=True, text=True, timeout=20)
            removed.append(line)
        return removed

    def heal(self) -> None:
        """Delete exactly the rules `cut` added."""
        iptables = shutil.which("iptables") or "/usr/sbin/iptables"
        errors = []
        with self._lock:
            while self._rules:
                rule = self._rules.pop()
                proc = subprocess.run([iptables, "-w", "-D", *rule], capture_output=True, text=True, timeout=20)
                if proc.returncode != 0:
                    errors.append(f"{' '.join(rule)}: {proc.stderr.strip()}")
        if errors:
            raise RuntimeError("could not delete iptables rules: " + "; ".join(errors))


# ---------------------------------------------------------------------------
# DNS


def dns_query(ip: str, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 3.0,
              source: str | None = None) -> dns.message.Message:
    """Ask the DNS server of `ip` (port 8600), optionally from a chosen source address."""
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, ip, timeout=timeout, port=DNS_PORT, source=source)
    return dns.query.udp(q, ip, timeout=timeout, port=DNS_PORT, source=source)


def dig(ip: str, *args: str, source: str | None = None) -> str:
    exe = require_tool("dig")
    cmd = [exe, f"@{ip}", "-p", str(DNS_PORT), "+time=3", "+tries=1"]
    if source is not None:
        cmd += ["-b", source]
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=20)
    return proc.stdout


class Federated(Protocol):
    """What `running` needs of a federation: to copy its logs and to stop."""

    def keep_logs(self, destination: Path) -> Path: ...

    def close(self) -> None: ...


def keep_logs(federation: Federated, label: str, what: str) -> None:
    """Copy the federation's logs under ARTIFACTS/LABEL-WHAT-TIME, saying where."""
    try:
        kept = federation.keep_logs(ARTIFACTS / f"{label}-{what}-{time.strftime('%Y%m%dT%H%M%S')}")
        print(f"federation logs kept in {kept}")
    except OSError as exc:  # pragma: no cover - diagnostics only
        print(f"could not keep the federation logs: {exc}")


def running(federation: Federated, request, label: str, start: Callable[[], object],
            cleanup: Callable[[], None] | None = None) -> Iterator[Federated]:
    """The body of a module fixture: start the federation, yield it, close it.

    The logs are kept when the start fails or when a test of the module failed; `cleanup`
    runs after the close, whatever happened.
    """
    failed_before = request.session.testsfailed
    try:
        try:
            start()
        except BaseException:
            keep_logs(federation, label, "start")
            federation.close()
            raise
        yield federation
        try:
            if request.session.testsfailed > failed_before:
                keep_logs(federation, label, "tests")
        finally:
            federation.close()
    finally:
        if cleanup is not None:
            cleanup()
