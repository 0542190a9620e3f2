"""Helpers for the app (Marathon API) end-to-end tests: Docker, DNS, processes, the CLI.

Everything here talks only to loopback addresses and to the local Docker engine.
Cleanup helpers only touch what a test created: containers carrying the unique node
label or app id prefix of that test, and processes whose environment names an app of
that test.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import requests

from conftest import Atoll, require, require_tool, wait_for

IMAGES_DIR = Path(__file__).resolve().parent / "images"
BUILD_WEB_IMAGE = IMAGES_DIR / "build_web_image.sh"

WEB_IMAGE = "atoll-e2e-web"
WEB_MARKERS = {"v1": "atoll-e2e-web v1", "v2": "atoll-e2e-web v2"}

DNS_TIMEOUT = 1.0
HTTP_TIMEOUT = 1.0


def unique_prefix() -> str:
    """A short id, unique per test, used in app ids and node names (Marathon id syntax)."""
    return "e2e" + secrets.token_hex(4)


# ---------------------------------------------------------------------------
# the marathon client


def marathon_module():
    """The `marathon` package, importable on Python 3.10+ (it uses the old collections names)."""
    collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]
    collections.Mapping = collections.abc.Mapping  # type: ignore[attr-defined]
    collections.MutableMapping = collections.abc.MutableMapping  # type: ignore[attr-defined]
    try:
        import marathon  # noqa: PLC0415 - needs the aliases above first
    except ImportError:
        require(False, "python package marathon not installed")
    return marathon


def marathon_client(inst: Atoll):
    marathon = marathon_module()
    return marathon.MarathonClient(inst.base_url, timeout=10)


# ---------------------------------------------------------------------------
# Docker


def docker_exe() -> str | None:
    from shutil import which

    return which("docker")


def docker_answers() -> bool:
    exe = docker_exe()
    if not exe:
        return False
    try:
        proc = subprocess.run(
            [exe, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def require_docker() -> str:
    require(docker_answers(), "no Docker engine answers (docker version failed)")
    return docker_exe()  # type: ignore[return-value]


def docker(*args: str, check: bool = True, timeout: float = 60) -> str:
    exe = docker_exe()
    assert exe, "docker CLI missing"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()}"
    return proc.stdout


def build_web_images() -> dict[str, str]:
    """Builds atoll-e2e-web:v1 and :v2 (cached by the engine); returns {version: image}."""
    require_tool("busybox", "/bin/busybox")
    images = {}
    for version, marker in WEB_MARKERS.items():
        image = f"{WEB_IMAGE}:{version}"
        proc = subprocess.run(
            ["sh", str(BUILD_WEB_IMAGE), image, marker],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, f"building {image} failed:\n{proc.stdout}\n{proc.stderr}"
        images[version] = image
    return images


def containers(*filters: str, all_states: bool = True) -> list[str]:
    """Ids of containers matching every `docker ps --filter` given."""
    args = ["ps", "-q", "--no-trunc"]
    if all_states:
        args.append("-a")
    for f in filters:
        args += ["--filter", f]
    return [line for line in docker(*args).split() if line]


def container_of_task(task_id: str) -> list[str]:
    return containers(f"label=atoll.task_id={task_id}")


def inspect(container_id: str) -> dict:
    return json.loads(docker("inspect", container_id))[0]


class DockerJanitor:
    """Remembers containers a test caused and removes them (and stragglers) at the end."""

    def __init__(self, node: str, prefix: str) -> None:
        self.node = node
        self.prefix = prefix
        self.seen: set[str] = set()

    def track(self, ids: Iterable[str]) -> None:
        self.seen.update(ids)

    def snapshot(self) -> None:
        """Records every container atoll started for this test's node (never raises)."""
        if not docker_exe():
            return
        try:
            self.track(containers(f"label=atoll.node={self.node}"))
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            pass

    def ours(self) -> set[str]:
        found = set(self.seen)
        for filters in ((f"label=atoll.node={self.node}",), ("label=atoll.managed=true", f"name={self.prefix}")):
            try:
                found.update(containers(*filters))
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                pass
        return found

    def cleanup(self) -> list[str]:
        """Force-removes this test's containers; returns the ids removed."""
        if not docker_exe():
            return []
        ids = sorted(self.ours())
        removed = []
        for cid in ids:
            proc = subprocess.run(
                [docker_exe(), "rm", "-f", "-v", cid],  # type: ignore[list-item]
                capture_output=True,
                text=True,
                timeout=60,
            )
            if proc.returncode == 0:
                removed.append(cid)
        return removed


# ---------------------------------------------------------------------------
# processes started by the exec driver


def process_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.partition(b"=")
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def task_processes(app_prefix: str) -> dict[int, str]:
    """PIDs of live processes whose MARATHON_APP_ID starts with `app_prefix`, with their task id."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = process_environ(pid)
        app_id = env.get("MARATHON_APP_ID", "")
        if app_id.startswith(app_prefix) and _state(pid) not in ("Z", "X", None):
            found[pid] = env.get("MESOS_TASK_ID", "")
    return found


def task_process_groups(app_prefix: str, settle: float = 0.3) -> dict[str, set[int]]:
    """Lasting processes of the tasks whose app id starts with `app_prefix` (by their
    environment), by task id: those seen in two looks `settle` seconds apart. A web server
    forks a child per request (busybox httpd does), and a health check's request must not
    read as a new process of the task."""

    def look() -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for pid, task_id in task_processes(app_prefix).items():
            found.setdefault(task_id, set()).add(pid)
        return found

    first = look()
    time.sleep(settle)
    second = look()
    lasting = {task: pids & second.get(task, set()) for task, pids in first.items()}
    return {task: pids for task, pids in lasting.items() if pids}


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def kill_task_processes(app_prefix: str, timeout: float = 5.0) -> list[int]:
    """SIGKILLs processes left by this test's exec tasks (matched by MARATHON_APP_ID)."""
    killed = []
    for pid in task_processes(app_prefix):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while killed and time.monotonic() < deadline and any(_state(p) not in (None, "Z", "X") for p in killed):
        time.sleep(0.05)
    return killed


def _socket_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listening_pids(port: int) -> set[int]:
    """PIDs holding a socket listening on TCP `port` (any address), from /proc."""
    inodes = _socket_inodes(port)
    if not inodes:
        return set()
    wanted = {f"socket:[{i}]" for i in inodes}
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    pids.add(int(entry.name))
                    break
            except OSError:
                continue
    return pids


# ---------------------------------------------------------------------------
# DNS and HTTP


def srv(inst: Atoll, name: str) -> tuple[int, list[tuple[str, int]]]:
    """(rcode, sorted [(target, port)]) of an SRV query against the node's DNS."""
    q = dns.message.make_query(name, "SRV")
    msg = dns.query.udp(q, inst.dns_host, timeout=DNS_TIMEOUT, port=inst.dns_port)
    if msg.flags & dns.flags.TC:
        msg = dns.query.tcp(q, inst.dns_host, timeout=DNS_TIMEOUT, port=inst.dns_port)
    answers = []
    for rrset in msg.answer:
        if rrset.rdtype != dns.rdatatype.SRV:
            continue
        for rd in rrset:
            answers.append((rd.target.to_text(), rd.port))
    return msg.rcode(), sorted(answers, key=lambda a: a[1])


def srv_ports(inst: Atoll, name: str) -> list[int]:
    rcode, answers = srv(inst, name)
    if rcode == dns.rcode.NXDOMAIN:
        return []
    assert rcode == dns.rcode.NOERROR, f"SRV {name}: {dns.rcode.to_text(rcode)}"
    return sorted(port for _, port in answers)


def srv_rcode(inst: Atoll, name: str) -> int:
    return srv(inst, name)[0]


def fetch(port: int, path: str = "/", timeout: float = HTTP_TIMEOUT, host: str = "127.0.0.1") -> str | None:
    """Body of http://host:port/path, or None when it does not answer 200."""
    try:
        r = requests.get(f"http://{host}:{port}{path}", timeout=timeout, headers={"Connection": "close"})
    except requests.RequestException:
        return None
    return r.text if r.status_code == 200 else None


def wait_srv(inst: Atoll, name: str, count: int, marker: str | None = None, timeout: float = 20.0) -> list[int]:
    """Waits until SRV `name` lists `count` distinct ports that all answer HTTP (with `marker`)."""

    def probe():
        ports = srv_ports(inst, name)
        if len(ports) != count or len(set(ports)) != count:
            return None
        for port in ports:
            body = fetch(port)
            if body is None or (marker is not None and marker not in body):
                return None
        return ports

    return wait_for(
        probe,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"SRV {name} to list {count} serving ports (now {srv_ports(inst, name)})",
    )


# ---------------------------------------------------------------------------
# Marathon API over plain HTTP


def exec_site_definition(app_id: str, busybox: str, www: Path, page: str, instances: int = 2,
                         bind: str = "127.0.0.1") -> dict:
    """An exec app serving `page` from `www` with busybox httpd on its one dynamic port, HTTP-checked.

    `bind` is the address it listens on ("$HOST": the node's address, where a cluster's checks probe).
    """
    www.mkdir()
    (www / "index.html").write_text(page)
    return {
        "id": app_id,
        "cmd": f"exec {busybox} httpd -f -p {bind}:$PORT0 -h {www}",
        "instances": instances,
        "cpus": 0.1,
        "mem": 16,
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
        "healthChecks": [
            {
                "protocol": "HTTP",
                "path": "/",
                "portIndex": 0,
                "gracePeriodSeconds": 5,
                "intervalSeconds": 1,
                "timeoutSeconds": 1,
                "maxConsecutiveFailures": 3,
            }
        ],
    }


def app_json(inst: Atoll, app_id: str) -> dict | None:
    r = inst.get(f"/v2/apps{app_id}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, f"GET /v2/apps{app_id} -> {r.status_code}: {r.text}"
    return r.json()["app"]


def app_tasks(inst: Atoll, app_id: str) -> list[dict]:
    r = inst.get(f"/v2/apps{app_id}/tasks")
    assert r.status_code == 200, f"GET /v2/apps{app_id}/tasks -> {r.status_code}: {r.text}"
    return r.json()["tasks"]


def task_ids(tasks) -> set[str]:
    return {t["id"] for t in tasks}


def healthy(task: dict) -> bool:
    results = task.get("healthCheckResults") or []
    return task.get("state") == "TASK_RUNNING" and bool(results) and all(r.get("alive") for r in results)


def wait_running(inst: Atoll, app_id: str, count: int, want_healthy: bool = True, timeout: float = 30.0, version: str | None = None) -> list[dict]:
    """Waits until exactly `count` tasks run (healthy if asked, of `version` if given)."""

    def probe():
        tasks = app_tasks(inst, app_id)
        ok = [t for t in tasks if t.get("state") == "TASK_RUNNING" and (healthy(t) or not want_healthy)]
        if version is not None:
            ok = [t for t in ok if t.get("version") == version]
        return ok if len(ok) == count and len(tasks) == count else None

    return wait_for(
        probe,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"{count} {'healthy ' if want_healthy else ''}tasks of {app_id}: now {_task_summary(inst, app_id)}",
    )


def _task_summary(inst: Atoll, app_id: str) -> Any:
    try:
        app = app_json(inst, app_id)
        if app is None:
            return "app missing"
        return {
            "tasks": [(t.get("id"), t.get("state"), t.get("ports"), t.get("healthCheckResults")) for t in app.get("tasks", [])],
            "lastTaskFailure": app.get("lastTaskFailure"),
            "deployments": app.get("deployments"),
        }
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return repr(exc)


def wait_for_failure_of(inst: Atoll, app_id: str, task_id: str, timeout: float = 15.0) -> dict:
    """Waits until the app's lastTaskFailure is the death of `task_id`; returns it."""

    def probe():
        failure = (app_json(inst, app_id) or {}).get("lastTaskFailure") or {}
        return failure if failure.get("taskId") == task_id else None

    failure = wait_for(
        probe,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"lastTaskFailure of {app_id} to name {task_id} (now {(app_json(inst, app_id) or {}).get('lastTaskFailure')})",
    )
    assert failure.get("state") in ("TASK_FAILED", "TASK_KILLED", "TASK_LOST"), failure
    return failure


def no_deployments(inst: Atoll, app_id: str) -> bool:
    r = inst.get("/v2/deployments")
    assert r.status_code == 200, r.text
    return not any(app_id in d.get("affectedApps", []) for d in r.json())


def destroy_app(inst: Atoll, app_id: str, timeout: float = 30.0) -> None:
    r = inst.delete(f"/v2/apps{app_id}", params={"force": "true"})
    assert r.status_code in (200, 202, 404), f"DELETE /v2/apps{app_id} -> {r.status_code}: {r.text}"
    wait_for(lambda: app_json(inst, app_id) is None, timeout=timeout, interval=0.2, message=f"{app_id} to be gone")


def best_effort_remove_apps(inst: Atoll, timeout: float = 15.0) -> None:
    """Deletes every app (force) and waits, bounded, for their tasks to go. Never raises."""
    if not inst.running():
        return
    try:
        apps = inst.get("/v2/apps", timeout=3).json().get("apps", [])
        for app in apps:
            inst.delete(f"/v2/apps{app['id']}", params={"force": "true"}, timeout=3)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not inst.get("/v2/tasks", timeout=3).json().get("tasks"):
                return
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - cleanup continues with the janitors
        return


@contextlib.contextmanager
def prefixed_node(atoll_factory, name: str):
    """A running atoll on a node named after a fresh app prefix: yields (inst, prefix); at the
    end removes the apps, stops atoll and kills whatever processes of the prefix are left."""
    prefix = unique_prefix()
    inst = atoll_factory.start(name, node=f"{prefix}-node")
    try:
        r = inst.get("/v2/info")
        require(r.status_code == 200, f"this atoll has no Marathon API (GET /v2/info -> {r.status_code})")
        yield inst, prefix
    finally:
        best_effort_remove_apps(inst)
        try:
            inst.close()
        finally:
            kill_task_processes(f"/{prefix}/")


# ---------------------------------------------------------------------------
# the CLI


def cli(inst: Atoll, *args: str, timeout: float = 120, json_output: bool = False) -> subprocess.CompletedProcess:
    cmd = [str(inst.binary), "app", *args, "--http-addr", inst.http_addr]
    if json_output:
        cmd.append("--json")
    env = dict(os.environ)
    env.pop("ATOLL_HTTP_ADDR", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
