"""Marathon API depth, through the `marathon` client and its models: `/v2/info`, HTTP callback
event subscriptions, the event stream's first event, `/v2/apps` filters and embeds, version
rollback, `DELETE /v2/leader`.

Apps are process-driver apps (`cmd`), under a unique id prefix per test; every process they
start is removed at the end. Event subscribers are small HTTP servers on 127.0.0.1 run by the
test itself.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps_util import marathon_client, marathon_module, prefixed_node, wait_running
from conftest import stays, wait_for


@pytest.fixture
def env(atoll_factory):
    with prefixed_node(atoll_factory, "depth") as running:
        yield running


def cmd_app(m, app_id: str, cmd: str = "exec sleep 600", instances: int = 0, **extra):
    return m.MarathonApp(id=app_id, cmd=cmd, instances=instances, cpus=0.05, mem=16, **extra)


# ---------------------------------------------------------------------------
# /v2/info


def test_info_has_every_section_and_parses_with_the_client_models(env):
    inst, _ = env
    m = marathon_module()
    info = marathon_client(inst).get_info()
    assert isinstance(info, m.models.MarathonInfo)
    assert info.name == "marathon" and info.version and info.buildref
    assert info.elected is True
    assert info.leader == inst.http_addr
    assert info.framework_id
    config = info.marathon_config
    # The client's model takes `framework_name` but does not keep it: read it from the JSON.
    assert inst.get_json("/v2/info")["marathon_config"]["framework_name"] == "marathon"
    assert config.ha is True and config.checkpoint is True
    assert config.local_port_min < config.local_port_max
    assert config.hostname and config.executor == "//cmd"
    assert config.task_launch_timeout > 0 and config.reconciliation_interval > 0
    assert config.features == []
    zk = info.zookeeper_config
    assert zk.zk is None, "there is no ZooKeeper"
    assert zk.zk_hosts, "the Raft servers holding the state"
    assert zk.zk_max_versions == 20
    assert info.http_config.http_port == inst.http_port
    assert info.event_subscriber.type == "http_callback"
    assert info.event_subscriber.http_endpoints == []


# ---------------------------------------------------------------------------
# event subscriptions


class Callbacks:
    """A local HTTP server recording the events POSTed to each path; `fail[path]` makes that
    many POSTs to the path answer 500 first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[str, list[dict]] = {}
        self.refused: dict[str, list[dict]] = {}
        self.fail: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                event = json.loads(self.rfile.read(length))
                with owner.lock:
                    failing = owner.fail.get(self.path, 0) > 0
                    if failing:
                        owner.fail[self.path] -= 1
                        owner.refused.setdefault(self.path, []).append(event)
                    else:
                        owner.accepted.setdefault(self.path, []).append(event)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def events(self, path: str) -> list[dict]:
        with self.lock:
            return list(self.accepted.get(path, []))

    def types(self, path: str) -> list[str]:
        return [e["eventType"] for e in self.events(path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callbacks():
    server = Callbacks()
    yield server
    server.close()


def test_event_subscriptions_deliver_in_order_retry_and_stop(env, callbacks):
    inst, prefix = env
    m = marathon_module()
    client = marathon_client(inst)
    ok, flaky = callbacks.url("/ok"), callbacks.url("/flaky")
    callbacks.fail["/flaky"] = 2

    answer = client.create_event_subscription(ok)
    assert answer["eventType"] == "subscribe_event" and answer["callbackUrl"] == ok, answer
    client.create_event_subscription(flaky)
    # Registering again changes nothing.
    client.create_event_subscription(ok)
    assert sorted(client.list_event_subscriptions()) == sorted([ok, flaky])
    assert sorted(client.get_info().event_subscriber.http_endpoints) == sorted([ok, flaky])

    # The first event to /flaky is refused twice, then delivered: the same event each time.
    wait_for(lambda: "subscribe_event" in callbacks.types("/flaky"), timeout=20,
             message=lambda: f"/flaky to accept its subscribe event (refused: {callbacks.refused})")
    refused = callbacks.refused["/flaky"]
    assert len(refused) == 2 and refused[0] == refused[1] == callbacks.events("/flaky")[0], refused

    app_id = f"/{prefix}/events"
    client.create_app(app_id, cmd_app(m, app_id, instances=1))
    wait_running(inst, app_id, 1, want_healthy=False)

    def delivered_to_both():
        return all(
            any(e["eventType"] == "status_update_event" and e.get("taskStatus") == "TASK_RUNNING"
                and e.get("appId") == app_id for e in callbacks.events(path))
            for path in ("/ok", "/flaky")
        )

    wait_for(delivered_to_both, timeout=20, message=lambda: f"events of {app_id}: {callbacks.types('/ok')}")
    # In order, and the same order for every subscriber: from /flaky's subscription on, /ok
    # saw what /flaky saw.
    ok_events, flaky_events = callbacks.events("/ok"), callbacks.events("/flaky")
    start = next(i for i, e in enumerate(ok_events)
                 if e["eventType"] == "subscribe_event" and e["callbackUrl"] == flaky)
    assert ok_events[0]["eventType"] == "subscribe_event" and ok_events[0]["callbackUrl"] == ok
    shared = min(len(ok_events) - start, len(flaky_events))
    assert ok_events[start:start + shared] == flaky_events[:shared]
    ok_types = [e["eventType"] for e in ok_events]
    assert ok_types.index("api_post_event") < ok_types.index("status_update_event"), ok_types
    staging_then_running = [e["taskStatus"] for e in ok_events
                            if e["eventType"] == "status_update_event" and e["appId"] == app_id]
    assert staging_then_running[-1] == "TASK_RUNNING", staging_then_running

    # Deleting stops delivery: /ok gets its unsubscribe event last; /flaky goes on.
    answer = client.delete_event_subscription(ok)
    assert answer["eventType"] == "unsubscribe_event" and answer["callbackUrl"] == ok, answer
    assert client.list_event_subscriptions() == [flaky]
    wait_for(lambda: "unsubscribe_event" in callbacks.types("/flaky"), timeout=20,
             message="the unsubscribe event")
    wait_for(lambda: callbacks.types("/ok")[-1:] == ["unsubscribe_event"], timeout=20,
             message=lambda: f"/ok's last event to be its unsubscribe: {callbacks.types('/ok')}")
    ok_count = len(callbacks.events("/ok"))
    other = f"/{prefix}/after"
    client.create_app(other, cmd_app(m, other))
    wait_for(lambda: any(e.get("uri") == f"/v2/apps{other}" for e in callbacks.events("/flaky")),
             timeout=20, message="the new app's event at /flaky")
    stays(lambda: len(callbacks.events("/ok")) == ok_count, 1.0, "/ok got events after unsubscribing")


def test_event_subscriptions_survive_a_restart_and_are_refused_without_a_url(env, callbacks):
    inst, _ = env
    client = marathon_client(inst)
    url = callbacks.url("/kept")
    client.create_event_subscription(url)
    inst.restart()
    assert marathon_client(inst).list_event_subscriptions() == [url]

    r = inst.post("/v2/eventSubscriptions")
    assert r.status_code == 400 and "callbackUrl" in r.json()["message"], r.text
    r = inst.post("/v2/eventSubscriptions", params={"callbackUrl": "ftp://example/x"})
    assert r.status_code == 422 and "callbackUrl" in r.json()["message"], r.text
    assert marathon_client(inst).list_event_subscriptions() == [url]


def _first_event(inst, after_open=None, **params) -> tuple[str, dict]:
    """The first event of a new `/v2/events` stream: its SSE name and its data.

    `after_open` runs once the stream's headers arrived: the stream is subscribed by then.
    """
    with inst.get("/v2/events", params=params, headers={"Accept": "text/event-stream"}, stream=True, timeout=(5, 15)) as stream:
        assert stream.status_code == 200, stream.text
        if after_open is not None:
            after_open()
        name = None
        # Each read waits at most the read timeout; the first event is a few lines in.
        for count, raw in enumerate(stream.iter_lines(chunk_size=None)):
            line = raw.decode() if isinstance(raw, bytes) else raw
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                return name or "", json.loads(line.split(":", 1)[1])
            assert count < 20, "no event in the first lines of the stream"
    raise AssertionError("the stream ended before its first event")


def test_an_event_stream_starts_with_event_stream_attached(env):
    inst, prefix = env
    name, event = _first_event(inst)
    assert name == "event_stream_attached" and event["eventType"] == "event_stream_attached", event
    assert event["timestamp"], event

    # A stream asking for other types does not get it: its first event is the one it asked for.
    app_id = f"/{prefix}/attached"

    def create():
        app = {"id": app_id, "cmd": "exec sleep 600", "instances": 1, "cpus": 0.05, "mem": 16}
        r = inst.post("/v2/apps", json=app, timeout=10)
        assert r.status_code == 201, r.text

    name, event = _first_event(inst, after_open=create, event_type="api_post_event")
    assert name == "api_post_event" and event["appDefinition"]["id"] == app_id, event


# ---------------------------------------------------------------------------
# /v2/apps filters and embeds


def test_app_filters_and_embeds(env):
    inst, prefix = env
    m = marathon_module()
    client = marathon_client(inst)
    web, db, cache = (f"/{prefix}/{name}" for name in ("web", "db", "cache"))
    client.create_app(web, cmd_app(m, web, cmd="exec sleep 601", instances=1, labels={"tier": "web", "env": "prod"}))
    client.create_app(db, cmd_app(m, db, cmd="exec SLEEP_DB=1 sleep 602", labels={"tier": "db", "env": "prod"}))
    client.create_app(cache, cmd_app(m, cache, cmd="exec sleep 603", labels={"tier": "cache"}))
    wait_running(inst, web, 1, want_healthy=False)

    def ids(**kwargs) -> set[str]:
        return {a.id for a in client.list_apps(**kwargs) if a.id.startswith(f"/{prefix}/")}

    assert ids(app_id=f"{prefix}/") == {web, db, cache}
    assert ids(app_id=f"{prefix.upper()}/W") == {web}, "id matches without case"
    assert ids(cmd="sleep_db") == {db}, "cmd matches without case"
    assert ids(cmd="sleep 60") == {web, db, cache}
    cases = {
        "tier": {web, db, cache},
        "env": {web, db},
        "tier==db": {db},
        "tier!=db": {web, cache},
        "env!=prod": {cache},
        "tier in (web,cache)": {web, cache},
        "tier notin (web, cache)": {db},
        "env==prod,tier!=web": {db},
        "owner": set(),
    }
    for selector, expected in cases.items():
        assert ids(label=selector) == expected, selector
    r = inst.get("/v2/apps", params={"label": "tier in web"})
    assert r.status_code == 400 and "label" in r.json()["message"], r.text

    # The list always carries counts and deployments; the rest only when embedded.
    plain = {a["id"]: a for a in inst.get_json("/v2/apps")["apps"]}[web]
    assert plain["tasksRunning"] == 1 and "deployments" in plain
    for key in ("tasks", "taskStats", "readinessCheckResults", "lastTaskFailure"):
        assert key not in plain, key
    [embedded] = client.list_apps(app_id=web, embed_tasks=True, embed_task_stats=True,
                                  embed_readiness=True, embed_last_task_failure=True)
    assert [t.app_id for t in embedded.tasks] == [web]
    assert embedded.tasks_running == 1
    stats = embedded.task_stats
    assert isinstance(stats, m.models.app.MarathonTaskStats)
    total = stats.total_summary.stats.counts
    assert total.running == 1 and total.staged == 0, stats
    assert stats.with_latest_config.stats.counts.running == 1 and stats.with_outdated_config is None
    assert embedded.readiness_check_results == []
    raw = inst.get_json("/v2/apps", params={"embed": ["apps.tasks", "apps.counts"], "id": web})["apps"][0]
    assert len(raw["tasks"]) == 1 and raw["tasksRunning"] == 1

    # A single app carries everything, whatever is embedded.
    app = client.get_app(web)
    assert app.tasks_running == 1 and len(app.tasks) == 1 and app.task_stats
    assert app.readiness_check_results == []


# ---------------------------------------------------------------------------
# versions and rollback


def test_versions_and_rollback_to_a_stored_version(env):
    inst, prefix = env
    m = marathon_module()
    client = marathon_client(inst)
    app_id = f"/{prefix}/rollback"
    created = client.create_app(app_id, cmd_app(m, app_id, cmd="exec sleep 611"))
    v1 = created.version
    client.update_app(app_id, cmd_app(m, app_id, cmd="exec sleep 622"), force=True)
    versions = client.list_versions(app_id)
    assert len(versions) == 2 and versions[-1] == v1, versions
    v2 = versions[0]
    old = client.get_version(app_id, v1)
    assert isinstance(old, m.MarathonApp) and old.cmd == "exec sleep 611" and old.version == v1

    answer = client.rollback_app(app_id, v1, force=True)
    assert answer["deploymentId"] and answer["version"] not in (v1, v2), answer
    app = client.get_app(app_id)
    assert app.cmd == "exec sleep 611" and app.version == answer["version"]
    assert client.list_versions(app_id)[0] == answer["version"]

    missing = "2001-01-01T00:00:00.000Z"
    r = inst.put(f"/v2/apps{app_id}", json={"version": missing}, params={"force": "true"})
    assert r.status_code == 404, r.text
    assert r.json()["message"] == f"App '{app_id}' does not exist in version {missing}"
    r = inst.put(f"/v2/apps{app_id}", json={"version": v2, "cmd": "exec sleep 633"}, params={"force": "true"})
    assert r.status_code == 422 and r.json()["details"][0]["path"] == "/version", r.text
    assert client.get_app(app_id).cmd == "exec sleep 611", "a refused rollback changed the app"
    r = inst.put(f"/v2/apps/{prefix}/nothing", json={"version": v1})
    assert r.status_code == 404, r.text


# ---------------------------------------------------------------------------
# leader


def test_delete_leader_abdicates_and_leadership_comes_back(env):
    inst, _ = env
    client = marathon_client(inst)
    assert client.get_leader() == {"leader": inst.http_addr}
    assert client.delete_leader() == {"message": "Leadership abdicated"}

    def leads_again():
        r = inst.get("/v2/leader")
        return r.status_code == 200 and r.json() == {"leader": inst.http_addr} and client.get_info().elected

    wait_for(leads_again, timeout=20, interval=0.2, message="the one node to lead again")
    # Writes are taken again.
    url = "http://127.0.0.1:9/after-abdication"
    wait_for(lambda: client.create_event_subscription(url), timeout=20, message="a write after abdicating")
    assert client.list_event_subscriptions() == [url]


def test_delete_leader_moves_leadership_to_another_server(new_cluster):
    cluster = new_cluster("abdicate")
    cluster.add_servers(3)
    cluster.start()
    old = cluster.wait_converged(voters=3)
    follower = next(s for s in cluster.servers if s is not old)
    # Asked of a follower, the request goes on to the leader (a redirect keeping the method).
    r = follower.delete("/v2/leader")
    assert r.status_code == 200 and r.json() == {"message": "Leadership abdicated"}, r.text
    assert [h.status_code for h in r.history] == [307], r.history

    def moved():
        leader = cluster.agreement(voters=3)
        return leader if leader and leader != old.rpc_addr else None

    new = cluster.by_rpc(wait_for(moved, timeout=20, interval=0.1,
                                  message=lambda: "another server to lead\n" + cluster.logs()))
    assert new.get_json("/v2/leader") == {"leader": new.http_addr}
    assert old.get_json("/v2/info")["elected"] is False
