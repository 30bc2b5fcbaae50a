"""A run's lifecycle on the dispatcher: the generator's call, its progress
writes, and its outcome (completed, failed with or without a retry,
cancelled, or given back), each written fenced by the run's lease epoch.

`RunLifecycle` runs one claimed job; the `Dispatcher` holds one and calls
`execute` (a claimed job's attempt), `give_back` (a lapsed run of its own
that was not an attempt), `held_if_paused` and `tell`. The claiming, the
leadership and the housekeeping stay in `dispatcher`.

A claimed job stays the document the claim returned, on purpose: the claim's
hot path converts nothing. `JobChanges.record` turns a change into a `Job` once, for
the listeners, when it ends a job or moves a bulk item.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.dispatch.progress import ProgressWrites
from genjobs.server.dispatch.providers import ProviderGate
from genjobs.server.generators.base import (
    CancelSignal,
    GenerationCancelled,
    GenerationFailed,
    Generator,
    JobSpec,
)
from genjobs.server.model import clock
from genjobs.server.model.states import Status
from genjobs.server.storage.bulk import BulkStore
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import STATUS_CHANGED
from genjobs.server.storage.jobs import job_error
from genjobs.server.storage.outage import Outage, persist, unreachable
from genjobs.server.storage.queue import BACKOFF, NONE, READY, QueueStore, stamped_by
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import context, metrics

log = logging.getLogger("genjobs.server.dispatch.dispatcher")  # one logger for the dispatcher's lines

MAX_BACKOFF_SECONDS = 300.0
# How long a run's outcome waits for an unreachable database before the run
# is abandoned (its lease lapses; it is requeued with its attempt given back).
OUTCOME_PATIENCE_SECONDS = 300.0


@dataclass
class Run:
    """A job this dispatcher is running now."""

    oid: ObjectId
    epoch: int
    cancel: threading.Event = field(default_factory=CancelSignal)  # calls back: generators need not poll
    lost: bool = False  # another run took the job over: write nothing more
    stopping: bool = False  # the server is shutting down: requeue, don't cancel
    generated: bool = False  # the generator was called: its end counts for the gap
    following: Doc | None = None  # the job its lane claimed as it ended (run next by that lane)
    lease_renewed: float = 0.0  # when a progress write last extended its lease (monotonic)


@dataclass
class Followed:
    """What writing a run's outcome together with its lane's next claim did."""

    ended: Doc | None  # the ended job as stored; None: its outcome is written the usual way
    unsure: bool = False  # the command failed: the outcome may have been stored


def database_error(
    outage: Outage, exc: PyMongoError, what: str, quiet: int, message: str, *args: object
) -> None:
    """Log `message` as a WARNING; or, when `exc` is the database not
    answering, at level `quiet`: the store's Outage says that once."""
    level = quiet if outage.failed(exc, what) else logging.WARNING
    log.log(level, message, *args)


class RunLifecycle:
    """Runs one claimed job and stores its outcome, for the `Dispatcher` that holds it."""

    def __init__(
        self,
        store: Store,
        generator: Generator,
        record: Callable[[Doc, str], None],
        retry_base_seconds: float,
        stopping: threading.Event,
        gate: ProviderGate | None = None,
        follow: Callable[[Run, Doc, Doc], Followed] | None = None,
        lease_seconds: float = 0.0,
        record_later: Callable[[Doc, str], None] | None = None,
        requeued: Callable[[Doc], None] | None = None,
    ) -> None:
        self.store = store
        # The dispatcher's offer: a job sent back to the ready lane (a run's
        # outcome, a recovery) is known there without a read (a leader alone
        # reads the lane once a recheck).
        self.requeued = requeued
        # The dispatcher's: store a completed run's outcome with its lane's next claim.
        self.follow = follow
        self.gate = gate  # whether a failure was the provider's (an outage, a rate limit)
        self.queue: QueueStore = store.queue
        self.bulks: BulkStore = store.bulks
        self.generator = generator
        self.record = record
        # A followed run's end (its lane's next job claimed with it): told off the lane's path.
        self.record_later = record_later or record
        self.retry_base_seconds = retry_base_seconds
        self._stopping = stopping  # the dispatcher's: an outcome stops waiting for the database
        # (job, epoch) of the runs whose outcome could not be stored: the
        # dispatcher gives such a run back, not counting it as an attempt.
        self.abandoned: set[tuple[ObjectId, int]] = set()
        # On threads of its own; each write extends the run's lease too.
        self.progress = ProgressWrites(
            self.queue, store.jobs.jobs_by_ids, self.tell, self._database_error, lease_seconds=lease_seconds
        )

    def execute(self, job: Doc, run: Run) -> None:
        """Run the claimed `job` (its `run` registered by the dispatcher) and store its outcome."""
        metrics.attempt_started(job)
        with context.job_attempt(job):  # log context and trace span of the attempt
            self._run_attempt(job, run)

    def give_back(self, run: Run, job: Doc) -> None:
        """Requeue `job` with its attempt given back (a run that was not an attempt)."""
        self._write_outcome(run, self.bulks.requeue_changes(job))

    def _run_attempt(self, job: Doc, run: Run) -> None:
        run.generated = True
        self.tell(job, STATUS_CHANGED)
        spec = JobSpec(
            str(job["_id"]),
            job["owner"],
            job["mode"],
            job["params"],
            job["attempt"],
            epoch=job["epoch"],
            started_us=job["started_us"],
        )
        reporter = self.progress.writer(run, job)
        try:
            output = self.generator.generate(spec, reporter.report, run.cancel)
        except GenerationCancelled:
            self._finish_cancelled(run, job)
        except GenerationFailed as failure:
            wait = self.gate.settle(job, failure=failure) if self.gate else None
            if wait is not None:
                # The provider's failure, not the job's: the attempt is given back.
                self.wait_for_provider(run, job, wait, failure)
                return
            self._finish_failed(
                run, job, failure.code, failure.message, failure.retryable, failure.retry_after_seconds
            )
        except PyMongoError as exc:
            # A database error is never the generator's: the attempt is given back.
            self._database_error(
                exc,
                f"job {job['_id']}",
                logging.INFO,
                "job %s: database error while generating (%s); requeued",
                job["_id"],
                exc,
            )
            self._write_outcome(run, self.bulks.requeue_changes(job))
        except Exception as exc:
            log.exception("generator crashed on job %s", job["_id"])
            self._finish_failed(run, job, "GENERATOR_CRASHED", f"{type(exc).__name__}: {exc}", False)
        else:
            if self.gate:
                self.gate.settle(job, output=output)
            changes = self.queue.completion(output.as_doc(), job["started_us"])
            followed = Followed(None)
            if self.follow:
                # Its progress written first (or dropped): the outcome is stored
                # over the job as its last write left it, the version it knows.
                self.progress.close(run)
                if not reporter.unsure:
                    followed = self.follow(run, reporter.job, changes)
            if followed.ended is not None:
                self._stored(followed.ended, followed=True)
            else:
                self._write_outcome(run, changes, unsure=followed.unsure)

    def wait_for_provider(
        self, run: Run, job: Doc, seconds: float, failure: GenerationFailed | None = None
    ) -> None:
        """Requeue a claimed `job` with its attempt given back, to wait `seconds`
        for its provider (0: in the ready lane, where the gate holds its claim);
        the provider's `failure`, if it ran, is its error meanwhile (not an attempt's)."""
        changes = self.bulks.requeue_changes(job, BACKOFF if seconds > 0 else READY)
        if seconds > 0:
            changes["run_after_us"] = clock.now_us() + int(seconds * 1_000_000)
        if failure is not None:
            changes["error"] = job_error(failure.code, "transient", failure.message, True, job["attempt"] - 1)
        self._write_outcome(run, changes)

    def _finish_cancelled(self, run: Run, job: Doc) -> None:
        stamp = clock.now_us()
        if run.stopping:
            # Shutdown, not the owner's wish: give the attempt back and requeue.
            self._write_outcome(run, self.bulks.requeue_changes(job))
            return
        error = job_error(
            "CANCELLED", "cancelled", "cancelled by its owner while running", False, job["attempt"]
        )
        self._write_outcome(
            run,
            {
                "status": str(Status.CANCELLED),
                "queue": NONE,
                "ended_us": stamp,
                "updated_us": stamp,
                "error": error,
            },
        )

    def _finish_failed(
        self,
        run: Run,
        job: Doc,
        code: str,
        message: str,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        attempt = job["attempt"]
        category = "transient" if retryable else "permanent"
        error = job_error(code, category, message, retryable, attempt)
        stamp = clock.now_us()
        changes: Doc = {
            "error": error,
            "attempt_errors": [*job.get("attempt_errors", []), error],
            "updated_us": stamp,
            "worker": "",
        }
        if retryable and attempt < job["max_attempts"]:
            delay = min(self.retry_base_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            delay *= random.uniform(0.5, 1.0)  # jitter: retries of many jobs spread out
            delay = max(delay, retry_after or 0.0)  # the provider's Retry-After, when longer
            # Held, not backing off, when its bulk job was paused meanwhile: a
            # promotion from backoff would start it while paused.
            changes.update(
                status=str(Status.QUEUED),
                queue=self.bulks.waiting_lane(job, BACKOFF),
                run_after_us=clock.now_us() + int(delay * 1_000_000),
            )
        else:
            changes.update(status=str(Status.FAILED), queue=NONE, ended_us=stamp)
        self._write_outcome(run, changes)

    def _write_outcome(self, run: Run, changes: Doc, unsure: bool = False) -> None:
        """Store a run's outcome, fenced by its epoch; an unreachable database is
        waited for (OUTCOME_PATIENCE_SECONDS), never taken for a failed job.
        `unsure`: an earlier write of it may have been stored, its answer lost."""
        self.progress.close(run)  # the outcome supersedes its pending progress
        if run.lost:
            log.warning("job %s was taken over; not recording this run's outcome", run.oid)
            return
        tries = 1 if unsure else 0

        def write() -> Doc | None:
            nonlocal tries
            tries += 1
            return self.queue.fenced_update(run.oid, run.epoch, changes)

        try:
            after = persist(
                write,
                f"the outcome of job {run.oid}",
                OUTCOME_PATIENCE_SECONDS,
                self._stopping,
                self.store.outage,
            )
        except PyMongoError as exc:
            if not unreachable(exc):
                raise
            self.abandoned.add((run.oid, run.epoch))
            self._database_error(
                exc,
                f"job {run.oid}",
                logging.INFO,
                "job %s: outcome not stored (%s); it runs again once its lease lapses",
                run.oid,
                exc,
            )
            return
        if after is None and tries > 1:
            # An earlier try may have been applied with its answer lost: it was ours if it left our stamp.
            stored = self.store.jobs.jobs_by_ids([str(run.oid)])
            after = next((d for d in stored if stamped_by(d, run.epoch, changes)), None)
        if after is None:
            log.warning("job %s was taken over; this run's outcome is dropped", run.oid)
            return
        self._stored(after)

    def _stored(self, after: Doc, followed: bool = False) -> None:
        """A run's outcome is stored (`after`): measure it and tell of it
        (`followed`: stored in the command that claims its lane's next job, a
        completion no budget limit covers: no listener's work must precede that job)."""
        metrics.attempt_ended(after, max(0.0, (clock.now_us() - after.get("started_us", 0)) / 1e6))
        if followed:
            self.record_later(after, STATUS_CHANGED)
            return
        after = self.held_if_paused(after)
        self.tell(after, STATUS_CHANGED)
        self.offer_if_ready(after)

    def offer_if_ready(self, after: Doc) -> None:
        """A job just sent back to the queue (`after`, as stored): offered to
        the dispatcher if it is in the ready lane (not held, not waiting)."""
        if self.requeued is not None and after["status"] == str(Status.QUEUED) and after["queue"] == READY:
            self.requeued(after)

    def held_if_paused(self, after: Doc) -> Doc:
        """A bulk job's item just sent back to the queue (a retry's backoff, a
        run given back): held if its bulk job was paused meanwhile (see
        `BulkStore.hold_if_paused`). A read of the bulk job, for requeued items only."""
        try:
            return self.bulks.hold_if_paused(after) or after
        except PyMongoError as exc:  # the bulk job unread: a backoff item is held by its promotion
            log.warning("job %s: the paused check after a requeue failed (%s)", after["_id"], exc)
            return after

    def tell(self, doc: Doc, kind: str) -> None:
        """`record` a change. The change is stored already: a database error in
        the bookkeeping (a bulk job's counts) must not end or relabel the run;
        the bulk sweep settles what it missed."""
        try:
            self.record(doc, kind)
        except PyMongoError as exc:
            self._database_error(
                exc,
                f"job {doc['_id']}",
                logging.INFO,
                "job %s: bookkeeping of a %s event failed (%s)",
                doc["_id"],
                kind,
                exc,
            )

    def _database_error(self, exc: PyMongoError, what: str, quiet: int, message: str, *args: object) -> None:
        database_error(self.store.outage, exc, what, quiet, message, *args)
