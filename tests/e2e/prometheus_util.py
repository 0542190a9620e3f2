"""A real `prometheus` process for the tests that scrape or discover through it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import requests

from conftest import GiveUp, free_port, require_tool, stop_process, wait_for

READY_TIMEOUT = 60.0


def prometheus_binary() -> str:
    """PROMETHEUS_BIN, else the `prometheus` on PATH (missing: skip locally, fail in CI)."""
    return os.environ.get("PROMETHEUS_BIN") or require_tool("prometheus", "/usr/bin/prometheus")


@contextlib.contextmanager
def running_prometheus(directory: Path, scrape_configs: str) -> Iterator[tuple[str, Path]]:
    """Runs prometheus with a 1 s scrape interval and `scrape_configs` (YAML, the list under
    `scrape_configs:`, indented two spaces) until the block ends; yields its base URL and the
    path of its log. GiveUp, with the log's tail, when it exits or is not ready in time."""
    exe = prometheus_binary()
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n" + scrape_configs
    )
    log_path = directory / "prometheus.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [exe, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={directory / 'tsdb'}", "--log.level=info"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=directory,
        )

        def ready() -> bool:
            if proc.poll() is not None:
                raise GiveUp(f"prometheus exited {proc.returncode}:\n"
                             f"{log_path.read_text(errors='replace')[-3000:]}")
            return requests.get(f"{base}/-/ready", timeout=2).status_code == 200

        try:
            wait_for(ready, timeout=READY_TIMEOUT, interval=0.2, message="prometheus /-/ready")
            yield base, log_path
        finally:
            stop_process(proc)
