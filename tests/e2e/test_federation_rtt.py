"""Federation ordered by real round trips: three datacenters whose WAN gossip goes through
delaying relays written here.

On loopback every round trip is about equal, so the datacenter order only shows its
alphabetical tie-break. Here each server advertises (`--advertise-wan`) the address of a
relay in front of it instead of its own, so every WAN datagram between two servers passes
through the relay of the server it is sent to; the relay holds it back by a fixed one-way
delay that depends on the pair of datacenters, in both directions:

    dc1  <->  near   5 ms each way  (round trip ~10 ms)
    dc1  <->  far   40 ms each way  (round trip ~80 ms)
    near <->  far   40 ms each way  (round trip ~80 ms)

The names are chosen so that the order by round trip (dc1, near, far) is not the
alphabetical one (dc1, far, near). From dc1 the test expects, by bounded polling (the
Vivaldi coordinates need a number of probes; nothing sleeps a fixed time):
`/v1/catalog/datacenters` == ["dc1", "near", "far"]; `/v1/coordinate/datacenters` listing
the three with finite coordinates that put far farther than near; a prepared query with
`Failover.NearestN: 1` whose local instance is critical answering from near with
`Failovers` 1.

Each datacenter is one server on a loopback /24 of its own (127.0.41.x, 127.0.42.x,
127.0.43.x; ATOLL_E2E_FED_NET moves them to another 127.X as for the other federation
tests); its relay listens on .200 of that /24, on the WAN port (UDP and TCP; TCP is relayed
without delay). The relays run on one asyncio loop in a thread of the test process, each
bounded in datagrams and connections, and the loop stops by itself after a while even if
the test is killed before its teardown.

Not marked client_api: it runs in the `dev` pass of scripts/test.sh only.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import require_binary, wait_for
from federation_util import ALIVE, WAN_PORT, Datacenter, busy_ports, running, wan_members


# Datacenter name -> index of its /24 (federation_util.dc_prefix): 127.0.41.x and so on.
LOCAL, NEAR, FAR = "dc1", "near", "far"
LAYOUT = ((LOCAL, 41), (NEAR, 42), (FAR, 43))
# One-way delays (seconds) a relay adds between two datacenters.
DELAYS = {frozenset((LOCAL, NEAR)): 0.005, frozenset((LOCAL, FAR)): 0.040, frozenset((NEAR, FAR)): 0.040}
RELAY_HOST = 200  # the relay's address in a datacenter's /24

FORM_TIMEOUT = 40.0  # processes spawned -> a leader in every datacenter
WAN_TIMEOUT = 60.0  # -> every server lists every server alive
ORDER_TIMEOUT = 120.0  # -> the coordinates reflect the delays (probes every 2 s; generous for a loaded machine)
FAILOVER_TIMEOUT = 15.0

# Bounds of the relays, whatever happens to the test.
RELAY_LIFETIME = 900.0  # seconds, then the loop stops by itself
MAX_DATAGRAMS = 500_000  # per relay, both directions
MAX_SESSIONS = 32  # distinct UDP sources per relay
MAX_CONNECTIONS = 2_000  # TCP connections per relay, in all
TCP_IDLE = 30.0  # a relayed connection idle this long is closed


# ---------------------------------------------------------------------------
# the delaying relay


class _Session(asyncio.DatagramProtocol):
    """The relay's socket for one outside peer: what it sends goes to the server, what the
    server answers on it goes back to that peer (each after the pair's delay)."""

    def __init__(self, relay: "Relay", peer: tuple[str, int], delay: float) -> None:
        self.relay = relay
        self.peer = peer
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        pending, self.pending = self.pending, []
        for data in pending:
            transport.sendto(data, self.relay.backend)

    def to_server(self, data: bytes) -> None:
        if self.transport is None:
            if len(self.pending) < 64:
                self.pending.append(data)
            return
        self.transport.sendto(data, self.relay.backend)

    def datagram_received(self, data: bytes, addr) -> None:
        if addr[:2] != self.relay.backend or not self.relay.take():
            return
        self.relay.loop.call_later(self.delay, self.relay.to_outside, data, self.peer)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: "Relay") -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr) -> None:
        self.relay.from_outside(data, addr[:2])


class Relay:
    """UDP and TCP on `front`, relayed to `backend`; every datagram is held back by
    `delay_of(peer IP)` seconds on its way in and on its way back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, front: tuple[str, int], backend: tuple[str, int],
                 delay_of: Callable[[str], float]) -> None:
        self.loop = loop
        self.front = front
        self.backend = backend
        self.delay_of = delay_of
        self.sessions: dict[tuple[str, int], _Session] = {}
        self.forwarded = 0  # datagrams, both directions
        self.dropped = 0
        self.connections = 0
        self.front_transport: asyncio.DatagramTransport | None = None
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.front_transport, _ = await self.loop.create_datagram_endpoint(lambda: _Front(self),
                                                                          local_addr=self.front)
        self.server = await asyncio.start_server(self._tcp, self.front[0], self.front[1], reuse_address=True)

    def take(self) -> bool:
        if self.forwarded >= MAX_DATAGRAMS:
            self.dropped += 1
            return False
        self.forwarded += 1
        return True

    def from_outside(self, data: bytes, peer: tuple[str, int]) -> None:
        session = self.sessions.get(peer)
        if session is None:
            if len(self.sessions) >= MAX_SESSIONS:
                self.dropped += 1
                return
            session = _Session(self, peer, self.delay_of(peer[0]))
            self.sessions[peer] = session
            self.loop.create_task(self.loop.create_datagram_endpoint(lambda: session,
                                                                     local_addr=(self.front[0], 0)))
        if self.take():
            self.loop.call_later(session.delay, session.to_server, data)

    def to_outside(self, data: bytes, peer: tuple[str, int]) -> None:
        if self.front_transport is not None:
            self.front_transport.sendto(data, peer)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.backend), 5.0)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        self.writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the relays are stopping
        finally:
            for w in (writer, up_writer):
                w.close()
                self.writers.discard(w)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), TCP_IDLE)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.TimeoutError):
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.close()
        if self.front_transport is not None:
            self.front_transport.close()
        for session in self.sessions.values():
            if session.transport is not None:
                session.transport.close()

    def __repr__(self) -> str:
        return (f"<relay {self.front[0]}:{self.front[1]} -> {self.backend[0]}:{self.backend[1]}: "
                f"{self.forwarded} datagrams, {self.dropped} dropped, {self.connections} connections>")


class RelayLoop:
    """An asyncio loop in a thread of its own, running the relays; stops by itself after
    RELAY_LIFETIME."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.relays: list[Relay] = []
        self.thread = threading.Thread(target=self._run, name="wan-relays", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_later(RELAY_LIFETIME, self.loop.stop)
        self.loop.run_forever()

    def _call(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def add(self, front: tuple[str, int], backend: tuple[str, int], delay_of: Callable[[str], float]) -> Relay:
        relay = Relay(self.loop, front, backend, delay_of)
        self._call(relay.start())
        self.relays.append(relay)
        return relay

    async def _shutdown(self) -> None:
        for relay in self.relays:
            await relay.stop()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def close(self) -> None:
        if self.loop.is_running():
            try:
                self._call(self._shutdown())
            except Exception:  # noqa: BLE001 - stop the loop anyway
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


# ---------------------------------------------------------------------------
# the three datacenters


def _prefix_of_ip(ip: str) -> str:
    return ip.rsplit(".", 1)[0]


class RelayedFederation:
    """One server per datacenter, each advertising its relay as its WAN address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dcs: dict[str, Datacenter] = {}
        self.relays: dict[str, Relay] = {}
        self.relay_loop: RelayLoop | None = None
        for name, index in LAYOUT:
            dc = Datacenter(root, name, index, servers=1, clients=0, join_wan=None)
            self.dcs[name] = dc
        self.dc_of_prefix = {dc.prefix: name for name, dc in self.dcs.items()}
        local_front = self.front(LOCAL)
        for name, dc in self.dcs.items():
            dc.server.extra_args += ["--advertise-wan", self.front_ip(name)]
            if name != LOCAL:
                # Joined through dc1's relay, as any other traffic.
                dc.server.extra_args += ["--retry-join-wan", local_front, "--retry-interval-wan", "1"]

    def front_ip(self, name: str) -> str:
        return f"{self.dcs[name].prefix}.{RELAY_HOST}"

    def front(self, name: str) -> str:
        return f"{self.front_ip(name)}:{WAN_PORT}"

    def __getitem__(self, name: str) -> Datacenter:
        return self.dcs[name]

    def delay(self, to: str) -> Callable[[str], float]:
        def delay_of(ip: str) -> float:
            origin = self.dc_of_prefix.get(_prefix_of_ip(ip))
            return DELAYS.get(frozenset((origin, to)), 0.0) if origin is not None else 0.0
        return delay_of

    def start(self) -> "RelayedFederation":
        busy = {dc.server.ip: busy_ports(dc.server.ip, True) for dc in self.dcs.values()}
        busy = {ip: ports for ip, ports in busy.items() if ports}
        assert not busy, (f"ports already in use: {busy}; another run may be going on, "
                          "or set ATOLL_E2E_FED_NET to another 127.X")
        self.relay_loop = RelayLoop()
        for name, dc in self.dcs.items():
            try:
                self.relays[name] = self.relay_loop.add((self.front_ip(name), WAN_PORT),
                                                        (dc.server.ip, WAN_PORT), self.delay(name))
            except OSError as exc:
                raise AssertionError(f"the relay of {name} cannot listen on {self.front(name)}: {exc}; "
                                     "another run may be going on, or set ATOLL_E2E_FED_NET") from None
        for dc in self.dcs.values():
            dc.server.spawn()

        def formed() -> bool:
            self.check_exits()
            return all(dc.cluster.agreement() for dc in self.dcs.values())

        wait_for(formed, timeout=FORM_TIMEOUT, interval=0.1,
                 message=lambda: "a leader in every datacenter\n" + self.logs())
        wait_for(self.wan_complete, timeout=WAN_TIMEOUT, interval=0.25,
                 message=lambda: f"every server's WAN pool to list every server alive; {self.relays}\n" + self.logs())
        return self

    def wan_names(self) -> set[str]:
        return {dc.wan_name(dc.server) for dc in self.dcs.values()}

    def wan_complete(self) -> bool:
        self.check_exits()
        want = {name: ALIVE for name in self.wan_names()}
        return all({n: m["Status"] for n, m in wan_members(dc.server).items()} == want
                   for dc in self.dcs.values())

    def check_exits(self) -> None:
        for dc in self.dcs.values():
            dc.cluster.check_exits()

    def logs(self, tail: int = 20) -> str:
        return "\n".join(dc.server.logs(tail=tail) for dc in self.dcs.values() if dc.server.starts)

    def keep_logs(self, destination: Path) -> Path:
        """Copy every server's log files under `destination`; returns it."""
        destination.mkdir(parents=True, exist_ok=True)
        for dc in self.dcs.values():
            for log in dc.server.workdir.glob("atoll-*.log"):
                (destination / f"{dc.server.name}-{log.name}").write_bytes(log.read_bytes())
        return destination

    def close(self) -> None:
        try:
            for dc in self.dcs.values():
                dc.cluster.close()
        finally:
            if self.relay_loop is not None:
                self.relay_loop.close()


@pytest.fixture(scope="module")
def fed(tmp_path_factory, request):
    require_binary()
    federation = RelayedFederation(tmp_path_factory.mktemp("federation-rtt"))

    def start() -> None:
        federation.start()
        _register_web(federation)

    yield from running(federation, request, "federation-rtt", start)


def _register_web(fed: RelayedFederation) -> None:
    """`web` in every datacenter; dc1's behind a TTL check that starts critical."""
    for name, dc in fed.dcs.items():
        body = {"Name": "web", "ID": f"web-{name}", "Port": 8080}
        if name == LOCAL:
            body["Check"] = {"CheckID": "web-local-ttl", "TTL": "30m", "Status": "critical"}
        dc.server.put("/v1/agent/service/register", json=body).raise_for_status()
    for name in (NEAR, FAR):
        server = fed[name].server
        wait_for(lambda: server.get_json("/v1/health/service/web?passing"), timeout=15, interval=0.1,
                 message=f"web passing in {name}")


# ---------------------------------------------------------------------------
# Vivaldi distances, as Serf computes them


def _finite_coordinate(coord: dict) -> bool:
    values = [*coord["Vec"], coord["Error"], coord["Adjustment"], coord["Height"]]
    return len(coord["Vec"]) == 8 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _distance(a: dict, b: dict) -> float:
    """Estimated round trip (seconds) between two coordinates."""
    dist = math.sqrt(sum((x - y) ** 2 for x, y in zip(a["Vec"], b["Vec"]))) + a["Height"] + b["Height"]
    adjusted = dist + a["Adjustment"] + b["Adjustment"]
    return adjusted if adjusted > 0 else dist


def _coordinates(node) -> dict[str, dict]:
    """Datacenter -> the coordinate of its one server, from `node`'s /v1/coordinate/datacenters."""
    areas = node.get_json("/v1/coordinate/datacenters")
    found = {}
    for area in areas:
        assert area["AreaID"] == "WAN", area
        entries = area["Coordinates"]
        if len(entries) == 1:
            found[area["Datacenter"]] = entries[0]["Coord"]
    return found


def _estimates(fed: RelayedFederation) -> dict[str, float] | None:
    """dc1's estimated round trips to near and far, once it has finite coordinates of all three."""
    coords = _coordinates(fed[LOCAL].server)
    if set(coords) != {LOCAL, NEAR, FAR} or not all(_finite_coordinate(c) for c in coords.values()):
        return None
    return {name: _distance(coords[LOCAL], coords[name]) for name in (NEAR, FAR)}


def _rtt_ordered(fed: RelayedFederation) -> dict[str, float] | None:
    """dc1's view once it follows the delays (~80 ms to far, ~10 ms to near): far estimated well
    beyond near, and the list by round trip."""
    estimates = _estimates(fed)
    # A difference rather than a ratio: a loaded machine adds about as much to every round trip.
    if estimates is None or not estimates[FAR] > estimates[NEAR] + 0.030:
        return None
    listed = fed[LOCAL].server.get_json("/v1/catalog/datacenters")
    return estimates if listed == [LOCAL, NEAR, FAR] else None


def _wait_rtt_ordered(fed: RelayedFederation) -> dict[str, float]:
    return wait_for(lambda: _rtt_ordered(fed), timeout=ORDER_TIMEOUT, interval=0.5,
                    message=lambda: (f"dc1 to order the datacenters by round trip; estimates "
                                     f"{_estimates(fed)}; {fed.relays}\n" + fed.logs()))


# ---------------------------------------------------------------------------
# tests


def test_servers_reach_each_other_only_through_the_relays(fed):
    for dc in fed.dcs.values():
        members = wan_members(dc.server)
        for name, other in fed.dcs.items():
            member = members[other.wan_name(other.server)]
            assert (member["Addr"], member["Port"]) == (fed.front_ip(name), WAN_PORT), member
        self_config = dc.server.get_json("/v1/agent/self")["DebugConfig"]
        assert self_config["SerfAdvertiseAddrWAN"] == fed.front(dc.name), self_config
        assert self_config["SerfBindAddrWAN"] == f"{dc.server.ip}:{WAN_PORT}", self_config
        assert f"advertised as {fed.front(dc.name)}" in dc.server.output()
    # Gossip flows through every relay, both ways, and none hit its bounds.
    wait_for(lambda: all(r.forwarded >= 20 and len(r.sessions) >= 2 for r in fed.relays.values()),
             timeout=30, interval=0.2, message=lambda: f"gossip through every relay: {fed.relays}")
    assert all(r.dropped == 0 for r in fed.relays.values()), fed.relays


def test_datacenters_are_listed_by_round_trip_not_by_name(fed):
    assert sorted([NEAR, FAR]) == [FAR, NEAR], "the names must make the alphabetical order differ"
    started = time.monotonic()
    estimates = _wait_rtt_ordered(fed)
    print(f"dc1 ordered by round trip after {time.monotonic() - started:.1f}s more; estimates {estimates}")
    # From near, dc1 (10 ms) comes before far (80 ms).
    wait_for(lambda: fed[NEAR].server.get_json("/v1/catalog/datacenters") == [NEAR, LOCAL, FAR],
             timeout=ORDER_TIMEOUT, interval=0.5, message="near to list dc1 before far")


def test_coordinates_put_the_far_datacenter_farther(fed):
    estimates = _wait_rtt_ordered(fed)
    areas = fed[LOCAL].server.get_json("/v1/coordinate/datacenters")
    assert sorted(a["Datacenter"] for a in areas) == sorted([LOCAL, NEAR, FAR]), areas
    for area in areas:
        assert [e["Node"] for e in area["Coordinates"]] == [fed[area["Datacenter"]].wan_name(
            fed[area["Datacenter"]].server)], area
        assert all(_finite_coordinate(e["Coord"]) for e in area["Coordinates"]), area
    # The estimates follow the delays: ~80 ms against ~10 ms of real round trip.
    assert estimates[FAR] > estimates[NEAR], estimates
    assert estimates[FAR] > 0.030, estimates


def test_nearest_n_failover_answers_from_the_nearest_datacenter(fed):
    _wait_rtt_ordered(fed)
    origin = fed[LOCAL].server
    assert origin.get_json("/v1/health/service/web?passing") == [], "dc1's web must be critical"
    r = origin.post("/v1/query", json={"Name": "web-nearest",
                                       "Service": {"Service": "web", "Failover": {"NearestN": 1}}})
    assert r.status_code == 200, r.text
    query_id = r.json()["ID"]
    try:
        # dc1's only instance is critical: NearestN 1 is near (by name, far would come first).
        def executed():
            res = origin.get("/v1/query/web-nearest/execute")
            assert res.status_code == 200, res.text
            return res.json()

        result = wait_for(lambda: (lambda res: res if res["Nodes"] else None)(executed()),
                          timeout=FAILOVER_TIMEOUT, interval=0.2, message="the query to fail over")
        assert result["Datacenter"] == NEAR, result
        assert result["Failovers"] == 1, result
        assert [n["Service"]["ID"] for n in result["Nodes"]] == [f"web-{NEAR}"], result
        assert {n["Node"]["Datacenter"] for n in result["Nodes"]} == {NEAR}, result
    finally:
        origin.delete(f"/v1/query/{query_id}")
