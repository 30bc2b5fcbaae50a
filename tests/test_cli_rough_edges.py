"""The command line's rough edges a new user tripped on (issue 29): help and
version, short flags, confirmations, counts in words, 80 columns, time zones.

Each test goes through `genjobs` as a user types it (typer's CliRunner),
against the in-process server where it needs one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from genjobs.client import GenJobsClient
from genjobs.client.cli import app, globals_first, shared
from genjobs.v1 import jobs_pb2
from tests.harness import ServerThread
from tests.test_cli import Cli, final_status
from tests.test_cli_first_hour import ANSI, frames

RUNNER = CliRunner()


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group of the tree under `command`, with the words that reach it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


TREE = list(walk(typer.main.get_command(app)))


def help_of(*words: str, columns: int = 200, flag: str = "--help") -> str:
    """What `genjobs WORDS --help` prints."""
    result = RUNNER.invoke(app, [*words, flag], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, (words, result.output)
    return result.output


def test_h_is_help_on_every_command_and_group_and_version_prints_it() -> None:
    assert len(TREE) > 30
    for path, _ in TREE:
        assert help_of(*path, flag="-h") == help_of(*path), path
    version = RUNNER.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output == f"genjobs {metadata.version('genjobs')}\n"


def test_on_off_flags_show_no_value_placeholder() -> None:
    for path, _ in TREE:
        assert "<bool>" not in help_of(*path), path
    watch = next(line for line in help_of("submit").splitlines() if "--watch" in line)
    assert watch.split()[1:4] == ["--watch", "-w", "then"]


def test_one_meaning_per_short_flag_across_every_command_and_the_global_options() -> None:
    meaning: dict[str, tuple[str, tuple[str, ...]]] = {}
    for path, command in TREE:
        for param in command.get_params(command.make_context("genjobs", [], resilient_parsing=True)):
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts + param.secondary_opts if not o.startswith("--")):
                seen = meaning.setdefault(short, (longs[0] if longs else param.name, path))
                assert seen[0] == (longs[0] if longs else param.name), (short, seen, path)
    assert meaning["-t"][0] == "--target" and meaning["-h"][0] == "--help"


def test_help_at_80_columns_never_wraps_a_value_placeholder_mid_word() -> None:
    for path, command in TREE:
        ctx = command.make_context("genjobs", [], resilient_parsing=True)
        text = help_of(*path, columns=80)
        assert max(len(line) for line in text.splitlines()) <= 80
        for param in command.params:
            shown = param.display_type_rich(ctx) if hasattr(param, "display_type_rich") else None
            assert not shown or shown in text, (path, param.name, shown)
    assert "MODE" in help_of("submit", columns=80) and "topic, keywords, trends or spin" in help_of("submit")


@pytest.fixture
def cli(server: ServerThread) -> Cli:
    return Cli(server)


def later(client: GenJobsClient, topic: str) -> str:
    """A job that stays queued: it may not start for a day."""
    return client.submit("topic", topic=topic, schedule_time=datetime.now(UTC) + timedelta(days=1)).id


# ---- 9. destructive commands ask, and refuse without --yes when no one can answer


def test_destructive_commands_refuse_without_yes_when_stdin_is_not_a_terminal(
    cli: Cli, alice: GenJobsClient
) -> None:
    done = alice.submit("topic", topic="keep me").id
    final_status(alice, done)
    queued = later(alice, "waits")
    bulk = alice.create_bulk(
        "topic",
        [{"topic": f"Item {i}"} for i in range(10)],
        schedule_time=datetime.now(UTC) + timedelta(days=1),
    )
    for command in (
        ["rm", done],
        ["ops", "clean-completed"],
        ["ops", "cancel-queued"],
        ["bulk", "cancel", bulk.id],
    ):
        refused = cli(*command, code=2)
        assert "--yes" in refused.stderr and "Traceback" not in refused.stderr, command
    assert alice.get(done).status == jobs_pb2.JOB_STATUS_COMPLETED
    assert alice.get(queued).status == jobs_pb2.JOB_STATUS_QUEUED
    assert alice.get_bulk(bulk.id).cancelled_items == 0
    assert cli("ops", "cancel-queued", "--yes").stdout.startswith("cancelled ")
    assert cli("rm", "-y", done).stdout == f"deleted {done}\n"


def test_destructive_commands_ask_at_a_terminal(
    cli: Cli, alice: GenJobsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared, "stdin_is_terminal", lambda: True)
    job = alice.submit("topic", topic="ask first").id
    final_status(alice, job)
    no = cli.runner.invoke(app, ["rm", job], input="n\n", env=cli.env)
    assert no.exit_code == 1 and "Delete 1 job" in no.output and "nothing done" in no.output
    assert alice.get(job).status == jobs_pb2.JOB_STATUS_COMPLETED
    yes = cli.runner.invoke(app, ["ops", "clean-completed"], input="y\n", env=cli.env)
    assert yes.exit_code == 0 and "Delete 1 completed job?" in yes.output and "deleted 1 job\n" in yes.output


def test_stats_after_clean_completed_say_what_they_cover(cli: Cli, alice: GenJobsClient) -> None:
    for topic in ("one", "two"):
        final_status(alice, alice.submit("topic", topic=topic).id)
    final_status(alice, alice.submit("topic", topic="bad", extra={"demo_fail": "permanent"}).id)
    spent = alice.usage().spent_cents
    assert spent > 0
    cli("ops", "clean-completed", "--yes")
    stats = cli("stats").stdout
    assert "jobs stored now (deleted jobs not counted)" in stats
    assert "0.00 s" not in stats and "none completed" in stats
    assert "100.0% (1 of 1 finished job)" in stats and "0¢ (of 0 completed jobs)" in stats
    assert f"{spent}¢ (deleted jobs too)" in stats


# ---- 10 and 11. retry-failed says what it skips; counts agree in number


def test_retry_failed_dry_run_counts_the_failed_jobs_already_retried(cli: Cli, alice: GenJobsClient) -> None:
    failed = alice.submit("topic", topic="bad", extra={"demo_fail": "permanent"}).id
    final_status(alice, failed)
    assert cli("ops", "retry-failed", "--dry-run").stdout == f"would retry 1 job (e.g. {failed})\n"
    again = alice.retry(failed).id
    final_status(alice, again)
    preview = cli("ops", "retry-failed", "--dry-run").stdout
    assert preview == f"would retry 1 job (e.g. {again}); 1 failed job skipped: already retried\n"
    assert cli.json("ops", "retry-failed", "--dry-run")["skipped_already_retried"] == 1
    assert cli("ops", "retry-failed").stdout == "retried 1 job; 1 failed job skipped: already retried\n"


def test_counts_agree_in_number(cli: Cli, alice: GenJobsClient, tmp_path: Path) -> None:
    later(alice, "one")
    assert cli("ops", "cancel-queued", "--dry-run").stdout.startswith("would cancel 1 job (e.g. ")
    assert cli("ops", "cancel-queued", "--yes").stdout == "cancelled 1 job\n"
    assert cli("ops", "cancel-queued", "--dry-run").stdout == "would cancel 0 jobs\n"
    target = tmp_path / "one.csv"
    assert cli("export", "--csv", str(target)).stdout == f"wrote 1 job to {target}\n"
    later(alice, "two")
    later(alice, "three")
    assert cli("ops", "cancel-queued", "-y").stdout == "cancelled 2 jobs\n"


# ---- 12. every table readable at 80 columns: columns go, headers stay whole

HEADERS = {"ID", "STATUS", "DONE", "CREATED", "SUBJECT", "PROJECT", "COMPLETED", "FAILED", "LEFT", "STATE"}
HEADERS |= {"CRON", "NEXT", "RUN", "RUNS", "SUBMITS", "LAST", "ERROR", "NAME", "UPDATED", "UTC"}


TEA = jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic="Tea"))


def test_every_listing_at_80_columns_keeps_its_headers_whole(cli: Cli, alice: GenJobsClient) -> None:
    project = "autumn-launch-with-a-long-name"
    for i in range(2):
        alice.submit("topic", topic=f"Autumn article {i} with a rather long subject line", project=project)
    alice.create_bulk("topic", [{"topic": f"Item {i}"} for i in range(10)], project=project)
    alice.create_schedule("0 9 * * 1", time_zone="Europe/Berlin", job=TEA)
    alice.save_template("weekly-tea", job=TEA)
    narrow = {"COLUMNS": "80", "TZ": "UTC"}
    for command in (["ls"], ["bulk", "ls"], ["schedule", "ls"], ["template", "ls"]):
        lines = ANSI.sub("", cli("--utc", *command, **narrow).stdout).splitlines()
        assert all(len(line) <= 80 for line in lines), command
        assert set(lines[0].split()) <= HEADERS, (command, lines[0])
        assert lines[0].split()[0] in ("ID", "NAME") and len(lines) > 1
    assert "Europe/Berlin" in cli("schedule", "ls", **narrow).stdout  # the zone is not cut


def test_bulk_watch_at_80_columns_shows_failures_as_they_happen(cli: Cli, tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    rows = [f"Launch article {i},{'permanent' if i == 1 else ''}" for i in range(10)]
    items.write_text("topic,demo_fail\n" + "\n".join(rows) + "\n")
    narrow = {"COLUMNS": "80", "FORCE_COLOR": "1"}
    out = cli("bulk", "create", str(items), "--project", "autumn-launch-campaign", "--watch", **narrow).stdout
    drawn = [row for row in frames(out) if re.match(r"[0-9a-f]{24} ", row)]
    assert all(len(row) <= 80 for row in drawn)
    running = [row for row in drawn if row.split()[1] == "processing"]
    assert any("1 failed" in row for row in running), running  # seen while it ran, not at the end only


# ---- 13. times in the viewer's zone (or the schedule's), the zone named; --utc


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The viewer's local zone is New York for the test."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_name_their_zone_and_a_schedule_runs_at_its_own_nine(
    cli: Cli, alice: GenJobsClient, zone: None
) -> None:
    out = cli("schedule", "create", "--cron", "0 9 * * 1", "--tz", "Europe/Berlin", "--topic", "Tea").stdout
    assert re.search(r"next run \d{4}-\d\d-\d\d 09:00:00 CES?T\n", out), out
    listed = cli("schedule", "ls", COLUMNS="80").stdout
    assert re.search(r" 09:00 CES?T ", listed), listed
    job = alice.submit("topic", topic="zoned").id
    final_status(alice, job)
    assert re.search(r"CREATED E[SD]T", cli("ls").stdout)
    shown = cli("show", job).stdout
    assert re.search(r"created +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d E[SD]T", shown), shown
    utc = cli("--utc", "show", job).stdout
    assert globals_first(["show", job, "--utc"]) == ["--utc", "show", job]
    assert re.search(r"created +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", utc), utc
    assert "CREATED UTC" in cli("--utc", "ls").stdout
