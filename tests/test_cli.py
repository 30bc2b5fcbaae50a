"""The genjobs command line against a live server: output, exit codes, errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from genjobs.client import GenJobsClient
from genjobs.client.cli import app, globals_first
from genjobs.client.render import follow_job
from genjobs.v1 import jobs_pb2
from tests.harness import SECRET, ServerThread, wait_for

# Every top-level command and command group of `genjobs`.
COMMANDS = [c.name or getattr(c.callback, "__name__", "") for c in app.registered_commands] + [
    g.name or "" for g in app.registered_groups
]


class Cli:
    """Runs `genjobs` commands as a user of the test server."""

    def __init__(self, server: ServerThread, user: str = "alice") -> None:
        self.runner = CliRunner()
        self.env = {
            "GENJOBS_TARGET": server.target,
            "GENJOBS_TOKEN": server.token(user),
            "COLUMNS": "200",  # wide enough that no table cell is cut
        }

    def __call__(self, *args: str, code: int = 0, **env: str) -> Result:
        result = self.runner.invoke(app, list(args), env={**self.env, **env})
        assert result.exit_code == code, (result.output, result.stderr, result.exception)
        assert "Traceback" not in result.output + result.stderr
        return result

    def json(self, *args: str) -> dict[str, object]:
        return json.loads(self("-o", "json", *args).stdout)  # type: ignore[no-any-return]


@pytest.fixture
def cli(server: ServerThread) -> Cli:
    return Cli(server)


def final_status(client: GenJobsClient, job_id: str) -> int:
    done = (jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED)
    return wait_for(lambda: (s := client.get(job_id).status) in done and s)  # type: ignore[no-any-return]


def test_submit_show_and_json_field_names(cli: Cli, alice: GenJobsClient) -> None:
    out = cli("submit", "--topic", "Green tea", "--word-count", "120", "--project", "blog").stdout
    assert out.startswith("queued ") and "topic: Green tea" in out
    job_id = out.split()[1]
    assert final_status(alice, job_id) == jobs_pb2.JOB_STATUS_COMPLETED
    shown = cli("show", job_id).stdout
    assert "Green tea" in shown and "completed" in shown and "120 words" in shown
    data = cli.json("show", job_id)
    assert data["id"] == job_id and data["status"] == "JOB_STATUS_COMPLETED"
    assert data["params"]["word_count"] == 120 and data["project"] == "blog"  # type: ignore[index]
    assert cli("show", job_id, "--content").stdout == alice.get(job_id).result.content


def test_submit_from_a_file_with_flags_overriding(cli: Cli, tmp_path: Path) -> None:
    request = tmp_path / "job.json"
    request.write_text(json.dumps({"mode": "keywords", "params": {"keywords": ["seo"]}, "project": "a"}))
    data = cli.json("submit", "--file", str(request), "--project", "b")
    assert data["mode"] == "MODE_KEYWORDS" and data["project"] == "b"
    bad = cli("submit", "--file", str(tmp_path / "missing.json"), code=1)
    assert "cannot read" in bad.stderr


def test_invalid_submit_names_the_field(cli: Cli) -> None:
    result = cli("submit", "--mode", "spin", code=1)
    assert "params.source_text" in result.stderr and "INVALID_REQUEST" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--extra" in cli("submit", "--topic", "x", "--extra", "novalue", code=1).stderr


def test_ls_filters_limit_and_all(cli: Cli, alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="blocker", extra={"demo_seconds": "60"})
    ids = [alice.submit("topic", topic=f"tea {i}", project="p").id for i in range(22)]
    other = alice.submit("keywords", keywords=["coffee"])
    listed = cli("ls").stdout
    assert "20 of 24 shown" in listed and ids[-1] in listed and ids[0] not in listed
    everything = cli("ls", "--all").stdout
    assert all(i in everything for i in [*ids, other.id, blocker.id])
    assert [j["id"] for j in cli.json("ls", "-q", "coffee")["jobs"]] == [other.id]  # type: ignore[index]
    assert len(cli.json("ls", "--project", "p", "--limit", "3")["jobs"]) == 3  # type: ignore[arg-type]
    assert cli.json("ls", "--status", "processing")["total_size"] == 1
    assert "no jobs match" in cli("ls", "--bulk", "0" * 24).stdout
    assert cli("ls", "--status", "bogus", code=2).stderr  # usage errors exit 2
    alice.cancel(blocker.id)


def test_watch_shows_a_progress_bar_and_exits_by_outcome(cli: Cli, alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="slow", extra={"demo_seconds": "1"})
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    last = follow_job(console, lambda hook: alice.watch(job.id, on_reconnect=hook))
    assert last is not None and last.status == jobs_pb2.JOB_STATUS_COMPLETED
    drawn = screen.getvalue()
    assert "drafting" in drawn and "100%" in drawn and "━" in drawn
    done = cli("watch", job.id).stdout
    assert "completed" in done and "words" in done
    failing = alice.submit("topic", topic="broken", extra={"demo_fail": "permanent"})
    failed = cli("watch", failing.id, code=1).stdout
    assert "failed after 1 attempt: DEMO_PERMANENT" in failed
    assert cli.json("watch", job.id)["status"] == "JOB_STATUS_COMPLETED"


def test_cancel_retry_rm_and_their_refusals(cli: Cli, alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="blocker", extra={"demo_seconds": "60"})
    wait_for(lambda: alice.get(blocker.id).status == jobs_pb2.JOB_STATUS_PROCESSING)
    queued = alice.submit("topic", topic="waits")
    out = cli("cancel", queued.id, blocker.id).stdout
    assert f"cancelled {queued.id}" in out and f"stopping {blocker.id}" in out
    refused = cli("rm", queued.id, "0" * 24, "--yes", code=1)
    assert f"deleted {queued.id}" in refused.stdout
    assert "JOB_NOT_FOUND" in refused.stderr and "genjobs ls" in refused.stderr
    assert final_status(alice, blocker.id) == jobs_pb2.JOB_STATUS_CANCELLED
    retried = cli("retry", blocker.id).stdout
    assert retried.startswith(f"retried {blocker.id} as ")
    new_id = retried.split()[-1]
    alice.cancel(new_id)
    # The retry may start at once (the lane is free): it is refused only once it has stopped.
    assert final_status(alice, new_id) == jobs_pb2.JOB_STATUS_CANCELLED
    again = cli("cancel", new_id, code=1)
    assert "JOB_NOT_CANCELLABLE" in again.stderr and "cancelled" in again.stderr


def test_ops_dry_run_then_act(cli: Cli, alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="blocker", extra={"demo_seconds": "60"})
    # Started before the others are queued: a busy machine could leave it queued too.
    wait_for(lambda: alice.get(blocker.id).status == jobs_pb2.JOB_STATUS_PROCESSING, timeout=30)
    queued = [alice.submit("topic", topic=f"q{i}").id for i in range(3)]
    preview = cli("ops", "cancel-queued", "--dry-run").stdout
    assert "would cancel 3 jobs" in preview
    assert all(alice.get(i).status == jobs_pb2.JOB_STATUS_QUEUED for i in queued)
    done = cli.json("ops", "cancel-queued", "--yes")
    assert sorted(done["job_ids"]) == sorted(queued)  # type: ignore[arg-type]
    assert "deleted 0 jobs" in cli("ops", "clean-completed").stdout


def test_stats_and_export(cli: Cli, alice: GenJobsClient, tmp_path: Path) -> None:
    ok = alice.submit("topic", topic="fine", project="p")
    bad = alice.submit("topic", topic="broken", extra={"demo_fail": "permanent"})
    final_status(alice, ok.id)
    final_status(alice, bad.id)
    table = cli("stats").stdout
    assert "total jobs" in table and "failure rate" in table and "50.0%" in table
    assert cli.json("stats", "--project", "p")["total_jobs"] == "1"  # int64 is a JSON string
    target = tmp_path / "history.csv"
    assert "wrote 2 jobs" in cli("export", "--csv", str(target)).stdout
    rows = list(csv.DictReader(target.open()))
    assert {r["id"]: r["status"] for r in rows} == {ok.id: "completed", bad.id: "failed"}
    assert rows[0]["error_code"] == "DEMO_PERMANENT"
    only_failed = cli("export", "--csv", "-", "--status", "failed").stdout
    assert bad.id in only_failed and ok.id not in only_failed


def _items_csv(path: Path, count: int) -> Path:
    lines = ["topic,keywords,word_count,demo_fail"]
    lines += [f"Article {i},a;b,60,{'permanent' if i == 3 else ''}" for i in range(1, count + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bulk_create_watch_show_ls_and_retry(cli: Cli, tmp_path: Path) -> None:
    created = cli("bulk", "create", str(_items_csv(tmp_path / "items.csv", 10)), "--watch").stdout
    assert "completed: 9 completed, 1 failed, 0 cancelled of 10" in created
    assert "item 3: DEMO_PERMANENT" in created
    bulk = cli.json("bulk", "ls")["bulk_jobs"][0]  # type: ignore[index]
    shown = cli("bulk", "show", bulk["id"]).stdout
    assert "10 total: 9 completed, 1 failed" in shown and "Article" not in shown
    assert "retried 1 job" in cli("ops", "retry-failed", "--bulk", bulk["id"]).stdout
    assert bulk["id"] in cli("bulk", "ls").stdout


def test_bulk_from_json_lines_pause_resume_cancel(cli: Cli, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    rows = [{"topic": "first", "extra": {"demo_seconds": "30"}}] + [{"topic": f"t{i}"} for i in range(10)]
    items.write_text("\n".join(json.dumps(r) for r in rows))
    bulk_id = cli.json("bulk", "create", str(items), "--project", "p")["id"]
    assert "paused" in cli("bulk", "pause", str(bulk_id)).stdout
    assert "BULK_JOB_NOT_PAUSABLE" in cli("bulk", "pause", str(bulk_id), code=1).stderr
    assert "resumed" in cli("bulk", "resume", str(bulk_id)).stdout
    assert "cancelled bulk job" in cli("bulk", "cancel", str(bulk_id), "-y").stdout
    final = cli("bulk", "watch", str(bulk_id)).stdout
    assert "cancelled" in final and "of 11" in final


def test_bulk_file_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    nine = cli("bulk", "create", str(_items_csv(tmp_path / "nine.csv", 9)), code=1)
    assert "items: a bulk job has 10 to 50 items, got 9" in nine.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"topic": "a"}\n{not json\n')
    assert "line 2: not JSON" in cli("bulk", "create", str(broken), code=1).stderr
    words = tmp_path / "words.csv"
    words.write_text("topic,word_count\nA,many\n")
    assert "line 2: word_count 'many'" in cli("bulk", "create", str(words), code=1).stderr


def test_connection_and_token_errors(cli: Cli, server: ServerThread, tmp_path: Path) -> None:
    down = cli("ls", code=1, GENJOBS_TARGET="127.0.0.1:1")
    assert "is genjobs running at 127.0.0.1:1?" in down.stderr
    bad = cli("ls", code=1, GENJOBS_TOKEN="not-a-token")
    assert "INVALID_TOKEN" in bad.stderr and "GENJOBS_TOKEN" in bad.stderr
    none = cli("ls", code=1, GENJOBS_TOKEN="", GENJOBS_DATA_DIR=str(tmp_path / "nowhere"))
    assert "no token" in none.stderr
    # A local `make run` server: its data dir holds the secret; the CLI makes a dev token.
    (tmp_path / "auth_secret").write_text(SECRET)
    assert "no jobs match" in cli("ls", GENJOBS_TOKEN="", GENJOBS_DATA_DIR=str(tmp_path)).stdout


def test_global_options_may_follow_the_command() -> None:
    assert globals_first(["ls", "-o", "json", "--status", "failed"]) == [
        "-o",
        "json",
        "ls",
        "--status",
        "failed",
    ]
    assert globals_first(["show", "--target=h:1", "ID"]) == ["--target=h:1", "show", "ID"]


def test_help_answers(cli: Cli) -> None:
    top = cli("--help").stdout
    assert len(COMMANDS) == 17 and all(command in top for command in COMMANDS)
    assert "--dry-run" in cli("ops", "retry-failed", "--help").stdout
    assert "JSON lines" in cli("bulk", "create", "--help").stdout
