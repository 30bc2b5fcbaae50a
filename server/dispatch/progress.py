"""A run's progress writes, off the generator's thread.

A generator reports progress as often as it likes (the `openai` generator
once per streamed piece, on the one event loop that serves every job's
stream). `ProgressWriter.report` only keeps the latest report and makes sure
a write is scheduled; `ProgressWrites`, one per dispatcher, writes on
threads of its own ("dispatcher-progress": one keeps the time, up to
PROGRESS_WRITERS write at once) each run's latest report at most once per
PROGRESS_WRITE_INTERVAL, and a report not yet written when its interval is
up is written then (reports are coalesced, never lost). Each write is one
fenced conditional update, and its PROGRESS event is told to watchers by the
thread that wrote it.

A run's outcome supersedes its progress: `close` drops a pending write and
waits for one in flight (its event told first), so no progress is written
or told after the outcome.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pymongo
from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.model import clock
from genjobs.server.model.progress import progress_fields
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import PROGRESS
from genjobs.server.storage.outage import unreachable
from genjobs.server.storage.queue import QueueStore

log = logging.getLogger("genjobs.server.dispatch.dispatcher")  # the dispatcher's lines, as run.py

# A report waits at most this long to be written (latency to watchers is
# about this plus a write), and a run writes at most 1/this times a second.
PROGRESS_WRITE_INTERVAL = 0.2
PROGRESS_TIMEOUT_SECONDS = 1.0  # a progress write waits at most this for the database
PROGRESS_PAUSE_SECONDS = 2.0  # after a progress write failed, none for this long
# Writes at once: a write mostly waits for the database (and, on a busy
# process, for the GIL after each socket call); one thread cannot keep up with
# 32 streams' writes on a loaded 2-core machine.
PROGRESS_WRITERS = 4
IDLE_SECONDS = 5.0  # the writer thread ends after this long with nothing scheduled

# (exc, what, quiet level, message, *args): the lifecycle's logging of database errors.
ErrorLog = Callable[..., None]


class RunState(Protocol):
    """What a progress writer reads and sets of its run (`run.Run`)."""

    oid: ObjectId
    epoch: int
    cancel: threading.Event
    lost: bool
    lease_renewed: float


@dataclass(frozen=True)
class _Report:
    percentage: int
    stage: str
    stage_progress: int
    message: str
    at: float  # monotonic time of the report


class ProgressWriter:
    """One run's progress: the generator's `report` callback. All its state is
    guarded by its `ProgressWrites`' lock."""

    def __init__(self, writes: ProgressWrites, run: RunState, job: Doc) -> None:
        self.writes = writes
        self.run = run
        self.started_us = job["started_us"]
        self.started_mono = time.monotonic()
        # The claim already wrote 0%: the first write comes an interval after the start.
        self.last_write = self.started_mono
        self.paused_until = 0.0  # after this run's write failed
        self.latest: _Report | None = None  # reported, not yet written
        self.scheduled = False  # a write of this run is due (in the heap) or in flight
        self.in_flight = False
        self.closed = False  # the outcome is being written: nothing more

    def report(self, percentage: int, stage: str, stage_progress: int, message: str) -> None:
        """Keep the latest report (the generator never waits for the database)."""
        latest = _Report(percentage, stage, stage_progress, message, time.monotonic())
        writes = self.writes
        with writes.changed:
            if self.closed or self.run.lost:
                return
            self.latest = latest
            if not self.scheduled:
                self.scheduled = True
                writes.schedule(self, max(self.last_write + writes.interval, self.paused_until))


class ProgressWrites:
    """Every run's progress writes of one dispatcher, on a few threads of its own
    (started when there is something to write, ended when idle)."""

    def __init__(
        self,
        queue: QueueStore,
        tell: Callable[[Doc, str], None],
        database_error: ErrorLog,
        interval: float = PROGRESS_WRITE_INTERVAL,
        threads: int = PROGRESS_WRITERS,
        lease_seconds: float = 0.0,
    ) -> None:
        self.queue = queue
        self.tell = tell
        self.database_error = database_error
        self.interval = interval
        # Each write also extends the run's lease (the same fence as the lease
        # keeper's renewal), so the keeper skips a run that reports: at 32
        # streaming runs that is 32 renewals a second fewer.
        self.lease_us = int(lease_seconds * 1_000_000)
        self.changed = threading.Condition()
        self._due: list[tuple[float, int, ProgressWriter]] = []  # a heap of (due, order, writer)
        self._order = itertools.count()  # ties in `_due` go first come, first served
        # By (job, epoch), for `close`; weakly: a run ended without `close` (its
        # outcome written with its lane's next claim) leaves nothing behind.
        self._writers: weakref.WeakValueDictionary[tuple[ObjectId, int], ProgressWriter] = (
            weakref.WeakValueDictionary()
        )
        self.threads = threads
        self._threads = 0  # writer threads alive
        self._timer = False  # one of them waits for the next due write
        self._waking_at = float("inf")  # when that one wakes by itself (monotonic)
        self._paused_until = 0.0  # the database was unreachable: no writes until then

    def writer(self, run: RunState, job: Doc) -> ProgressWriter:
        """The progress writer of a run that starts now."""
        writer = ProgressWriter(self, run, job)
        with self.changed:
            self._writers[(run.oid, run.epoch)] = writer
        return writer

    def close(self, run: RunState) -> None:
        """The run's outcome is about to be written: drop its pending progress,
        wait for a write in flight (at most its timeout), and take no more."""
        with self.changed:
            writer = self._writers.pop((run.oid, run.epoch), None)
            if writer is None:
                return  # no progress writer (a run given back, or given to wait), or gone
            writer.closed = True
            writer.latest = None
            self.changed.wait_for(lambda: not writer.in_flight)

    def schedule(self, writer: ProgressWriter, due: float) -> None:
        """A write of `writer` at `due` (monotonic); called holding `changed`."""
        heapq.heappush(self._due, (due, next(self._order), writer))
        if self._timer:
            if due < self._waking_at:
                self.changed.notify_all()  # the timekeeper wakes sooner (and `close` waiters check again)
        elif self._threads < self.threads:
            self._start()
        # Else every thread is writing: the first to finish keeps the time.

    def _start(self) -> None:
        """Another writer thread; called holding `changed`."""
        self._threads += 1
        threading.Thread(target=self._work, name="dispatcher-progress", daemon=True).start()

    def _work(self) -> None:
        with self.changed:
            try:
                while (writer := self._next()) is not None:
                    self._write_locked(writer)
            finally:
                self._threads -= 1

    def _write_locked(self, writer: ProgressWriter) -> None:
        """Write `writer`'s latest report; called holding `changed`, which it
        releases meanwhile."""
        report, writer.latest, writer.in_flight = writer.latest, None, True
        assert report is not None
        started = time.monotonic()
        self.changed.release()
        try:
            self._write(writer, report)
        except Exception:  # never the generator's: its next report is written all the same
            log.exception("job %s: progress write failed", writer.run.oid)
        finally:
            self.changed.acquire()
            writer.in_flight = False
            writer.last_write = started
            if writer.latest is not None and not writer.closed:
                self.schedule(writer, max(started + self.interval, writer.paused_until))
            else:
                writer.scheduled = False
            self.changed.notify_all()  # a `close` may wait for this write

    def _next(self) -> ProgressWriter | None:
        """The next writer due with a report to write, once due. One idle
        thread at most keeps the time; another finding nothing due ends, and
        so does the timekeeper after IDLE_SECONDS with nothing scheduled (None).
        Called holding `changed`."""
        while True:
            now = time.monotonic()
            if self._due and (due := max(self._due[0][0], self._paused_until)) <= now:
                _, _, writer = heapq.heappop(self._due)
                if writer.closed or writer.latest is None or writer.run.lost:
                    writer.scheduled = False
                    continue
                if self._due and not self._timer and self._threads < self.threads:
                    self._start()  # more to write: in parallel, the database's answers overlap
                return writer
            if self._timer:
                return None
            wake = due if self._due else now + IDLE_SECONDS
            self._timer, self._waking_at = True, wake
            self.changed.wait(wake - now)
            self._timer, self._waking_at = False, float("inf")
            if not self._due and time.monotonic() >= wake:
                return None

    def _write(self, writer: ProgressWriter, report: _Report) -> None:
        """One fenced update of the run's progress, and its PROGRESS event."""
        run = writer.run
        progress = progress_fields(
            report.percentage,
            report.stage,
            report.stage_progress,
            report.message,
            writer.started_us,
            report.at - writer.started_mono,
        )
        now_us = clock.now_us()
        changes: Doc = {"progress": progress, "updated_us": now_us}
        if self.lease_us:
            changes["lease_until_us"] = now_us + self.lease_us
        sent = time.monotonic()
        # Never backwards: an external service's ReportProgress may have stored
        # a higher percentage since this report was made (http generator).
        at_most = {"progress.percentage": {"$lte": report.percentage}}
        try:
            # Briefly: a `close` (the outcome) may wait for this write.
            with pymongo.timeout(PROGRESS_TIMEOUT_SECONDS):
                after = self.queue.fenced_update(run.oid, run.epoch, changes, when=at_most)
                # Not stored: the run lost the job, or the job is further along (rare: read which).
                behind = after is None and self.queue.run_progress(run.oid, run.epoch) is not None
        except PyMongoError as exc:
            # Progress is advisory: a later report or the outcome supersedes it.
            self.database_error(
                exc, f"job {run.oid}", logging.DEBUG, "job %s: progress not stored (%s)", run.oid, exc
            )
            pause = time.monotonic() + PROGRESS_PAUSE_SECONDS  # no stall per report
            writer.paused_until = pause
            if unreachable(exc):  # every run's write would wait as long
                self._paused_until = pause
            return
        if behind:  # the stored progress is newer news than this report
            return
        if after is None:  # another run took the job over, or it ended meanwhile
            run.lost = True
            run.cancel.set()
            return
        if self.lease_us:
            run.lease_renewed = sent
        if after.get("cancel_requested"):
            run.cancel.set()
        self.tell(after, PROGRESS)
