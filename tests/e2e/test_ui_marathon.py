"""The Marathon pages of the web UI in headless Chromium, against `atoll dev`.

Every page loads without a console error and is screenshotted (tests/e2e/artifacts/ui/);
an app is deployed, scaled, has a task killed and is destroyed from the UI, and another
is edited as JSON and restarted; Marathon's 422 details are shown in place with their field
paths; an app no node can take shows the
queue's reasons on its page and on the queue page; the events page shows events live.
"""

from __future__ import annotations

import json

import pytest
import requests
from selenium.webdriver.common.by import By

from apps_util import best_effort_remove_apps, kill_task_processes, unique_prefix, wait_running
from conftest import wait_for
from ui_util import (
    assert_no_console_errors,
    browser,  # noqa: F401 - the fixture
    click,
    fill,
    open_page,
    screenshot,
    wait_element,
    wait_gone,
    wait_text,
)

WAIT = 20.0


@pytest.fixture
def inst(atoll):
    """The dev agent, with a prefix for this test's app ids; its apps and tasks go at the end."""
    atoll.prefix = unique_prefix()
    try:
        yield atoll
    finally:
        best_effort_remove_apps(atoll)
        kill_task_processes(f"/{atoll.prefix}/")


def sleeper(app_id: str, instances: int = 1, **fields) -> dict:
    return {"id": app_id, "cmd": "sleep 1000", "cpus": 0.01, "mem": 8, "instances": instances, **fields}


def post_app(inst, app: dict) -> None:
    r = requests.post(inst.url("/v2/apps"), json=app, timeout=10)
    assert r.status_code == 201, r.text


def page_ready(driver, name: str) -> None:
    """Wait until the page NAME has rendered with its data (core.js sets data-rendered)."""
    wait_element(driver, f'[data-page="{name}"][data-rendered="true"]', WAIT)


def confirm(driver) -> None:
    click(driver, '.dialog [data-action="confirm"]', WAIT)
    wait_gone(driver, ".overlay", WAIT)


def test_every_marathon_page_loads_without_console_errors(inst, browser):
    app_id = f"/{inst.prefix}/web"
    post_app(inst, sleeper(app_id, labels={"SERVICE_TAGS": "ui"}))
    wait_running(inst, app_id, 1, want_healthy=False, timeout=WAIT)
    bare = app_id.lstrip("/")

    pages = [
        ("apps", "/apps", f'[data-page="apps"] tr[data-row="{app_id}"]'),
        ("app", f"/apps/{bare}", '[data-page="app"] tbody tr[data-row]'),
        ("deploy", "/deploy", '[data-page="deploy"] textarea[data-field="definition"]'),
        ("deployments", "/deployments", '[data-page="deployments"] table'),
        ("queue", "/queue", '[data-page="queue"] table'),
        ("events", "/events", '[data-page="events"] table'),
    ]
    for name, path, shown in pages:
        open_page(browser, inst.base_url, path)
        page_ready(browser, name)
        wait_element(browser, shown, WAIT)
        screenshot(browser, f"marathon_{name}")
        assert_no_console_errors(browser)

    # The app's row links to its page, which shows its task on this node.
    open_page(browser, inst.base_url, "/apps")
    click(browser, f'tr[data-row="{app_id}"] a', WAIT)
    page_ready(browser, "app")
    wait_text(browser, '[data-page="app"] tbody tr[data-row]', "running", WAIT)
    wait_element(browser, f'[data-page="app"] tbody tr[data-row] a[href="#/nodes/{inst.node}"]', WAIT)
    assert_no_console_errors(browser)


def test_app_deployed_scaled_killed_and_destroyed_from_the_ui(inst, browser):
    app_id = f"/{inst.prefix}/api"
    open_page(browser, inst.base_url, "/deploy")
    page_ready(browser, "deploy")
    definition = sleeper(app_id, portDefinitions=[{"port": 0}])
    fill(browser, 'textarea[data-field="definition"]', json.dumps(definition, indent=2))
    click(browser, '[data-action="deploy"]')

    # The UI goes to the new app's page, which follows it until its task runs.
    page_ready(browser, "app")
    assert browser.find_element(By.CSS_SELECTOR, '[data-page="app"]').get_attribute("data-app") == app_id
    wait_text(browser, ".m-instances", "1 / 1 running", WAIT)
    assert len(wait_running(inst, app_id, 1, want_healthy=False, timeout=WAIT)) == 1
    # Its definition links the catalog service its task registered (named by the server:
    # the id's segments reversed).
    service = f"api-{inst.prefix}"
    wait_element(browser, f'[data-page="app"] a[href="#/services/{service}"]', WAIT)

    fill(browser, 'input[data-field="instances"]', "3")
    click(browser, '[data-action="scale"]')
    wait_text(browser, ".m-instances", "3 / 3 running", WAIT)
    tasks = wait_running(inst, app_id, 3, want_healthy=False, timeout=WAIT)
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, '[data-page="app"] tbody tr[data-row]')) == 3,
        timeout=WAIT,
        message="3 task rows",
    )
    screenshot(browser, "marathon_app_scaled")

    # Kill one task: the dialog asks first, then a replacement takes its place.
    victim = tasks[0]["id"]
    click(browser, f'tr[data-row="{victim}"] [data-action="kill"]')
    wait_text(browser, ".dialog", victim, WAIT)
    screenshot(browser, "marathon_kill_dialog")
    confirm(browser)
    wait_gone(browser, f'tr[data-row="{victim}"]', WAIT)
    replaced = wait_running(inst, app_id, 3, want_healthy=False, timeout=WAIT)
    assert victim not in {t["id"] for t in replaced}
    wait_text(browser, ".m-instances", "3 / 3 running", WAIT)

    # Destroy asks too; cancelling keeps the app.
    click(browser, '[data-action="destroy"]')
    click(browser, '.dialog [data-action="cancel"]')
    wait_gone(browser, ".overlay", WAIT)
    assert requests.get(inst.url(f"/v2/apps{app_id}"), timeout=5).status_code == 200
    click(browser, '[data-action="destroy"]')
    confirm(browser)
    page_ready(browser, "apps")
    wait_for(
        lambda: requests.get(inst.url(f"/v2/apps{app_id}"), timeout=5).status_code == 404,
        timeout=WAIT,
        message=f"{app_id} to be destroyed",
    )
    wait_gone(browser, f'tr[data-row="{app_id}"]', WAIT)
    assert_no_console_errors(browser)


def test_deploy_shows_marathon_field_errors_in_place(inst, browser):
    open_page(browser, inst.base_url, "/deploy")
    page_ready(browser, "deploy")

    fill(browser, 'textarea[data-field="definition"]', '{"id": "/broken", "cmd": ')
    click(browser, '[data-action="deploy"]')
    wait_text(browser, '[data-page="deploy"] .error', "not valid JSON", WAIT)

    bad_id = f"/{inst.prefix}/bad"
    fill(browser, 'textarea[data-field="definition"]', json.dumps(sleeper(bad_id, cpus=-1)))
    click(browser, '[data-action="deploy"]')
    problem = wait_element(browser, '[data-page="deploy"] .m-problems li[data-path="/cpus"]', WAIT)
    assert "/cpus" in problem.text
    wait_text(browser, '[data-page="deploy"] .error', "Object is not valid", WAIT)
    screenshot(browser, "marathon_deploy_error")
    # Still on the deploy page, and nothing was created.
    assert browser.find_elements(By.CSS_SELECTOR, '[data-page="deploy"]')
    assert requests.get(inst.url(f"/v2/apps{bad_id}"), timeout=5).status_code == 404
    # The browser reports the refused request itself; nothing else may be in the console.
    assert_no_console_errors(browser, allow=[r"status of 422"])


def test_unplaceable_app_shows_its_queue_reason(inst, browser):
    app_id = f"/{inst.prefix}/huge"
    post_app(inst, sleeper(app_id, cpus=100000))

    def queued():
        items = requests.get(inst.url("/v2/queue"), timeout=5).json()["queue"]
        found = [i for i in items if i["app"]["id"] == app_id]
        return found and found[0]["processedOffersSummary"]["rejectSummaryLastOffers"]

    reasons = wait_for(queued, timeout=WAIT, message=f"{app_id} in the queue with reasons")

    open_page(browser, inst.base_url, f"/apps/{app_id.lstrip('/')}")
    page_ready(browser, "app")
    wait_text(browser, f'[data-queue="{app_id}"] .queue-reason', reasons[0], WAIT)
    wait_text(browser, f'[data-queue="{app_id}"]', "1 instance waits to be placed", WAIT)
    wait_text(browser, '[data-page="app"] .badge', "waiting", WAIT)
    screenshot(browser, "marathon_app_waiting")

    open_page(browser, inst.base_url, "/queue")
    page_ready(browser, "queue")
    wait_text(browser, f'[data-page="queue"] tr[data-row="{app_id}"]', reasons[0], WAIT)
    wait_text(browser, f'[data-page="queue"] tr[data-row="{app_id}"]', "100000 CPUs", WAIT)
    screenshot(browser, "marathon_queue_waiting")
    assert_no_console_errors(browser)


def test_events_page_shows_events_live_and_filters_them(inst, browser):
    open_page(browser, inst.base_url, "/events")
    page_ready(browser, "events")
    # The stream's first event says the page listens: nothing after it can be missed.
    wait_element(browser, '[data-page="events"] tr[data-event="event_stream_attached"]', WAIT)
    app_id = f"/{inst.prefix}/live"
    post_app(inst, sleeper(app_id))

    # Without a reload: the API's change arrives over the event stream.
    wait_text(browser, '[data-page="events"] tr[data-event="api_post_event"]', app_id, WAIT)
    wait_text(browser, '[data-page="events"] tr[data-event="status_update_event"]', "running", WAIT)
    # The end of the deployment names only the deployment; the page shows its app.
    wait_text(browser, '[data-page="events"] tr[data-event="deployment_success"]', app_id, WAIT)
    screenshot(browser, "marathon_events_live")

    fill(browser, 'input[data-field="filter"]', "status_update_event")
    wait_for(
        lambda: not any(row.is_displayed() for row in browser.find_elements(By.CSS_SELECTOR, 'tr[data-event="api_post_event"]')),
        timeout=WAIT,
        message="the filter to hide other event types",
    )
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-event="status_update_event"]').is_displayed()
    assert_no_console_errors(browser)


def test_deployments_page_shows_progress_and_cancels(inst, browser):
    app_id = f"/{inst.prefix}/stuck"
    # One instance runs, the second can never be placed (one per host, and there is one
    # node): the deployment stays in progress at 1 of 2.
    post_app(inst, sleeper(app_id, instances=2, constraints=[["hostname", "UNIQUE"]]))
    wait_running(inst, app_id, 1, want_healthy=False, timeout=WAIT)

    open_page(browser, inst.base_url, "/deployments")
    page_ready(browser, "deployments")
    deployment_id = wait_for(
        lambda: next((d["id"] for d in requests.get(inst.url("/v2/deployments"), timeout=5).json() if app_id in d["affectedApps"]), None),
        timeout=WAIT,
        message=f"the deployment of {app_id}",
    )
    wait_text(browser, f'tr[data-row="{deployment_id}"]', app_id, WAIT)
    wait_text(browser, f'tr[data-row="{deployment_id}"]', "1 / 2", WAIT)
    screenshot(browser, "marathon_deployments")

    click(browser, f'tr[data-row="{deployment_id}"] [data-action="cancel-deployment"]')
    confirm(browser)
    # Cancelling a creation rolls it back: the deployment and then the app go.
    wait_gone(browser, f'tr[data-row="{deployment_id}"]', WAIT)
    wait_for(
        lambda: requests.get(inst.url(f"/v2/apps{app_id}"), timeout=5).status_code == 404,
        timeout=WAIT,
        message=f"{app_id} to be rolled back",
    )
    assert_no_console_errors(browser)


def test_app_edited_as_json_and_restarted_from_the_ui(inst, browser):
    app_id = f"/{inst.prefix}/edit"
    post_app(inst, sleeper(app_id))
    wait_running(inst, app_id, 1, want_healthy=False, timeout=WAIT)
    open_page(browser, inst.base_url, f"/apps/{app_id.lstrip('/')}")
    page_ready(browser, "app")
    wait_text(browser, ".m-instances", "1 / 1 running", WAIT)

    # The editor holds the definition without the running app's status.
    click(browser, '[data-action="edit"]')
    editor = wait_element(browser, '.m-editor textarea[data-field="definition"]', WAIT)
    definition = json.loads(editor.get_attribute("value"))
    assert definition["id"] == app_id and definition["cmd"] == "sleep 1000"
    assert "tasks" not in definition and "tasksRunning" not in definition and "deployments" not in definition

    # A refused definition: the field paths show in the editor, the app is unchanged.
    fill(browser, '.m-editor textarea[data-field="definition"]', json.dumps({**definition, "mem": -8}))
    click(browser, '[data-action="save"]')
    wait_element(browser, '.m-editor .m-problems li[data-path="/mem"]', WAIT)
    screenshot(browser, "marathon_edit_error")
    assert requests.get(inst.url(f"/v2/apps{app_id}"), timeout=5).json()["app"]["mem"] == 8

    fill(browser, '.m-editor textarea[data-field="definition"]', json.dumps({**definition, "cmd": "sleep 2000"}))
    click(browser, '[data-action="save"]')
    wait_text(browser, '[data-page="app"] dl.facts', "sleep 2000", WAIT)
    wait_gone(browser, ".m-editor:not([hidden])", WAIT)
    edited = requests.get(inst.url(f"/v2/apps{app_id}"), timeout=5).json()["app"]
    assert edited["cmd"] == "sleep 2000"
    wait_running(inst, app_id, 1, want_healthy=False, timeout=WAIT, version=edited["version"])

    # Restart: a new version, its task replacing the old one.
    click(browser, '[data-action="restart"]')
    confirm(browser)
    restarted = wait_for(
        lambda: (a := requests.get(inst.url(f"/v2/apps{app_id}"), timeout=5).json()["app"])["version"] != edited["version"] and a,
        timeout=WAIT,
        message="a new version after the restart",
    )
    wait_running(inst, app_id, 1, want_healthy=False, timeout=WAIT, version=restarted["version"])
    wait_text(browser, '[data-page="app"] dl.facts', restarted["version"], WAIT)
    # The browser reports the refused edit itself; nothing else may be in the console.
    assert_no_console_errors(browser, allow=[r"status of 422"])
