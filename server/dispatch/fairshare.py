"""Who goes next: priority, then fair share between owners, then each owner's order.

The dispatcher still claims one job at a time with one atomic update on
`_id`, conditional on the ready lane (`store.queue.claim`); this module only
decides which `_id` to try, from memory, with no scan of the queue per claim:

- per owner, a short heap of candidates (rank, ck, id): the owner's first
  ready jobs in (rank, ck) order, read by one index search of
  (queue, owner, rank, ck) when the owner's turn comes and its candidates
  are used up, plus the jobs offered since (local submits, promotions) and
  those found by the incremental read;
- the turn order: owner -> when their last job started. The next job is the
  best rank among the owners' heads, from the owner whose last start is
  oldest (never started: first), ties in submission order; within an owner,
  (rank, ck): a bulk job's items have consecutive order keys.

What other replicas queue, and jobs re-entering the ready lane (bulk
resume, requeue, promotion elsewhere), carry `ready_us`: each poll interval
one range read on its index picks up the jobs that entered the ready lane in
a window ending DISCOVERY_DELAY_US ago, so each is read once whatever the
write latency; the read pages on a (ready_us, _id) cursor, so a page that
ends inside a run of jobs stamped with one microsecond goes on inside it.
When another replica signals that it queued jobs (the dispatcher's wakeups),
`fresh` reads the same index up to now, without the delay.
With nothing in memory the poll reads the head of the ready
lane instead (as the FIFO dispatcher did): one query either way. A full
rebuild (one $group of the ready lane by owner, then each owner's head read
lazily as its turn comes) runs when the claims resume after a pause of
about a lease (this server may have lost and regained the lead meanwhile)
and once a sweep interval: it also repairs anything the reads above missed.

Turns are kept in the `turns` collection (_id owner, last_us), stored only
when a claim's owner differs from the previous claim's (a streak start):
that keeps the relative order of last starts across restarts and leader
changes, and costs a run of one owner's jobs nothing. The streak starts of
a poll interval are stored together, in one command at the next poll (and
before a rebuild reads them back), never between a claim and its start.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.model import clock
from genjobs.server.model.recheck import Recheck
from genjobs.server.storage.database import Doc
from genjobs.server.storage.outage import Outage
from genjobs.server.storage.queue import QueueStore, ReadyCursor, candidate

log = logging.getLogger(__name__)

BATCH = 64  # candidates read per owner at a time
# The first read of an owner after a rebuild; each next one reads 4 times as
# many, up to BATCH. In round robin over many owners each gets one start a
# round: full batches for all would be read long before use (nx-27017 spends
# about 0.1 ms on each document a query returns).
FIRST_READ = 4
MAX_DOCS = 4096  # candidates' documents kept at most (those of jobs claimed elsewhere linger till a rebuild)
DISCOVERY_DELAY_US = 2_000_000  # a ready_us is read once it is this old (write latency, clock skew)
DISCOVERY_LIMIT = 1000  # jobs per incremental read; the rest the next poll
FRESH_PAGES = 4  # pages read at most when another replica's wakeup is heeded

Key = tuple[int, int]  # (rank, ck)
Entry = tuple[int, int, ObjectId]  # (rank, ck, id)


@dataclass
class _Owner:
    """One owner's known candidates.

    `bound` None: every ready job of the owner is in `heap` (or was taken
    from it). Else the ready jobs up to `bound` (rank, ck) are in `heap`,
    those after it are not known: read them when the heap is empty.
    """

    heap: list[Entry] = field(default_factory=list)
    ids: set[ObjectId] = field(default_factory=set)
    bound: Key | None = None

    def key(self) -> Key | None:
        """What the owner would run next, or (its bound) the least it could; None: nothing."""
        return self.heap[0][:2] if self.heap else self.bound

    def drop_beyond(self) -> None:
        if self.bound is not None and any(e[:2] > self.bound for e in self.heap):
            self.heap = [e for e in self.heap if e[:2] <= self.bound]
            heapq.heapify(self.heap)
            self.ids = {e[2] for e in self.heap}


@dataclass
class Pick:
    """The owner whose turn it is, and the job to claim (None: read the owner's head first)."""

    owner: str
    oid: ObjectId | None
    key: Key = field(default=(0, 0), compare=False)  # the job's (rank, ck)
    doc: Doc | None = field(default=None, compare=False)  # the job as read or submitted, when known


class Candidates:
    """The pure part: candidates by owner, turns, and the choice of the next job."""

    def __init__(self, batch: int = BATCH) -> None:
        self.batch = batch
        self.owners: dict[str, _Owner] = {}
        self.turns: dict[str, int] = {}  # owner -> last start (µs)
        self.last_owner = ""

    def __len__(self) -> int:
        return len(self.owners)

    def add(self, owner: str, rank: int, ck: int, oid: ObjectId) -> None:
        """A job of `owner` is (or was) in the ready lane."""
        state = self.owners.get(owner)
        if state is None:
            state = self.owners[owner] = _Owner()
        if oid in state.ids or (state.bound is not None and (rank, ck) > state.bound):
            return  # known, or beyond what is known: the owner's next read finds it
        heapq.heappush(state.heap, (rank, ck, oid))
        state.ids.add(oid)
        if len(state.heap) > 2 * self.batch:  # bounded memory: keep the first batch
            state.heap = heapq.nsmallest(self.batch, state.heap)
            state.bound = state.heap[-1][:2]
            state.ids = {e[2] for e in state.heap}

    def reset(self, heads: dict[str, Key], turns: dict[str, int]) -> None:
        """Start over from the owners of the ready lane, each with the least
        (rank, ck) it may have (its heap is read when its turn comes)."""
        self.owners = {owner: _Owner(bound=(rank, ck - 1)) for owner, (rank, ck) in heads.items()}
        self.turns = dict(turns)
        self.last_owner = ""

    def fill(self, owner: str, rows: list[Entry], limit: int = 0) -> None:
        """The owner's first `limit` (default: batch) ready jobs in (rank, ck) order, just read."""
        state = self.owners.get(owner)
        if state is None:
            state = self.owners[owner] = _Owner()
        state.bound = None  # so that `add` takes every row
        for rank, ck, oid in rows:
            self.add(owner, rank, ck, oid)
        state = self.owners[owner]
        if len(rows) >= (limit or self.batch):
            state.bound = rows[-1][:2]
            state.drop_beyond()
        if not state.heap and state.bound is None:
            del self.owners[owner]

    def pick(self) -> Pick | None:
        """The next job: best rank, then the owner who started longest ago, then order."""
        best: tuple[tuple[int, int, int], str] | None = None
        for owner, state in self.owners.items():
            key = state.key()
            if key is None:
                continue
            order = (key[0], self.turns.get(owner, 0), key[1])
            if best is None or order < best[0]:
                best = (order, owner)
        if best is None:
            return None
        owner = best[1]
        state = self.owners[owner]
        if not state.heap:
            return Pick(owner, None)
        rank, ck, oid = heapq.heappop(state.heap)
        state.ids.discard(oid)
        if not state.heap and state.bound is None:
            del self.owners[owner]
        return Pick(owner, oid, (rank, ck))

    def started(self, owner: str, now_us: int) -> bool:
        """`owner`'s job started now; True when that starts a streak (store the turn)."""
        self.turns[owner] = now_us
        streak = owner != self.last_owner
        self.last_owner = owner
        return streak


class FairShare:
    """The claim order of one dispatcher: `Candidates` kept up to date from the store.

    `offer` and `started` may be called from any thread; the rest from the
    dispatcher thread (and lanes, under the dispatcher's claim lock).
    """

    def __init__(
        self,
        queue: QueueStore,
        outage: Outage,
        poll_seconds: float,
        rebuild_seconds: float,
        pause_seconds: float,
        batch: int = BATCH,
        recheck_seconds: float | None = None,
    ) -> None:
        self.queue = queue
        self.outage = outage  # what the turns' writes log of a database outage
        # A leader alone is offered every job that enters the ready lane on
        # this server (submits, requeues, promotions, recoveries; a resume or a
        # release marks the lane stale), and no other server is there to add
        # any: it polls the lane once this long, for a change made by hand.
        self._polls = Recheck(poll_seconds, poll_seconds if recheck_seconds is None else recheck_seconds)
        self.rebuild_seconds = rebuild_seconds
        self.pause_seconds = pause_seconds
        self.candidates = Candidates(batch)
        self._lock = threading.Lock()
        self._built = 0.0  # monotonic time of the last rebuild; 0: never
        self._asked = 0.0  # monotonic time of the last `next`
        self._seen: ReadyCursor = (0, None)  # where the incremental (delayed) reads got to
        self._fresh: ReadyCursor = (0, None)  # where the reads another replica's wakeup asked for got to
        self._unsaved: dict[str, int] = {}  # streak starts' turns not yet stored
        self._reads: dict[str, int] = {}  # owner -> reads of its head since the last rebuild
        self._turns_read: set[str] = set()  # owners whose stored turn was read since then
        self._offered_meanwhile: list[tuple[str, int, int, ObjectId]] | None = None  # see _reading
        # Candidates' documents as submitted here or read with an owner's head: what
        # a lane needs to claim one together with its run's end. Cleared at a rebuild.
        self._docs: dict[ObjectId, Doc] = {}

    def offer(self, owner: str, rank: int, ck: int, oid: ObjectId, doc: Doc | None = None) -> None:
        """A job entered the ready lane here (`doc`: as stored): consider it without a query."""
        with self._lock:
            self.candidates.add(owner, rank, ck, oid)
            if doc is not None and len(self._docs) < MAX_DOCS:
                self._docs[oid] = doc
            if self._offered_meanwhile is not None:
                self._offered_meanwhile.append((owner, rank, ck, oid))

    def put_back(self, pick: Pick) -> None:
        """A picked job was not claimed after all but may still be ready: a
        later claim tries it again (without its document, which may be stale)."""
        if pick.oid is None:
            return
        with self._lock:
            self.candidates.add(pick.owner, *pick.key, pick.oid)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Around a read whose answer replaces candidates (an owner's head, a
        rebuild): the offers made meanwhile are added again after it. A job
        stored just after the read was dropped by `add` as beyond what was
        known, and the read did not see it: without this, the owner's next
        job would run before it."""
        with self._lock:
            self._offered_meanwhile = []
        try:
            yield
        finally:
            with self._lock:
                meanwhile, self._offered_meanwhile = self._offered_meanwhile or [], None
                for offered in meanwhile:
                    self.candidates.add(*offered)

    def none_ready(self, alone: bool = False) -> bool:
        """Whether no job is ready, as far as a claim now could know: none is
        known, the ready lane was read within about a poll interval (a
        recheck, `alone`), and no rebuild is due (a pause, a stale mark, or
        the rebuild interval)."""
        now = time.monotonic()
        if not self._built or now - self._built > self.rebuild_seconds:
            return False
        if now - self._asked > self.pause_seconds:
            return False
        # The idle dispatcher reads the lane once an interval: its last read is at most about two old.
        if not self._polls.last or now - self._polls.last > 2 * self._polls.interval(alone):
            return False
        with self._lock:
            return not len(self.candidates)

    def knows_ready(self) -> bool:
        """Whether a job is known ready (from memory, no read)."""
        with self._lock:
            return bool(len(self.candidates))

    def stale(self) -> None:
        """Something changed that offers did not tell (a resume): read the lane at the next claim."""
        self._polls.forget()

    def next(self, polls: bool = True, alone: bool = False) -> Pick | None:
        """The next job to try to claim, reading the store only when due.
        `polls=False`: the poll interval's reads are left to `catch_up` after
        the claim, unless nothing is known (then they are made first).
        `alone`: this server leads and no other shares the database."""
        now = time.monotonic()
        pause, self._asked = now - self._asked, now
        if not self._built or now - self._built > self.rebuild_seconds or pause > self.pause_seconds:
            self.rebuild()
        elif polls or not len(self.candidates) or not self._polls.last:
            self.catch_up(alone)  # (`stale` asked for the read before this pick)
        self._read_turns()
        while True:
            with self._lock:
                pick = self.candidates.pick()
                if pick is not None and pick.oid is not None:
                    pick.doc = self._docs.pop(pick.oid, None)
            if pick is None or pick.oid is not None:
                return pick
            reads = self._reads.get(pick.owner, 0)
            self._reads[pick.owner] = reads + 1
            limit = min(self.candidates.batch, FIRST_READ * 4**reads)
            with self._reading():
                docs = self.queue.owner_head(pick.owner, limit)
                with self._lock:
                    self.candidates.fill(pick.owner, [candidate(doc)[1:] for doc in docs], limit)
                    if len(self._docs) < MAX_DOCS:
                        self._docs.update((doc["_id"], doc) for doc in docs)

    def catch_up(self, alone: bool = False) -> bool:
        """The poll interval's reads when due: the turns not yet stored, and the
        jobs that entered the ready lane without an offer here (`alone`: once
        a recheck; the first poll alone comes at once, for the last changes of
        the servers gone). Whether it read."""
        if not self._polls.take(alone):
            return False
        self.save_turns()
        self.poll()
        return True

    def started(self, owner: str) -> None:
        """A job of `owner` was claimed: its turn is now (stored at a streak
        start). From any thread (a job stored running is told from the event loop)."""
        now_us = clock.now_us()
        with self._lock:
            if self.candidates.started(owner, now_us):
                self._unsaved[owner] = now_us

    def _read_turns(self) -> None:
        """Read the stored turns of owners new here since the rebuild (one search of `_id`),
        so that an owner who ran before is not taken for one who never did."""
        with self._lock:  # offers from other threads add owners
            new = [owner for owner in self.candidates.owners if owner not in self._turns_read]
        if not new:
            return
        stored = self.queue.turns_of(new)
        with self._lock:
            for owner, last_us in stored.items():
                self.candidates.turns.setdefault(owner, last_us)
        self._turns_read.update(new)

    def save_turns(self) -> None:
        """Store the streak starts' turns not yet stored (one command)."""
        with self._lock:
            if not self._unsaved:
                return
            unsaved, self._unsaved = self._unsaved, {}
        try:
            self.queue.save_turns(unsaved)
        except PyMongoError as exc:  # claims go on; the turns are stored at the next try
            if not self.outage.failed(exc, "storing owners' turns"):
                log.warning("could not store %d owners' turns: %s", len(unsaved), exc)
            with self._lock:
                self._unsaved = {**unsaved, **self._unsaved}

    def rebuild(self) -> None:
        """Start over from the ready lane's owners and their stored turns."""
        now = time.monotonic()
        self.save_turns()  # what is read back below must include them
        with self._reading():
            heads = self.queue.ready_owners()
            stored = self.queue.turns_of(list(heads))
            with self._lock:
                turns = {**stored, **self._unsaved}  # unsaved if the save failed
                self.candidates.reset(heads, turns)
                self._docs = {}
        self._reads = {}
        self._turns_read = set(heads)
        self._seen = self._fresh = (clock.now_us() - DISCOVERY_DELAY_US, None)
        self._built = now
        self._polls.read(at=now)

    def poll(self) -> None:
        """Learn of the jobs that entered the ready lane without an offer here."""
        self._polls.read()
        if not len(self.candidates):
            # Nothing known: the head of the lane says what there is, as cheaply.
            found = self.queue.runnable_heads(self.candidates.batch)
            if len(found) >= self.candidates.batch:
                self.rebuild()
                return
            with self._lock:
                for owner, rank, ck, oid in found:
                    self.candidates.add(owner, rank, ck, oid)
            self._seen = (clock.now_us() - DISCOVERY_DELAY_US, None)
            return
        self._seen = self._entered(self._seen, clock.now_us() - DISCOVERY_DELAY_US)

    def fresh(self) -> None:
        """Another replica queued jobs (its wakeup says so): learn of them now,
        not DISCOVERY_DELAY_US later. Reads up to now, a few pages at most; a
        job whose write was slower than this read is the delayed read's."""
        if not len(self.candidates):
            self.poll()  # the head of the lane: it has no delay
            return
        cursor = self._fresh if self._fresh[0] >= self._seen[0] else self._seen
        until = clock.now_us()
        for _ in range(FRESH_PAGES):
            cursor = self._entered(cursor, until)
            if cursor[1] is None:
                break
        self._fresh = cursor

    def _entered(self, cursor: ReadyCursor, until_us: int) -> ReadyCursor:
        """Add the jobs that entered the ready lane after `cursor` up to
        `until_us` (one page); where the read got to."""
        found, cursor = self.queue.entered_ready(cursor, until_us, DISCOVERY_LIMIT)
        with self._lock:
            for owner, rank, ck, oid in found:
                self.candidates.add(owner, rank, ck, oid)
        return cursor
