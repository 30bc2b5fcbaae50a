"""A leader alone at rest: what it reads, and what it must still find in time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pymongo
import pytest
from bson import ObjectId

from genjobs.client import GenJobsClient, GenJobsError, NotFound
from genjobs.client.client import params
from genjobs.server.dispatch.housekeeping import NEVER, NextDue
from genjobs.server.model import clock
from genjobs.server.model.recheck import RECHECK_SECONDS
from genjobs.server.runtime.app import App
from genjobs.server.storage.queue import BACKOFF, SCHEDULED, LeaderLease
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.harness import MongoServer, ServerThread, scratch_store, seed_job, wait_for


def test_the_next_due_time_is_read_lowered_and_forgotten() -> None:
    due = NextDue()
    assert due.due(0)  # nothing known yet: read
    due.read(due.reading(), 5_000)
    assert not due.due(4_999) and due.due(5_000)
    due.lower(3_000)  # a job entered a waiting lane here, due sooner
    assert due.due(3_000)
    due.read(due.reading(), None)  # nothing waits
    assert not due.due(NEVER - 1)
    due.forget()  # another replica may have queued one
    assert due.due(0)


def test_a_job_entering_a_waiting_lane_during_a_read_is_not_missed() -> None:
    due = NextDue()
    version = due.reading()
    due.lower(1_000)  # told while the read was on its way: the read may predate its write
    due.read(version, 9_000)
    assert due.due(1_000)  # read again at the next pass, not at 9,000


def leader_alone(server: ServerThread) -> App:
    """The server's app, once its dispatcher leads and no other server shares the database."""
    app = server.app
    assert app is not None
    wait_for(app.dispatcher.alone)
    return app


def _calls(target: Any, name: str) -> list[float]:
    """Record when `target.name` is called (monotonic times), calling through."""
    original: Callable[..., Any] = getattr(target, name)
    times: list[float] = []

    def counted(*args: Any) -> Any:
        times.append(time.monotonic())
        return original(*args)

    setattr(target, name, counted)
    return times


def test_an_idle_leader_alone_reads_the_waiting_lanes_when_a_job_falls_due(
    server: ServerThread, alice: GenJobsClient
) -> None:
    app = leader_alone(server)
    queue = app.store.queue
    wait_for(lambda: alice.submit("topic", topic="warm") and True)
    due_reads, run_reads = _calls(queue, "due_waiting"), _calls(queue, "processing_jobs")
    at = datetime.now(UTC) + timedelta(seconds=4)
    submitted = time.monotonic()
    job = alice.submit("topic", topic="later", schedule_time=at)
    started = wait_for(
        lambda: (j := alice.get(job.id)).status != jobs_pb2.JOB_STATUS_QUEUED and j,
        timeout=RECHECK_SECONDS + 10,
    )
    began = started.start_time.ToDatetime(tzinfo=UTC)
    assert at <= began < at + timedelta(seconds=1.5), "not started at its schedule time"
    # While it waited: at most one recheck read each, then the read at its time
    # (every pass, a read a second, before).
    waited = [t for t in due_reads if t - submitted < 3.5]
    assert len(waited) <= 1, f"{len(waited)} reads of the waiting lanes while nothing was due"
    assert len([t for t in run_reads if t - submitted < 3.5]) <= 1


def test_a_leader_alone_finds_a_job_made_due_by_hand_within_the_recheck(
    server: ServerThread, alice: GenJobsClient, mongo: MongoServer
) -> None:
    leader_alone(server)
    job = alice.submit("topic", topic="much later", schedule_time=datetime.now(UTC) + timedelta(days=1))
    # An operator's hand, which nothing on the server hears of: due now.
    jobs = pymongo.MongoClient(mongo.uri)[server.settings.db_name].jobs
    jobs.update_one({"_id": ObjectId(job.id)}, {"$set": {"run_after_us": 0}})
    made_due = time.monotonic()
    wait_for(lambda: alice.get(job.id).status == jobs_pb2.JOB_STATUS_COMPLETED, timeout=RECHECK_SECONDS + 10)
    assert time.monotonic() - made_due < RECHECK_SECONDS + 3


def _watching(client: GenJobsClient, job_id: str) -> list[jobs_pb2.JobEvent]:
    """Follow `job_id` in a thread of its own; the events as they come."""
    events: list[jobs_pb2.JobEvent] = []

    def follow() -> None:
        # The test's end closes the client and stops the server, perhaps
        # while the stream reconnects: what the test asserts is in `events`.
        with contextlib.suppress(ValueError, grpc.RpcError, GenJobsError):
            events.extend(client.watch(job_id))

    threading.Thread(target=follow, daemon=True).start()
    wait_for(lambda: events)  # the first snapshot: the stream is open
    return events


def test_a_leader_alone_reads_its_watched_jobs_once_a_recheck(
    server: ServerThread, alice: GenJobsClient
) -> None:
    app = leader_alone(server)
    job = alice.submit("topic", topic="much later", schedule_time=datetime.now(UTC) + timedelta(days=1))
    events = _watching(alice, job.id)
    polls, reads = _calls(app.services.remote, "poll"), _calls(app.store.jobs, "jobs_by_ids")
    # Ten of the other servers' polls (a tenth of a second apart here): every
    # change was made and told here, so the job is read once at most (the recheck).
    wait_for(lambda: len(polls) >= 10)
    assert len(reads) <= 1, f"{len(reads)} reads of a watched job in {len(polls)} polls of a leader alone"
    alice.cancel(job.id)  # a change made here: told at once, with no read
    wait_for(lambda: events[-1].job.status == jobs_pb2.JOB_STATUS_CANCELLED, timeout=2)


def test_a_leader_alone_reads_its_watched_bulk_jobs_once_a_recheck(
    server: ServerThread, alice: GenJobsClient
) -> None:
    app = leader_alone(server)
    later = datetime.now(UTC) + timedelta(days=1)
    bulk = alice.create_bulk("topic", [{"topic": f"item {n}"} for n in range(10)], schedule_time=later)
    events: list[Any] = []

    def follow() -> None:
        with contextlib.suppress(ValueError, grpc.RpcError, GenJobsError):
            events.extend(alice.watch_bulk(bulk.id))

    threading.Thread(target=follow, daemon=True).start()
    wait_for(lambda: events)  # the first snapshot: the stream is open
    polls, reads = _calls(app.services.remote, "poll"), _calls(app.store.bulks, "bulk_docs")
    # As for a watched job: every change is made and told here, so ten polls read it once at most.
    wait_for(lambda: len(polls) >= 10)
    assert len(reads) <= 1, (
        f"{len(reads)} reads of a watched bulk job in {len(polls)} polls of a leader alone"
    )
    alice.cancel_bulk(bulk.id)  # a change made here: told at once, with no read
    wait_for(lambda: events[-1].bulk_job.status == bulk_pb2.BULK_JOB_STATUS_CANCELLED, timeout=5)


def test_a_leader_alone_answers_a_watch_of_a_job_it_runs_with_no_read(
    server: ServerThread, alice: GenJobsClient, bob: GenJobsClient
) -> None:
    """A watch of a running job (`genjobs submit --watch`, a dashboard's row)
    starts from what the leader alone last told of it, not a read; another
    owner still finds no such job; a queued job is read (a budget's hold
    moves queued jobs untold), and so is one that ended (it may be gone)."""
    app = leader_alone(server)
    reads = _calls(app.store.jobs, "document")

    def read_by(watch: Callable[[], Any]) -> int:
        """How many reads of a job `watch` made."""
        before = len(reads)
        watch()
        return len(reads) - before

    job = alice.submit("topic", topic="a long one", extra={"demo_seconds": "30"})
    wait_for(lambda: app.dispatcher.running_job_id() == job.id)
    first: list[jobs_pb2.JobEvent] = []
    assert read_by(lambda: first.append(next(iter(alice.watch(job.id))))) == 0
    assert first[0].job.status == jobs_pb2.JOB_STATUS_PROCESSING and first[0].job.params.topic == "a long one"
    with pytest.raises(NotFound):
        read_by(lambda: next(iter(bob.watch(job.id))))
    later = alice.submit("topic", topic="much later", schedule_time=datetime.now(UTC) + timedelta(days=1))
    assert read_by(lambda: first.append(next(iter(alice.watch(later.id))))) == 1
    assert first[1].job.status == jobs_pb2.JOB_STATUS_QUEUED
    alice.cancel(job.id)
    wait_for(lambda: alice.get(job.id).status == jobs_pb2.JOB_STATUS_CANCELLED)
    assert read_by(lambda: first.extend(alice.watch(job.id))) == 1
    assert first[2:] and [event.job.status for event in first[2:]] == [jobs_pb2.JOB_STATUS_CANCELLED]


def test_a_change_by_hand_reaches_a_watcher_of_a_leader_alone_within_the_recheck(
    server: ServerThread, alice: GenJobsClient, mongo: MongoServer
) -> None:
    leader_alone(server)
    job = alice.submit("topic", topic="much later", schedule_time=datetime.now(UTC) + timedelta(days=1))
    events = _watching(alice, job.id)
    # An operator's hand, which nothing on the server hears of: cancelled.
    jobs = pymongo.MongoClient(mongo.uri)[server.settings.db_name].jobs
    jobs.update_one({"_id": ObjectId(job.id)}, {"$set": {"status": "CANCELLED"}, "$inc": {"seq": 1}})
    wait_for(lambda: events[-1].job.status == jobs_pb2.JOB_STATUS_CANCELLED, timeout=RECHECK_SECONDS + 3)


def test_a_leader_alone_reads_the_budgets_once_a_recheck(server: ServerThread) -> None:
    app = leader_alone(server)
    passes = _calls(app.dispatcher._house, "release")  # once a housekeeping pass (a second)
    reads = _calls(app.budgets.store, "changed_budgets")
    # Every limit and hold is written here: the passes read them once a recheck.
    wait_for(lambda: len(passes) >= 4)
    assert len(reads) <= 1, f"{len(reads)} reads of the budgets in {len(passes)} passes of a leader alone"


def test_a_leader_alone_reads_the_schedules_when_one_falls_due(
    server: ServerThread, alice: GenJobsClient
) -> None:
    app = leader_alone(server)
    store = app.services.schedules.store
    passes = _calls(app.dispatcher._house, "release")  # once a housekeeping pass (a second)
    reads = _calls(store, "due_schedules")
    wait_for(lambda: len(passes) >= 4)
    assert len(reads) <= 1, f"{len(reads)} reads of the schedules in {len(passes)} passes with none due"
    # One made here is known at once: it ticks on time, with no recheck between.
    made = time.monotonic()
    schedule = alice.create_schedule(
        "* * * * * *",
        job=jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=params(topic="every second")),
    )
    wait_for(lambda: list(alice.iter_jobs(schedule_id=schedule.id)), timeout=RECHECK_SECONDS)
    assert time.monotonic() - made < 3


def test_a_leader_alone_reads_its_ready_lane_once_a_recheck(
    server: ServerThread, alice: GenJobsClient
) -> None:
    app = leader_alone(server)
    queue = app.store.queue
    passes = _calls(app.dispatcher._house, "release")  # once a housekeeping pass (a second)
    wait_for(lambda: len(passes) >= 2)  # past its first reads alone (those of a server just gone)
    entered, heads = _calls(queue, "entered_ready"), _calls(queue, "runnable_heads")
    passes.clear()
    # Every job entering the ready lane is offered here: the passes read it once a recheck.
    wait_for(lambda: len(passes) >= 4)
    reads = len(entered) + len(heads)
    assert reads <= 1, f"{reads} reads of the ready lane in {len(passes)} passes of a leader alone"
    made = time.monotonic()  # one submitted here is known at once
    job = alice.submit("topic", topic="told")
    wait_for(lambda: alice.get(job.id).status == jobs_pb2.JOB_STATUS_COMPLETED, timeout=RECHECK_SECONDS)
    assert time.monotonic() - made < 3


def test_a_leader_alone_finds_a_job_queued_by_hand_within_the_recheck(
    server: ServerThread, alice: GenJobsClient
) -> None:
    app = leader_alone(server)
    store = app.store
    # An operator's hand (or a tool), which nothing on the server hears of: a job in the ready lane.
    doc = seed_job(store, "alice", {"topic": "by hand"})
    store.database.jobs.insert_one(doc)
    stored = time.monotonic()
    wait_for(
        lambda: alice.get(str(doc["_id"])).status == jobs_pb2.JOB_STATUS_COMPLETED,
        timeout=RECHECK_SECONDS + 10,
    )
    assert time.monotonic() - stored < RECHECK_SECONDS + 3


def test_a_serving_server_pings_the_database_only_when_its_lease_keeper_did_not_hear_from_it(
    server: ServerThread,
) -> None:
    assert server.app is not None
    checks = _calls(server.app, "_answered_lately")  # once a health check (a second)
    pings = _calls(server.app, "_ping")
    # The lease keeper's renewal each second answers for the database.
    wait_for(lambda: len(checks) >= 4)
    assert len(pings) <= 1, f"{len(pings)} pings in {len(checks)} health checks"


def test_the_leader_lease_carries_the_wakeups_and_counts_each_taking(mongo: MongoServer) -> None:
    with scratch_store(mongo.uri, "idle_lease") as store:
        queue = store.queue
        assert queue.hold_leader("lease", "a", 10.0) == LeaderLease(1, 0, 0)
        assert queue.hold_leader("lease", "b", 10.0) is None
        queue.signal_leader("lease")
        queue.note_follower("lease", 2_000)
        queue.note_follower("lease", 1_000)  # a follower whose clock is behind: the later time holds
        assert queue.hold_leader("lease", "a", 10.0) == LeaderLease(1, 1, 2_000)  # renewed: the same term
        queue.release_leader("lease", "a")
        assert queue.hold_leader("lease", "b", 10.0) == LeaderLease(2, 1, 2_000)  # taken: a new term
        queue.signal_leader("no-lease")  # nobody leads: nothing to tell, nothing stored
        assert queue.read_leader("no-lease") == LeaderLease(0, 0, 0)


def test_the_waiting_lanes_say_what_is_due_and_when_the_next_falls_due(mongo: MongoServer) -> None:
    now_us = clock.now_us()
    with scratch_store(mongo.uri, "idle_due") as store:
        assert store.queue.next_due(now_us) is None  # nothing waits
        lanes = [(BACKOFF, now_us - 1), (BACKOFF, now_us + 5_000_000), (SCHEDULED, now_us + 3_000_000)]
        docs = [seed_job(store, "alice", {"topic": "t"}) for _ in lanes]
        for doc, (lane, at_us) in zip(docs, lanes, strict=True):
            doc.update(queue=lane, run_after_us=at_us)
        store.database.jobs.insert_many(docs)
        assert [oid for _, oid, _ in store.queue.due_waiting(now_us)] == [docs[0]["_id"]]
        assert store.queue.next_due(now_us) == now_us + 3_000_000
