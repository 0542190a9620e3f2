#!/usr/bin/env python3
"""ACL replication: how long a token made (or deleted) in the primary takes to work (or stop
working) in a secondary datacenter.

    python3 bench/acl_replication.py [-n 50]

Starts two federated datacenters on loopback with the end-to-end suite's harness
(tests/e2e/federation_util.py: one server each, dc1 on 127.0.1.1, dc2 on 127.0.2.1), ACLs
on with default deny, dc1 the primary, dc2 replicating with the bootstrap token. Then N
times: create a global token in dc1, and time until dc2 resolves it
(`/v1/acl/token/self`, polled every 2 ms over a keep-alive connection); then delete it in
dc1 and time until dc2 refuses it. Prints p50/p99/max of both. The replication is a
blocking query on the primary's ACL index, so the figure is one WAN round trip, one Raft
write in dc2 and the polling resolution.

Environment: N, ATOLL_BIN (default target/release/atoll), ATOLL_E2E_FED_NET.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from benchlib import env_int, percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from conftest import wait_for  # noqa: E402
from federation_util import FORM_TIMEOUT, Federation  # noqa: E402

LIMIT = 30.0  # one change must reach dc2 within this
POLL = 0.002


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=env_int("N", 50))
    args = parser.parse_args()
    boot = str(uuid.uuid4())
    header = {"X-Consul-Token": boot}
    with tempfile.TemporaryDirectory(prefix="atoll-aclrep-") as root:
        fed = Federation(Path(root), layout=(("dc1", 1, 0), ("dc2", 1, 0)))
        for node in fed.nodes:
            node.extra_args += ["--acl-enabled", "--acl-default-policy", "deny", "--primary-datacenter", "dc1"]
        fed["dc2"].server.extra_args += ["--acl-replication-token", boot]
        try:
            for node in fed.nodes:
                node.spawn()
            wait_for(lambda: all(dc.cluster.agreement() for dc in fed.dcs.values()), timeout=FORM_TIMEOUT,
                     interval=0.1, message="a leader in each datacenter")
            dc1, dc2 = fed["dc1"].server, fed["dc2"].server
            wait_for(lambda: "dc1" in dc2.get_json("/v1/catalog/datacenters"), timeout=60, interval=0.25,
                     message="dc2 to know dc1")
            dc1.put("/v1/acl/bootstrap", json={"BootstrapSecret": boot}, timeout=10).raise_for_status()
            session = requests.Session()
            wait_for(lambda: session.get(dc2.url("/v1/acl/token/self"), headers=header, timeout=5).ok,
                     timeout=LIMIT, interval=0.05, message="the bootstrap token in dc2")
            create_lag, delete_lag = [], []
            for _ in range(args.n):
                r = requests.put(dc1.url("/v1/acl/token"), headers=header, timeout=10,
                                 json={"Policies": [{"Name": "global-management"}]})
                r.raise_for_status()
                created = time.monotonic()
                token = r.json()
                create_lag.append(_until(session, dc2.url("/v1/acl/token/self"), token["SecretID"], 200) - created)
                requests.delete(dc1.url(f"/v1/acl/token/{token['AccessorID']}"), headers=header,
                                timeout=10).raise_for_status()
                deleted = time.monotonic()
                delete_lag.append(_until(session, dc2.url("/v1/acl/token/self"), token["SecretID"], 403) - deleted)
        finally:
            fed.close()
    for name, lags in (("create -> works in dc2", create_lag), ("delete -> refused in dc2", delete_lag)):
        ms = sorted(lag * 1000 for lag in lags)
        print(f"{name}: n={len(ms)} p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
              f"max {ms[-1]:.1f} ms")
    return 0


def _until(session: requests.Session, url: str, secret: str, status: int) -> float:
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if session.get(url, headers={"X-Consul-Token": secret}, timeout=5).status_code == status:
            return time.monotonic()
        time.sleep(POLL)
    raise SystemExit(f"no {status} within {LIMIT}s")


if __name__ == "__main__":
    sys.exit(main())
