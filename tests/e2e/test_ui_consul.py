"""The web UI's Consul pages in headless Chromium against `atoll dev`.

Every page loads without a console error and is screenshotted (tests/e2e/artifacts/ui/);
a service registered through the API appears on the services page without a reload and
goes when it is deregistered; a KV key is created and edited through the forms, an edit
that lost a race shows the conflict in place, and keys and folders are deleted through the
in-page confirmation. Every wait is bounded (ui_util.MAX_WAIT).
"""

from __future__ import annotations

import base64
import time

import requests

from conftest import AtollError

from ui_util import (  # noqa: F401 - `browser` is a fixture
    assert_no_console_errors,
    browser,
    click,
    fill,
    open_page,
    rendered_mark,
    screenshot,
    wait_element,
    wait_gone,
    wait_text,
    wait_until,
)


def kv_value(atoll, key: str) -> str | None:
    r = atoll.get(f"/v1/kv/{key}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return base64.b64decode(r.json()[0]["Value"] or b"").decode()


# Consul answers a missing key, and an empty folder, with 404; Chromium logs every 4xx
# response of a fetch as a console error. Those lines are the API's ordinary answer that
# the KV pages read as "nothing there", not an error of the page.
KV_NOT_FOUND = r"/v1/kv/\S* - Failed to load resource: the server responded with a status of 404 \(Not Found\)$"


def page_root(name: str) -> str:
    """The root of page NAME once its first render with data is done."""
    return f'[data-page="{name}"][data-rendered="true"]'


def mark_document(driver) -> None:
    """Tags the loaded document, so a later check can tell it was not reloaded."""
    driver.execute_script("window.__atollTestMark = 'kept';")


def document_kept(driver) -> bool:
    return driver.execute_script("return window.__atollTestMark === 'kept';")


def create_key(driver, name: str, value: str) -> None:
    """Fills and submits the folder page's form for a new key."""
    click(driver, '[data-action="new-key"]')
    fill(driver, '[data-form="kv-create"] [data-field="name"]', name)
    fill(driver, '[data-form="kv-create"] [data-field="value"]', value)
    click(driver, '[data-action="create-key"]')


def test_the_ui_is_served_from_the_binary(atoll):
    for path in ("/", "/ui"):
        r = requests.get(atoll.url(path), allow_redirects=False, timeout=10)
        assert r.status_code in (301, 302, 303, 307, 308), (path, r.status_code)
        assert r.headers["location"] == "/ui/"
    page = atoll.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    for asset, kind in (("core.js", "text/javascript"), ("consul.js", "text/javascript"), ("style.css", "text/css")):
        assert f'assets/{asset}"' in page.text
        r = atoll.get(f"/ui/assets/{asset}")
        assert r.status_code == 200, asset
        assert r.headers["content-type"].startswith(kind), (asset, r.headers["content-type"])
    missing = atoll.get("/ui/assets/nothing-here.js")
    assert missing.status_code == 404
    assert "nothing-here.js" in missing.json()["error"]


def test_every_consul_page_loads_without_a_console_error(atoll, browser):
    atoll.register_service({
        "Name": "web", "ID": "web-1", "Port": 8081, "Tags": ["v1"],
        "Check": {"TTL": "60s", "Name": "web ttl"},
    })
    atoll.register_service({"Name": "web", "ID": "web-2", "Port": 8082, "Tags": ["v2"]})
    assert atoll.put("/v1/agent/check/warn/service:web-1", params={"note": "slow answers"}).status_code == 200
    assert atoll.put("/v1/kv/config/app/db", data="postgres://db:5432").json() is True
    node = atoll.node

    pages = [
        ("overview", "/", "overview", "Compute nodes"),
        ("services", "/services", "services", "web"),
        ("service", "/services/web", "service", "slow answers"),
        ("nodes", "/nodes", "nodes", node),
        ("node", f"/nodes/{node}", "node", "web-2"),
        ("kv-root", "/kv/", "kv", "config/"),
        ("kv-folder", "/kv/config/app/", "kv", "db"),
        ("kv-key", "/kv/config/app/db", "kv", "postgres://db:5432"),
    ]
    for shot, path, name, text in pages:
        open_page(browser, atoll.base_url, path)
        wait_text(browser, page_root(name), text)
        screenshot(browser, f"consul-{shot}")
        assert_no_console_errors(browser)

    # The overview names the leader and the node's compute capacity; the service page
    # shows each check's status.
    open_page(browser, atoll.base_url, "/")
    wait_text(browser, '[data-page="overview"] [data-row="%s"]' % node, node)
    wait_text(browser, '[data-page="overview"]', "leader")
    open_page(browser, atoll.base_url, "/services/web")
    row = wait_element(browser, '[data-row="%s/web-1"]' % node)
    assert row.find_element("css selector", '[data-check="service:web-1"] [data-status]').text == "warning"
    # The first render with data left its performance mark (the benchmark reads it).
    assert rendered_mark(browser) > 0
    assert_no_console_errors(browser)


def test_a_service_appears_live_and_goes_when_deregistered(atoll, browser):
    open_page(browser, atoll.base_url, "/services")
    wait_element(browser, page_root("services"))
    mark_document(browser)
    assert not browser.find_elements("css selector", '[data-row="live-api"]')

    atoll.register_service({"Name": "live-api", "ID": "live-api-1", "Port": 9000, "Tags": ["blue"]})
    row = wait_text(browser, '[data-row="live-api"]', "live-api")
    assert "blue" in row.text
    assert document_kept(browser), "the page was reloaded"
    screenshot(browser, "consul-services-live")

    assert atoll.put("/v1/agent/service/deregister/live-api-1").status_code == 200
    wait_gone(browser, '[data-row="live-api"]')
    assert document_kept(browser), "the page was reloaded"
    assert_no_console_errors(browser)


# What Chromium logs for a request to an agent that is down.
CONNECTION_LOST = r"net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE|INCOMPLETE_CHUNKED_ENCODING)"


def start_again(atoll, timeout: float = 20.0) -> None:
    """Starts a stopped agent on its ports again, retrying while the kernel still holds them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            atoll.start(timeout=max(1.0, deadline - time.monotonic()))
            return
        except AtollError:
            if time.monotonic() >= deadline or "in use" not in atoll.stderr():
                raise
            time.sleep(0.1)


def test_a_lost_agent_is_shown_in_place_and_the_page_recovers_without_a_reload(atoll_factory, browser):
    # Without a data dir of its own a dev agent starts empty again, at a lower index.
    atoll = atoll_factory.start("fresh", temp_data_dir=True)
    atoll.register_service({"Name": "before", "ID": "before-1", "Port": 1})
    open_page(browser, atoll.base_url, "/services")
    wait_element(browser, '[data-row="before"]')
    mark_document(browser)

    atoll.stop()
    # The blocking query fails; the error is shown on the page, and retried with backoff.
    wait_text(browser, '[data-page="services"] .watch-error', "retrying")
    screenshot(browser, "consul-services-agent-lost")

    # The same address again (a dev agent starts empty): the watch reconnects, starts over
    # from the new, lower index, and the page follows the new catalog.
    start_again(atoll)
    atoll.register_service({"Name": "after", "ID": "after-1", "Port": 2})
    wait_element(browser, '[data-row="after"]', timeout=20)
    wait_gone(browser, '[data-row="before"]')
    wait_until(
        browser,
        lambda d: not any(e.is_displayed() for e in d.find_elements("css selector", ".watch-error")),
        message="the error cleared",
    )
    assert document_kept(browser), "the page was reloaded"
    assert_no_console_errors(browser, allow=[CONNECTION_LOST])


def test_an_instance_of_a_task_links_to_its_app(atoll, browser):
    app_id = "/uilinks/web"
    r = atoll.post("/v2/apps", json={
        "id": app_id, "cmd": "sleep 600", "cpus": 0.1, "mem": 16, "instances": 1,
        "portDefinitions": [{"port": 0}],
    })
    assert r.status_code == 201, r.text
    try:
        # The task's instance is registered as `web-uilinks` (the app id's segments reversed).
        open_page(browser, atoll.base_url, "/services/web-uilinks")
        row = wait_text(browser, '[data-page="service"] tbody tr[data-row]', app_id, timeout=20)
        task_id = atoll.get_json(f"/v2/apps{app_id}/tasks")["tasks"][0]["id"]
        assert task_id in row.text
        screenshot(browser, "consul-service-of-an-app")
        row.find_element("css selector", 'a[href="#/apps/uilinks/web"]').click()
        wait_until(browser, lambda d: d.current_url.endswith("#/apps/uilinks/web"), message="the app's page")
        assert_no_console_errors(browser)
    finally:
        atoll.delete(f"/v2/apps{app_id}", params={"force": "true"})
        wait_until(
            browser,
            lambda d: not atoll.get_json("/v2/tasks")["tasks"],
            message="the app's task stopped",
        )


def test_a_kv_key_is_created_edited_and_a_conflict_shown_in_place(atoll, browser):
    open_page(browser, atoll.base_url, "/kv/")
    wait_element(browser, page_root("kv"))
    create_key(browser, "ui/greeting", "hello")
    wait_text(browser, '[data-page="kv"] [data-value="ui/greeting"]', "hello")
    assert kv_value(atoll, "ui/greeting") == "hello"

    # Creating never overwrites: the same name again is refused in the form.
    open_page(browser, atoll.base_url, "/kv/ui/")
    wait_text(browser, page_root("kv"), "greeting")
    create_key(browser, "greeting", "other")
    wait_text(browser, '[data-form="kv-create"] .error', "already exists")
    assert kv_value(atoll, "ui/greeting") == "hello"

    # An edit through the form.
    open_page(browser, atoll.base_url, "/kv/ui/greeting")
    wait_text(browser, '[data-value="ui/greeting"]', "hello")
    click(browser, '[data-action="edit-key"]')
    fill(browser, '[data-form="kv-edit"] [data-field="value"]', "hello again")
    click(browser, '[data-action="save-key"]')
    wait_text(browser, '[data-value="ui/greeting"]', "hello again")
    wait_until(browser, lambda d: kv_value(atoll, "ui/greeting") == "hello again", message="the edit stored")

    # Someone else writes while the editor is open: saving is refused in place (CAS), and
    # their value stays.
    click(browser, '[data-action="edit-key"]')
    fill(browser, '[data-form="kv-edit"] [data-field="value"]', "my late edit")
    assert atoll.put("/v1/kv/ui/greeting", data="theirs").json() is True
    wait_text(browser, '[data-value="ui/greeting"]', "theirs")
    click(browser, '[data-action="save-key"]')
    wait_text(browser, '[data-form="kv-edit"] .error', "changed by someone else")
    screenshot(browser, "consul-kv-conflict")
    assert kv_value(atoll, "ui/greeting") == "theirs"
    click(browser, '[data-action="cancel-edit"]')

    # Deleting asks first; cancelling keeps the key.
    click(browser, '[data-action="delete-key"]')
    click(browser, '.dialog [data-action="cancel"]')
    wait_gone(browser, ".dialog")
    assert kv_value(atoll, "ui/greeting") == "theirs"
    click(browser, '[data-action="delete-key"]')
    screenshot(browser, "consul-kv-confirm")
    click(browser, '.dialog [data-action="confirm"]')
    wait_until(browser, lambda d: d.current_url.endswith("#/kv/ui/"), message="back to the folder")
    assert kv_value(atoll, "ui/greeting") is None
    assert_no_console_errors(browser, allow=[KV_NOT_FOUND])


def test_a_kv_folder_is_deleted_recursively_after_confirmation(atoll, browser):
    for key in ("team/a/one", "team/a/two", "team/b/three", "keep/me"):
        assert atoll.put(f"/v1/kv/{key}", data=key).json() is True
    open_page(browser, atoll.base_url, "/kv/team/")
    wait_text(browser, page_root("kv"), "a/")
    click(browser, '[data-action="delete-folder"]')
    wait_text(browser, ".dialog", "team/")
    click(browser, '.dialog [data-action="confirm"]')
    wait_until(browser, lambda d: d.current_url.endswith("#/kv/"), message="back to the root")
    for key in ("team/a/one", "team/a/two", "team/b/three"):
        assert kv_value(atoll, key) is None
    assert kv_value(atoll, "keep/me") == "keep/me"
    # The root listing followed the delete without a reload.
    wait_gone(browser, '[data-row="team/"]')
    wait_element(browser, '[data-row="keep/"]')
    assert_no_console_errors(browser, allow=[KV_NOT_FOUND])
