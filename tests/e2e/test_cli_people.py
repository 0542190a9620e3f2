"""The command line for people: `atoll kv`, `catalog`, `services`, `watch`, `completion`,
deploy progress, and how the agent's address is found. Each test runs the real binary
against an `atoll dev` and checks its output and exit status."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess

import pytest

from apps_util import app_json, destroy_app, kill_task_processes, unique_prefix
from conftest import free_port, require_binary, require_tool, wait_for

pytestmark = pytest.mark.client_api

CLI_TIMEOUT = 60


def run(inst, *args: str, stdin: bytes | None = None, env: dict | None = None, addr: bool = True,
        timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs `atoll ARGS...` (with `--http-addr` of `inst` unless `addr` is false)."""
    command = [str(require_binary()), *args]
    if addr:
        command += ["--http-addr", inst.http_addr]
    environment = clean_env()
    environment.update(env or {})
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, env=environment,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def clean_env() -> dict:
    environment = dict(os.environ)
    for name in ("ATOLL_HTTP_ADDR", "CONSUL_HTTP_ADDR", "NO_COLOR"):
        environment.pop(name, None)
    return environment


def out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode(errors="replace")


def err(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode(errors="replace")


def shown(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{out(proc)}\n--- stderr ---\n{err(proc)}"


def kv_entry(inst, key: str) -> dict | None:
    r = inst.get(f"/v1/kv/{key}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()[0]


def stored_value(inst, key: str) -> bytes | None:
    entry = kv_entry(inst, key)
    if entry is None:
        return None
    return base64.b64decode(entry["Value"] or "")


# ---------------------------------------------------------------------------
# kv


def test_kv_put_and_get_in_every_form(atoll, tmp_path):
    put = run(atoll, "kv", "put", "--flags", "7", "cli/a", "hello")
    assert put.returncode == 0, shown(put)
    assert out(put).strip() == "Success! Data written to: cli/a"
    assert kv_entry(atoll, "cli/a")["Flags"] == 7

    from_stdin = run(atoll, "kv", "put", "cli/b", "-", stdin=b"from stdin\x00\xff")
    assert from_stdin.returncode == 0, shown(from_stdin)
    assert stored_value(atoll, "cli/b") == b"from stdin\x00\xff"
    data = tmp_path / "value.txt"
    data.write_bytes(b"from a file")
    from_file = run(atoll, "kv", "put", "cli/sub/c", f"@{data}")
    assert from_file.returncode == 0, shown(from_file)
    assert stored_value(atoll, "cli/sub/c") == b"from a file"

    got = run(atoll, "kv", "get", "cli/a")
    assert got.returncode == 0 and got.stdout == b"hello\n", shown(got)
    raw = run(atoll, "kv", "get", "cli/b")
    assert raw.stdout == b"from stdin\x00\xff\n", shown(raw)

    detailed = run(atoll, "kv", "get", "--detailed", "cli/a")
    fields = dict(line.split(None, 1) for line in out(detailed).splitlines())
    assert fields["Key"] == "cli/a" and fields["Flags"] == "7" and fields["Value"] == "hello", shown(detailed)
    assert fields["Session"] == "-" and int(fields["ModifyIndex"]) >= int(fields["CreateIndex"]) > 0, fields

    recurse = run(atoll, "kv", "get", "--recurse", "cli/")
    assert out(recurse).splitlines() == ["cli/a:hello", "cli/b:from stdin\x00\ufffd", "cli/sub/c:from a file"], shown(recurse)
    keys = run(atoll, "kv", "get", "--keys", "cli/")
    assert out(keys).splitlines() == ["cli/a", "cli/b", "cli/sub/"], shown(keys)
    all_keys = run(atoll, "kv", "get", "--keys", "--separator", "", "cli/")
    assert out(all_keys).splitlines() == ["cli/a", "cli/b", "cli/sub/c"], shown(all_keys)
    as_json = run(atoll, "kv", "get", "--recurse", "--json", "cli/")
    assert [e["Key"] for e in json.loads(out(as_json))] == ["cli/a", "cli/b", "cli/sub/c"], shown(as_json)

    as_base64 = run(atoll, "kv", "get", "-base64", "cli/b")
    assert out(as_base64) == base64.b64encode(b"from stdin\x00\xff").decode() + "\n", shown(as_base64)
    put_base64 = run(atoll, "kv", "put", "-base64", "cli/d", "AAH/")
    assert put_base64.returncode == 0 and stored_value(atoll, "cli/d") == b"\x00\x01\xff", shown(put_base64)
    not_base64 = run(atoll, "kv", "put", "--base64", "cli/e", "%%")
    assert not_base64.returncode != 0 and "--base64" in err(not_base64), shown(not_base64)


def test_a_missing_key_is_exit_1_with_consuls_message(atoll):
    missing = run(atoll, "kv", "get", "cli/nothing-here")
    assert missing.returncode == 1, shown(missing)
    assert err(missing).strip() == "Error! No key exists at: cli/nothing-here", shown(missing)
    assert out(missing) == ""
    # A prefix without keys is no error: nothing to list.
    empty = run(atoll, "kv", "get", "--recurse", "cli/nothing-here/")
    assert empty.returncode == 0 and out(empty) == "", shown(empty)
    slash = run(atoll, "kv", "get", "/cli/a")
    assert slash.returncode == 1 and "'/'" in err(slash), shown(slash)


def test_consul_style_single_dash_flags_work_as_double_dash_ones(atoll):
    assert run(atoll, "kv", "put", "-flags=3", "dash/a", "1").returncode == 0
    assert run(atoll, "kv", "put", "-flags", "4", "dash/b", "2").returncode == 0
    single = run(atoll, "kv", "get", "-recurse", "dash/")
    double = run(atoll, "kv", "get", "--recurse", "dash/")
    assert single.returncode == 0 and out(single) == out(double) == "dash/a:1\ndash/b:2\n", shown(single)
    assert kv_entry(atoll, "dash/a")["Flags"] == 3 and kv_entry(atoll, "dash/b")["Flags"] == 4
    # A value that looks like a flag, after the key, stays a value.
    value = run(atoll, "kv", "put", "dash/c", "-recurse")
    assert value.returncode == 0 and stored_value(atoll, "dash/c") == b"-recurse", shown(value)


def test_failed_check_and_set_is_exit_1_naming_it(atoll):
    assert run(atoll, "kv", "put", "cas/k", "v1").returncode == 0
    index = kv_entry(atoll, "cas/k")["ModifyIndex"]

    stale = run(atoll, "kv", "put", "-cas", "-modify-index", str(index + 100), "cas/k", "v2")
    assert stale.returncode == 1, shown(stale)
    assert "CAS failed" in err(stale) and "cas/k" in err(stale), shown(stale)
    assert stored_value(atoll, "cas/k") == b"v1"
    # --cas without an index writes only a new key.
    create_only = run(atoll, "kv", "put", "--cas", "cas/k", "v3")
    assert create_only.returncode == 1 and "CAS failed" in err(create_only), shown(create_only)

    fresh = run(atoll, "kv", "put", "--cas", "--modify-index", str(index), "cas/k", "v2")
    assert fresh.returncode == 0, shown(fresh)
    assert stored_value(atoll, "cas/k") == b"v2"

    new_index = kv_entry(atoll, "cas/k")["ModifyIndex"]
    refused = run(atoll, "kv", "delete", "-cas", "-modify-index", str(index), "cas/k")
    assert refused.returncode == 1 and "CAS failed" in err(refused), shown(refused)
    assert kv_entry(atoll, "cas/k") is not None
    deleted = run(atoll, "kv", "delete", "--cas", "--modify-index", str(new_index), "cas/k")
    assert deleted.returncode == 0 and "Deleted key: cas/k" in out(deleted), shown(deleted)
    assert kv_entry(atoll, "cas/k") is None

    # --cas needs an index to delete, and --recurse cannot be combined with it.
    assert run(atoll, "kv", "delete", "--cas", "cas/k").returncode != 0
    assert run(atoll, "kv", "delete", "--recurse", "--cas", "--modify-index", "1", "cas/").returncode != 0


def test_export_then_import_round_trips_values_and_flags(atoll, tmp_path):
    values = {"exp/a": (b"alpha", 0), "exp/b/c": (b"\x00\x01binary\xff", 42), "exp/empty": (b"", 9)}
    for key, (value, flags) in values.items():
        r = atoll.put(f"/v1/kv/{key}", params={"flags": flags}, data=value)
        assert r.status_code == 200 and r.json() is True, r.text
    exported = run(atoll, "kv", "export", "exp/")
    assert exported.returncode == 0, shown(exported)
    entries = json.loads(out(exported))
    assert {e["key"]: (base64.b64decode(e["value"]), e["flags"]) for e in entries} == values

    deleted = run(atoll, "kv", "delete", "-recurse", "exp/")
    assert deleted.returncode == 0 and "Deleted keys with prefix: exp/" in out(deleted), shown(deleted)
    assert all(kv_entry(atoll, key) is None for key in values)

    path = tmp_path / "export.json"
    path.write_bytes(exported.stdout)
    imported = run(atoll, "kv", "import", f"@{path}")
    assert imported.returncode == 0, shown(imported)
    assert sorted(out(imported).splitlines()) == sorted(f"Imported: {k}" for k in values)
    for key, (value, flags) in values.items():
        entry = kv_entry(atoll, key)
        assert entry is not None and entry["Flags"] == flags, entry
        assert base64.b64decode(entry["Value"] or "") == value, entry

    # From standard input too, into an other prefix.
    moved = [dict(e, key=e["key"].replace("exp/", "moved/")) for e in entries]
    piped = run(atoll, "kv", "import", "-", stdin=json.dumps(moved).encode())
    assert piped.returncode == 0, shown(piped)
    assert stored_value(atoll, "moved/b/c") == values["exp/b/c"][0]
    assert kv_entry(atoll, "moved/b/c")["Flags"] == 42

    # A bad entry is named and nothing of the import is written.
    bad = [{"key": "bad/ok", "flags": 0, "value": "b2s="}, {"key": "bad/no", "flags": 0, "value": "%%"}]
    refused = run(atoll, "kv", "import", "-", stdin=json.dumps(bad).encode())
    assert refused.returncode != 0 and "entry 1 (bad/no)" in err(refused), shown(refused)
    assert kv_entry(atoll, "bad/ok") is None


# ---------------------------------------------------------------------------
# catalog and services


def register_ttl(atoll, service_id: str, name: str, tags: list[str], status: str) -> None:
    atoll.register_service({"ID": service_id, "Name": name, "Tags": tags, "Port": 8000,
                            "Check": {"CheckID": f"ttl-{service_id}", "TTL": "300s"}})
    verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
    r = atoll.put(f"/v1/agent/check/{verb}/ttl-{service_id}")
    assert r.status_code == 200, r.text


def test_catalog_lists_services_and_nodes(atoll):
    register_ttl(atoll, "web-1", "web", ["v1", "blue"], "passing")
    register_ttl(atoll, "db-1", "db", ["primary"], "passing")

    services = run(atoll, "catalog", "services")
    assert services.returncode == 0, shown(services)
    assert out(services).splitlines() == ["consul", "db", "web"], shown(services)
    tagged = run(atoll, "catalog", "services", "-tags")
    rows = {line.split()[0]: line.split()[1:] for line in out(tagged).splitlines()}
    assert rows["web"] == ["blue,v1"] and rows["db"] == ["primary"], shown(tagged)
    on_node = run(atoll, "catalog", "services", "--node", atoll.node)
    assert {"db", "web"} <= set(out(on_node).splitlines()), shown(on_node)
    no_node = run(atoll, "catalog", "services", "--node", "no-such-node")
    assert no_node.returncode != 0 and "catalog nodes" in err(no_node), shown(no_node)
    as_json = run(atoll, "catalog", "services", "--json")
    assert sorted(json.loads(out(as_json))["web"]) == ["blue", "v1"], shown(as_json)

    nodes = run(atoll, "catalog", "nodes")
    lines = out(nodes).splitlines()
    assert lines[0].split() == ["Node", "ID", "Address", "DC"], shown(nodes)
    assert any(line.split()[0] == atoll.node for line in lines[1:]), shown(nodes)
    by_service = run(atoll, "catalog", "nodes", "-service", "web", "-detailed")
    lines = out(by_service).splitlines()
    assert "TaggedAddresses" in lines[0] and len(lines) == 2 and lines[1].startswith(atoll.node), shown(by_service)
    nobody = run(atoll, "catalog", "nodes", "--service", "nothing")
    assert nobody.returncode == 0 and out(nobody) == "" and "No nodes match" in err(nobody), shown(nobody)
    nodes_json = run(atoll, "catalog", "nodes", "--json")
    assert [n["Node"] for n in json.loads(out(nodes_json))] == atoll.node_names, shown(nodes_json)


def test_services_sums_up_health_per_service(atoll):
    register_ttl(atoll, "api-1", "api", ["http"], "passing")
    register_ttl(atoll, "api-2", "api", ["http"], "warning")
    register_ttl(atoll, "api-3", "api", ["grpc"], "critical")
    register_ttl(atoll, "cache-1", "cache", [], "passing")

    listed = run(atoll, "services", "--json")
    assert listed.returncode == 0, shown(listed)
    by_name = {s["Service"]: s for s in json.loads(out(listed))}
    assert by_name["api"] == {"Service": "api", "Tags": ["grpc", "http"], "Passing": 1, "Warning": 1, "Critical": 1}
    assert (by_name["cache"]["Passing"], by_name["cache"]["Warning"], by_name["cache"]["Critical"]) == (1, 0, 0)

    table = run(atoll, "services")
    lines = out(table).splitlines()
    assert lines[0].split() == ["Service", "Tags", "Passing", "Warning", "Critical"], shown(table)
    assert ["api", "grpc,http", "1", "1", "1"] in [line.split() for line in lines], shown(table)
    # Not a terminal: no colour sequences.
    assert "\x1b" not in out(table)


# ---------------------------------------------------------------------------
# watch


def stop_watch(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    """Stops the watch by its PID and answers its exit status (SIGKILL after 10 s)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        pytest.fail(f"atoll watch ignored signal {sig} for 10 s")


def test_watch_runs_its_handler_at_start_and_on_each_change(atoll, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    handler = f'n=$(ls {calls}/*.json 2>/dev/null | wc -l); cat > {calls}/$n.json; echo "$CONSUL_INDEX" > {calls}/$n.index'
    proc = subprocess.Popen([str(require_binary()), "watch", "-type", "key", "-key", "watched/k",
                             "-http-addr", atoll.http_addr, handler],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env())
    try:
        def results():
            return [json.loads((calls / f"{i}.json").read_text()) for i in range(len(list(calls.glob("*.json"))))]

        # Once at the start: the key does not exist yet.
        assert wait_for(lambda: results() == [None], timeout=15, interval=0.1, message="the first handler run")
        assert atoll.put("/v1/kv/watched/k", data=b"one").json() is True
        first = wait_for(lambda: len(results()) == 2 and results(), timeout=15, interval=0.1,
                         message="the handler to run after the write")
        assert base64.b64decode(first[1]["Value"]) == b"one", first
        assert int((calls / "1.index").read_text()) == first[1]["ModifyIndex"]
        # A write elsewhere moves the index but not this key: no run.
        assert atoll.put("/v1/kv/watched/other", data=b"x").json() is True
        assert atoll.put("/v1/kv/watched/k", data=b"two").json() is True
        second = wait_for(lambda: len(results()) >= 3 and results(), timeout=15, interval=0.1,
                          message="the handler to run after the second write")
        assert [base64.b64decode(r["Value"]) for r in second[1:]] == [b"one", b"two"], second
    finally:
        code = stop_watch(proc)
    stderr = proc.stderr.read().decode(errors="replace")
    assert code == 0, f"exit {code}\n{stderr}"


def test_watch_without_handler_prints_json_and_stops_on_sigint(atoll, tmp_path):
    output = tmp_path / "watch.out"
    with open(output, "wb") as sink:
        proc = subprocess.Popen([str(require_binary()), "watch", "--type", "keyprefix", "--prefix", "wp/",
                                 "--http-addr", atoll.http_addr],
                                stdout=sink, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env())
    try:
        def printed():
            decoder, text, found, at = json.JSONDecoder(), output.read_text(), [], 0
            while True:
                while at < len(text) and text[at].isspace():
                    at += 1
                if at == len(text):
                    return found
                value, at = decoder.raw_decode(text, at)
                found.append(value)

        assert wait_for(lambda: printed() == [[]], timeout=15, interval=0.1, message="the first result")
        assert atoll.put("/v1/kv/wp/a", data=b"1").json() is True
        shown_now = wait_for(lambda: len(printed()) == 2 and printed(), timeout=15, interval=0.1,
                             message="the result after a write")
        assert [e["Key"] for e in shown_now[1]] == ["wp/a"]
    finally:
        code = stop_watch(proc, signal.SIGINT)
    assert code == 0, proc.stderr.read().decode(errors="replace")


def test_watch_of_a_service_can_keep_only_passing_instances(atoll, tmp_path):
    register_ttl(atoll, "pw-1", "pw", ["x"], "passing")
    register_ttl(atoll, "pw-2", "pw", ["x"], "critical")
    output = tmp_path / "watch.out"
    with open(output, "wb") as sink:
        proc = subprocess.Popen([str(require_binary()), "watch", "-type", "service", "-service", "pw", "-passingonly",
                                 "-tag", "x", "-http-addr", atoll.http_addr],
                                stdout=sink, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env())
    try:
        first = wait_for(lambda: json.loads(output.read_text()), timeout=15, interval=0.1, message="the first result")
        assert [i["Service"]["ID"] for i in first] == ["pw-1"], first
    finally:
        code = stop_watch(proc)
    assert code == 0, proc.stderr.read().decode(errors="replace")


def test_watch_refuses_missing_and_misplaced_flags(atoll):
    missing = run(atoll, "watch", "--type", "service")
    assert missing.returncode != 0 and "--service" in err(missing), shown(missing)
    misplaced = run(atoll, "watch", "--type", "nodes", "--key", "k")
    assert misplaced.returncode != 0 and "--key" in err(misplaced), shown(misplaced)


def test_a_failing_handler_stops_the_watch_with_status_1(atoll):
    # The handler takes every word after the flags, so the address comes from the environment.
    failing = run(atoll, "watch", "--type", "services", "exit 3", addr=False, env={"ATOLL_HTTP_ADDR": atoll.http_addr},
                  timeout=30)
    assert failing.returncode == 1 and "handler" in err(failing), shown(failing)


# ---------------------------------------------------------------------------
# the agent's address, errors, completion


def test_the_address_comes_from_flags_then_atoll_then_consul_variables(atoll):
    assert atoll.put("/v1/kv/addr/k", data=b"found").json() is True
    nowhere = f"127.0.0.1:{free_port()}"
    for env in ({"CONSUL_HTTP_ADDR": atoll.http_addr},
                {"CONSUL_HTTP_ADDR": f"http://{atoll.http_addr}"},
                {"ATOLL_HTTP_ADDR": atoll.http_addr, "CONSUL_HTTP_ADDR": nowhere}):
        got = run(atoll, "kv", "get", "addr/k", addr=False, env=env)
        assert got.returncode == 0 and out(got) == "found\n", f"{env}\n{shown(got)}"
    flag_wins = run(atoll, "kv", "get", "addr/k", "--http-addr", f"http://{atoll.http_addr}", addr=False,
                    env={"ATOLL_HTTP_ADDR": nowhere})
    assert flag_wins.returncode == 0, shown(flag_wins)

    unreachable = run(atoll, "services", addr=False, env={"CONSUL_HTTP_ADDR": nowhere})
    assert unreachable.returncode != 0, shown(unreachable)
    assert nowhere in err(unreachable) and "--http-addr" in err(unreachable) and "ATOLL_HTTP_ADDR" in err(unreachable), \
        shown(unreachable)
    bad = run(atoll, "kv", "get", "k", "--http-addr", "ftp://x", addr=False)
    assert bad.returncode != 0 and "http://HOST:PORT" in err(bad), shown(bad)


def test_completion_scripts_are_printed_and_bash_loads_its_own(atoll, tmp_path):
    bash = require_tool("bash")
    for shell in ("bash", "zsh", "fish"):
        script = run(atoll, "completion", shell, addr=False)
        assert script.returncode == 0 and len(script.stdout) > 100, shown(script)
        assert b"atoll" in script.stdout
    path = tmp_path / "atoll.bash"
    path.write_bytes(run(atoll, "completion", "bash", addr=False).stdout)
    syntax = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    loaded = subprocess.run([bash, "-c", f"source {path} && complete -p atoll"], capture_output=True, text=True,
                            timeout=30)
    assert loaded.returncode == 0 and "atoll" in loaded.stdout, loaded.stderr
    assert run(atoll, "completion", "tcsh", addr=False).returncode != 0


# ---------------------------------------------------------------------------
# deploy progress


def test_deploy_reports_progress_per_version_as_plain_lines(atoll, tmp_path):
    prefix = unique_prefix()
    app_id = f"/{prefix}-sleeper"
    definition = {"id": app_id, "cmd": "exec sleep 600", "instances": 2, "cpus": 0.01, "mem": 8}
    path = tmp_path / "app.json"
    try:
        path.write_text(json.dumps(definition))
        first = run(atoll, "app", "deploy", str(path), "--timeout", "60", timeout=90)
        assert first.returncode == 0, shown(first)
        lines = out(first).splitlines()
        assert "2 of 2 wanted instances of the new version ready" in lines, shown(first)
        assert lines[-1] == "deployment finished", shown(first)
        assert "\x1b" not in out(first), "no terminal, so no live display"

        path.write_text(json.dumps(dict(definition, env={"CHANGED": "1"})))
        second = run(atoll, "app", "deploy", str(path), "--timeout", "60", timeout=90)
        assert second.returncode == 0, shown(second)
        version = app_json(atoll, app_id)["version"]
        assert f"  new {version}: 2 running, 0 healthy" in out(second).splitlines(), shown(second)
        # The first version's instances were shown as old while they ran.
        assert any(line.startswith("  old ") for line in out(second).splitlines()), shown(second)
    finally:
        if atoll.running():
            destroy_app(atoll, app_id)
        kill_task_processes(f"/{prefix}")
