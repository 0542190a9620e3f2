"""What a node's data dir holds, as an operator asks for it: the HTTP report and the CLI."""

from __future__ import annotations

import json
import subprocess

import requests

from conftest import require_binary, wait_for


def test_storage_report_follows_writes_and_snapshots(atoll_factory):
    inst = atoll_factory.start("storage", extra_args=["--snapshot-after-entries", "50"])
    before = inst.get_json("/v1/operator/raft/storage")
    for key in ("Path", "FileBytes", "AllocatedBytes", "StoredBytes", "LogEntries", "LogFirstIndex",
                "LogLastIndex", "LogBytes", "SnapshotIndex", "SnapshotBytes"):
        assert key in before, f"{key} missing from {before}"
    assert before["Path"].endswith("atoll.redb")
    assert before["FileBytes"] > 0
    assert before["AllocatedBytes"] <= before["FileBytes"]
    # One at a time, so each write is its own entry; enough that the log before a snapshot,
    # beyond the 256 entries kept after it, is purged (256 at a time).
    for i in range(700):
        r = requests.put(inst.url(f"/v1/kv/storage/{i:04d}"), data=b"x" * 200, timeout=10)
        assert r.status_code == 200, r.text

    def snapshotted():
        report = inst.get_json("/v1/operator/raft/storage")
        moved = report["SnapshotIndex"] > before["LogLastIndex"] and report["LogFirstIndex"] > 0
        return report if moved else None

    after = wait_for(snapshotted, timeout=20, message="a snapshot and a purged log after 700 writes")
    assert after["LogLastIndex"] >= before["LogLastIndex"] + 700
    assert after["SnapshotBytes"] > 500 * 200, after
    assert after["LogEntries"] == after["LogLastIndex"] - after["LogFirstIndex"] + 1

    cli = subprocess.run([str(require_binary()), "operator", "raft", "storage", "--http-addr", inst.http_addr],
                         capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert cli.returncode == 0, cli.stderr
    for label in ("File size", "In use", "Raft log", "Snapshot"):
        assert label in cli.stdout, cli.stdout
    as_json = subprocess.run([str(require_binary()), "operator", "raft", "storage", "--http-addr", inst.http_addr,
                              "--json"], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["Path"] == after["Path"]


def test_storage_cli_against_nothing_fails_clearly():
    cli = subprocess.run([str(require_binary()), "operator", "raft", "storage", "--http-addr", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert cli.returncode != 0
    assert cli.stderr.strip(), "no message on stderr"
