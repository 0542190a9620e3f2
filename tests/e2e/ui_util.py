"""The web UI in a real browser: headless Chromium driven by Selenium.

A test module imports the `browser` fixture (and the helpers it needs) from here:

    from ui_util import browser, open_page, wait_text, console_errors, screenshot

One Chromium per test module (starting it takes a second or two). Loading the UI from
another address (each test's own `atoll dev`) first drains the console log, so
`console_errors` reports what the test itself caused. Every wait is bounded.

Prerequisites: Debian's `chromium` and `chromium-driver` and the `selenium` package.
Under CI=true a missing one fails the test instead of skipping it (conftest.require).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

from conftest import require, require_tool

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported by the fixture
    webdriver = None

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts" / "ui"

WINDOW_WIDTH = 1400
WINDOW_HEIGHT = 900

# The longest any single wait in a UI test may take.
MAX_WAIT = 20.0
DEFAULT_WAIT = 10.0


def _chrome_options(chromium: str) -> "Options":
    options = Options()
    options.binary_location = chromium
    options.add_argument("--headless=new")
    options.add_argument(f"--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}")
    # Sandboxing needs user namespaces that containers often lack; the pages are our own.
    options.add_argument("--no-sandbox")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--disable-gpu")
    options.add_argument("--no-first-run")
    options.add_argument("--disable-extensions")
    options.add_argument("--disable-background-networking")
    options.add_argument("--disable-component-update")
    options.add_argument("--disable-default-apps")
    options.add_argument("--disable-sync")
    options.add_argument("--metrics-recording-only")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def start_browser() -> "webdriver.Chrome":
    """A headless Chromium with a 1400x900 window, or skip/fail when a prerequisite is missing."""
    require(webdriver is not None, "python package selenium not installed")
    chromium = require_tool("chromium", "/usr/bin/chromium")
    chromedriver = require_tool("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=_chrome_options(chromium))
    driver.set_window_size(WINDOW_WIDTH, WINDOW_HEIGHT)
    driver.set_page_load_timeout(MAX_WAIT)
    driver.set_script_timeout(MAX_WAIT)
    return driver


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the test module (starting one takes a second or two)."""
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------
# navigation and waiting


def _bounded(timeout: float) -> float:
    return max(0.1, min(timeout, MAX_WAIT))


def open_page(driver, base_url: str, hash_path: str = "/", timeout: float = DEFAULT_WAIT) -> None:
    """Load `/ui/#<hash_path>` from `base_url` and wait until the document is complete.

    When the UI is already loaded from the same base URL only the hash changes (no
    reload), as a user following a link would see it. Otherwise the browser's console log
    is drained first: what an earlier page logged is not this page's.
    """
    if not hash_path.startswith("/"):
        hash_path = "/" + hash_path
    target = f"{base_url.rstrip('/')}/ui/#{hash_path}"
    current = driver.current_url or ""
    if current.startswith(f"{base_url.rstrip('/')}/ui/"):
        driver.execute_script("window.location.hash = arguments[0];", hash_path)
    else:
        driver.get("about:blank")
        console_errors(driver)
        driver.get(target)
    WebDriverWait(driver, _bounded(timeout)).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def wait_until(driver, predicate: Callable[[Any], Any], timeout: float = DEFAULT_WAIT, message: str = "condition") -> Any:
    """Poll `predicate(driver)` until it returns something truthy (stale elements count as 'not yet')."""
    try:
        return WebDriverWait(
            driver, _bounded(timeout), poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(predicate)
    except TimeoutException:
        raise AssertionError(f"timed out after {_bounded(timeout):.1f}s waiting for {message}") from None


def wait_element(driver, css: str, timeout: float = DEFAULT_WAIT):
    """The first element matching `css` once it is displayed."""

    def find(d):
        for element in d.find_elements(By.CSS_SELECTOR, css):
            if element.is_displayed():
                return element
        return None

    return wait_until(driver, find, timeout, f"a visible element {css!r}")


def wait_gone(driver, css: str, timeout: float = DEFAULT_WAIT) -> None:
    """Wait until no element matches `css`."""
    wait_until(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, css), timeout, f"no element {css!r}")


def wait_text(driver, css: str, text: str | re.Pattern, timeout: float = DEFAULT_WAIT):
    """Wait until an element matching `css` contains `text` (a substring or a compiled regex); returns it."""

    def matches(content: str) -> bool:
        if isinstance(text, re.Pattern):
            return text.search(content) is not None
        return text in content

    last_seen: list[str] = []

    def find(d):
        last_seen.clear()
        for element in d.find_elements(By.CSS_SELECTOR, css):
            content = element.text
            last_seen.append(content)
            if matches(content):
                return element
        return None

    try:
        return WebDriverWait(
            driver, _bounded(timeout), poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(find)
    except TimeoutException:
        shown = "; ".join(repr(s[:200]) for s in last_seen[:5]) or "no such element"
        raise AssertionError(
            f"timed out after {_bounded(timeout):.1f}s waiting for {text!r} in {css!r} (saw: {shown})"
        ) from None


def click(driver, css: str, timeout: float = DEFAULT_WAIT) -> None:
    """Click the first visible element matching `css` once it is enabled."""
    element = wait_until(
        driver,
        lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed() and e.is_enabled()), None),
        timeout,
        f"a clickable element {css!r}",
    )
    element.click()


def fill(driver, css: str, value: str, timeout: float = DEFAULT_WAIT) -> None:
    """Replace the content of the input or textarea matching `css` with `value`."""
    element = wait_element(driver, css, timeout)
    # clear() then send_keys() is slow for long JSON; setting the value and firing
    # `input` is what a paste does.
    driver.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
        "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));",
        element,
        value,
    )


# ---------------------------------------------------------------------------
# what the page said and looked like


def console_errors(driver) -> list[str]:
    """The SEVERE entries of the browser console since the last call (reading drains the log)."""
    try:
        entries = driver.get_log("browser")
    except WebDriverException:
        return []
    return [entry.get("message", "") for entry in entries if entry.get("level") == "SEVERE"]


def assert_no_console_errors(driver, allow: Iterable[str] = ()) -> None:
    """Fail on any SEVERE console entry, except those matching one of the `allow` regexes.

    `allow` is for what the test itself provoked and expects, such as the line Chromium
    logs for a request the server refused with 422.
    """
    patterns = [re.compile(a) for a in allow]
    errors = [e for e in console_errors(driver) if not any(p.search(e) for p in patterns)]
    assert not errors, "browser console errors:\n" + "\n".join(errors)


def screenshot(driver, name: str) -> Path:
    """Save a PNG of the window as tests/e2e/artifacts/ui/NAME.png and return its path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "page"
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / f"{safe}.png"
    # Let pending layout and fonts settle so the picture shows what a user would see.
    driver.execute_script("return document.fonts ? document.fonts.ready.then(() => true) : true")
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"could not save the screenshot {path}")
    return path


def rendered_mark(driver, timeout: float = DEFAULT_WAIT) -> float:
    """Milliseconds from navigation start to the page's `atoll-rendered` performance mark."""

    def mark(d):
        return d.execute_script(
            "const m = performance.getEntriesByName('atoll-rendered', 'mark');"
            "return m.length ? m[m.length - 1].startTime : null;"
        )

    return float(wait_until(driver, mark, timeout, "the performance mark atoll-rendered"))

