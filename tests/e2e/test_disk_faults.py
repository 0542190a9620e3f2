"""Disk faults: a data dir that fills up, a damaged database file, a server that lost its data.

* A full data dir: the leader refuses writes with 507 while its file system is below the
  reserve, serves reads, takes writes again once space is freed (no restart), and loses
  nothing it acknowledged. A disk that fills past the reserve under the Raft log stops the
  node (exit 74, a message naming the file); a restart then recovers every acknowledged
  write.
* A truncated or overwritten `atoll.redb`: the node refuses to start, names the file and what
  to do, and exits non-zero without a panic backtrace.
* The remedy it names: a server whose data dir was wiped rejoins its cluster with a new Raft
  id, catches up, and replaces its old id as a voter.

The file-system tests mount a small tmpfs of their own (root only) and unmount it in
`finally`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import requests

from cluster_util import Cluster, session_pool
from conftest import require, require_binary, require_tool, wait_for

MIB = 1024 * 1024
DB_FILE = "atoll.redb"
# Exit status of a node whose Raft storage failed (EX_IOERR).
EXIT_STORAGE_FAILED = 74
REMEDY = "move the data dir away"


@contextmanager
def small_filesystem(root: Path, size_mb: int):
    """A tmpfs of `size_mb` MiB mounted on a fresh directory under `root`."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mount = require_tool("mount")
    umount = require_tool("umount")
    point = root / f"atoll-disk-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "atoll-e2e-disk", str(point)],
                   check=True, capture_output=True)
    try:
        yield point
    finally:
        subprocess.run([umount, str(point)], check=True, capture_output=True)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(point: Path, leave_free: int) -> Path:
    """Writes a filler file until about `leave_free` bytes stay free on the file system."""
    filler = point / "filler"
    chunk = b"\0" * MIB
    with open(filler, "wb") as out:
        while free_bytes(point) - len(chunk) > leave_free:
            out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        rest = free_bytes(point) - leave_free
        if rest > 0:
            out.write(b"\0" * rest)
    return filler


def put(inst, key: str, value: bytes, timeout: float = 5.0) -> requests.Response:
    return inst.put(f"/v1/kv/{key}", data=value, timeout=timeout)


def assert_all_present(inst, acked: dict[str, bytes]) -> None:
    for key, value in acked.items():
        r = inst.get(f"/v1/kv/{key}?raw", timeout=5)
        assert r.status_code == 200 and r.content == value, f"acknowledged {key} lost: {r.status_code}"


def assert_refused_to_start(inst, what: str) -> str:
    inst.spawn()
    code = inst.wait_exit(20)
    assert code is not None, f"node started on a damaged data dir ({what})\n{inst.logs()}"
    err = inst.stderr()
    assert code != 0, f"exit status 0 on a damaged data dir ({what})\n{err}"
    assert DB_FILE in err and REMEDY in err and "catches up by snapshot" in err, err
    assert "panicked" not in err and "RUST_BACKTRACE" not in err, err
    return err


# ---------------------------------------------------------------------------
# a data dir that fills up


def test_full_data_dir_refuses_writes_with_507_and_takes_them_again_once_space_is_freed(atoll_factory, tmp_path):
    with small_filesystem(tmp_path, 64) as point:
        inst = atoll_factory.start("full", data_dir=point / "data", extra_args=["--disk-reserve-mb", "16"])
        try:
            acked: dict[str, bytes] = {}
            for i in range(20):
                value = f"before-{i}".encode()
                r = put(inst, f"disk/before/{i}", value)
                assert r.status_code == 200 and r.json() is True, r.text
                acked[f"disk/before/{i}"] = value

            filler = fill(point, leave_free=8 * MIB)
            for i in range(5):
                r = put(inst, f"disk/refused/{i}", b"x")
                assert r.status_code == 507, f"write on a full data dir: {r.status_code} {r.text}"
                message = r.json()["error"]
                assert "insufficient storage" in message and str(point / "data") in message, message
            # A registration is a write like any other, and Marathon says the same.
            r = inst.put("/v1/agent/service/register", json={"Name": "refused", "Port": 1}, timeout=5)
            assert r.status_code == 507, r.text
            app = {"id": "/refused", "cmd": "sleep 100", "cpus": 0.1, "mem": 16, "instances": 1}
            r = inst.post("/v2/apps", json=app, timeout=5)
            assert r.status_code == 507 and "insufficient storage" in r.text, r.text
            # Reads go on.
            assert inst.get("/v1/kv/disk/before/3?raw", timeout=5).content == b"before-3"
            assert inst.running(), "the node stopped on a full data dir\n" + inst.logs()

            filler.unlink()
            r = put(inst, "disk/after", b"after")
            assert r.status_code == 200 and r.json() is True, f"write once space was freed: {r.text}"
            acked["disk/after"] = b"after"
            for i in range(5):
                assert inst.get(f"/v1/kv/disk/refused/{i}", timeout=5).status_code == 404

            inst.restart()
            assert_all_present(inst, acked)
        finally:
            inst.close()


def test_disk_filling_under_the_raft_log_stops_the_node_and_a_restart_loses_nothing(atoll_factory, tmp_path):
    value = b"v" * (64 * 1024)
    with small_filesystem(tmp_path, 48) as point:
        # No reserve: the Raft log itself meets the full disk.
        inst = atoll_factory.start("enospc", data_dir=point / "data", extra_args=["--disk-reserve-mb", "0"])
        try:
            filler = fill(point, leave_free=4 * MIB)
            acked: dict[str, bytes] = {}
            for i in range(400):  # 25 MiB at most: several times what is free
                key = f"enospc/{i}"
                try:
                    r = put(inst, key, value)
                except requests.RequestException:
                    break  # the node stopped while answering
                if r.status_code != 200 or r.json() is not True:
                    break  # the first failed write: the node must now stop
                acked[key] = value
            code = inst.wait_exit(15)
            assert code == EXIT_STORAGE_FAILED, (
                f"the node should stop on a write error of its Raft log, got {code} after "
                f"{len(acked)} writes\n{inst.logs()}")
            err = inst.stderr()
            assert DB_FILE in err and "No space left on device" in err, err
            assert "panicked" not in err, err
            assert acked, "no write was acknowledged before the disk filled"

            filler.unlink()
            inst.restart()
            assert_all_present(inst, acked)
            r = put(inst, "enospc/after", b"after")
            assert r.status_code == 200 and r.json() is True, r.text
        finally:
            inst.close()


# ---------------------------------------------------------------------------
# a damaged database file

MARKER = "diskfault-marker"


def _node_with_data(atoll_factory, name: str):
    inst = atoll_factory.start(name)
    for i in range(50):
        r = put(inst, f"{MARKER}-{i:04d}", f"value-{i}".encode())
        assert r.status_code == 200 and r.json() is True, r.text
    assert inst.stop() == 0
    return inst


def test_truncated_database_file_refuses_to_start_naming_the_file_and_the_remedy(atoll_factory):
    inst = _node_with_data(atoll_factory, "truncated")
    path = inst.data_dir / DB_FILE
    size = path.stat().st_size
    os.truncate(path, size // 2)
    assert_refused_to_start(inst, "truncated")
    assert path.stat().st_size == size // 2, "a refused start must not write to the file"


def test_overwritten_bytes_in_the_database_refuse_to_start(atoll_factory):
    inst = _node_with_data(atoll_factory, "overwritten")
    path = inst.data_dir / DB_FILE
    data = bytearray(path.read_bytes())
    # Overwrite every stored copy of the keys (log entries, in the middle of the file) with
    # bytes that are neither valid JSON nor match any page checksum.
    hits = 0
    start = data.find(MARKER.encode())
    while start != -1:
        data[start:start + len(MARKER)] = b"\xff" * len(MARKER)
        hits += 1
        start = data.find(MARKER.encode(), start + 1)
    assert hits >= 50, f"expected the keys in the file, found {hits}"
    path.write_bytes(bytes(data))
    assert_refused_to_start(inst, "overwritten")

    # The remedy the message names: with the data dir moved away the node starts (empty).
    moved = inst.data_dir.with_name(inst.data_dir.name + ".damaged")
    inst.data_dir.rename(moved)
    inst.start()
    assert inst.get(f"/v1/kv/{MARKER}-0001", timeout=5).status_code == 404
    assert (moved / DB_FILE).exists()


# ---------------------------------------------------------------------------
# the remedy in a cluster: a server with an empty data dir rejoins and catches up


def test_server_with_a_wiped_data_dir_rejoins_catches_up_and_replaces_its_old_id(tmp_path):
    require_binary()
    cluster = Cluster(tmp_path, session_pool(), "wiped")
    try:
        # Compact early, so the wiped server can only catch up by snapshot.
        cluster.add_servers(3, extra_args=["--snapshot-after-entries", "16"])
        cluster.start()
        victim = cluster.followers()[0]
        cluster.write_anywhere("wiped/before", "1")
        victim.kill9()
        for i in range(40):
            cluster.write_anywhere(f"wiped/away/{i}", str(i))
        shutil.rmtree(victim.data_dir)
        victim.spawn()
        wait_for(lambda: victim.kv_get("wiped/away/39", mode="stale") == "39", timeout=30, interval=0.2,
                 message=lambda: f"{victim.name} with an empty data dir to catch up\n" + cluster.logs())
        assert victim.kv_get("wiped/before", mode="stale") == "1"
        # Its old id is gone from the configuration: three voters, the new one among them.
        cluster.wait_converged(voters=3)
        # And it really votes: with the other follower gone, the leader and it are a quorum.
        leader = cluster.leader()
        other = next(s for s in cluster.servers if s is not leader and s is not victim)
        other.kill9()
        cluster.write_anywhere("wiped/quorum", "ok", timeout=15)
        # Committed means stored on both; the follower applies it once the leader's next
        # message tells it the entry is committed, so its own read may trail the answer.
        wait_for(lambda: victim.kv_get("wiped/quorum", mode="stale") == "ok", timeout=5, interval=0.05,
                 message=lambda: f"{victim.name} to apply the write it voted for\n" + cluster.logs())
    finally:
        cluster.close()
