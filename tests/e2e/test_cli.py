"""The `atoll dev` command line: port conflicts, signals, and the temporary data dir."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest
import requests

from conftest import free_port, require_binary, wait_for

EXIT_DEADLINE = 10.0


def _wait_exit(inst, timeout=EXIT_DEADLINE):
    code = inst.wait_exit(timeout)
    if code is None:
        inst.kill9()
        pytest.fail(f"atoll did not exit within {timeout}s\n{inst.logs()}")
    return code


def _assert_port_conflict(inst, port):
    code = _wait_exit(inst, timeout=20)
    assert code != 0, f"atoll exited 0 although port {port} was taken\n{inst.logs()}"
    lines = [line for line in inst.stderr().splitlines() if line.strip()]
    mentioning = [line for line in lines if str(port) in line]
    assert mentioning, f"stderr does not mention port {port}:\n{inst.stderr()}"


def test_http_port_in_use(atoll_factory):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        inst = atoll_factory.create("http-conflict", http_port=port)
        inst.spawn()
        _assert_port_conflict(inst, port)
    finally:
        blocker.close()


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_dns_port_in_use(atoll_factory, kind):
    port = free_port(udp_too=True)
    blocker = socket.socket(socket.AF_INET, kind)
    blocker.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        blocker.listen(1)
    try:
        inst = atoll_factory.create(f"dns-conflict-{kind}", dns_port=port)
        inst.spawn()
        _assert_port_conflict(inst, port)
    finally:
        blocker.close()


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_wan_gossip_port_in_use(atoll_factory, kind):
    port = free_port(udp_too=True)
    blocker = socket.socket(socket.AF_INET, kind)
    blocker.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        blocker.listen(1)
    try:
        inst = atoll_factory.create(f"wan-conflict-{kind}", extra_args=["--serf-wan-port", str(port)])
        inst.spawn()
        _assert_port_conflict(inst, port)
        assert "--serf-wan-port" in inst.stderr(), inst.stderr()
    finally:
        blocker.close()


def test_port_conflict_message_is_one_line(atoll_factory):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        inst = atoll_factory.create("one-line", http_port=port)
        proc = subprocess.run(inst.command(), capture_output=True, text=True, timeout=30)
    finally:
        blocker.close()
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if str(port) in line]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_exits_cleanly_and_promptly(atoll_factory, sig):
    inst = atoll_factory.start(f"sig-{int(sig)}")
    inst.register_service({"Name": "s", "Port": 1})
    started = time.monotonic()
    inst.send_signal(sig)
    code = _wait_exit(inst)
    assert code == 0, f"exit code {code} after {sig!r}\n{inst.logs()}"
    assert time.monotonic() - started < EXIT_DEADLINE
    assert "panicked" not in inst.stderr(), inst.stderr()


def test_sigterm_with_blocking_queries_in_flight(atoll_factory):
    inst = atoll_factory.start("blocked")
    index = int(inst.get("/v1/catalog/services").headers["X-Consul-Index"])
    request = (
        f"GET /v1/catalog/services?index={index}&wait=60s HTTP/1.1\r\n"
        f"Host: {inst.http_addr}\r\nConnection: close\r\n\r\n"
    ).encode()
    conns = []
    try:
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", inst.http_port), timeout=EXIT_DEADLINE + 5)
            c.sendall(request)
            conns.append(c)
        # A later request on a fresh connection has been answered, so the
        # server has had every chance to pick up the parked ones first.
        assert inst.get("/v1/status/leader").status_code == 200
        started = time.monotonic()
        inst.send_signal(signal.SIGTERM)
        code = _wait_exit(inst)
        elapsed = time.monotonic() - started
        assert code == 0, inst.logs()
        assert elapsed < EXIT_DEADLINE, f"shutdown took {elapsed:.1f}s with blocking queries open"
        for c in conns:
            # The server end is gone: reading returns (EOF or a reply), it never hangs.
            while c.recv(65536):
                pass
    finally:
        for c in conns:
            c.close()


def test_temporary_data_dir_is_removed_on_exit(atoll_factory):
    for sig in (signal.SIGINT, signal.SIGTERM):
        inst = atoll_factory.start(f"tmpdir-{int(sig)}", temp_data_dir=True)
        # The banner is printed once the node serves, so it may trail the first answer.
        deadline = time.monotonic() + 10
        reported = inst.reported_data_dir()
        while reported is None and time.monotonic() < deadline:
            time.sleep(0.05)
            reported = inst.reported_data_dir()
        assert reported is not None, f"no 'data dir:' line on stdout:\n{inst.stdout()}"
        assert reported.is_dir(), f"printed data dir {reported} does not exist while running"
        inst.put("/v1/kv/some/key", data=b"v")
        inst.send_signal(sig)
        assert _wait_exit(inst) == 0
        assert not reported.exists(), f"temporary data dir {reported} left behind after {sig!r}"


def test_explicit_data_dir_is_kept(atoll_factory, tmp_path):
    data_dir = tmp_path / "kept"
    inst = atoll_factory.start("kept", data_dir=data_dir)
    inst.put("/v1/kv/x", data=b"1")
    assert inst.stop() == 0
    assert data_dir.is_dir()
    assert any(data_dir.rglob("*")), "the data dir is empty after writes"


def test_restart_on_the_same_ports_right_after_exit(atoll_factory):
    inst = atoll_factory.start("reuse")
    inst.register_service({"Name": "s", "Port": 1})
    assert inst.stop() == 0
    started = time.monotonic()
    inst.spawn()
    inst.wait_ready(timeout=20)
    assert time.monotonic() - started < 20
    assert "s" in inst.get_json("/v1/agent/services")


def test_cli_usage_errors():
    exe = str(require_binary())
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert "dev" in proc.stdout
    proc = subprocess.run([exe, "dev", "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "--no-such-flag" in proc.stderr
    proc = subprocess.run(
        [exe, "dev", "--http-addr", "not-an-address", "--dns-addr", f"127.0.0.1:{free_port(udp_too=True)}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "not-an-address" in proc.stderr


def test_marathon_addr_serves_the_same_api(atoll_factory):
    port = free_port()
    inst = atoll_factory.start("marathon-addr", extra_args=["--marathon-addr", f"127.0.0.1:{port}"])
    other = f"http://127.0.0.1:{port}"
    assert requests.get(f"{other}/ping", timeout=5).text == "pong"
    app = {"id": "/via-marathon-port", "cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 0}
    r = requests.post(f"{other}/v2/apps", json=app, timeout=10)
    assert r.status_code == 201, r.text
    # One API on two ports: what one wrote the other reads.
    assert inst.get_json("/v2/apps/via-marathon-port")["app"]["id"] == "/via-marathon-port"
    assert requests.get(f"{other}/v1/status/leader", timeout=5).json()


def test_marathon_addr_in_use(atoll_factory):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        inst = atoll_factory.create("marathon-conflict", extra_args=["--marathon-addr", f"127.0.0.1:{port}"])
        inst.spawn()
        _assert_port_conflict(inst, port)
    finally:
        blocker.close()


def test_marathon_info_reports_the_configured_port_range(atoll_factory):
    inst = atoll_factory.start("ports", extra_args=["--port-range", "35000-35100"])
    def reported():
        config = inst.get_json("/v2/info")["marathon_config"]
        return (config.get("local_port_min"), config.get("local_port_max")) == (35000, 35100)

    wait_for(reported, timeout=10, message="/v2/info reporting --port-range 35000-35100")
