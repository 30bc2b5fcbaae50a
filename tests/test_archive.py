"""The archive (issue 27): finished jobs move out of the live collections and
stay findable; retry and delete reach them; stats keep counting them; a
crash in the middle of a move loses and doubles nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from genjobs.client import GenJobsClient, NotFound
from genjobs.server.model import clock
from genjobs.server.services.budgets import Budgets
from genjobs.server.storage.archive import BATCH
from genjobs.server.storage.store import Store
from genjobs.v1 import jobs_pb2
from tests.harness import MongoServer, ServerProcess, ServerThread, make_settings, seed_job, serving, wait_for
from tests.test_cli import Cli

COMPLETED, FAILED = jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED
SECOND_DAYS = 1 / 86400


def archived(client: GenJobsClient, job_id: str) -> bool:
    return client.get(job_id).HasField("archive_time")


def ids(client: GenJobsClient, **filters: Any) -> list[str]:
    return [job.id for job in client.iter_jobs(**filters)]


def test_completed_jobs_move_to_the_archive_and_stay_findable(mongo: MongoServer, tmp_path: Path) -> None:
    # Completed jobs move after a second; failed ones would after an hour.
    settings = make_settings(
        mongo.uri, tmp_path, retention_days=1.0 * SECOND_DAYS, archive_failed_days=3600 * SECOND_DAYS
    )
    server = ServerThread(settings).start()
    try:
        with server.client("alice") as alice:
            _moves_and_stays_findable(alice, Cli(server))
    finally:
        server.stop()


def _moves_and_stays_findable(alice: GenJobsClient, cli: Cli) -> None:
    done = alice.submit("topic", topic="moves")
    failed = alice.submit("topic", topic="stays", extra={"demo_fail": "permanent"})
    wait_for(lambda: alice.get(failed.id).status == FAILED)
    wait_for(lambda: alice.get(done.id).status == COMPLETED)
    wait_for(lambda: archived(alice, done.id), timeout=15)

    job = alice.get(done.id)  # GetJob finds it, whole, with its archive time
    assert job.status == COMPLETED and job.result.content
    assert job.archive_time.ToMicroseconds() >= job.end_time.ToMicroseconds()
    assert not alice.get(failed.id).HasField("archive_time")
    assert ids(alice) == [failed.id]  # the live jobs only
    assert ids(alice, show_archived=True) == [failed.id, done.id]  # newest first
    assert ids(alice, archived_only=True) == [done.id]
    assert alice.list(show_archived=True).total_size == 2

    # The command line: ls with each flag, show, export.
    listed = cli.json("ls")["jobs"]
    assert [j["id"] for j in listed] == [failed.id]  # type: ignore[index]
    listed = cli.json("ls", "--archived")["jobs"]
    assert [j["id"] for j in listed] == [failed.id, done.id]  # type: ignore[index]
    listed = cli.json("ls", "--archived-only")["jobs"]
    assert [(j["id"], bool(j["archive_time"])) for j in listed] == [(done.id, True)]  # type: ignore[index]
    assert "archived" in cli("show", done.id).stdout
    # WatchJob replays an archived job's events from the archive.
    replayed = [e.sequence for e in alice.watch(done.id, after_sequence=1)]
    assert replayed and replayed[0] == 2 and replayed == sorted(set(replayed))
    assert list(alice.watch(done.id))[-1].job.status == COMPLETED
    exported = cli("export", "--csv", "-", "--archived").stdout
    assert done.id in exported and failed.id in exported
    assert failed.id not in cli("export", "--csv", "-", "--archived-only").stdout


def test_stats_and_usage_count_archived_jobs(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path, retention_days=2.0 * SECOND_DAYS)
    with serving(settings) as alice:
        done = [alice.submit("topic", topic=f"t{i}") for i in range(2)]
        wait_for(lambda: all(alice.get(j.id).status == COMPLETED for j in done))
        before = alice.stats()
        assert before.total_jobs == 2 and before.total_cost_cents > 0
        spent = wait_for(lambda: alice.usage().spent_cents)  # the month's spend, once counted
        wait_for(lambda: all(archived(alice, j.id) for j in done), timeout=15)
        after = alice.stats()
        assert ids(alice) == []  # both moved
        assert after.total_jobs == before.total_jobs
        assert after.total_cost_cents == before.total_cost_cents
        assert list(after.by_status) == list(before.by_status)
        assert after.mean_duration_seconds == pytest.approx(before.mean_duration_seconds)
        assert alice.usage().spent_cents == spent == before.total_cost_cents


def test_retry_and_delete_an_archived_job(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(
        mongo.uri, tmp_path, retention_days=3600 * SECOND_DAYS, archive_failed_days=1.0 * SECOND_DAYS
    )
    with serving(settings) as alice:
        first = alice.submit("topic", topic="again", extra={"demo_fail": "permanent"})
        second = alice.submit("topic", topic="gone", extra={"demo_fail": "permanent"})
        wait_for(lambda: archived(alice, first.id) and archived(alice, second.id), timeout=15)

        retry = alice.retry(first.id)  # a live job, queued
        assert retry.retry_of == first.id and not retry.HasField("archive_time")
        assert alice.retry(first.id).id == retry.id  # one retry per job, as for live ones

        alice.delete(second.id)
        with pytest.raises(NotFound):
            alice.get(second.id)
        with pytest.raises(NotFound):
            alice.delete(second.id)
        assert second.id not in ids(alice, show_archived=True)


def test_the_archive_forgets_after_its_own_retention(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(
        mongo.uri, tmp_path, retention_days=1.0 * SECOND_DAYS, archive_retention_days=1.0 * SECOND_DAYS
    )
    with serving(settings) as alice:
        done = alice.submit("topic", topic="brief")

        def forgotten() -> bool:
            try:
                alice.get(done.id)
            except NotFound:
                return True
            return False

        wait_for(forgotten, timeout=20)
        assert ids(alice, show_archived=True) == []


def seed_finished(store: Store, count: int, ended_us: int, owner: str = "alice") -> list[str]:
    """`count` completed jobs of `owner` that ended at `ended_us`, each with an event."""
    docs = []
    for i in range(count):
        doc = seed_job(store, owner, {"topic": f"seeded {i}", "word_count": 300})
        doc.update(status="COMPLETED", queue="none", ended_us=ended_us, cost_cents=1)
        docs.append(doc)
    store.jobs.jobs.insert_many(docs)
    store.events.insert_events([store.events.event_doc(d, "STATUS_CHANGED") for d in docs])
    return [str(d["_id"]) for d in docs]


def test_listing_pages_across_live_and_archived_jobs(server: ServerThread, mongo: MongoServer) -> None:
    store = Store(mongo.uri, server.settings.db_name)
    old = clock.now_us() - 10**9
    seeded = seed_finished(store, 9, old)
    # Every other job archived, and one caught between copy and delete (a crash there).
    moved = [oid for i, oid in enumerate(seeded) if i % 2]
    store.archive.jobs.insert_many(
        [{**store.jobs.document(None, oid), "archived_us": clock.now_us()} for oid in moved]
    )
    store.jobs.jobs.delete_many({"_id": {"$in": [ObjectId(oid) for oid in moved[1:]]}})
    with server.client("alice") as alice:
        newest_first = list(reversed(seeded))
        for size in (1, 2, 4, 9, 20):
            assert ids(alice, show_archived=True, page_size=size) == newest_first
        assert ids(alice, archived_only=True, page_size=2) == list(reversed(moved))
        assert ids(alice, page_size=3) == [oid for oid in newest_first if oid not in moved[1:]]
        # A token of one listing is refused by another (the flags are filters).
        token = alice.list(show_archived=True, page_size=2).next_page_token
        with pytest.raises(Exception, match="page_token"):
            alice.list(page_size=2, page_token=token)
        # The next batch finishes the interrupted move: each job once.
        store.archive.move_batch("COMPLETED", clock.now_us(), BATCH)
        assert store.jobs.jobs.count_documents({}) == 0
        assert sorted(str(d["_id"]) for d in store.archive.jobs.find({}, {"_id": 1})) == sorted(seeded)
        assert ids(alice, show_archived=True, page_size=4) == newest_first
        # total_size counts each side: a job caught between copy and delete counted twice.
        assert alice.list(show_archived=True, page_size=2).total_size == 9
    store.close()


def test_a_move_killed_mid_batch_loses_and_doubles_nothing(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path, retention_days=1.0 * SECOND_DAYS)
    store = Store(mongo.uri, settings.db_name)
    store.ensure_indexes()
    seeded = set(seed_finished(store, 6 * BATCH, clock.now_us() - 10**9))
    events_before = store.events.events.count_documents({})
    server = ServerProcess(settings, tmp_path / "server.log").start()

    def live_ids() -> set[str]:
        return {str(d["_id"]) for d in store.jobs.jobs.find({}, {"_id": 1})}

    def archive_ids() -> set[str]:
        return {str(d["_id"]) for d in store.archive.jobs.find({}, {"_id": 1})}

    try:
        wait_for(lambda: store.archive.jobs.estimated_document_count() >= 1, timeout=30, interval=0.005)
        server.kill()  # kill -9, the move under way
        live, archive = live_ids(), archive_ids()
        assert live | archive == seeded  # nothing lost
        assert len(live & archive) <= BATCH  # at most the batch in flight is in both
        assert live, "the move finished before the kill: seed more jobs"
        server = ServerProcess(settings, tmp_path / "server2.log").start()
        wait_for(lambda: not live_ids(), timeout=60)
    finally:
        server.kill()
    archive = [str(d["_id"]) for d in store.archive.jobs.find({}, {"_id": 1})]
    assert len(archive) == len(seeded) and set(archive) == seeded  # each once
    assert store.archive.events.count_documents({}) == events_before
    assert store.events.events.count_documents({}) == 0
    store.close()


def test_a_move_whose_events_were_copied_already_completes(mongo: MongoServer, tmp_path: Path) -> None:
    # A move stopped between its copy and its deletes (a crash, a timeout) is done again.
    store = Store(mongo.uri, make_settings(mongo.uri, tmp_path).db_name)
    store.ensure_indexes()
    seeded = seed_finished(store, 3, clock.now_us() - 10**9)
    store.archive.events.insert_many(list(store.events.events.find()))
    assert store.archive.move_batch("COMPLETED", clock.now_us(), BATCH) == 3
    assert store.events.events.count_documents({}) == 0
    assert [e["job"]["status"] for oid in seeded for e in store.archive.events_after(oid, 0)] == [
        "COMPLETED"
    ] * 3
    store.close()


def test_a_bulk_job_keeps_its_counts_when_its_items_are_archived(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(
        mongo.uri, tmp_path, retention_days=1.0 * SECOND_DAYS, archive_failed_days=1.0 * SECOND_DAYS
    )
    with serving(settings) as alice:
        failing = {"topic": "bad", "extra": {"demo_fail": "permanent"}}
        items = [{"topic": f"item {i}"} for i in range(9)] + [failing]
        bulk = alice.create_bulk("topic", items)
        wait_for(lambda: alice.get_bulk(bulk.id).remaining_items == 0, timeout=60)
        before = alice.get_bulk(bulk.id)
        assert (before.completed_items, before.failed_items) == (9, 1)
        wait_for(lambda: ids(alice, bulk_job_id=bulk.id) == [], timeout=20)  # every item archived
        after = alice.get_bulk(bulk.id)
        assert (after.total_items, after.completed_items, after.failed_items) == (10, 9, 1)
        assert [i.status for i in after.items] == [i.status for i in before.items]


def test_a_slow_sweep_holds_no_retry_back(
    mongo: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's sweeps (retention, the archive, the sweepers) may take
    seconds: a retry that falls due meanwhile starts on time."""
    sweeping, done_sweeping, swept = threading.Event(), threading.Event(), threading.Event()

    def slow_recover(self: Budgets) -> None:
        sweeping.set()
        done_sweeping.wait(30)
        swept.set()

    monkeypatch.setattr(Budgets, "recover", slow_recover)  # one of the sweepers
    settings = make_settings(mongo.uri, tmp_path, retention_days=1.0 * SECOND_DAYS)
    server = ServerThread(settings).start()
    try:
        with server.client("alice") as alice:
            assert sweeping.wait(10)
            flaky = {"demo_fail": "transient", "demo_fail_attempts": "1"}  # a retry after the first attempt
            job = alice.submit("topic", topic="flaky", extra=flaky)
            wait_for(lambda: alice.get(job.id).status == jobs_pb2.JOB_STATUS_COMPLETED, timeout=10)
            assert not swept.is_set()  # the sweep still under way
    finally:
        done_sweeping.set()
        server.stop()
