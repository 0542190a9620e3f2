"""Multi-process atoll clusters on loopback addresses, shared by the end-to-end tests.

Every node is a real `atoll agent` process (a server, or a client node) with
its own loopback IP 127.A.B.x (A and B random per run) listening on the
default ports 8300 (Raft/RPC), 8500 (HTTP) and 8600 (DNS). The cluster tests
build clusters from these pieces (conftest.py's `new_cluster` fixture) to kill,
freeze and restart them; conftest.py also uses them to run the client tests
against a client node of a 3-server cluster (ATOLL_E2E_TARGET=cluster).

ATOLL_E2E_SEED replays the random choices (addresses, start orders).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

import dns.message
import dns.query
import dns.rdatatype
import requests

from conftest import ClientEndpoints, require_binary, wait_for

try:  # py-consul
    import consul
except ImportError:  # pragma: no cover - reported by require()
    consul = None

RPC_PORT = 8300
HTTP_PORT = 8500
DNS_PORT = 8600

HEARTBEAT_TTL = 2.0  # --heartbeat-ttl for the clusters here (seconds)
FORM_TIMEOUT = 30.0  # servers started -> one leader everybody agrees on
FAILOVER_LIMIT = 10.0  # leader killed -> a write succeeds again
STOP_TIMEOUT = 10.0

SEED = int(os.environ.get("ATOLL_E2E_SEED", time.time_ns() % 1_000_000))
RNG = random.Random(SEED)


# ---------------------------------------------------------------------------
# addresses


def _ports_free(ip: str) -> bool:
    """True when ip:8300/8500/8600 (TCP) and ip:8600 (UDP) can all be bound."""
    for port, kind in ((RPC_PORT, socket.SOCK_STREAM), (HTTP_PORT, socket.SOCK_STREAM),
                       (DNS_PORT, socket.SOCK_STREAM), (DNS_PORT, socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


class AddressPool:
    """Hands out loopback IPs 127.A.B.x whose atoll ports are free, never the same twice."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._new_block()

    def _new_block(self) -> None:
        self.a = self.rng.randint(10, 250)
        self.b = self.rng.randint(0, 255)
        self.next_host = 1

    def wrap(self, ip: str) -> list[str]:
        """The command prefix a node on `ip` is started with: none on loopback."""
        return []

    def take(self) -> str:
        for _ in range(1000):
            if self.next_host > 250:
                self._new_block()
            ip = f"127.{self.a}.{self.b}.{self.next_host}"
            self.next_host += 1
            if _ports_free(ip):
                return ip
        raise RuntimeError("no loopback address with free atoll ports")


_POOL: AddressPool | None = None


def session_pool() -> AddressPool:
    """The address pool of this test run: every cluster of the run takes its IPs from it."""
    global _POOL
    if _POOL is None:
        print(f"cluster seed: {SEED} (set ATOLL_E2E_SEED to replay)")
        _POOL = AddressPool(RNG)
    return _POOL


# ---------------------------------------------------------------------------
# one node


class Node:
    """One `atoll agent` process: a server or a client (compute) node."""

    def __init__(
        self,
        root: Path,
        name: str,
        ip: str,
        server: bool,
        join: Iterable[str],
        bootstrap_expect: int | None = None,
        datacenter: str = "dc1",
        heartbeat_ttl: float | None = HEARTBEAT_TTL,
        extra_args: Iterable[str] = (),
        wrap: Iterable[str] = (),
    ) -> None:
        self.binary = require_binary()
        # A command prefix, e.g. `ip netns exec NS` to run the node in a network namespace.
        self.wrap = list(wrap)
        self.name = name
        self.ip = ip
        self.server = server
        self.join = [j for j in join if j != ip]
        self.bootstrap_expect = bootstrap_expect
        self.datacenter = datacenter
        self.heartbeat_ttl = heartbeat_ttl
        self.extra_args = list(extra_args)
        self.workdir = root / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.stopped = False  # SIGSTOPped by us

    def __repr__(self) -> str:
        return f"<{'server' if self.server else 'client'} {self.name} {self.ip}>"

    # -- addresses --------------------------------------------------------
    @property
    def rpc_addr(self) -> str:
        return f"{self.ip}:{RPC_PORT}"

    @property
    def http_addr(self) -> str:
        return f"{self.ip}:{HTTP_PORT}"

    def url(self, path: str) -> str:
        return f"http://{self.http_addr}{path}"

    # -- lifecycle --------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [str(self.binary), "agent", "--data-dir", str(self.data_dir), "--bind", self.ip,
               "--node", self.name, "--datacenter", self.datacenter]
        if self.server:
            cmd += ["--server", "--bootstrap-expect", str(self.bootstrap_expect)]
        for address in self.join:
            cmd += ["--retry-join", address]
        if self.heartbeat_ttl is not None:
            cmd += ["--heartbeat-ttl", str(self.heartbeat_ttl)]
        return self.wrap + cmd + self.extra_args

    def spawn(self) -> "Node":
        assert not self.running(), f"{self} already running"
        self.starts += 1
        self.stopped = False
        env = dict(os.environ)
        env.setdefault("ATOLL_LOG", "info,openraft=warn")
        env.setdefault("NO_COLOR", "1")
        with open(self.log_path(), "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        self.stopped = False

    def freeze(self) -> None:
        assert self.running() and self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def thaw(self) -> None:
        if self.running() and self.stopped and self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        self.thaw()
        self.kill9()

    # -- diagnostics ------------------------------------------------------
    def log_path(self) -> Path:
        return self.workdir / f"atoll-{max(self.starts, 1)}.log"

    def output(self) -> str:
        path = self.log_path()
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, tail: int = 30) -> str:
        lines = self.output().splitlines()[-tail:]
        return f"--- {self.name} ({self.ip}) run {self.starts} ---\n" + "\n".join(lines)

    # -- HTTP -------------------------------------------------------------
    def get(self, path: str, timeout: float = 5.0, **kwargs) -> requests.Response:
        return requests.get(self.url(path), timeout=timeout, **kwargs)

    def put(self, path: str, timeout: float = 5.0, **kwargs) -> requests.Response:
        return requests.put(self.url(path), timeout=timeout, **kwargs)

    def delete(self, path: str, timeout: float = 5.0, **kwargs) -> requests.Response:
        return requests.delete(self.url(path), timeout=timeout, **kwargs)

    def post(self, path: str, timeout: float = 5.0, **kwargs) -> requests.Response:
        return requests.post(self.url(path), timeout=timeout, **kwargs)

    def get_json(self, path: str, timeout: float = 5.0):
        r = self.get(path, timeout=timeout)
        assert r.status_code == 200, f"{self.name}: GET {path} -> {r.status_code}: {r.text}"
        return r.json()

    def leader(self) -> str:
        """The leader's RPC address as this node sees it ('' when it knows none)."""
        r = self.get("/v1/status/leader", timeout=2.0)
        if r.status_code != 200:
            return ""
        value = r.json()
        return value if isinstance(value, str) else ""

    def peers(self) -> list[str]:
        return self.get_json("/v1/status/peers", timeout=2.0)

    def members(self) -> dict[str, dict]:
        return {m["Name"]: m for m in self.get_json("/v1/agent/members", timeout=2.0)}

    def kv_put(self, key: str, value: str, timeout: float = 5.0) -> requests.Response:
        return self.put(f"/v1/kv/{key}", data=value.encode(), timeout=timeout)

    def kv_get(self, key: str, mode: str = "", timeout: float = 5.0) -> str | None:
        """The raw value of key (None when absent); mode is '', 'stale' or 'consistent'."""
        query = "?raw" + (f"&{mode}" if mode else "")
        r = self.get(f"/v1/kv/{key}{query}", timeout=timeout)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"{self.name}: GET kv {key} {mode} -> {r.status_code}: {r.text}"
        return r.text

    def register(self, name: str, service_id: str, port: int) -> None:
        r = self.put("/v1/agent/service/register", json={"Name": name, "ID": service_id, "Port": port})
        assert r.status_code == 200, f"{self.name}: register {service_id} -> {r.status_code}: {r.text}"

    # -- DNS --------------------------------------------------------------
    def dns(self, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 2.0) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)
        if tcp:
            return dns.query.tcp(q, self.ip, timeout=timeout, port=DNS_PORT)
        return dns.query.udp(q, self.ip, timeout=timeout, port=DNS_PORT)

    def dns_a(self, name: str) -> list[str]:
        msg = self.dns(name, "A")
        return sorted(rd.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


# ---------------------------------------------------------------------------
# a cluster


class Cluster:
    """Servers (all voters from the start) and client nodes, each on its own loopback IP."""

    def __init__(self, root: Path, pool: AddressPool, label: str) -> None:
        self.root = root / label
        self.pool = pool
        self.label = label
        self.nodes: list[Node] = []

    # -- building ---------------------------------------------------------
    @property
    def servers(self) -> list[Node]:
        return [n for n in self.nodes if n.server]

    @property
    def clients(self) -> list[Node]:
        return [n for n in self.nodes if not n.server]

    def add_servers(self, count: int, expect: int | None = None, **kwargs) -> list[Node]:
        ips = [self.pool.take() for _ in range(count)]
        existing = [s.ip for s in self.servers]
        first = len(self.servers) + 1
        added = []
        for i, ip in enumerate(ips):
            node = Node(self.root, f"{self.label}-s{first + i}", ip, server=True, join=existing + ips,
                        bootstrap_expect=expect or count, wrap=self.pool.wrap(ip), **kwargs)
            self.nodes.append(node)
            added.append(node)
        return added

    def add_server(self, name: str, join: Iterable[str], expect: int, **kwargs) -> Node:
        ip = self.pool.take()
        node = Node(self.root, f"{self.label}-{name}", ip, server=True, join=join, bootstrap_expect=expect,
                    wrap=self.pool.wrap(ip), **kwargs)
        self.nodes.append(node)
        return node

    def add_client(self, name: str = "c1", **kwargs) -> Node:
        join = [s.ip for s in self.servers]
        ip = self.pool.take()
        node = Node(self.root, f"{self.label}-{name}", ip, server=False, join=join, wrap=self.pool.wrap(ip),
                    **kwargs)
        self.nodes.append(node)
        return node

    # -- running ----------------------------------------------------------
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.running() and not n.stopped]

    def live_servers(self) -> list[Node]:
        return [n for n in self.live() if n.server]

    def start(self, nodes: Iterable[Node] | None = None, timeout: float = FORM_TIMEOUT) -> list[Node]:
        """Spawn nodes (default: all) in random order, then wait until the cluster agrees."""
        order = list(self.nodes if nodes is None else nodes)
        RNG.shuffle(order)
        for node in order:
            node.spawn()
        self.wait_converged(timeout=timeout)
        return order

    def check_exits(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None and node.starts and node.proc.returncode != -9:
                raise AssertionError(f"{node} exited with {node.proc.returncode}\n{node.logs()}")

    def agreement(self, voters: int | None = None) -> str | None:
        """The leader every live node names, if they all name the same live voter."""
        self.check_exits()
        live = self.live()
        leaders = {n.name: n.leader() for n in live}
        values = set(leaders.values())
        if len(values) != 1 or "" in values:
            return None
        (leader,) = values
        live_servers = self.live_servers()
        if leader not in {s.rpc_addr for s in live_servers}:
            return None
        for s in live_servers:
            peers = s.peers()
            if leader not in peers:
                return None
            if voters is not None and len(peers) != voters:
                return None
        return leader

    def wait_converged(self, voters: int | None = None, timeout: float = FORM_TIMEOUT) -> Node:
        leader = wait_for(lambda: self.agreement(voters), timeout=timeout, interval=0.1,
                          message=lambda: f"{self.label}: every live node to agree on one leader\n" + self.logs())
        return self.by_rpc(leader)

    def by_rpc(self, rpc_addr: str) -> Node:
        for node in self.nodes:
            if node.server and node.rpc_addr == rpc_addr:
                return node
        raise AssertionError(f"no server at {rpc_addr}")

    def leader(self) -> Node:
        return self.wait_converged()

    def followers(self) -> list[Node]:
        leader = self.leader()
        return [s for s in self.live_servers() if s is not leader]

    def write_anywhere(self, key: str, value: str, nodes: Iterable[Node] | None = None,
                       timeout: float = FAILOVER_LIMIT) -> Node:
        """PUT key=value through the first of `nodes` that acknowledges it; returns that node."""
        targets = list(nodes) if nodes is not None else self.live_servers()

        def attempt():
            for node in targets:
                try:
                    r = node.kv_put(key, value, timeout=1.0)
                except requests.RequestException:
                    continue
                if r.status_code == 200 and r.json() is True:
                    return node
            return None

        return wait_for(attempt, timeout=timeout, interval=0.05,
                        message=lambda: f"a write of {key} through {[n.name for n in targets]}\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(n.logs(tail=15) for n in self.nodes if n.starts)

    def close(self) -> None:
        errors = []
        for node in self.nodes:
            try:
                node.close()
            except Exception as exc:  # noqa: BLE001 - stop the others first
                errors.append(exc)
        if errors:
            raise errors[0]


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(require_binary()), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def wait_kv(node: Node, key: str, value: str, mode: str = "stale", timeout: float = 15.0) -> None:
    wait_for(lambda: node.kv_get(key, mode=mode, timeout=2.0) == value, timeout=timeout, interval=0.1,
             message=lambda: f"{node.name} to read {key}={value!r} ({mode})\n{node.logs()}")


def listed_tasks(node: Node, app_id: str) -> list[dict]:
    """The tasks `node` lists for app_id under /v2/apps; [] while it does not answer 200."""
    response = node.get(f"/v2/apps{app_id}/tasks")
    if response.status_code != 200:
        return []
    return response.json()["tasks"]


def listening(ip: str, port: int) -> bool:
    """True when something accepts TCP connections on ip:port."""
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def assert_one_leader(cluster: Cluster, voters: int) -> Node:
    """Exactly one leader, everybody agrees, `voters` peers in every server's view."""
    leader = cluster.wait_converged(voters=voters)
    for server in cluster.live_servers():
        assert sorted(server.peers()) == sorted(s.rpc_addr for s in cluster.servers), server.name
        config = server.get_json("/v1/operator/raft/configuration")
        assert len(config["Servers"]) == voters, config
        flagged = [s for s in config["Servers"] if s["Leader"]]
        assert len(flagged) == 1, f"{server.name} reports leaders {flagged}"
        assert flagged[0]["Address"] == leader.rpc_addr and flagged[0]["Node"] == leader.name, config
        assert all(s["Voter"] for s in config["Servers"]), config
    return leader


# ---------------------------------------------------------------------------
# a client node as the target of the client tests (ATOLL_E2E_TARGET=cluster)


TARGET_SERVERS = 3
TARGET_LABEL = "e2e"
RESET_TIMEOUT = 20.0  # leftovers of the previous test -> the cluster's bare state


class ClusterTarget(ClientEndpoints):
    """One client node of a cluster, with the interface of conftest.Atoll.

    Every HTTP and DNS request a test makes through it goes to the client
    node. What depends on the whole cluster rather than on the node the test
    talks to (which nodes the catalog holds, which of them are servers) is
    in `node_names` and `server_names`.
    """

    def __init__(self, cluster: Cluster, agent_node: Node) -> None:
        self.cluster = cluster
        self.agent_node = agent_node
        self.node = agent_node.name
        self.datacenter = agent_node.datacenter
        self.node_address = agent_node.ip
        self.dns_host = agent_node.ip
        self.http_port = HTTP_PORT
        self.dns_port = DNS_PORT
        self._client = None

    def __repr__(self) -> str:
        return f"<cluster target {self.node} {self.node_address} of {[n.name for n in self.cluster.nodes]}>"

    # -- what the tests compare against ----------------------------------
    @property
    def node_names(self) -> list[str]:
        """Every node of the cluster, as the catalog must list them."""
        return sorted(n.name for n in self.cluster.nodes)

    @property
    def server_names(self) -> list[str]:
        return sorted(n.name for n in self.cluster.servers)

    # -- addresses --------------------------------------------------------
    @property
    def http_addr(self) -> str:
        return self.agent_node.http_addr

    # -- the process ------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.agent_node.proc is not None
        return self.agent_node.proc.pid

    def running(self) -> bool:
        return self.agent_node.running()

    def stdout(self) -> str:
        return self.agent_node.output()

    def stderr(self) -> str:
        return self.agent_node.output()

    def logs(self, tail: int = 40) -> str:
        return "\n".join(n.logs(tail=tail if n is self.agent_node else 10) for n in self.cluster.nodes if n.starts)

    def leader(self) -> str | None:
        return self.agent_node.leader() or None

    # -- the cluster's bare state -----------------------------------------
    def leftovers(self) -> list[tuple[str, str, dict]]:
        """What differs from a freshly formed cluster: (what, method + path, body) to remove it.

        Fresh means: no KV, no service or check registered with this agent, the
        catalog holding exactly the cluster's nodes, each with its serfHealth
        check (passing) and the servers with their `consul` service.
        """
        found: list[tuple[str, str, dict]] = []
        for sid in self.get_json("/v1/agent/services"):
            found.append((f"agent service {sid}", "PUT /v1/agent/service/deregister/" + quote(sid, safe=""), {}))
        for cid in self.get_json("/v1/agent/checks"):
            found.append((f"agent check {cid}", "PUT /v1/agent/check/deregister/" + quote(cid, safe=""), {}))
        expected = set(self.node_names)
        servers = set(self.server_names)
        listed = {n["Node"] for n in self.get_json("/v1/catalog/nodes")}
        for name in sorted(listed - expected):
            found.append((f"catalog node {name}", "PUT /v1/catalog/deregister", {"Node": name}))
        for name in sorted(expected - listed):
            found.append((f"node {name} missing from the catalog", "", {}))
        for name in sorted(listed & expected):
            entry = self.get_json(f"/v1/catalog/node/{quote(name, safe='')}")
            for sid in sorted((entry or {}).get("Services") or {}):
                if not (sid == "consul" and name in servers):
                    found.append((f"service {sid} of {name}", "PUT /v1/catalog/deregister",
                                  {"Node": name, "ServiceID": sid}))
            for check in self.get_json(f"/v1/health/node/{quote(name, safe='')}"):
                if check["CheckID"] != "serfHealth":
                    found.append((f"check {check['CheckID']} of {name}", "PUT /v1/catalog/deregister",
                                  {"Node": name, "CheckID": check["CheckID"]}))
                elif check["Status"] != "passing":
                    found.append((f"serfHealth of {name} is {check['Status']}", "", {}))
        if self.get("/v1/kv/?keys").status_code != 404:
            found.append(("KV entries", "DELETE /v1/kv/?recurse", {}))
        return found

    def reset(self, timeout: float = RESET_TIMEOUT) -> None:
        """Remove whatever earlier tests left behind, and wait for the bare state."""
        self.cluster.check_exits()

        def clean():
            found = self.leftovers()
            for _, request, body in found:
                if request:
                    method, path = request.split(" ", 1)
                    # A reaper or a concurrent leave may remove it first: 404 is fine.
                    requests.request(method, self.url(path), json=body or None, timeout=10)
            return not found

        wait_for(clean, timeout=timeout, interval=0.1,
                 message=lambda: f"the cluster's bare state; left over: {[w for w, _, _ in self.leftovers()]}\n"
                 + self.logs(tail=15))

    def wait_ready(self, timeout: float = FORM_TIMEOUT) -> None:
        """The node knows the leader and is in its own catalog, healthy."""

        def ready():
            self.cluster.check_exits()
            if not self.leader():
                return False
            checks = self.get_json(f"/v1/health/node/{quote(self.node, safe='')}")
            return any(c["CheckID"] == "serfHealth" and c["Status"] == "passing" for c in checks)

        wait_for(ready, timeout=timeout, interval=0.1, message=lambda: f"{self.node} ready\n" + self.logs(tail=15))


class TargetCluster:
    """The cluster the client tests run against: 3 servers and a client node.

    Started once per test run. `main` is its client node; `start_client` adds
    a client node with its own flags (joined to the same servers) for one test,
    and `start_private` builds a separate cluster for a test that needs a
    datacenter of its own.
    """

    def __init__(self, root: Path, pool: AddressPool) -> None:
        self.root = root
        self.pool = pool
        self.cluster = Cluster(root, pool, TARGET_LABEL)
        self.main: ClusterTarget | None = None
        self.extra: list[ClusterTarget] = []
        self.private: list[Cluster] = []
        self._count = 0

    def start(self) -> "TargetCluster":
        self.cluster.add_servers(TARGET_SERVERS, heartbeat_ttl=None)
        client = self.cluster.add_client("c1", heartbeat_ttl=None)
        self.cluster.start()
        self.main = ClusterTarget(self.cluster, client)
        self.main.wait_ready()
        self.main.reset()
        return self

    def _unique(self, name: str) -> str:
        self._count += 1
        return f"{TARGET_LABEL}-{name}-{self._count}"

    def start_client(self, name: str, node: str | None = None, extra_args: Iterable[str] = ()) -> ClusterTarget:
        """A further client node of the shared cluster, with its own agent flags."""
        agent = Node(self.cluster.root, node or self._unique(name), self.pool.take(), server=False,
                     join=[s.ip for s in self.cluster.servers], heartbeat_ttl=None, extra_args=extra_args)
        self.cluster.nodes.append(agent)
        agent.spawn()
        target = ClusterTarget(self.cluster, agent)
        self.extra.append(target)
        target.wait_ready()
        return target

    def start_private(self, name: str, datacenter: str, node: str | None = None,
                      extra_args: Iterable[str] = ()) -> ClusterTarget:
        """3 servers and a client node of their own, e.g. in another datacenter."""
        cluster = Cluster(self.root, self.pool, self._unique(name))
        self.private.append(cluster)
        cluster.add_servers(TARGET_SERVERS, datacenter=datacenter, heartbeat_ttl=None)
        agent = Node(cluster.root, node or f"{cluster.label}-c1", self.pool.take(), server=False,
                     join=[s.ip for s in cluster.servers], datacenter=datacenter, heartbeat_ttl=None,
                     extra_args=extra_args)
        cluster.nodes.append(agent)
        cluster.start()
        target = ClusterTarget(cluster, agent)
        target.wait_ready()
        return target

    def end_test(self) -> None:
        """Stop what one test added: its client nodes leave, its private clusters go."""
        errors: list[BaseException] = []
        for target in self.extra:
            try:
                self._leave(target)
            except Exception as exc:  # noqa: BLE001 - clean up the rest first
                errors.append(exc)
        self.extra.clear()
        for cluster in self.private:
            try:
                cluster.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        self.private.clear()
        if errors:
            raise errors[0]

    def _leave(self, target: ClusterTarget) -> None:
        agent = target.agent_node
        try:
            if agent.running():
                r = target.put("/v1/agent/leave")
                assert r.status_code == 200, f"{agent.name}: leave -> {r.status_code}: {r.text}"
                code = agent.wait_exit(STOP_TIMEOUT)
                assert code is not None, f"{agent.name} still running {STOP_TIMEOUT}s after leaving\n{agent.logs()}"
        finally:
            agent.close()
            self.cluster.nodes.remove(agent)
        # A graceful leave takes the node and its services out of the catalog.
        assert self.main is not None
        main = self.main
        wait_for(lambda: agent.name not in {n["Node"] for n in main.get_json("/v1/catalog/nodes")},
                 timeout=10, interval=0.1, message=f"{agent.name} to leave the catalog after its leave")

    def close(self) -> None:
        try:
            self.end_test()
        finally:
            self.cluster.close()
