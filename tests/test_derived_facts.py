"""Derived facts travel in the contract (issue 28): a bulk job's counts, a
job's declared stages, an unknown cost; the CLI shows what the API says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genjobs.client import GenJobsClient
from genjobs.server.api.convert import stages_done
from genjobs.server.generators import declared_stages
from genjobs.server.model.records import Job, Params, Progress
from genjobs.server.model.states import Status
from genjobs.server.model.vocabulary import Mode
from genjobs.server.runtime.config import Settings
from genjobs.server.runtime.factories import make_generator
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.test_cli import Cli, final_status

DEMO_STAGES = ["research", "outline", "drafting", "editing"]


@pytest.fixture
def cli(server: ServerThread) -> Cli:
    return Cli(server)


def _items(n: int) -> list[dict[str, object]]:
    return [{"topic": f"item {i}", "word_count": 60} for i in range(n)]


def _final_bulk(client: GenJobsClient, bulk_id: str) -> bulk_pb2.BulkJob:
    final = (bulk_pb2.BULK_JOB_STATUS_COMPLETED, bulk_pb2.BULK_JOB_STATUS_CANCELLED)
    return wait_for(  # type: ignore[no-any-return]
        lambda: (b := client.get_bulk(bulk_id)).status in final and b.remaining_items == 0 and b, timeout=30
    )


def test_a_cancelled_bulk_job_with_nothing_completed_is_not_12_of_12(cli: Cli, alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "60"})
    bulk = alice.create_bulk("topic", _items(12))
    alice.cancel_bulk(bulk.id)
    alice.cancel(blocker.id)
    shown = _final_bulk(alice, bulk.id)
    assert (shown.completed_items, shown.cancelled_items, shown.done_items, shown.deleted_items) == (
        0,
        12,
        12,
        0,
    )
    assert shown.percentage == 0.0  # not a full bar: nothing ran to its end
    listed = json.loads(cli("-o", "json", "bulk", "ls").stdout)["bulk_jobs"]
    row = next(b for b in listed if b["id"] == bulk.id)
    assert row["done_items"] == 12 and row["completed_items"] == 0 and row["percentage"] == 0.0
    line = next(line for line in cli("bulk", "ls").stdout.splitlines() if line.startswith(bulk.id))
    assert " 0/12 " in line and "12/12" not in line
    detail = cli("bulk", "show", bulk.id).stdout
    assert "progress  0%" in detail and "0 completed" in detail and "12 cancelled" in detail


def test_after_clean_completed_the_counts_say_deleted(cli: Cli, alice: GenJobsClient) -> None:
    bulk = alice.create_bulk("topic", _items(10))
    before = _final_bulk(alice, bulk.id)
    assert (before.completed_items, before.done_items, before.deleted_items) == (10, 10, 0)
    cli("ops", "clean-completed", "--yes")
    after = alice.get_bulk(bulk.id)
    assert (after.completed_items, after.done_items, after.deleted_items, after.remaining_items) == (
        0,
        10,
        10,
        0,
    )
    assert after.percentage == 100.0
    detail = cli("bulk", "show", bulk.id).stdout
    assert "10 deleted" in detail and "progress  100%" in detail


def test_demo_jobs_carry_the_four_declared_stages(alice: GenJobsClient) -> None:
    done = alice.submit("topic", topic="Green tea", word_count=80)
    final_status(alice, done.id)
    job = alice.get(done.id)
    assert list(job.stages) == DEMO_STAGES and job.stages_done == 4
    broken = alice.submit("topic", topic="broken", extra={"demo_fail": "permanent"}, max_attempts=1)
    final_status(alice, broken.id)
    failed = alice.get(broken.id)
    # It failed at or before drafting (reports are coalesced: often still "starting"):
    # the stages after the one it was in are not done.
    stage = failed.progress.stage
    assert failed.status == jobs_pb2.JOB_STATUS_FAILED and stage in ("starting", *DEMO_STAGES[:3])
    assert list(failed.stages) == DEMO_STAGES
    assert failed.stages_done == (DEMO_STAGES.index(stage) if stage in DEMO_STAGES else 0) <= 2


def test_a_job_that_failed_while_starting_has_no_stage_done() -> None:
    def job(status: Status, stage: str = "") -> Job:
        return Job(
            "j", "alice", Mode.TOPIC, Params(), status, progress=Progress(stage=stage) if stage else None
        )

    assert stages_done(job(Status.FAILED, "starting"), DEMO_STAGES) == 0
    assert stages_done(job(Status.COMPLETED, "done"), DEMO_STAGES) == 4
    assert stages_done(job(Status.QUEUED), DEMO_STAGES) == 0


def test_noop_and_openai_declare_one_stage_and_http_none() -> None:
    assert declared_stages(make_generator(Settings(generator="noop"))) == ("generating",)
    assert declared_stages(make_generator(Settings(generator="demo"))) == tuple(DEMO_STAGES)
    openai = Settings(generator="openai", openai_base_url="http://127.0.0.1:9/v1", openai_api_key="k")
    assert declared_stages(make_generator(openai)) == ("drafting",)
    http = Settings(generator="http", generator_url="http://127.0.0.1:9/generate")
    assert declared_stages(make_generator(http)) == ()


def test_an_unpriced_model_shows_unknown_cost_in_cli_and_usage(mongo: MongoServer, tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        _cost_unknown_in_cli(mongo, tmp_path, fake)


def _cost_unknown_in_cli(mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = make_settings(
        mongo.uri, tmp_path, generator="openai", openai_base_url=fake.base_url, openai_model="unpriced-model"
    )
    server = ServerThread(settings).start()
    client = server.client()
    try:
        fake.queue(Plan(pieces=["Green tea is a drink."]))
        submitted = client.submit("topic", topic="Green tea")
        final_status(client, submitted.id)
        job = client.get(submitted.id)
        assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job.error
        assert job.result.cost_unknown and job.result.cost_cents == 0
        assert list(job.stages) == ["drafting"] and job.stages_done == 1
        cli = Cli(server)
        shown = cli("show", submitted.id).stdout
        assert "cost unknown" in shown and "0¢" not in shown
        assert "0¢ (of 1 completed job, 1 of unknown cost left out)" in cli("stats").stdout
        assert json.loads(cli("-o", "json", "show", submitted.id).stdout)["result"]["cost_unknown"] is True
        # This month's usage counts it apart: not as a 0¢ spend.
        usage = wait_for(lambda: (u := client.usage()).cost_unknown_jobs and u, timeout=10)
        assert (usage.cost_unknown_jobs, usage.spent_cents) == (1, 0)
        row = next(line for line in cli("usage").stdout.splitlines() if "all projects" in line)
        assert "0¢ + 1 job of unknown cost" in row
        assert json.loads(cli("-o", "json", "usage").stdout)["cost_unknown_jobs"] == 1
    finally:
        client.close()
        server.stop()
