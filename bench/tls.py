#!/usr/bin/env python3
"""KV reads/s and writes/s over HTTPS against plain HTTP, in the same run of one `atoll dev`.

The certificates are made by `atoll tls` in a temporary directory; the agent serves both
listeners. Each phase sends N requests over K keep-alive connections (bounded in count and
time), first over HTTP, then over HTTPS, so both see the same state and machine load. A last
pair of phases opens a new connection for every read, which shows what a handshake costs.

Environment / flags: N (--count, default 5000), K (--concurrency, default 16),
MAX_SECONDS (--max-seconds, default 60 per phase), ATOLL_BIN.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import Atoll, atoll_bin, build_request, env_float, env_int, free_port, percentile
from register import Phase, run_phase


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate made by `atoll tls`: (CA, certificate, key)."""
    for args in (["tls", "ca", "create"], ["tls", "cert", "create", "--server", "--dc", "dc1"]):
        subprocess.run([atoll_bin(), *args], cwd=directory, check=True, capture_output=True, timeout=60)
    return (directory / "consul-agent-ca.pem", directory / "dc1-server-consul-0.pem",
            directory / "dc1-server-consul-0-key.pem")


def summary(phase: Phase, elapsed: float) -> str:
    lat = sorted(phase.latencies)
    failed = sum(phase.errors.values())
    rate = (len(lat) - sum(v for k, v in phase.errors.items() if k.startswith("HTTP"))) / elapsed
    line = (f"{phase.name:<34} {rate:>9,.0f}/s   p50 {percentile(lat, 50) * 1000:6.2f} ms"
            f"   p99 {percentile(lat, 99) * 1000:6.2f} ms")
    if len(lat) < phase.count:
        line += f"   (time bound: {phase.count - len(lat)} not sent)"
    if failed:
        line += f"   errors {phase.errors}; first: {phase.first_error_detail}"
    return line


async def compare(args, atoll: Atoll, https_port: int, context: ssl.SSLContext) -> None:
    hosthdr = "localhost"
    listeners = [("HTTP ", atoll.port, None), ("HTTPS", https_port, context)]

    def put(i: int) -> bytes:
        return build_request("PUT", f"/v1/kv/bench/key-{i % 1000}", hosthdr, f"value-{i}".encode())

    def get(i: int) -> bytes:
        return build_request("GET", f"/v1/kv/bench/key-{i % 1000}", hosthdr)

    def get_closing(i: int) -> bytes:
        request = build_request("GET", f"/v1/kv/bench/key-{i % 1000}", hosthdr)
        return request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)

    for name, port, tls in listeners:
        await run_phase(Phase("warm-up", 200, put), atoll.host, port, 4, 10, tls)
    for label, make, count in (("KV writes", put, args.count), ("KV reads", get, args.count),
                               ("KV reads, new connection each", get_closing, max(1, args.count // 5))):
        for name, port, tls in listeners:
            phase = Phase(f"{label} {name}", count, make)
            elapsed = await run_phase(phase, atoll.host, port, args.concurrency, args.max_seconds, tls)
            print(summary(phase, elapsed))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", "-n", type=int, default=env_int("N", 5000))
    p.add_argument("--concurrency", "-k", type=int, default=env_int("K", 16))
    p.add_argument("--max-seconds", type=float, default=env_float("MAX_SECONDS", 60.0))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="atoll-bench-tls-") as directory:
        ca, cert, key = make_certificates(Path(directory))
        https_port = free_port()
        os.environ["ATOLL_ARGS"] = " ".join([
            os.environ.get("ATOLL_ARGS", ""), "--https-addr", f"127.0.0.1:{https_port}",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key)])
        context = ssl.create_default_context(cafile=str(ca))
        with Atoll() as atoll:
            print(f"atoll at {atoll.base_url} and https://127.0.0.1:{https_port} (pid {atoll.pid});"
                  f" {args.count} requests per phase over {args.concurrency} connections\n")
            asyncio.run(compare(args, atoll, https_port, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
