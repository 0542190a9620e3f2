"""DNS interface: Consul's names over UDP and TCP, checked with dnspython, dig and dnsperf."""

from __future__ import annotations

import random
import re
import socket
import struct
import subprocess
import time

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from conftest import free_port, require_tool, stop_process, wait_for

# What a Consul client sees: runs against a cluster's client node too (ATOLL_E2E_TARGET=cluster).
pytestmark = pytest.mark.client_api

TIMEOUT = 3.0


# ---------------------------------------------------------------------------
# helpers


def query(inst, name, rdtype="A", tcp=False, **make_kwargs):
    q = dns.message.make_query(name, rdtype, **make_kwargs)
    if tcp:
        return dns.query.tcp(q, inst.dns_host, timeout=TIMEOUT, port=inst.dns_port)
    return dns.query.udp(q, inst.dns_host, timeout=TIMEOUT, port=inst.dns_port)


def records(msg, section="answer", rdtype=None):
    out = []
    for rrset in getattr(msg, section):
        if rdtype is not None and rrset.rdtype != dns.rdatatype.from_text(rdtype):
            continue
        for rd in rrset:
            out.append((rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl, rd))
    return out


def addresses(msg, rdtype="A"):
    return sorted(rd.address for _, _, _, rd in records(msg, "answer", rdtype))


def soa_in_authority(msg):
    return [rd for _, t, _, rd in records(msg, "authority") if t == "SOA"]


def dig(inst, *args):
    exe = require_tool("dig")
    cmd = [exe, f"@{inst.dns_host}", "-p", str(inst.dns_port), "+time=3", "+tries=1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def register(inst, **body):
    inst.register_service(body)


def wait_dns(inst, name, predicate, rdtype="A", timeout=10.0, what=None):
    return wait_for(
        lambda: (lambda m: m if predicate(m) else None)(query(inst, name, rdtype)),
        timeout=timeout,
        interval=0.1,
        message=what or f"DNS {name} {rdtype}",
    )


@pytest.fixture
def dns_atoll(atoll):
    """atoll with a small, healthy service layout."""
    register(atoll, ID="web-1", Name="web", Port=8080, Tags=["primary", "v1"])
    register(atoll, ID="web-2", Name="web", Port=8081, Tags=["secondary"], Address="127.0.0.2")
    register(atoll, ID="v6-1", Name="v6svc", Port=9090, Address="::1")
    wait_dns(atoll, "web.service.consul", lambda m: len(addresses(m)) == 2, what="web A records")
    return atoll


def node_target(inst):
    return f"{inst.node}.node.dc1.consul."


def node_and(inst, *others):
    """The agent node's own address with `others`, in the order addresses() returns them."""
    return sorted([inst.node_address, *others])


# ---------------------------------------------------------------------------
# name forms


def test_service_a_records(dns_atoll):
    r = query(dns_atoll, "web.service.consul")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA, "answers for the Consul domain are authoritative"
    assert r.flags & dns.flags.QR
    assert not r.flags & dns.flags.RA, "no recursor configured: recursion is not available"
    assert addresses(r) == node_and(dns_atoll, "127.0.0.2")
    assert {name for name, *_ in records(r)} == {"web.service.consul."}


def test_service_a_over_tcp(dns_atoll):
    r = query(dns_atoll, "web.service.consul", tcp=True)
    assert addresses(r) == node_and(dns_atoll, "127.0.0.2")


def test_dnspython_resolver(dns_atoll):
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [dns_atoll.dns_host]
    res.port = dns_atoll.dns_port
    res.lifetime = TIMEOUT
    answer = res.resolve("web.service.consul", "A")
    assert sorted(rd.address for rd in answer) == node_and(dns_atoll, "127.0.0.2")
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("nothing-here.service.consul", "A")


def test_service_srv_targets_and_additional(dns_atoll):
    r = query(dns_atoll, "web.service.consul", "SRV")
    assert r.rcode() == dns.rcode.NOERROR
    srv = {rd.port: rd for _, _, _, rd in records(r, "answer", "SRV")}
    assert set(srv) == {8080, 8081}
    # Instance on the node's own address: target is the node name.
    assert srv[8080].target.to_text().lower() == node_target(dns_atoll).lower()
    # Instance with its own address: target is the hex-encoded .addr name.
    assert srv[8081].target.to_text().lower() == "7f000002.addr.dc1.consul."
    for rd in srv.values():
        assert rd.priority == 1 and rd.weight == 1
    extra = {name: rd.address for name, t, _, rd in records(r, "additional") if t == "A"}
    assert extra.get(node_target(dns_atoll).lower()) == dns_atoll.node_address, extra
    assert extra.get("7f000002.addr.dc1.consul.") == "127.0.0.2", extra


def test_tag_lookup(dns_atoll):
    r = query(dns_atoll, "primary.web.service.consul")
    assert addresses(r) == [dns_atoll.node_address]
    r = query(dns_atoll, "secondary.web.service.consul", "SRV")
    assert [rd.port for _, _, _, rd in records(r, "answer", "SRV")] == [8081]
    r = query(dns_atoll, "nosuchtag.web.service.consul")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert not r.answer


def test_rfc2782_lookup(dns_atoll):
    r = query(dns_atoll, "_web._primary.service.consul", "SRV")
    assert [rd.port for _, _, _, rd in records(r, "answer", "SRV")] == [8080]
    # _tcp means "no tag filter".
    r = query(dns_atoll, "_web._tcp.service.consul", "SRV")
    assert sorted(rd.port for _, _, _, rd in records(r, "answer", "SRV")) == [8080, 8081]
    r = query(dns_atoll, "_web._secondary.service.dc1.consul", "SRV")
    assert [rd.port for _, _, _, rd in records(r, "answer", "SRV")] == [8081]


def test_datacenter_qualified_lookup(dns_atoll):
    r = query(dns_atoll, "web.service.dc1.consul")
    assert addresses(r) == node_and(dns_atoll, "127.0.0.2")
    r = query(dns_atoll, "primary.web.service.dc1.consul")
    assert addresses(r) == [dns_atoll.node_address]


def test_node_lookup(dns_atoll):
    for name in (f"{dns_atoll.node}.node.consul", f"{dns_atoll.node}.node.dc1.consul"):
        r = query(dns_atoll, name)
        assert r.rcode() == dns.rcode.NOERROR, name
        assert addresses(r) == [dns_atoll.node_address], name
    r = query(dns_atoll, "no-such-node.node.consul")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert soa_in_authority(r)


def test_case_insensitive(dns_atoll):
    r = query(dns_atoll, "WeB.SeRvIcE.CoNsUl")
    assert addresses(r) == node_and(dns_atoll, "127.0.0.2")
    r = query(dns_atoll, "PRIMARY.WEB.SERVICE.DC1.CONSUL", "SRV")
    assert [rd.port for _, _, _, rd in records(r, "answer", "SRV")] == [8080]
    r = query(dns_atoll, f"{dns_atoll.node.upper()}.NODE.CONSUL")
    assert addresses(r) == [dns_atoll.node_address]


def test_addr_names_used_as_srv_targets_resolve(dns_atoll):
    # A client following an SRV target asks for the .addr name itself.
    r = query(dns_atoll, "7f000002.addr.dc1.consul")
    assert r.rcode() == dns.rcode.NOERROR, r.to_text()
    assert addresses(r) == ["127.0.0.2"]
    r = query(dns_atoll, "00000000000000000000000000000001.addr.dc1.consul", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR, r.to_text()
    assert addresses(r, "AAAA") == ["::1"]


def test_aaaa_for_ipv6_service(dns_atoll):
    r = query(dns_atoll, "v6svc.service.consul", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r, "AAAA") == ["::1"]
    r = query(dns_atoll, "v6svc.service.consul", "SRV")
    (srv,) = [rd for _, _, _, rd in records(r, "answer", "SRV")]
    assert srv.port == 9090
    target = srv.target.to_text().lower()
    assert target == "00000000000000000000000000000001.addr.dc1.consul.", target
    extra = [(name, rd.address) for name, t, _, rd in records(r, "additional") if t == "AAAA"]
    assert extra == [(target, "::1")]


def test_no_data_answers_have_soa(dns_atoll):
    # The name exists but has no record of that type: NOERROR, empty answer, SOA.
    r = query(dns_atoll, "v6svc.service.consul", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert not records(r, "answer", "A")
    assert soa_in_authority(r)
    r = query(dns_atoll, "web.service.consul", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR
    assert not records(r, "answer", "AAAA")
    assert soa_in_authority(r)


def test_any_query(dns_atoll):
    r = query(dns_atoll, "web.service.consul", "ANY")
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r, "A") == node_and(dns_atoll, "127.0.0.2")
    r = query(dns_atoll, f"{dns_atoll.node}.node.consul", "ANY")
    assert addresses(r, "A") == [dns_atoll.node_address]


def test_nxdomain_has_soa(dns_atoll):
    for name in ("missing.service.consul", "a.b.c.missing.consul", "bogus.consul", "missing.service.dc1.consul"):
        r = query(dns_atoll, name)
        assert r.rcode() == dns.rcode.NXDOMAIN, (name, dns.rcode.to_text(r.rcode()))
        assert not r.answer, name
        soas = soa_in_authority(r)
        assert len(soas) == 1, (name, r.to_text())
        soa = soas[0]
        assert soa.mname.to_text().lower() == "ns.consul."
        assert soa.rname.to_text().lower() == "hostmaster.consul."
        owner = [name for name, t, _, _ in records(r, "authority") if t == "SOA"][0]
        assert owner == "consul."


def test_soa_query_for_the_domain(dns_atoll):
    r = query(dns_atoll, "consul.", "SOA")
    assert r.rcode() == dns.rcode.NOERROR
    soas = [rd for _, t, _, rd in records(r, "answer") if t == "SOA"]
    assert len(soas) == 1
    assert soas[0].mname.to_text().lower() == "ns.consul."


def test_ttls_default_zero(dns_atoll):
    for name, rdtype in [
        ("web.service.consul", "A"),
        ("web.service.consul", "SRV"),
        (f"{dns_atoll.node}.node.consul", "A"),
    ]:
        r = query(dns_atoll, name, rdtype)
        ttls = {ttl for _, _, ttl, _ in records(r)}
        assert ttls == {0}, (name, rdtype, ttls)


def test_configured_ttls(atoll_factory):
    inst = atoll_factory.start("ttl", extra_args=["--dns-service-ttl", "30", "--dns-node-ttl", "20"])
    register(inst, ID="t-1", Name="ttlsvc", Port=1)
    r = wait_dns(inst, "ttlsvc.service.consul", lambda m: bool(addresses(m)))
    assert {ttl for _, _, ttl, _ in records(r)} == {30}
    r = query(inst, "ttlsvc.service.consul", "SRV")
    assert {ttl for _, _, ttl, _ in records(r, "answer")} == {30}
    r = query(inst, f"{inst.node}.node.consul")
    assert {ttl for _, _, ttl, _ in records(r)} == {20}


def test_catalog_registered_external_node(atoll):
    r = atoll.put(
        "/v1/catalog/register",
        json={"Node": "ext-1", "Address": "127.0.0.5", "Service": {"ID": "ext-svc", "Service": "extsvc", "Port": 7000}},
    )
    assert r.status_code == 200, r.text
    r = wait_dns(atoll, "extsvc.service.consul", lambda m: bool(addresses(m)))
    assert addresses(r) == ["127.0.0.5"]
    r = query(atoll, "extsvc.service.consul", "SRV")
    (srv,) = [rd for _, _, _, rd in records(r, "answer", "SRV")]
    assert srv.target.to_text().lower() == "ext-1.node.dc1.consul."
    r = query(atoll, "ext-1.node.consul")
    assert addresses(r) == ["127.0.0.5"]


# ---------------------------------------------------------------------------
# health filtering


def test_failing_ttl_check_removes_instance_from_dns(atoll):
    register(atoll, ID="h-1", Name="hsvc", Port=1, Check={"TTL": "60s"})
    register(atoll, ID="h-2", Name="hsvc", Port=2, Address="127.0.0.2", Check={"TTL": "60s"})
    # TTL checks start critical: nothing to answer yet.
    r = query(atoll, "hsvc.service.consul")
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer, r.to_text()

    for cid in ("service:h-1", "service:h-2"):
        assert atoll.put(f"/v1/agent/check/pass/{cid}").status_code == 200
    wait_dns(atoll, "hsvc.service.consul", lambda m: addresses(m) == node_and(atoll, "127.0.0.2"))

    assert atoll.put("/v1/agent/check/fail/service:h-2").status_code == 200
    wait_dns(atoll, "hsvc.service.consul", lambda m: addresses(m) == [atoll.node_address], what="h-2 out of DNS")
    r = query(atoll, "hsvc.service.consul", "SRV")
    assert [rd.port for _, _, _, rd in records(r, "answer", "SRV")] == [1]

    # Warning is not critical: the instance stays in DNS.
    assert atoll.put("/v1/agent/check/warn/service:h-1").status_code == 200
    assert atoll.put("/v1/agent/check/pass/service:h-2").status_code == 200
    wait_dns(atoll, "hsvc.service.consul", lambda m: addresses(m) == node_and(atoll, "127.0.0.2"))

    assert atoll.put("/v1/agent/check/fail/service:h-1").status_code == 200
    assert atoll.put("/v1/agent/check/fail/service:h-2").status_code == 200
    r = wait_dns(atoll, "hsvc.service.consul", lambda m: m.rcode() == dns.rcode.NXDOMAIN, what="hsvc gone")
    assert soa_in_authority(r)


def test_deregistered_service_leaves_dns(atoll):
    register(atoll, ID="bye-1", Name="bye", Port=1)
    wait_dns(atoll, "bye.service.consul", lambda m: addresses(m) == [atoll.node_address])
    assert atoll.put("/v1/agent/service/deregister/bye-1").status_code == 200
    wait_dns(atoll, "bye.service.consul", lambda m: m.rcode() == dns.rcode.NXDOMAIN, what="bye gone")


# ---------------------------------------------------------------------------
# truncation and TCP fallback


MANY = 30


@pytest.fixture
def many_atoll(atoll):
    for i in range(1, MANY + 1):
        register(atoll, ID=f"many-{i}", Name="many", Port=10000 + i, Address=f"127.0.1.{i}")
    wait_for(
        lambda: len(atoll.get_json("/v1/catalog/service/many")) == MANY,
        message="30 instances of many in the catalog",
    )
    return atoll


def raw_udp(inst, wire, bufsize=65535, timeout=TIMEOUT):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (inst.dns_host, inst.dns_port))
        data, _ = s.recvfrom(bufsize)
        return data


@pytest.mark.parametrize("rdtype", ["A", "SRV"])
def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(many_atoll, rdtype):
    q = dns.message.make_query("many.service.consul", rdtype)  # no EDNS: 512-byte limit
    wire = raw_udp(many_atoll, q.to_wire())
    assert len(wire) <= 512, f"UDP answer of {len(wire)} bytes without EDNS"
    (flags,) = struct.unpack("!H", wire[2:4])
    assert flags & dns.flags.TC, "an answer that does not fit must have TC set"
    partial = dns.message.from_wire(wire, ignore_trailing=True)
    assert partial.id == q.id

    full = dns.query.tcp(q, many_atoll.dns_host, timeout=TIMEOUT, port=many_atoll.dns_port)
    assert not full.flags & dns.flags.TC
    assert full.rcode() == dns.rcode.NOERROR
    if rdtype == "A":
        assert addresses(full) == sorted(f"127.0.1.{i}" for i in range(1, MANY + 1))
    else:
        srv = records(full, "answer", "SRV")
        assert sorted(rd.port for *_, rd in srv) == [10000 + i for i in range(1, MANY + 1)]
        extra = {name: rd.address for name, t, _, rd in records(full, "additional") if t == "A"}
        for *_, rd in srv:
            assert rd.target.to_text().lower() in extra, rd.target

    resp, used_tcp = dns.query.udp_with_fallback(q, many_atoll.dns_host, timeout=TIMEOUT, port=many_atoll.dns_port)
    assert used_tcp
    assert len(records(resp, "answer", rdtype)) == MANY


def test_edns_udp_answer_is_complete_or_truncated(many_atoll):
    q = dns.message.make_query("many.service.consul", "A", use_edns=0, payload=4096)
    wire = raw_udp(many_atoll, q.to_wire())
    r = dns.message.from_wire(wire, ignore_trailing=True)
    if not r.flags & dns.flags.TC:
        assert len(addresses(r)) == MANY, "a UDP answer without TC must be complete"
    assert len(wire) <= 4096


def test_dig_truncation_and_tcp_retry(many_atoll):
    out = dig(many_atoll, "many.service.consul", "A", "+noedns", "+ignore", "+noall", "+comments")
    flags = re.search(r";; flags: ([a-z ]+);", out)
    assert flags and "tc" in flags.group(1).split(), out
    # Without +ignore dig retries over TCP and gets everything.
    out = dig(many_atoll, "many.service.consul", "A", "+noedns", "+short")
    assert sorted(out.split()) == sorted(f"127.0.1.{i}" for i in range(1, MANY + 1))
    out = dig(many_atoll, "many.service.consul", "SRV", "+tcp", "+short")
    assert len(out.strip().splitlines()) == MANY


# ---------------------------------------------------------------------------
# dig


def test_dig_short_answers(dns_atoll):
    assert sorted(dig(dns_atoll, "web.service.consul", "+short").split()) == node_and(dns_atoll, "127.0.0.2")
    assert dig(dns_atoll, "primary.web.service.consul", "+short", "+tcp").split() == [dns_atoll.node_address]
    srv = dig(dns_atoll, "_web._primary.service.consul", "SRV", "+short").split()
    assert srv == ["1", "1", "8080", node_target(dns_atoll)]
    out = dig(dns_atoll, "nope.service.consul")
    assert "status: NXDOMAIN" in out
    assert "AUTHORITY: 1" in out


# ---------------------------------------------------------------------------
# recursors


def _start_dnsmasq(tmp_path):
    exe = require_tool("dnsmasq", "/usr/sbin/dnsmasq")
    port = free_port(udp_too=True)
    log = open(tmp_path / "dnsmasq.log", "wb")
    proc = subprocess.Popen(
        [
            exe,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            "--address=/upstream.test/127.0.0.9",
            "--log-facility=-",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )

    def answers():
        q = dns.message.make_query("x.upstream.test", "A")
        r = dns.query.udp(q, "127.0.0.1", timeout=1, port=port)
        return addresses(r) == ["127.0.0.9"]

    try:
        wait_for(answers, timeout=10, message="dnsmasq to answer")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    return proc, port


def test_recursor_forwards_names_outside_the_domain(atoll_factory, tmp_path):
    upstream, port = _start_dnsmasq(tmp_path)
    try:
        inst = atoll_factory.start("recursing", extra_args=["--recursor", f"127.0.0.1:{port}"])
        r = query(inst, "host.upstream.test")
        assert r.rcode() == dns.rcode.NOERROR, r.to_text()
        assert addresses(r) == ["127.0.0.9"]
        assert r.flags & dns.flags.RA
        r = query(inst, "host.upstream.test", tcp=True)
        assert addresses(r) == ["127.0.0.9"]
        # Consul names are still answered locally.
        r = query(inst, f"{inst.node}.node.consul")
        assert addresses(r) == [inst.node_address]
    finally:
        stop_process(upstream, timeout=10)


def test_names_outside_the_domain_without_recursor(atoll):
    r = query(atoll, "www.example.test")
    assert r.rcode() in (dns.rcode.REFUSED, dns.rcode.SERVFAIL), dns.rcode.to_text(r.rcode())
    assert not r.answer


# ---------------------------------------------------------------------------
# malformed input


def _valid_query_answers(inst):
    """A well-formed query still gets its answer over UDP and TCP.

    Right after a flood the kernel may have dropped our datagram from a full
    socket buffer, so retry like a stub resolver would, up to a deadline; a
    server that stopped serving still fails.
    """
    name = f"{inst.node}.node.consul"

    def ask(tcp):
        q = dns.message.make_query(name, "A")
        if tcp:
            r = dns.query.tcp(q, inst.dns_host, timeout=1.0, port=inst.dns_port)
        else:
            r = dns.query.udp(q, inst.dns_host, timeout=1.0, port=inst.dns_port)
        return addresses(r) == [inst.node_address]

    assert inst.running(), "atoll died"
    wait_for(lambda: ask(False), timeout=10, interval=0.05, message="a valid UDP query to be answered")
    wait_for(lambda: ask(True), timeout=10, interval=0.05, message="a valid TCP query to be answered")
    assert inst.running(), "atoll died"


def _garbage_packets(seed=1234):
    rng = random.Random(seed)
    packets = [b"", b"\x00", b"\x12\x34", b"\x12\x34\x01\x00\x00", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00"]
    # Header says one question, no question follows.
    packets.append(struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0))
    # Huge counts with nothing behind them.
    packets.append(struct.pack("!HHHHHH", 0xBEEF, 0x0100, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF))
    # A label that runs past the end of the packet.
    packets.append(struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x3fabc")
    # A compression pointer pointing at itself (loop).
    packets.append(struct.pack("!HHHHHH", 2, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01")
    # Two pointers pointing at each other.
    packets.append(struct.pack("!HHHHHH", 3, 0x0100, 1, 0, 0, 0) + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01")
    # A pointer past the end.
    packets.append(struct.pack("!HHHHHH", 4, 0x0100, 1, 0, 0, 0) + b"\xc3\xff\x00\x01\x00\x01")
    # Valid question followed by an OPT record claiming a huge rdlength.
    q = dns.message.make_query("web.service.consul", "A").to_wire()
    packets.append(q[:10] + b"\x00\x01" + q[12:] + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\xff\xff")
    # A response (QR set) sent to the server, and an UPDATE opcode.
    resp = bytearray(q)
    resp[2] |= 0x80
    packets.append(bytes(resp))
    upd = bytearray(q)
    upd[2] = (upd[2] & 0x87) | (5 << 3)
    packets.append(bytes(upd))
    # A query truncated at every length.
    packets.extend(q[:n] for n in range(len(q)))
    # Random junk of assorted sizes.
    for _ in range(150):
        packets.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 700))))
    # Random bit flips in a valid query.
    for _ in range(150):
        b = bytearray(q)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        packets.append(bytes(b))
    return packets


def test_malformed_udp_packets_do_not_break_the_server(dns_atoll):
    packets = _garbage_packets()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in packets:
            s.sendto(p, (dns_atoll.dns_host, dns_atoll.dns_port))
    _valid_query_answers(dns_atoll)
    # Any answer to a response packet would risk packet loops: check none of
    # the replies we can read has QR clear (a reply must always be a response).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for p in packets[:40]:
            s.sendto(p, (dns_atoll.dns_host, dns_atoll.dns_port))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                break
            if len(data) >= 4:
                assert data[2] & 0x80, f"server sent a non-response packet {data[:12].hex()}"
    _valid_query_answers(dns_atoll)


def test_malformed_tcp_streams_do_not_break_the_server(dns_atoll):
    addr = (dns_atoll.dns_host, dns_atoll.dns_port)
    rng = random.Random(99)
    q = dns.message.make_query("web.service.consul", "A").to_wire()
    streams = [
        b"",
        b"\x00",
        b"\xff\xff",
        b"\xff\xff" + b"partial",
        b"\x00\x00",
        struct.pack("!H", 5) + b"\x01\x02\x03\x04\x05",
        struct.pack("!H", len(q)) + q[: len(q) // 2],
        struct.pack("!H", 300) + bytes(rng.getrandbits(8) for _ in range(300)),
        bytes(rng.getrandbits(8) for _ in range(2000)),
    ]
    for data in streams:
        with socket.create_connection(addr, timeout=TIMEOUT) as s:
            if data:
                s.sendall(data)
    _valid_query_answers(dns_atoll)

    # An idle connection and a half-sent message must not block other clients.
    idle = socket.create_connection(addr, timeout=TIMEOUT)
    stalled = socket.create_connection(addr, timeout=TIMEOUT)
    try:
        stalled.sendall(struct.pack("!H", len(q)) + q[:5])
        _valid_query_answers(dns_atoll)
        # Two queries pipelined on one connection both get answered.
        with socket.create_connection(addr, timeout=TIMEOUT) as s:
            q1 = dns.message.make_query("web.service.consul", "A")
            q2 = dns.message.make_query(f"{dns_atoll.node}.node.consul", "A")
            w1, w2 = q1.to_wire(), q2.to_wire()
            s.sendall(struct.pack("!H", len(w1)) + w1 + struct.pack("!H", len(w2)) + w2)
            got = {}
            for _ in range(2):
                r = dns.query.receive_tcp(s, expiration=time.time() + TIMEOUT)[0]
                got[r.id] = r
            assert addresses(got[q1.id]) == node_and(dns_atoll, "127.0.0.2")
            assert addresses(got[q2.id]) == [dns_atoll.node_address]
    finally:
        idle.close()
        stalled.close()
    _valid_query_answers(dns_atoll)


# ---------------------------------------------------------------------------
# load smoke test with dnsperf


def test_dnsperf_no_losses(dns_atoll, tmp_path):
    exe = require_tool("dnsperf")
    data = tmp_path / "queries.txt"
    data.write_text(
        "web.service.consul A\n"
        "web.service.consul SRV\n"
        f"{dns_atoll.node}.node.consul A\n"
        "missing.service.consul A\n"
    )
    runs = 100
    proc = subprocess.run(
        [
            exe,
            "-s",
            dns_atoll.dns_host,
            "-p",
            str(dns_atoll.dns_port),
            "-d",
            str(data),
            "-n",
            str(runs),
            "-c",
            "4",
            "-Q",
            "2000",
            "-t",
            "3",
            "-l",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out

    def number(label):
        m = re.search(rf"{label}:\s+(\d+)", out)
        assert m, f"{label} missing from dnsperf output:\n{out}"
        return int(m.group(1))

    total = 4 * runs
    assert number("Queries sent") == total, out
    assert number("Queries completed") == total, out
    assert number("Queries lost") == 0, out
    codes = dict((k, int(v)) for k, v in re.findall(r"([A-Z]+) (\d+) \(", out.split("Response codes:")[1].splitlines()[0]))
    assert codes == {"NOERROR": 3 * runs, "NXDOMAIN": runs}, out
    _valid_query_answers(dns_atoll)
