"""Costs stay flat as history grows: the dispatcher and the hot paths read the
queue or what their caller named, never the history.

A database with 20,000 finished jobs and 10 queued ones; each hot path's
MongoDB commands are recorded and their filters explained. On nx-27017 the
plan says SCAN (the whole collection) or SEARCH (an index); on MongoDB the
plan names COLLSCAN, and executionStats counts the documents examined.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pymongo
import pytest
from bson import ObjectId
from pymongo import monitoring

from genjobs.server.model import clock
from genjobs.server.model.caller import Caller
from genjobs.server.model.channels import CHANNELS
from genjobs.server.notify.quota import MailQuota
from genjobs.server.services.budgets import Budgets
from genjobs.server.services.queue_cap import QueueCap
from genjobs.server.storage.archive import Retention
from genjobs.server.storage.budgets import BudgetStore
from genjobs.server.storage.database import Database
from genjobs.server.storage.paging import TOTAL_SIZE_CAP, JobFilter
from genjobs.server.storage.queue import BACKOFF, HELD, READY
from genjobs.server.storage.schedules import ScheduleStore
from genjobs.server.storage.store import Store
from tests.harness import MongoServer, ServerThread, seed_job
from tests.test_cli import Cli

HISTORY = 20_000
QUEUED = 10
BATCH = 5000
PARAMS = {"topic": "t", "keywords": ["k"], "word_count": 800, "tone": "", "source_text": "", "extra": {}}
# Storing the history takes about 10 s on nx-27017; give a loaded machine room.
pytestmark = pytest.mark.timeout(600)
# Commands whose filter the planner answers; the rest (insert, getMore...) read no history.
FILTERED = {
    "find": "filter",
    "aggregate": "pipeline",
    "findAndModify": "query",
    "update": "updates",
    "delete": "deletes",
    "count": "query",
}


class Recorder(monitoring.CommandListener):
    """Every (collection, filter) the client sends, while `on`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.updates: list[dict[str, Any]] = []  # the filters of update commands

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name not in FILTERED:
            return
        command, collection = event.command, event.command[name]
        if name == "find":
            self.sent.append((collection, dict(command.get("filter", {}))))
        elif name in ("findAndModify", "count"):
            self.sent.append((collection, dict(command.get("query", {}))))
        elif name == "aggregate":
            for stage in command["pipeline"]:
                if "$match" in stage:
                    self.sent.append((collection, dict(stage["$match"])))
        else:
            for statement in command[FILTERED[name]]:
                self.sent.append((collection, dict(statement["q"])))
                if name == "update":
                    self.updates.append(dict(statement["q"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def grown(mongo: MongoServer) -> Iterator[tuple[Store, Recorder]]:
    """A Store over 20,000 finished jobs and 10 queued ones, its commands recorded."""
    recorder = Recorder()
    db_name = "t_growth_" + uuid.uuid4().hex[:8]
    connection = Database(mongo.uri, db_name)
    # The store's collections through a client that records what it sends.
    listening: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo.uri, event_listeners=[recorder]
    )
    database = listening[db_name]
    connection.jobs, connection.events = database["jobs"], database["job_events"]
    connection.bulk_jobs, connection.notifications = database["bulk_jobs"], database["notifications"]
    connection.turns = database["turns"]
    connection.jobs_archive = database["jobs_archive"]
    connection.events_archive = database["job_events_archive"]
    store = Store.over(connection)
    for _ in range(HISTORY // BATCH):
        docs = [seed_job(store, "big", PARAMS) for _ in range(BATCH)]
        for doc in docs:
            doc.update(store.queue.completion({"content": "x"}, doc["ck"]), queue="none")
        store.database.jobs.insert_many(docs)
    # Queued: 3 of a small user's, the rest the big user's.
    owners = ["small"] * 3 + ["big"] * (QUEUED - 3)
    store.database.jobs.insert_many([seed_job(store, owner, PARAMS) for owner in owners])
    # Indexed after the inserts: one pass each, several times faster than
    # keeping them up to date document by document.
    store.ensure_indexes()
    recorder.sent.clear()
    yield store, recorder
    listening.drop_database(db_name)
    listening.close()
    store.close()


def scans(plan: dict[str, Any]) -> list[str]:
    """What in an explain() answer reads a whole collection (nx-27017's SCAN, MongoDB's COLLSCAN)."""
    winning = plan["queryPlanner"]["winningPlan"]
    if isinstance(winning, list):  # nx-27017: SQLite's plan lines
        details = [step.get("detail", "") for step in winning]
        # "SCAN json_each VIRTUAL TABLE" walks one document's array, not the collection.
        return [d for d in details if d.startswith("SCAN ") and "VIRTUAL TABLE" not in d]
    found: list[str] = []

    def walk(stage: dict[str, Any]) -> None:
        if stage.get("stage") == "COLLSCAN":
            found.append("COLLSCAN")
        for child in [stage.get("inputStage"), *stage.get("inputStages", [])]:
            if child:
                walk(child)

    walk(winning)
    return found


def explain(store: Store, collection: str, query: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = store.database.db.command(
        "explain", {"find": collection, "filter": query}, verbosity="executionStats"
    )
    return answer


def queries_of(
    grown: tuple[Store, Recorder], call: Callable[[Store], object]
) -> list[tuple[str, dict[str, Any]]]:
    """The filters `call` sent."""
    store, recorder = grown
    recorder.sent.clear()
    call(store)
    return list(recorder.sent)


def test_the_claim_query_reads_the_queue_not_the_history(grown: tuple[Store, Recorder]) -> None:
    store, _ = grown
    sent = queries_of(grown, lambda s: s.queue.runnable(64))
    assert len(sent) == 1
    collection, query = sent[0]
    plan = explain(store, collection, query)
    assert scans(plan) == [], f"the candidate query {query} scans: {plan['queryPlanner']['winningPlan']}"
    stats = plan.get("executionStats", {})
    if stats.get("totalDocsExamined"):  # MongoDB counts what it read; nx-27017 answers 0
        assert stats["totalDocsExamined"] <= 64
    assert len(store.queue.runnable(64)) == QUEUED


def hot_paths(store: Store) -> dict[str, Callable[[Store], object]]:
    """Each hot path, as the RPCs and the dispatcher call the store."""
    big_job = str(store.database.jobs.find_one({"owner": "big", "status": "COMPLETED"}, {"_id": 1})["_id"])  # type: ignore[index]
    queued = store.queue.runnable(QUEUED)[-3:]  # the big user's
    first = store.jobs.list_jobs("big", JobFilter(), 50, "")
    now_us = clock.now_us()
    return {
        "GetJob": lambda s: s.jobs.get("big", big_job),
        "ListJobs first page, big user": lambda s: s.jobs.list_jobs("big", JobFilter(), 50, ""),
        "ListJobs later page, big user": lambda s: s.jobs.list_jobs("big", JobFilter(), 50, first.next_token),
        "ListJobs, small user": lambda s: s.jobs.list_jobs("small", JobFilter(), 50, ""),
        "ListJobs by status": lambda s: s.jobs.list_jobs("small", JobFilter(statuses=["QUEUED"]), 50, ""),
        "CancelJob": lambda s: s.jobs.cancel("big", str(queued[0][1])),
        "claim candidates": lambda s: s.queue.runnable(64),
        "claim": lambda s: s.queue.claim(queued[1][1], "w", 10.0),
        "progress and outcome": lambda s: s.queue.fenced_update(queued[1][1], 1, {"updated_us": now_us}),
        "lease renewal": lambda s: s.queue.renew_job_lease(queued[1][1], 1, 10.0),
        "expired-lease recovery": lambda s: s.queue.processing_jobs(),
        "due backoff and scheduled": lambda s: s.queue.due_waiting(now_us),
        "when the next backoff or scheduled job falls due": lambda s: s.queue.next_due(now_us),
        "promotion to ready": lambda s: s.queue.make_ready(ObjectId(), BACKOFF),
        "fair share: an owner's head": lambda s: s.queue.owner_head("big", 64),
        "fair share: entered the ready lane": lambda s: s.queue.entered_ready(
            (now_us - 2_000_000, None), now_us, 1000
        ),
        "fair share: the rest of a run cut by a page": lambda s: s.queue.entered_ready(
            (now_us - 2_000_000, ObjectId()), now_us, 1000
        ),
        "the leader's wakeups": lambda s: s.queue.read_leader("dispatcher"),
        "fair share: rebuild": lambda s: s.queue.ready_owners(),
        "fair share: turns": lambda s: (
            s.queue.turns_of(["big", "small"]),
            s.queue.save_turns({"big": now_us, "small": now_us}),
        ),
        "FIFO candidates with owners": lambda s: s.queue.runnable_heads(64),
        "ListJobs by priority": lambda s: s.jobs.list_jobs("small", JobFilter(priorities=["HIGH"]), 50, ""),
        "retention purge": lambda s: s.purge_expired(now_us - 86400 * 10**6),
        "WatchJob replay": lambda s: s.events.events_after(big_job, 0),
        "remote-event poller": lambda s: (
            s.jobs.jobs_by_ids([big_job]),
            s.events.events_since([big_job], now_us),
        ),
        "GetBulkJob items": lambda s: s.bulks.bulk_items([str(ObjectId())], "big"),
        "ListBulkJobs items": lambda s: s.bulks.bulk_items([str(ObjectId()), str(ObjectId())]),
        "RunBulkOperation delete": lambda s: s.jobs.delete_completed([ObjectId(), ObjectId()]),
        "bulk lanes": lambda s: s.bulks.set_item_lanes(str(ObjectId()), [BACKOFF], BACKOFF),
        "bulk recovery": lambda s: (
            s.bulks.unsettled_bulks(now_us),
            s.bulks.bulks_with_open_items([str(ObjectId())]),
        ),
        "notifications": lambda s: (
            s.bulks.unstored_notifications(now_us),
            [s.notifications.due_deliveries(channel, now_us) for channel in CHANNELS],
            s.jobs.unnotified_jobs(now_us),
        ),
        "notifications of owners with room": lambda s: [
            s.notifications.due_deliveries(channel, now_us, 500, ["big", "small"]) for channel in CHANNELS
        ],
        "mail quota": lambda s: MailQuota(s.database.db["mail_quota"], 100).take("big", now_us),
        "ListBulkJobs": lambda s: s.bulks.list_bulk("big", [], "", 50, ""),
        "ListJobs by schedule": lambda s: s.jobs.list_jobs(
            "big", JobFilter(schedule_id=str(ObjectId())), 50, ""
        ),
        "notifications page": lambda s: s.notifications.list_notifications("big", 50, ""),
        "ListJobs with the archive": lambda s: s.jobs.list_jobs("big", JobFilter(show_archived=True), 50, ""),
        "ListJobs archived only": lambda s: s.jobs.list_jobs("big", JobFilter(archived_only=True), 50, ""),
        "GetJob of an archived job": lambda s: s.archive.document("big", ObjectId()),
        "archive move": lambda s: s.archive.move_batch("COMPLETED", now_us - 86400 * 10**6, 200),
        "archive retention": lambda s: s.archive.purge(Retention(archive_days=1.0), now_us, 1.0),
        "WatchJob replay of an archived job": lambda s: s.archive.events_after(big_job, 0),
    }


def test_lane_moves_update_each_job_by_its_id(grown: tuple[Store, Recorder]) -> None:
    # An update filtered on anything but _id reads the whole collection on nx-27017.
    store, recorder = grown
    bulk_id = str(ObjectId())
    items = [seed_job(store, "small", PARAMS, bulk_job_id=bulk_id, queue_position=i) for i in (1, 2)]
    store.database.jobs.insert_many(items)
    recorder.updates.clear()
    assert store.bulks.set_item_lanes(bulk_id, [READY], HELD) == 2  # a pause
    store.bulks.resume_items(bulk_id)
    lanes = [d["queue"] for d in store.database.jobs.find({"bulk_job_id": bulk_id})]
    store.database.jobs.delete_many({"bulk_job_id": bulk_id})
    assert lanes == [READY, READY]
    assert recorder.updates and all("_id" in query for query in recorder.updates), recorder.updates


def test_every_hot_path_searches_an_index(grown: tuple[Store, Recorder]) -> None:
    store, _ = grown
    scanning = {}
    for name, call in hot_paths(store).items():
        for collection, query in queries_of(grown, call):
            found = scans(explain(store, collection, query))
            if found:
                scanning[name] = (collection, query, found)
    assert scanning == {}


def test_schedule_and_template_queries_search_an_index(grown: tuple[Store, Recorder]) -> None:
    """The leader's look for due schedules (every second) and the schedule and
    template RPCs read an index, and ListJobs of a schedule's runs reads that
    schedule's jobs, not the owner's 20,000."""
    store, _ = grown
    schedules = ScheduleStore(store.database)
    schedules.ensure_indexes()
    listening = store.database.jobs.database  # the client that records what it sends
    schedules.schedules, schedules.templates = listening["schedules"], listening["templates"]
    schedules.counts = listening["owner_counts"]
    now_us = clock.now_us()
    paths: dict[str, Callable[[Store], object]] = {
        "due schedules": lambda s: schedules.due_schedules(now_us, 1000, 100),
        "a schedule's place under the cap": lambda s: schedules.take_place("schedules", "big", 100, "X"),
        "its place given back": lambda s: schedules.give_place("schedules", "big"),
        "ListSchedules": lambda s: schedules.list_schedules("big", [], 50, ""),
        "GetSchedule": lambda s: schedules.schedules.find_one({"_id": ObjectId(), "owner": "big"}),
        "ListTemplates": lambda s: schedules.list_templates("big", 50, ""),
        "a tick's advance": lambda s: schedules.advance(ObjectId(), now_us, {"last_error": ""}, ran=False),
    }
    for name, call in paths.items():
        for collection, query in queries_of(grown, call):
            assert scans(explain(store, collection, query)) == [], (name, query)
    by_schedule = queries_of(
        grown, lambda s: s.jobs.list_jobs("big", JobFilter(schedule_id=str(ObjectId())), 50, "")
    )
    plan = explain(store, *by_schedule[0])["queryPlanner"]["winningPlan"]
    if isinstance(plan, list):  # nx-27017: the schedule_id index, not the owner's
        assert any("schedule_id" in step.get("detail", "") for step in plan), plan


def test_list_total_counts_up_to_the_cap(server: ServerThread, mongo: MongoServer) -> None:
    """A total_size reads what it counts: past TOTAL_SIZE_CAP jobs it says "the cap or more"."""
    store = Store(mongo.uri, server.settings.db_name)
    docs = [seed_job(store, "alice", PARAMS) for _ in range(TOTAL_SIZE_CAP + 5)]
    for doc in docs:
        doc.update(store.queue.completion({"content": "x"}, doc["ck"]), queue="none")
    store.database.jobs.insert_many(docs)
    store.close()
    with server.client("alice") as alice:
        first = alice.list(page_size=10)
        assert first.total_size == TOTAL_SIZE_CAP
        assert len(first.jobs) == 10
        assert alice.list(page_size=10, page_token=first.next_page_token).total_size == TOTAL_SIZE_CAP
        assert alice.list(page_size=10, statuses=[3]).total_size == TOTAL_SIZE_CAP
    with server.client("bob") as bob:
        assert bob.list().total_size == 0
    shown = Cli(server)("ls", "--limit", "5").output
    assert "5 of 1,000+ shown" in shown  # the cap is "or more", never an exact count


def test_list_total_keeps_the_created_filter(server: ServerThread) -> None:
    """The first page's total counts with every filter, the creation range too."""
    with server.client("carol") as carol:
        jobs = [carol.submit("topic", topic=f"t{i}") for i in range(3)]
        since = jobs[1].create_time.ToDatetime(tzinfo=datetime.UTC)
        page = carol.list(page_size=1, created_after=since)
        assert page.total_size == 2


def test_budget_queries_search_an_index(grown: tuple[Store, Recorder]) -> None:
    """The budget rules read what changed, never every limit: the submit check
    and the dispatcher's admission re-read the limits every 1.5 s, and a
    deployment may cap thousands of owners."""
    store, _ = grown
    budget_store = BudgetStore(store)
    budget_store.ensure_indexes()
    listening = store.database.jobs.database  # the client that records what it sends
    budget_store.budgets, budget_store.usage = listening["budgets"], listening["usage"]
    for i in range(50):
        budget_store.set_budget(f"capped{i}", "", 500)
    budget_store.set_budget("big", "", 500)
    budgets = Budgets(budget_store, lambda job, kind: None, QueueCap(store.jobs, 1000))
    big_queued = store.database.jobs.find_one({"owner": "big", "status": "QUEUED"})
    assert big_queued is not None

    def fresh(call: Callable[[], object]) -> Callable[[Store], object]:
        def run(s: Store) -> object:
            budgets.stale()
            return call()

        return run

    paths: dict[str, Callable[[Store], object]] = {
        "the first read of the limits": lambda s: budgets.check_submit("small", "", 1),
        "SubmitJob's check": fresh(lambda: budgets.check_submit("big", "", 1)),
        "the dispatcher's admission": fresh(lambda: budgets.admit(big_queued)),
        "release": fresh(budgets.release),
        "GetUsage": lambda s: budgets.usage(Caller("admin", admin=True), "big"),
        "SetBudget": lambda s: budgets.set_budget(Caller("admin", admin=True), "big", "", 1000),
        "spend recovery": lambda s: budgets.recover(),
    }
    for name, call in paths.items():
        sent = queries_of(grown, call)
        assert sent, name
        for collection, query in sent:
            assert scans(explain(store, collection, query)) == [], (name, collection, query)
    listening["budgets"].drop()
