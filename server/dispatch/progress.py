"""Runs' progress writes, off the generators' threads, in batches.

A generator reports progress as often as it likes (the `openai` generator
once per streamed piece, on the one event loop that serves every job's
stream). `ProgressWriter.report` only keeps the latest report and makes sure
it is pending; `ProgressWrites`, one per dispatcher, writes on a thread of
its own ("dispatcher-progress") the pending reports of every run together:
a run's report is due an interval after its last write (or its start), and
a batch takes every report due within half an interval more, so runs that
stream fall into step, one batch every PROGRESS_WRITE_INTERVAL. A report
waits at most that long (reports are coalesced, never lost).

A batch is one command for every run in it (`QueueStore.write_progress`):
on nx-27017 that costs the database less than half, and the server a tenth,
of one command a run. Each write in it is conditional on the job's sequence
as its run last knew it, so when all of them apply each job is known exactly
(the job the run claimed, with every write since) and its PROGRESS event is
told from memory. When some do not, one read of the batch's jobs says which
run lost its job, which report was behind a stored one, and which job was
changed by another hand (a cancel asked for, an external report): that run
takes the job as stored and writes its report again in the next batch.

A run's outcome supersedes its progress: `close` drops a pending write and
waits for a batch in flight (its events told first), so no progress is
written or told after the outcome.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pymongo
from bson import ObjectId
from pymongo.errors import BulkWriteError, PyMongoError

from genjobs.server.model import clock
from genjobs.server.model.progress import progress_fields
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import PROGRESS
from genjobs.server.storage.places import state_update
from genjobs.server.storage.queue import ProgressUpdate, applied, holds, stamped_by

log = logging.getLogger("genjobs.server.dispatch.dispatcher")  # the dispatcher's lines, as run.py

# A report waits at most this long to be written (latency to watchers is
# about this plus a write), and a run writes at most 1/this times a second.
PROGRESS_WRITE_INTERVAL = 0.2
PROGRESS_TIMEOUT_SECONDS = 1.0  # a batch waits at most this for the database
PROGRESS_PAUSE_SECONDS = 2.0  # after a batch failed, none for this long
IDLE_SECONDS = 5.0  # the writer thread ends after this long with nothing pending

# (exc, what, quiet level, message, *args): the lifecycle's logging of database errors.
ErrorLog = Callable[..., None]


class ProgressStore(Protocol):
    """What progress writes need of storage (`QueueStore`)."""

    def write_progress(self, writes: list[ProgressUpdate]) -> int: ...


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
    """One run's progress: the generator's `report` callback. Its report
    state is guarded by its `ProgressWrites`' lock; `job` is the writer
    thread's alone."""

    def __init__(self, writes: ProgressWrites, run: RunState, job: Doc) -> None:
        self.writes = writes
        self.run = run
        self.job = job  # as stored, as far as this run knows: its claim, and its writes since
        self.started_us = job["started_us"]
        self.started_mono = time.monotonic()
        # The claim wrote 0%: the first write is due an interval after the start.
        self.due = self.started_mono + writes.interval
        self.latest: _Report | None = None  # reported, not yet written
        self.in_flight = False
        self.closed = False  # the outcome is being written: nothing more
        # Its writes since `job` in batches that failed: perhaps applied all the same.
        self.unsure: list[_Write] = []

    def report(self, percentage: int, stage: str, stage_progress: int, message: str) -> None:
        """Keep the latest report (the generator never waits for the database)."""
        latest = _Report(percentage, stage, stage_progress, message, time.monotonic())
        writes = self.writes
        with writes.changed:
            if self.closed or self.run.lost:
                return
            self.latest = latest
            if not self.in_flight:  # else pended again when its batch is done
                writes.pend(self)

    @property
    def scheduled(self) -> bool:
        """Whether a report of this run is pending in the next batch, or in a batch in flight."""
        return self.in_flight or (self.run.oid, self.run.epoch) in self.writes._pending


@dataclass
class _Write:
    """A report in a batch: its writer and the changes it writes."""

    writer: ProgressWriter
    report: _Report
    changes: Doc
    sent: float = 0.0  # when its batch was sent (monotonic)


class ProgressWrites:
    """Every run's progress writes of one dispatcher, in batches on a thread of
    its own (started when there is something to write, ended when idle)."""

    def __init__(
        self,
        queue: ProgressStore,
        read_jobs: Callable[[list[str]], list[Doc]],
        tell: Callable[[Doc, str], None],
        database_error: ErrorLog,
        interval: float = PROGRESS_WRITE_INTERVAL,
        lease_seconds: float = 0.0,
    ) -> None:
        self.queue = queue
        self.read_jobs = read_jobs  # the stored jobs by id, after a batch not wholly applied
        self.tell = tell
        self.database_error = database_error
        self.interval = interval
        # Each write also extends the run's lease (the same fence as the lease
        # keeper's renewal), so the keeper skips a run that reports: at 32
        # streaming runs that is 32 renewals a second fewer.
        self.lease_us = int(lease_seconds * 1_000_000)
        self.changed = threading.Condition()
        # Writers with a report for the next batch, by (job, epoch), in order.
        self._pending: dict[tuple[ObjectId, int], ProgressWriter] = {}
        # By (job, epoch), for `close`; weakly: a run ended without `close` (its
        # outcome written with its lane's next claim) leaves nothing behind.
        self._writers: weakref.WeakValueDictionary[tuple[ObjectId, int], ProgressWriter] = (
            weakref.WeakValueDictionary()
        )
        self._thread = False  # the writer thread is alive
        self._paused_until = 0.0  # a batch failed: no writes until then

    def writer(self, run: RunState, job: Doc) -> ProgressWriter:
        """The progress writer of a run that starts now (`job`: as its claim stored it)."""
        writer = ProgressWriter(self, run, job)
        with self.changed:
            self._writers[(run.oid, run.epoch)] = writer
        return writer

    def close(self, run: RunState) -> None:
        """The run's outcome is about to be written: drop its pending progress,
        wait for a batch in flight with it (its commands bounded by their
        timeout, then its events told), and take no more."""
        with self.changed:
            writer = self._writers.pop((run.oid, run.epoch), None)
            if writer is None:
                return  # no progress writer (a run given back, or given to wait), or gone
            writer.closed = True
            writer.latest = None
            self._pending.pop((run.oid, run.epoch), None)
            self.changed.wait_for(lambda: not writer.in_flight)

    def pend(self, writer: ProgressWriter) -> None:
        """`writer`'s report goes in the next batch; called holding `changed`."""
        key = (writer.run.oid, writer.run.epoch)
        if key in self._pending and self._thread:
            # Its due time is unchanged, and so is the thread's wait: a run that
            # streams reports once a token, and waking the thread for each was
            # a tenth of its CPU at concurrency 1.
            return
        # The thread waits for the earliest due time: woken only for an earlier one.
        sooner = not self._pending or writer.due < min(w.due for w in self._pending.values())
        self._pending[key] = writer
        if not self._thread:
            try:
                threading.Thread(target=self._work, name="dispatcher-progress", daemon=True).start()
            except RuntimeError:  # no thread to be had (the interpreter is ending): never the generator's
                log.exception("job %s: progress not written", writer.run.oid)
                del self._pending[key]
                return
            self._thread = True
        elif sooner:
            self.changed.notify_all()

    def _work(self) -> None:
        with self.changed:
            try:
                while (batch := self._next_batch()) is not None:
                    self._write_locked(batch)
            finally:
                self._thread = False

    def _next_batch(self) -> list[_Write] | None:
        """The next batch, once a pending report is due: every pending report
        due within half an interval more (so runs that report all the time
        fall into step, one batch an interval, and no run writes twice within
        half an interval); None after IDLE_SECONDS with nothing pending.
        Called holding `changed`."""
        idle_until = time.monotonic() + IDLE_SECONDS
        while True:
            now = time.monotonic()
            if not self._pending:
                if now >= idle_until:
                    return None
                self.changed.wait(idle_until - now)
                continue
            due = max(min(writer.due for writer in self._pending.values()), self._paused_until)
            if now < due:
                self.changed.wait(due - now)
                continue
            batch: list[_Write] = []
            for key, writer in list(self._pending.items()):
                if writer.due > now + self.interval / 2:
                    continue
                del self._pending[key]
                report, writer.latest = writer.latest, None
                if report is None or writer.closed or writer.run.lost:
                    continue
                try:
                    changes = self._changes(writer, report)
                except Exception:  # a generator's report the store cannot take: not the thread's end
                    log.exception("job %s: progress report not written", writer.run.oid)
                    continue
                writer.due = now + self.interval
                batch.append(_Write(writer, report, changes))
            for write in batch:  # only now: nothing between here and `_write_locked` raises
                write.writer.in_flight = True
            if batch:
                return batch

    def _changes(self, writer: ProgressWriter, report: _Report) -> Doc:
        """What writing `report` sets on the job."""
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
        return changes

    def _write_locked(self, batch: list[_Write]) -> None:
        """Write a batch; called holding `changed`, which it releases meanwhile."""
        again: list[ProgressWriter] = []
        self.changed.release()
        try:
            again = self._write(batch)
        except Exception:  # never the generators': their next reports are written all the same
            log.exception("%d progress writes failed", len(batch))
        finally:
            self.changed.acquire()
            for write in batch:
                writer = write.writer
                writer.in_flight = False
                if writer in again and writer.latest is None:
                    writer.latest = write.report  # the job changed meanwhile: written next time
                if writer.latest is not None and not writer.closed and not writer.run.lost:
                    self._pending[(writer.run.oid, writer.run.epoch)] = writer
            self.changed.notify_all()  # a `close` may wait for this batch

    def _write(self, batch: list[_Write]) -> list[ProgressWriter]:
        """One command for the batch, and each applied write's PROGRESS event;
        the writers whose report is to be written again."""
        sent = time.monotonic()
        for write in batch:
            write.sent = sent
        updates = [
            ProgressUpdate(w.writer.run.oid, w.writer.run.epoch, w.writer.job["seq"], w.changes)
            for w in batch
        ]
        try:
            # Briefly: a `close` (the outcome) may wait for this batch.
            with pymongo.timeout(PROGRESS_TIMEOUT_SECONDS):
                try:
                    whole = self.queue.write_progress(updates) == len(updates)
                except BulkWriteError:
                    whole = False  # some applied, some refused: the read says which
                stored = {} if whole else {d["_id"]: d for d in self.read_jobs([str(u.oid) for u in updates])}
        except PyMongoError as exc:
            # Progress is advisory: the reports are written after a pause, unless superseded.
            self._paused_until = time.monotonic() + PROGRESS_PAUSE_SECONDS  # no stall per report
            for write in batch:
                write.writer.unsure.append(write)  # perhaps applied, its answer lost
            self.database_error(exc, "progress", logging.DEBUG, "progress not stored (%s)", exc)
            return [write.writer for write in batch]
        again: list[ProgressWriter] = []
        for write in batch:
            try:  # each on its own: a listener's error must not leave the others untold
                if self._settle(write, None if whole else stored):
                    again.append(write.writer)
            except Exception:
                log.exception("job %s: telling of its progress failed", write.writer.run.oid)
        return again

    def _settle(self, write: _Write, stored: dict[ObjectId, Doc] | None) -> bool:
        """Tell of `write` if it was applied (`stored`: the batch's jobs as read
        after it, None when every write applied); whether its report is to be
        written again."""
        writer, run = write.writer, write.writer.run
        unsure, writer.unsure = writer.unsure, []
        if stored is None:  # the job was as its run knew it: it is that, with this write
            self._written(writer, applied(writer.job, state_update(write.changes)), write)
            return False
        after, known = stored.get(run.oid), writer.job["seq"]
        if after is None or not holds(after, run.epoch):
            run.lost = True  # another run took the job over, or it ended meanwhile
            run.cancel.set()
            return False
        if after["seq"] == known + 1 and stamped_by(after, run.epoch, write.changes):
            self._written(writer, after, write)  # this write, and nothing else
            return False
        if after["seq"] == known:  # unchanged: the stored progress is newer news than this report
            return False
        lost = [earlier for earlier in unsure if stamped_by(after, run.epoch, earlier.changes)]
        if lost and after["seq"] == known + 1:
            # A write of this run whose answer was lost, and nothing else: told now.
            self._written(writer, after, lost[0])
            return lost[0].report is not write.report
        writer.job = after  # changed by another hand: taken as stored, written again
        if after.get("cancel_requested"):
            run.cancel.set()
        return True

    def _written(self, writer: ProgressWriter, after: Doc, write: _Write) -> None:
        """`write` is stored (`after`, the job now): tell of it."""
        writer.job = after
        if self.lease_us:
            writer.run.lease_renewed = write.sent  # the lease it set runs from then
        if after.get("cancel_requested"):
            writer.run.cancel.set()
        self.tell(after, PROGRESS)
