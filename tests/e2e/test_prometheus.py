"""Prometheus's consul_sd_configs discovering services registered in atoll.

The first tests run a real `prometheus` binary (PROMETHEUS_BIN, or the one on
PATH) against atoll: Prometheus uses the Consul API (agent/self,
catalog/services and health/service with blocking queries) exactly as it would
against Consul. Debian's packaged Prometheus is built without Consul service
discovery, so with it those tests skip; the last test drives the same request
sequence from Python so the protocol is covered everywhere.
"""

from __future__ import annotations

import http.server
import threading

import pytest
import requests

from conftest import GiveUp, free_port, wait_for
from prometheus_util import prometheus_binary, running_prometheus

# What a Consul client sees: runs against a cluster's client node too (ATOLL_E2E_TARGET=cluster).
pytestmark = pytest.mark.client_api

DEADLINE = 60.0


class _MetricsServer:
    """A scrape target: serves a single metric on 127.0.0.1."""

    def __init__(self) -> None:
        self.scrapes = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.scrapes += 1
                body = b"# TYPE e2e_up gauge\ne2e_up 1\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


CONSUL_SD_MISSING = "field consul_sd_configs not found"


@pytest.fixture
def prometheus(atoll, tmp_path):
    try:
        with running_prometheus(
            tmp_path,
            "  - job_name: atoll-sd\n"
            "    consul_sd_configs:\n"
            f"      - server: '{atoll.http_addr}'\n"
            "        refresh_interval: 1s\n",
        ) as running:
            yield running
            return
    except GiveUp as e:
        if CONSUL_SD_MISSING not in str(e):
            raise AssertionError(str(e)) from None
    # Not a missing install but a missing capability: Debian's prometheus packages
    # (bookworm and trixie alike) are built without Consul service discovery. No install
    # step can fix that, so this is skipped even under CI; the protocol test below covers
    # the same requests in every environment.
    pytest.skip(
        f"{prometheus_binary()} is built without consul_sd_configs (Debian disables Consul "
        "SD); set PROMETHEUS_BIN to a Prometheus build that has it"
    )


def _targets(base):
    r = requests.get(f"{base}/api/v1/targets", params={"state": "active"}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["activeTargets"]


def _find(base, service):
    for t in _targets(base):
        if t.get("discoveredLabels", {}).get("__meta_consul_service") == service:
            return t
    return None


def test_prometheus_discovers_and_forgets_services(atoll, prometheus):
    base, log_path = prometheus

    def why():
        return f"targets now {_targets(base)}\nprometheus log tail:\n{log_path.read_text(errors='replace')[-2000:]}"

    with _MetricsServer() as metrics:
        atoll.register_service(
            {
                "ID": "scrape-me-1",
                "Name": "scrapeme",
                "Address": "127.0.0.1",
                "Port": metrics.port,
                "Tags": ["prom", "e2e"],
                "Meta": {"team": "infra"},
            }
        )
        target = wait_for(lambda: _find(base, "scrapeme"), timeout=DEADLINE, interval=0.5, message=why)
        labels = target["discoveredLabels"]
        assert labels["__address__"] == f"127.0.0.1:{metrics.port}"
        assert labels["__meta_consul_service_port"] == str(metrics.port)
        assert labels["__meta_consul_service_id"] == "scrape-me-1"
        assert labels["__meta_consul_node"] == atoll.node
        assert labels["__meta_consul_dc"] == "dc1"
        assert labels["__meta_consul_tags"] == ",prom,e2e,"
        assert labels["__meta_consul_service_metadata_team"] == "infra"
        assert labels["__meta_consul_health"] == "passing"

        # Prometheus really scrapes the discovered address.
        wait_for(
            lambda: (_find(base, "scrapeme") or {}).get("health") == "up",
            timeout=DEADLINE,
            interval=0.5,
            message=why,
        )
        assert metrics.scrapes >= 1

        assert atoll.put("/v1/agent/service/deregister/scrape-me-1").status_code == 200
        wait_for(lambda: _find(base, "scrapeme") is None, timeout=DEADLINE, interval=0.5, message=why)


def test_prometheus_sees_health_changes(atoll, prometheus):
    base, log_path = prometheus
    atoll.register_service(
        {"ID": "hc-1", "Name": "promhealth", "Address": "127.0.0.1", "Port": free_port(), "Check": {"TTL": "60s"}}
    )

    def health():
        t = _find(base, "promhealth")
        return t["discoveredLabels"].get("__meta_consul_health") if t else None

    def why():
        return f"targets now {_targets(base)}\nprometheus log tail:\n{log_path.read_text(errors='replace')[-2000:]}"

    wait_for(lambda: health() == "critical", timeout=DEADLINE, interval=0.5, message=why)
    assert atoll.put("/v1/agent/check/pass/service:hc-1").status_code == 200
    wait_for(lambda: health() == "passing", timeout=DEADLINE, interval=0.5, message=why)


# ---------------------------------------------------------------------------
# The same discovery protocol, driven from Python.
#
# This follows the request sequence of Prometheus's consul_sd (agent/self for
# the datacenter, then blocking catalog/services and health/service queries
# with ?stale, ?index and a millisecond ?wait as the Go client encodes it), so
# the contract is exercised even where no Prometheus build with Consul SD is
# available.


class ConsulSDWatcher:
    def __init__(self, base_url: str, wait: str = "3000ms") -> None:
        self.base = base_url
        self.wait = wait
        self.targets: dict[str, list[dict]] = {}
        self.errors: list[str] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.datacenter = None

    def _get(self, path, index):
        params = {"stale": "", "wait": self.wait}
        if index:
            params["index"] = str(index)
        r = requests.get(self.base + path, params=params, timeout=60)
        self.requests += 1
        if r.status_code != 200:
            self.errors.append(f"GET {path} -> {r.status_code} {r.text[:200]}")
            return None, index
        new_index = int(r.headers["X-Consul-Index"])
        if new_index < 1:
            self.errors.append(f"GET {path}: X-Consul-Index {new_index}")
        return r.json(), new_index

    def start(self):
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)

    def _run(self):
        try:
            me = requests.get(self.base + "/v1/agent/self", timeout=10).json()
            self.datacenter = me["Config"]["Datacenter"]
            last = 0
            watched: dict[str, threading.Event] = {}
            while not self.stop.is_set():
                services, index = self._get("/v1/catalog/services", last)
                if services is None or index == last:
                    continue
                last = index
                for name in services:
                    if name not in watched:
                        ev = threading.Event()
                        watched[name] = ev
                        t = threading.Thread(target=self._watch, args=(name, ev), daemon=True)
                        t.start()
                        self.threads.append(t)
                for name in list(watched):
                    if name not in services:
                        watched.pop(name).set()
                        with self.lock:
                            self.targets.pop(name, None)
        except Exception as exc:  # noqa: BLE001 - surfaced by the test
            if not self.stop.is_set():
                self.errors.append(repr(exc))

    def _watch(self, name, cancelled):
        last = 0
        try:
            while not (self.stop.is_set() or cancelled.is_set()):
                entries, index = self._get(f"/v1/health/service/{name}", last)
                if entries is None or index == last:
                    continue
                last = index
                group = []
                for e in entries:
                    node, svc = e["Node"], e["Service"]
                    host = svc["Address"] or node["Address"]
                    statuses = {c["Status"] for c in e["Checks"]}
                    health = next((s for s in ("critical", "maintenance", "warning") if s in statuses), "passing")
                    group.append(
                        {
                            "__address__": f"{host}:{svc['Port']}",
                            "__meta_consul_node": node["Node"],
                            "__meta_consul_service": name,
                            "__meta_consul_service_id": svc["ID"],
                            "__meta_consul_tags": "," + ",".join(svc["Tags"] or []) + ",",
                            "__meta_consul_health": health,
                            "__meta_consul_dc": self.datacenter,
                            **{f"__meta_consul_service_metadata_{k}": v for k, v in (svc["Meta"] or {}).items()},
                        }
                    )
                if not cancelled.is_set():
                    with self.lock:
                        self.targets[name] = group
        except Exception as exc:  # noqa: BLE001
            if not (self.stop.is_set() or cancelled.is_set()):
                self.errors.append(repr(exc))

    def snapshot(self, name):
        with self.lock:
            return list(self.targets.get(name, []))


def test_consul_sd_protocol_tracks_services(atoll):
    watcher = ConsulSDWatcher(atoll.base_url).start()
    try:
        atoll.register_service(
            {
                "ID": "sd-1",
                "Name": "sdsvc",
                "Address": "127.0.0.3",
                "Port": 9100,
                "Tags": ["a", "b"],
                "Meta": {"team": "infra"},
                "Check": {"TTL": "60s"},
            }
        )
        (target,) = wait_for(lambda: watcher.snapshot("sdsvc"), timeout=20, message="sdsvc discovered")
        assert target["__address__"] == "127.0.0.3:9100"
        assert target["__meta_consul_node"] == atoll.node
        assert target["__meta_consul_tags"] == ",a,b,"
        assert target["__meta_consul_service_metadata_team"] == "infra"
        assert target["__meta_consul_dc"] == "dc1"
        assert target["__meta_consul_health"] == "critical"

        assert atoll.put("/v1/agent/check/pass/service:sd-1").status_code == 200
        wait_for(
            lambda: [t["__meta_consul_health"] for t in watcher.snapshot("sdsvc")] == ["passing"],
            timeout=20,
            message="health change seen through the blocking watch",
        )

        atoll.register_service({"ID": "sd-2", "Name": "sdsvc", "Port": 9101})
        wait_for(
            lambda: sorted(t["__address__"] for t in watcher.snapshot("sdsvc"))
            == sorted([f"{atoll.node_address}:9101", "127.0.0.3:9100"]),
            timeout=20,
            message="second instance discovered",
        )

        for sid in ("sd-1", "sd-2"):
            assert atoll.put(f"/v1/agent/service/deregister/{sid}").status_code == 200
        wait_for(lambda: "sdsvc" not in watcher.targets, timeout=20, message="sdsvc forgotten")
        assert not watcher.errors, watcher.errors
        # Blocking queries, not a busy loop: a handful of requests per change.
        assert watcher.requests < 200, f"{watcher.requests} requests: blocking queries are not blocking"
    finally:
        watcher.close()
