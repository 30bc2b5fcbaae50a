"""The first hour with the command line: what a newcomer tripped on (issue 18).

Each test goes through `genjobs` as a user types it, against a live server.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from rich.console import Console
from typer.testing import Result

from genjobs.client import GenJobsClient
from genjobs.client.errors import GenJobsError
from genjobs.client.render import follow_job
from genjobs.server.runtime.embedded import free_port
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.harness import SECRET, MongoServer, ServerProcess, ServerThread, make_settings, wait_for
from tests.test_cli import Cli, final_status


@pytest.fixture
def cli(server: ServerThread) -> Cli:
    return Cli(server)


def within(seconds: float, run: Callable[[], Any]) -> Any:
    """`run()`'s answer, failing (not hanging) when it takes longer than `seconds`."""
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(run()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    assert answer, "it raised"
    return answer[0]


def _items(count: int, **extra_of: dict[str, str]) -> list[dict[str, Any]]:
    """`count` short bulk items; `extra_of["3"]` gives item 3 its params.extra."""
    return [
        {"topic": f"Item {i}", "word_count": 60, "extra": extra_of.get(str(i), {})}
        for i in range(1, count + 1)
    ]


def _bulk_final(client: GenJobsClient, bulk_id: str, timeout: float = 30) -> bulk_pb2.BulkJob:
    final = (bulk_pb2.BULK_JOB_STATUS_COMPLETED, bulk_pb2.BULK_JOB_STATUS_CANCELLED)
    return wait_for(  # type: ignore[no-any-return]
        lambda: (b := client.get_bulk(bulk_id)).status in final and b.remaining_items == 0 and b,
        timeout=timeout,
    )


# ---- 1. bulk watch ends once the bulk job is final, whatever became of its items


def test_bulk_watch_ends_after_its_completed_items_were_deleted(cli: Cli, alice: GenJobsClient) -> None:
    bulk = alice.create_bulk("topic", _items(10))
    _bulk_final(alice, bulk.id)
    assert "deleted 10 jobs" in cli("ops", "clean-completed", "--yes").stdout
    watched: Result = within(30, lambda: cli("bulk", "watch", bulk.id))
    assert "completed" in watched.stdout and "10 deleted" in watched.stdout
    events = within(30, lambda: list(alice.watch_bulk(bulk.id)))
    assert events[-1].bulk_job.status == bulk_pb2.BULK_JOB_STATUS_COMPLETED


def test_a_bulk_job_whose_done_items_were_deleted_while_it_ran_still_completes(
    cli: Cli, alice: GenJobsClient
) -> None:
    bulk = alice.create_bulk("topic", _items(10, **{"10": {"demo_seconds": "3"}}))
    wait_for(lambda: alice.get_bulk(bulk.id).completed_items == 9, timeout=30)
    assert "deleted 9 jobs" in cli("ops", "clean-completed", "--yes").stdout
    watched: Result = within(30, lambda: cli("bulk", "watch", bulk.id))
    assert "completed: 1 completed" in watched.stdout and "9 deleted" in watched.stdout
    assert alice.get_bulk(bulk.id).status == bulk_pb2.BULK_JOB_STATUS_COMPLETED


def test_bulk_watch_of_a_cancelled_bulk_job_whose_items_were_deleted(cli: Cli, alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "60"})
    bulk = alice.create_bulk("topic", _items(10))
    cli("bulk", "cancel", bulk.id, "--yes")
    _bulk_final(alice, bulk.id)
    cli("rm", "--yes", *[item.id for item in alice.get_bulk(bulk.id).items])
    watched: Result = within(30, lambda: cli("bulk", "watch", bulk.id, FORCE_COLOR="1"))
    shown = ANSI.sub("", watched.stdout)
    assert "cancelled" in shown and "of 10, 10 deleted" in shown and "100%" not in shown
    alice.cancel(blocker.id)


def test_within_fails_instead_of_hanging() -> None:
    stop = threading.Event()
    try:
        within(0.1, stop.wait)
    except AssertionError as error:
        assert "still running" in str(error)
    else:
        raise AssertionError("within() did not fail")
    finally:
        stop.set()


# ---- 5 and 6. watch rows: id, stage once, ETA, attempts, reconnecting; 80 columns


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def frames(drawn: str) -> list[str]:
    """The distinct lines a live display drew, without colours and cursor moves."""
    return sorted({line for line in re.split(r"[\r\n]", ANSI.sub("", drawn)) if line.strip()})


def test_watch_row_at_80_columns_has_id_stage_once_eta_and_attempt(alice: GenJobsClient) -> None:
    topic = "Green tea for breakfast, for lunch and for dinner, every day of the year"
    job = alice.submit("topic", topic=topic, extra={"demo_seconds": "2", "demo_fail": "transient"})
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80)
    last = follow_job(console, lambda hook: alice.watch(job.id, on_reconnect=hook), job.id)
    assert last is not None and last.status == jobs_pb2.JOB_STATUS_COMPLETED
    rows = frames(screen.getvalue())
    assert rows and all(len(row) <= 80 and row.startswith(job.id) for row in rows)
    running = [row for row in rows if "waiting" not in row]
    assert all("━" in row and "%" in row for row in running)  # the bar and its percentage stay
    assert any("drafting" in row and "ETA" in row for row in running)
    assert any("attempt 2 of 3" in row for row in running)
    assert all(row.count(row.split()[1]) == 1 for row in running)  # the stage once
    assert any("Green tea" in row and "…" in row for row in running)  # the topic gives way
    assert any(row.split()[1] == "completed" and "100%" in row for row in rows)


def test_watch_says_reconnecting_while_the_server_is_unreachable(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path, port=free_port())
    first = ServerThread(settings).start()
    dropped = threading.Event()
    screen = io.StringIO()

    def hook_of(shown: Callable[[Exception | None], None]) -> Callable[[Exception | None], None]:
        def hook(error: Exception | None) -> None:
            shown(error)
            if error is not None:
                dropped.set()

        return hook

    with first.client() as client:
        job = client.submit("topic", topic="Survives a restart", extra={"demo_seconds": "2"})
        wait_for(lambda: client.get(job.id).status == jobs_pb2.JOB_STATUS_PROCESSING)
        console = Console(file=screen, force_terminal=True, width=100)
        watching = threading.Thread(
            target=lambda: follow_job(
                console, lambda shown: client.watch(job.id, on_reconnect=hook_of(shown))
            ),
            daemon=True,
        )
        watching.start()
        wait_for(lambda: "Survives" in ANSI.sub("", screen.getvalue()))
        first.stop(grace=0.2)
        wait_for(dropped.is_set)
        second = ServerThread(settings).start()
        try:
            watching.join(60)
            assert not watching.is_alive()
        finally:
            second.stop()
    rows = frames(screen.getvalue())
    assert any("reconnecting..." in row for row in rows)
    assert any(row.split()[1] == "completed" and "100%" in row for row in rows)


class _Ended(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A watch stream's end as grpc reports it to the client: `details` says who ended it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


def _stream_ended_once(ended: _Ended) -> tuple[Callable[[int], Any], list[int]]:
    """A WatchJob that sends event 1 then ends with `ended`; reopened, sends event 2."""
    opened: list[int] = []

    def open_stream(after: int) -> Any:
        opened.append(after)
        if len(opened) > 1:
            return iter([jobs_pb2.JobEvent(sequence=2)])

        def first() -> Any:
            yield jobs_pb2.JobEvent(sequence=1)
            raise ended

        return first()

    return open_stream, opened


def test_a_watch_whose_stream_the_servers_stop_cancelled_reconnects() -> None:
    # A server stopping cancels the streams still open at the end of its grace
    # (a reconnect that arrived during its stop, on a loaded machine): the
    # client sees CANCELLED, and must go on as for UNAVAILABLE.
    open_stream, opened = _stream_ended_once(_Ended(grpc.StatusCode.CANCELLED, "CANCELLED"))
    with GenJobsClient("127.0.0.1:1", "token") as client:
        events = list(client._follow(open_stream, 0, True, jobs_pb2.JOB_EVENT_TYPE_HEARTBEAT))
    assert ([e.sequence for e in events], opened) == ([1, 2], [0, 1])
    # A stream this client ended itself is not reopened.
    for mine in ("Locally cancelled by application!", "Channel closed!"):
        open_stream, opened = _stream_ended_once(_Ended(grpc.StatusCode.CANCELLED, mine))
        with GenJobsClient("127.0.0.1:1", "token") as client, pytest.raises(GenJobsError):
            list(client._follow(open_stream, 0, True, jobs_pb2.JOB_EVENT_TYPE_HEARTBEAT))
        assert opened == [0]


def test_bulk_watch_shows_its_id_and_project_and_ls_keeps_id_status_progress_at_80(
    cli: Cli, alice: GenJobsClient, tmp_path: Path
) -> None:
    project = "Spring launch campaign with a name far too long for a narrow terminal"
    items = tmp_path / "items.csv"
    items.write_text("topic\n" + "".join(f"Launch article {i} and why it matters\n" for i in range(10)))
    narrow = {"COLUMNS": "80", "FORCE_COLOR": "1"}
    out = cli("bulk", "create", str(items), "--project", project, "--watch", **narrow).stdout
    rows = [row for row in frames(out) if row.split()[1] in ("queued", "processing", "completed")]
    bulk_id = rows[0].split()[0]
    assert all(len(row) <= 80 and row.startswith(bulk_id) and "━" in row for row in rows)
    assert any("Spring launch" in row and "…" in row for row in rows)  # the name, shortened
    listed = ANSI.sub("", cli("ls", "--limit", "3", **narrow).stdout).splitlines()
    assert listed[0].split()[:4] == ["ID", "STATUS", "DONE", "CREATED"]
    jobs = listed[1:4]
    assert len(jobs) == 3 and all(len(row) <= 80 for row in jobs)
    assert all(re.match(r"[0-9a-f]{24} +completed +100% ", row) for row in jobs)
    assert all("Launch article" in row and "…" in row for row in jobs)


def test_a_cancelled_bulk_job_is_not_shown_at_100_percent(cli: Cli, alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "60"})
    bulk = alice.create_bulk("topic", _items(10))
    alice.cancel_bulk(bulk.id)
    alice.cancel(blocker.id)
    out = cli("bulk", "watch", bulk.id, FORCE_COLOR="1").stdout
    shown = ANSI.sub("", out)
    assert "100%" not in shown and "0 completed, 0 failed, 10 cancelled of 10" in shown
    assert "progress  0%" in cli("bulk", "show", bulk.id).stdout


# ---- 7. the article alone, content in exports, notifications


def test_show_content_prints_the_article_alone_exactly_as_stored(
    cli: Cli, alice: GenJobsClient, tmp_path: Path
) -> None:
    job = alice.submit("topic", topic="Green tea", word_count=150)
    final_status(alice, job.id)
    stored = alice.get(job.id).result.content
    assert cli("show", "--content", job.id).stdout == stored
    assert cli("show", job.id, "--content").stdout == stored  # flags after the id too
    failed = alice.submit("topic", topic="broken", extra={"demo_fail": "permanent"})
    final_status(alice, failed.id)
    refused = cli("show", "--content", failed.id, code=1)
    assert "has no article (it is failed)" in refused.stderr and not refused.stdout


def test_export_can_include_the_content(cli: Cli, alice: GenJobsClient, tmp_path: Path) -> None:
    job = alice.submit("topic", topic="Green tea", word_count=120)
    final_status(alice, job.id)
    target = tmp_path / "with-content.csv"
    assert "wrote 1 job " in cli("export", "--csv", str(target), "--content").stdout
    (row,) = csv.DictReader(target.open(newline="", encoding="utf-8"))
    assert row["content"] == alice.get(job.id).result.content and row["id"] == job.id
    plain = next(csv.reader(io.StringIO(cli("export", "--csv", "-").stdout)))
    assert "content" not in plain


def test_notifications_list_and_follow(server: ServerThread, alice: GenJobsClient, cli: Cli) -> None:
    assert "no notifications" in cli("notifications").stdout
    first = alice.create_bulk("topic", _items(10))
    _bulk_final(alice, first.id)
    listed = cli("notifications").stdout
    assert f"Bulk job {first.id} completed: 10 of 10 items succeeded" in listed
    assert [n["bulk_job_id"] for n in cli.json("notifications")["notifications"]] == [first.id]  # type: ignore[index]
    follower = subprocess.Popen(
        [str(Path(sys.executable).parent / "genjobs"), "notifications", "--follow", "--interval", "0.2"],
        env={**os.environ, **cli.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any(first.id in line for line in lines))
        second = alice.create_bulk("topic", _items(10, **{"2": {"demo_fail": "permanent"}}))
        wait_for(lambda: any(second.id in line for line in lines), timeout=30)
        assert "9 of 10 items succeeded, 1 failed" in lines[-1]
        assert len(lines) == 2  # each once
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    assert "Traceback" not in follower.stderr.read()  # type: ignore[union-attr]


# ---- 3. the start banner's genjobs line works as printed


@pytest.mark.parametrize("secret", ["", SECRET], ids=["data-dir secret", "env secret"])
def test_the_banners_genjobs_line_works_as_printed(mongo: MongoServer, tmp_path: Path, secret: str) -> None:
    log = tmp_path / "server.log"
    settings = make_settings(mongo.uri, tmp_path / "not the default data dir", auth_secret=secret)
    server = ServerProcess(settings, log).start()
    try:
        banner = wait_for(lambda: "Stop with Ctrl-C" in (text := log.read_text()) and text)
        line = banner.split("  genjobs:\n", 1)[1].splitlines()[0].strip()
        assert line.startswith((".venv/bin/genjobs ", "/")) and " submit " in line
        # A fresh shell in the server's folder: nothing but what the line says.
        env = {name: value for name, value in os.environ.items() if not name.startswith("GENJOBS_")}
        done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert "completed" in done.stdout
    finally:
        server.terminate()


# ---- 4. the repository carries its architecture, and the walk-through runs in order

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_links_the_architecture_whose_layout_names_real_files() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/architecture.md)" in readme and "../shared" not in readme
    text = (ROOT / "docs" / "architecture.md").read_text()
    layout = text.split("## Layout\n\n```\n", 1)[1].split("```", 1)[0]
    folder, named = "", []
    for line in layout.splitlines():
        entry = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        if not line.startswith(" "):
            folder = entry if entry.endswith("/") else folder
        elif re.fullmatch(r"[\w./, ]+", entry) and (entry.endswith((".py", "/"))):
            named += [folder + name for name in entry.split(", ")]
    assert len(named) > 20
    # A module grown into a package of the same name (store.py -> store/) is still where it says.
    missing = [n for n in named if not (ROOT / n).exists() and not (ROOT / n.removesuffix(".py")).is_dir()]
    assert missing == []


def test_the_walk_through_cleans_up_after_stats_and_export() -> None:
    readme = (ROOT / "docs" / "cli.md").read_text()
    clean = readme.index("genjobs ops clean-completed --yes\n")
    assert readme.index("genjobs stats\n") < clean and readme.index("genjobs export --csv") < clean


def test_watching_with_no_server_at_all_fails_at_once(cli: Cli) -> None:
    for command in (["watch", "0" * 24], ["bulk", "watch", "0" * 24]):
        down: Result = within(10, lambda command=command: cli(*command, code=1, GENJOBS_TARGET="127.0.0.1:1"))
        assert "is genjobs running at 127.0.0.1:1?" in down.stderr
