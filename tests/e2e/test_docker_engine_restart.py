"""Docker tasks survive a restart of the Docker Engine: re-adopted, never duplicated.

The test runs its own `dockerd` (own data root, exec root, pid file and socket, a
bridge of its own, no iptables rules, `--live-restore` so containers outlive the daemon as they do
on a production host configured for engine upgrades) and never touches the machine's
engine. `atoll dev` reaches it through DOCKER_HOST. An app of two containers runs; the
engine is stopped with SIGTERM and started again. A Marathon user then expects the app to
have its two instances running exactly once: the same tasks, in the same containers,
still in DNS, and still watched (a container killed afterwards is noticed and replaced).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from apps_util import (
    BUILD_WEB_IMAGE,
    app_tasks,
    best_effort_remove_apps,
    destroy_app,
    fetch,
    healthy,
    srv_ports,
    unique_prefix,
    wait_running,
)
from conftest import require, require_tool, stays, wait_for

ENGINE_START_TIMEOUT = 60.0
ENGINE_STOP_TIMEOUT = 30.0
IMAGE = "atoll-e2e-web:restart"
MARKER = "atoll-e2e-web engine restart"


class PrivateEngine:
    """A `dockerd` of this test alone, on a unix socket under a fresh directory."""

    def __init__(self, dockerd: str, docker: str) -> None:
        self.dockerd = dockerd
        self.docker_cli = docker
        # Short paths: the engine's containerd socket lives under the exec root and a
        # unix socket path is limited to 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="atoll-e2e-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # An empty configuration file, so the machine's /etc/docker/daemon.json (its data
        # root, storage driver) does not apply to this engine.
        (self.root / "daemon.json").write_text("{}\n")
        # A bridge of this engine's own. Never `--bridge none`: an engine started with
        # the bridge disabled deletes the host's default bridge (docker0), breaking the
        # machine's own engine.
        self.bridge = f"atlbr{os.getpid() % 100000}"
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True, capture_output=True,
                       timeout=30)
        subprocess.run(["ip", "addr", "add", f"10.213.{os.getpid() % 250}.1/24", "dev", self.bridge],
                       check=True, capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True, timeout=30)

    def command(self) -> list[str]:
        return [
            self.dockerd,
            "--config-file", str(self.root / "daemon.json"),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "docker.pid"),
            "--host", self.host,
            "--bridge", self.bridge,
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--storage-driver", "vfs",
            "--live-restore",
        ]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "engine already running"
        self.starts += 1
        with open(self.root / f"dockerd-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.answers, timeout=ENGINE_START_TIMEOUT, interval=0.2,
                 message=lambda: f"the private dockerd to answer\n{self.log_tail()}")

    def answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the private dockerd exited\n{self.log_tail()}")
        proc = subprocess.run([self.docker_cli, "--host", self.host, "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=15)
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def stop(self, timeout: float = ENGINE_STOP_TIMEOUT) -> None:
        """SIGTERM to the engine's pid, then wait for it to exit (SIGKILL after `timeout`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AssertionError(f"the private dockerd ignored SIGTERM for {timeout:.0f}s\n{self.log_tail()}")

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run([self.docker_cli, "--host", self.host, *args], capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()}"
        return proc.stdout

    def containers(self, *filters: str) -> list[str]:
        args = ["ps", "-a", "-q", "--no-trunc"]
        for f in filters:
            args += ["--filter", f]
        return self.docker(*args).split()

    def inspect(self, container_id: str) -> dict:
        return json.loads(self.docker("inspect", container_id))[0]

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / f"dockerd-{max(self.starts, 1)}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Removes every container of this engine, stops it, and removes its directory."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                for cid in self.containers():
                    self.docker("rm", "-f", "-v", cid, check=False)
        finally:
            try:
                self.stop()
            finally:
                # The engine mounts its data root on itself and its network namespace
                # under the exec root; a killed engine may leave them behind.
                mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                          if line.split()[1].startswith(str(self.root) + "/")]
                for mount in sorted(mounts, key=len, reverse=True):
                    subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
                shutil.rmtree(self.root, ignore_errors=True)
                subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)


@pytest.fixture
def engine():
    dockerd = require_tool("dockerd", "/usr/sbin/dockerd")
    docker = require_tool("docker", "/usr/bin/docker")
    require_tool("busybox", "/bin/busybox")
    require(os.geteuid() == 0, "running a private dockerd needs root")
    private = PrivateEngine(dockerd, docker)
    try:
        private.start()
        env = dict(os.environ, DOCKER_HOST=private.host)
        built = subprocess.run(["sh", str(BUILD_WEB_IMAGE), IMAGE, MARKER], capture_output=True, text=True,
                               timeout=180, env=env)
        assert built.returncode == 0, f"building {IMAGE} failed:\n{built.stdout}\n{built.stderr}"
        yield private
    finally:
        private.close()


def definition(app_id: str) -> dict:
    """Two containers on the host's network, each serving the image's page on its own port."""
    return {
        "id": app_id,
        "cmd": "exec /bin/busybox httpd -f -p 127.0.0.1:$PORT0 -h /www",
        "instances": 2,
        "cpus": 0.1,
        "mem": 16,
        "container": {"type": "DOCKER", "docker": {"image": IMAGE, "network": "HOST"}},
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http"}],
        "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 5,
                          "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 3}],
    }


def ports_serving(inst, name: str, count: int) -> list[int] | None:
    ports = srv_ports(inst, name)
    if len(set(ports)) != count or not all(MARKER in (fetch(p) or "") for p in ports):
        return None
    return ports


def test_docker_tasks_are_readopted_once_after_an_engine_restart(engine, atoll_factory, monkeypatch):
    prefix = unique_prefix()
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    inst = atoll_factory.start("engine", node=f"{prefix}-node")
    try:
        r = inst.get("/v2/info")
        require(r.status_code == 200, f"this atoll has no Marathon API (GET /v2/info -> {r.status_code})")
        app_id = f"/{prefix}/web"
        srv_name = f"web-{prefix}.service.consul"
        r = requests.post(inst.url("/v2/apps"), json=definition(app_id), timeout=10)
        assert r.status_code == 201, f"POST /v2/apps -> {r.status_code}: {r.text}"
        tasks = wait_running(inst, app_id, 2, timeout=60)
        ports = wait_for(lambda: ports_serving(inst, srv_name, 2), timeout=20, interval=0.1,
                         message=lambda: f"SRV {srv_name} to list 2 serving ports (now {srv_ports(inst, srv_name)})")
        assert ports == sorted(t["ports"][0] for t in tasks)
        task_ids = {t["id"] for t in tasks}
        before = {t: engine.containers(f"label=atoll.task_id={t}") for t in task_ids}
        assert all(len(ids) == 1 for ids in before.values()), before
        started_at = {t: engine.inspect(ids[0])["State"]["StartedAt"] for t, ids in before.items()}
        all_before = set(engine.containers())

        engine.stop()
        # With --live-restore the containers outlive their engine.
        assert all(MARKER in (fetch(p) or "") for p in ports), "the containers should serve while the engine is down"
        engine.start()

        def same_tasks_running():
            now = app_tasks(inst, app_id)
            running = {t["id"] for t in now if t["state"] == "TASK_RUNNING" and healthy(t)}
            return len(now) == 2 and running == task_ids

        wait_for(same_tasks_running, timeout=30, interval=0.2,
                 message=lambda: f"the same two tasks running: {app_tasks(inst, app_id)}")

        # Nothing restarted, nothing duplicated: the same containers, started once, and no other.
        # Watched for a while, since a duplicate would appear only once atoll resynced.
        def unchanged() -> bool:
            now = {t: engine.containers(f"label=atoll.task_id={t}") for t in task_ids}
            assert now == before, f"containers of the tasks changed: {now} vs {before}"
            assert set(engine.containers()) == all_before, engine.docker("ps", "-a")
            assert {t["id"] for t in app_tasks(inst, app_id)} == task_ids, app_tasks(inst, app_id)
            return True

        stays(unchanged, 5, message="the same containers and tasks", interval=0.25)
        for t, ids in before.items():
            state = engine.inspect(ids[0])["State"]
            assert state["Running"] and state["StartedAt"] == started_at[t], (t, state)
        assert app_json_instances(inst, app_id) == 2
        assert ports_serving(inst, srv_name, 2) == ports

        # Still watched through the restarted engine's events: a killed container is replaced.
        victim = sorted(task_ids)[0]
        engine.docker("kill", before[victim][0])

        def replaced():
            now = [t for t in app_tasks(inst, app_id) if t["state"] == "TASK_RUNNING" and healthy(t)]
            ids = {t["id"] for t in now}
            return now if len(now) == 2 and victim not in ids else None

        after = wait_for(replaced, timeout=30, interval=0.2,
                         message=lambda: f"{victim} to be replaced: {app_tasks(inst, app_id)}")
        wait_for(lambda: ports_serving(inst, srv_name, 2) == sorted(t["ports"][0] for t in after), timeout=20,
                 interval=0.1, message=lambda: f"DNS to list the replacement (now {srv_ports(inst, srv_name)})")
        running = engine.containers("label=atoll.managed=true", "status=running")
        assert len(running) == 2, engine.docker("ps", "-a")

        destroy_app(inst, app_id)
        wait_for(lambda: not engine.containers("label=atoll.managed=true", "status=running"), timeout=30,
                 interval=0.2, message=lambda: f"the app's containers to stop: {engine.docker('ps', '-a')}")
    finally:
        best_effort_remove_apps(inst)
        inst.close()


def app_json_instances(inst, app_id: str) -> int:
    return inst.get_json(f"/v2/apps{app_id}")["app"]["instances"]
