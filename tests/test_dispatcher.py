"""The dispatcher: order, one job at a time across replicas, crashes, fencing,
cancel, retries, the http generator and WatchJob resumption."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import grpc
import pymongo
import pytest
from bson import ObjectId

from genjobs.client import GenJobsClient, Unavailable
from genjobs.server.dispatch import dispatcher
from genjobs.server.dispatch.runs_here import RunsHere
from genjobs.server.dispatch.signals import WAKEUP_POLL_SECONDS, LeaderSignals
from genjobs.server.model import clock
from genjobs.server.services import events as events_module
from genjobs.server.services import remote
from genjobs.server.services.events import Event, EventHub, job_key, owner_key
from genjobs.server.storage.events import loaded
from genjobs.server.storage.queue import READY, LeaderLease, QueueStore
from genjobs.server.storage.store import Store
from genjobs.v1 import jobs_pb2
from tests import harness
from tests.harness import MongoServer, ServerProcess, ServerThread, make_settings, seed_job, wait_for
from tests.receivers import JsonHandler, serving

S = jobs_pb2


def final(client: GenJobsClient, job_id: str, timeout: float = 20) -> jobs_pb2.Job:
    return wait_for(
        lambda: (
            (j := client.get(job_id)).status
            in (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)
            and j
        ),
        timeout=timeout,
    )


def test_job_runs_with_increasing_progress_and_contiguous_events(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="Progress", extra={"demo_seconds": "2"})
    events = list(alice.watch(job.id))
    sequences = [e.sequence for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    percentages = [e.job.progress.percentage for e in events]
    assert percentages == sorted(percentages)
    stages = {e.job.progress.stage for e in events if e.type == S.JOB_EVENT_TYPE_PROGRESS}
    assert {"research", "drafting", "editing"} <= stages
    assert events[-1].job.status == S.JOB_STATUS_COMPLETED
    assert events[-1].job.progress.estimated_completion.seconds > 0 or len(events) > 3


def test_a_job_submitted_to_an_idle_server_is_stored_running(
    mongo: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its insert carries its claim: no claim of its own. SubmitJob answers
    the job as submitted (sequence 1), and its run tells the rest in order."""
    claimed: list[str] = []  # the jobs claimed after their insert, alone or with a run's end
    claim, end_and_claim = QueueStore.claim, QueueStore.end_and_claim

    def claiming(store: QueueStore, oid: ObjectId, *rest: Any) -> Any:
        claimed.append(str(oid))
        return claim(store, oid, *rest)

    def ending_and_claiming(store: QueueStore, ended: Any, changes: Any, ready: Any, *rest: Any) -> Any:
        claimed.append(str(ready["_id"]))
        return end_and_claim(store, ended, changes, ready, *rest)

    monkeypatch.setattr(QueueStore, "claim", claiming)
    monkeypatch.setattr(QueueStore, "end_and_claim", ending_and_claiming)
    # The dispatcher's reads (a poll interval's, a new owner's turn) hold its
    # claim lock a moment, and a submit meanwhile is stored queued: on a busy
    # machine one may fall there, five in a row not.
    settings = make_settings(mongo.uri, tmp_path, lease_seconds=30.0, poll_seconds=5.0)
    with harness.serving(settings) as alice:
        final(alice, alice.submit("topic", topic="the dispatcher has looked").id)
        for _ in range(5):
            first = alice.submit("topic", topic="idle lane", extra={"demo_seconds": "1"})
            if alice.get(first.id).status == S.JOB_STATUS_PROCESSING and first.id not in claimed:
                break  # running already, never claimed (checked again once it ended)
            final(alice, first.id)
        assert (first.status, first.attempt) == (S.JOB_STATUS_QUEUED, 0)
        now = alice.get(first.id)
        assert now.attempt == 1 and now.start_time.ToNanoseconds() >= first.create_time.ToNanoseconds()
        # The lane is taken: the next job is stored queued, and waits for it.
        second = alice.submit("topic", topic="busy lane")
        assert alice.get(second.id).status == S.JOB_STATUS_QUEUED
        events = list(alice.watch(first.id, after_sequence=1))
        assert [e.sequence for e in events] == list(range(2, 2 + len(events)))
        assert events[0].job.status == S.JOB_STATUS_PROCESSING
        assert events[-1].job.status == S.JOB_STATUS_COMPLETED
        assert final(alice, second.id).start_time.ToNanoseconds() >= events[-1].job.end_time.ToNanoseconds()
    assert first.id not in claimed, (
        "five jobs submitted to an idle server were each claimed after their insert"
    )
    assert second.id in claimed


def test_submits_given_up_by_their_callers_leave_no_job_stuck_running(
    mongo: MongoServer, tmp_path: Path
) -> None:
    """A call cancelled while its job is being stored running (a client's
    deadline) still settles that job: stored, it runs; the lane goes on."""
    settings = make_settings(mongo.uri, tmp_path, lease_seconds=30.0, generator="noop")
    with harness.serving(settings) as alice:
        request = jobs_pb2.SubmitJobRequest(
            mode=S.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic="given up")
        )
        given_up = 0
        for _ in range(30):
            try:
                alice.jobs.SubmitJob(request, metadata=alice._metadata, timeout=0.002)
            except grpc.RpcError as exc:
                # (UNAVAILABLE: the call's deadline bounds its database writes, and one timed out.)
                assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
                given_up += 1
        assert given_up, "no call was given up: every submit answered within 2 ms"
        last = alice.submit("topic", topic="after them")
        assert final(alice, last.id, timeout=15).status == S.JOB_STATUS_COMPLETED
        # Those stored run too (a lane held for one, or a job stored running
        # and never run, would wait for its 30-second lease).
        for job in alice.iter_jobs():
            assert final(alice, job.id, timeout=15).status == S.JOB_STATUS_COMPLETED, job.id


def test_jobs_run_fifo(alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="blocker", extra={"demo_seconds": "0.5"})
    ids = [alice.submit("topic", topic=f"fifo {i}").id for i in range(8)]
    final(alice, blocker.id)
    jobs = [final(alice, i) for i in ids]
    starts = [j.start_time.ToNanoseconds() for j in jobs]
    assert starts == sorted(starts)


def test_watch_after_the_end_gets_the_snapshot_and_the_end(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="done already")
    done = final(alice, job.id)
    events = list(alice.watch(job.id))
    assert len(events) == 1 and events[0].type == S.JOB_EVENT_TYPE_SNAPSHOT
    assert events[0].job.status == S.JOB_STATUS_COMPLETED
    assert list(alice.watch(job.id, after_sequence=events[0].sequence)) == []
    assert done.id == job.id


def test_watch_resumes_after_a_dropped_connection_without_loss(server: ServerThread) -> None:
    with server.client() as alice:
        job = alice.submit("topic", topic="resume", extra={"demo_seconds": "1.5"})
        wait_for(lambda: alice.get(job.id).status == S.JOB_STATUS_PROCESSING)
        stream = alice.jobs.WatchJob(S.WatchJobRequest(id=job.id), metadata=alice._metadata)
        first = [next(stream), next(stream)]
        stream.cancel()  # the connection drops
        seen = first[-1].job.progress.percentage
        wait_for(lambda: alice.get(job.id).progress.percentage > seen)  # progress made while away
        rest = list(alice.watch(job.id, after_sequence=first[-1].sequence))
        sequences = [e.sequence for e in first + rest]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        assert rest[-1].job.status == S.JOB_STATUS_COMPLETED


def test_events_stored_by_an_older_server_still_replay(server: ServerThread, mongo: MongoServer) -> None:
    # Older servers stored an event's job snapshot as a nested document, not one BSON value.
    events = pymongo.MongoClient(mongo.uri)[server.settings.db_name]["job_events"]
    with server.client() as alice:
        job = alice.submit("topic", topic="stored long ago")
        final(alice, job.id)
        assert server.app is not None and server.app.event_log.flush()
        for event in events.find({"job_id": job.id}):
            assert isinstance(event["job"], bytes)  # as this server stores it
            events.update_one({"_id": event["_id"]}, {"$set": {"job": loaded(event)["job"]}})
        replayed = list(alice.watch(job.id, after_sequence=1))
    assert [e.job.status for e in replayed] == [S.JOB_STATUS_PROCESSING, S.JOB_STATUS_COMPLETED]
    assert all(e.job.params.topic == "stored long ago" for e in replayed)


def test_transient_failure_is_retried_then_succeeds(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="flaky", extra={"demo_fail": "transient", "demo_fail_attempts": "1"})
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_COMPLETED and done.attempt == 2
    assert [e.code for e in done.attempt_errors] == ["DEMO_TRANSIENT"]


def test_permanent_failure_fails_at_once(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="broken", extra={"demo_fail": "permanent"})
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_FAILED and done.attempt == 1
    assert done.error.category == "permanent" and not done.error.retryable


def test_transient_failures_stop_at_max_attempts(alice: GenJobsClient) -> None:
    job = alice.submit(
        "topic", topic="hopeless", max_attempts=2, extra={"demo_fail": "transient", "demo_fail_attempts": "9"}
    )
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_FAILED and done.attempt == 2
    assert len(done.attempt_errors) == 2 and done.error.retryable


def test_fencing_a_stale_run_cannot_write(mongo: MongoServer) -> None:
    store = Store(mongo.uri, "fencing_" + str(time.time_ns()))
    store.ensure_indexes()
    doc = seed_job(store, "alice", {"topic": "x"})
    store.jobs.insert_job(doc)
    stale = store.queue.claim(doc["_id"], "worker-a", lease_seconds=0.01)
    assert stale is not None
    # worker-a stalls; its lease lapses and the job is requeued and claimed by worker-b.
    requeued = store.queue.fenced_update(doc["_id"], stale["epoch"], {"status": "QUEUED", "queue": READY})
    assert requeued is not None
    fresh = store.queue.claim(doc["_id"], "worker-b", lease_seconds=10)
    assert fresh is not None and fresh["epoch"] == stale["epoch"] + 1
    assert store.queue.fenced_update(doc["_id"], stale["epoch"], {"status": "COMPLETED"}) is None
    assert store.queue.renew_job_lease(doc["_id"], stale["epoch"], 10) is None
    assert store.database.jobs.find_one({"_id": doc["_id"]})["worker"] == "worker-b"
    store.close()


def test_two_servers_never_run_two_jobs_at_once(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path, lease_seconds=1.0)
    servers = [ServerProcess(settings, tmp_path / f"s{i}.log").start() for i in range(2)]
    watcher: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    jobs = watcher[settings.db_name]["jobs"]
    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(list(jobs.find({"status": "PROCESSING"}, {"_id": 1}))))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        clients = [s.client() for s in servers]
        ids = [
            clients[i % 2].submit("topic", topic=f"j{i}", extra={"demo_seconds": "0.05"}).id
            for i in range(30)
        ]
        done = [final(clients[0], i, timeout=60) for i in ids]
        assert all(j.status == S.JOB_STATUS_COMPLETED and j.attempt == 1 for j in done)
    finally:
        stop.set()
        sampler.join()
        for s in servers:
            s.terminate()
    assert most == 1


def test_cancel_reaches_the_replica_running_the_job(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    servers = [ServerThread(settings).start() for _ in range(2)]
    try:
        with servers[0].client() as one, servers[1].client() as two:
            job = one.submit("topic", topic="long", extra={"demo_seconds": "30"})
            # Stored running by its submit: the lane that runs it takes it up just after.
            runner = wait_for(
                lambda: next(
                    (s for s in servers if s.app and s.app.dispatcher.running_job_id() == job.id), None
                )
            )
            other = two if runner is servers[0] else one
            started = time.monotonic()
            other.cancel(job.id)
            wait_for(lambda: one.get(job.id).status == S.JOB_STATUS_CANCELLED, timeout=2.0)
            assert time.monotonic() - started < 2.0
    finally:
        for s in servers:
            s.stop()


@pytest.mark.parametrize("attempts", [3, 1])
def test_kill_9_mid_job_requeues_or_fails_never_stuck(
    mongo: MongoServer, tmp_path: Path, attempts: int
) -> None:
    settings = make_settings(mongo.uri, tmp_path, lease_seconds=1.0)
    first = ServerProcess(settings, tmp_path / "first.log").start()
    with first.client() as alice:
        job = alice.submit("topic", topic="crash", max_attempts=attempts, extra={"demo_seconds": "2"})
        wait_for(lambda: alice.get(job.id).status == S.JOB_STATUS_PROCESSING)
    first.kill()
    second = ServerProcess(settings, tmp_path / "second.log").start()
    try:
        with second.client() as alice:
            done = final(alice, job.id, timeout=30)
            assert done.attempt_errors[0].code == "WORKER_LOST"
            if attempts == 1:
                assert done.status == S.JOB_STATUS_FAILED and done.error.code == "WORKER_LOST"
            else:
                assert done.status == S.JOB_STATUS_COMPLETED and done.attempt == 2
            events = pymongo.MongoClient(mongo.uri)[settings.db_name]["job_events"]

            def completions() -> int:
                stored = events.find({"job_id": job.id})
                return sum(loaded(e)["job"]["status"] == "COMPLETED" for e in stored)

            if attempts == 3:  # events are stored in the background: wait for the one
                wait_for(completions)
            assert completions() == (1 if attempts == 3 else 0)
    finally:
        second.terminate()


def test_sigterm_ends_streams_unavailable_and_requeues_the_running_job(
    mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    process = ServerProcess(settings, tmp_path / "server.log").start()
    with process.client() as alice:
        job = alice.submit("topic", topic="interrupted", extra={"demo_seconds": "60"})
        wait_for(lambda: alice.get(job.id).status == S.JOB_STATUS_PROCESSING)
        outcome: list[BaseException] = []
        opened = threading.Event()

        def watch() -> None:
            try:
                for _ in alice.watch(job.id, reconnect=False):
                    opened.set()
            except Unavailable as exc:
                outcome.append(exc)

        watcher = threading.Thread(target=watch)
        watcher.start()
        wait_for(opened.is_set)  # the stream is open: its snapshot arrived
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        watcher.join(20)
        assert process.process.wait(30) == 0
    assert outcome and outcome[0].reason == "SERVER_SHUTTING_DOWN"
    restarted = ServerProcess(settings, tmp_path / "again.log").start()
    try:
        with restarted.client() as alice:
            again = alice.get(job.id)
            assert again.status in (S.JOB_STATUS_QUEUED, S.JOB_STATUS_PROCESSING)
            assert again.attempt <= 1 and not again.attempt_errors  # shutdown costs no attempt
            alice.cancel(job.id)
    finally:
        restarted.terminate()


class _Generator(JsonHandler):
    requests: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.body()
        _Generator.requests.append((self.path, body))
        topic = body.get("topic", "")
        if topic == "server error":
            code, answer = 500, {"success": False, "error": "overloaded"}
        elif topic == "bad request":
            code, answer = 400, {"success": False, "error": "topic not allowed"}
        elif topic == "slow":
            _Generator.release.wait(5)  # a generator that takes its time
            code, answer = 200, {"success": True, "content": "late"}
        else:
            code, answer = 200, {"success": True, "content": "one two three", "title": "T", "cost_cents": 7}
        self.answer(code, answer)


@pytest.fixture
def http_generator(mongo: MongoServer, tmp_path: Path) -> Iterator[ServerThread]:
    _Generator.requests = []
    _Generator.release = threading.Event()
    with serving(_Generator) as url:
        server = ServerThread(make_settings(mongo.uri, tmp_path, generator="http", generator_url=url)).start()
        yield server
    server.stop()
    _Generator.release.set()


def test_http_generator_success(http_generator: ServerThread) -> None:
    with http_generator.client() as alice:
        job = alice.submit("keywords", keywords=["a", "b"], word_count=100)
        done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_COMPLETED
    assert (done.result.content, done.result.title, done.result.cost_cents) == ("one two three", "T", 7)
    assert done.result.word_count == 3
    path, body = _Generator.requests[0]
    assert path == "/api/content/generate/keywords"
    assert body["job_id"] == job.id and body["user_id"] == "alice" and body["keywords"] == ["a", "b"]


def test_http_generator_errors_map_to_transient_and_permanent(http_generator: ServerThread) -> None:
    with http_generator.client() as alice:
        permanent = alice.submit("topic", topic="bad request")
        p = final(alice, permanent.id)
        transient = alice.submit("topic", topic="server error", max_attempts=2)
        # The service's 5xx is its own trouble: the job waits, its attempt given back.
        t = wait_for(lambda: (j := alice.get(transient.id)).error.code and j)
    assert t.status == S.JOB_STATUS_QUEUED and t.attempt == 0 and t.error.retryable
    assert t.error.code == "GENERATOR_UNAVAILABLE"
    assert p.status == S.JOB_STATUS_FAILED and p.attempt == 1 and not p.error.retryable
    assert "topic not allowed" in p.error.message


def test_http_generator_request_is_aborted_on_cancel(http_generator: ServerThread) -> None:
    with http_generator.client() as alice:
        job = alice.submit("topic", topic="slow")
        wait_for(lambda: _Generator.requests)
        alice.cancel(job.id)
        wait_for(lambda: alice.get(job.id).status == S.JOB_STATUS_CANCELLED, timeout=2.0)


def test_stream_needs_no_thread(server: ServerThread) -> None:
    with server.client() as alice:
        job = alice.submit("topic", topic="idle", extra={"demo_seconds": "30"})
        channel = grpc.insecure_channel(server.target)
        stub = alice.jobs.__class__(channel)
        streams: list[Any] = []

        def open_streams(count: int, user: str = "alice") -> None:
            # One at a time: each stream's opening query borrows a pool thread and gives it back.
            # As watchers of one job (an admin reads anyone's) spread over owners, each under
            # the per-owner cap of 100 streams (GENJOBS_MAX_STREAMS_PER_OWNER).
            token = server.token(user, admin=user != "alice")
            for _ in range(count):
                metadata = (("authorization", f"Bearer {token}"),)
                streams.append(stub.WatchJob(S.WatchJobRequest(id=job.id), metadata=metadata))
                next(streams[-1])

        open_streams(10)
        before = threading.active_count()
        open_streams(50, "ops-1")
        open_streams(50, "ops-2")
        assert server.app is not None
        wait_for(lambda: server.app.hub.subscriber_count() == 110)  # type: ignore[union-attr]
        # 100 more open streams, and no more threads than a handful.
        assert threading.active_count() - before < 5
        for stream in streams:
            stream.cancel()
        channel.close()
        alice.cancel(job.id)


def test_idle_stream_gets_heartbeats(server: ServerThread) -> None:
    # The test server's heartbeat interval is 1 s: a queued job behind a long
    # one sends nothing, yet its stream must show it is alive.
    with server.client() as alice:
        blocker = alice.submit("topic", topic="long", extra={"demo_seconds": "30"})
        job = alice.submit("topic", topic="waits")
        stream = alice.jobs.WatchJob(S.WatchJobRequest(id=job.id), metadata=alice._metadata, timeout=10)
        assert next(stream).type == S.JOB_EVENT_TYPE_SNAPSHOT
        beats = [next(stream), next(stream)]
        assert [e.type for e in beats] == [S.JOB_EVENT_TYPE_HEARTBEAT] * 2
        stream.cancel()
        alice.cancel(blocker.id)


def test_delete_removes_the_events_of_a_job_that_ran(server: ServerThread, mongo: MongoServer) -> None:
    events = pymongo.MongoClient(mongo.uri)[server.settings.db_name]["job_events"]
    with server.client() as alice:
        job = alice.submit("topic", topic="ran", extra={"demo_seconds": "0.5"})
        assert final(alice, job.id).status == S.JOB_STATUS_COMPLETED
        alice.delete(job.id)  # at once: its events may still be on their way to the database
        assert events.count_documents({"job_id": job.id}) == 0
        # A later job's resumed watch stores everything published so far: still none.
        other = alice.submit("topic", topic="after", extra={"demo_seconds": "0.5"})
        assert list(alice.watch(other.id, after_sequence=1))[-1].job.status == S.JOB_STATUS_COMPLETED
        assert events.count_documents({"job_id": job.id}) == 0
        # The later job's own events are stored meanwhile (behind its watchers).
        wait_for(lambda: events.count_documents({"job_id": other.id}) >= 2)
        assert events.count_documents({"job_id": job.id}) == 0


def test_a_job_submitted_to_the_replica_that_is_not_the_leader_runs(
    mongo: MongoServer, tmp_path: Path
) -> None:
    # Two server processes on one database: the follower queues jobs and
    # signals the leader (the wakeups in its lease); the leader runs them all.
    settings = make_settings(mongo.uri, tmp_path)
    servers = [ServerProcess(settings, tmp_path / f"server{i}.log").start() for i in range(2)]
    database = pymongo.MongoClient(mongo.uri)[settings.db_name]
    try:
        lease = wait_for(
            lambda: database.leases.find_one({"_id": "dispatcher", "until_us": {"$gt": 0}}), timeout=30
        )
        follower = next(s for s in servers if s.process and f":{s.process.pid}:" not in lease["holder"])
        with follower.client("bob") as bob:
            jobs = [bob.submit("topic", topic=f"from the follower {i}") for i in range(3)]
            assert [final(bob, job.id).status for job in jobs] == [S.JOB_STATUS_COMPLETED] * 3
    finally:
        for server in servers:
            server.terminate()
        database.client.close()


def _told_until(
    stream: Any,
    job_id: str,
    last: int,
    after_each: Callable[[list[jobs_pb2.JobEvent]], None] | None = None,
) -> list[jobs_pb2.JobEvent]:
    """The events of `job_id` an owner's stream tells until one with status
    `last` (`after_each` is given those so far after each); fails when the
    stream's deadline passes first."""
    told: list[jobs_pb2.JobEvent] = []
    try:
        for event in stream:
            if event.job.id != job_id:
                continue
            told.append(event)
            if after_each is not None:
                after_each(told)
            if event.job.status == last:
                return told
    except grpc.RpcError as exc:
        pytest.fail(f"the stream never told it ({exc.code()}); it told {[e.job.status for e in told]}")
    finally:
        stream.cancel()
    pytest.fail("the stream ended")


def test_the_owner_stream_tells_each_change_once_though_the_poller_reads_them_too(
    server: ServerThread,
) -> None:
    with server.client("alice") as alice:
        stream = alice.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(), metadata=alice._metadata, timeout=30)
        next(stream)  # the first heartbeat: the stream is open
        slow = {"demo_seconds": "1"}
        jobs = {alice.submit("topic", topic=f"told once {i}", extra=slow).id for i in range(2)}
        told: dict[str, list[tuple[int, int]]] = {job_id: [] for job_id in jobs}
        try:
            for event in stream:
                if event.job.id in told:
                    told[event.job.id].append((event.sequence, event.job.status))
                    if all(t and t[-1][1] == jobs_pb2.JOB_STATUS_COMPLETED for t in told.values()):
                        break
        finally:
            stream.cancel()
    for changes in told.values():
        sequences = [seq for seq, _ in changes]
        assert sequences == sorted(set(sequences)), changes
        assert jobs_pb2.JOB_STATUS_PROCESSING in [status for _, status in changes]


@contextmanager
def _leader_and_follower(
    mongo: MongoServer, tmp_path: Path
) -> Iterator[tuple[ServerThread, ServerThread, Any]]:
    """Two servers on one database, the first surely the leader (its lease
    long enough that it stays so on a loaded machine); and the database."""
    settings = replace(make_settings(mongo.uri, tmp_path / "a"), lease_seconds=30.0)
    leader = ServerThread(settings).start()
    database = pymongo.MongoClient(mongo.uri)[settings.db_name]
    follower: ServerThread | None = None
    try:
        assert leader.app is not None
        holder = leader.app.worker_id
        wait_for(lambda: database.leases.find_one({"_id": "dispatcher", "holder": holder}), timeout=30)
        follower = ServerThread(replace(settings, data_dir=tmp_path / "b")).start()
        yield leader, follower, database
    finally:
        leader.stop()
        if follower is not None:
            follower.stop()
        database.client.close()


def test_a_watch_on_the_leader_shows_a_change_just_made_on_another_replica(
    mongo: MongoServer, tmp_path: Path
) -> None:
    """The leader keeps its own changes in memory, but while another replica
    shares the database a watch reads the job: a cancel made there is the
    first thing it shows."""
    with _leader_and_follower(mongo, tmp_path) as (leader, follower, _):
        assert leader.app is not None
        dispatcher = leader.app.dispatcher
        wait_for(lambda: not dispatcher.alone(), timeout=30)  # the follower is heard of
        later = datetime.now(UTC) + timedelta(days=1)
        with leader.client("alice") as here, follower.client("alice") as there:
            job = here.submit("topic", topic="cancelled elsewhere", schedule_time=later)
            there.cancel(job.id)
            first = next(iter(here.watch(job.id)))
            assert first.job.status == jobs_pb2.JOB_STATUS_CANCELLED


def test_the_owner_stream_on_a_replica_hears_of_runs_made_by_the_leader(
    mongo: MongoServer, tmp_path: Path
) -> None:
    """WatchJobs on a replica that is not the leader carries the runs the
    leader makes of its owner's jobs (a dashboard behind a load balancer does
    not show them queued for good), each change once and in order."""
    with _leader_and_follower(mongo, tmp_path) as (leader, follower, database):
        assert leader.app is not None
        holder = leader.app.worker_id
        with follower.client("alice") as alice:
            stream = alice.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(), metadata=alice._metadata, timeout=30)
            next(stream)  # the first heartbeat: the stream is open
            job = alice.submit("topic", topic="queued here, run there", extra={"demo_seconds": "0.3"})
            told = _told_until(stream, job.id, jobs_pb2.JOB_STATUS_COMPLETED)
        sequences = [event.sequence for event in told]
        assert sequences == sorted(set(sequences)), sequences
        assert database.jobs.find_one({"_id": ObjectId(job.id)}, {"worker": 1})["worker"] == holder

        # An outcome written through an outage keeps the stamp of its first
        # try, minutes old when it lands: a job told running is read again.
        with follower.client("alice") as alice:
            stream = alice.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(), metadata=alice._metadata, timeout=60)
            next(stream)
            long = alice.submit("topic", topic="ends late", extra={"demo_seconds": "120"})

            def land_late(told: list[jobs_pb2.JobEvent]) -> None:
                if len(told) == 2 and told[-1].job.status == jobs_pb2.JOB_STATUS_PROCESSING:
                    landed = database.jobs.update_one(
                        {"_id": ObjectId(long.id), "status": "PROCESSING"},
                        {
                            "$set": {"status": "CANCELLED", "updated_us": clock.now_us() - 600_000_000},
                            "$inc": {"seq": 1},
                        },
                    )
                    assert landed.modified_count == 1

            _told_until(stream, long.id, jobs_pb2.JOB_STATUS_CANCELLED, land_late)


def test_the_owner_stream_on_a_replica_hears_of_jobs_held_by_a_budget(
    mongo: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget spent on the leader moves the owner's queued jobs to the
    budget lane: WatchJobs on another replica tells each of them waiting."""
    # The replica's reads look back half a second before their last, not
    # seven: a move made two seconds after a job's submit is heard of only
    # by its own stamp.
    monkeypatch.setattr(remote, "CHANGE_MARGIN_US", 2 * remote.SETTLE_US)
    with (
        _leader_and_follower(mongo, tmp_path) as (leader, follower, _),
        leader.client("root", admin=True) as admin,
        follower.client("alice") as alice,
    ):
        admin.set_budget("alice", 5)  # one job of 500 words spends it
        stream = alice.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(), metadata=alice._metadata, timeout=30)
        next(stream)  # the first heartbeat: the stream is open
        alice.submit("topic", topic="spends it", word_count=500, extra={"demo_seconds": "2"})
        # Queued behind the first: the first claimed after it goes to the
        # budget lane by its claim, the other with the owner's ready jobs.
        behind = {alice.submit("topic", topic=f"held {i}", word_count=500).id for i in range(2)}
        waiting: set[str] = set()
        try:
            for event in stream:
                job = event.job
                if (
                    job.id in behind
                    and job.status == jobs_pb2.JOB_STATUS_QUEUED
                    and "budget" in job.progress.message
                ):
                    waiting.add(job.id)
                    if waiting == behind:
                        break
        except grpc.RpcError as exc:
            pytest.fail(f"the stream told {len(waiting)} of the 2 jobs waiting ({exc.code()})")
        finally:
            stream.cancel()


def test_an_owner_stream_delivers_each_jobs_change_once_whoever_tells_it_first() -> None:
    """The poller may read a change before the server that made it tells it:
    the owner's key passes each job's sequence once, never an older after a newer."""
    loop = asyncio.new_event_loop()
    hub = EventHub(loop)
    key = owner_key("alice")

    def change(job_id: str, seq: int, status: str = "PROCESSING") -> Event:
        return Event(key, seq, {"job_id": job_id, "seq": seq, "job": {"status": status}}, False)

    with hub.subscribe(key) as queue:
        hub.deliver(change("a", 3))  # the poller's snapshot
        hub.deliver(change("a", 3))  # then the same change, told here
        hub.deliver(change("a", 2))  # an older one, told late
        hub.deliver(change("b", 1, "QUEUED"))  # another job's own sequence
        hub.deliver(change("a", 4, "COMPLETED"))
        told = []
        while not queue.empty():
            event = queue.get_nowait()
            told.append((event.doc["job_id"], event.seq))
        assert hub.running_on_owner_keys() == []  # "a" said COMPLETED last; "b" QUEUED
    assert told == [("a", 3), ("b", 1), ("a", 4)]
    loop.close()


def test_a_jobs_newest_change_told_here_is_known_for_a_moment_while_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What stands for a job as it is (a watch's snapshot on a leader alone): its
    newest change told here, never an older one told late by another thread,
    nothing once it ended (its document may be gone), nothing after KNOWN_SECONDS."""
    now = [1000.0]
    monkeypatch.setattr(events_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    loop = asyncio.new_event_loop()
    hub = EventHub(loop)
    key = job_key("a")

    def change(seq: int, ended: bool = False) -> Event:
        return Event(key, seq, {"job_id": "a", "seq": seq, "job": {"seq": seq}}, ended)

    assert hub.known(key) is None
    hub.publish(change(2))
    hub.publish(change(1))  # told late
    known = hub.known(key)
    assert known is not None and known.seq == 2
    now[0] += events_module.KNOWN_SECONDS + 0.1
    assert hub.known(key) is None  # another server may have changed it since
    hub.publish(change(3))
    hub.publish(change(4, ended=True))
    hub.publish(change(3))  # told late, after its end
    assert hub.known(key) is None
    hub.publish(Event(owner_key("alice"), 5, {"job_id": "a"}, False))  # an owner's key: not a job's
    assert hub.known(owner_key("alice")) is None
    loop.close()


class SlowLeaseReads:
    """A leader lease whose wakeups read takes longer than its interval (a loaded
    database): each read leaves the next one due at once, as a read that
    outlasted WAKEUP_POLL_SECONDS does."""

    def __init__(self) -> None:
        self.signals = LeaderSignals(self, lambda: None, lambda: None)  # type: ignore[arg-type]
        self.signals.followers = True
        self.reads = 0

    def read_leader(self, lease_id: str) -> LeaderLease:
        self.reads += 1
        self.signals._read_at -= WAKEUP_POLL_SECONDS * 2  # stamped before the read
        return LeaderLease(0, 0, 2**62)  # a follower alive: the check is due every WAKEUP_POLL_SECONDS


class NothingReady:
    def next(self, polls: bool = True, alone: bool = False) -> None:
        return None

    def catch_up(self, alone: bool = False) -> bool:
        return False

    def fresh(self) -> None:
        pass


def test_a_claim_that_finds_nothing_returns_however_slow_the_wakeups_read() -> None:
    # With a follower alive and each wakeups read slower than its interval,
    # the read was due again at once: the claim looped, holding the claim
    # lock (no run could store its end) and never letting housekeeping run.
    claims = dispatcher.Dispatcher.__new__(dispatcher.Dispatcher)
    claims._claiming = threading.Lock()
    slow = SlowLeaseReads()
    claims._signals, claims._fair = slow.signals, NothingReady()  # type: ignore[assignment]
    claims._here, claims.concurrency, claims.gate = RunsHere(), 1, None
    claims._house = SimpleNamespace(elsewhere=0)  # type: ignore[assignment]
    claims._keeper = SimpleNamespace(is_leader=lambda: True)  # type: ignore[assignment]
    claims._last_end_us, claims.gap_us, claims.poll_seconds = 0, 0, 0.5
    ended = threading.Event()
    threading.Thread(target=lambda: (claims._claim_next(), ended.set()), daemon=True).start()
    assert ended.wait(5), f"still claiming after {slow.reads} wakeups reads"
