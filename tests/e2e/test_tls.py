"""HTTPS: certificates made by `atoll tls`, served by `atoll dev --https-addr`, used by curl,
py-consul and atoll's own CLI; client certificates with --verify-incoming; certificates
replaced on SIGHUP without a restart."""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import requests

from conftest import Atoll, consul, free_port, require, require_binary, require_tool, wait_for

# The rotation's request loop: bounded in count and in time.
ROTATION_REQUESTS = 400
ROTATION_DEADLINE = 30.0


def atoll_cli(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    for name in ("CONSUL_HTTP_ADDR", "ATOLL_HTTP_ADDR", "CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"):
        full_env.pop(name, None)
    full_env.update(env or {})
    result = subprocess.run(
        [str(require_binary()), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, f"atoll {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


class Pki:
    """A CA and the certificates it signed, made by `atoll tls` in `dir`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        atoll_cli("tls", "ca", "create", cwd=self.dir)
        self.ca = self.dir / "consul-agent-ca.pem"

    def cert(self, kind: str) -> tuple[Path, Path]:
        """A new certificate of `kind` (server, client, cli): its file and its key's."""
        before = set(self.dir.iterdir())
        atoll_cli("tls", "cert", "create", f"--{kind}", "--dc", "dc1", cwd=self.dir)
        made = sorted(set(self.dir.iterdir()) - before)
        key = next(p for p in made if p.name.endswith("-key.pem"))
        cert = next(p for p in made if not p.name.endswith("-key.pem"))
        return cert, key


class TlsAgent:
    """An `atoll dev` with an HTTPS listener; its certificate files live under its own names,
    so a test can replace them."""

    def __init__(self, factory, pki: Pki, name: str, verify_incoming: bool = False, extra: tuple = ()) -> None:
        self.pki = pki
        self.https_port = free_port()
        self.cert_file = pki.dir / f"{name}-server.pem"
        self.key_file = pki.dir / f"{name}-server-key.pem"
        cert, key = pki.cert("server")
        os.replace(cert, self.cert_file)
        os.replace(key, self.key_file)
        args = [
            "--https-addr",
            f"127.0.0.1:{self.https_port}",
            "--tls-cert-file",
            str(self.cert_file),
            "--tls-key-file",
            str(self.key_file),
            "--tls-ca-file",
            str(pki.ca),
            *extra,
        ]
        if verify_incoming:
            args.append("--verify-incoming")
        self.inst: Atoll = factory.start(name, temp_data_dir=True, extra_args=args)

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def replace_certificate(self) -> Path:
        """Writes a new certificate and key over the served ones; answers the new one."""
        cert, key = self.pki.cert("server")
        os.replace(key, self.key_file)
        os.replace(cert, self.cert_file)
        return self.cert_file


def client_context(ca: Path, identity: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if identity is not None:
        context.load_cert_chain(str(identity[0]), str(identity[1]))
    return context


def presented_certificate(port: int, context: ssl.SSLContext) -> tuple[bytes, str]:
    """The DER and the serial of the certificate a new connection is shown."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True), tls.getpeercert()["serialNumber"]


def der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def http_over(tls: ssl.SSLSocket, path: str) -> str:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tls.recv(4096)
        if not chunk:
            break
        head += chunk
    return head.decode(errors="replace")


def refused(call) -> bool:
    """Whether the server refused the connection (a TLS alert, a reset, or a closed stream)."""
    try:
        call()
    except (ssl.SSLError, ConnectionError, OSError, requests.exceptions.SSLError, requests.exceptions.ConnectionError):
        return True
    return False


def test_curl_py_consul_and_the_cli_speak_https(atoll_factory, tmp_path):
    curl = require_tool("curl")
    require(consul is not None, "python package py-consul not installed")
    pki = Pki(tmp_path / "pki")
    agent = TlsAgent(atoll_factory, pki, "https")

    out = subprocess.run(
        [curl, "-sS", "--cacert", str(pki.ca), agent.https_url + "/v1/status/leader"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith('"127.0.0.1:'), out.stdout

    c = consul.Consul(host="127.0.0.1", port=agent.https_port, scheme="https", verify=str(pki.ca))
    assert c.kv.put("tls/key", "over-https") is True
    _, entry = c.kv.get("tls/key")
    assert entry["Value"] == b"over-https"
    # The same state over plain HTTP: one API, two listeners.
    assert agent.inst.get_json("/v1/kv/tls/key")[0]["Key"] == "tls/key"

    # The same limits as over plain HTTP: a body over 1 MiB is a 413 (curl asks with
    # `Expect: 100-continue` and gets it before sending the body).
    big = tmp_path / "big"
    big.write_bytes(b"x" * (1024 * 1024 + 1))
    out = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki.ca), "-X", "PUT",
         "--data-binary", f"@{big}", agent.https_url + "/v1/kv/tls/big"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.stdout == "413", (out.stdout, out.stderr)

    # A client that does not trust the CA refuses the server.
    assert refused(lambda: requests.get(agent.https_url + "/v1/status/leader", timeout=5))

    members = atoll_cli("members", "--http-addr", agent.https_url, "--ca-file", str(pki.ca), cwd=tmp_path)
    assert agent.inst.node in members.stdout
    # CONSUL_HTTP_ADDR and CONSUL_CACERT, as Consul's CLI reads them.
    members = atoll_cli("members", cwd=tmp_path, env={"CONSUL_HTTP_ADDR": agent.https_url, "CONSUL_CACERT": str(pki.ca)})
    assert agent.inst.node in members.stdout
    # The name checked can be another of the certificate's (Consul's -tls-server-name).
    named = atoll_cli("members", "--http-addr", agent.https_url, "--ca-file", str(pki.ca),
                      "--tls-server-name", "server.dc1.consul", cwd=tmp_path)
    assert agent.inst.node in named.stdout
    misnamed = atoll_cli("members", "--http-addr", agent.https_url, "--ca-file", str(pki.ca),
                         "--tls-server-name", "client.dc1.consul", cwd=tmp_path, check=False)
    assert misnamed.returncode != 0 and "client.dc1.consul" in misnamed.stderr, misnamed.stderr
    untrusted = atoll_cli("members", "--http-addr", agent.https_url, cwd=tmp_path, check=False)
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr, untrusted.stderr


def test_verify_incoming_requires_a_client_certificate_of_the_ca(atoll_factory, tmp_path):
    require(consul is not None, "python package py-consul not installed")
    pki = Pki(tmp_path / "pki")
    agent = TlsAgent(atoll_factory, pki, "mtls", verify_incoming=True)
    client_cert, client_key = pki.cert("client")

    c = consul.Consul(
        host="127.0.0.1", port=agent.https_port, scheme="https", verify=str(pki.ca),
        cert=(str(client_cert), str(client_key)),
    )
    assert c.kv.put("mtls/key", "with-a-client-certificate") is True
    _, entry = c.kv.get("mtls/key")
    assert entry["Value"] == b"with-a-client-certificate"

    # No client certificate: the handshake is refused.
    anonymous = consul.Consul(host="127.0.0.1", port=agent.https_port, scheme="https", verify=str(pki.ca))
    assert refused(lambda: anonymous.kv.get("mtls/key"))
    # A client certificate of another CA: refused too.
    other = Pki(tmp_path / "other-pki")
    stranger = other.cert("client")
    assert refused(
        lambda: requests.get(agent.https_url + "/v1/kv/mtls/key", verify=str(pki.ca),
                             cert=(str(stranger[0]), str(stranger[1])), timeout=5)
    )

    ok = atoll_cli(
        "members", "--http-addr", agent.https_url, "--ca-file", str(pki.ca),
        "--client-cert", str(client_cert), "--client-key", str(client_key), cwd=tmp_path,
    )
    assert agent.inst.node in ok.stdout
    by_env = atoll_cli(
        "members", cwd=tmp_path,
        env={
            "CONSUL_HTTP_ADDR": agent.https_url, "CONSUL_CACERT": str(pki.ca),
            "CONSUL_CLIENT_CERT": str(client_cert), "CONSUL_CLIENT_KEY": str(client_key),
        },
    )
    assert agent.inst.node in by_env.stdout
    without = atoll_cli("members", "--http-addr", agent.https_url, "--ca-file", str(pki.ca), cwd=tmp_path, check=False)
    assert without.returncode != 0


def test_sighup_rotates_the_certificate_without_dropping_requests(atoll_factory, tmp_path):
    pki = Pki(tmp_path / "pki")
    agent = TlsAgent(atoll_factory, pki, "rotate")
    context = client_context(pki.ca)
    old_der, old_serial = presented_certificate(agent.https_port, context)
    assert old_der == der_of(agent.cert_file)

    # A connection opened before the rotation, used after it.
    raw = socket.create_connection(("127.0.0.1", agent.https_port), timeout=5)
    kept = context.wrap_socket(raw, server_hostname="localhost")

    failures: list[str] = []
    done = threading.Event()
    count = 0

    def load() -> None:
        nonlocal count
        deadline = time.monotonic() + ROTATION_DEADLINE
        # A new connection for each request, so that each one handshakes with whatever
        # certificate is current.
        while count < ROTATION_REQUESTS and time.monotonic() < deadline and not done.is_set():
            try:
                r = requests.get(agent.https_url + "/v1/status/leader", verify=str(pki.ca), timeout=5,
                                 headers={"Connection": "close"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text}")
            except requests.RequestException as exc:
                failures.append(repr(exc))
            count += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        # Requests before, during and after the rotation.
        wait_for(lambda: count >= 10, timeout=10, message="requests before the rotation")
        new_cert = agent.replace_certificate()
        new_der = der_of(new_cert)
        assert new_der != old_der
        agent.inst.send_signal(signal.SIGHUP)
        wait_for(lambda: presented_certificate(agent.https_port, context)[0] == new_der, timeout=10,
                 message="a new connection never saw the new certificate")
        _, new_serial = presented_certificate(agent.https_port, context)
        assert new_serial != old_serial
        after_switch = count
        wait_for(lambda: count >= after_switch + 10 or not worker.is_alive(), timeout=10,
                 message="requests after the rotation")
    finally:
        done.set()
        worker.join(timeout=ROTATION_DEADLINE + 10)
    assert not worker.is_alive()
    assert count > 0
    assert not failures, f"{len(failures)} of {count} requests failed during the rotation: {failures[:3]}"
    # The connection opened before still works, with the certificate it started with.
    assert kept.getpeercert(binary_form=True) == old_der
    assert http_over(kept, "/v1/status/leader").startswith("HTTP/1.1 200")
    kept.close()
    assert agent.inst.running()


def test_a_bad_file_on_reload_keeps_the_old_certificate(atoll_factory, tmp_path):
    pki = Pki(tmp_path / "pki")
    agent = TlsAgent(atoll_factory, pki, "badreload")
    context = client_context(pki.ca)
    before, _ = presented_certificate(agent.https_port, context)
    agent.cert_file.write_text("not a certificate\n")
    agent.inst.send_signal(signal.SIGHUP)
    wait_for(lambda: "cannot reload the TLS certificate" in agent.inst.stderr(), timeout=10,
             message="no error logged for the bad file")
    assert "--tls-cert-file" in agent.inst.stderr()
    after, _ = presented_certificate(agent.https_port, context)
    assert after == before
    assert agent.inst.running()
    # `PUT /v1/agent/reload` (consul reload) reads the files too, and says what failed.
    r = agent.inst.put("/v1/agent/reload")
    assert r.status_code == 500 and "--tls-cert-file" in r.text, (r.status_code, r.text)
    assert presented_certificate(agent.https_port, context)[0] == before
    new = der_of(agent.replace_certificate())
    r = agent.inst.put("/v1/agent/reload")
    assert r.status_code == 200, r.text
    assert presented_certificate(agent.https_port, context)[0] == new


def _start_failure(tmp_path: Path, args: list[str]) -> str:
    """Starts a dev agent that must refuse to start; answers its stderr."""
    http_port = free_port()
    dns_port = free_port(udp_too=True, exclude=[http_port])
    result = subprocess.run(
        [str(require_binary()), "dev", "--http-addr", f"127.0.0.1:{http_port}",
         "--dns-addr", f"127.0.0.1:{dns_port}", "--serf-wan-port", "0", *args],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_bad_tls_files_stop_the_start_naming_the_flag(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.cert("server")
    _, other_key = pki.cert("server")
    https = ["--https-addr", f"127.0.0.1:{free_port()}"]
    missing = _start_failure(tmp_path, [*https, "--tls-cert-file", str(cert), "--tls-key-file", str(tmp_path / "nope.pem")])
    assert "--tls-key-file" in missing and "nope.pem" in missing, missing
    mismatched = _start_failure(tmp_path, [*https, "--tls-cert-file", str(cert), "--tls-key-file", str(other_key)])
    assert "--tls-key-file" in mismatched and "not the key" in mismatched, mismatched
    not_a_cert = _start_failure(tmp_path, [*https, "--tls-cert-file", str(key), "--tls-key-file", str(key)])
    assert "--tls-cert-file" in not_a_cert, not_a_cert
    bad_ca = _start_failure(tmp_path, [*https, "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                       "--tls-ca-file", str(key), "--verify-incoming"])
    assert "--tls-ca-file" in bad_ca, bad_ca
    no_https = _start_failure(tmp_path, ["--tls-cert-file", str(cert)])
    assert "--https-addr" in no_https, no_https
    no_ca = _start_failure(tmp_path, [*https, "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--verify-incoming"])
    assert "--tls-ca-file" in no_ca, no_ca


def test_plain_http_can_be_turned_off(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.cert("server")
    https_port = free_port()
    dns_port = free_port(udp_too=True, exclude=[https_port])
    proc = subprocess.Popen(
        [str(require_binary()), "dev", "--http-addr", "off", "--https-addr", f"127.0.0.1:{https_port}",
         "--dns-addr", f"127.0.0.1:{dns_port}", "--serf-wan-port", "0",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    try:
        def leader() -> bool:
            try:
                r = requests.get(f"https://127.0.0.1:{https_port}/v1/status/leader", verify=str(pki.ca), timeout=2)
                return r.status_code == 200 and bool(r.json())
            except requests.RequestException:
                return False

        wait_for(leader, timeout=20, message="the HTTPS-only agent never had a leader")
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    assert b"HTTP API: off" in out, out


def test_ca_commands_refuse_to_overwrite(tmp_path):
    atoll_cli("tls", "ca", "create", cwd=tmp_path)
    again = atoll_cli("tls", "ca", "create", cwd=tmp_path, check=False)
    assert again.returncode != 0
    assert "already exists" in again.stderr, again.stderr
    assert (tmp_path / "consul-agent-ca-key.pem").stat().st_mode & 0o777 == 0o600
    atoll_cli("tls", "cert", "create", "--client", "--dc", "dc1", cwd=tmp_path)
    atoll_cli("tls", "cert", "create", "--client", "--dc", "dc1", cwd=tmp_path)
    assert (tmp_path / "dc1-client-consul-1.pem").exists()
    assert (tmp_path / "dc1-client-consul-1-key.pem").stat().st_mode & 0o777 == 0o600
    key = atoll_cli("keygen", cwd=tmp_path).stdout.strip()
    assert len(base64.b64decode(key)) == 32


def test_a_client_that_never_finishes_its_handshake_is_disconnected(atoll_factory, tmp_path):
    pki = Pki(tmp_path / "pki")
    agent = TlsAgent(atoll_factory, pki, "silent", extra=("--http-header-timeout", "1"))
    with socket.create_connection(("127.0.0.1", agent.https_port), timeout=10) as silent:
        # Half a ClientHello's record header, then nothing.
        silent.sendall(b"\x16\x03")
        # The server closes it after the header timeout (1 s); recv gives up after 10 s.
        assert silent.recv(1024) == b""
    # Others are still served.
    _, serial = presented_certificate(agent.https_port, client_context(pki.ca))
    assert serial


def test_a_new_data_dir_is_private(atoll_factory, tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    inst = atoll_factory.start("private", data_dir=data_dir)
    assert inst.get_json("/v1/status/leader")
    assert data_dir.stat().st_mode & 0o777 == 0o700
