"""The leader's housekeeping, on the dispatcher thread once a second (and at
once after an election): runs whose lease lapsed are recovered (requeued,
failed, or given back), other servers' live runs counted (they take lanes),
due retries and schedule times made ready, schedules ticked, providers'
marks refreshed, budget holds released; once a sweep interval, expired jobs
purged and the sweepers run (the unsettled bulk jobs, the pending
notifications, the uncounted costs). Each read is an index search of live
documents: the running jobs by status, the waiting lanes' due jobs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence

import pymongo
from bson import ObjectId

from genjobs.server.dispatch.keeper import LEADER_LEASE
from genjobs.server.dispatch.providers import ProviderGate
from genjobs.server.dispatch.run import Run, RunLifecycle
from genjobs.server.model import clock
from genjobs.server.model.states import Status
from genjobs.server.model.vocabulary import Priority
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import STATUS_CHANGED
from genjobs.server.storage.jobs import job_error
from genjobs.server.storage.queue import HELD, NONE, READY
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import metrics

log = logging.getLogger("genjobs.server.dispatch.dispatcher")  # the dispatcher's lines

HOUSEKEEPING_INTERVAL = 1.0
SWEEP_TIMEOUT_SECONDS = 120.0

Offer = Callable[[int, ObjectId, str, int], None]


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
        started_here: Collection[tuple[ObjectId, int]],
        ended: Callable[[int], None],
        offer: Offer,
        wake: Callable[[], None],
        release: Callable[[], int],
        tickers: Sequence[Callable[[], None]],
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
        self.gap_us = gap_us
        self.needs_recovery = True
        self.elsewhere = 0  # live runs of other servers at the last pass
        self._elected = False  # set on election: read the former leader's last end
        self._last_pass = 0.0
        self._last_sweep = 0.0

    def elected(self) -> None:
        """This server took the leader lease: recover the former leader's runs at the next pass."""
        self.needs_recovery = True
        self._elected = True

    def run(self) -> None:
        """Recover lapsed runs, count the live runs of other servers, and
        promote due retries; once a sweep interval purge expired jobs and run
        the sweepers."""
        now = time.monotonic()
        if not self.needs_recovery and now - self._last_pass < HOUSEKEEPING_INTERVAL:
            return
        self._last_pass = now
        now_us = clock.now_us()
        if self._elected:
            self._elected = False
            self.elsewhere = 0
            if self.gap_us:
                self._ended(self.queue.last_run_end(LEADER_LEASE))
        elsewhere = 0
        for doc in self.queue.processing_jobs():
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
        self._promote_due(now_us)
        for tick in self.tickers:
            tick()
        if self.gate is not None:
            self.gate.tick(lambda doc: self._lifecycle.tell(doc, STATUS_CHANGED))
        if self.release():
            self.wake()
        if now - self._last_sweep >= self.sweep_seconds:
            self._last_sweep = now
            # A purge of a long backlog may take longer than any one query may.
            with pymongo.timeout(SWEEP_TIMEOUT_SECONDS):
                purged = self.store.purge_expired(now_us)
                if purged:
                    log.info("retention: removed %d completed jobs", purged)
                for sweep in self.sweepers:
                    sweep()
        self.needs_recovery = elsewhere > 0

    def _promote_due(self, now_us: int) -> None:
        """Make the due jobs of the waiting lanes ready; a paused bulk job's item
        is held instead (its retry failure may have been written as the pause
        moved its siblings): it waits for the resume like them."""
        lanes: dict[str, str] = {}  # bulk job id -> the lane its items go to now (one read each)
        for lane, oid, bulk_id in self.queue.due_waiting(now_us):
            if bulk_id and lanes.setdefault(bulk_id, self.bulks.bulk_lane(bulk_id)) == HELD:
                self.queue.move_queued([(oid, lane, HELD)], bump=True)
                continue
            promoted = self.queue.make_ready(oid, lane)
            if promoted is not None:
                self.offer(promoted["ck"], oid, promoted["owner"], Priority.rank_of(promoted.get("rank")))

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
            if after["status"] == str(Status.QUEUED) and after["queue"] == READY:
                self.offer(after["ck"], after["_id"], after["owner"], Priority.rank_of(after.get("rank")))
