"""Shared helpers for the Python benchmarks: start atoll, talk raw HTTP/1.1.

Standard library only. Everything targets 127.0.0.1; the only process ever
signalled is the atoll this module started, by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Never route the benchmark's own requests through an HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def atoll_bin() -> str:
    return os.environ.get("ATOLL_BIN") or str(REPO_ROOT / "target" / "release" / "atoll")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def free_port() -> int:
    """A port free for TCP and UDP on 127.0.0.1."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def proc_status_kb(pid: int, field: str) -> int | None:
    """A /proc/PID/status field such as VmRSS or VmHWM, in kB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fmt_mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


class Atoll:
    """An atoll to benchmark: the one in ATOLL_HTTP, or `atoll dev` started here.

    ATOLL_HTTP is host:port or http://host:port; ATOLL_PID (optional) names
    its process so memory can be read from /proc. `args`, then ATOLL_ARGS,
    add flags to the `atoll dev` started here.
    """

    def __init__(self, args: tuple[str, ...] = ()) -> None:
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path: str | None = None
        self._log = None

    def __enter__(self) -> "Atoll":
        external = os.environ.get("ATOLL_HTTP")
        if external:
            hostport = external.split("://", 1)[-1].rstrip("/")
            host, _, port = hostport.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)
            if os.environ.get("ATOLL_PID"):
                self.pid = int(os.environ["ATOLL_PID"])
            self.wait_ready()
            return self
        binary = atoll_bin()
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"atoll binary not found at {binary} (build it or set ATOLL_BIN)")
        self.port = free_port()
        dns_port = free_port()
        while dns_port == self.port:
            dns_port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="atoll-bench-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self.proc = subprocess.Popen(
            [binary, "dev", "--http-addr", f"127.0.0.1:{self.port}",
             "--dns-addr", f"127.0.0.1:{dns_port}", "--node", "bench", "--serf-wan-port", "0",
             *self.args, *shlex.split(os.environ.get("ATOLL_ARGS", ""))],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Ready when /v1/status/leader returns a non-empty JSON string."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit("atoll exited before becoming ready:\n" + self.log_tail())
            try:
                with _OPENER.open(self.base_url + "/v1/status/leader", timeout=1) as r:
                    if json.loads(r.read() or b'""'):
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise SystemExit("atoll not ready after %.0f s\n%s" % (timeout, self.log_tail()))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
            if self.log_path:
                try:
                    os.unlink(self.log_path)
                except OSError:
                    pass

    def rss_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmRSS") if self.pid else None


class HTTPError(Exception):
    pass


def build_request(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: atoll-bench\r\n"
    if body or method in ("PUT", "POST"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, lower-cased headers, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HTTPError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers, then the final blank line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304) or status < 200:
        body = b""
    else:
        body = await reader.read()
    return status, headers, body


def response_keeps_alive(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() != "close"


def http_get_json(base_url: str, path: str, timeout: float = 10.0):
    """A plain GET returning (parsed JSON, headers)."""
    with _OPENER.open(base_url + path, timeout=timeout) as r:
        return json.loads(r.read() or b"null"), dict(r.headers)


def http_put(base_url: str, path: str, body: bytes, timeout: float = 10.0) -> int:
    req = urllib.request.Request(base_url + path, data=body, method="PUT")
    with _OPENER.open(req, timeout=timeout) as r:
        r.read()
        return r.status
