#!/usr/bin/env python3
"""What ACLs and TLS cost: KV writes/s and reads/s with each on, against the same run without.

Two `atoll dev` processes, each with a data dir of its own: one with ACLs off serving plain
HTTP and HTTPS (certificates made by `atoll tls`), one with ACLs on, the default policy deny,
and the requests carrying a token whose only rule is `key_prefix "bench/" { policy = "write" }`.
The load comes from ApacheBench (`ab`, C, keep-alive), so the client's own TLS and HTTP costs
stay small next to the server's. Phases are interleaved (plain, ACL, TLS; ROUNDS times) so
every configuration sees the same machine; the figure of each is its median over the rounds.
Besides the rate, the server's CPU time per request (every thread's run time, so the client's
share of the cores does not count) and ab's own.

Environment / flags: N (--count, requests per phase, default 20000), K (--concurrency, 16),
ROUNDS (--rounds, 3), ATOLL_BIN. Needs `ab` (Debian: apache2-utils).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from benchlib import Atoll, atoll_bin, env_int, free_port

RULES = 'key_prefix "bench/" { policy = "write" }'
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def make_certificates(directory: Path) -> tuple[Path, Path]:
    """A CA and a server certificate made by `atoll tls`: (certificate, key)."""
    for args in (["tls", "ca", "create"], ["tls", "cert", "create", "--server", "--dc", "dc1"]):
        subprocess.run([atoll_bin(), *args], cwd=directory, check=True, capture_output=True,
                       timeout=60)
    return directory / "dc1-server-consul-0.pem", directory / "dc1-server-consul-0-key.pem"


def call(base: str, method: str, path: str, body: dict | None = None,
         token: str | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("X-Consul-Token", token)
    with _OPENER.open(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


def bench_token(base: str) -> str:
    """Bootstraps the ACL system and makes the token the load carries."""
    management = call(base, "PUT", "/v1/acl/bootstrap")["SecretID"]
    call(base, "PUT", "/v1/acl/policy", {"Name": "bench", "Rules": RULES}, management)
    token = call(base, "PUT", "/v1/acl/token", {"Description": "bench",
                                                 "Policies": [{"Name": "bench"}]}, management)
    return token["SecretID"]


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid` has used: the sum of its threads' run time in
    /proc/PID/task/*/schedstat (nanoseconds), else its user and system time in clock ticks
    (1/100 s: a phase of 30,000 reads at 15 us each is 45 ticks, too coarse)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
        if total:
            return total / 1e9
    except FileNotFoundError:
        pass
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User and system CPU time of the ended child processes (ab) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ab(url: str, count: int, concurrency: int, token: str | None, body: Path | None) -> float:
    """Requests/s of one ab run; fails on any failed or non-2xx request."""
    cmd = ["ab", "-q", "-k", "-n", str(count), "-c", str(concurrency), "-s", "30"]
    if token:
        cmd += ["-H", f"X-Consul-Token: {token}"]
    if body is not None:
        cmd += ["-u", str(body), "-T", "application/octet-stream"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    rate = re.search(r"Requests per second:\s+([\d.]+)", text)
    failed = re.search(r"Failed requests:\s+(\d+)", text)
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", text)
    if out.returncode != 0 or not rate or (failed and int(failed.group(1))) or non_2xx:
        raise SystemExit(f"ab failed against {url}:\n{text[-2000:]}")
    return float(rate.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", "-n", type=int, default=env_int("N", 20000))
    p.add_argument("--concurrency", "-k", type=int, default=env_int("K", 16))
    p.add_argument("--rounds", type=int, default=env_int("ROUNDS", 3))
    args = p.parse_args()
    if not shutil.which("ab"):
        raise SystemExit("ab not found (Debian: apt-get install apache2-utils)")
    with tempfile.TemporaryDirectory(prefix="atoll-bench-security-") as directory:
        directory = Path(directory)
        cert, key = make_certificates(directory)
        body = directory / "value"
        body.write_bytes(b"x" * 100)
        https_port = free_port()
        plain_args = ("--data-dir", str(directory / "plain"), "--https-addr",
                      f"127.0.0.1:{https_port}", "--tls-cert-file", str(cert),
                      "--tls-key-file", str(key))
        acl_args = ("--data-dir", str(directory / "acl"), "--acl-enabled",
                    "--acl-default-policy", "deny")
        os.environ.pop("ATOLL_ARGS", None)
        with Atoll(args=plain_args) as plain, Atoll(args=acl_args) as secured:
            token = bench_token(secured.base_url)
            targets = {
                "plain HTTP": (plain.base_url, None, plain.pid),
                "ACLs (deny, prefix rule)": (secured.base_url, token, secured.pid),
                "TLS (HTTPS)": (f"https://127.0.0.1:{https_port}", None, plain.pid),
            }
            print(f"{args.count} requests per phase over {args.concurrency} keep-alive"
                  f" connections, {args.rounds} rounds, ab as the client\n")
            figures: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            client: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for what, path, payload in (("KV writes", "/v1/kv/bench/key", body),
                                            ("KV reads", "/v1/kv/bench/key", None)):
                    for name, (base, tok, pid) in targets.items():
                        before, client_before = cpu_seconds(pid), children_cpu_seconds()
                        figures.setdefault((what, name), []).append(
                            ab(base + path, args.count, args.concurrency, tok, payload))
                        cpu.setdefault((what, name), []).append(
                            (cpu_seconds(pid) - before) / args.count * 1e6)
                        client.setdefault((what, name), []).append(
                            (children_cpu_seconds() - client_before) / args.count * 1e6)
            # Three figures: the rate (client and server share the cores, so the client's own
            # TLS work lowers it too), the server's CPU time per request (its cost alone) and
            # ab's (the client's share of the cores).
            for what in ("KV writes", "KV reads"):
                base_rate = statistics.median(figures[(what, "plain HTTP")])
                base_cpu = statistics.median(cpu[(what, "plain HTTP")])
                for name in targets:
                    rates = figures[(what, name)]
                    rate = statistics.median(rates)
                    used = statistics.median(cpu[(what, name)])
                    line = (f"{what:<10} {name:<26} {rate:>9,.0f}/s (runs: "
                            f"{', '.join(f'{r:,.0f}' for r in rates)}); server CPU"
                            f" {used:5.1f} us/request (runs: "
                            f"{', '.join(f'{c:.1f}' for c in cpu[(what, name)])}), ab"
                            f" {statistics.median(client[(what, name)]):4.1f} us")
                    if name != "plain HTTP":
                        line += (f"   cost: rate {(1 - rate / base_rate) * 100:+.1f}%,"
                                 f" server CPU {(used / base_cpu - 1) * 100:+.1f}%")
                    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
