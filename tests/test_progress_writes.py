"""A run's progress writes (server/dispatch/progress.py): reports are
coalesced, never lost; a report never waits for the database; the outcome
supersedes a run's pending progress, and nothing is told after it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bson import ObjectId
from pymongo.errors import BulkWriteError, NetworkTimeout, ServerSelectionTimeoutError

from genjobs.server.dispatch.progress import ProgressWrites
from genjobs.server.storage.queue import ProgressUpdate
from genjobs.v1 import jobs_pb2 as S
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import MongoServer, ServerThread, make_settings, scratch_store, seed_job, wait_for


def test_a_watcher_sees_the_last_report_before_the_stream_pauses(mongo: MongoServer, tmp_path: Path) -> None:
    # Six words at once, then nothing until the job is cancelled: the reports of
    # the burst come within one write interval, and the last of them must show.
    pieces = ["# Herons\n\n", "stand ", "still ", "in ", "reeds "]
    with FakeOpenAI() as fake:
        fake.queue(Plan(pieces=pieces, stall_after=len(pieces)))
        settings = make_settings(
            mongo.uri, tmp_path, generator="openai", openai_base_url=fake.base_url, openai_model="test-model"
        )
        server = ServerThread(settings).start()
        try:
            with server.client() as alice:
                job = alice.submit("topic", topic="herons", word_count=300)
                events: list[S.JobEvent] = []

                def follow() -> None:
                    for event in alice.watch(job.id):
                        events.append(event)

                watcher = threading.Thread(target=follow, daemon=True)
                watcher.start()
                wait_for(lambda: any(e.job.progress.message == "6 of 300 words" for e in list(events)))
                alice.cancel(job.id)
                watcher.join(30)
        finally:
            server.stop()
    assert events[-1].job.status == S.JOB_STATUS_CANCELLED
    progress = [e for e in events if e.type == S.JOB_EVENT_TYPE_PROGRESS]
    assert progress[-1].job.progress.message == "6 of 300 words"
    assert progress[-1].job.progress.percentage == 2
    assert progress[-1].sequence < events[-1].sequence


@dataclass
class _Run:
    oid: ObjectId = field(default_factory=ObjectId)
    epoch: int = 1
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    lease_renewed: float = 0.0


_JOB = {"started_us": 1, "seq": 2}  # a claimed job, as a progress writer starts from it


def _no_reads(ids: list[str]) -> list[dict[str, Any]]:
    raise AssertionError("every write was applied: nothing to read")


class _SlowDatabase:
    """A queue store whose batches of progress writes each wait until `release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()  # a batch is waiting
        self.release = threading.Event()
        self.written: list[str] = []

    def write_progress(self, writes: list[ProgressUpdate]) -> int:
        self.entered.set()
        self.release.wait(30)
        self.written.extend(write.changes["progress"]["message"] for write in writes)
        return len(writes)


def _writes(
    database: object, told: list[str], interval: float = 0.01, lease_seconds: float = 0.0
) -> ProgressWrites:
    """Progress writes to `database`, every write applied; `told`: the messages told."""
    return ProgressWrites(
        cast(Any, database),
        _no_reads,
        lambda doc, kind: told.append(doc["progress"]["message"]),
        lambda *args: None,
        interval=interval,
        lease_seconds=lease_seconds,
    )


def test_reports_never_wait_for_the_database_and_the_last_one_is_written() -> None:
    database, told = _SlowDatabase(), []
    writes = _writes(database, told)
    writer = writes.writer(_Run(), _JOB)
    writer.report(1, "drafting", 1, "first")
    wait_for(database.entered.is_set)  # its write waits for the database
    for n in range(2, 101):
        writer.report(n, "drafting", n, f"report {n}")  # each returns at once all the same
    database.release.set()
    wait_for(lambda: told[-1:] == ["report 100"])
    assert told == ["first", "report 100"]  # the reports in between were coalesced


def test_the_outcome_drops_pending_progress_and_waits_for_a_write_in_flight() -> None:
    database, told = _SlowDatabase(), []
    writes = _writes(database, told)
    run = _Run()
    writer = writes.writer(run, _JOB)
    writer.report(10, "drafting", 10, "in flight")
    wait_for(database.entered.is_set)
    writer.report(20, "drafting", 20, "pending")

    def outcome() -> None:
        writes.close(run)
        told.append("OUTCOME")

    closing = threading.Thread(target=outcome)
    closing.start()
    wait_for(lambda: writer.closed)
    writer.report(30, "drafting", 30, "after the outcome")
    database.release.set()
    closing.join(30)
    # Another run's report, written after anything the closed run had due.
    other = writes.writer(_Run(), _JOB)
    other.report(5, "drafting", 5, "another run")
    wait_for(lambda: "another run" in told)
    assert told == ["in flight", "OUTCOME", "another run"]
    assert database.written == ["in flight", "another run"]


class _Answering:
    """A queue store whose progress writes raise `error`, or apply none (the
    jobs read after are `stored`)."""

    def __init__(self, error: Exception | None = None, stored: list[dict[str, Any]] | None = None) -> None:
        self.error, self.stored = error, stored or []
        self.tries = 0

    def write_progress(self, writes: list[ProgressUpdate]) -> int:
        self.tries += 1
        if self.error is not None:
            raise self.error
        return 0

    def read_jobs(self, ids: list[str]) -> list[dict[str, Any]]:
        return self.stored


def test_a_database_error_never_reaches_the_generator() -> None:
    database, told, logged = _Answering(error=ServerSelectionTimeoutError("down")), [], []
    writes = ProgressWrites(
        cast(Any, database),
        database.read_jobs,
        lambda doc, kind: told.append(kind),
        lambda *args: logged.append(args),
        interval=0.01,
    )
    run = _Run()
    writer = writes.writer(run, _JOB)
    writer.report(1, "drafting", 1, "first")  # returns: the write is the writer thread's
    wait_for(lambda: logged)  # tried, failed, logged as the lifecycle logs database errors
    writer.report(2, "drafting", 2, "second")
    writes.close(run)  # the outcome goes on
    assert told == [] and not run.lost and not run.cancel.is_set()


def test_a_write_that_finds_the_run_gone_stops_it() -> None:
    database, told = _Answering(), []  # the job is gone: deleted, or archived
    writes = ProgressWrites(
        cast(Any, database),
        database.read_jobs,
        lambda doc, kind: told.append(kind),
        lambda *args: None,
        interval=0.01,
    )
    run = _Run()
    writer = writes.writer(run, _JOB)
    writer.report(1, "drafting", 1, "first")
    wait_for(run.cancel.is_set)  # taken over: the generator is stopped
    writer.report(2, "drafting", 2, "second")  # and nothing more is written
    writes.close(run)
    assert run.lost and told == [] and database.tries == 1


def test_a_progress_write_extends_the_runs_lease_so_the_keeper_skips_it() -> None:
    changes: list[dict[str, Any]] = []

    class Recording:
        def write_progress(self, writes: list[ProgressUpdate]) -> int:
            changes.extend(write.changes for write in writes)
            return len(writes)

    told: list[str] = []
    writes = _writes(Recording(), told, lease_seconds=30.0)
    run = _Run()
    before = time.monotonic()
    writes.writer(run, _JOB).report(5, "drafting", 5, "five words")
    wait_for(lambda: told == ["five words"])
    (change,) = changes
    # The lease runs 30 s from the write, as the keeper's renewal would set it.
    assert 29_000_000 <= change["lease_until_us"] - change["updated_us"] <= 30_000_000
    assert run.lease_renewed >= before  # the keeper need not renew it within its tick


def test_a_report_older_than_the_stored_progress_does_not_take_it_back(mongo: MongoServer) -> None:
    """An http generator's own report, made before the service's
    ReportProgress stored a higher percentage and written after it, leaves
    the service's progress; the run goes on, and its later reports are written."""
    with scratch_store(mongo.uri, "progress_behind") as store:
        doc = seed_job(store, "alice", {"topic": "t"})
        store.jobs.insert_job(doc)
        claimed = store.queue.claim(doc["_id"], "w", 30)
        assert claimed is not None
        run = _Run(oid=doc["_id"], epoch=claimed["epoch"])
        service = {"percentage": 50, "stage": "drafting", "message": "the service's 50%"}
        store.queue.fenced_update(doc["_id"], run.epoch, {"progress": service})
        told: list[str] = []
        writes = ProgressWrites(
            store.queue,
            store.jobs.jobs_by_ids,
            lambda d, kind: told.append(d["progress"]["message"]),
            lambda *a: None,
            interval=0.01,
        )
        writer = writes.writer(run, claimed)
        writer.report(5, "requesting", 0, "the generator's 5%")
        wait_for(lambda: not writer.scheduled)
        assert store.queue.run_progress(doc["_id"], run.epoch) == {"_id": doc["_id"], "progress": service}
        assert not run.lost and not run.cancel.is_set() and told == []
        writer.report(60, "drafting", 60, "the generator's 60%")
        wait_for(lambda: told == ["the generator's 60%"])


def test_every_runs_pending_report_goes_in_one_command() -> None:
    batches: list[list[str]] = []
    release = threading.Event()

    class Recording:
        def write_progress(self, writes: list[ProgressUpdate]) -> int:
            release.wait(30)  # the first batch waits: meanwhile three runs report
            batches.append([write.changes["progress"]["message"] for write in writes])
            return len(writes)

    told: list[str] = []
    # The usual interval: the runs below start within a few ms, well within half of it.
    writes = _writes(Recording(), told, interval=0.2)
    first = writes.writer(_Run(), _JOB)
    first.report(1, "drafting", 1, "first run, 1")
    wait_for(lambda: first.in_flight)
    others = [writes.writer(_Run(), _JOB) for _ in range(2)]
    for n, writer in enumerate([first, *others]):
        writer.report(2, "drafting", 2, f"run {n}, 2")
    release.set()
    wait_for(lambda: len(told) == 4)
    assert batches[0] == ["first run, 1"]
    assert sorted(batches[1]) == ["run 0, 2", "run 1, 2", "run 2, 2"] and len(batches) == 2


def test_a_job_changed_by_another_hand_is_taken_as_stored(mongo: MongoServer) -> None:
    """A cancel asked for on another server changes a running job between two
    progress writes: the run is told to stop, and its report is still written
    after the change (in the next batch), while another run's report in the
    same batch is written at once."""
    with scratch_store(mongo.uri, "progress_changed") as store:
        runs: list[tuple[_Run, dict[str, Any]]] = []
        for topic in ("changed", "unchanged"):
            doc = seed_job(store, "alice", {"topic": topic})
            store.jobs.insert_job(doc)
            claimed = store.queue.claim(doc["_id"], "w", 30)
            assert claimed is not None
            runs.append((_Run(oid=doc["_id"], epoch=claimed["epoch"]), claimed))
        told: list[tuple[str, int]] = []
        writes = ProgressWrites(
            store.queue,
            store.jobs.jobs_by_ids,
            lambda d, kind: told.append((d["progress"]["message"], d["seq"])),
            lambda *a: None,
            interval=0.01,
        )
        (changed, changed_job), (unchanged, unchanged_job) = runs
        cancelled, stopping = store.jobs.cancel("alice", str(changed.oid))
        assert stopping and cancelled["seq"] == changed_job["seq"] + 1
        writers = [writes.writer(changed, changed_job), writes.writer(unchanged, unchanged_job)]
        for writer, message in zip(writers, ("after the cancel", "alone"), strict=True):
            writer.report(10, "drafting", 10, message)
        wait_for(lambda: len(told) == 2)
        assert changed.cancel.is_set() and not unchanged.cancel.is_set()
        assert not changed.lost and not unchanged.lost
        assert sorted(told) == [
            ("after the cancel", cancelled["seq"] + 1),
            ("alone", unchanged_job["seq"] + 1),
        ]
        stored = {d["_id"]: d for d in store.jobs.jobs_by_ids([str(changed.oid), str(unchanged.oid)])}
        assert stored[changed.oid]["cancel_requested"] and stored[changed.oid]["seq"] == cancelled["seq"] + 1
        assert stored[unchanged.oid]["progress"]["message"] == "alone"


class _Jobs:
    """A queue store over jobs kept here, applying progress writes as the
    database does; `fail` decides how a batch fails after being applied."""

    def __init__(self, runs: list[_Run]) -> None:
        self.jobs = {
            run.oid: {"_id": run.oid, "epoch": run.epoch, "status": "PROCESSING", "seq": 2} for run in runs
        }
        self.fail: Callable[[list[ProgressUpdate]], None] = lambda writes: None
        self.batches = 0

    def write_progress(self, writes: list[ProgressUpdate]) -> int:
        self.batches += 1
        matched = 0
        for write in writes:
            job = self.jobs[write.oid]
            if job["seq"] == write.seq and job["epoch"] == write.epoch:
                job.update(write.changes, seq=job["seq"] + 1)
                matched += 1
        self.fail(writes)
        return matched

    def read_jobs(self, ids: list[str]) -> list[dict[str, Any]]:
        return [dict(self.jobs[ObjectId(i)]) for i in ids]


def _told_by(database: _Jobs, told: list[tuple[str, int]]) -> ProgressWrites:
    return ProgressWrites(
        cast(Any, database),
        database.read_jobs,
        lambda doc, kind: told.append((doc["progress"]["message"], doc["seq"])),
        lambda *args: None,
        interval=0.01,
    )


def test_a_write_refused_in_a_batch_leaves_the_others_told() -> None:
    runs = [_Run(), _Run()]
    database, told = _Jobs(runs), []
    refused = runs[1].oid

    def refuse_one(writes: list[ProgressUpdate]) -> None:
        database.jobs[refused]["seq"] -= 1  # as if that write was refused (a write error)
        database.jobs[refused].pop("progress")
        database.fail = lambda writes: None
        raise BulkWriteError({"writeErrors": [{"index": 1, "code": 2, "errmsg": "refused"}], "nMatched": 1})

    database.fail = refuse_one
    writes = _told_by(database, told)
    first, second = (writes.writer(run, {**_JOB, "seq": 2}) for run in runs)
    first.report(1, "drafting", 1, "first 1")
    second.report(1, "drafting", 1, "second 1")
    wait_for(lambda: ("first 1", 3) in told)  # told at once, though the other write failed
    first.report(2, "drafting", 2, "first 2")  # and the next report is written as usual
    second.report(2, "drafting", 2, "second 2")
    wait_for(lambda: len(told) == 3)
    assert told == [("first 1", 3), ("first 2", 4), ("second 2", 3)]
    assert database.batches == 2


def test_a_batch_applied_with_its_answer_lost_is_told_once() -> None:
    run = _Run()
    database, told = _Jobs([run]), []

    def lose_the_answer(writes: list[ProgressUpdate]) -> None:
        database.fail = lambda writes: None
        raise NetworkTimeout("the answer was lost")

    database.fail = lose_the_answer
    writes = _told_by(database, told)
    writes.writer(run, {**_JOB, "seq": 2}).report(1, "drafting", 1, "only report")
    wait_for(lambda: told)  # after the pause: found applied, told, not written again
    wait_for(lambda: database.batches == 2)
    writes.close(run)
    assert told == [("only report", 3)] and database.jobs[run.oid]["seq"] == 3


def test_a_report_that_cannot_be_written_stops_no_other_run() -> None:
    database, told = _SlowDatabase(), []
    database.release.set()
    writes = _writes(database, told)
    broken, sound = _Run(), _Run()
    writes.writer(broken, _JOB).report(cast(Any, "half"), "drafting", 50, "not a number")
    writes.writer(sound, _JOB).report(5, "drafting", 5, "five")
    wait_for(lambda: told == ["five"])  # the writer thread goes on
    closing = threading.Thread(target=writes.close, args=(broken,))
    closing.start()
    closing.join(5)
    assert not closing.is_alive()  # the broken run's outcome is not held up


def test_a_write_whose_answer_was_lost_is_told_once_after_two_failed_batches() -> None:
    run = _Run()
    database, told = _Jobs([run]), []
    failures = iter([NetworkTimeout("the answer was lost"), NetworkTimeout("down again")])

    def fail_twice(writes: list[ProgressUpdate]) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure

    database.fail = fail_twice  # the first batch applied, the second found it so and failed
    writes = _told_by(database, told)
    writes.writer(run, {**_JOB, "seq": 2}).report(1, "drafting", 1, "only report")
    wait_for(lambda: told)
    wait_for(lambda: database.batches == 3)
    writes.close(run)
    assert told == [("only report", 3)] and database.jobs[run.oid]["seq"] == 3
