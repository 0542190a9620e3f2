"""Mutual TLS on the RPC port (--verify-incoming, --verify-outgoing, --verify-server-hostname),
with certificates made by `atoll tls`: three servers form and serve writes; a node with a
certificate of another CA, one without TLS, and one holding a client certificate but asking to
be a server are refused and stay out, saying why; a compute node with a client certificate
joins; certificates replaced and reloaded on SIGHUP under a write load fail no request, and the
listener presents the new certificate to new connections. TLS files without a --verify-* flag
offer TLS beside plain TCP. `--encrypt` authenticates RPC when no TLS and no secret file are
given.

Every node is a real `atoll agent` process on its own loopback IP (cluster_util).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import requests

from cluster_util import Cluster, Node, assert_one_leader, run_cli, wait_kv
from conftest import stays, wait_for
from test_tls import Pki

REFUSED_FOR = 4.0  # how long the strangers must stay out while they keep asking
MTLS = ["--verify-incoming", "--verify-outgoing", "--verify-server-hostname"]
# The rotation's write loop: bounded in count and in time.
ROTATION_WRITES = 300
ROTATION_DEADLINE = 60.0


def node_files(pki: Pki, kind: str, directory: Path) -> tuple[Path, Path]:
    """A new certificate of `kind` from `pki`, copied to `directory` under fixed names (so a
    test can replace it there): the certificate's path and its key's."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = pki.cert(kind)
    cert_file, key_file = directory / "node.pem", directory / "node-key.pem"
    # Replaced whole, as an operator's tooling would: a reload never reads half a file.
    for source, target in ((cert, cert_file), (key, key_file)):
        staged = target.with_suffix(".new")
        shutil.copyfile(source, staged)
        os.replace(staged, target)
    return cert_file, key_file


def tls_args(pki: Pki, kind: str, directory: Path, verify: list[str] = MTLS) -> list[str]:
    cert, key = node_files(pki, kind, directory)
    return ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-file", str(pki.ca), *verify]


def mtls_cluster(new_cluster, pki: Pki, label: str) -> tuple[Cluster, Node]:
    cluster = new_cluster(label)
    for server in cluster.add_servers(3):
        server.extra_args = tls_args(pki, "server", server.workdir / "tls")
    cluster.start()
    return cluster, assert_one_leader(cluster, voters=3)


def presented_certificate(node: Node, pki: Pki, client: tuple[Path, Path]) -> bytes:
    """The certificate `node`'s RPC port presents to a new TLS connection (ALPN h2)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    context.load_cert_chain(str(client[0]), str(client[1]))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((node.ip, int(node.rpc_addr.rsplit(":", 1)[1])), timeout=5.0) as tcp:
        with context.wrap_socket(tcp, server_hostname="server.dc1.consul") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            return tls.getpeercert(binary_form=True)


def der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_mutual_tls_cluster_forms_and_refuses_impostors(new_cluster, pool, tmp_path):
    pki = Pki(tmp_path / "pki")
    cluster, leader = mtls_cluster(new_cluster, pki, "mtls")
    cluster.write_anywhere("mtls/first", "one")
    for server in cluster.servers:
        wait_kv(server, "mtls/first", "one")

    # Plain TCP on the RPC port is answered 401 saying TLS is required.
    r = requests.post(f"http://{leader.rpc_addr}/cluster/hello", json={}, timeout=5.0)
    assert r.status_code == 401 and "requires TLS" in r.text, (r.status_code, r.text)

    # Three strangers, each asking to be a server. Not added to `cluster`: its checks look
    # at the members only.
    other_ca = Pki(tmp_path / "other-pki")
    join = [s.ip for s in cluster.servers]
    strangers: dict[str, tuple[Node, str]] = {}
    for name, args, why in (
        ("other-ca", lambda d: tls_args(other_ca, "server", d), "TLS handshake failed"),
        ("no-tls", lambda d: [], "requires TLS"),
        ("client-cert", lambda d: tls_args(pki, "client", d), "valid for server.dc1.consul"),
    ):
        ip = pool.take()
        workdir = cluster.root / f"stranger-{name}"
        node = Node(cluster.root, f"mtls-{name}", ip, server=True, join=join, bootstrap_expect=3,
                    extra_args=args(workdir / "tls"), wrap=pool.wrap(ip))
        strangers[name] = (node, why)
    try:
        for node, _ in strangers.values():
            node.spawn()
        for node, why in strangers.values():
            wait_for(lambda: why in node.output(), timeout=20.0,
                     message=lambda: f"{node.name} to log {why!r}\n{node.logs()}")
        # The servers say whom they refused and why.
        wait_for(lambda: any("refused an RPC request" in s.output() and "server.dc1.consul" in s.output()
                             for s in cluster.servers), timeout=15.0,
                 message=lambda: f"a server to log the refused claim\n{cluster.logs()}")

        def stay_out() -> bool:
            members = leader.members()
            peers = leader.peers()
            for node, _ in strangers.values():
                assert node.running(), node.logs()
                if node.name in members or node.rpc_addr in peers or node.leader() != "":
                    return False
            return True

        stays(stay_out, REFUSED_FOR, message=lambda: f"the strangers to stay out\n{cluster.logs()}")
        # The cluster kept serving.
        cluster.write_anywhere("mtls/second", "two")
        for server in cluster.servers:
            wait_kv(server, "mtls/second", "two")
    finally:
        for node, _ in strangers.values():
            node.close()

    # A compute node holding a client certificate joins as what it is.
    client = cluster.add_client("c1")
    client.extra_args = tls_args(pki, "client", client.workdir / "tls")
    cluster.start([client])
    wait_for(lambda: client.name in leader.members(), timeout=20.0,
             message=lambda: f"{client.name} to join\n{client.logs()}")
    assert client.rpc_addr not in leader.peers()
    wait_kv(client, "mtls/second", "two")
    # Its writes reach the leader over TLS.
    r = client.kv_put("mtls/from-client", "three", timeout=10.0)
    assert r.status_code == 200, r.text
    wait_kv(leader, "mtls/from-client", "three")


def test_certificates_rotate_on_sighup_under_writes(new_cluster, tmp_path):
    pki = Pki(tmp_path / "pki")
    cluster, leader = mtls_cluster(new_cluster, pki, "mtls-rot")
    probe = node_files(pki, "client", tmp_path / "probe")
    before = {s.name: presented_certificate(s, pki, probe) for s in cluster.servers}
    for server in cluster.servers:
        assert before[server.name] == der_of(server.workdir / "tls" / "node.pem")

    failures: list[str] = []
    done = {"writes": 0}
    stop = threading.Event()

    def write_load() -> None:
        deadline = time.monotonic() + ROTATION_DEADLINE
        for i in range(ROTATION_WRITES):
            if stop.is_set() or time.monotonic() > deadline:
                return
            # Round-robin: a follower forwards the write to the leader over RPC.
            server = cluster.servers[i % len(cluster.servers)]
            try:
                r = server.kv_put(f"rot/{i}", str(i), timeout=10.0)
                if r.status_code != 200:
                    failures.append(f"{server.name} rot/{i}: {r.status_code} {r.text}")
            except requests.RequestException as e:
                failures.append(f"{server.name} rot/{i}: {e}")
            done["writes"] = i + 1
            time.sleep(0.01)

    writer = threading.Thread(target=write_load, daemon=True)
    writer.start()
    try:
        wait_for(lambda: done["writes"] >= 30, timeout=30.0, message="the write load to start")
        # New certificates from the same CA, in place, then SIGHUP every node.
        for server in cluster.servers:
            node_files(pki, "server", server.workdir / "tls")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGHUP)
        for server in cluster.servers:
            wait_for(lambda: "reloaded the TLS certificate" in server.output(), timeout=10.0,
                     message=lambda: f"{server.name} to reload\n{server.logs()}")
        writes_at_reload = done["writes"]
        wait_for(lambda: done["writes"] >= min(ROTATION_WRITES, writes_at_reload + 50), timeout=30.0,
                 message="writes to go on after the reload")
    finally:
        stop.set()
        writer.join(timeout=ROTATION_DEADLINE)
    assert not failures, failures[:5]
    assert done["writes"] > writes_at_reload

    # New connections get the new certificate.
    for server in cluster.servers:
        now = presented_certificate(server, pki, probe)
        assert now == der_of(server.workdir / "tls" / "node.pem")
        assert now != before[server.name]

    # A node joining now handshakes with the new certificates.
    client = cluster.add_client("c1")
    client.extra_args = tls_args(pki, "client", client.workdir / "tls")
    cluster.start([client])
    wait_for(lambda: client.name in leader.members(), timeout=20.0,
             message=lambda: f"{client.name} to join\n{client.logs()}")
    r = client.kv_put("rot/after", "joined", timeout=10.0)
    assert r.status_code == 200, r.text
    for server in cluster.servers:
        wait_kv(server, "rot/after", "joined")


def test_the_encrypt_key_authenticates_rpc(new_cluster, tmp_path):
    key = base64.b64encode(bytes(range(32))).decode()
    cluster = new_cluster("encrypt")
    cluster.add_servers(3, extra_args=["--encrypt", key])
    cluster.start()
    leader = assert_one_leader(cluster, voters=3)
    cluster.write_anywhere("encrypt/first", "one")
    hello = f"http://{leader.rpc_addr}/cluster/hello"
    for headers in ({}, {"Authorization": f"Bearer {key}"}):
        r = requests.post(hello, json={}, headers=headers, timeout=5.0)
        assert r.status_code == 401, (headers, r.status_code, r.text)
    # The bearer is SHA-256 of a fixed label and the key; the key itself never travels.
    bearer = hashlib.sha256(b"atoll cluster RPC bearer v1\0" + bytes(range(32))).hexdigest()
    r = requests.post(hello, json={}, headers={"Authorization": f"Bearer {bearer}"}, timeout=5.0)
    assert r.status_code not in (401, 404), r.text
    for server in cluster.servers:
        assert key not in server.output()

    for bad, expected in (("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "5 bytes")):
        proc = run_cli("agent", "--server", "--bootstrap-expect", "1", "--data-dir", str(tmp_path / "data"),
                       "--encrypt", bad, timeout=20.0)
        assert proc.returncode != 0, proc
        assert "--encrypt" in proc.stderr and expected in proc.stderr, proc.stderr


def test_tls_files_without_verify_flags_offer_tls_beside_plain(new_cluster, tmp_path):
    """Consul's default: TLS offered, required of no one. Servers with files but no --verify-*
    flag dial plain TCP, and their RPC port takes both plain and TLS connections."""
    pki = Pki(tmp_path / "pki")
    cluster = new_cluster("mtls-offered")
    for server in cluster.add_servers(3):
        server.extra_args = tls_args(pki, "server", server.workdir / "tls", verify=[])
    cluster.start()
    leader = assert_one_leader(cluster, voters=3)
    cluster.write_anywhere("offered/first", "one")
    for server in cluster.servers:
        wait_kv(server, "offered/first", "one")
    # Plain TCP reaches the handler (which rejects the empty body), not a refusal.
    r = requests.post(f"http://{leader.rpc_addr}/cluster/hello", json={}, timeout=5.0)
    assert r.status_code not in (401, 403, 404), (r.status_code, r.text)
    # A TLS client without a certificate is let in too, and sees the server's certificate.
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((leader.ip, int(leader.rpc_addr.rsplit(":", 1)[1])), timeout=5.0) as tcp:
        with context.wrap_socket(tcp, server_hostname="server.dc1.consul") as tls:
            assert tls.getpeercert(binary_form=True) == der_of(leader.workdir / "tls" / "node.pem")
