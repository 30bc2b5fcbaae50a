"""Issue 29 item 7: the dashboard's page load to a table of 50 jobs, in
Debian's chromium (Playwright), against a genjobs server process with 50
completed 800-word jobs: milliseconds from navigation to the 50th row on
screen, and bytes transferred (the page, its modules and stylesheet, its API
reads; the event stream's own bytes left out), each the median of LOADS cold
loads (a new browser context each: nothing cached).

    .venv/bin/python bench/dashboard_bench.py

To measure another version of the dashboard, put its files in server/web
(e.g. `git checkout <commit> -- server/web`) and run it again.
"""

from __future__ import annotations

import time

from common import ServerProcess, make_settings, median, scratch, start_mongo
from playwright.sync_api import sync_playwright

from tests.harness import free_port
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS

JOBS = 50
WORDS = 800
LOADS = 9
# Set before the page's own scripts run: the moment the table holds JOBS rows.
WATCH_TABLE = f"""
new MutationObserver((_, observer) => {{
  if (document.querySelectorAll('tr[data-job-id]').length >= {JOBS}) {{
    window.tableAt = performance.now();
    observer.disconnect();
  }}
}}).observe(document, {{ childList: true, subtree: true }});
"""
# Bytes of every finished response: the document and each resource (headers and body).
TRANSFERRED = """() => {
  const entries = [...performance.getEntriesByType('navigation'),
    ...performance.getEntriesByType('resource')];
  return entries.reduce((sum, e) => sum + e.transferSize, 0);
}"""


def main() -> None:
    mongo = start_mongo()
    settings = make_settings(mongo.uri, scratch(), http_port=str(free_port()))
    server = ServerProcess(settings, scratch() / "server.log").start()
    try:
        with server.client("reader") as client:
            for i in range(JOBS):
                client.submit("topic", topic=f"Tea gardens {i}", word_count=WORDS)
            deadline = time.monotonic() + 300
            while client.list(statuses=["COMPLETED"], page_size=1).total_size < JOBS:
                assert time.monotonic() < deadline, "jobs did not complete"
                time.sleep(0.2)
        url = f"http://127.0.0.1:{settings.http_port}/#token={server.token('reader')}"
        times, sizes = [], []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for n in range(LOADS + 1):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.add_init_script(WATCH_TABLE)
                page.goto(url)
                page.wait_for_function("() => window.tableAt !== undefined", timeout=30_000)
                at = page.evaluate("window.tableAt")
                # Whatever the page reads once the table shows (the stream's first
                # read of the page again) counts too: let it finish.
                page.wait_for_timeout(1000)
                size = page.evaluate(TRANSFERRED)
                context.close()
                if n:  # the first load warms the server (and the OS's caches) only
                    times.append(at)
                    sizes.append(size)
            browser.close()
        print(f"dashboard: page load to a table of {JOBS} jobs ({WORDS} words each), {LOADS} cold loads")
        print(f"  time to table  median {median(times):.0f} ms  (min {min(times):.0f}, max {max(times):.0f})")
        print(f"  transferred    median {median(sizes) / 1024:.1f} KB")
    finally:
        server.terminate()
        mongo.stop()


if __name__ == "__main__":
    main()
