#!/usr/bin/env python3
"""Web UI first paint: the overview, services and nodes pages with a large catalog.

    bench/ui.py [--services 1000] [--nodes 100] [--runs 5]

Starts `atoll dev` on free ports (or uses the one in ATOLL_HTTP), registers S service
instances (each its own service name) spread over M nodes through
`PUT /v1/catalog/register` (K connections), then loads each page R times in headless
Chromium, each time a fresh navigation from `about:blank`. Measured in the browser with the
Performance API: the time from navigation start to the page's `atoll-rendered` mark (set
by the UI when the page's first render with its data is done, its table filled) and to the
first contentful paint; the script checks the table has its rows. Prints the median and
the spread of the R runs for each page.

Needs Debian's chromium and chromium-driver and the selenium package (as the end-to-end
UI tests). Environment: S, M, R, K (defaults 1000, 100, 5, 16), ATOLL_BIN, ATOLL_HTTP,
ATOLL_ARGS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchlib import Atoll, env_int
from metrics import register_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

# The pages, and what shows that each has its data: (hash path, page name, rows wanted).
PAGES = [
    ("/", "overview", None),
    ("/services", "services", "services"),
    ("/nodes", "nodes", "nodes"),
]

TIMEOUT = 60.0


def start_browser():
    try:
        import ui_util
    except ImportError as exc:
        raise SystemExit(f"cannot load the browser helpers: {exc} (pip install selenium pytest)")
    try:
        return ui_util, ui_util.start_browser()
    except BaseException as exc:  # pytest's skip/fail outcomes are BaseExceptions
        raise SystemExit(f"cannot start headless chromium: {exc}")


def load_once(ui_util, driver, base_url: str, path: str, name: str, rows: int | None) -> tuple[float, float | None, int]:
    """One fresh load of the page: ms to `atoll-rendered`, ms to first contentful paint, rows shown."""
    driver.get("about:blank")
    driver.get(f"{base_url}/ui/#{path}")
    rendered = ui_util.rendered_mark(driver, TIMEOUT)
    ui_util.wait_element(driver, f'[data-page="{name}"][data-rendered="true"]', TIMEOUT)
    paint = driver.execute_script(
        "const p = performance.getEntriesByName('first-contentful-paint');"
        "return p.length ? p[0].startTime : null;"
    )
    shown = driver.execute_script(
        "return document.querySelectorAll('[data-page] tbody tr[data-row]').length;"
    )
    if rows is not None and shown < rows:
        raise SystemExit(f"page {path}: {shown} rows after atoll-rendered, expected at least {rows}")
    return rendered, (float(paint) if paint is not None else None), int(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--services", type=int, default=env_int("S", 1000))
    parser.add_argument("-m", "--nodes", type=int, default=env_int("M", 100))
    parser.add_argument("-r", "--runs", type=int, default=env_int("R", 5))
    parser.add_argument("-k", "--connections", type=int, default=env_int("K", 16))
    args = parser.parse_args()
    if args.runs < 1 or args.services < 1 or args.nodes < 1:
        raise SystemExit("--services, --nodes and --runs must be at least 1")

    ui_util, driver = start_browser()
    try:
        with Atoll() as atoll:
            seconds = register_all(atoll.host, atoll.port, args.services, args.nodes, args.connections)
            print(f"registered {args.services} services on {args.nodes} nodes in {seconds:.1f} s")
            wanted = {"services": args.services, "nodes": args.nodes}
            print(f"{'page':<12} {'rendered median':>16} {'min':>8} {'max':>8} {'FCP median':>11} {'rows':>6}")
            for path, name, rows_of in PAGES:
                rendered: list[float] = []
                paints: list[float] = []
                shown = 0
                for _ in range(args.runs):
                    ms, paint, shown = load_once(ui_util, driver, atoll.base_url, path, name, wanted.get(rows_of or ""))
                    rendered.append(ms)
                    if paint is not None:
                        paints.append(paint)
                fcp = f"{statistics.median(paints):.0f} ms" if paints else "n/a"
                print(
                    f"{'#' + path:<12} {statistics.median(rendered):>13.0f} ms {min(rendered):>5.0f} ms "
                    f"{max(rendered):>5.0f} ms {fcp:>11} {shown:>6}"
                )
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
