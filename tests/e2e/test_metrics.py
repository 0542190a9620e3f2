"""Metrics: /metrics in Prometheus's text format, /v1/agent/metrics in Consul's JSON.

The text is checked by Prometheus's own tools: `promtool check metrics` parses and lints
it, and a real `prometheus` scrapes the node and answers through its query API. Counters
are checked to move with the traffic the tests send (HTTP by route template, DNS by query
type and response code), gauges with the catalog and with parked blocking queries.
"""

from __future__ import annotations

import re
import subprocess
import threading

import dns.message
import dns.query
import pytest
import requests

from conftest import require_tool, wait_for
from prometheus_util import running_prometheus

DEADLINE = 60.0
TEXT_TYPE = "text/plain; version=0.0.4"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a text exposition: (name, labels) -> value."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unreadable sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(_LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def scrape(inst) -> dict[tuple[str, frozenset], float]:
    r = inst.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith(TEXT_TYPE)
    return parse(r.text)


def value(samples, name: str, **labels) -> float:
    """A sample's value; a series not there yet counts as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_text_passes_promtool(atoll):
    promtool = require_tool("promtool", "/usr/bin/promtool")
    # Some traffic first, so that labelled series exist.
    assert atoll.put("/v1/kv/promtool/check", data=b"x").status_code == 200
    assert atoll.get("/v1/kv/promtool/missing").status_code == 404
    assert atoll.get("/no/such/path").status_code == 404
    dns.query.udp(dns.message.make_query(f"{atoll.node}.node.consul.", "A"), atoll.dns_host, timeout=3, port=atoll.dns_port)
    text = atoll.get("/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    report = (checked.stdout + checked.stderr).decode(errors="replace")
    assert checked.returncode == 0, f"promtool: {report}\n--- text ---\n{text[:3000]}"
    assert report.strip() == "", f"promtool lint: {report}"
    names = {name for name, _ in parse(text)}
    for expected in (
        "atoll_http_requests_total",
        "atoll_http_request_duration_seconds_bucket",
        "atoll_http_blocking_queries",
        "atoll_dns_queries_total",
        "atoll_dns_query_duration_seconds_count",
        "atoll_raft_commit_duration_seconds_bucket",
        "atoll_raft_apply_duration_seconds_bucket",
        "atoll_raft_leader_changes_total",
        "atoll_raft_applied_index",
        "atoll_raft_last_log_index",
        "atoll_raft_term",
        "atoll_raft_log_entries",
        "atoll_raft_last_snapshot_index",
        "atoll_catalog_nodes",
        "atoll_catalog_services",
        "atoll_catalog_service_instances",
        "atoll_catalog_checks",
        "atoll_catalog_node_health",
        "atoll_kv_keys",
        "atoll_scheduler_plan_duration_seconds_count",
        "atoll_scheduler_placements_total",
        "atoll_scheduler_queue_instances",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert expected in names, f"{expected} missing from /metrics"
    # A dev node leads its one-node cluster and has seen one leader.
    samples = parse(text)
    assert value(samples, "atoll_raft_state", state="Leader") == 1
    assert value(samples, "atoll_raft_leader_changes_total") >= 1


def test_counters_move_with_traffic(atoll):
    before = scrape(atoll)
    puts, lookups = 25, 20
    for n in range(puts):
        assert atoll.put(f"/v1/kv/traffic/key-{n}", data=b"v").status_code == 200
    query = dns.message.make_query(f"{atoll.node}.node.consul.", "A")
    for _ in range(lookups):
        answer = dns.query.udp(query, atoll.dns_host, timeout=3, port=atoll.dns_port)
        assert answer.rcode() == 0
    missing = dns.message.make_query("no-such-service.service.consul.", "SRV")
    for _ in range(3):
        answer = dns.query.tcp(missing, atoll.dns_host, timeout=3, port=atoll.dns_port)
        assert answer.rcode() == 3
    after = scrape(atoll)

    put = dict(method="PUT", route="/v1/kv/{*key}", code="200")
    assert value(after, "atoll_http_requests_total", **put) >= value(before, "atoll_http_requests_total", **put) + puts
    timed = dict(method="PUT", route="/v1/kv/{*key}")
    assert value(after, "atoll_http_request_duration_seconds_count", **timed) >= puts
    assert value(after, "atoll_dns_queries_total", qtype="A", rcode="NOERROR") >= (
        value(before, "atoll_dns_queries_total", qtype="A", rcode="NOERROR") + lookups
    )
    assert value(after, "atoll_dns_queries_total", qtype="SRV", rcode="NXDOMAIN") >= (
        value(before, "atoll_dns_queries_total", qtype="SRV", rcode="NXDOMAIN") + 3
    )
    assert value(after, "atoll_dns_query_duration_seconds_count", transport="tcp") >= 3
    assert value(after, "atoll_kv_keys") >= value(before, "atoll_kv_keys") + puts
    # Raw paths and keys never become labels: only the route template does.
    for name, labels in after:
        for _, label_value in labels:
            assert "traffic/key-" not in label_value, (name, labels)

    services = value(after, "atoll_catalog_services")
    instances = value(after, "atoll_catalog_service_instances")
    atoll.register_service({"ID": "metrics-web-1", "Name": "metrics-web", "Port": 8080})
    registered = scrape(atoll)
    assert value(registered, "atoll_catalog_services") == services + 1
    assert value(registered, "atoll_catalog_service_instances") == instances + 1
    register = dict(method="PUT", route="/v1/agent/service/register", code="200")
    assert value(registered, "atoll_http_requests_total", **register) >= 1


def test_parked_blocking_queries_are_a_gauge(atoll):
    assert atoll.put("/v1/kv/parked/key", data=b"1").status_code == 200
    index = atoll.get("/v1/kv/parked/key").headers["X-Consul-Index"]
    base = value(scrape(atoll), "atoll_http_blocking_queries")
    answers = []

    def blocked():
        answers.append(atoll.get("/v1/kv/parked/key", params={"index": index, "wait": "30s"}, timeout=40))

    waiters = [threading.Thread(target=blocked) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    try:
        wait_for(
            lambda: value(scrape(atoll), "atoll_http_blocking_queries") >= base + 3,
            timeout=10,
            message="three parked blocking queries",
        )
    finally:
        # The change releases them.
        assert atoll.put("/v1/kv/parked/key", data=b"2").status_code == 200
        for waiter in waiters:
            waiter.join(timeout=40)
    assert [a.status_code for a in answers] == [200, 200, 200]
    wait_for(
        lambda: value(scrape(atoll), "atoll_http_blocking_queries") == base,
        timeout=10,
        message="the gauge back where it was",
    )


def test_snapshots_are_timed_and_compact_the_log(atoll_factory):
    inst = atoll_factory.start("snapshots", extra_args=["--snapshot-after-entries", "50"])
    # One entry per put (sequential: concurrent writes would share entries). Raft keeps the
    # last 256 entries behind a snapshot and purges 256 at a time, so 600 entries are enough
    # for a purge.
    for n in range(600):
        assert inst.put(f"/v1/kv/snap/{n}", data=b"v").status_code == 200

    def compacted():
        now = scrape(inst)
        snapshots = value(now, "atoll_raft_snapshot_duration_seconds_count")
        purged = value(now, "atoll_raft_log_entries") < value(now, "atoll_raft_last_log_index")
        return now if snapshots >= 1 and purged else None

    now = wait_for(compacted, timeout=30, interval=0.2, message=lambda: str(sorted(
        (name, v) for (name, labels), v in scrape(inst).items() if name.startswith("atoll_raft_") and not labels
    )))
    assert value(now, "atoll_raft_last_snapshot_index") >= 50
    assert value(now, "atoll_raft_applied_index") >= value(now, "atoll_raft_last_snapshot_index")
    assert value(now, "atoll_raft_applied_entries_total") >= 600


def test_workload_gauges_and_placements_follow_apps(atoll_factory):
    from apps_util import prefixed_node

    with prefixed_node(atoll_factory, "metrics-apps") as (inst, prefix):
        before = scrape(inst)
        placed = value(before, "atoll_scheduler_placements_total")
        sleeper = f"/{prefix}/sleeper"
        huge = f"/{prefix}/huge"
        for app in (
            {"id": sleeper, "cmd": "exec sleep 600", "instances": 2, "cpus": 0.01, "mem": 8},
            {"id": huge, "cmd": "exec sleep 600", "instances": 1, "cpus": 0.01, "mem": 10000000},
        ):
            r = inst.post("/v2/apps", json=app)
            assert r.status_code == 201, r.text

        def settled():
            now = scrape(inst)
            running = value(now, "atoll_tasks", state="running", driver="exec")
            return now if running >= 2 and value(now, "atoll_scheduler_queue_instances") >= 1 else None

        now = wait_for(settled, timeout=30, interval=0.2, message=lambda: inst.get("/v2/tasks").text)
        assert value(now, "atoll_apps") >= 2
        assert value(now, "atoll_scheduler_queue_apps") >= 1
        assert value(now, "atoll_scheduler_placements_total") >= placed + 2
        assert value(now, "atoll_scheduler_plan_duration_seconds_count") >= 1


def test_agent_metrics_json_and_prometheus_format(atoll):
    assert atoll.put("/v1/kv/json/shape", data=b"x").status_code == 200
    r = atoll.get("/v1/agent/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC", body["Timestamp"])
    assert body["Points"] == []
    assert body["Gauges"] and body["Counters"] and body["Samples"]
    for gauge in body["Gauges"]:
        assert set(gauge) == {"Name", "Value", "Labels"}, gauge
        assert isinstance(gauge["Labels"], dict)
    for entry in body["Counters"] + body["Samples"]:
        assert set(entry) == {"Name", "Count", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"}, entry
    gauges = {g["Name"]: g for g in body["Gauges"] if not g["Labels"]}
    assert gauges["atoll_catalog_nodes"]["Value"] >= 1
    puts = [
        c
        for c in body["Counters"]
        if c["Name"] == "atoll_http_requests_total"
        and c["Labels"] == {"method": "PUT", "route": "/v1/kv/{*key}", "code": "200"}
    ]
    assert puts and puts[0]["Count"] >= 1 and puts[0]["Sum"] == puts[0]["Count"]
    commits = [s for s in body["Samples"] if s["Name"] == "atoll_raft_commit_duration_seconds"]
    assert commits and commits[0]["Count"] >= 1
    sample = commits[0]
    assert 0 <= sample["Min"] <= sample["Mean"] <= sample["Max"]
    assert abs(sample["Mean"] * sample["Count"] - sample["Sum"]) < 1e-6

    # ?format=prometheus is the text of /metrics: the same families, the same content type.
    text = atoll.get("/v1/agent/metrics", params={"format": "prometheus"})
    plain = atoll.get("/metrics")
    assert text.status_code == 200
    assert text.headers["Content-Type"] == plain.headers["Content-Type"]

    def types(body: str) -> set[str]:
        return {line for line in body.splitlines() if line.startswith("# TYPE ")}

    assert types(text.text) == types(plain.text)
    assert {name for name, _ in parse(text.text)} == {name for name, _ in parse(plain.text)}
    # The Consul endpoint carries Consul's headers; a format it does not know is refused.
    assert "X-Consul-Index" in text.headers
    bad = atoll.get("/v1/agent/metrics", params={"format": "xml"})
    assert bad.status_code == 400
    assert "format" in bad.text


@pytest.fixture
def prometheus_scraping(atoll, tmp_path):
    with running_prometheus(
        tmp_path,
        "  - job_name: atoll-metrics\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{atoll.http_addr}']\n",
    ) as running:
        yield running


def test_prometheus_scrapes_the_node(atoll, prometheus_scraping):
    base, log_path = prometheus_scraping

    def instant(query: str) -> list:
        r = requests.get(f"{base}/api/v1/query", params={"query": query}, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def why():
        targets = requests.get(f"{base}/api/v1/targets", timeout=5).text
        return f"targets: {targets[:2000]}\nlog: {log_path.read_text(errors='replace')[-2000:]}"

    up = wait_for(
        lambda: instant('up{job="atoll-metrics"} == 1'), timeout=DEADLINE, interval=0.5, message=why
    )
    assert up[0]["metric"]["instance"] == atoll.http_addr
    nodes = wait_for(
        lambda: instant('atoll_catalog_nodes{job="atoll-metrics"}'), timeout=DEADLINE, interval=0.5, message=why
    )
    assert float(nodes[0]["value"][1]) >= 1
    # Its own scrapes are counted under the /metrics route.
    scrapes = wait_for(
        lambda: instant('atoll_http_requests_total{job="atoll-metrics",route="/metrics",code="200"}'),
        timeout=DEADLINE,
        interval=0.5,
        message=why,
    )
    assert float(scrapes[0]["value"][1]) >= 1
