"""The dashboard in a real headless browser (Debian's chromium driven by
Playwright), against a live server: what a person sees and does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from genjobs.client import GenJobsClient
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.test_providers import ARTICLE, providers_file

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000  # a loaded 2-core CI box
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: ServerThread) -> Iterator[Page]:
    with browser_page(browser) as opened:
        yield opened


@contextmanager
def browser_page(browser: Browser) -> Iterator[Page]:
    """A fresh page; on leaving, no script error and nothing the CSP blocked."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # Whatever the Content-Security-Policy blocks (an inline script, a style) is logged so.
    opened.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
    yield opened
    context.close()
    assert not errors, errors


def sign_in(page: Page, server: ServerThread, where: str = "/") -> None:
    assert server.app is not None
    page.goto(f"http://127.0.0.1:{server.app.http_port}/#token={server.token('alice')}")
    expect(page.locator("#who")).to_contain_text("alice")
    assert "token" not in page.url  # the token left the address bar
    if where != "/":
        page.evaluate("where => { location.hash = where; }", f"#{where}")


def tab_to(page: Page, target: Locator) -> None:
    """Press Tab until `target` has the focus (as a keyboard user reaches it)."""
    for _ in range(200):
        page.keyboard.press("Tab")
        if target.evaluate("node => node === document.activeElement"):
            return
    raise AssertionError(f"Tab never reached {target}")


def test_a_submitted_job_appears_and_its_bar_moves_to_done_without_a_reload(
    page: Page, server: ServerThread, tmp_path: Path
) -> None:
    sign_in(page, server)
    expect(page.locator("#jobs-table")).to_be_visible()
    page.evaluate("window.sameDocument = true")
    page.fill("#new-topic", "Browser tea")
    page.click("details summary")
    page.fill("#new-extra", "demo_seconds=3")
    page.get_by_role("button", name="Submit").click()

    row = page.locator("tr[data-job-id]", has_text="Browser tea")
    expect(row).to_have_count(1)
    bar = row.get_by_role("progressbar")
    # The bar moves: a value strictly between 0 and 100 is seen, then done.
    page.wait_for_function(
        """() => [...document.querySelectorAll('tr[data-job-id]')]
            .filter(r => r.textContent.includes('Browser tea'))
            .some(r => { const v = +r.querySelector('[role=progressbar]').getAttribute('aria-valuenow');
                         return v > 0 && v < 100; })"""
    )
    expect(row).to_have_attribute("data-status", "completed")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(row.locator(".badge")).to_have_text("completed")
    assert page.evaluate("window.sameDocument") is True  # no reload happened
    expect(page.locator("[data-stat=completed] .stat-value")).to_have_text("1")
    page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True, animations="disabled")

    row.get_by_role("link", name="Browser tea").click()
    expect(page.locator(".head-side")).to_have_attribute("data-status", "completed")
    body = page.locator(".article-body")
    expect(body).to_contain_text("Browser tea")
    assert body.evaluate("node => node.children.length") == 0  # text, never markup
    expect(page.locator(".stage.done")).to_have_count(4)
    page.screenshot(path=str(tmp_path / "job.png"), full_page=True, animations="disabled")


@pytest.fixture
def priced(mongo: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    """A server on the openai generator whose providers file prices `small`
    (the default) and not `local`, each served by a fake that writes ARTICLE."""
    monkeypatch.setenv("MAIN_TEST_KEY", "sk-main")
    with FakeOpenAI() as main, FakeOpenAI() as backup:
        main.default = backup.default = Plan(pieces=ARTICLE)
        path = providers_file(tmp_path / "providers.toml", main.base_url, backup.base_url)
        settings = make_settings(mongo.uri, tmp_path, generator="openai", providers_file=str(path))
        running = ServerThread(settings).start()
        yield running
        running.stop()


def test_the_new_job_form_shows_the_estimate_before_submitting(
    browser: Browser, priced: ServerThread, tmp_path: Path
) -> None:
    with browser_page(browser) as page, priced.client("alice") as alice:
        sign_in(page, priced)
        estimate = page.locator("#new-estimate")
        page.fill("#new-words", "1000")
        page.locator("#new-topic").press_sequentially("Green tea", delay=20)
        # 1000 words at $10/M out, 0.75x to 1.5x, and the prompt at $2.50/M (as test_providers).
        expect(estimate).to_have_text("estimate 1-3¢ (small on main)")
        page.screenshot(path=str(tmp_path / "estimate.png"), full_page=True, animations="disabled")
        page.click("details summary")
        page.fill("#new-extra", "model=local")
        expect(estimate).to_have_text("cost unknown: model local has no price (local on backup)")
        page.fill("#new-extra", "model=nope")
        expect(estimate).to_contain_text("unknown model 'nope': known models are")
        expect(estimate).to_have_class("estimate error-text")
        page.screenshot(path=str(tmp_path / "estimate-error.png"), full_page=True, animations="disabled")
        assert not alice.list().jobs  # an estimate stores nothing
        page.fill("#new-extra", "model=local")
        expect(estimate).to_contain_text("cost unknown")
        page.get_by_role("button", name="Submit").click()
        row = page.locator("tr[data-job-id]", has_text="Green tea")
        expect(row).to_have_attribute("data-status", "completed")
        expect(estimate).to_have_text("")  # the form is empty again
        assert len(alice.list().jobs) == 1
        # This month's usage counts the unpriced job apart, not as $0.00 spent.
        wait_for(lambda: alice.usage().cost_unknown_jobs == 1, timeout=10)
        page.get_by_role("link", name="Usage").click()
        spent = page.locator("[data-stat=cost] .stat-value")
        expect(spent).to_have_text("$0.00 + 1 job of unknown cost")
        expect(page.locator("#projects-title + *")).to_have_text("Nothing spent this month.")  # no $0.00 row
        page.screenshot(path=str(tmp_path / "usage.png"), full_page=True, animations="disabled")


def test_a_submit_right_after_typing_leaves_no_estimate_behind(
    page: Page, server: ServerThread, tmp_path: Path
) -> None:
    page.clock.install()
    sign_in(page, server)
    # From here the page's timers fire only as the test moves its clock: the
    # estimate is still due when the submit comes, however slow the machine.
    page.clock.pause_at(page.evaluate("Date.now()") + 1_000)
    page.evaluate(
        """() => {
            window.estimatesAsked = 0;
            const real = window.fetch;
            window.fetch = (url, init) => {
                if (String(init && init.body).includes('"validateOnly":true')) window.estimatesAsked += 1;
                return real(url, init);
            };
        }"""
    )
    page.locator("#new-topic").press_sequentially("Quick tea")
    page.locator("#new-topic").press("Enter")
    expect(page.locator("tr[data-job-id]", has_text="Quick tea")).to_have_count(1)
    expect(page.locator("#new-topic")).to_have_value("")
    page.clock.run_for(5_000)  # well past the pause an estimate waits for
    # Before the fix the emptied form asked for one and said "params.topic: required".
    assert page.evaluate("window.estimatesAsked") == 0
    page.clock.resume()
    expect(page.locator("#new-estimate")).to_have_text("")
    expect(page.locator("[data-stat=completed] .stat-value")).to_have_text("1")
    page.screenshot(path=str(tmp_path / "submitted.png"), full_page=True, animations="disabled")


def test_cancel_on_a_queued_job_from_the_keyboard(
    page: Page, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    blocker = alice.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "30"})
    queued = alice.submit("topic", topic="waits its turn")
    sign_in(page, server)
    row = page.locator(f'tr[data-job-id="{queued.id}"]')
    expect(row).to_have_attribute("data-status", "queued")
    running = page.locator(f'tr[data-job-id="{blocker.id}"]')
    expect(running).to_have_attribute("data-status", "processing")
    cancel = row.get_by_role("button", name="Cancel")
    # Reach the button with Tab alone, then press it with Enter.
    tab_to(page, cancel)
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("data-status", "cancelled")
    expect(row.locator(".badge")).to_have_text("cancelled")
    expect(row.get_by_role("button", name="Retry")).to_be_visible()
    assert alice.get(queued.id).status == jobs_pb2.JOB_STATUS_CANCELLED
    page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True, animations="disabled")
    alice.cancel(blocker.id)


def _progress_moves(page: Page, bar: Locator) -> None:
    """Wait until `bar` shows more than it does now (a progress update arrived)."""
    before = int(bar.get_attribute("aria-valuenow") or 0)
    page.wait_for_function(
        "([node, v]) => +node.getAttribute('aria-valuenow') > v", arg=[bar.element_handle(), before]
    )


def test_the_cancel_button_keeps_the_keyboard_focus_while_its_job_moves(
    page: Page, server: ServerThread, alice: GenJobsClient
) -> None:
    # Before, every progress update built a job's buttons again: the focus
    # (and a click half done) went with the old ones.
    on_list = alice.submit("topic", topic="Slow green tea", extra={"demo_seconds": "30"})
    # Running before the page opens: no change of its status re-reads the page meanwhile.
    wait_for(lambda: alice.get(on_list.id).status == jobs_pb2.JOB_STATUS_PROCESSING)
    sign_in(page, server)
    row = page.locator(f'tr[data-job-id="{on_list.id}"]')
    expect(row).to_have_attribute("data-status", "processing")
    cancel = row.get_by_role("button", name="Cancel")
    tab_to(page, cancel)
    _progress_moves(page, row.get_by_role("progressbar"))
    # A new job makes the page read the list again: the rows already shown stay the same elements.
    queued = alice.submit("topic", topic="Waits its turn")
    expect(page.locator(f'tr[data-job-id="{queued.id}"]')).to_have_attribute("data-status", "queued")
    _progress_moves(page, row.get_by_role("progressbar"))
    assert cancel.evaluate("node => node === document.activeElement")
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("data-status", "cancelled")

    on_page = alice.submit("topic", topic="Slow black tea", extra={"demo_seconds": "30"})
    page.evaluate("where => { location.hash = where; }", f"#/jobs/{on_page.id}")
    side = page.locator(".head-side")
    expect(side).to_have_attribute("data-status", "processing")
    cancel = side.get_by_role("button", name="Cancel")
    tab_to(page, cancel)
    _progress_moves(page, page.get_by_role("progressbar", name="Job progress"))
    _progress_moves(page, page.get_by_role("progressbar", name="Job progress"))
    assert cancel.evaluate("node => node === document.activeElement")
    page.keyboard.press("Enter")
    # The cancel's answer (still stopping) may come after the stream's "cancelled": the page keeps the newer.
    expect(side).to_have_attribute("data-status", "cancelled")
    expect(side.get_by_role("button", name="Retry")).to_be_visible()


def test_a_bulk_job_counts_up_and_pause_stops_it(
    page: Page, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    items = [{"topic": f"item {i}", "word_count": 60, "extra": {"demo_seconds": "1.5"}} for i in range(10)]
    bulk = alice.create_bulk("topic", items)
    sign_in(page, server, f"/bulk/{bulk.id}")
    of = page.locator("#bulk-of")
    expect(of).to_contain_text("of 10")
    seen = {int(of.inner_text().split()[0])}
    pause = page.get_by_role("button", name="Pause")
    tab_to(page, pause)
    # X of Y rises while the page is open; Pause keeps the keyboard's focus meanwhile.
    page.wait_for_function("() => +document.querySelector('#bulk-of').textContent.split(' ')[0] >= 2")
    seen.add(int(of.inner_text().split()[0]))
    assert max(seen) >= 2
    assert pause.evaluate("node => node === document.activeElement")
    page.keyboard.press("Enter")
    head = page.locator(".head-side")
    expect(head).to_have_attribute("data-status", "paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    # The running item finishes; nothing after it starts, and the page agrees.
    settled = wait_for(
        lambda: (
            (b := alice.get_bulk(bulk.id)).status == bulk_pb2.BULK_JOB_STATUS_PAUSED
            and all(i.status != jobs_pb2.JOB_STATUS_PROCESSING for i in b.items)
            and b
        ),
        timeout=30,
    )
    done = settled.completed_items  # the headline is what completed, as in `genjobs bulk ls`
    assert done < 10
    expect(of).to_contain_text(f"{done} of 10")
    expect(page.locator('#items-table tr[data-status="queued"]')).to_have_count(10 - done)
    page.screenshot(path=str(tmp_path / "bulk.png"), full_page=True, animations="disabled")

    page.evaluate("location.hash = '#/bulk'")
    row = page.locator(f'tr[data-bulk-job-id="{bulk.id}"]')
    expect(row).to_have_attribute("data-status", "paused")
    expect(row).to_contain_text(f"{done} of 10")
    page.screenshot(path=str(tmp_path / "bulks.png"), full_page=True, animations="disabled")
    alice.cancel_bulk(bulk.id)


def test_without_a_token_it_asks_for_one(page: Page, server: ServerThread) -> None:
    assert server.app is not None
    page.goto(f"http://127.0.0.1:{server.app.http_port}/")
    page.fill("#token", "not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not a genjobs token")
    token = server.token("alice")
    page.fill("#token", token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#jobs-table")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('genjobs.token')") == token


def test_a_bulk_operation_confirms_with_its_dry_run_count(
    page: Page, server: ServerThread, alice: GenJobsClient
) -> None:
    failed = [alice.submit("topic", topic=f"broken {i}", extra={"demo_fail": "permanent"}) for i in range(2)]
    wait_for(lambda: all(alice.get(j.id).status == jobs_pb2.JOB_STATUS_FAILED for j in failed), timeout=30)
    sign_in(page, server)
    expect(page.locator('tr[data-status="failed"]')).to_have_count(2)
    page.get_by_role("button", name="Retry all failed").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("retry 2 failed jobs")
    expect(dialog).not_to_contain_text("more after")  # 2 is all of them, not "2 more after these"
    assert alice.list(statuses=["queued"]).total_size == 0  # a dry run only, so far
    dialog.get_by_role("button", name="Retry 2").click()
    expect(page.locator("tr[data-job-id]")).to_have_count(4)
    retries = [j for j in alice.list().jobs if j.retry_of]
    assert sorted(j.retry_of for j in retries) == sorted(j.id for j in failed)


def test_stage_chips_are_the_declared_stages_and_a_failed_job_shows_no_later_one_done(
    page: Page, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    broken = alice.submit("topic", topic="breaks early", extra={"demo_fail": "permanent"}, max_attempts=1)
    failed = wait_for(
        lambda: (j := alice.get(broken.id)).status == jobs_pb2.JOB_STATUS_FAILED and j, timeout=30
    )
    sign_in(page, server, f"/jobs/{broken.id}")
    expect(page.locator(".head-side")).to_have_attribute("data-status", "failed")
    chips = page.locator(".stage")
    expect(chips).to_have_count(4)
    expect(chips).to_have_text(["research", "outline", "drafting", "editing"], ignore_case=True)
    # As many done as the server says (the stages before the one it failed in), never all four.
    expect(page.locator(".stage.done")).to_have_count(failed.stages_done)
    assert failed.stages_done <= 2
    expect(page.locator(".stage.current")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "failed-stages.png"), full_page=True, animations="disabled")


def test_bulk_counts_a_cancelled_bulk_job_is_not_12_of_12_and_deleted_items_show(
    page: Page, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    blocker = alice.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "60"})
    items = [{"topic": f"cancelled {i}", "word_count": 60} for i in range(12)]
    cancelled = alice.create_bulk("topic", items)
    alice.cancel_bulk(cancelled.id)
    alice.cancel(blocker.id)
    finals = (bulk_pb2.BULK_JOB_STATUS_COMPLETED, bulk_pb2.BULK_JOB_STATUS_CANCELLED)
    wait_for(
        lambda: (b := alice.get_bulk(cancelled.id)).status in finals and b.remaining_items == 0, timeout=30
    )
    sign_in(page, server, f"/bulk/{cancelled.id}")
    expect(page.locator("#bulk-of")).to_have_text("0 of 12 items completed")
    expect(page.locator('[data-count="cancelled"] dd')).to_have_text("12")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "0")
    page.screenshot(path=str(tmp_path / "bulk-cancelled.png"), full_page=True, animations="disabled")

    finished = alice.create_bulk("topic", [{"topic": f"kept {i}", "word_count": 60} for i in range(10)])
    wait_for(
        lambda: (b := alice.get_bulk(finished.id)).status in finals and b.remaining_items == 0, timeout=30
    )
    alice.run_bulk_operation("DELETE_ALL_COMPLETED", bulk_job_id=finished.id)
    page.evaluate("where => { location.hash = where; }", f"#/bulk/{finished.id}")
    expect(page.locator('[data-count="deleted"] dd')).to_have_text("10")
    expect(page.locator("#bulk-of")).to_have_text("0 of 10 items completed")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    page.screenshot(path=str(tmp_path / "bulk-deleted.png"), full_page=True, animations="disabled")

    page.evaluate("location.hash = '#/bulk'")
    expect(page.locator(f'tr[data-bulk-job-id="{finished.id}"]')).to_contain_text("0 of 10 · 10 deleted")
    row = page.locator(f'tr[data-bulk-job-id="{cancelled.id}"]')
    expect(row).to_contain_text("0 of 12")
    expect(row).not_to_contain_text("12 of 12")
    page.screenshot(path=str(tmp_path / "bulks-counts.png"), full_page=True, animations="disabled")
    print(f"screenshots in {tmp_path}")


def test_every_page_opens_from_its_plain_url_as_mail_links_and_bookmarks_do(
    page: Page, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    assert server.app is not None
    base = f"http://127.0.0.1:{server.app.http_port}"
    job = alice.submit("topic", topic="Linked from a mail", word_count=60)
    bulk = alice.create_bulk("topic", [{"topic": f"linked {i}", "word_count": 60} for i in range(10)])
    # A mail's link, the token handed over in the fragment as `genjobs-server token` prints it.
    page.goto(f"{base}/jobs/{job.id}#token={server.token('alice')}")
    expect(page.locator(".head-side")).to_have_attribute("data-job-id", job.id)
    expect(page.locator("h1")).to_have_text("Linked from a mail")
    assert page.url == f"{base}/jobs/{job.id}"  # the token left the address bar
    page.goto(f"{base}/bulk-jobs/{bulk.id}")  # a bookmark, signed in already
    expect(page.locator(".head-side")).to_have_attribute("data-bulk-job-id", bulk.id)
    page.goto(f"{base}/bulk-jobs")
    expect(page.locator(f'tr[data-bulk-job-id="{bulk.id}"]')).to_be_visible()
    # A link inside the dashboard moves to the page's own address, without a reload.
    page.evaluate("window.sameDocument = true")
    page.locator(f'tr[data-bulk-job-id="{bulk.id}"] a').click()
    expect(page).to_have_url(f"{base}/bulk-jobs/{bulk.id}")
    page.go_back()
    expect(page).to_have_url(f"{base}/bulk-jobs")
    expect(page.locator("[aria-current=page]")).to_have_text("Bulk jobs")
    assert page.evaluate("window.sameDocument") is True
    # An old link of the `#/` kind still opens its page, at its new address.
    page.goto(f"{base}/#/jobs/{job.id}")
    expect(page.locator(".head-side")).to_have_attribute("data-job-id", job.id)
    expect(page).to_have_url(f"{base}/jobs/{job.id}")
    # Not a page: still a 404.
    for path in ("/nothing-here", f"/jobs/{job.id}/more/deep"):
        assert page.request.get(base + path).status == 404


def test_the_jobs_page_shows_new_jobs_and_counts_from_one_owner_stream(
    page: Page, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    sign_in(page, server)
    expect(page.locator("#jobs-table")).to_contain_text("No jobs match.")
    expect(page.locator("[data-stat=total] .stat-value")).to_have_text("0")
    page.evaluate("window.sameDocument = true")
    # A job from the client (as from the CLI) appears, and the counts move, within 2 s.
    job = alice.submit("topic", topic="Sent from the CLI", extra={"demo_seconds": "2"})
    row = page.locator(f'tr[data-job-id="{job.id}"]')
    expect(row).to_be_visible(timeout=2_000)
    expect(page.locator("[data-stat=total] .stat-value")).to_have_text("1")
    expect(row).to_have_attribute("data-status", "processing")
    expect(page.locator("[data-stat=processing] .stat-value")).to_have_text("1")
    expect(row).to_have_attribute("data-status", "completed")
    expect(page.locator("[data-stat=completed] .stat-value")).to_have_text("1")
    expect(page.locator("[data-stat=processing] .stat-value")).to_have_text("0")
    assert page.evaluate("window.sameDocument") is True  # no reload happened
    # One stream for the owner, none per row.
    assert not [u for u in requests if f"/v1/jobs/{job.id}:watch" in u]
    assert [u for u in requests if u.endswith("/v1/jobs:watch")]
    page.screenshot(path=str(tmp_path / "jobs-live.png"), full_page=True, animations="disabled")


def test_bulk_items_show_their_topics_and_project_and_a_job_its_schedule_and_priority(
    page: Page, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    topics = [f"Autumn {name}" for name in "abcdefghij"]
    items: list[dict[str, Any]] = [{"topic": t, "word_count": 60} for t in topics]
    items[3]["extra"] = {"demo_fail": "permanent"}
    launch = alice.create_bulk("topic", items, project="autumn-launch")
    plain = alice.create_bulk("topic", [{"topic": f"Plain {i}", "word_count": 60} for i in range(10)])
    later = alice.submit(
        "topic", topic="New year post", priority="low", schedule_time=datetime(2030, 1, 1, 9, tzinfo=UTC)
    )
    finals = (bulk_pb2.BULK_JOB_STATUS_COMPLETED, bulk_pb2.BULK_JOB_STATUS_CANCELLED)
    wait_for(lambda: alice.get_bulk(launch.id).status in finals, timeout=60)
    sign_in(page, server, f"/bulk-jobs/{launch.id}")
    expect(page.locator("h1")).to_have_text("autumn-launch")
    rows = page.locator("#items-table tbody tr")
    expect(rows).to_have_count(10)
    expect(rows.locator("td.title a")).to_have_text(topics)
    expect(page.locator("#bulk-errors li")).to_have_count(1)
    expect(page.locator("#bulk-errors li")).to_contain_text("Autumn d: ")
    # An ended bulk job says when it was done, not "—".
    ended = alice.get_bulk(launch.id).end_time.ToDatetime().year
    expect(page.locator('[data-count="done at"] dd')).to_contain_text(str(ended))
    page.screenshot(path=str(tmp_path / "bulk-topics.png"), full_page=True, animations="disabled")

    page.goto(page.url.split("/bulk-jobs/")[0] + "/bulk-jobs")
    expect(page.locator(f'tr[data-bulk-job-id="{launch.id}"] td.title a')).to_have_text("autumn-launch")
    expect(page.locator(f'tr[data-bulk-job-id="{plain.id}"] td.title a')).to_have_text("Plain 0 + 9 more")
    page.screenshot(path=str(tmp_path / "bulks-named.png"), full_page=True, animations="disabled")

    page.goto(page.url.split("/bulk-jobs")[0] + f"/jobs/{later.id}")
    expect(page.locator("#job-state")).to_contain_text("scheduled for")
    expect(page.locator("#job-state")).to_contain_text("2030")
    expect(page.locator('[data-fact="scheduled for"]')).to_contain_text("2030")
    expect(page.locator('[data-fact="priority"]')).to_have_text("low")
    expect(page.locator('[data-fact="elapsed"]')).to_have_text("not due yet")
    page.screenshot(path=str(tmp_path / "job-scheduled.png"), full_page=True, animations="disabled")
    alice.cancel(later.id)


def test_schedules_templates_usage_and_notifications_have_pages(
    browser: Browser, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    assert server.app is not None
    base = f"http://127.0.0.1:{server.app.http_port}"
    alice.create_template(
        "weekly-tea",
        job=jobs_pb2.SubmitJobRequest(
            mode=jobs_pb2.MODE_TOPIC,
            project="tea",
            params=jobs_pb2.GenerationParams(topic="Weekly tea", word_count=60),
        ),
    )
    schedule = alice.create_schedule("0 9 * * 1", time_zone="Europe/Berlin", template="weekly-tea")
    with server.client("root", admin=True) as admin:
        admin.set_budget("alice", 500)
        admin.set_budget("alice", 200, project="tea")
    bulk = alice.create_bulk("topic", [{"topic": f"noted {i}", "word_count": 60} for i in range(10)])
    wait_for(lambda: alice.get_bulk(bulk.id).status == bulk_pb2.BULK_JOB_STATUS_COMPLETED, timeout=60)
    # The viewer is in New York: the Berlin schedule's next run reads in New York time.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="America/New_York")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/schedules#token={server.token('alice')}")
    row = page.locator(f'tr[data-schedule-id="{schedule.id}"]')
    expect(row).to_contain_text("template weekly-tea")
    next_run = schedule.next_run_time.ToDatetime(UTC).astimezone(ZoneInfo("America/New_York"))
    expect(row.locator(".next-run")).to_contain_text(f"{next_run:%I:%M}")
    expect(row.locator(".next-run")).to_contain_text("EST")
    page.screenshot(path=str(tmp_path / "schedules.png"), full_page=True, animations="disabled")
    row.get_by_role("link").click()
    expect(page).to_have_url(f"{base}/schedules/{schedule.id}")
    expect(page.locator('[data-fact="its zone"]')).to_have_text("Europe/Berlin")
    expect(page.locator("#runs-table")).to_contain_text("No runs yet.")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator(".head-side")).to_have_attribute("data-state", "paused")
    expect(page.locator('[data-fact="next run"]')).to_have_text("paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".head-side")).to_have_attribute("data-state", "active")
    page.screenshot(path=str(tmp_path / "schedule.png"), full_page=True, animations="disabled")
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{base}/schedules")
    expect(page.locator("#schedules-table")).to_contain_text("No schedules yet.")

    page.goto(f"{base}/templates")
    page.locator('tr[data-template="weekly-tea"] a').click()
    expect(page.locator("#template-request")).to_contain_text("Weekly tea")
    page.screenshot(path=str(tmp_path / "template.png"), full_page=True, animations="disabled")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator(".head-side")).to_have_attribute("data-status", "completed")
    expect(page.locator("h1")).to_have_text("Weekly tea")
    expect(page.locator('a[href="/templates/weekly-tea"]')).to_be_visible()  # the job names its template
    page.goto(f"{base}/templates/weekly-tea")
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#templates-table")).to_contain_text("No templates yet.")
    page.screenshot(path=str(tmp_path / "templates.png"), full_page=True, animations="disabled")

    spent = alice.usage()
    page.goto(f"{base}/usage")
    limits = page.locator("#budgets li")
    expect(limits).to_have_count(2)
    tea = page.locator('#budgets li[data-project="tea"]')
    expect(tea).to_contain_text("of $2.00")
    expect(page.locator('#budgets li[data-project=""]')).to_contain_text("of $5.00")
    tea_spent = next(b.spent_cents for b in spent.budgets if b.project == "tea")
    expect(tea).to_contain_text(f"${tea_spent / 100:.2f} of $2.00")
    expect(tea.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", str(int(100 * tea_spent / 200 + 0.5))
    )

    page.screenshot(path=str(tmp_path / "usage.png"), full_page=True, animations="disabled")

    page.goto(f"{base}/notifications")
    note = page.locator(f'#notifications a[href="/bulk-jobs/{bulk.id}"]')
    expect(note).to_contain_text("10 of 10")
    page.screenshot(path=str(tmp_path / "notifications.png"), full_page=True, animations="disabled")
    context.close()
    assert not errors, errors


# Every page, and what shows once it has loaded.
PAGES = {
    "/": "tr[data-job-id]",
    "/jobs/{job}": ".head-side",
    "/bulk-jobs": "tr[data-bulk-job-id]",
    "/bulk-jobs/{bulk}": "#bulk-errors li strong",
    "/schedules": "tr[data-schedule-id]",
    "/schedules/{schedule}": "#runs-table tbody tr",
    "/templates": "tr[data-template]",
    "/templates/weekly-tea": ".head-side",
    "/usage": "#budgets li",
    "/notifications": "#notifications li[data-notification-id]",
}


def test_every_page_at_desktop_and_phone_width_with_nothing_cut_off(
    browser: Browser, server: ServerThread, alice: GenJobsClient, tmp_path: Path
) -> None:
    assert server.app is not None
    base = f"http://127.0.0.1:{server.app.http_port}"
    items: list[dict[str, Any]] = [{"topic": f"Phone item {i}", "word_count": 60} for i in range(10)]
    items[2]["extra"] = {"demo_fail": "permanent"}
    bulk = alice.create_bulk("topic", items, project="autumn-launch")
    wait_for(lambda: alice.get_bulk(bulk.id).status == bulk_pb2.BULK_JOB_STATUS_COMPLETED, timeout=60)
    later = datetime(2030, 1, 1, 9, tzinfo=UTC)
    jobs = [alice.submit("topic", topic=f"Queued for later {i}", schedule_time=later) for i in range(40)]
    alice.create_template(
        "weekly-tea",
        job=jobs_pb2.SubmitJobRequest(
            mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic="Weekly tea")
        ),
    )
    schedule = alice.create_schedule("0 9 * * 1", time_zone="Europe/Berlin", template="weekly-tea")
    with server.client("root", admin=True) as admin:
        admin.set_budget("alice", 500)
    ids = {"job": jobs[-1].id, "bulk": bulk.id, "schedule": schedule.id}
    errors: list[str] = []
    for width, height in ((1280, 900), (390, 844)):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base}/#token={server.token('alice')}")
        expect(page.locator("tr[data-job-id]")).to_have_count(50)
        if width == 390:
            # The first screen shows jobs: the first row starts inside it.
            # (One read of the row's place: the table may be drawn again meanwhile.)
            top = page.evaluate("() => document.querySelector('tr[data-job-id]').getBoundingClientRect().top")
            assert top + 40 < height, top
        for path, loaded in PAGES.items():
            page.goto(base + path.format(**ids))
            expect(page.locator(loaded).first).to_be_visible()
            name = path.strip("/").split("/")[0] or "jobs"
            name += "-one" if "{" in path or path.count("/") > 1 else ""
            page.screenshot(path=str(tmp_path / f"{name}-{width}.png"), full_page=True, animations="disabled")
            page.screenshot(path=str(tmp_path / f"{name}-{width}-first-screen.png"), animations="disabled")
            # Nothing cut off: the page does not scroll sideways and every cell is inside it.
            cut = page.evaluate(
                """() => [document.documentElement.scrollWidth > innerWidth ? 'page' : null,
                    ...[...document.querySelectorAll('td, th')].filter(c => c.offsetParent)
                      .filter(c => c.getBoundingClientRect().right > innerWidth + 1).map(c => c.textContent)]
                    .filter(Boolean)"""
            )
            assert cut == [], (path, width, cut)
        if width == 390:
            page.goto(f"{base}/bulk-jobs/{bulk.id}")
            expect(page.locator("td.error-cell", has_text="DEMO_PERMANENT")).to_be_visible()
            # Keyboard alone: Tab to the first item's link, Enter opens it.
            link = page.locator("#items-table td.title a").first
            expect(link).to_have_text("Phone item 0")
            tab_to(page, link)
            page.keyboard.press("Enter")
            expect(page.locator("h1")).to_have_text("Phone item 0")
        context.close()
        assert not errors, errors
    print(f"screenshots in {tmp_path}")


def test_the_jobs_page_includes_archived_jobs_when_asked(
    browser: Browser, mongo: MongoServer, tmp_path: Path
) -> None:
    # Completed jobs move to the archive after a second; failed ones stay live.
    day = 1 / 86400
    settings = make_settings(mongo.uri, tmp_path, retention_days=day, archive_failed_days=3600 * day)
    server = ServerThread(settings).start()
    try:
        with server.client("alice") as alice, browser_page(browser) as page:
            done = alice.submit("topic", topic="Moved to the archive")
            alice.submit("topic", topic="Still live", extra={"demo_fail": "permanent"})
            wait_for(lambda: alice.get(done.id).HasField("archive_time"), timeout=30)
            sign_in(page, server)
            rows = page.locator("#jobs-table tbody tr")
            expect(rows.filter(has_text="Still live")).to_have_count(1)
            expect(rows.filter(has_text="Moved to the archive")).to_have_count(0)
            page.locator("#f-archived").check()
            archived_row = rows.filter(has_text="Moved to the archive")
            expect(archived_row).to_have_count(1)
            expect(archived_row).to_contain_text("archived")
            page.screenshot(path=str(tmp_path / "archived.png"), full_page=True, animations="disabled")
    finally:
        server.stop()
