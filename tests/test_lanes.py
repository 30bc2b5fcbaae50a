"""Pacing and lanes: GENJOBS_JOB_GAP_SECONDS and GENJOBS_CONCURRENCY, through
real servers running the demo generator on a real nx-27017."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from genjobs.client import GenJobsClient
from genjobs.server.dispatch.dispatcher import Dispatcher
from genjobs.server.dispatch.keeper import LEADER_LEASE
from genjobs.server.dispatch.providers import Policy, ProviderGate
from genjobs.server.generators.base import GenerationFailed
from genjobs.server.generators.noop import NoopGenerator
from genjobs.server.model.clock import now_us
from genjobs.server.model.records import Params, Submission
from genjobs.server.model.vocabulary import Mode
from genjobs.server.runtime.config import Settings
from genjobs.server.storage.providers import ProviderStore
from genjobs.server.storage.queue import QueueStore, applied
from genjobs.server.storage.store import Store
from genjobs.v1 import jobs_pb2
from tests.harness import MongoServer, ServerThread, make_settings, scratch_store, serving, wait_for
from tests.test_dispatcher import final

S = jobs_pb2
Interval = tuple[int, int]  # (started_us, ended_us) as stored


def intervals(jobs: list[jobs_pb2.Job]) -> list[Interval]:
    """The stored (start, end) of each job, in order of start."""
    return sorted((j.start_time.ToMicroseconds(), j.end_time.ToMicroseconds()) for j in jobs)


def most_at_once(spans: list[Interval]) -> int:
    """The most intervals that overlap at any instant."""
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def processing(client: GenJobsClient) -> int:
    return len(client.list(statuses=["processing"]).jobs)


@contextmanager
def sampling(collection: pymongo.collection.Collection[dict[str, Any]]) -> Iterator[list[int]]:
    """The most PROCESSING jobs seen at once while the block runs (in a list of one)."""
    most = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            most[0] = max(most[0], len(list(collection.find({"status": "PROCESSING"}, {"_id": 1}))))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield most
    finally:
        stop.set()
        sampler.join()


@pytest.fixture
def db(mongo: MongoServer) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    yield client
    client.close()


def test_settings_refuse_no_lanes_and_a_negative_gap() -> None:
    with pytest.raises(SystemExit, match="GENJOBS_CONCURRENCY"):
        Settings.from_env({"GENJOBS_CONCURRENCY": "0"})
    with pytest.raises(SystemExit, match="GENJOBS_JOB_GAP_SECONDS"):
        Settings.from_env({"GENJOBS_JOB_GAP_SECONDS": "-1"})
    settings = Settings.from_env({"GENJOBS_CONCURRENCY": "3", "GENJOBS_JOB_GAP_SECONDS": "5"})
    assert (settings.concurrency, settings.job_gap_seconds) == (3, 5.0)
    assert (Settings().concurrency, Settings().job_gap_seconds) == (1, 0.0)


def test_the_gap_holds_between_the_end_of_a_job_and_the_start_of_the_next(
    mongo: MongoServer, tmp_path: Path
) -> None:
    gap = 0.6
    with serving(make_settings(mongo.uri, tmp_path, job_gap_seconds=gap)) as alice:
        ids = [alice.submit("topic", topic=f"paced {i}", extra={"demo_seconds": "0.1"}).id for i in range(3)]
        spans = intervals([final(alice, i) for i in ids])
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end + gap * 1e6


def test_the_gap_outlives_a_change_of_leader(
    mongo: MongoServer, tmp_path: Path, db: pymongo.MongoClient[dict[str, Any]]
) -> None:
    gap = 3.0  # longer than a standby needs to take the lease over
    settings = make_settings(mongo.uri, tmp_path, job_gap_seconds=gap)
    first = ServerThread(settings).start()
    second: ServerThread | None = None
    try:
        assert first.app is not None
        wait_for(first.app.dispatcher._is_leader)
        second = ServerThread(settings).start()
        with first.client() as alice:
            one = alice.submit("topic", topic="before", extra={"demo_seconds": "0.1"})
            two = alice.submit("topic", topic="after")
            ended = final(alice, one.id)
        first.stop()  # during the gap: the standby takes over and must keep it
        with second.client() as alice:
            started = final(alice, two.id)
        assert started.start_time.ToMicroseconds() >= ended.end_time.ToMicroseconds() + gap * 1e6
        lease = db[settings.db_name]["leases"].find_one({"_id": LEADER_LEASE})
        assert lease is not None and lease["last_end_us"] >= ended.end_time.ToMicroseconds()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_two_lanes_run_two_jobs_at_once_never_three(
    mongo: MongoServer, tmp_path: Path, db: pymongo.MongoClient[dict[str, Any]]
) -> None:
    settings = make_settings(mongo.uri, tmp_path, concurrency=2)
    with serving(settings) as alice, sampling(db[settings.db_name]["jobs"]) as most:
        ids = [alice.submit("topic", topic=f"lane {i}", extra={"demo_seconds": "0.4"}).id for i in range(6)]
        wait_for(lambda: processing(alice) == 2)
        jobs = [final(alice, i) for i in ids]
    assert all(j.status == S.JOB_STATUS_COMPLETED and j.attempt == 1 for j in jobs)
    assert most_at_once(intervals(jobs)) == 2
    assert most[0] == 2


def test_two_lanes_across_two_replicas_and_a_change_of_leader_never_run_three(
    mongo: MongoServer, tmp_path: Path, db: pymongo.MongoClient[dict[str, Any]]
) -> None:
    settings = make_settings(mongo.uri, tmp_path, concurrency=2)
    servers = [ServerThread(settings).start() for _ in range(2)]
    leases = db[settings.db_name]["leases"]
    jobs_collection = db[settings.db_name]["jobs"]
    try:
        clients = [s.client() for s in servers]
        with sampling(jobs_collection) as most:
            ids = [
                clients[i].submit("topic", topic=f"long {i}", extra={"demo_seconds": "3"}).id for i in (0, 1)
            ]
            wait_for(lambda: processing(clients[0]) == 2)
            leader, other = (s.app.dispatcher for s in servers if s.app is not None)
            if not leader._is_leader():
                leader, other = other, leader
            # The leader loses its lease while its two runs go on (as when its
            # renewals fail for a while), then the other replica is elected:
            # the former leader's runs must still count against the two lanes.
            far = now_us() + int(30 * 1e6)
            leases.update_one({"_id": LEADER_LEASE}, {"$set": {"holder": "gone", "until_us": far}})
            wait_for(lambda: not leader._is_leader())
            leases.update_one({"_id": LEADER_LEASE}, {"$set": {"holder": other.worker_id}})
            ids += [
                clients[i % 2].submit("topic", topic=f"short {i}", extra={"demo_seconds": "0.3"}).id
                for i in range(6)
            ]
            jobs = [final(clients[0], i, timeout=60) for i in ids]
        for c in clients:
            c.close()
    finally:
        for s in servers:
            s.stop()
    assert all(j.status == S.JOB_STATUS_COMPLETED and j.attempt == 1 for j in jobs)
    ran = {str(doc["_id"]): doc["worker"] for doc in jobs_collection.find({}, {"worker": 1})}
    assert {ran[i] for i in ids[:2]} == {leader.worker_id}
    assert {ran[i] for i in ids[2:]} == {other.worker_id}
    assert most_at_once(intervals(jobs)) == 2
    assert most[0] == 2


def test_cancel_stops_only_the_cancelled_of_two_running_jobs(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path, concurrency=2)
    with serving(settings) as alice:
        doomed = alice.submit("topic", topic="cancel me", extra={"demo_seconds": "30"})
        spared = alice.submit("topic", topic="keep me", extra={"demo_seconds": "3"})
        wait_for(lambda: processing(alice) == 2)
        alice.cancel(doomed.id)
        cancelled = wait_for(
            lambda: (j := alice.get(doomed.id)).status == S.JOB_STATUS_CANCELLED and j, timeout=5
        )
        done = final(alice, spared.id)
    assert done.status == S.JOB_STATUS_COMPLETED and done.attempt == 1 and not done.attempt_errors
    assert cancelled.end_time.ToMicroseconds() < done.end_time.ToMicroseconds()  # stopped while it ran


def test_shutdown_requeues_both_running_jobs_with_their_attempts_given_back(
    mongo: MongoServer, tmp_path: Path, db: pymongo.MongoClient[dict[str, Any]]
) -> None:
    settings = make_settings(mongo.uri, tmp_path, concurrency=2)
    server = ServerThread(settings).start()
    try:
        with server.client() as alice:
            ids = [
                alice.submit("topic", topic=f"long {i}", extra={"demo_seconds": "30"}).id for i in range(2)
            ]
            wait_for(lambda: processing(alice) == 2)
            assert server.app is not None
            assert sorted(server.app.dispatcher.running_job_ids()) == sorted(ids)
    finally:
        server.stop(grace=0.5)
    docs = list(db[settings.db_name]["jobs"].find({}))
    assert sorted(str(d["_id"]) for d in docs) == sorted(ids)
    assert all(d["status"] == "QUEUED" and d["queue"] == "ready" and d["attempt"] == 0 for d in docs)


# ---- a run's end and its lane's next claim in one command --------------------------


def test_back_to_back_jobs_run_once_each_in_order_and_never_overlap(
    mongo: MongoServer, tmp_path: Path
) -> None:
    """No-op jobs end and the next starts in one command: each runs once, in
    submission order, one at a time, and a watcher sees it start and end."""
    with serving(make_settings(mongo.uri, tmp_path, generator="noop")) as alice:
        ids = [alice.submit("topic", topic=f"quick {i}").id for i in range(40)]
        seen = [event.job.status for event in alice.watch(ids[-1])]
        jobs = [final(alice, i) for i in ids]
    assert seen[-1] == S.JOB_STATUS_COMPLETED
    assert all(j.status == S.JOB_STATUS_COMPLETED and j.attempt == 1 for j in jobs)
    assert all(j.progress.percentage == 100 for j in jobs)
    spans = [(j.start_time.ToMicroseconds(), j.end_time.ToMicroseconds()) for j in jobs]
    assert spans == sorted(spans)  # in submission order
    assert most_at_once(spans) == 1


def test_a_run_that_reported_progress_ends_with_its_lanes_next_claim(
    mongo: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed run writes progress as it goes; its outcome is stored over
    the job as its last write left it, with the next job's claim in the same
    command, and watchers see every step in order."""
    ends: list[tuple[str, bool, str]] = []  # (the ended job, its outcome stored, the job claimed)
    end_and_claim = QueueStore.end_and_claim

    def ending_and_claiming(store: QueueStore, ended: Any, changes: Any, ready: Any, *rest: Any) -> Any:
        after, claimed = end_and_claim(store, ended, changes, ready, *rest)
        ends.append((str(ended["_id"]), after is not None, str(claimed["_id"]) if claimed else ""))
        return after, claimed

    monkeypatch.setattr(QueueStore, "end_and_claim", ending_and_claiming)
    with serving(make_settings(mongo.uri, tmp_path, lease_seconds=30.0)) as alice:
        first = alice.submit("topic", topic="streamed", extra={"demo_seconds": "1"})
        wait_for(lambda: alice.get(first.id).progress.percentage > 0)  # a progress write is stored
        second = alice.submit("topic", topic="next")
        done = final(alice, second.id)
        assert done.status == jobs_pb2.JOB_STATUS_COMPLETED
        assert (first.id, True, second.id) in ends
        events = list(alice.watch(first.id, after_sequence=1))
        assert [e.sequence for e in events] == list(range(2, 2 + len(events)))
        assert jobs_pb2.JOB_EVENT_TYPE_PROGRESS in {e.type for e in events}
        assert (events[-1].job.status, events[-1].job.progress.percentage) == (
            jobs_pb2.JOB_STATUS_COMPLETED,
            100,
        )
        assert alice.get(first.id) == events[-1].job


@pytest.fixture
def store(mongo: MongoServer) -> Iterator[Store]:
    with scratch_store(mongo.uri, "end_and_claim") as store:
        yield store


def _running_and_ready(store: Store) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job just claimed, and a ready job as read."""
    submission = Submission(owner="alice", mode=Mode.TOPIC, params=Params(topic="tea"))
    first, second = store.jobs.new_job(submission), store.jobs.new_job(submission)
    store.jobs.insert_job(first)
    store.jobs.insert_job(second)
    running = store.queue.claim(first["_id"], "w", 10.0)
    ready = store.queue.jobs.find_one({"_id": second["_id"]})
    assert running is not None and ready is not None
    return running, ready


def test_end_and_claim_returns_both_documents_as_stored(store: Store) -> None:
    queue = store.queue
    running, ready = _running_and_ready(store)
    changes = queue.completion({"content": "done"}, running["started_us"])
    ended, claimed = queue.end_and_claim(running, changes, ready, "w", 10.0)
    assert ended == queue.jobs.find_one({"_id": running["_id"]})
    assert claimed == queue.jobs.find_one({"_id": ready["_id"]})
    assert claimed is not None and (claimed["status"], claimed["attempt"]) == ("PROCESSING", 1)


def test_end_and_claim_claims_nothing_changed_since_it_was_read(store: Store) -> None:
    queue = store.queue
    running, ready = _running_and_ready(store)
    queue.jobs.update_one(
        {"_id": ready["_id"]}, {"$set": {"rank": 0}, "$inc": {"seq": 1}}
    )  # e.g. a new priority
    changes = queue.completion({"content": "done"}, running["started_us"])
    ended, claimed = queue.end_and_claim(running, changes, ready, "w", 10.0)
    assert claimed is None and queue.jobs.find_one({"_id": ready["_id"]})["status"] == "QUEUED"  # type: ignore[index]
    assert ended == queue.jobs.find_one({"_id": running["_id"]}) and ended is not None
    assert ended["status"] == "COMPLETED"


def test_end_and_claim_leaves_an_outcome_that_changed_to_the_usual_write(store: Store) -> None:
    queue = store.queue
    running, ready = _running_and_ready(store)
    queue.fenced_update(running["_id"], running["epoch"], {"cancel_requested": True})  # a cancel request
    changes = queue.completion({"content": "done"}, running["started_us"])
    ended, claimed = queue.end_and_claim(running, changes, ready, "w", 10.0)
    assert ended is None and queue.jobs.find_one({"_id": running["_id"]})["status"] == "PROCESSING"  # type: ignore[index]
    assert claimed == queue.jobs.find_one({"_id": ready["_id"]})


def _idle_leader(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    unlimited: Callable[[dict[str, Any], bool], bool] = lambda job, alone: True,
) -> Dispatcher:
    """A dispatcher (its threads not started) that leads, has looked at the
    queue and found nothing ready; long intervals keep that look fresh."""
    dispatcher = Dispatcher(
        store,
        NoopGenerator(),
        "w1",
        lambda doc, kind: None,
        lease_seconds=600.0,
        poll_seconds=300.0,
        unlimited=unlimited,
    )
    monkeypatch.setattr(dispatcher, "_is_leader", lambda: True)
    dispatcher._house.needs_recovery = False
    assert dispatcher._fair.next() is None  # the first look: nothing is ready
    return dispatcher


def test_a_job_stored_running_takes_its_owners_turn_only_once_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher = _idle_leader(store, monkeypatch)
    job = store.jobs.new_job(Submission(owner="alice", mode=Mode.TOPIC, params=Params(topic="tea")))
    assert dispatcher.start_as_stored(job) is not None
    dispatcher.not_stored(job["_id"])  # a repeated request, say
    assert "alice" not in dispatcher._fair.candidates.turns
    claim = dispatcher.start_as_stored(job)
    assert claim is not None
    dispatcher.stored(applied(job, claim))
    assert "alice" in dispatcher._fair.candidates.turns
    assert dispatcher.start_as_stored(job) is None  # its lane runs it now


def test_a_job_is_stored_claimed_only_when_it_would_be_the_next_claim(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`start_as_stored`: the claim a job's insert may carry, only while this
    server leads alone, a lane is free, no job is known ready, and no budget
    limit applies. Each case takes one of those away, after a check that the
    job would be stored claimed just before."""
    limits = {"alice": False}  # whether a budget limit applies to the owner
    dispatcher = _idle_leader(store, monkeypatch, unlimited=lambda job, alone: not limits[job["owner"]])
    job = store.jobs.new_job(Submission(owner="alice", mode=Mode.TOPIC, params=Params(topic="tea")))

    def starts(doc: dict[str, Any] = job) -> bool:
        claim = dispatcher.start_as_stored(doc)
        if claim is None:
            return False
        assert claim["$set"]["status"] == "PROCESSING" and claim["$set"]["worker"] == "w1"
        dispatcher.not_stored(doc["_id"])
        return True

    assert starts()
    assert dispatcher.start_as_stored(job) is not None
    assert not starts()  # its one lane is held for the first
    dispatcher.not_stored(job["_id"])

    assert starts()
    limits["alice"] = True
    assert not starts()
    limits["alice"] = False

    assert starts()
    assert not starts({**job, "queue": "scheduled"})

    assert starts()
    dispatcher._signals.followers = True  # another server shares the database: its jobs may be ready
    assert not starts()
    dispatcher._signals.followers = False

    assert starts()
    dispatcher.offer(job["ck"] - 1, ObjectId(), "bob")  # a job known ready goes first
    assert not starts()


def _stored_running(store: Store, dispatcher: Dispatcher, owner: str) -> dict[str, Any]:
    """A job of `owner` submitted to `dispatcher` while it is idle: stored running, its lane taken."""
    job = store.jobs.new_job(Submission(owner=owner, mode=Mode.TOPIC, params=Params(topic="tea")))
    claim = dispatcher.start_as_stored(job)
    assert claim is not None
    running = applied(job, claim)
    store.jobs.insert_job(running)
    dispatcher.stored(running)
    return running


def _ending(
    dispatcher: Dispatcher, store: Store, running: dict[str, Any]
) -> tuple[threading.Thread, list[Any]]:
    """The lane of `running` ending it with nothing ready, in a thread: what it
    did (in a list of one) once the thread is done."""
    run = dispatcher._here.runs[running["_id"]]
    changes = store.queue.completion({"content": "done"}, running["started_us"])
    followed: list[Any] = []
    ending = threading.Thread(
        target=lambda: followed.append(dispatcher._end_and_follow(run, running, changes))
    )
    ending.start()
    # Until it waits (or, where nothing is waited for, has ended).
    wait_for(lambda: dispatcher._coming.waiting or not ending.is_alive())
    return ending, followed


def test_a_run_ending_before_the_next_jobs_insert_claims_that_job_with_its_outcome(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quick jobs submitted one after another: the next arrives while the lane
    runs, so it is stored queued, and the run ends before its insert is
    answered. The run waits for it: its outcome carries the next job's claim,
    which costs no command of its own."""
    dispatcher = _idle_leader(store, monkeypatch)
    dispatcher._coming.wait_seconds = 600.0  # the insert below answers when the test says
    running = _stored_running(store, dispatcher, "alice")
    following = store.jobs.new_job(Submission(owner="bob", mode=Mode.TOPIC, params=Params(topic="tea")))
    assert dispatcher.start_as_stored(following) is None  # its one lane is taken: stored queued
    ending, followed = _ending(dispatcher, store, running)
    store.jobs.insert_job(following)
    dispatcher.offer(following["ck"], following["_id"], "bob", following["rank"], following)
    ending.join(30)
    assert followed and followed[0].ended is not None and followed[0].ended["status"] == "COMPLETED"
    claimed = dispatcher._here.runs[following["_id"]]
    assert claimed.epoch == 1 and dispatcher._here.runs[running["_id"]].following is not None
    stored = store.queue.jobs.find_one({"_id": following["_id"]})
    assert stored is not None and (stored["status"], stored["worker"]) == ("PROCESSING", "w1")


def test_a_run_waits_no_longer_than_its_bound_while_submits_keep_coming(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs expected whose inserts never answer (failed, or repeated requests),
    one after another while the run waits: the wait ends at the bound of those
    expected as it began, later ones do not make it longer, and the run's
    outcome is then written alone."""
    dispatcher = _idle_leader(store, monkeypatch)
    dispatcher._coming.wait_seconds = 0.5
    running = _stored_running(store, dispatcher, "alice")

    def submit() -> None:
        lost = store.jobs.new_job(Submission(owner="bob", mode=Mode.TOPIC, params=Params(topic="tea")))
        assert dispatcher.start_as_stored(lost) is None  # the lane is taken: expected

    submit()
    ending, followed = _ending(dispatcher, store, running)
    pacing, submits = threading.Event(), 0
    while ending.is_alive() and submits < 600:  # a submit every 10 ms, for 6 s at most
        submit()
        submits += 1
        pacing.wait(0.01)
    assert not ending.is_alive(), "the run waited as long as submits kept coming"
    assert followed and followed[0].ended is None  # written the usual way, by the run
    assert dispatcher._here.runs[running["_id"]].following is None


def test_a_job_made_ready_another_way_ends_a_runs_wait_for_an_insert(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waiting for an expected job's insert claims with its outcome a job
    that became ready meanwhile by another way (a due retry, say) at once."""
    dispatcher = _idle_leader(store, monkeypatch)
    dispatcher._coming.wait_seconds = 600.0
    running = _stored_running(store, dispatcher, "alice")
    expected = store.jobs.new_job(Submission(owner="bob", mode=Mode.TOPIC, params=Params(topic="tea")))
    assert dispatcher.start_as_stored(expected) is None
    ending, followed = _ending(dispatcher, store, running)
    retried = store.jobs.new_job(Submission(owner="carol", mode=Mode.TOPIC, params=Params(topic="tea")))
    store.jobs.insert_job(retried)
    dispatcher.offer(retried["ck"], retried["_id"], "carol", retried["rank"], retried)
    ending.join(30)
    assert not ending.is_alive() and followed and followed[0].ended is not None
    assert dispatcher._here.runs[running["_id"]].following is not None
    assert dispatcher._here.runs[running["_id"]].following["_id"] == retried["_id"]


def test_the_gate_lets_a_job_be_stored_running_within_its_providers_rate_and_health(store: Store) -> None:
    """`hold_now`: a request counted against the provider's rate, given back
    when the job was not stored; never for a provider marked down (its probe
    is the dispatcher's)."""
    gate = ProviderGate(
        ProviderStore(store.database),
        ["only"],
        lambda model: "only",
        Policy(threshold=1),
        {"only": (60, None)},
    )
    job = {"params": {"topic": "tea"}}
    assert gate.hold_now(job)
    assert not gate.hold_now(job)  # 60 a minute: the next in a second
    gate.give_back(job)  # the first was not stored after all
    assert gate.hold_now(job)
    gate.give_back(job)
    gate.settle(job, failure=GenerationFailed("GENERATOR_UNREACHABLE", "refused", True))
    assert not gate.hold_now(job)
