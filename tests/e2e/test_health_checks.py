"""Health checks run by the agent: TTL expiry, HTTP, TCP, and critical-service reaping."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from conftest import catalog_service_ids, free_port, wait_check_status, wait_for

# What a Consul client sees: runs against a cluster's client node too (ATOLL_E2E_TARGET=cluster).
pytestmark = pytest.mark.client_api


class _StatusServer:
    """A tiny HTTP server on 127.0.0.1 answering with a status we control."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"ok"
        self.hits = 0
        self.methods: list[str] = []
        self.paths: list[str] = []
        self.hold = threading.Event()
        self.hold.set()  # cleared => requests stall until set (or 5s)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                outer.hits += 1
                outer.methods.append(self.command)
                outer.paths.append(self.path)
                outer.hold.wait(timeout=5)
                body = outer.body
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_HEAD = _answer
            do_POST = _answer

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _passing_ids(inst, name):
    return {e["Service"]["ID"] for e in inst.get_json(f"/v1/health/service/{name}", params={"passing": 1})}


# ---------------------------------------------------------------------------
# TTL


def test_ttl_check_expires_to_critical(atoll):
    atoll.register_service({"ID": "ttl-1", "Name": "ttlsvc", "Port": 1, "Check": {"TTL": "2s"}})
    assert atoll.put("/v1/agent/check/pass/service:ttl-1", params={"note": "alive"}).status_code == 200
    passed_at = time.monotonic()
    check = atoll.get_json("/v1/agent/checks")["service:ttl-1"]
    assert check["Status"] == "passing"
    assert check["Output"] == "alive"
    wait_for(lambda: _passing_ids(atoll, "ttlsvc") == {"ttl-1"}, message="ttl-1 passing in health")

    check = wait_check_status(atoll, "service:ttl-1", "critical", timeout=10)
    elapsed = time.monotonic() - passed_at
    assert elapsed >= 1.5, f"TTL of 2s expired after only {elapsed:.2f}s"
    assert check["Output"] and "ttl" in check["Output"].lower(), check
    wait_for(lambda: _passing_ids(atoll, "ttlsvc") == set(), message="ttl-1 critical in health")
    health = atoll.get_json("/v1/health/checks/ttlsvc")
    assert [c["Status"] for c in health] == ["critical"]


def test_ttl_refresh_keeps_check_passing(atoll):
    atoll.register_service({"ID": "ttl-2", "Name": "ttlkeep", "Port": 1, "Check": {"TTL": "2s"}})
    deadline = time.monotonic() + 5
    statuses = set()
    # Report in every 0.5s for 5s (2.5x the TTL): the check must never go critical.
    while time.monotonic() < deadline:
        assert atoll.put("/v1/agent/check/pass/service:ttl-2").status_code == 200
        statuses.add(atoll.get_json("/v1/agent/checks")["service:ttl-2"]["Status"])
        time.sleep(0.5)
    assert statuses == {"passing"}, statuses
    # ...and once the reports stop, it expires.
    wait_check_status(atoll, "service:ttl-2", "critical", timeout=10)


# ---------------------------------------------------------------------------
# HTTP


def test_http_check_follows_status_codes(atoll):
    with _StatusServer() as srv:
        url = f"http://127.0.0.1:{srv.port}/health"
        atoll.register_service(
            {
                "ID": "http-1",
                "Name": "httpsvc",
                "Port": srv.port,
                "Check": {"HTTP": url, "Interval": "1s", "Timeout": "1s"},
            }
        )
        cid = "service:http-1"
        check = wait_check_status(atoll, cid, "passing", timeout=15)
        assert srv.hits >= 1
        assert set(srv.methods) == {"GET"}, srv.methods
        assert srv.paths[0] == "/health"
        assert check["Type"] == "http"
        wait_for(lambda: _passing_ids(atoll, "httpsvc") == {"http-1"}, message="http-1 passing")

        srv.status, srv.body = 429, b"slow down"
        check = wait_check_status(atoll, cid, "warning", timeout=15)
        assert "429" in check["Output"], check["Output"]

        srv.status, srv.body = 500, b"boom"
        check = wait_check_status(atoll, cid, "critical", timeout=15)
        assert "500" in check["Output"], check["Output"]
        wait_for(lambda: _passing_ids(atoll, "httpsvc") == set(), message="http-1 out of ?passing")

        srv.status, srv.body = 200, b"fine again"
        wait_check_status(atoll, cid, "passing", timeout=15)
        hits = srv.hits
        # The check keeps running at its interval.
        wait_for(lambda: srv.hits >= hits + 2, timeout=10, message="more HTTP check runs")


def test_http_check_timeout_is_critical(atoll):
    with _StatusServer() as srv:
        srv.hold.clear()  # every request stalls for up to 5s
        atoll.register_service(
            {
                "ID": "slow-1",
                "Name": "slowsvc",
                "Port": srv.port,
                "Check": {
                    "HTTP": f"http://127.0.0.1:{srv.port}/",
                    "Interval": "1s",
                    "Timeout": "300ms",
                    "Status": "passing",
                },
            }
        )
        wait_for(lambda: srv.hits >= 1, timeout=10, message="first HTTP check request")
        wait_check_status(atoll, "service:slow-1", "critical", timeout=10)
        srv.hold.set()
        wait_check_status(atoll, "service:slow-1", "passing", timeout=15)


def test_http_check_against_closed_port_is_critical(atoll):
    port = free_port()  # nothing listens here
    atoll.register_service(
        {
            "ID": "nohttp-1",
            "Name": "nohttp",
            "Port": port,
            "Check": {"HTTP": f"http://127.0.0.1:{port}/", "Interval": "1s", "Status": "passing"},
        }
    )
    check = wait_check_status(atoll, "service:nohttp-1", "critical", timeout=15)
    assert check["Output"], "a failed HTTP check should say why"


# ---------------------------------------------------------------------------
# TCP


def test_tcp_check_listening_and_closed(atoll):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept_loop():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            accepted.append(1)
            conn.close()

    t = threading.Thread(target=accept_loop, daemon=True)
    t.start()
    try:
        atoll.register_service(
            {
                "ID": "tcp-1",
                "Name": "tcpsvc",
                "Port": port,
                "Check": {"TCP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "1s"},
            }
        )
        check = wait_check_status(atoll, "service:tcp-1", "passing", timeout=15)
        assert check["Type"] == "tcp"
        assert accepted, "the TCP check never connected"
        wait_for(lambda: _passing_ids(atoll, "tcpsvc") == {"tcp-1"}, message="tcp-1 passing")
    finally:
        stop.set()
        t.join(timeout=5)
        listener.close()
    wait_check_status(atoll, "service:tcp-1", "critical", timeout=15)
    wait_for(lambda: _passing_ids(atoll, "tcpsvc") == set(), message="tcp-1 critical")


def test_tcp_check_on_closed_port_starts_failing(atoll):
    port = free_port()
    atoll.register_service(
        {
            "ID": "tcp-2",
            "Name": "tcpclosed",
            "Port": port,
            "Check": {"TCP": f"127.0.0.1:{port}", "Interval": "1s", "Status": "passing"},
        }
    )
    check = wait_check_status(atoll, "service:tcp-2", "critical", timeout=15)
    assert check["Output"]


# ---------------------------------------------------------------------------
# reaping


def test_deregister_critical_service_after(atoll):
    atoll.register_service(
        {
            "ID": "reap-1",
            "Name": "reapme",
            "Port": 1,
            "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "2s"},
        }
    )
    atoll.register_service({"ID": "keep-1", "Name": "keepme", "Port": 2, "Check": {"TTL": "60s", "Status": "passing"}})
    wait_for(lambda: catalog_service_ids(atoll, "reapme") == {"reap-1"}, message="reap-1 in catalog")
    wait_for(
        lambda: "reap-1" not in atoll.get_json("/v1/agent/services"),
        timeout=90,
        interval=0.25,
        message="reap-1 to be deregistered after being critical for 2s",
    )
    assert "service:reap-1" not in atoll.get_json("/v1/agent/checks")
    wait_for(lambda: catalog_service_ids(atoll, "reapme") == set(), message="reap-1 out of catalog")
    # A healthy neighbour is left alone.
    assert "keep-1" in atoll.get_json("/v1/agent/services")


def test_passing_service_with_deregister_after_is_kept(atoll):
    atoll.register_service(
        {
            "ID": "healthy-1",
            "Name": "healthy",
            "Port": 1,
            "Check": {"TTL": "60s", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"},
        }
    )
    # A critical canary with the same setting proves the reaper has run since
    # healthy-1 was registered; healthy-1 must still be there afterwards.
    atoll.register_service(
        {"ID": "canary-1", "Name": "canary", "Port": 2, "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "1s"}}
    )
    wait_for(
        lambda: "canary-1" not in atoll.get_json("/v1/agent/services"),
        timeout=90,
        interval=0.25,
        message="the critical canary to be reaped",
    )
    assert "healthy-1" in atoll.get_json("/v1/agent/services")
    assert catalog_service_ids(atoll, "healthy") == {"healthy-1"}


@pytest.mark.parametrize(
    "check,words",
    [
        ({"TTL": "10s", "Interval": "10s"}, ("ttl",)),
        ({"HTTP": "http://127.0.0.1:1/"}, ("interval",)),
        ({"TCP": "127.0.0.1:1"}, ("interval",)),
        ({"TTL": "not-a-duration"}, ("ttl", "duration")),
    ],
)
def test_invalid_check_definitions_are_rejected(atoll, check, words):
    r = atoll.put("/v1/agent/service/register", json={"ID": "bad-1", "Name": "bad", "Port": 1, "Check": check})
    assert r.status_code == 400, (r.status_code, r.text)
    assert any(w in r.text.lower() for w in words), r.text
    assert "bad-1" not in atoll.get_json("/v1/agent/services")
