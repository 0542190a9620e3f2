"""HTTP-level fuzz of the API: malformed and oversized requests, and slow clients.

A seeded generator (the seed is printed; ATOLL_E2E_SEED replays it) sends
requests that must all be refused: garbage request lines, unknown methods,
invalid, duplicated and huge headers, lying Content-Length and chunked
bodies, invalid UTF-8 and percent-encoding in paths and query strings, path
traversal, and every Consul and Marathon route with mutated JSON bodies and
query parameters. Syntactically valid requests must be answered (never a 5xx,
never a dropped connection, never a hang); syntactically broken ones may also
just be closed. Afterwards the stored state must equal what it was before
and the process must not have panicked.

The slow-client test holds connections that send headers a byte at a time,
send nothing, or send a body slower than they declared, checks that other
clients are served meanwhile, and that the server drops the slow ones after
its header and body timeouts.

Bounded in count and in time; every request has a client timeout.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import pytest
import requests

from conftest import wait_for

pytestmark = pytest.mark.client_api

SEED = int(os.environ.get("ATOLL_E2E_SEED", time.time_ns() % 1_000_000))

FUZZ_MAX_REQUESTS = 4000  # bound in count
FUZZ_MAX_SECONDS = 45.0  # bound in time
ANSWER_TIMEOUT = 10.0  # every request: an answer (or a close) within this
BODY_LIMIT = 1024 * 1024  # the API's largest request body
KV_VALUE_LIMIT = 512 * 1024

# The slow-client test starts its node with short timeouts so that it can watch them act.
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0

# What the fuzz starts from: a small state the requests must leave exactly as it is.
APP_ID = "/fuzz/base"
SERVICE_ID = "fuzz-svc-1"
SERVICE_NAME = "fuzz-svc"
CHECK_ID = "fuzz-check-1"
EXTERNAL_NODE = "fuzz-ext-node"


def replay_hint() -> str:
    return f"(replay with ATOLL_E2E_SEED={SEED})"


# ---------------------------------------------------------------------------
# raw HTTP over a socket


@dataclass
class Answer:
    """What came back for one request."""

    status: int | None = None  # None: no status line
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    closed: bool = False  # the server closed (or reset) the connection without a full answer
    hung: bool = False  # nothing conclusive within the timeout

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def describe(self) -> str:
        if self.hung:
            return "no answer within the timeout"
        if self.status is None:
            return "connection closed without an answer"
        return f"{self.status} {self.headers.get('content-type', '')} {self.body[:300]!r}"


def _read_answer(sock: socket.socket, deadline: float, head_only: bool = False) -> Answer:
    buffer = b""
    answer = Answer()
    # Skip interim 1xx answers (100 Continue).
    while True:
        buffer = _recv_until(sock, deadline, buffer, answer, lambda b: b"\r\n\r\n" in b)
        if buffer is None:
            return answer
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            answer.closed = True
            return answer
        status = int(parts[1])
        if 100 <= status < 200:
            continue
        answer.status = status
        for line in lines[1:]:
            name, _, value = line.partition(":")
            answer.headers[name.strip().lower()] = value.strip()
        break
    if head_only:
        return answer
    length = answer.headers.get("content-length")
    if length is not None and length.isdigit():
        buffer = _recv_until(sock, deadline, buffer, answer, lambda b: len(b) >= int(length))
        if buffer is None:
            return answer
        answer.body = buffer[: int(length)]
    elif "chunked" in answer.headers.get("transfer-encoding", ""):
        while not buffer.endswith(b"0\r\n\r\n"):
            chunk = _recv(sock, deadline)
            if chunk is None:
                answer.hung = True
                return answer
            if not chunk:
                break
            buffer += chunk
        answer.body = buffer
    return answer


def _recv_until(sock: socket.socket, deadline: float, buffer: bytes, answer: Answer,
                done: Callable[[bytes], bool]) -> bytes | None:
    """Reads until `done(buffer)`; None (with the answer marked hung or closed) if it never is."""
    while not done(buffer):
        chunk = _recv(sock, deadline)
        if chunk is None:
            answer.hung = True
            return None
        if not chunk:
            answer.closed = True
            return None
        buffer += chunk
    return buffer


def _recv(sock: socket.socket, deadline: float) -> bytes | None:
    """Up to 64 KiB; b'' on close or reset, None at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return None
    except (ConnectionResetError, BrokenPipeError):
        return b""


def raw_exchange(host: str, port: int, data: bytes, timeout: float = ANSWER_TIMEOUT,
                 half_close: bool = False) -> Answer:
    """Sends `data` as it is and reads one answer.

    Large payloads go in pieces; once the server has answered (a 413 or 431
    before the whole request is in) sending stops and the answer is read.
    `half_close` ends the sending side afterwards: for requests that declare
    more body than they carry, so that the server sees the end of it.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            for start in range(0, len(data), 65536):
                sock.sendall(data[start:start + 65536])
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # closed or reset by the server while we were still sending
            pass
        return _read_answer(sock, deadline, head_only=data.startswith(b"HEAD "))


# ---------------------------------------------------------------------------
# what a case expects


REFUSE = "refuse"  # a 4xx (or Consul's 500 for an unknown datacenter), answered
ANSWER = "answer"  # any answer below 500: a read with odd options
SYNTAX = "syntax"  # not valid HTTP: a 4xx answer or a close, never a hang or a 5xx
OVERSIZE = "oversize"  # too large: a 4xx answer, or a reset while the rest was still coming


@dataclass
class Case:
    name: str
    method: str
    target: str  # path and query, already encoded as sent
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    expect: str = REFUSE
    statuses: frozenset[int] | None = None  # the exact statuses allowed, when known
    field: str | None = None  # the field a /v1 error must name
    mentions: str | None = None  # text the error body must contain
    foreign_dc: bool = False  # carries dc=<unknown>: Consul answers 500 "No path to datacenter" (/v2: a 503)
    raw: bytes | None = None  # sent verbatim over a socket instead
    half_close: bool = False


def request_bytes(case: Case) -> bytes:
    lines = [f"{case.method} {case.target} HTTP/1.1", "Host: fuzz"]
    headers = dict(case.headers)
    if case.body or case.method in ("PUT", "POST"):
        headers.setdefault("Content-Length", str(len(case.body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + case.body


def check_answer(case: Case, answer: Answer) -> str | None:
    """None when the answer is what the case allows, else why not."""
    if answer.hung:
        return "hung: " + answer.describe()
    if answer.status is None:
        if case.expect in (SYNTAX, OVERSIZE):
            return None
        return "dropped: " + answer.describe()
    status = answer.status
    if case.foreign_dc and status in (500, 503):
        return None if b"No path to datacenter" in answer.body else "500 without 'No path to datacenter'"
    if status >= 500:
        return f"server error: {answer.describe()}"
    if case.expect == ANSWER:
        return None
    if not 400 <= status < 500:
        return f"accepted ({status}) instead of refused: {answer.describe()}"
    if case.statuses is not None and status not in case.statuses:
        return f"status {status}, expected one of {sorted(case.statuses)}: {answer.describe()}"
    if case.expect == REFUSE:
        problem = check_error_body(case, answer)
        if problem:
            return problem
    return None


def check_error_body(case: Case, answer: Answer) -> str | None:
    """A /v1 refusal carries {"error": ...} (and the field); a /v2 one Marathon's {"message": ...}."""
    path = case.target.split("?", 1)[0]
    body = answer.json()
    if path.startswith("/v1/"):
        if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
            return f"/v1 refusal without a JSON error body: {answer.describe()}"
        if case.field is not None and normalize(case.field) not in normalize(str(body.get("field", ""))):
            return f"/v1 refusal does not name the field {case.field!r}: {answer.describe()}"
    elif path.startswith("/v2/"):
        if not isinstance(body, dict) or not isinstance(body.get("message"), str) or not body["message"]:
            return f"/v2 refusal without Marathon's JSON error body: {answer.describe()}"
    if case.mentions is not None and normalize(case.mentions) not in normalize(answer.body.decode("utf-8", "replace")):
        return f"error does not mention {case.mentions!r}: {answer.describe()}"
    return None


def normalize(text: str) -> str:
    return text.lower().replace("_", "")


# ---------------------------------------------------------------------------
# the generator


# Read routes; `options` ones parse Consul's read options (index, wait, stale, consistent, dc).
READ_ROUTES = [
    ("/v1/agent/self", False),
    ("/v1/agent/members", False),
    ("/v1/agent/services", True),
    ("/v1/agent/service/{service_id}", False),
    ("/v1/agent/checks", True),
    ("/v1/agent/host", False),
    ("/v1/agent/version", False),
    ("/v1/event/list", False),
    ("/v1/catalog/datacenters", False),
    ("/v1/catalog/nodes", True),
    ("/v1/catalog/services", True),
    ("/v1/catalog/service/{service}", True),
    ("/v1/catalog/node/{node}", True),
    ("/v1/catalog/node-services/{node}", True),
    ("/v1/health/service/{service}", True),
    ("/v1/health/checks/{service}", True),
    ("/v1/health/node/{node}", True),
    ("/v1/health/state/{state}", True),
    ("/v1/kv/{key}", True),
    ("/v1/query", True),
    ("/v1/status/leader", False),
    ("/v1/status/peers", False),
    ("/v1/operator/raft/configuration", False),
    ("/ping", False),
    ("/v2/info", False),
    ("/v2/leader", False),
    ("/v2/apps", False),
    ("/v2/apps/{app}", False),
    ("/v2/apps/{app}/versions", False),
    ("/v2/apps/{app}/tasks", False),
    ("/v2/tasks", False),
    ("/v2/deployments", False),
    ("/v2/deployments/{deployment}", False),
    ("/v2/queue", False),
    ("/v2/groups", False),
    ("/v2/groups/{app}", False),
]

# Writes to something that does not exist: refused with 404 (400 when the path itself is bad).
MISSING_TARGET_WRITES = [
    ("PUT", "/v1/agent/service/deregister/{missing}"),
    ("PUT", "/v1/agent/check/deregister/{missing}"),
    ("PUT", "/v1/agent/check/pass/{missing}"),
    ("PUT", "/v1/agent/check/warn/{missing}"),
    ("PUT", "/v1/agent/check/fail/{missing}"),
    ("PUT", "/v1/agent/force-leave/{missing}"),
    ("DELETE", "/v1/query/{missing}"),
    ("DELETE", "/v1/operator/raft/peer?address={missing}"),
    ("DELETE", "/v1/operator/raft/peer?id={missing}"),
    ("DELETE", "/v2/apps/{missing}"),
    ("POST", "/v2/apps/{missing}/restart"),
    ("DELETE", "/v2/apps/{missing}/tasks"),
    ("DELETE", "/v2/apps/{missing}/tasks/{missing}"),
    ("DELETE", "/v2/apps/" + APP_ID.strip("/") + "/tasks/{missing}"),
    ("DELETE", "/v2/deployments/{missing}"),
    ("DELETE", "/v2/groups/{missing}"),
]

# Routes of the API that no method but the listed ones may use.
METHODS_OF = {
    "/v1/kv/fuzz/a": {"GET", "PUT", "DELETE"},
    "/v1/agent/service/register": {"PUT"},
    "/v1/txn": {"PUT"},
    "/v1/catalog/services": {"GET"},
    "/v1/operator/raft/peer": {"DELETE"},
    "/v2/apps": {"GET", "POST"},
    "/v2/tasks/delete": {"POST"},
    "/v2/deployments": {"GET"},
}

# A value that fails one field of a body, and the field it names.
Breaker = tuple[str, Any]


@dataclass
class BodyRoute:
    method: str
    path: str
    base: dict
    breakers: list[tuple[str, list[Any]]]  # (field path, invalid values)
    marathon: bool = False


class Raw:
    """JSON text spliced into a body as it is (numbers JSON cannot carry exactly)."""

    def __init__(self, text: str) -> None:
        self.text = text


def body_routes() -> list[BodyRoute]:
    huge_name = "n" * (KV_VALUE_LIMIT + 7) + "/"
    return [
        BodyRoute("PUT", "/v1/agent/service/register",
                  {"Name": SERVICE_NAME + "-new", "ID": "fuzz-new-1", "Port": 8080, "Tags": ["a"],
                   "Address": "127.0.0.1", "Meta": {"k": "v"}, "Check": {"TTL": "30s"}},
                  [("Name", [None, "", 123, [], {}, "a/b", "x\u0001", huge_name]),
                   ("Port", [-1, 70000, "eighty", 1.5, Raw("1e400"), Raw("99999999999999999999"), []]),
                   ("Tags", ["x", 5, {"a": 1}, [1, 2]]),
                   ("Meta", [[], "x", {"k": 5}]),
                   ("Check", ["x", [], {"TTL": "soon"}, {"TTL": "-1s"}, {"TTL": 0},
                              {"HTTP": "http://127.0.0.1:1/", "Interval": "often"},
                              {"TTL": "1s", "TCP": "127.0.0.1:1"}, {"Args": ["/bin/true"], "Interval": "1s"},
                              {"TTL": Raw("1e400")}, {"TTL": "9999999999999999999h"}]),
                   ("Checks", ["x", [5]]),
                   ("Kind", ["connect-proxy"]),
                   ("EnableTagOverride", ["yes", 3])]),
        BodyRoute("PUT", "/v1/agent/check/register",
                  {"Name": "fuzz new check", "ID": "fuzz-new-check", "TTL": "30s"},
                  [("TTL", ["soon", "-5s", [], {}, 0, "1e400", "9999999999999999999h"]),
                   ("HTTP", [5, ["x"]]),
                   ("Status", ["sideways", 5]),
                   ("ServiceID", ["no-such-service", 5]),
                   ("Args", [["sh", "-c", "true"]])]),
        BodyRoute("PUT", f"/v1/agent/check/update/service:{SERVICE_ID}",
                  {"Status": "passing", "Output": "fuzz"},
                  [("Status", ["sideways", 5, "", [], {}]),
                   ("Output", [5, [], {}])]),
        BodyRoute("PUT", "/v1/catalog/register",
                  {"Node": EXTERNAL_NODE + "-new", "Address": "127.0.0.9",
                   "Service": {"Service": "fuzz-ext-new", "Port": 80},
                   "Check": {"Name": "fuzz ext check", "Status": "passing"}},
                  [("Node", [None, "", 5, []]),
                   ("Address", [None, "", [], 7]),
                   ("Datacenter", ["elsewhere", 5]),
                   ("Service", ["x", [], {"Service": ""}, {"Service": "a/b"}, {"Service": "s", "Port": 70000}]),
                   ("Check", ["x", {"Name": "c", "Status": "sideways"}, {"Status": "passing"}]),
                   ("Checks", ["x", [{}]]),
                   ("NodeMeta", [[], "x", {"k": []}]),
                   ("TaggedAddresses", [[], {"lan": 5}])]),
        BodyRoute("PUT", "/v1/catalog/deregister",
                  {"Node": EXTERNAL_NODE, "ServiceID": "fuzz-ext"},
                  [("Node", [None, "", 5, []]),
                   ("ServiceID", [5, []]),
                   ("CheckID", [5, {}]),
                   ("Datacenter", ["elsewhere", 5])]),
        BodyRoute("POST", "/v2/apps",
                  {"id": "/fuzz/new", "cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 1},
                  [("id", [None, "", "bad id!", 5, [], "/UPPER", "/a//b", "/.."]),
                   ("instances", [-1, "one", 1.5, Raw("1e400"), Raw("99999999999999999999"), []]),
                   ("cpus", [-1, "x", [], Raw("-1e400")]),
                   ("mem", [-5, "x", {}]),
                   ("cmd", [5, [], {}]),
                   ("env", [[], "x", {"A": 5}, {"A": [1]}]),
                   ("labels", [[], "x", {"a": 5}]),
                   ("portDefinitions", ["x", [{"port": 70000}], [5], [{"port": -1}]]),
                   ("constraints", ["x", [["hostname"]], [["hostname", "BOGUS"]], [5]]),
                   ("healthChecks", ["x", [{"protocol": "SMTP"}], [5]]),
                   ("upgradeStrategy", ["x", {"minimumHealthCapacity": 2}, {"maximumOverCapacity": -1}]),
                   ("args", ["sleep", [5]])],
                  marathon=True),
        BodyRoute("PUT", f"/v2/apps/{APP_ID.strip('/')}",
                  {"cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 0},
                  [("instances", [-1, "one", 1.5, Raw("1e400"), []]),
                   ("cpus", [-1, "x"]),
                   ("mem", [-5, "x"]),
                   ("cmd", [5, []]),
                   ("env", [[], {"A": 5}]),
                   ("constraints", ["x", [["hostname", "BOGUS"]]]),
                   ("portDefinitions", ["x", [{"port": 70000}]])],
                  marathon=True),
        BodyRoute("PUT", "/v2/apps/fuzz/absent",
                  {"cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 1},
                  [("instances", [-1, "one", Raw("1e400")]),
                   ("cpus", [-1, "x"]),
                   ("cmd", [5, []])],
                  marathon=True),
        BodyRoute("POST", "/v2/tasks/delete", {"ids": ["fuzz-no-such-task"]},
                  [("ids", ["x", 5, None, {"a": 1}])], marathon=True),
    ]


def encode_json(value: Any) -> str:
    """json.dumps that splices Raw values in as they are."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode_json(v) for v in value) + "]"
    return json.dumps(value)


def deep(rng: random.Random, depth: int) -> str:
    if rng.random() < 0.5:
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def noise_value(rng: random.Random) -> Any:
    return rng.choice([
        None, True, -0.0, 1e308, Raw("-1e-400"), Raw("123456789012345678901234567890"),
        "", "\u0000", "\ud7ff\ue000", "x" * rng.randint(0, 4096), [], {}, [None] * 50,
        {"nested": {"deeper": [1, "2", None]}}, Raw(deep(rng, rng.randint(1, 60))),
    ])


class Fuzzer:
    """Seeded generator of requests every one of which the API must refuse (or just answer, for reads)."""

    def __init__(self, rng: random.Random, node: str, deployment: str) -> None:
        self.rng = rng
        self.node = node
        self.deployment = deployment
        self.body_routes = body_routes()
        self.generators: list[tuple[float, Callable[[], Case]]] = [
            (2.0, self.syntax),
            (1.5, self.headers),
            (1.5, self.lengths),
            (2.0, self.bad_path),
            (3.0, self.read_options),
            (3.5, self.mutated_body),
            (1.5, self.kv_write),
            (1.5, self.missing_target),
            (0.8, self.wrong_method),
        ]
        self.weights = [w for w, _ in self.generators]

    def next(self) -> Case:
        (_, generate), = self.rng.choices(self.generators, weights=self.weights)
        return generate()

    # -- helpers ----------------------------------------------------------
    def junk_segment(self) -> str:
        """A path segment as sent: bad percent-encoding, invalid UTF-8, traversal, odd bytes."""
        rng = self.rng
        return rng.choice([
            "%ff%fe", "%e2%82", "%zz", "%", "%2", "%00", "%c0%ae%c0%ae", "..", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "..%2f..%2f..%2fetc", "%2f", "a%20b", "%u2215", "~", "%3Cscript%3E", "%F0%9F%92%A9",
            "x" * rng.randint(1, 5000), quote("\u202e\u0000ctl", safe=""), "%25ff",
        ])

    def missing_name(self) -> str:
        return "fuzz-missing-" + "".join(self.rng.choice("abcdefghij0123456789") for _ in range(6))

    def fill(self, template: str) -> tuple[str, bool]:
        """The route with its parameters, some of them junk; and whether any is."""
        values = {
            "service_id": SERVICE_ID, "service": SERVICE_NAME, "node": quote(self.node, safe=""),
            "state": self.rng.choice(["any", "passing", "warning", "critical"]),
            "key": "fuzz/a", "app": APP_ID.strip("/"), "deployment": self.deployment,
        }
        out = template
        junk = False
        for name, value in values.items():
            if "{" + name + "}" in out and self.rng.random() < 0.3:
                value = self.junk_segment()
                junk = True
            out = out.replace("{" + name + "}", value)
        return out, junk

    # -- generators -------------------------------------------------------
    def syntax(self) -> Case:
        rng = self.rng
        raw = rng.choice([
            b"HELLO WORLD\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /v1/kv/fuzz/a\r\n\r\n",
            b"GET /v1/kv/fuzz/a HTTP/1.2\r\nHost: x\r\n\r\n",
            b"GET /v1/kv/fuzz/a HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET /v1/kv/fuzz/a HTTP/9\r\nHost: x\r\n\r\n",
            b"GET  /v1/kv/fuzz/a  HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/kv/fuzz/a\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/kv/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/kv/a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"G\xc3\x89T /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\rHost: x\r\r",
            bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000))) + b"\r\n\r\n",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabc",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nabc",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-A: b\r\n folded\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-A: b\x01c\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
            b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-\x7f: y\r\n\r\n",
        ])
        return Case("syntax", "", "", raw=raw, expect=SYNTAX)

    def headers(self) -> Case:
        rng = self.rng
        route = rng.choice(["/v1/kv/fuzz/a", "/v1/catalog/services", "/v2/apps", "/v1/agent/self"])
        kind = rng.choice(["huge-value", "many", "huge-name", "odd-values", "duplicates"])
        if kind == "huge-value":
            size = rng.choice([1_500_000, 3_000_000])  # beyond Consul's 1 MB and hyper's limits
            raw = f"GET {route} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"a" * size + b"\r\n\r\n"
            return Case("huge header", "GET", route, raw=raw, expect=OVERSIZE, statuses=frozenset({431, 400}))
        if kind == "many":
            count = rng.choice([150, 1000, 5000])
            lines = "".join(f"X-H{i}: v\r\n" for i in range(count))
            raw = f"GET {route} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()
            return Case("many headers", "GET", route, raw=raw, expect=OVERSIZE, statuses=frozenset({431, 400}))
        if kind == "huge-name":
            raw = f"GET {route} HTTP/1.1\r\nHost: x\r\n".encode() + b"X" * 300_000 + b": v\r\n\r\n"
            return Case("huge header name", "GET", route, raw=raw, expect=OVERSIZE, statuses=frozenset({431, 400}))
        # Odd but well-formed headers on a read: answered like the plain read.
        odd = rng.choice([
            {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "\u00e9"},
            {"Accept": "*/*;q=abc"}, {"Accept-Encoding": "gzip;q=0, br, zstd, x" * 20},
            {"X-Consul-Token": "nope"}, {"Authorization": "Bearer " + "t" * 4000},
            {"Connection": "Upgrade", "Upgrade": "websocket"}, {"Expect": "200-ok"},
            {"Range": "bytes=99999999999-"}, {"If-None-Match": "*"}, {"Host": "a", "X-Forwarded-For": "::1, nope"},
            {"Content-Length": "0"}, {"Cookie": ";" * 3000}, {"X-Utf8": "\u00ff\u00fe"},
        ])
        if kind == "duplicates":
            lines = "".join(f"{k}: {v}\r\n{k}: {v}x\r\n" for k, v in odd.items())
        else:
            lines = "".join(f"{k}: {v}\r\n" for k, v in odd.items())
        raw = f"GET {route} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode("latin-1", "replace")
        return Case("odd headers", "GET", route, raw=raw, expect=ANSWER)

    def lengths(self) -> Case:
        """Bodies that disagree with what the headers declared."""
        rng = self.rng
        route = rng.choice(["/v1/agent/service/register", "/v1/catalog/register", "/v2/apps",
                            "/v1/agent/check/register", "/v2/tasks/delete"])
        method = "POST" if route.startswith("/v2/") else "PUT"
        body = b'{"Name": "fuzz-cut'  # never a complete, valid body
        kind = rng.choice(["short", "chunk-short", "chunk-bad-size", "chunk-huge-size", "chunk-negative",
                           "chunk-extension", "chunk-trailer", "te-and-cl", "declared-huge", "expect-huge"])
        head = f"{method} {route} HTTP/1.1\r\nHost: x\r\n"
        if kind == "short":
            raw = (head + f"Content-Length: {len(body) + rng.randint(1, 5000)}\r\n\r\n").encode() + body
            return Case("body shorter than declared", method, route, raw=raw, half_close=True, expect=SYNTAX)
        if kind == "declared-huge":
            raw = (head + f"Content-Length: {BODY_LIMIT * rng.randint(2, 4096)}\r\n\r\n").encode() + body
            return Case("declared body over the limit", method, route, raw=raw, half_close=True,
                        expect=OVERSIZE, statuses=frozenset({413, 400}))
        if kind == "expect-huge":
            raw = (head + f"Expect: 100-continue\r\nContent-Length: {BODY_LIMIT * 64}\r\n\r\n").encode()
            return Case("100-continue for a body over the limit", method, route, raw=raw,
                        expect=OVERSIZE, statuses=frozenset({413}))
        chunked = head + "Transfer-Encoding: chunked\r\n"
        if kind == "te-and-cl":
            raw = (chunked + "Content-Length: 3\r\n\r\n").encode() + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
            return Case("chunked and Content-Length", method, route, raw=raw, expect=SYNTAX)
        sizes = {
            "chunk-short": b"%x" % (len(body) + rng.randint(1, 100)),
            "chunk-bad-size": b"zz",
            "chunk-huge-size": b"f" * rng.randint(17, 40),
            "chunk-negative": b"-5",
            "chunk-extension": b"%x;ext=" % len(body) + b"e" * rng.choice([10, 100_000]),
            "chunk-trailer": b"%x" % len(body),
        }
        trailer = b"X-T: " + b"t" * 100_000 + b"\r\n" if kind == "chunk-trailer" else b""
        raw = (chunked + "\r\n").encode() + sizes[kind] + b"\r\n" + body + b"\r\n0\r\n" + trailer + b"\r\n"
        return Case(f"lying chunked body ({kind})", method, route, raw=raw, half_close=True, expect=SYNTAX)

    def bad_path(self) -> Case:
        rng = self.rng
        if rng.random() < 0.15:
            size = rng.choice([70_000, 300_000])
            target = "/v1/kv/" + "p" * size
            raw = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            return Case("huge path", "GET", target[:40], raw=raw, expect=OVERSIZE, statuses=frozenset({414, 431, 400}))
        template, _ = rng.choice(READ_ROUTES)
        if "{" not in template:
            template = template + "/" + "{junk}"
        target = template
        while "{" in target:
            start = target.index("{")
            end = target.index("}", start)
            target = target[:start] + self.junk_segment() + target[end + 1:]
        if rng.random() < 0.3:
            target = rng.choice(["//", "/./", "/../", "/%2e/"]).join(target.rsplit("/", 1))
        return Case("junk path", "GET", target, expect=ANSWER)

    def read_options(self) -> Case:
        rng = self.rng
        template, options = rng.choice(READ_ROUTES)
        path, junk_path = self.fill(template)
        bad = [
            ("index", rng.choice(["abc", "-1", "1e3", "99999999999999999999", "", "0x10", "%201", "%ff"]), "index"),
            ("wait", rng.choice(["-1s", "abc", "1e300", "9999999999999999999h", "1e20", "5x", "", "s", "%ff",
                                 "1h-1s", ".s", "1..5s", "NaN", "inf"]), "wait"),
        ]
        odd = [  # parameters that are fine, or ignored, on a read
            ("wait", rng.choice(["99999h", "0s", "1ms", "10"])), ("dc", ""), ("stale", ""),
            ("consistent", rng.choice(["", "garbage"])), ("recurse", rng.choice(["", "0", "false", "x"])),
            ("keys", ""), ("raw", ""), ("separator", rng.choice(["", "/", "%00", "%ff", "x" * 3000])),
            ("filter", rng.choice(["garbage%20==", "%ff", "("])), ("near", "_agent"), ("passing", "x"),
            ("tag", "%ff%fe"), ("node-meta", "no-colon"), ("embed", "apps.tasks"), ("embed", "%zz"),
            ("label", "=="), ("id", "%ff"), ("cached", ""), ("%zz", "%zz"), ("", ""), ("=", "="),
            ("index", "0"), ("a" * 2000, "b" * 2000), ("pretty", ""),
        ]
        params = [rng.choice(odd) for _ in range(rng.randint(0, 4))]
        params = [p for p in params if not (p[0] == "stale" and any(q[0] == "consistent" for q in params))]
        case = Case("read options", "GET", "", expect=ANSWER)
        choice = rng.random()
        if options and choice < 0.45:
            name, value, fieldname = rng.choice(bad)
            # the first value of a parameter counts; a valid index with a long wait would block
            params = [p for p in params if p[0] not in (name, "index")]
            params.insert(rng.randint(0, len(params)), (name, value))
            case.expect, case.field, case.statuses = REFUSE, fieldname, frozenset({400})
        elif options and choice < 0.55:
            params = [p for p in params if p[0] not in ("stale", "consistent")]
            params += [("stale", ""), ("consistent", "")]
            case.expect, case.statuses = REFUSE, frozenset({400})
            case.mentions = "stale"
        elif choice < 0.65:
            params.append(("dc", rng.choice(["elsewhere", "%ff", "dc1 ", "DC-" + "x" * 300])))
            case.foreign_dc = True
        if junk_path:  # the path may be refused first, naming its own parameter
            case.field = case.mentions = None
            case.statuses = frozenset({400, 404}) if case.statuses else None
        query = "&".join(k if not v and rng.random() < 0.5 else f"{k}={v}" for k, v in params)
        case.target = path + ("?" + query if query else "")
        return case

    def mutated_body(self) -> Case:
        rng = self.rng
        route = rng.choice(self.body_routes)
        body = json.loads(json.dumps(route.base))
        for _ in range(rng.randint(0, 3)):  # unknown fields never make a body valid
            body[f"ZzUnknown{rng.randrange(1000)}"] = noise_value(rng)
        case = Case("mutated body", route.method, route.path, expect=REFUSE)
        kind = rng.random()
        if kind < 0.6:
            fieldname, values = rng.choice(route.breakers)
            value = rng.choice(values)
            body[fieldname] = value
            text = encode_json(body)
            if len(text) > BODY_LIMIT:
                case.statuses = frozenset({413})
            elif not route.marathon and not isinstance(value, Raw) and fieldname not in ("Check", "Checks", "Service", "Kind", "Args",
                                                          "Datacenter", "ServiceID", "Status"):
                case.field = fieldname
            if fieldname == "Datacenter" and isinstance(value, str):
                case.foreign_dc = True  # forwarded there, as Consul does, before any check
            case.name = f"mutated body ({fieldname}={str(value)[:40]!r})"
            case.body = text.encode()
        else:
            text = encode_json(body)
            shape = rng.choice(["deep", "deep-field", "truncated", "not-object", "bad-utf8", "empty", "huge",
                                "trailing", "bom", "nul", "comment"])
            if shape == "deep":
                blob = deep(rng, rng.choice([129, 1000, 100_000]))
            elif shape == "deep-field":
                key = next(iter(route.base))
                blob = text[:-1] + f', "{key}": ' + deep(rng, rng.choice([200, 5000])) + "}"
            elif shape == "truncated":
                blob = text[: rng.randint(1, len(text) - 1)]
            elif shape == "not-object":
                blob = rng.choice(["[]", "[1,2]", "1", '"x"', "null", "true", "[{}]", "-0", "1e400"])
            elif shape == "bad-utf8":
                blob = None
                case.body = text[:-1].encode() + b', "ZzBad": "\xff\xfe\xc0\xaf"}'
            elif shape == "empty":
                blob = rng.choice(["", " ", "\r\n\t"])
            elif shape == "huge":
                blob = text[:-1] + ', "ZzHuge": "' + "h" * (BODY_LIMIT + rng.randint(1, 100_000)) + '"}'
                case.statuses = frozenset({413})
            elif shape == "trailing":
                blob = text + rng.choice(["garbage", "{}", "]", "\u0000"])
            elif shape == "bom":
                blob = "\ufeff" + text
            elif shape == "nul":
                blob = text.replace(":", ":\u0000", 1)
            else:
                blob = "/* c */" + text
            if blob is not None:
                case.body = blob.encode()
            case.name = f"malformed body ({shape})"
            # a body that does not parse is refused before its route looks at anything
            if route.marathon and case.statuses is None:
                case.statuses = frozenset({400, 422})
        if rng.random() < 0.2:
            case.headers["Content-Type"] = rng.choice(["text/plain", "application/xml", "multipart/form-data",
                                                       "application/json; charset=latin-1"])
        return case

    def kv_write(self) -> Case:
        """KV writes with a parameter or a size that makes them invalid, whatever the key and body."""
        rng = self.rng
        key = rng.choice(["fuzz/a", "fuzz/new", self.junk_segment(), "fuzz/" + "k" * 3000])
        method = rng.choice(["PUT", "PUT", "DELETE"])
        fixed = rng.choice(["", "recurse", "recurse&keys", "raw", "separator=/"])
        breakers = [
            ("cas=x", "cas", 400), ("cas=-1", "cas", 400), ("cas=99999999999999999999", "cas", 400),
            ("cas=", "cas", 400), ("flags=18446744073709551616", "flags", 400), ("flags=-1", "flags", 400),
            ("flags=", "flags", 400), ("flags=0x1", "flags", 400), ("cas=%ff", "cas", 400),
        ]
        if method == "PUT":
            # A lock without its session, or two of acquire, release and cas at once (a bogus
            # session itself is Consul's 500 "invalid session" for acquire and a plain
            # `false` for release: not malformed).
            breakers += [("acquire=", "acquire", 400), ("release=", "release", 400),
                         ("acquire=x&release=x", None, 400), ("acquire=x&cas=0", None, 400),
                         ("dc=elsewhere", None, 500)]
        else:
            breakers = [b for b in breakers if b[1] == "cas"] + [("recurse&cas=0", "cas", 400),
                                                                  ("dc=elsewhere", None, 500)]
        params, fieldname, status = rng.choice(breakers)
        body = b""
        if method == "PUT":
            if rng.random() < 0.15:
                params, fieldname, status = "", None, 413
                body = b"v" * (KV_VALUE_LIMIT + rng.randint(1, 100_000))
            else:
                body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        query = "&".join(p for p in (fixed, params) if p)
        case = Case(f"kv {method} ({params or 'oversized value'})", method, f"/v1/kv/{key}?{query}", body=body)
        if status == 500:
            case.foreign_dc = True
            case.statuses = frozenset({400, 404})  # a bad key may be refused first
        else:
            case.statuses = frozenset({status, 400, 404} if status != 413 else {413, 400})
            case.field = fieldname if fieldname and "%" not in key else None
        return case

    def missing_target(self) -> Case:
        rng = self.rng
        method, template = rng.choice(MISSING_TARGET_WRITES)
        # Junk under an existing app could decode to one of its own paths (%2f is a '/'), and
        # junk as a group id to the root group, which exists (DELETE /v2/groups/%2f is the root's).
        junk_ok = APP_ID.strip("/") not in template and not template.startswith("/v2/groups/")
        name = self.missing_name() if rng.random() < 0.7 or not junk_ok else self.junk_segment()
        target = template.replace("{missing}", name)
        body = b""
        if "check/update" in target:
            body = b'{"Status": "passing"}'
        return Case(f"write to a missing target ({method} {template})", method, target, body=body,
                    statuses=frozenset({400, 404, 405}))

    def wrong_method(self) -> Case:
        rng = self.rng
        route, allowed = rng.choice(list(METHODS_OF.items()))
        method = rng.choice([m for m in ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                         "FROB", "get", "M-SEARCH", "X" * 200] if m not in allowed])
        return Case(f"method {method[:10]} on {route}", method, route, body=b"x" if method == "PATCH" else b"",
                    statuses=frozenset({405, 404, 400}), expect=REFUSE if method.isupper() else SYNTAX)


# ---------------------------------------------------------------------------
# the state the fuzz must leave alone


def seed_state(inst) -> str:
    """Writes a little of everything; returns a deployment id that stays unknown."""
    for key, value in (("fuzz/a", "1"), ("fuzz/b/c", "2"), ("fuzz/deep/x/y", "3")):
        assert inst.put(f"/v1/kv/{key}", data=value).json() is True
    inst.register_service({"Name": SERVICE_NAME, "ID": SERVICE_ID, "Port": 8080, "Tags": ["fz"],
                           "Check": {"TTL": "600s"}})
    r = inst.put("/v1/agent/check/register", json={"Name": "fuzz check", "ID": CHECK_ID, "TTL": "600s"})
    assert r.status_code == 200, r.text
    r = inst.put("/v1/catalog/register", json={"Node": EXTERNAL_NODE, "Address": "127.0.0.9",
                                               "Service": {"Service": "fuzz-ext", "Port": 81}})
    assert r.status_code == 200, r.text
    r = inst.post("/v2/apps", json={"id": APP_ID, "cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": 0})
    assert r.status_code == 201, r.text
    wait_for(lambda: inst.get_json("/v2/deployments") == [], timeout=20, message="the app's deployment to finish")
    return "fuzz-no-such-deployment"


def state_of(inst) -> dict[str, Any]:
    """Everything a client can read of the stored state."""
    paths = ["/v1/catalog/nodes", "/v1/catalog/services", "/v1/health/state/any", "/v1/agent/services",
             "/v1/agent/checks", "/v2/apps?embed=apps.tasks", "/v2/deployments", "/v2/queue", "/v2/tasks", "/v2/groups"]
    state: dict[str, Any] = {}
    r = inst.get("/v1/kv/?recurse")
    state["/v1/kv/?recurse"] = r.json() if r.status_code == 200 else r.status_code
    for path in paths:
        state[path] = inst.get_json(path)
    for name in state["/v1/catalog/services"]:
        state[f"/v1/catalog/service/{name}"] = inst.get_json(f"/v1/catalog/service/{quote(name, safe='')}")
    return state


def panics(inst) -> list[str]:
    """Lines of the node's logs (every node of a cluster target) that report a panic."""
    texts = [inst.stdout() + inst.stderr()]
    cluster = getattr(inst, "cluster", None)
    if cluster is not None:
        texts += [node.output() for node in cluster.nodes]
    return [line for text in texts for line in text.splitlines() if "panicked" in line]


def diff(before: dict, after: dict) -> str:
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}:\n  before {json.dumps(before.get(key))[:1500]}\n  after  {json.dumps(after.get(key))[:1500]}")
    return "\n".join(lines)


def send(inst, case: Case) -> Answer:
    host, port = inst.http_addr.rsplit(":", 1)
    data = case.raw if case.raw is not None else request_bytes(case)
    return raw_exchange(host, int(port), data, half_close=case.half_close)


# ---------------------------------------------------------------------------
# the tests


def test_malformed_and_oversized_requests_are_refused_and_change_nothing(atoll):
    print(f"\nHTTP fuzz seed {SEED} {replay_hint()}")
    rng = random.Random(SEED)
    try:
        deployment = seed_state(atoll)
        fuzz_and_compare(atoll, rng, deployment)
    finally:
        # Apps are not among what the cluster target resets between tests.
        atoll.delete(f"/v2/apps{APP_ID}?force=true")


def fuzz_and_compare(atoll, rng: random.Random, deployment: str) -> None:
    before = state_of(atoll)
    fuzzer = Fuzzer(rng, atoll.node, deployment)

    statuses: Counter = Counter()
    kinds: Counter = Counter()
    failures: list[str] = []
    slow: list[str] = []
    sent = 0
    started = time.monotonic()
    while sent < FUZZ_MAX_REQUESTS and time.monotonic() - started < FUZZ_MAX_SECONDS:
        case = fuzzer.next()
        t0 = time.monotonic()
        answer = send(atoll, case)
        took = time.monotonic() - t0
        if took > 2.0:
            slow.append(f"{case.name} {took:.1f}s")
        sent += 1
        kinds[case.name.split(" (")[0]] += 1
        statuses["closed" if answer.status is None and not answer.hung else
                 "hung" if answer.hung else answer.status] += 1
        problem = check_answer(case, answer)
        if problem:
            shown = (case.raw or request_bytes(case))[:300]
            failures.append(f"#{sent} {case.name}: {problem}\n    sent {shown!r}")
            if len(failures) >= 20:
                break
        if answer.hung or (answer.status is None and case.expect not in (SYNTAX, OVERSIZE)):
            if not atoll.running():
                failures.append(f"#{sent}: the process is gone\n{atoll.logs()}")
                break
    elapsed = time.monotonic() - started
    print(f"sent {sent} requests in {elapsed:.1f}s; statuses {dict(sorted(statuses.items(), key=str))}")
    print(f"kinds {dict(sorted(kinds.items()))}")
    print(f"answers slower than 2s: {slow}")

    assert atoll.running(), f"the process died during the fuzz {replay_hint()}\n{atoll.logs()}"
    assert not failures, f"{len(failures)} bad answers {replay_hint()}:\n" + "\n".join(failures)
    assert sent >= 200, f"only {sent} requests in {FUZZ_MAX_SECONDS}s"
    # Still serving, and nothing stored has changed.
    assert atoll.get("/v1/status/leader").status_code == 200
    after = state_of(atoll)
    assert after == before, f"the fuzz changed the state {replay_hint()}:\n{diff(before, after)}"
    found = panics(atoll)
    assert not found, f"panics in the log {replay_hint()}: {found[:5]}"


def test_regressions_found_by_the_fuzz(atoll):
    """Requests that once crashed a handler or were answered wrongly."""
    cases = [
        # Duration::from_secs_f64 panicked on a wait too large for a Duration.
        Case("huge wait", "GET", "/v1/kv/fuzz?wait=9999999999999999999h", field="wait", statuses=frozenset({400})),
        Case("huge bare wait", "GET", "/v1/catalog/services?wait=1e300", field="wait", statuses=frozenset({400})),
        Case("huge TTL", "PUT", "/v1/agent/check/register", body=b'{"Name": "c", "TTL": "9999999999999999999h"}',
             statuses=frozenset({400}), field="TTL"),
        # Path parameters that are not UTF-8: a JSON error naming the parameter.
        Case("invalid UTF-8 key", "GET", "/v1/kv/%ff%fe", statuses=frozenset({400}), field="key"),
        Case("invalid UTF-8 service", "GET", "/v1/catalog/service/%c0", statuses=frozenset({400}), field="name"),
        Case("invalid UTF-8 app", "GET", "/v2/apps/%ff", statuses=frozenset({400})),
        # Unknown routes and methods answer with an error body too.
        Case("unknown /v1 route", "GET", "/v1/nothing/here", statuses=frozenset({404})),
        Case("unknown /v2 route", "GET", "/v2/nothing", statuses=frozenset({404})),
        Case("method not allowed", "PATCH", "/v1/kv/fuzz", body=b"x", statuses=frozenset({405})),
        # A body over the limit is refused as JSON, before a 100 Continue invites it.
        Case("body over the limit", "PUT", "/v1/agent/service/register",
             body=b'{"Name": "' + b"n" * (BODY_LIMIT + 1) + b'"}', statuses=frozenset({413})),
        # Killing the tasks of an app that does not exist: Marathon's 404.
        Case("tasks of a missing app", "DELETE", "/v2/apps/fuzz/none/tasks", statuses=frozenset({404})),
    ]
    before = state_of(atoll)
    failures = []
    for case in cases:
        answer = send(atoll, case)
        problem = check_answer(case, answer)
        if problem:
            failures.append(f"{case.name}: {problem}")
    host, port = atoll.http_addr.rsplit(":", 1)
    expect_continue = (f"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                       f"Content-Length: {BODY_LIMIT * 64}\r\n\r\n").encode()
    answer = raw_exchange(host, int(port), expect_continue, timeout=5)
    if answer.status != 413:
        failures.append(f"100-continue for a body over the limit: {answer.describe()}")
    assert not failures, "\n".join(failures)
    assert state_of(atoll) == before
    assert not panics(atoll)


class SlowClient:
    """A connection that sends its request at its own pace."""

    def __init__(self, host: str, port: int, request: bytes, pace: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setblocking(False)
        self.request = request
        self.pace = pace  # seconds between bytes; 0 = send nothing at all
        self.sent = 0
        self.next_at = time.monotonic()
        self.dropped_after: float | None = None
        self.answer = b""
        self.opened = time.monotonic()

    def step(self, now: float) -> None:
        if self.dropped_after is not None:
            return
        try:
            data = self.sock.recv(4096)
            if data:
                self.answer += data
            else:
                self.dropped_after = now - self.opened
                return
        except BlockingIOError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            self.dropped_after = now - self.opened
            return
        if self.pace and self.sent < len(self.request) and now >= self.next_at:
            try:
                self.sock.send(self.request[self.sent:self.sent + 1])
                self.sent += 1
                self.next_at = now + self.pace
            except (BlockingIOError, ConnectionResetError, BrokenPipeError):
                self.dropped_after = now - self.opened

    def close(self) -> None:
        self.sock.close()


def test_slow_clients_do_not_block_others_and_are_dropped(atoll_factory):
    """Slow or silent clients hold no more than a connection each, and only until the timeouts."""
    inst = atoll_factory.start("slow", extra_args=["--http-header-timeout", str(HEADER_TIMEOUT),
                                                   "--http-body-timeout", str(BODY_TIMEOUT)])
    host, port = inst.http_addr.rsplit(":", 1)
    port_number = int(port)
    body = b'{"Name": "slow-svc", "Port": 1}'
    slow_headers = b"GET /v1/catalog/services HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    slow_body = (b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body)
    head_len = slow_body.index(b"\r\n\r\n") + 4
    clients: list[tuple[str, SlowClient]] = []
    try:
        for _ in range(4):
            clients.append(("headers a byte at a time", SlowClient(host, port_number, slow_headers, 0.25)))
            clients.append(("nothing sent", SlowClient(host, port_number, b"", 0)))
            body_client = SlowClient(host, port_number, slow_body, 0.25)
            body_client.sock.setblocking(True)
            body_client.sock.sendall(slow_body[:head_len])  # headers at once, then the body slowly
            body_client.sock.setblocking(False)
            body_client.sent = head_len
            clients.append(("body slower than declared", body_client))
        started = time.monotonic()
        served = 0
        slowest = 0.0
        limit = max(HEADER_TIMEOUT, BODY_TIMEOUT) + 10.0
        while time.monotonic() - started < limit:
            now = time.monotonic()
            for _, client in clients:
                client.step(now)
            # Meanwhile a normal client is answered promptly.
            t0 = time.monotonic()
            r = requests.get(inst.url("/v1/catalog/services"), timeout=5)
            slowest = max(slowest, time.monotonic() - t0)
            assert r.status_code == 200, r.text
            served += 1
            if all(c.dropped_after is not None for _, c in clients):
                break
            time.sleep(0.02)  # pacing of the slow senders, not a synchronisation
        report = {}
        for kind, client in clients:
            report.setdefault(kind, []).append(
                None if client.dropped_after is None else round(client.dropped_after, 1))
        print(f"\nslow clients dropped after (s): {report}; {served} normal requests served meanwhile, "
              f"slowest {slowest * 1000:.0f} ms")
        assert slowest < 2.0, f"a normal request took {slowest:.1f}s while slow clients were connected"
        for kind, client in clients:
            assert client.dropped_after is not None, f"a client sending {kind} was never dropped: {report}"
        for kind, client in clients:
            timeout = BODY_TIMEOUT if kind.startswith("body") else HEADER_TIMEOUT
            assert client.dropped_after >= timeout * 0.9, f"{kind} dropped too early: {report}"
            assert client.dropped_after <= timeout + 3.0, f"{kind} dropped late: {report}"
        for kind, client in clients:
            if kind.startswith("body"):
                assert client.answer.startswith(b"HTTP/1.1 408"), (kind, client.answer[:200])
        assert "slow-svc" not in inst.get_json("/v1/catalog/services")
    finally:
        for _, client in clients:
            client.close()
    assert inst.running()
    assert not panics(inst)
