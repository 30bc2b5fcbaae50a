"""The leader's housekeeping, on the dispatcher thread once a second (and at
once after an election): runs whose lease lapsed are recovered (requeued,
failed, or given back), other servers' live runs counted (they take lanes),
due retries and schedule times made ready, schedules ticked, providers'
marks refreshed, budget holds released; once a sweep interval, expired jobs
purged and the sweepers run (the unsettled bulk jobs, the pending
notifications, the uncounted costs). Each read is an index search of live
documents: the running jobs by status, the waiting lanes' due jobs.

A leader alone (no other replica alive) reads less, trusting what it knows
for up to RECHECK_SECONDS. Its runs are all its own, so the running jobs are
read only after the database failed to answer (a claim's or an outcome's
answer may have been lost), while a run's outcome could not be stored, and
while runs of other servers are left; providers' marks, which only the
leader stores, only after an election. The waiting lanes are read only when
a job there may be due (`NextDue`): each read says when the next falls due,
jobs entering a waiting lane on this server lower that time, and anything
else (a wakeup from another replica, a resume, an election) makes it
unknown. What was changed by hand (an operator, a server of an older
version) is found within RECHECK_SECONDS."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence

import pymongo
from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.dispatch.keeper import LEADER_LEASE
from genjobs.server.dispatch.providers import ProviderGate
from genjobs.server.dispatch.run import Run, RunLifecycle, database_error
from genjobs.server.model import clock
from genjobs.server.model.recheck import Recheck
from genjobs.server.model.states import Status
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import STATUS_CHANGED
from genjobs.server.storage.jobs import job_error
from genjobs.server.storage.outage import Outage
from genjobs.server.storage.queue import DUE_LIMIT, HELD, NONE
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import metrics

log = logging.getLogger("genjobs.server.dispatch.dispatcher")  # the dispatcher's lines

HOUSEKEEPING_INTERVAL = 1.0
SWEEP_TIMEOUT_SECONDS = 120.0

Offer = Callable[[Doc], None]  # a job entered the ready lane: its candidate fields
NEVER = sys.maxsize  # no job waits


class NextDue:
    """When the next job of the waiting lanes falls due (wall clock, µs), as
    this server knows it: read with the due jobs, lowered as jobs enter a
    waiting lane here, forgotten (read at the next pass) when something else
    may have put one there. From any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at_us: int | None = None  # None: not known
        self._version = 0  # moves with every lowering or forgetting

    def due(self, now_us: int) -> bool:
        """Whether the waiting lanes must be read now."""
        at_us = self._at_us
        return at_us is None or at_us <= now_us

    def reading(self) -> int:
        """A read of the waiting lanes starts: what it finds is kept unless
        a job entered one meanwhile (`read` gets the version returned)."""
        with self._lock:
            self._at_us = None
            return self._version

    def read(self, version: int, next_us: int | None) -> None:
        """The read begun at `version` says the next job falls due at `next_us` (None: none waits)."""
        with self._lock:
            if version == self._version:
                self._at_us = NEVER if next_us is None else next_us

    def lower(self, at_us: int) -> None:
        """A job entered a waiting lane here, due at `at_us`."""
        with self._lock:
            self._version += 1
            if self._at_us is not None:
                self._at_us = min(self._at_us, at_us)

    def forget(self) -> None:
        """Something may have put a job in a waiting lane: read them at the next pass."""
        with self._lock:
            self._version += 1
            self._at_us = None


class Sweeping:
    """The leader's sweeps, one at a time on a thread of their own: a sweep may
    take seconds (the archive moves for up to 2 s a step, a purge of a long
    backlog longer), and the dispatcher's thread claims, promotes and
    recovers meanwhile. A stopping server lets go of the leader lease once
    the sweep under way ends, or its grace does: two servers' sweeps may
    not overlap (two counts of a cost could both apply)."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage  # what a sweep's database error is logged through
        self._thread: threading.Thread | None = None

    def start(self, sweep: Callable[[], None]) -> bool:
        """Run `sweep` now, unless the last one still runs; whether it started."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._thread = threading.Thread(target=self._run, args=(sweep,), name="dispatcher-sweep", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float) -> None:
        """Wait for the sweep under way, at most `timeout` seconds (the server is stopping)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, sweep: Callable[[], None]) -> None:
        try:
            sweep()
        except PyMongoError as exc:
            database_error(
                self.outage,
                exc,
                "sweep",
                logging.DEBUG,
                "sweep: database error (%s); the next retries",
                exc,
            )
        except Exception:
            log.exception("sweep: unexpected error")


class Housekeeping:
    """One dispatcher's housekeeping (see the module); `needs_recovery` and
    `elsewhere` are what its claims read of it."""

    def __init__(
        self,
        store: Store,
        lifecycle: RunLifecycle,
        worker_id: str,
        *,
        may_take_over: Callable[[Doc, float], bool],
        runs_here: Callable[[Doc], bool],
        alone: Callable[[], bool],
        started_here: Collection[tuple[ObjectId, int]],
        ended: Callable[[int], None],
        offer: Offer,
        wake: Callable[[], None],
        release: Callable[[bool], int],
        tickers: Sequence[Callable[[bool, bool], None]],
        gate: ProviderGate | None,
        sweepers: Sequence[Callable[[], None]],
        sweep_seconds: float,
        gap_us: int,
    ) -> None:
        self.store, self.queue, self.bulks = store, store.queue, store.bulks
        self._lifecycle = lifecycle
        self.worker_id = worker_id
        self._may_take_over = may_take_over
        self._runs_here = runs_here  # a processing job that runs here, or is being stored running here
        self._alone = alone  # no other replica is alive
        self.next_due = NextDue()
        # (job, epoch) of the runs started here, and (the lifecycle's `abandoned`)
        # of those whose outcome could not be stored: when such a lease lapses,
        # the database, not the generator or a crash, cost the attempt, so it is given back.
        self._started = started_here
        self._ended = ended
        self.offer = offer
        self.wake = wake
        self.release = release
        self.tickers = tickers  # run on every pass (schedules' ticks)
        self.gate = gate
        self.sweepers = sweepers
        self.sweep_seconds = sweep_seconds
        self._sweeping = Sweeping(store.outage)
        self.gap_us = gap_us
        self.needs_recovery = True
        self.elsewhere = 0  # live runs of other servers at the last pass
        self._elected = False  # set on election: read the former leader's last end
        self._failures_seen = -1  # the database's failures as of the last read of the running jobs
        self._look = False  # a job may be running nowhere (`look_for_runs`)
        self._last_pass = 0.0
        self._last_sweep = 0.0
        self._recheck = Recheck()  # the reads a leader alone makes once a recheck

    def elected(self) -> None:
        """This server took the leader lease: recover the former leader's runs at the next pass."""
        self.needs_recovery = True
        self._elected = True
        self.next_due.forget()

    def finish(self, timeout: float) -> None:
        """The server is stopping: wait for the sweep under way, at most `timeout` seconds."""
        self._sweeping.join(timeout)

    def look_for_runs(self) -> None:
        """A job may be left running nowhere (a stored-running insert whose
        answer was lost, or one stored too late to run): read the running jobs at the next pass."""
        self._look = True

    def run(self) -> None:
        """Recover lapsed runs, count the live runs of other servers, and
        promote due retries; once a sweep interval purge expired jobs and run
        the sweepers."""
        now = time.monotonic()
        if not self.needs_recovery and now - self._last_pass < HOUSEKEEPING_INTERVAL:
            return
        self._last_pass = now
        now_us = clock.now_us()
        elected, alone = self._elected, self._alone()
        if elected:
            self.elsewhere = 0
            if self.gap_us:
                self._ended(self.queue.last_run_end(LEADER_LEASE))
        recheck = self._recheck.due(alone)
        self._look_at_runs(now, now_us, recheck)
        if self.next_due.due(now_us) or recheck:
            self._promote_due(now_us, alone)
        for tick in self.tickers:
            tick(alone, recheck)
        if self.gate is not None:
            self.gate.tick(lambda doc: self._lifecycle.tell(doc, STATUS_CHANGED), learn=elected or recheck)
        self._elected = False  # (cleared once its reads are made: a pass that fails makes them again)
        if recheck:
            self._recheck.read(alone, now)
        if self.release(alone):
            self.wake()
        if now - self._last_sweep >= self.sweep_seconds and self._sweeping.start(lambda: self._sweep(now_us)):
            self._last_sweep = now

    def _look_at_runs(self, now: float, now_us: int, recheck: bool) -> None:
        """Read the running jobs (`_count_runs`) when what is known of them may
        be wrong: recovery is due, the database failed to answer since the
        last read (an answer may have been lost), a run's outcome is not
        stored yet, a job stored running may run nowhere, or at a `recheck`."""
        failures = self.store.outage.failures
        if failures != self._failures_seen:
            self.next_due.forget()  # an insert's answer lost: a job may wait untold
        unsure = self._look or self._lifecycle.abandoned or failures != self._failures_seen
        if self.needs_recovery or unsure or recheck:
            self._look = False
            self._count_runs(now, now_us)
            self._failures_seen = failures  # (once read: a read that fails is made again)

    def _sweep(self, now_us: int) -> None:
        """Purge the jobs past their retention, and run the sweepers."""
        # A purge of a long backlog may take longer than any one query may.
        with pymongo.timeout(SWEEP_TIMEOUT_SECONDS):
            purged = self.store.purge_expired(now_us)
            if purged:
                log.info("retention: removed %d completed jobs", purged)
            for sweeper in self.sweepers:
                sweeper()

    def _count_runs(self, now: float, now_us: int) -> None:
        """Recover the runs whose lease lapsed, and count the live runs of other servers."""
        elsewhere = 0
        running = self.queue.processing_jobs()
        held = {(doc["_id"], doc["epoch"]) for doc in running}
        # Stored after all (its answer lost), or recovered by another server: not ours to give back.
        for gone in [key for key in list(self._lifecycle.abandoned) if key not in held]:
            self._lifecycle.abandoned.discard(gone)
        for doc in running:
            run_key = (doc["_id"], doc["epoch"])
            if self._runs_here(doc):
                continue  # the keeper holds its lease (or its lane takes it next)
            if doc["lease_until_us"] < now_us and self._may_take_over(doc, now):
                self._recover(doc)
            elif run_key not in self._started:
                elsewhere += 1  # another server's run (started here: ended since, or abandoned)
        if elsewhere < self.elsewhere:
            self._ended(now_us)  # a run elsewhere ended by now: the gap counts from here
        self.elsewhere = elsewhere
        self.needs_recovery = elsewhere > 0

    def _promote_due(self, now_us: int, alone: bool) -> None:
        """Make the due jobs of the waiting lanes ready; a paused bulk job's item
        is held instead (its retry failure may have been written as the pause
        moved its siblings): it waits for the resume like them. A leader
        `alone` then asks when the next falls due (with other replicas alive,
        the lanes are read every pass: the time would go unused)."""
        lanes: dict[str, str] = {}  # bulk job id -> the lane its items go to now (one read each)
        version = self.next_due.reading()
        due = self.queue.due_waiting(now_us)
        for lane, oid, bulk_id in due:
            if bulk_id and lanes.setdefault(bulk_id, self.bulks.bulk_lane(bulk_id)) == HELD:
                self.queue.move_queued([(oid, lane, HELD)], bump=True)
                continue
            promoted = self.queue.make_ready(oid, lane)
            if promoted is not None:
                self.offer(promoted)
        # Once every due job is promoted (a pass that fails reads them again):
        # when the next falls due; what entered a waiting lane meanwhile lowers it.
        if alone and len(due) < DUE_LIMIT:
            self.next_due.read(version, self.queue.next_due(now_us))

    def _recover(self, doc: Doc) -> None:
        """A run whose lease lapsed (its server died): requeue it or fail it."""
        run_key = (doc["_id"], doc["epoch"])
        abandoned = self._lifecycle.abandoned
        if doc["worker"] == self.worker_id and (run_key not in self._started or run_key in abandoned):
            # Claimed here but never run (the claim's answer was lost), or run
            # here with its outcome lost to a database outage: not an attempt.
            abandoned.discard(run_key)
            self._lifecycle.give_back(Run(doc["_id"], doc["epoch"]), doc)
            return
        attempt, limit = doc["attempt"], doc["max_attempts"]
        lost = job_error("WORKER_LOST", "transient", "the server running this job stopped", True, attempt)
        stamp = clock.now_us()
        changes: Doc = {
            "updated_us": stamp,
            "worker": "",
            "lease_until_us": 0,
            "attempt_errors": [*doc.get("attempt_errors", []), lost],
            "error": lost,
        }
        if doc.get("cancel_requested"):
            changes.update(status=str(Status.CANCELLED), queue=NONE, ended_us=stamp)
        elif attempt < limit:
            changes.update(status=str(Status.QUEUED), queue=self.bulks.bulk_lane(doc.get("bulk_job_id", "")))
            changes["ready_us"] = stamp  # found by the dispatcher's next read of the lane
        else:
            lost["retryable"] = False
            changes.update(status=str(Status.FAILED), queue=NONE, ended_us=stamp)
        after = self.queue.fenced_update(doc["_id"], doc["epoch"], changes)
        if after is not None:
            after = self._lifecycle.held_if_paused(after)
            log.warning("job %s lost its worker; now %s", doc["_id"], after["status"])
            metrics.attempt_lost(after)
            self._lifecycle.tell(after, STATUS_CHANGED)
            self._lifecycle.offer_if_ready(after)
