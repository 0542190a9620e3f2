"""Shared fixtures for the end-to-end suite.

Every test here talks to a real `atoll dev` process bound to free loopback
ports. Nothing is mocked: the binary is started, polled until it reports a
leader, exercised over HTTP and DNS, and stopped by PID.

The binary is taken from $ATOLL_BIN, or `target/release/atoll` under the
repository root. When it (or another prerequisite) is missing the test is
skipped locally, but fails under CI=true, so CI can never go green by
skipping.

ATOLL_E2E_TARGET picks what the `atoll` and `atoll_factory` fixtures stand
for:
* `dev` (the default): one `atoll dev` process per test;
* `cluster`: a client node of a cluster of 3 servers and that client
  (cluster_util.TargetCluster), started once per run. Every HTTP and DNS
  request of the test goes to the client node; before each test whatever an
  earlier one registered or wrote is removed. Only modules marked
  `client_api` run this way; a test in them that is single-node by nature is
  marked `dev_only(reason)` and skipped with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import requests

try:  # py-consul
    import consul
except ImportError:  # pragma: no cover - reported by the fixtures
    consul = None

pytest.register_assert_rewrite("apps_util", "cluster_util")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "release" / "atoll"

# How long the process may take to report a leader after it was spawned.
READY_TIMEOUT = 20.0
# How long SIGTERM/SIGINT may take before we escalate to SIGKILL.
STOP_TIMEOUT = 10.0


TARGETS = ("dev", "cluster")


def e2e_target() -> str:
    """What the client tests run against: `dev` or `cluster` (ATOLL_E2E_TARGET)."""
    target = os.environ.get("ATOLL_E2E_TARGET", "").strip().lower() or "dev"
    if target not in TARGETS:
        raise pytest.UsageError(f"ATOLL_E2E_TARGET={target!r}: expected one of {', '.join(TARGETS)}")
    return target


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, except under CI where it fails."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"missing prerequisite (CI must not skip): {reason}", pytrace=False)
    pytest.skip(reason)


def atoll_bin() -> Path:
    return Path(os.environ.get("ATOLL_BIN", str(DEFAULT_BIN)))


def require_binary() -> Path:
    path = atoll_bin()
    require(path.is_file() and os.access(path, os.X_OK), f"atoll binary not found at {path} (run cargo build --release)")
    return path


def require_tool(name: str, *fallbacks: str) -> str:
    """Return the path of an external command, or skip/fail if absent."""
    found = shutil.which(name)
    if not found:
        for candidate in fallbacks:
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    require(found is not None, f"command {name!r} not installed")
    return found  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# polling helpers


class GiveUp(Exception):
    """Raised by a wait_for predicate to stop waiting at once."""


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll `predicate` until it returns something truthy, or fail at the deadline.

    Exceptions raised by the predicate count as "not yet" and the last one is
    reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
            last_exc = None
        except GiveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f"; last error: {last_exc!r}" if last_exc else f"; last value: {last_value!r}"
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {text}{detail}")
        time.sleep(interval)


def stays(
    predicate: Callable[[], Any],
    duration: float,
    message: str | Callable[[], str] = "condition",
    interval: float = 0.2,
) -> None:
    """Assert that `predicate` holds at every look for `duration` seconds.

    The opposite of wait_for: for what must not happen (or must not change)
    over a period. The first look is at once, the last one when `duration`
    has passed, so it is at least as strict as sleeping for `duration` and
    then asserting. An exception raised by the predicate is a failure.
    """
    deadline = time.monotonic() + duration
    while True:
        if not predicate():
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (within {duration:.1f}s)")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(interval, remaining))


# ---------------------------------------------------------------------------
# ports


def _tcp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(udp_too: bool = False, exclude: Iterable[int] = ()) -> int:
    """A loopback port the kernel just handed out (and, optionally, free for UDP too)."""
    excluded = set(exclude)
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in excluded:
            continue
        if udp_too and not _udp_free(port):
            continue
        if not _tcp_free(port):
            continue
        return port
    raise RuntimeError("could not find a free loopback port")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Ends a helper process a test started (a DNS upstream, prometheus): SIGTERM, then
    SIGKILL if it has not exited within `timeout` seconds; reaps it either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------
# the process wrapper


class AtollError(RuntimeError):
    pass


class ClientEndpoints:
    """What a test uses to talk to the node under test: its HTTP API, py-consul and DNS.

    Subclasses set `http_addr`, `http_port`, `node_address`, `dns_host`, `dns_port` and
    `_client` (None).
    """

    http_addr: str
    http_port: int
    node_address: str
    dns_host: str
    dns_port: int
    _client: Any

    @property
    def dns_addr(self) -> str:
        return f"{self.dns_host}:{self.dns_port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.http_addr}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def consul(self):
        if consul is None:
            require(False, "python package py-consul not installed")
        if self._client is None:
            self._client = consul.Consul(host=self.node_address, port=self.http_port, connections_timeout=30)
        return self._client

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return requests.get(self.url(path), **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return requests.put(self.url(path), **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return requests.post(self.url(path), **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return requests.delete(self.url(path), **kwargs)

    def get_json(self, path: str, **kwargs) -> Any:
        r = self.get(path, **kwargs)
        assert r.status_code == 200, f"GET {path} -> {r.status_code}: {r.text}"
        return r.json()

    def register_service(self, body: dict) -> None:
        r = self.put("/v1/agent/service/register", json=body)
        assert r.status_code == 200, f"register {body} -> {r.status_code}: {r.text}"


class Atoll(ClientEndpoints):
    """One `atoll dev` process (restartable with the same data dir and ports)."""

    def __init__(
        self,
        workdir: Path,
        data_dir: Path | None,
        node: str = "e2e-node",
        datacenter: str = "dc1",
        extra_args: Iterable[str] = (),
        http_port: int | None = None,
        dns_port: int | None = None,
    ) -> None:
        self.binary = require_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.node = node
        self.datacenter = datacenter
        self.extra_args = list(extra_args)
        self.http_port = http_port or free_port()
        self.dns_port = dns_port or free_port(udp_too=True, exclude=[self.http_port])
        self.dns_host = "127.0.0.1"
        # The address the node advertises (its catalog entry, DNS answers).
        self.node_address = "127.0.0.1"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._client = None
        self._stdout_path: Path | None = None
        self._stderr_path: Path | None = None

    # -- what the tests compare against ----------------------------------
    @property
    def node_names(self) -> list[str]:
        """Every node the catalog must list: a dev agent is alone."""
        return [self.node]

    @property
    def server_names(self) -> list[str]:
        return [self.node]

    # -- addresses --------------------------------------------------------
    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- lifecycle --------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "dev",
            "--http-addr",
            self.http_addr,
            "--dns-addr",
            self.dns_addr,
            "--node",
            self.node,
            "--datacenter",
            self.datacenter,
        ]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        # Dev nodes share 127.0.0.1: without a port of their own they would all gossip on
        # 8302, so WAN gossip is off unless the test asks for it (a later --serf-wan-port in
        # extra_args wins).
        cmd += ["--serf-wan-port", "0"]
        return cmd + self.extra_args

    def spawn(self) -> subprocess.Popen:
        """Start the process without waiting for readiness."""
        if self.proc is not None and self.proc.poll() is None:
            raise AtollError("already running")
        self.starts += 1
        self._stdout_path = self.workdir / f"atoll-{self.starts}.stdout"
        self._stderr_path = self.workdir / f"atoll-{self.starts}.stderr"
        env = dict(os.environ)
        env.setdefault("ATOLL_LOG", "warn")
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
            )
        return self.proc

    def start(self, timeout: float = READY_TIMEOUT) -> "Atoll":
        self.spawn()
        self.wait_ready(timeout)
        return self

    def leader(self) -> str | None:
        r = requests.get(self.url("/v1/status/leader"), timeout=2)
        if r.status_code != 200:
            return None
        value = r.json()
        return value if isinstance(value, str) and value else None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise AtollError(
                    f"atoll exited with {self.proc.returncode if self.proc else None} before becoming ready\n"
                    + self.logs()
                )
            try:
                if self.leader():
                    return
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.05)
        raise AtollError(f"atoll not ready after {timeout}s (last error {last!r})\n" + self.logs())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Ask the process to exit; SIGKILL it after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            code = self.wait_exit(timeout)
            if code is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
                raise AtollError(f"atoll ignored signal {sig} for {timeout}s and was killed\n" + self.logs())
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)

    def restart(self, kill: bool = False, timeout: float = READY_TIMEOUT) -> "Atoll":
        """Stop (SIGTERM, or SIGKILL when kill=True) and start again on the same ports and data dir."""
        if kill:
            self.kill9()
        else:
            self.stop()
        # The ports were just released; the kernel may need a moment before a
        # fresh bind succeeds, so retry the start until the deadline.
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except AtollError:
                if time.monotonic() >= deadline or "in use" not in self.stderr():
                    raise
                time.sleep(0.1)

    # -- diagnostics ------------------------------------------------------
    def stdout(self) -> str:
        return self._stdout_path.read_text(errors="replace") if self._stdout_path and self._stdout_path.exists() else ""

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace") if self._stderr_path and self._stderr_path.exists() else ""

    def logs(self, tail: int = 40) -> str:
        err = "\n".join(self.stderr().splitlines()[-tail:])
        out = "\n".join(self.stdout().splitlines()[-tail:])
        return f"--- atoll stdout ---\n{out}\n--- atoll stderr ---\n{err}"

    def reported_data_dir(self) -> Path | None:
        """The data dir the binary printed on stdout, if it prints one."""
        match = re.search(r"data dir:\s*(\S+)", self.stdout())
        return Path(match.group(1)) if match else None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.proc is not None and self.proc.poll() is None:  # pragma: no cover - defensive
                self.kill9()


class AtollFactory:
    """Starts any number of atoll processes and guarantees they are stopped."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.instances: list[Atoll] = []

    def create(self, name: str = "a", temp_data_dir: bool = False, **kwargs) -> Atoll:
        workdir = self.tmp_path / f"run-{name}"
        data_dir = None if temp_data_dir else kwargs.pop("data_dir", self.tmp_path / f"data-{name}")
        inst = Atoll(workdir=workdir, data_dir=data_dir, **kwargs)
        self.instances.append(inst)
        return inst

    def start(self, name: str = "a", temp_data_dir: bool = False, **kwargs) -> Atoll:
        inst = self.create(name, temp_data_dir=temp_data_dir, **kwargs)
        # A port picked as free may be taken by someone else before atoll binds
        # it; retry with fresh ports in that (rare) case.
        for attempt in range(3):
            try:
                return inst.start()
            except AtollError:
                if attempt == 2 or "in use" not in inst.stderr():
                    raise
                inst.http_port = free_port()
                inst.dns_port = free_port(udp_too=True, exclude=[inst.http_port])
        raise AssertionError("unreachable")

    def close(self) -> None:
        errors = []
        for inst in self.instances:
            try:
                inst.close()
            except Exception as exc:  # noqa: BLE001 - report after cleaning up the rest
                errors.append(exc)
        if errors:
            raise errors[0]


class ClusterFactory:
    """atoll_factory of the cluster target: client nodes instead of `atoll dev` processes.

    start("main") is the shared client node. A start with agent flags
    (extra_args) or its own node name adds a client node with them to the
    shared cluster for this test; one in another datacenter gets a cluster of
    its own. What only an `atoll dev` process has (a data dir of its own,
    chosen ports, restarts) is not offered: such tests are dev_only.
    """

    def __init__(self, target) -> None:
        self.target = target

    def create(self, name: str = "a", **kwargs):
        pytest.fail(f"atoll_factory.create({name!r}) needs an `atoll dev` process: mark the test dev_only",
                    pytrace=False)

    def start(self, name: str = "a", temp_data_dir: bool = False, node: str | None = None,
              datacenter: str | None = None, extra_args: Iterable[str] = (), **kwargs):
        if kwargs:
            pytest.fail(f"the cluster target cannot honour {sorted(kwargs)}: mark the test dev_only", pytrace=False)
        main = self.target.main
        extra_args = list(extra_args)
        if datacenter is not None and datacenter != main.datacenter:
            return self.target.start_private(name, datacenter, node=node, extra_args=extra_args)
        if name == "main" and node is None and not extra_args:
            return main
        return self.target.start_client(name, node=node, extra_args=extra_args)

    def close(self) -> None:
        self.target.end_test()


@pytest.fixture(scope="session")
def target_cluster(tmp_path_factory):
    """The cluster of the `cluster` target, started on first use and stopped at the end of the run."""
    require_binary()
    from cluster_util import TargetCluster, session_pool

    target = TargetCluster(tmp_path_factory.mktemp("target-cluster"), session_pool())
    try:
        target.start()
        yield target
    finally:
        target.close()


@pytest.fixture
def atoll_factory(request, tmp_path):
    require_binary()
    if e2e_target() == "cluster":
        target = request.getfixturevalue("target_cluster")
        target.main.reset()
        factory: AtollFactory | ClusterFactory = ClusterFactory(target)
    else:
        factory = AtollFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def atoll(atoll_factory) -> Atoll:
    """A running atoll with a fresh data dir under tmp_path (or the cluster target's client node, reset)."""
    return atoll_factory.start("main")


# ---------------------------------------------------------------------------
# private multi-process clusters (cluster_util), for the tests that kill, freeze and restart nodes


@pytest.fixture(scope="module")
def pool():
    """The run's loopback address pool (cluster_util.session_pool); needs the binary."""
    require_binary()
    from cluster_util import session_pool

    return session_pool()


@pytest.fixture
def new_cluster(tmp_path, pool):
    """Factory for a private cluster: new_cluster(label); every node is killed at the end of the test."""
    from cluster_util import Cluster

    made: list[Cluster] = []

    def make(label: str) -> Cluster:
        cluster = Cluster(tmp_path, pool, label)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


# ---------------------------------------------------------------------------
# targets and markers


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "client_api: tests of what a Consul client sees; they also run against a client node of a "
        "cluster (ATOLL_E2E_TARGET=cluster)",
    )
    config.addinivalue_line(
        "markers",
        "dev_only(reason): a test of a client_api module that only makes sense against one `atoll dev` "
        "process; skipped, with the reason, against a cluster",
    )


def pytest_report_header(config):
    target = e2e_target()
    if target == "cluster":
        return "atoll target: cluster (client node of 3 servers + 1 client; client_api modules only)"
    return "atoll target: dev (one `atoll dev` process per test)"


def pytest_collection_modifyitems(config, items):
    if e2e_target() != "cluster":
        return
    for item in items:
        if not {"atoll", "atoll_factory"} & set(getattr(item, "fixturenames", ())):
            continue
        dev_only = item.get_closest_marker("dev_only")
        if dev_only is not None:
            reason = dev_only.kwargs.get("reason") or (dev_only.args[0] if dev_only.args else "")
            if not reason:
                raise pytest.UsageError(f"{item.nodeid}: dev_only needs a reason")
            item.add_marker(pytest.mark.skip(reason=f"single-node only: {reason}"))
        elif item.get_closest_marker("client_api") is None:
            item.add_marker(pytest.mark.skip(reason="not a client_api module: runs against `atoll dev` only"))


# ---------------------------------------------------------------------------
# misc helpers shared by several test modules


def catalog_service_ids(inst: Atoll, name: str) -> set[str]:
    return {e["ServiceID"] for e in inst.get_json(f"/v1/catalog/service/{name}")}


def health_status(inst: Atoll, check_id: str) -> str | None:
    checks = inst.get_json("/v1/agent/checks")
    check = checks.get(check_id)
    return check["Status"] if check else None


def wait_check_status(inst: Atoll, check_id: str, status: str, timeout: float = 10.0) -> dict:
    """Wait until the check reports `status` in /v1/agent/checks; returns the check."""

    def probe():
        check = inst.get_json("/v1/agent/checks").get(check_id)
        return check if check and check["Status"] == status else None

    return wait_for(
        probe,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"check {check_id} to become {status} (now {inst.get_json('/v1/agent/checks').get(check_id)})",
    )
