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
count there). A refusal is decided by a read at most FULL_SECONDS old.

So on one server the cap is filled exactly, however many submits race. Across
replicas a place can be contended: a bulk job that finds some of its places
taken and no room left for them is withdrawn whole (`Bulks.create`), so for
a moment its items held places that a submit racing it was refused.
"""

from __future__ import annotations

import asyncio
import logging
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
from genjobs.server.storage.database import Doc
from genjobs.server.storage.places import PLACE, PlaceTaken, place_key

log = logging.getLogger(__name__)

FRESH_SECONDS = 60.0  # how old an owner's read may be before their next submit reads again
MAX_OWNERS = 4096  # owners remembered; the least recently used are forgotten first
# A refusal is decided by a read at most this old: an owner at the cap asking
# again and again costs one read of their open jobs a second, not one a call
# (about 55 ms of nx-27017's time at 1,000 open jobs).
FULL_SECONDS = 1.0
TRIES = 5  # inserts that found their places taken before the submit is refused

T = TypeVar("T")
_PICK = random.Random()  # its own: the process's shared generator is left alone (tests seed it)


class PlaceReader(Protocol):
    """What the cap reads (storage/jobs.py `JobStore.open_places`)."""

    def open_places(self, owner: str) -> dict[ObjectId, int | None]:
        """`owner`'s open jobs -> the number of the place each holds (None: none)."""
        ...

    def free_ended(self, places: list[str]) -> int:
        """Give back those of these places that an ended job holds; how many."""
        ...


@dataclass
class _Owner:
    """One owner's open jobs as this server knows them."""

    read_at: float = -math.inf  # monotonic time of the last read; -inf: to be read
    jobs: dict[ObjectId, int | None] = field(default_factory=dict)  # open jobs -> their place number
    # Of `jobs`, those whose insert is unanswered, by when they were placed.
    pending: dict[ObjectId, float] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)  # the numbers `jobs` hold
    collided: list[str] = field(default_factory=list)  # places found taken, for the next read to look at

    def read(self, found: dict[ObjectId, int | None]) -> None:
        """What a read found, with the inserts still unanswered (for at most
        FRESH_SECONDS: an insert is answered, or given up, well within it)."""
        now = time.monotonic()
        self.pending = {oid: at for oid, at in self.pending.items() if now - at < FRESH_SECONDS}
        unanswered = {oid: self.jobs[oid] for oid in self.pending if oid in self.jobs}
        self.jobs = {**found, **unanswered}
        self.used = {number for number in self.jobs.values() if number is not None}
        self.read_at = now

    def add(self, oid: ObjectId, number: int) -> None:
        self.jobs[oid] = number
        self.pending[oid] = time.monotonic()
        self.used.add(number)

    def drop(self, oid: ObjectId) -> None:
        number = self.jobs.pop(oid, None)
        self.pending.pop(oid, None)
        if number is not None:
            self.used.discard(number)


class QueueCap:
    """Gives new jobs their places under the cap, or refuses them.

    A job document holding a `place` here is one whose insert is pending."""

    def __init__(self, reader: PlaceReader, cap: int, full_seconds: float = FULL_SECONDS) -> None:
        self.reader = reader
        self.cap = cap
        self.full_seconds = full_seconds
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
                docs = self._taken(owner, docs, taken.docs)
                continue
            except BaseException:
                self._unanswered(owner, docs)
                raise
            self._stored(owner, docs)
            return stored
        raise queue_refusal(owner, self.cap, len(docs))

    async def store_async(
        self, owner: str, docs: list[Doc], insert: Callable[[list[Doc]], Awaitable[T]]
    ) -> T:
        """`store` from the event loop: places from memory when it can, after a
        read on a thread when not."""
        for _ in range(TRIES):
            if not self._place_from_memory(owner, docs):
                # Only the read goes to the thread: placing stays here, right
                # before the insert, so a call cancelled meanwhile places nothing.
                found = await asyncio.to_thread(self._read, owner)
                self._place_after_read(owner, docs, found)
            try:
                stored = await insert(docs)
            except PlaceTaken as taken:
                docs = self._taken(owner, docs, taken.docs)
                continue
            except BaseException:  # a timeout or a cancelled call too: the insert may yet land
                self._unanswered(owner, docs)
                raise
            self._stored(owner, docs)
            return stored
        raise queue_refusal(owner, self.cap, len(docs))

    def place(self, owner: str, docs: list[Doc]) -> None:
        """Give those of `docs` without a place one, reading the owner's open
        jobs first when memory is not enough; RESOURCE_EXHAUSTED when the read
        shows no room."""
        if not self._place_from_memory(owner, docs):
            self._place_after_read(owner, docs, self._read(owner))

    def unplaced(self, owner: str, ids: list[ObjectId]) -> None:
        """These jobs are not open (not stored: a repeated request; or ended
        here, `JobChanges.record` says so before their end is told)."""
        with self._lock:
            known = self._owners.get(owner)
            if known is not None:
                for oid in ids:
                    known.drop(oid)

    def open_count(self, owner: str) -> int:
        """How many open jobs the cap counts for `owner` (GetUsage): as a read
        at most FULL_SECONDS old found them, with what this server did since."""
        with self._lock:
            known = self._owners.get(owner)
            if known is not None and time.monotonic() - known.read_at <= self.full_seconds:
                return len(known.jobs)
        found = self._read(owner)
        with self._lock:
            known = self._remember(owner)
            known.read(found)
            return len(known.jobs)

    # ---- memory ---------------------------------------------------------------

    def _place_from_memory(self, owner: str, docs: list[Doc]) -> bool:
        """Give those of `docs` without a place free places as this server
        knows them; False when it does not know enough (not read lately, or
        full as far as it knows). RESOURCE_EXHAUSTED when a read at most
        FULL_SECONDS old left no room (and no job ended here since)."""
        new = [doc for doc in docs if PLACE not in doc]
        if not new:
            return True
        with self._lock:
            known = self._owners.get(owner)
            age = time.monotonic() - known.read_at if known is not None else math.inf
            if known is None or age > FRESH_SECONDS:
                return False
            if len(known.jobs) + len(new) > self.cap:
                if age <= self.full_seconds:
                    raise queue_refusal(owner, self.cap, len(new))
                return False
            self._owners.move_to_end(owner)
            for doc, number in zip(new, _free(known.used, self.cap, len(new)), strict=True):
                doc[PLACE] = place_key(owner, number)
                known.add(doc["_id"], number)
            return True

    def _read(self, owner: str) -> dict[ObjectId, int | None]:
        """Read `owner`'s open jobs; first free the places found taken since
        the last read that a job holds though it ended (a server of an older
        version ended it): a collision on them would otherwise come back."""
        collided: list[str] = []
        with self._lock:
            known = self._owners.get(owner)
            if known is not None:
                collided, known.collided = known.collided, []
        if collided and self.reader.free_ended(collided):
            log.warning("queued-jobs cap: places of %s held by ended jobs were given back", owner)
        return self.reader.open_places(owner)

    def _place_after_read(self, owner: str, docs: list[Doc], found: dict[ObjectId, int | None]) -> None:
        """Remember what a read `found`, then place `docs`; RESOURCE_EXHAUSTED when there is no room."""
        with self._lock:
            self._remember(owner).read(found)
        if not self._place_from_memory(owner, docs):
            raise queue_refusal(owner, self.cap, len(docs))

    def _stored(self, owner: str, docs: list[Doc]) -> None:
        """`docs` were stored: open jobs now."""
        with self._lock:
            known = self._remember(owner)
            for doc in docs:
                known.pending.pop(doc["_id"], None)

    def _taken(self, owner: str, docs: list[Doc], taken: list[Doc]) -> list[Doc]:
        """Of `docs`, the `taken` were not stored (their places were taken
        meanwhile), the others were: the `taken` lose their places, and the
        owner is read before the next placing. `taken`."""
        lost = {id(doc) for doc in taken}
        with self._lock:
            known = self._remember(owner)
            for doc in docs:
                if id(doc) in lost:
                    known.drop(doc["_id"])
                    known.collided.append(doc.pop(PLACE))
                else:
                    known.pending.pop(doc["_id"], None)
            known.read_at = -math.inf
        return taken

    def _unanswered(self, owner: str, docs: list[Doc]) -> None:
        """`docs`' insert failed or was given up without an answer: stored or
        not (it may still land, with the places the documents hold), they are
        forgotten until the owner's next read, which comes before the next placing."""
        with self._lock:
            known = self._remember(owner)
            for doc in docs:
                known.drop(doc["_id"])
            known.read_at = -math.inf

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
            number = _PICK.randrange(cap)
            if number not in used:
                chosen.add(number)
        return list(chosen)
    return _PICK.sample([n for n in range(cap) if n not in used], count)


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
