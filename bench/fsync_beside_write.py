#!/usr/bin/env python3
"""How long a small durable write waits while a large file is written beside it.

    bench/fsync_beside_write.py [--dir D] [--mib N] [--sync-every-mib S] [--rounds R]

A thread writes 4 KiB and `fdatasync`s it in a loop (the Raft log's commits), while the
main thread writes N MiB (512) to another file in the same directory (a snapshot), either
synced once at the end (S = 0) or every S MiB as well. Reports, per round, the time of the
large write and the small syncs' p50, p99 and max. This is what `SYNC_EVERY` in
crates/raft/src/snapshot_file.rs is about: unsynced, the large file's dirty pages are
flushed in one go at its final sync, and the small syncs queue behind that flush.
Files are made in a temporary dir under --dir (default: the system's temporary dir) and
removed after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time


def one_round(where: str, mib: int, sync_every: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    stop = threading.Event()
    small_path = os.path.join(where, "small")
    big_path = os.path.join(where, "big")

    def small_syncs() -> None:
        fd = os.open(small_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while not stop.is_set():
                t = time.monotonic()
                os.pwrite(fd, b"x" * 4096, 0)
                os.fdatasync(fd)
                latencies.append(time.monotonic() - t)
                time.sleep(0.001)
        finally:
            os.close(fd)

    thread = threading.Thread(target=small_syncs, daemon=True)
    thread.start()
    time.sleep(0.5)
    block = os.urandom(1 << 20)
    started = time.monotonic()
    fd = os.open(big_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for n in range(1, mib + 1):
            os.write(fd, block)
            if sync_every and n % sync_every == 0:
                os.fdatasync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    took = time.monotonic() - started
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=10)
    os.unlink(big_path)
    os.unlink(small_path)
    return took, sorted(latencies)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=None)
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--sync-every-mib", type=int, action="append",
                   help="0 = only at the end; may be given more than once (default: 0 and 8)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    modes = args.sync_every_mib or [0, 8]
    with tempfile.TemporaryDirectory(prefix="atoll-fsync-", dir=args.dir) as where:
        for _ in range(args.rounds):
            for every in modes:
                took, lat = one_round(where, args.mib, every)
                label = "once at the end" if every == 0 else f"every {every} MiB"
                if not lat:
                    print(f"{args.mib} MiB synced {label}: no small sync finished")
                    continue
                pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000  # noqa: E731
                print(f"{args.mib} MiB synced {label}: written in {took:.2f} s; "
                      f"{len(lat)} small syncs, p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms,"
                      f" max {lat[-1] * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
