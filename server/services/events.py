"""The in-process event feed: job and bulk-job events fanned out to WatchJob and
WatchBulkJob streams. A stream costs an asyncio.Queue, not a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from genjobs.server.model.states import Status

log = logging.getLogger(__name__)

# Put on every queue when the server shuts down: streams end with UNAVAILABLE.
SHUTDOWN: Any = object()
# Put on every idle queue once a heartbeat interval: the stream sends a heartbeat.
# One timer for all streams, not one per stream per wait.
HEARTBEAT: Any = object()


@dataclass
class Event:
    """One change of a job or bulk job; `message` caches its protobuf form so
    a thousand subscribers share one conversion."""

    key: str
    seq: int
    doc: dict[str, Any]
    final: bool
    _message: Any = field(default=None, repr=False)

    def message(self, build: Callable[[dict[str, Any]], Any]) -> Any:
        """The event as a protobuf message, built once."""
        if self._message is None:
            self._message = build(self.doc)
        return self._message


OWNER, JOB, BULK = "owner:", "job:", "bulk:"  # the hub keys' prefixes

# How long the newest change of a job told here stands for the job as it is
# (`EventHub.known`). A server alive elsewhere notes itself in the leader
# lease once a tick, for a lease's length: a leader that heard itself alone
# at its last renewal heard of every server that could have changed the job
# since (but one started in the last tick or two, heard of at its first).
KNOWN_SECONDS = 1.0
KNOWN_KEPT = 4096  # the most jobs whose newest change is kept (the oldest go first)


def owner_key(owner: str) -> str:
    """The hub key of every change of `owner`'s jobs (WatchJobs)."""
    return OWNER + owner


def job_key(job_id: object) -> str:
    """The hub key of one job's changes (WatchJob)."""
    return f"{JOB}{job_id}"


def bulk_key(bulk_id: object) -> str:
    """The hub key of one bulk job's changes (WatchBulkJob)."""
    return f"{BULK}{bulk_id}"


class EventHub:
    """Subscribers by key ("job:<id>", "bulk:<id>" or "owner:<user>"), fed from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._subscribers: dict[str, set[asyncio.Queue[Any]]] = {}
        self._last_seq: dict[str, int] = {}  # the newest sequence delivered per watched key
        # An owner's key carries many jobs: the newest sequence delivered of
        # each, when, and whether it said the job was running, so that a
        # change told here and read by the poller too is delivered once, an
        # older one never after a newer, and a running job is read again.
        self._owner_seqs: dict[str, dict[str, tuple[int, float, bool]]] = {}
        # The newest change of each job told here lately, by job key: when
        # (monotonic), its sequence, and the event (None once the job ended).
        self._known: OrderedDict[str, tuple[float, int, Event | None]] = OrderedDict()
        self._known_lock = threading.Lock()
        self._closed = False

    def publish(self, event: Event) -> None:
        """Deliver `event` to its subscribers; safe to call from any thread."""
        self.remember(event)  # before the subscribers are looked at, as a store's write is
        if self._closed or event.key not in self._subscribers:
            # Nobody watches it: the loop is not woken for nothing (most changes,
            # a job's own stream being open only while someone watches it). A
            # WatchJob or WatchBulkJob subscribing from now on reads the job after
            # subscribing, so its snapshot has this change, stored before it is told.
            return
        # A closed loop (RuntimeError) means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, event)

    def remember(self, event: Event) -> None:
        """Keep `event`, a change of a job made here, as the job's newest (an
        older one told late by another thread is passed over); any thread."""
        if not event.key.startswith(JOB):
            return
        with self._known_lock:
            kept = self._known.pop(event.key, None)
            if kept is not None and kept[1] > event.seq:
                self._known[event.key] = kept
                return
            self._known[event.key] = (time.monotonic(), event.seq, None if event.final else event)
            if len(self._known) > KNOWN_KEPT:
                self._known.popitem(last=False)

    def known(self, key: str) -> Event | None:
        """The newest change of the job `key` remembered here in the last
        KNOWN_SECONDS, unless it ended (then its document may be gone)."""
        with self._known_lock:
            kept = self._known.get(key)
        if kept is None or time.monotonic() - kept[0] > KNOWN_SECONDS:
            return None
        return kept[2]

    def deliver(self, event: Event) -> None:
        """Deliver `event` from the event loop itself."""
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        subscribers = self._subscribers.get(event.key)
        if not subscribers:
            return
        if event.key.startswith(OWNER) and not self._newer_of_its_job(event):
            return
        self._last_seq[event.key] = max(self._last_seq.get(event.key, 0), event.seq)
        for queue in subscribers:
            queue.put_nowait(event)

    def _newer_of_its_job(self, event: Event) -> bool:
        """Whether `event` is newer than any of its job delivered on its owner's key (noted if so)."""
        seqs = self._owner_seqs.setdefault(event.key, {})
        job_id = event.doc["job_id"]
        if event.seq <= seqs.get(job_id, (0, 0.0, False))[0]:
            return False
        seqs[job_id] = (event.seq, self._loop.time(), event.doc["job"].get("status") == Status.PROCESSING)
        return True

    def delivered_seq(self, key: str, job_id: str) -> int:
        """The newest sequence of `job_id` delivered on the owner key `key`."""
        return self._owner_seqs.get(key, {}).get(job_id, (0, 0.0, False))[0]

    def running_on_owner_keys(self) -> list[str]:
        """The jobs whose newest change delivered on an owner's key said they were running."""
        return [job_id for seqs in self._owner_seqs.values() for job_id, (_, _, on) in seqs.items() if on]

    def forget_job_seqs(self, older_than: float) -> None:
        """Forget the owner keys' job sequences delivered more than `older_than`
        seconds ago (the poller no longer reads changes that old), but those of
        running jobs (it reads them again until they say otherwise)."""
        cutoff = self._loop.time() - max(0.0, older_than)
        for seqs in self._owner_seqs.values():
            for job_id in [j for j, (_, at, on) in seqs.items() if at < cutoff and not on]:
                del seqs[job_id]

    def last_seq(self, key: str) -> int:
        """The newest sequence delivered (or noted) for a watched key."""
        return self._last_seq.get(key, 0)

    def note(self, key: str, seq: int) -> None:
        """A new subscriber has seen up to `seq`: the poller need not replay older events."""
        if key in self._subscribers:
            self._last_seq[key] = max(self._last_seq.get(key, 0), seq)

    @contextlib.contextmanager
    def subscribe(self, key: str) -> Iterator[asyncio.Queue[Any]]:
        """A queue receiving the events of `key` for the duration of the block."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(SHUTDOWN)
        self._subscribers.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(key)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[key]
                    self._last_seq.pop(key, None)
                    self._owner_seqs.pop(key, None)

    async def beat(self, interval: float) -> None:
        """Every `interval`, ask each idle stream to send a heartbeat (runs until cancelled)."""
        while not self._closed:
            await asyncio.sleep(interval)
            for subscribers in self._subscribers.values():
                for queue in subscribers:
                    if queue.empty():
                        queue.put_nowait(HEARTBEAT)

    def watched(self, prefix: str) -> list[str]:
        """The ids (keys without `prefix`) that have at least one subscriber."""
        return [k.removeprefix(prefix) for k in self._subscribers if k.startswith(prefix)]

    def subscriber_count(self) -> int:
        """How many streams are open."""
        return sum(len(s) for s in self._subscribers.values())

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self._closed = True
        for subscribers in self._subscribers.values():
            for queue in subscribers:
                queue.put_nowait(SHUTDOWN)
