"""Consul's check types beyond TTL, HTTP GET and TCP: script checks (behind
--enable-script-checks), HTTP checks with method, headers and body, HTTPS with
TLSSkipVerify, SuccessBeforePassing/FailuresBeforeCritical, and Docker checks."""

from __future__ import annotations

import http.server
import secrets
import ssl
import subprocess
import threading
from pathlib import Path

import consul
import pytest

from conftest import require_tool, wait_check_status, wait_for

SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"
)


@pytest.fixture
def scripted(atoll_factory):
    """An agent that runs script and Docker checks."""
    return atoll_factory.start("scripted", extra_args=["--enable-script-checks"])


def agent_check(inst, check_id: str) -> dict | None:
    return inst.get_json("/v1/agent/checks").get(check_id)


class ExitFile:
    """A script check whose exit code (and output) the test sets through a file; every
    run appends its exit code to a log, so the test can count runs."""

    def __init__(self, directory: Path, code: int = 0) -> None:
        self.code_file = directory / f"code-{secrets.token_hex(4)}"
        self.runs_file = directory / f"runs-{secrets.token_hex(4)}"
        self.set(code)

    def set(self, code: int) -> None:
        self.code_file.write_text(f"{code}\n")

    @property
    def args(self) -> list[str]:
        script = f'c=$(cat {self.code_file}); echo "$c" >> {self.runs_file}; echo "exit code $c"; exit "$c"'
        return ["/bin/sh", "-c", script]

    def runs(self, code: int | None = None) -> int:
        try:
            lines = self.runs_file.read_text().split()
        except FileNotFoundError:
            return 0
        return len([x for x in lines if code is None or x == str(code)])


def test_script_check_status_follows_the_exit_code(scripted, tmp_path):
    c = scripted.consul
    control = ExitFile(tmp_path, 0)
    assert c.agent.check.register("script", check=consul.Check.script(control.args, "200ms"), check_id="script")
    check = wait_check_status(scripted, "script", "passing")
    assert check["Output"] == "exit code 0\n"
    assert check["Type"] == "script"
    control.set(1)
    assert wait_check_status(scripted, "script", "warning")["Output"] == "exit code 1\n"
    control.set(2)
    assert wait_check_status(scripted, "script", "critical")["Output"] == "exit code 2\n"
    control.set(0)
    wait_check_status(scripted, "script", "passing")


def test_script_checks_of_a_service_and_the_old_script_field(scripted):
    c = scripted.consul
    assert c.agent.service.register(
        "web", service_id="web-1", port=80, check=consul.Check.script(["/bin/sh", "-c", "exit 1"], "200ms")
    )
    wait_check_status(scripted, "service:web-1", "warning")
    # Consul's old `Script`: run through /bin/sh -c.
    r = scripted.put(
        "/v1/agent/check/register",
        json={"Name": "old", "Script": "echo from-sh; exit 0", "Interval": "200ms", "ServiceID": "web-1"},
    )
    assert r.status_code == 200, r.text
    assert wait_check_status(scripted, "old", "passing")["Output"] == "from-sh\n"
    health = c.health.service("web")[1]
    assert {ch["CheckID"] for ch in health[0]["Checks"]} >= {"service:web-1", "old"}


def test_a_script_past_its_timeout_is_critical(scripted):
    r = scripted.put(
        "/v1/agent/check/register",
        json={"Name": "slow", "Args": ["/bin/sh", "-c", "sleep 30"], "Interval": "200ms", "Timeout": "300ms"},
    )
    assert r.status_code == 200, r.text
    # Registered critical, the first run's result writes its output.
    check = wait_for(
        lambda: (agent_check(scripted, "slow") or {}).get("Output") and agent_check(scripted, "slow"),
        message=lambda: f"the slow check to report (now {agent_check(scripted, 'slow')})",
    )
    assert (check["Status"], check["Output"]) == ("critical", "Timed out (300ms) running check")


def test_script_checks_are_refused_without_the_flag(atoll_factory):
    inst = atoll_factory.start("plain")
    c = inst.consul
    with pytest.raises(consul.ConsulException) as refused:
        c.agent.check.register("script", check=consul.Check.script(["/bin/true"], "1s"))
    assert SCRIPTS_DISABLED in str(refused.value)
    for path, body in [
        ("/v1/agent/check/register", {"Name": "s", "Args": ["/bin/true"], "Interval": "1s"}),
        ("/v1/agent/check/register", {"Name": "s", "Script": "true", "Interval": "1s"}),
        (
            "/v1/agent/check/register",
            {"Name": "d", "DockerContainerID": "abc", "Args": ["true"], "Interval": "1s"},
        ),
        (
            "/v1/agent/service/register",
            {"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "1s"}},
        ),
    ]:
        r = inst.put(path, json=body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert r.json()["error"] == SCRIPTS_DISABLED, r.text
    assert inst.get_json("/v1/agent/checks") == {}
    assert inst.get_json("/v1/agent/services") == {}


def test_grpc_and_h2ping_checks_are_refused_naming_the_field(atoll):
    for field in ("GRPC", "H2PING"):
        r = atoll.put("/v1/agent/check/register", json={"Name": "x", field: "127.0.0.1:1", "Interval": "1s"})
        assert r.status_code == 400, r.text
        assert r.json()["field"] == f"Check.{field}", r.text
    assert atoll.get_json("/v1/agent/checks") == {}


class RecordingServer:
    """A local HTTP(S) server that records requests and answers with a status we set."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.status = 200
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": [(k.lower(), v) for k, v in self.headers.items()],
                        "body": body,
                    }
                )
                answer = b"answered"
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        if context is not None:
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self.httpd, self.port = httpd, httpd.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_check_sends_method_headers_and_body(atoll):
    with RecordingServer() as server:
        url = f"http://127.0.0.1:{server.port}/health"
        r = atoll.put(
            "/v1/agent/check/register",
            json={
                "Name": "post",
                "HTTP": url,
                "Method": "POST",
                "Header": {"X-Probe": ["one", "two"]},
                "Body": '{"ping": true}',
                "Interval": "200ms",
            },
        )
        assert r.status_code == 200, r.text
        check = wait_check_status(atoll, "post", "passing")
        assert check["Output"] == f"HTTP POST {url}: 200 OK Output: answered"
        seen = wait_for(lambda: [q for q in list(server.requests) if q["method"] == "POST"], message="a POST")[0]
        assert seen["path"] == "/health"
        assert [v for k, v in seen["headers"] if k == "x-probe"] == ["one", "two"]
        assert seen["body"] == b'{"ping": true}'

        # py-consul's own HTTP check, with its header map.
        c = atoll.consul
        check = consul.Check.http(url + "?py", "200ms", header={"X-Client": ["py-consul"]})
        assert c.agent.check.register("py", check=check, check_id="py")
        wait_check_status(atoll, "py", "passing")
        seen = wait_for(
            lambda: [q for q in list(server.requests) if q["path"] == "/health?py"], message="py-consul's GET"
        )[0]
        assert seen["method"] == "GET"
        assert ("x-client", "py-consul") in seen["headers"]

        server.status = 429
        wait_check_status(atoll, "post", "warning")
        server.status = 503
        check = wait_check_status(atoll, "post", "critical")
        assert check["Output"] == f"HTTP POST {url}: 503 Service Unavailable Output: answered"


def self_signed_context(directory: Path) -> ssl.SSLContext:
    openssl = require_tool("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    proc = subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=atoll-e2e.test", "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_https_check_with_tls_skip_verify(atoll, tmp_path):
    with RecordingServer(self_signed_context(tmp_path)) as server:
        url = f"https://127.0.0.1:{server.port}/secure"
        base = {"HTTP": url, "Interval": "200ms"}
        r = atoll.put(
            "/v1/agent/check/register",
            json={**base, "Name": "skip", "TLSSkipVerify": True, "TLSServerName": "atoll-e2e.test"},
        )
        assert r.status_code == 200, r.text
        r = atoll.put("/v1/agent/check/register", json={**base, "Name": "verify"})
        assert r.status_code == 200, r.text
        check = wait_check_status(atoll, "skip", "passing")
        assert check["Output"] == f"HTTP GET {url}: 200 OK Output: answered"
        # Without TLSSkipVerify the self-signed certificate is refused.
        wait_for(
            lambda: (agent_check(atoll, "verify") or {}).get("Output", "").startswith(f"GET {url}:"),
            message=lambda: f"the verifying check to fail its handshake (now {agent_check(atoll, 'verify')})",
        )
        assert agent_check(atoll, "verify")["Status"] == "critical"
        assert all(q["path"] == "/secure" for q in server.requests)


def wait_threshold(inst, control: ExitFile, code: int, reached: str, before: str) -> None:
    """Waits for check `counted` to become `reached` once three runs exited with `code`.

    The status is read first and the runs after, so a status seen `reached` must have had
    three such runs before it; and the check must be seen still `before` after one or two
    of them, or the threshold held nothing back."""
    held = []

    def reached_after_three():
        status = agent_check(inst, "counted")["Status"]
        runs = control.runs(code)
        if status == reached:
            assert runs >= 3, f"{reached} after {runs} runs exiting {code}"
            return True
        assert status == before, status
        if 1 <= runs <= 2:
            held.append(runs)
        return False

    wait_for(reached_after_three, timeout=30, interval=0.05, message=f"the check to become {reached} after three runs")
    assert held, f"the check became {reached} without the threshold holding it"


def test_success_before_passing_and_failures_before_critical(scripted, tmp_path):
    control = ExitFile(tmp_path, 0)
    r = scripted.put(
        "/v1/agent/check/register",
        json={
            "Name": "counted",
            "Args": control.args,
            "Interval": "1s",
            "SuccessBeforePassing": 3,
            "FailuresBeforeCritical": 3,
        },
    )
    assert r.status_code == 200, r.text

    wait_threshold(scripted, control, code=0, reached="passing", before="critical")
    control.set(2)
    wait_threshold(scripted, control, code=2, reached="critical", before="passing")
    assert agent_check(scripted, "counted")["Output"] == "exit code 2\n"


def test_without_thresholds_one_failure_is_critical(scripted, tmp_path):
    control = ExitFile(tmp_path, 0)
    assert scripted.consul.agent.check.register(
        "single", check=consul.Check.script(control.args, "200ms"), check_id="single"
    )
    wait_check_status(scripted, "single", "passing")
    control.set(2)
    wait_check_status(scripted, "single", "critical")
    assert control.runs(2) >= 1


def test_docker_check_runs_in_the_container(scripted):
    from apps_util import build_web_images, docker, require_docker

    require_docker()
    image = build_web_images()["v1"]
    name = f"atoll-e2e-check-{secrets.token_hex(4)}"
    container = docker("run", "-d", "--name", name, image).strip()
    try:
        c = scripted.consul
        check = consul.Check.docker(container, "/bin/sh", "test -f /www/index.html && echo present", "300ms")
        assert c.agent.check.register("docker", check=check, check_id="docker")
        found = wait_check_status(scripted, "docker", "passing", timeout=20)
        assert found["Output"] == "present\n"
        assert found["Type"] == "docker"
        for args, status in ([["exit 1"], "warning"], [["echo gone; exit 3"], "critical"]):
            r = scripted.put(
                "/v1/agent/check/register",
                json={"Name": "docker-args", "DockerContainerID": container, "Args": args, "Interval": "300ms"},
            )
            assert r.status_code == 200, r.text
            wait_check_status(scripted, "docker-args", status, timeout=20)
        assert agent_check(scripted, "docker-args")["Output"] == "gone\n"
        # A container that is not there: critical, saying why.
        r = scripted.put(
            "/v1/agent/check/register",
            json={"Name": "nowhere", "DockerContainerID": f"{name}-missing", "Args": ["true"], "Interval": "300ms"},
        )
        assert r.status_code == 200, r.text
        check = wait_for(
            lambda: (agent_check(scripted, "nowhere") or {}).get("Output"),
            timeout=20,
            message="the missing container's check to report",
        )
        assert agent_check(scripted, "nowhere")["Status"] == "critical", check
    finally:
        docker("rm", "-f", container, check=False)
