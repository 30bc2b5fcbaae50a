"""The cap on an owner's open jobs (GENJOBS_MAX_QUEUED_PER_OWNER).

Open jobs are admitted and not yet final: queued in any lane, or running.
Each holds one of its owner's numbered places (storage/places.py): the job's
insert takes it, under a unique index, and the write that makes the job
final gives it back. So the cap holds under any concurrency, on one server
or across replicas, at no write of its own: a submit is one command.

Which places are free is known from memory: the owner's open jobs as last
read (one index search of them), with the jobs stored here since, the places
given to inserts not answered yet, and the jobs that ended here since. A
place another replica took meanwhile fails the insert (`PlaceTaken`) and the
owner is read again; so is an owner whose memory is older than
FRESH_SECONDS, or would be full (jobs that ended on another replica still
count there). A refusal is always decided by a fresh read.

So on one server the cap is filled exactly, however many submits race. Across
replicas a place can be contended: a bulk job that finds some of its places
taken and no room left for them is withdrawn whole (`Bulks.create`), so for
a moment its items held places that a submit racing it was refused.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bson import ObjectId

from genjobs.server.model.errors import ServiceError, quota_exceeded
from genjobs.server.model.records import Job
from genjobs.server.storage.database import Doc
from genjobs.server.storage.places import PLACE, PlaceTaken, place_key

FRESH_SECONDS = 60.0  # how old an owner's read may be before their next submit reads again
MAX_OWNERS = 4096  # owners remembered; the least recently used are forgotten first
TRIES = 5  # inserts that found their places taken before the submit is refused

T = TypeVar("T")


class PlaceReader(Protocol):
    """What the cap reads (storage/jobs.py `JobStore.open_places`)."""

    def open_places(self, owner: str) -> dict[ObjectId, int | None]:
        """`owner`'s open jobs -> the number of the place each holds (None: none)."""
        ...


@dataclass
class _Owner:
    """One owner's open jobs as this server knows them."""

    read_at: float = -math.inf  # monotonic time of the last read; -inf: to be read
    jobs: dict[ObjectId, int | None] = field(default_factory=dict)  # open jobs -> their place number
    pending: set[ObjectId] = field(default_factory=set)  # of `jobs`, those whose insert is unanswered
    used: set[int] = field(default_factory=set)  # the numbers `jobs` hold

    def read(self, found: dict[ObjectId, int | None]) -> None:
        """What a read found, with the inserts still unanswered."""
        unanswered = {oid: self.jobs[oid] for oid in self.pending if oid in self.jobs}
        self.jobs = {**found, **unanswered}
        self.used = {number for number in self.jobs.values() if number is not None}
        self.read_at = time.monotonic()

    def add(self, oid: ObjectId, number: int) -> None:
        self.jobs[oid] = number
        self.pending.add(oid)
        self.used.add(number)

    def drop(self, oid: ObjectId) -> None:
        number = self.jobs.pop(oid, None)
        self.pending.discard(oid)
        if number is not None:
            self.used.discard(number)


class QueueCap:
    """Gives new jobs their places under the cap, or refuses them.

    A job document holding a `place` here is one whose insert is pending."""

    def __init__(self, reader: PlaceReader, cap: int) -> None:
        self.reader = reader
        self.cap = cap
        self._lock = threading.Lock()
        self._owners: OrderedDict[str, _Owner] = OrderedDict()

    def check_count(self, owner: str, count: int) -> None:
        """Refuse `count` new jobs that could never fit under the cap."""
        if count > self.cap:
            raise queue_refusal(owner, self.cap, count)

    def store(self, owner: str, docs: list[Doc], insert: Callable[[list[Doc]], T]) -> T:
        """Give `docs` (new jobs of `owner`) places unless they have them, and
        store them with `insert`, which raises PlaceTaken with those it could
        not store because another job took their place meanwhile: those get
        other places. RESOURCE_EXHAUSTED when the cap leaves no room (what
        `insert` stored before stays stored)."""
        for _ in range(TRIES):
            self.place(owner, docs)
            try:
                stored = insert(docs)
            except PlaceTaken as taken:
                docs = self._settle(owner, docs, taken.docs)
                continue
            except BaseException:
                self._settle(owner, docs, docs)
                raise
            self._settle(owner, docs, [])
            return stored
        raise queue_refusal(owner, self.cap, len(docs))

    async def store_async(
        self, owner: str, docs: list[Doc], insert: Callable[[list[Doc]], Awaitable[T]]
    ) -> T:
        """`store` from the event loop: places from memory when it can, a read on a thread when not."""
        for _ in range(TRIES):
            if not self._place_from_memory(owner, docs):
                await asyncio.to_thread(self.place, owner, docs)
            try:
                stored = await insert(docs)
            except PlaceTaken as taken:
                docs = self._settle(owner, docs, taken.docs)
                continue
            except BaseException:
                self._settle(owner, docs, docs)
                raise
            self._settle(owner, docs, [])
            return stored
        raise queue_refusal(owner, self.cap, len(docs))

    def place(self, owner: str, docs: list[Doc]) -> None:
        """Give those of `docs` without a place one, reading the owner's open
        jobs first when memory is not enough; RESOURCE_EXHAUSTED when the read
        shows no room."""
        if self._place_from_memory(owner, docs):
            return
        found = self.reader.open_places(owner)
        with self._lock:
            self._remember(owner).read(found)
        if not self._place_from_memory(owner, docs):
            raise queue_refusal(owner, self.cap, len(docs))

    def unplaced(self, owner: str, ids: list[ObjectId]) -> None:
        """These jobs are not open (not stored: a repeated request; or ended here)."""
        with self._lock:
            known = self._owners.get(owner)
            if known is not None:
                for oid in ids:
                    known.drop(oid)

    def ended(self, job: Job, kind: str) -> None:
        """A job changed here: once it is final its place is free (the write
        that ended it gave it back)."""
        if job.final:
            self.unplaced(job.owner, [ObjectId(job.id)])

    def open_count(self, owner: str) -> int:
        """How many open jobs the cap counts for `owner` now (one read; GetUsage)."""
        return len(self.reader.open_places(owner))

    # ---- memory ---------------------------------------------------------------

    def _place_from_memory(self, owner: str, docs: list[Doc]) -> bool:
        """Give those of `docs` without a place free places as this server
        knows them; False when it does not know enough (not read lately, or
        full as far as it knows)."""
        new = [doc for doc in docs if PLACE not in doc]
        if not new:
            return True
        with self._lock:
            known = self._owners.get(owner)
            if known is None or time.monotonic() - known.read_at > FRESH_SECONDS:
                return False
            if len(known.jobs) + len(new) > self.cap:
                return False
            self._owners.move_to_end(owner)
            for doc, number in zip(new, _free(known.used, self.cap, len(new)), strict=True):
                doc[PLACE] = place_key(owner, number)
                known.add(doc["_id"], number)
            return True

    def _settle(self, owner: str, docs: list[Doc], unstored: list[Doc]) -> list[Doc]:
        """`docs`' inserts were answered: those not in `unstored` are open jobs
        now; the `unstored` lose their places, and when any place was taken
        elsewhere, the owner is read again before the next placing. `unstored`."""
        lost = {id(doc) for doc in unstored}
        with self._lock:
            known = self._remember(owner)
            for doc in docs:
                if id(doc) in lost:
                    known.drop(doc["_id"])
                    doc.pop(PLACE, None)
                else:
                    known.pending.discard(doc["_id"])  # an open job now
            if unstored:
                known.read_at = -math.inf
        return unstored

    def _remember(self, owner: str) -> _Owner:
        """`owner`'s memory, made if new, most recently used (under the lock)."""
        known = self._owners.get(owner)
        if known is None:
            known = self._owners[owner] = _Owner()
            while len(self._owners) > MAX_OWNERS:
                self._owners.popitem(last=False)
        self._owners.move_to_end(owner)
        return known


def _free(used: set[int], cap: int, count: int) -> list[int]:
    """`count` place numbers below `cap` not in `used`, at random: replicas
    placing at once rarely pick the same one."""
    if len(used) * 2 < cap:
        chosen: set[int] = set()
        while len(chosen) < count:
            number = random.randrange(cap)
            if number not in used:
                chosen.add(number)
        return list(chosen)
    return random.sample([n for n in range(cap) if n not in used], count)


def queue_refusal(owner: str, cap: int, count: int) -> ServiceError:
    """RESOURCE_EXHAUSTED: `count` more queued jobs would pass the cap."""
    more = "a job" if count == 1 else f"{count} jobs"
    return quota_exceeded(
        "QUEUED_JOBS_LIMIT",
        f"owner:{owner}",
        f"queueing {more} more would pass the limit of {cap} queued jobs per owner"
        " (GENJOBS_MAX_QUEUED_PER_OWNER; running jobs count until they end):"
        " wait for some to end, or cancel some",
        {"owner": owner, "max_queued_jobs": str(cap)},
    )
