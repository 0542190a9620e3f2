"""The compose deployment (deploy/compose.yaml) runs workloads.

Builds the atoll image from the binary under test, brings up the three servers and two
compute nodes under a compose project name of its own, on a private network and host
ports of its own, and deploys a Docker app (on the host's engine, through the socket the
compute nodes mount) and an exec app (inside the compute nodes' containers) with one
instance on each compute node. Both are found by DNS from the host and answer there.
Killing one compute node's container moves its tasks to the other; started again, the
killed node removes the container it left behind and none of the other's, since each
node labels its containers with its own id. `down` leaves no container, network, volume
or image of the test behind.

The only addresses used besides 127.0.0.1 are those of the test's own compose network,
a bridge on this host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
import requests

from apps_util import BUILD_WEB_IMAGE, containers, docker, require_docker
from conftest import REPO_ROOT, free_port, require_binary, require_tool, wait_for

COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
BUILD_IMAGE = REPO_ROOT / "deploy" / "build-image.sh"
WEB_MARKER = "atoll-e2e-compose-web"
EXEC_MARKER = "atoll-e2e-compose-exec"
# Bounds of the steps (seconds); the whole test takes well under a minute when healthy.
UP_TIMEOUT = 60.0
PLACE_TIMEOUT = 45.0
MOVE_TIMEOUT = 45.0
HTTP_TIMEOUT = 2.0


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(args)} -> {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def free_subnet() -> str:
    """The first three octets of a /24 in 172.30.0.0/16 that no Docker network overlaps."""
    taken = []
    for network_id in docker("network", "ls", "-q").split():
        info = json.loads(docker("network", "inspect", network_id))[0]
        for config in (info.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet"):
                taken.append(ipaddress.ip_network(config["Subnet"], strict=False))
    start = secrets.randbelow(256)
    for offset in range(256):
        third = (start + offset) % 256
        candidate = ipaddress.ip_network(f"172.30.{third}.0/24")
        if not any(candidate.overlaps(other) for other in taken):
            return f"172.30.{third}"
    pytest.fail("no free /24 in 172.30.0.0/16 for the compose network")


class Deployment:
    """One compose project of deploy/compose.yaml and what the test built for it."""

    def __init__(self, compose: str, binary: Path):
        self.compose = compose
        suffix = secrets.token_hex(4)
        self.project = f"atolle2e{suffix}"
        self.image = f"atoll-e2e-compose:{suffix}"
        self.web_image = f"atoll-e2e-compose-web:{suffix}"
        self.subnet = free_subnet()
        self.http_port = free_port()
        self.dns_port = free_port(udp_too=True, exclude=[self.http_port])
        self.env = dict(
            os.environ,
            ATOLL_BIN=str(binary),
            ATOLL_IMAGE=self.image,
            ATOLL_SUBNET=self.subnet,
            ATOLL_HTTP_PORT=str(self.http_port),
            ATOLL_DNS_PORT=str(self.dns_port),
        )
        self.node_ids: dict[str, str] = {}

    def address(self, last_octet: int) -> str:
        return f"{self.subnet}.{last_octet}"

    def compose_cmd(self, *args: str, timeout: float = 120) -> str:
        return run(self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args, env=self.env, timeout=timeout)

    def container(self, service: str) -> str:
        found = self.compose_cmd("ps", "-q", service, timeout=30).split()
        assert len(found) == 1, f"{service}: containers {found}"
        return found[0]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str):
        response = requests.get(self.url(path), timeout=5)
        response.raise_for_status()
        return response.json()

    def running_tasks(self, app_id: str) -> list[dict]:
        tasks = self.get(f"/v2/apps{app_id}/tasks")["tasks"]
        return [t for t in tasks if t.get("state") == "TASK_RUNNING"]

    def task_containers(self) -> list[str]:
        """Every container, in any state, of a task started by this deployment's nodes."""
        found: set[str] = set()
        for node_id in self.node_ids.values():
            found.update(containers(f"label=atoll.node_id={node_id}"))
        return sorted(found)

    def resolve_srv(self, name: str) -> list[tuple[str, int]]:
        """(address, port) of every instance DNS names for `name`, asked from the host."""
        query = dns.message.make_query(name, "SRV")
        answer = dns.query.tcp(query, "127.0.0.1", port=self.dns_port, timeout=2)
        addresses = {
            rrset.name.to_text(): rrset[0].address
            for rrset in answer.additional
            if rrset.rdtype == dns.rdatatype.A
        }
        return sorted(
            (addresses[rd.target.to_text()], rd.port)
            for rrset in answer.answer
            if rrset.rdtype == dns.rdatatype.SRV
            for rd in rrset
        )

    def resolve_a(self, name: str) -> list[str]:
        query = dns.message.make_query(name, "A")
        answer = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=2)
        return sorted(rd.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def fetch(address: str, port: int) -> str | None:
    try:
        response = requests.get(f"http://{address}:{port}/", timeout=HTTP_TIMEOUT, headers={"Connection": "close"})
    except requests.RequestException:
        return None
    return response.text.strip() if response.status_code == 200 else None


def placed_on(deployment: Deployment, app_id: str, nodes: list[str]):
    """The app's running tasks when they are on exactly `nodes` (one each, sorted), else None."""
    tasks = deployment.running_tasks(app_id)
    return tasks if sorted(t["slaveId"] for t in tasks) == sorted(nodes) else None


def answers_at(deployment: Deployment, name: str, expected: list[tuple[str, int]], marker: str):
    """The SRV answer of `name` when it is `expected` and every instance serves `marker`."""
    found = deployment.resolve_srv(f"{name}.service.consul")
    if found != sorted(expected):
        return None
    return found if all(fetch(address, port) == marker for address, port in found) else None


def apps_running_on(deployment: Deployment, nodes: list[str]) -> tuple[list[dict], list[dict]]:
    """Waits until /hello and /web each run one task on each of `nodes` and DNS, asked from
    the host, names every instance where it answers: an exec task at its compute node, a
    Docker task at the host's address on the network, where its port is published. Marathon's
    `host` of a task is that same address, as marathon-lb reads it."""
    where = " and ".join(nodes)
    hello = wait_for(lambda: placed_on(deployment, "/hello", nodes), timeout=PLACE_TIMEOUT, interval=0.5,
                     message=f"/hello running on {where}")
    web = wait_for(lambda: placed_on(deployment, "/web", nodes), timeout=PLACE_TIMEOUT, interval=0.5,
                   message=f"/web running on {where}")
    node_address = {"compute1": deployment.address(21), "compute2": deployment.address(22)}
    assert sorted(t["host"] for t in hello) == sorted(node_address[t["slaveId"]] for t in hello), hello
    assert [t["host"] for t in web] == [deployment.address(1)] * len(web), web
    instances = {
        ("hello", EXEC_MARKER): [(t["host"], t["ports"][0]) for t in hello],
        ("web", WEB_MARKER): [(t["host"], t["ports"][0]) for t in web],
    }
    for (name, marker), expected in instances.items():
        wait_for(lambda: answers_at(deployment, name, expected, marker), timeout=PLACE_TIMEOUT, interval=0.5,
                 message=f"{name}'s instances {expected} in DNS, answering")
    return hello, web


def test_compose_cluster_runs_docker_and_exec_apps_across_both_compute_nodes():
    binary = require_binary()
    compose = require_tool("docker-compose", "/usr/bin/docker-compose")
    require_docker()
    busybox = require_tool("busybox", "/bin/busybox")
    deployment = Deployment(compose, binary)
    try:
        run("bash", str(BUILD_IMAGE), env=deployment.env, timeout=180)
        run("sh", str(BUILD_WEB_IMAGE), deployment.web_image, WEB_MARKER, env=dict(os.environ, BUSYBOX=busybox), timeout=180)
        deployment.compose_cmd("up", "-d", timeout=180)

        wait_for(lambda: len(deployment.get("/v1/catalog/nodes")) == 5, timeout=UP_TIMEOUT, interval=0.5,
                 message="five nodes in the catalog")
        # Both compute nodes offer their resources to the scheduler once a task can be on
        # each: until then, two instances could both land on the first one.
        probe = {"id": "/probe", "cmd": "sleep 600", "instances": 2, "cpus": 0.1, "mem": 16,
                 "constraints": [["hostname", "UNIQUE"]]}
        response = requests.post(deployment.url("/v2/apps"), json=probe, timeout=10)
        assert response.status_code == 201, response.text
        wait_for(lambda: placed_on(deployment, "/probe", ["compute1", "compute2"]), timeout=UP_TIMEOUT, interval=0.5,
                 message="a probe task running on each compute node")
        response = requests.delete(deployment.url("/v2/apps/probe"), timeout=10)
        assert response.status_code == 200, response.text
        for service in ("compute1", "compute2"):
            node_id = run("docker", "exec", deployment.container(service), "cat", "/data/node-id", timeout=30).strip()
            assert len(node_id) == 32, node_id
            deployment.node_ids[service] = node_id
        assert deployment.node_ids["compute1"] != deployment.node_ids["compute2"]

        exec_app = {
            "id": "/hello",
            # Runs in the compute node's container, under the image's busybox shell.
            "cmd": f"mkdir -p www && echo {EXEC_MARKER} > www/index.html && exec httpd -f -p $PORT0 -h www",
            "instances": 2,
            "cpus": 0.1,
            "mem": 16,
        }
        docker_app = {
            "id": "/web",
            "instances": 2,
            "cpus": 0.1,
            "mem": 16,
            "container": {
                "type": "DOCKER",
                "docker": {"image": deployment.web_image, "network": "BRIDGE"},
                "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
            },
        }
        for app in (exec_app, docker_app):
            response = requests.post(deployment.url("/v2/apps"), json=app, timeout=10)
            assert response.status_code == 201, response.text

        # One instance of each app on each compute node, found by DNS from the host.
        _, web = apps_running_on(deployment, ["compute1", "compute2"])
        assert deployment.resolve_a("hello.service.consul") == \
            sorted([deployment.address(21), deployment.address(22)])

        # Each Docker task is a container labelled with its own node's id.
        web_on = {t["slaveId"]: t["id"] for t in web}
        for service in ("compute1", "compute2"):
            labelled = containers(f"label=atoll.node_id={deployment.node_ids[service]}", "status=running")
            assert labelled == containers(f"label=atoll.task_id={web_on[service]}"), service
        survivor_container = containers(f"label=atoll.task_id={web_on['compute2']}")
        left_behind = containers(f"label=atoll.task_id={web_on['compute1']}")
        assert len(survivor_container) == 1 and len(left_behind) == 1, (survivor_container, left_behind)

        # A compute node dies: its tasks are replaced on the other one.
        run("docker", "kill", deployment.container("compute1"), timeout=30)
        apps_running_on(deployment, ["compute2", "compute2"])

        # Back, the killed node removes the container it left behind on the shared engine
        # and leaves every one of the other node's alone.
        run("docker", "start", deployment.container("compute1"), timeout=30)
        wait_for(lambda: not containers(f"id={left_behind[0]}"), timeout=MOVE_TIMEOUT, interval=0.5,
                 message="compute1's orphaned container removed")
        running_on_compute2 = containers(f"label=atoll.node_id={deployment.node_ids['compute2']}", "status=running")
        assert survivor_container[0] in running_on_compute2
        assert len(running_on_compute2) == 2, running_on_compute2
        assert placed_on(deployment, "/web", ["compute2", "compute2"])

        # Down: the apps first, so the nodes stop their containers, then the project.
        for app_id in ("/hello", "/web"):
            response = requests.delete(deployment.url(f"/v2/apps{app_id}"), timeout=10)
            assert response.status_code == 200, response.text
        wait_for(lambda: not deployment.task_containers(), timeout=MOVE_TIMEOUT, interval=0.5,
                 message="the apps' containers stopped")
        deployment.compose_cmd("down", "-v", "--remove-orphans", timeout=180)
        label = f"label=com.docker.compose.project={deployment.project}"
        assert containers(label) == []
        assert docker("network", "ls", "-q", "--filter", label).split() == []
        assert docker("volume", "ls", "-q", "--filter", label).split() == []
    finally:
        cleanup(deployment)


def cleanup(deployment: Deployment) -> None:
    """Removes whatever the test left: task containers, the project, the images."""
    leftovers = deployment.task_containers()
    if leftovers:
        docker("rm", "-f", *leftovers, check=False)
    subprocess.run(
        [deployment.compose, "-p", deployment.project, "-f", str(COMPOSE_FILE), "down", "-v", "--remove-orphans",
         "--timeout", "5"],
        capture_output=True, text=True, timeout=180, env=deployment.env,
    )
    docker("rmi", "-f", deployment.image, deployment.web_image, check=False)
