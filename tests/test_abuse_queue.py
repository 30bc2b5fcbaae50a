"""Issue #26, the queue's part: the queued-jobs cap under concurrency, control
characters in text fields and in the CLI's output, ReportProgress going
backwards, and a paused bulk job's item in the backoff lane."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pymongo
import pytest

from genjobs.client import GenJobsClient
from genjobs.client.client import InvalidArgument, ResourceExhausted
from genjobs.server.model import clock
from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.receivers import JsonHandler, serving
from tests.test_cli import Cli

ESCAPES = "hi\x1b]0;PWNED\x07\x1b[2K"  # a title change, then a line erase
CAP = 50
LATER = datetime.now(UTC) + timedelta(days=1)  # queued jobs that no dispatcher starts during a test


def _jobs(mongo: MongoServer, server: ServerThread) -> pymongo.collection.Collection[dict[str, Any]]:
    return pymongo.MongoClient(mongo.uri)[server.settings.db_name].jobs


# ---- the queued-jobs cap ------------------------------------------------------


def _flood(clients: list[GenJobsClient], singles: int, bulks: int) -> tuple[int, int]:
    """`singles` submits and `bulks` bulk creates of 10 items, all at once from
    threads, spread over `clients`; (jobs admitted, calls admitted)."""
    items = [{"topic": f"bulk item {i}"} for i in range(10)]
    calls: list[Callable[[], int]] = []
    for i in range(singles):
        client = clients[i % len(clients)]
        calls.append(lambda c=client, i=i: c.submit("topic", topic=f"flood {i}", schedule_time=LATER) and 1)
    for i in range(bulks):
        client = clients[i % len(clients)]
        calls.append(lambda c=client: c.create_bulk("topic", items, schedule_time=LATER).total_items)
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], int]) -> int:
        start.wait(30)
        try:
            return call()
        except ResourceExhausted:
            return -1

    with ThreadPoolExecutor(len(calls)) as pool:
        outcomes = list(pool.map(run, calls))
    return sum(n for n in outcomes if n > 0), len(outcomes) - outcomes.count(-1)


def _open_jobs(jobs: pymongo.collection.Collection[dict[str, Any]], owner: str) -> int:
    return jobs.count_documents({"owner": owner, "status": {"$in": ["QUEUED", "PROCESSING"]}})


def _admitted(client: GenJobsClient) -> bool:
    """Whether one more job of the client's owner is queued now."""
    try:
        client.submit("topic", topic="one more", schedule_time=LATER)
    except ResourceExhausted:
        return False
    return True


def _fill(client: GenJobsClient, count: int) -> None:
    for i in range(count):
        client.submit("topic", topic=f"waiting {i}", schedule_time=LATER)


def test_concurrent_submits_and_bulk_creates_never_pass_the_cap(mongo: MongoServer, tmp_path: Path) -> None:
    server = ServerThread(replace(make_settings(mongo.uri, tmp_path), max_queued_per_owner=CAP)).start()
    try:
        with server.client("alice") as alice:
            _fill(alice, 40)
            admitted, calls = _flood([alice], singles=60, bulks=6)
            jobs = _jobs(mongo, server)
            queued = jobs.count_documents({"owner": "alice", "status": "QUEUED"})
            assert queued <= CAP, f"{queued} queued against a cap of {CAP}"
            # Every refusal was for want of room: the room was filled exactly.
            assert (queued, admitted, _open_jobs(jobs, "alice")) == (CAP, CAP - 40, CAP)
            assert calls in (1, 10)  # one bulk job of 10, or 10 single jobs
            assert alice.usage().queued_jobs == CAP
    finally:
        server.stop()


def test_two_servers_on_one_database_share_the_cap(mongo: MongoServer, tmp_path: Path) -> None:
    settings = replace(make_settings(mongo.uri, tmp_path / "a"), max_queued_per_owner=CAP)
    first = ServerThread(settings).start()
    second = ServerThread(replace(settings, data_dir=tmp_path / "b")).start()
    try:
        with first.client("alice") as one, second.client("alice") as two:
            _fill(one, 20)
            _fill(two, 20)
            _flood([one, two], singles=60, bulks=6)
            jobs = _jobs(mongo, first)
            queued = jobs.count_documents({"owner": "alice", "status": "QUEUED"})
            assert queued <= CAP, f"{queued} queued against a cap of {CAP}"
            # Across servers a bulk job that lost some of its places to the
            # other's submits is withdrawn, which can leave room: it is not lost.
            for _ in range(CAP - queued):
                wait_for(lambda: _admitted(one), timeout=10)
            assert jobs.count_documents({"owner": "alice", "status": "QUEUED"}) == CAP
            # Room comes back when jobs end, on whichever server ends them.
            ids = [row["_id"] for row in jobs.find({"owner": "alice", "status": "QUEUED"}).limit(5)]
            for i, oid in enumerate(ids):
                (one if i % 2 else two).cancel(str(oid))
            with pytest.raises(ResourceExhausted):
                one.create_bulk("topic", [{"topic": f"t{i}"} for i in range(10)], schedule_time=LATER)
            # A server that found the owner full reads again once that read is a second old.
            wait_for(lambda: two.usage().queued_jobs == CAP - 5, timeout=10)
            _fill(two, 5)
            with pytest.raises(ResourceExhausted):
                one.submit("topic", topic="one too many", schedule_time=LATER)
            assert jobs.count_documents({"owner": "alice", "status": "QUEUED"}) == CAP
    finally:
        first.stop()
        second.stop()


def test_room_made_on_another_server_is_seen_by_the_next_submit(mongo: MongoServer, tmp_path: Path) -> None:
    """Places are held by the jobs themselves: jobs that ended on another
    server free their places there and then, and a server that found the
    owner full reads again once that read is a second old."""
    settings = replace(make_settings(mongo.uri, tmp_path / "a"), max_queued_per_owner=3)
    first = ServerThread(settings).start()
    second = ServerThread(replace(settings, data_dir=tmp_path / "b")).start()
    try:
        with first.client("alice") as one, second.client("alice") as two:
            _fill(one, 3)
            with pytest.raises(ResourceExhausted):
                one.submit("topic", topic="full", schedule_time=LATER)
            ids = [row["_id"] for row in _jobs(mongo, first).find({"owner": "alice"}).limit(2)]
            for oid in ids:
                two.cancel(str(oid))
            wait_for(lambda: one.usage().queued_jobs == 1, timeout=10)
            _fill(one, 2)
            with pytest.raises(ResourceExhausted):
                one.submit("topic", topic="full again", schedule_time=LATER)
    finally:
        first.stop()
        second.stop()


# ---- control characters -------------------------------------------------------------


def _invalid_field(call: Callable[[], Any]) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    return [field for field, _ in caught.value.violations]


@pytest.mark.parametrize("bad", [ESCAPES, "nul\x00here", "c1\x9bcontrol", "del\x7f"])
def test_control_characters_are_refused_in_every_submitted_text_field(alice: GenJobsClient, bad: str) -> None:
    cases: dict[str, Callable[[], Any]] = {
        "params.topic": lambda: alice.submit("topic", topic=bad),
        "params.keywords[1]": lambda: alice.submit("keywords", keywords=["tea", bad]),
        "params.tone": lambda: alice.submit("topic", topic="tea", tone=bad),
        "params.source_text": lambda: alice.submit("spin", source_text="Some text. " + bad),
        "params.extra['note']": lambda: alice.submit("topic", topic="tea", extra={"note": bad}),
        "project": lambda: alice.submit("topic", topic="tea", project=bad),
        "request_id": lambda: alice.submit("topic", topic="tea", request_id=bad),
        "items[3].topic": lambda: alice.create_bulk(
            "topic", [{"topic": bad if i == 3 else f"t{i}"} for i in range(10)]
        ),
        "items[0].extra['note']": lambda: alice.create_bulk(
            "topic", [{"topic": f"t{i}", "extra": {"note": bad}} for i in range(10)]
        ),
    }
    for field, call in cases.items():
        assert field in _invalid_field(call), field
    # An extra key with one is refused too (keys are plain names).
    assert any(
        f.startswith("params.extra[")
        for f in _invalid_field(lambda: alice.submit("topic", topic="tea", extra={bad: "x"}))
    )
    assert alice.list().jobs == []  # nothing was stored


def test_tabs_and_newlines_are_text(alice: GenJobsClient) -> None:
    job = alice.submit(
        "spin", source_text="First line.\r\nSecond\tline.\nThird line.", tone="calm\tand plain"
    )
    assert job.params.source_text == "First line.\r\nSecond\tline.\nThird line."
    with pytest.raises(InvalidArgument):
        alice.submit("topic", topic="a\rb")  # a carriage return alone: only long text may hold CRLF


def _stored_with_escapes(alice: GenJobsClient, mongo: MongoServer, server: ServerThread) -> str:
    """A completed job whose stored row holds escape codes (as a server before this check stored them)."""
    job = alice.submit("topic", topic="plain", project="blog")
    wait_for(lambda: alice.get(job.id).status == jobs_pb2.JOB_STATUS_COMPLETED, timeout=30)
    from bson import ObjectId

    _jobs(mongo, server).update_one(
        {"_id": ObjectId(job.id)},
        {
            "$set": {
                "params.topic": ESCAPES,
                "project": "p\x1b[31m",
                "result.title": "T\x1b]0;TITLE\x07",
                "result.content": "C\x1b[2K\x00end\nnext line",
                "progress.message": "m\x9b2J",
            }
        },
    )
    return job.id


def test_the_cli_prints_control_characters_from_the_server_visibly(
    alice: GenJobsClient, mongo: MongoServer, server: ServerThread
) -> None:
    job_id = _stored_with_escapes(alice, mongo, server)
    cli = Cli(server)
    for args in (("show", job_id), ("ls",), ("show", "--content", job_id), ("ls", "--query", "hi")):
        out = cli(*args).stdout
        controls = [c for c in out if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]
        assert not controls, (args, out)
    shown = cli("show", job_id).stdout
    assert "hi\\x1b]0;PWNED\\x07\\x1b[2K" in shown and "T\\x1b]0;TITLE\\x07" in shown
    assert "C\\x1b[2K\\x00end\nnext line" in cli("show", "--content", job_id).stdout
    # JSON output escapes them as JSON does, and keeps the value.
    assert json.loads(cli("-o", "json", "show", job_id).stdout)["params"]["topic"] == ESCAPES


# ---- ReportProgress -------------------------------------------------------------------


class _Holding(JsonHandler):
    """A generation service that holds every request until released."""

    bodies: ClassVar[list[dict[str, Any]]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        _Holding.bodies.append(self.body())
        _Holding.release.wait(20)
        self.answer(200, {"success": True, "content": "done\x1b[2K at\r\nlast", "title": "T\x07"})


@pytest.fixture
def holding(mongo: MongoServer, tmp_path: Path) -> Iterator[ServerThread]:
    _Holding.bodies = []
    _Holding.release = threading.Event()
    with serving(_Holding) as url:
        server = ServerThread(make_settings(mongo.uri, tmp_path, generator="http", generator_url=url)).start()
        yield server
    _Holding.release.set()
    server.stop()


def _report(
    server: ServerThread, job_id: str, token: str, percentage: int, stage: str = "writing", message: str = ""
) -> grpc.RpcError | None:
    request = jobs_pb2.ReportProgressRequest(
        job_id=job_id, token=token, percentage=percentage, stage=stage, stage_progress=10, message=message
    )
    with grpc.insecure_channel(server.target) as channel:
        try:
            jobs_pb2_grpc.JobServiceStub(channel).ReportProgress(request, timeout=5)
        except grpc.RpcError as error:
            return error
    return None


def test_report_progress_refuses_control_characters_and_going_backwards(holding: ServerThread) -> None:
    with holding.client() as alice:
        job = alice.submit("topic", topic="held")
        wait_for(lambda: _Holding.bodies)
        token = _Holding.bodies[0]["progress"]["token"]
        # The generator's own first report ("requesting") is written an interval
        # after the start: once it is, the service's reports below come after it.
        wait_for(lambda: alice.get(job.id).progress.stage == "requesting")
        for field, (stage, message) in {"stage": (ESCAPES, ""), "message": ("writing", "m\x00")}.items():
            error = _report(holding, job.id, token, 40, stage, message)
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (error.details() or "")
        assert _report(holding, job.id, token, 50) is None
        backwards = _report(holding, job.id, token, 20)
        assert backwards is not None and backwards.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "50" in (backwards.details() or "")
        assert alice.get(job.id).progress.percentage == 50
        assert _report(holding, job.id, token, 50, "editing") is None  # the same percentage: a new stage
        assert alice.get(job.id).progress.stage == "editing"
        _Holding.release.set()
        done = wait_for(lambda: (j := alice.get(job.id)).status == jobs_pb2.JOB_STATUS_COMPLETED and j)
        # What the service generated is stored without its control characters.
        assert (done.result.content, done.result.title) == ("done at\nlast", "T")


# ---- a paused bulk job's item in the backoff lane -------------------------------------


def test_a_paused_bulk_jobs_item_in_backoff_is_held_until_resumed(
    alice: GenJobsClient, mongo: MongoServer, server: ServerThread
) -> None:
    """An item whose transient failure was written as its bulk job was being paused
    (the outcome read the bulk job before the pause, the pause read the item
    before the outcome) sits in the backoff lane of a paused bulk job: its
    promotion must hold it, not start it."""
    items = [{"topic": f"item {i}", "extra": {"demo_fail": "transient"}} for i in range(10)]
    bulk = alice.create_bulk("topic", items, schedule_time=LATER)
    alice.pause_bulk(bulk.id)
    jobs = _jobs(mongo, server)
    first = jobs.find_one({"bulk_job_id": bulk.id, "queue_position": 1})
    assert first is not None and first["queue"] == "held"
    jobs.update_one(
        {"_id": first["_id"]},
        {"$set": {"queue": "backoff", "run_after_us": clock.now_us(), "attempt": 1, "schedule_us": 0}},
    )
    after = wait_for(
        lambda: (d := jobs.find_one({"_id": first["_id"]})) and d["queue"] != "backoff" and d, timeout=30
    )
    assert (after["status"], after["queue"]) == ("QUEUED", "held"), "promoted while its bulk job is paused"
    alice.resume_bulk(bulk.id)
    done = wait_for(
        lambda: (d := jobs.find_one({"_id": first["_id"]})) and d["status"] == "COMPLETED" and d, timeout=30
    )
    assert done["attempt"] == 2  # its second attempt, after the resume
    assert alice.get_bulk(bulk.id).items[1].status == jobs_pb2.JOB_STATUS_QUEUED  # the rest keep their time


def test_a_paused_bulk_jobs_item_in_the_scheduled_lane_is_held(
    alice: GenJobsClient, mongo: MongoServer, server: ServerThread
) -> None:
    """The other waiting lane: an item whose time came while its bulk job is
    paused is held by its promotion, never made ready."""
    items = [{"topic": f"item {i}"} for i in range(10)]
    bulk = alice.create_bulk("topic", items, schedule_time=LATER)
    alice.pause_bulk(bulk.id)
    jobs = _jobs(mongo, server)
    first = jobs.find_one({"bulk_job_id": bulk.id, "queue_position": 1})
    assert first is not None
    jobs.update_one(
        {"_id": first["_id"]},
        {"$set": {"queue": "scheduled", "run_after_us": clock.now_us(), "schedule_us": 0}},
    )
    after = wait_for(
        lambda: (d := jobs.find_one({"_id": first["_id"]})) and d["queue"] != "scheduled" and d, timeout=30
    )
    assert (after["status"], after["queue"]) == ("QUEUED", "held")
