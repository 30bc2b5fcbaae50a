"""The queued-jobs cap's places (services/queue_cap.py, storage/places.py):
the rule from memory over a reader of our own, and the places as stored on
nx-27017 (unique per owner, given back by the write that ends a job)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from genjobs.server.model.errors import ServiceError
from genjobs.server.model.states import Status
from genjobs.server.services.queue_cap import TRIES, QueueCap
from genjobs.server.storage.places import PLACE, PlaceTaken, place_number
from genjobs.server.storage.queue import READY
from genjobs.server.storage.store import Store
from tests.harness import MongoServer, scratch_store, seed_job


class Reader:
    """Open jobs by owner, as `JobStore.open_places` reads them, and how often it was asked."""

    def __init__(self) -> None:
        self.open: dict[str, dict[ObjectId, int | None]] = {}
        self.reads = 0

    def open_places(self, owner: str) -> dict[ObjectId, int | None]:
        self.reads += 1
        return dict(self.open.get(owner, {}))

    def free_ended(self, places: list[str]) -> int:
        return 0  # every job here is open

    def insert(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store `docs` as the database would: PlaceTaken for places held."""
        taken = []
        for doc in docs:
            owner, number = doc[PLACE].rsplit("#", 1)
            held = self.open.setdefault(owner, {})
            if int(number) in held.values():
                taken.append(doc)
            else:
                held[doc["_id"]] = int(number)
        if taken:
            raise PlaceTaken(taken)
        return docs


def _new(count: int = 1) -> list[dict[str, Any]]:
    return [{"_id": ObjectId()} for _ in range(count)]


def test_the_cap_is_filled_exactly_and_refused_past_it_with_one_read() -> None:
    reader = Reader()
    cap = QueueCap(reader, 3)
    for _ in range(3):
        cap.store("alice", _new(), reader.insert)
    assert sorted(n for n in reader.open["alice"].values() if n is not None) == [0, 1, 2]
    assert reader.reads == 1  # the owner's first submit; the next ones from memory
    with pytest.raises(ServiceError) as refused:
        cap.store("alice", _new(), reader.insert)
    assert refused.value.reason == "QUEUED_JOBS_LIMIT"
    for _ in range(5):
        with pytest.raises(ServiceError):
            cap.store("alice", _new(), reader.insert)
    assert reader.reads == 1  # refused by the read of a moment ago, not a read a call
    older = QueueCap(reader, 3, full_seconds=0.0)
    with pytest.raises(ServiceError):
        older.store("alice", _new(), reader.insert)
    assert reader.reads == 2  # a refusal after a read older than full_seconds reads first
    cap.store("bob", _new(3), reader.insert)  # owners apart


def test_a_job_that_ended_here_frees_its_place_without_a_read() -> None:
    reader = Reader()
    cap = QueueCap(reader, 2)
    docs = _new(2)
    cap.store("alice", docs, reader.insert)
    ended = docs[0]["_id"]
    del reader.open["alice"][ended]
    cap.unplaced("alice", [ended])  # as `Jobs.record` says of a job that ended here
    cap.store("alice", _new(), reader.insert)
    assert reader.reads == 1


def test_jobs_of_older_versions_without_a_place_still_count() -> None:
    reader = Reader()
    reader.open["alice"] = {ObjectId(): None, ObjectId(): None}
    cap = QueueCap(reader, 3)
    cap.store("alice", _new(), reader.insert)
    with pytest.raises(ServiceError):
        cap.store("alice", _new(), reader.insert)


def test_a_place_taken_elsewhere_is_read_again_and_another_given() -> None:
    reader = Reader()
    cap = QueueCap(reader, 2, full_seconds=0.0)  # a read that found it full is not trusted after
    cap.store("alice", _new(), reader.insert)
    # Another replica takes the last free place: this server does not know.
    free = ({0, 1} - set(reader.open["alice"].values())).pop()
    reader.open["alice"][ObjectId()] = free
    with pytest.raises(ServiceError):  # full, found by the read after the collision
        cap.store("alice", _new(), reader.insert)
    del reader.open["alice"][next(iter(reader.open["alice"]))]
    doc = _new()
    cap.store("alice", doc, reader.insert)
    assert place_number(doc[0][PLACE]) in {0, 1}


def test_places_given_to_inserts_still_unanswered_are_not_given_again() -> None:
    """Concurrent submits on one server: a read meanwhile (the cap looked full)
    keeps the places given to inserts not answered yet."""
    reader = Reader()
    cap = QueueCap(reader, 3)
    in_flight = _new(2)

    def nested(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # While these two are being inserted, another submit finds the cap full.
        with pytest.raises(ServiceError):
            cap.store("alice", _new(2), reader.insert)
        return reader.insert(docs)

    cap.store("alice", in_flight, nested)
    numbers = {place_number(doc[PLACE]) for doc in in_flight}
    assert len(numbers) == 2 and len(reader.open["alice"]) == 2


def test_a_place_taken_every_time_refuses_after_some_tries() -> None:
    reader = Reader()
    cap = QueueCap(reader, 5)
    tries = []

    def always_taken(docs: list[dict[str, Any]]) -> None:
        tries.append(docs[0][PLACE])
        raise PlaceTaken(docs)

    with pytest.raises(ServiceError):
        cap.store("alice", _new(), always_taken)
    assert len(tries) == TRIES
    assert reader.reads == TRIES  # each after a collision


# ---- stored on nx-27017 -----------------------------------------------------------


@pytest.fixture
def store(mongo: MongoServer) -> Iterator[Store]:
    with scratch_store(mongo.uri, "places") as store:
        yield store


def test_a_place_is_held_once_and_given_back_by_the_write_that_ends_the_job(store: Store) -> None:
    jobs = []
    for topic in ("one", "two"):
        doc = seed_job(store, "alice", {"topic": topic})
        doc[PLACE] = "alice#0"
        jobs.append(doc)
    store.jobs.insert_job(jobs[0])
    with pytest.raises(PlaceTaken):
        store.jobs.insert_job(jobs[1])
    assert store.jobs.open_places("alice") == {jobs[0]["_id"]: 0}
    assert store.jobs.cancel_queued(jobs[0]["_id"]) is not None
    assert PLACE not in store.jobs.jobs.find_one({"_id": jobs[0]["_id"]})
    store.jobs.insert_job(jobs[1])  # the place is free again
    assert store.jobs.open_places("alice") == {jobs[1]["_id"]: 0}


def test_a_run_that_ends_gives_its_place_back_in_its_outcome(store: Store) -> None:
    doc = seed_job(store, "alice", {"topic": "run"})
    doc[PLACE] = "alice#7"
    store.jobs.insert_job(doc)
    claimed = store.queue.claim(doc["_id"], "w", 30)
    assert claimed is not None and claimed[PLACE] == "alice#7"  # running jobs keep theirs
    after = store.queue.fenced_update(
        doc["_id"], claimed["epoch"], {"status": str(Status.FAILED), "queue": "none"}
    )
    assert after is not None and PLACE not in after
    assert store.jobs.open_places("alice") == {}


def test_a_bulk_insert_stores_the_items_whose_places_were_free(store: Store) -> None:
    held = seed_job(store, "alice", {"topic": "held"})
    held[PLACE] = "alice#1"
    store.jobs.insert_job(held)
    items = [seed_job(store, "alice", {"topic": f"item {i}"}) for i in range(3)]
    for number, item in enumerate(items):
        item[PLACE] = f"alice#{number}"
    with pytest.raises(PlaceTaken) as taken:
        store.bulks.insert_items(items)
    assert [doc["_id"] for doc in taken.value.docs] == [items[1]["_id"]]
    assert set(store.jobs.open_places("alice")) == {held["_id"], items[0]["_id"], items[2]["_id"]}
    assert items[0]["queue"] == READY


def test_an_insert_without_an_answer_keeps_its_place_and_the_owner_is_read_again() -> None:
    """A SubmitJob that times out may still be stored (its document waits in
    a batch): it is stored with its place, never without one."""
    reader = Reader()
    cap = QueueCap(reader, 2)
    doc = _new()

    def late(docs: list[dict[str, Any]]) -> None:
        reader.insert(docs)  # lands after its caller gave up
        raise pymongo.errors.NetworkTimeout("the database did not answer within the call's deadline")

    with pytest.raises(pymongo.errors.NetworkTimeout):
        cap.store("alice", doc, late)
    assert PLACE in doc[0]
    reads = reader.reads
    cap.store("alice", _new(), reader.insert)
    assert reader.reads == reads + 1
    with pytest.raises(ServiceError):
        cap.store("alice", _new(), reader.insert)


def test_a_submit_cancelled_during_its_read_leaves_no_place_taken() -> None:
    gate, reading = threading.Event(), threading.Event()

    class SlowReader(Reader):
        def open_places(self, owner: str) -> dict[ObjectId, int | None]:
            reading.set()
            gate.wait(10)
            return super().open_places(owner)

    reader = SlowReader()
    cap = QueueCap(reader, 1)

    async def cancelled() -> None:
        async def insert(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return reader.insert(docs)

        task = asyncio.create_task(cap.store_async("alice", _new(), insert))
        await asyncio.to_thread(reading.wait, 10)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    cap.store("alice", _new(), reader.insert)  # the one place is free
    assert len(reader.open["alice"]) == 1


def test_a_place_an_ended_job_still_holds_is_given_back_after_a_collision(store: Store) -> None:
    """A job ended by a server of an older version keeps its place: the
    collision on it frees it, and the submit is stored."""
    old = seed_job(store, "alice", {"topic": "old"})
    old[PLACE] = "alice#0"
    store.jobs.insert_job(old)
    store.jobs.jobs.update_one(
        {"_id": old["_id"]}, {"$set": {"status": str(Status.COMPLETED), "queue": "none"}}
    )
    cap = QueueCap(store.jobs, 1)
    new = seed_job(store, "alice", {"topic": "new"})
    cap.store("alice", [new], lambda docs: store.jobs.insert_job(docs[0]))
    assert store.jobs.open_places("alice") == {new["_id"]: 0}
    assert PLACE not in store.jobs.jobs.find_one({"_id": old["_id"]})


def test_a_place_taken_is_told_apart_on_the_event_loop_inserts(store: Store) -> None:
    first, second = (seed_job(store, "alice", {"topic": t}) for t in ("a", "b"))
    first[PLACE] = second[PLACE] = "alice#3"
    store.jobs.insert_job(first)

    async def submit() -> None:
        with pytest.raises(PlaceTaken):
            await store.jobs.submit_job(second)

    asyncio.run(submit())
