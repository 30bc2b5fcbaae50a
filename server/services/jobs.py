"""Job operations as the RPCs need them: validation, the store's conditional
updates and the local dispatcher's wake-ups, in one place; each change is
told through `changes.JobChanges`.

Everything here but `submit` is synchronous (pymongo); servicers call it
through `asyncio.to_thread`. `submit` runs on the event loop, so that
concurrent submits share one insert (see `store.LoopInsert`).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pymongo
from pymongo.errors import PyMongoError

from genjobs.server.model import channels
from genjobs.server.model.caller import Caller
from genjobs.server.model.errors import FieldViolation, ServiceError, channel_not_configured, invalid
from genjobs.server.model.records import NO_ORIGIN, Job, Origin, Params, Submission
from genjobs.server.model.states import Status
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.model.vocabulary import Lane, Mode, Priority
from genjobs.server.services import entitlement, validation
from genjobs.server.services.changes import JobChanges
from genjobs.server.services.entitlement import Tiers
from genjobs.server.services.events import job_key
from genjobs.server.services.queue_cap import QueueCap
from genjobs.server.storage import records
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import STATUS_CHANGED
from genjobs.server.storage.jobs import JobPage
from genjobs.server.storage.paging import JobFilter
from genjobs.server.storage.queue import READY, applied, unclaimed
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import context, metrics

log = logging.getLogger(__name__)


MAX_BULK_OPERATION = 100
SAMPLE_SIZE = 10

# What each RunBulkOperation selects.
OPERATION_STATUS = {
    "RETRY_ALL_FAILED": str(Status.FAILED),
    "CANCEL_ALL_QUEUED": str(Status.QUEUED),
    "DELETE_ALL_COMPLETED": str(Status.COMPLETED),
}


class Wakeable(Protocol):
    """What the jobs layer needs of a dispatcher."""

    def offer(self, ck: int, oid: Any, owner: str = "", rank: int = 1, doc: Doc | None = None) -> None:
        """A job entered the ready lane (`doc`: as stored)."""
        return None

    def wake(self) -> None:
        """Look at the queue again."""
        return None

    def waiting(self, at_us: int) -> None:
        """A job entered a waiting lane here, due at `at_us`."""
        return None

    def request_cancel(self, job_id: str) -> bool:
        """Stop `job_id` if it runs here; whether it did."""
        return False

    def start_as_stored(self, doc: Doc) -> Doc | None:
        """The claim a job about to be stored may carry in its insert, with a
        lane held for it (None: store it queued)."""
        return None

    def stored(self, job: Doc) -> None:
        """The job `start_as_stored` claimed is stored: run it."""
        return None

    def not_stored(self, oid: Any) -> None:
        """The job `start_as_stored` claimed was not stored: let its lane go."""
        return None

    def alone(self) -> bool:
        """Whether this server leads and no other shares the database."""
        return False


class SubmitLimits(Protocol):
    """What the jobs layer asks before queueing (server/services/budgets.py)."""

    async def check_submit_async(self, owner: str, project: str, count: int, cents: int = 0) -> None:
        """Refuse `count` new jobs of `owner` in `project` (estimated at `cents` at
        least) when a limit says so."""
        return None

    def check_submit(self, owner: str, project: str, count: int, cents: int = 0) -> None:
        """The same, from a thread."""
        return None


@dataclass(frozen=True)
class JobStats:
    """What GetJobStats answers: counts by status and mode, total cost (and how
    many completed jobs had none known), mean duration, failure rate."""

    total: int
    by_status: dict[str, int]
    by_mode: dict[str, int]
    cost_cents: int
    cost_unknown: int
    mean_duration: float  # seconds, over completed jobs
    failure_rate: float  # failed of completed + failed


@dataclass
class BulkOperationResult:
    """What RunBulkOperation did (or, validate_only, would do)."""

    job_ids: list[str]
    affected: int
    remaining: int


class Jobs:
    """The JobService's domain: every rule an RPC applies lives here or below."""

    def __init__(
        self,
        store: Store,
        changes: JobChanges,
        default_max_attempts: int,
        *,
        dispatcher: Wakeable,
        limits: SubmitLimits,
        cap: QueueCap,
        tiers: Tiers,
        notify_channels: Iterable[str],
        waiting: Callable[[str], str] = lambda model: "",
    ) -> None:
        self.store = store
        # Why a queued job of this model waits (its provider down or rate limited; issue #31).
        self.waiting = waiting
        self.changes = changes  # where every change made here is told (watchers, replay, listeners)
        self.default_max_attempts = default_max_attempts
        self.dispatcher = dispatcher
        self.limits = limits  # budgets
        self.cap = cap  # the queued-jobs cap: a new job's place
        self.tiers = tiers  # owners' stored tiers (PRIORITY_HIGH)
        # The channels this server has a sender for (mail needs GENJOBS_SMTP_URL);
        # a channel that always has one is never refused.
        self.notify_channels = frozenset(notify_channels)

    # ---- RPCs -----------------------------------------------------------

    async def submit(
        self,
        caller: Caller,
        mode: str,
        params: Params,
        request_id: str = "",
        project: str = "",
        max_attempts: int = 0,
        notify: Sequence[NotifyTarget] = (),
        origin: Origin = NO_ORIGIN,
        priority: str = Priority.NORMAL,
        schedule_us: int = 0,
        estimate_cents: int = 0,
        validate_only: bool = False,
    ) -> Job:
        """Queue a job; a repeated request_id returns the first job. One command.
        With a `schedule_us` to come, it waits in the scheduled lane until then.
        A budget refuses it when what is left is less than `estimate_cents` (its
        low estimate). `validate_only`: every check, then the job as it would
        be, stored nowhere.

        `origin`: what the server sets on the job (its schedule, template, and
        a schedule tick's own request key)."""
        bad = validation.check_submit(mode, params, request_id, project, max_attempts)
        bad += validation.check_notify(notify)
        bad += validation.check_priority(priority)
        if bad:
            raise invalid(bad)
        await entitlement.require_async(caller, priority, self.tiers)
        self.check_channels(notify)
        submission = Submission(
            owner=caller.user,
            mode=Mode(mode),
            params=normalized(params),
            project=project,
            request_id=request_id,
            max_attempts=max_attempts or self.default_max_attempts,
            priority=Priority(priority),
            schedule_us=schedule_us,
            targets=tuple(notify),
            request_key=origin.request_key,
            schedule_id=origin.schedule_id,
            template=origin.template,
        )
        doc = self.store.jobs.new_job(submission)
        doc.update(context.trace_fields())
        try:
            await self.limits.check_submit_async(caller.user, project, 1, estimate_cents)
            if validate_only:
                return records.job(doc)
            start = self.dispatcher.start_as_stored(doc)
            if start is not None:
                return await self._store_running(caller.user, doc, start)
            job, created = await self._store(caller.user, doc)
        except ServiceError:
            # A repeat of a stored request is answered, not refused: the limit
            # counted that job already (a client's retry, a schedule's tick again).
            keyed = request_id or origin.keyed
            earlier = await asyncio.to_thread(self.store.jobs.repeated, doc) if keyed else None
            if earlier is None:
                raise
            return records.job(earlier)
        if not created:  # a repeated request: the earlier job holds its own place
            self.cap.unplaced(caller.user, [doc["_id"]])
            return records.job(job)
        metrics.job_submitted(mode)
        # Sequence 1 is the job as submitted: watchers start from its
        # snapshot, so it needs no stored event (SubmitJob stays one write).
        self.offer(job)
        self.changes.announce(job)
        return records.job(job)  # SubmitJob's one conversion (its answer)

    async def _store(self, owner: str, doc: Doc) -> tuple[Doc, bool]:
        """Insert a new job in its place under the owner's cap: (the job, True),
        or (the earlier job, False) for a repeated request."""
        try:
            return await self.cap.store_async(owner, [doc], lambda docs: self.store.jobs.submit_job(docs[0]))
        except PyMongoError:
            self.dispatcher.wake()  # stored, its answer lost, perhaps: untold, found by a look
            raise

    async def _store_running(self, owner: str, doc: Doc, claim: Doc) -> Job:
        """Store a job with its claim in its insert (sequence 2); the answer is
        the job as submitted (sequence 1).

        Settled when the insert is, whatever becomes of this call: the insert
        goes on if the caller gives up (shielded, and bounded by the database's
        own limit, not the call's deadline), so its outcome is known, and the
        lane runs the job or goes (`_stored_running`)."""
        before = dict(doc)
        doc.update(applied(doc, claim))

        async def insert() -> tuple[Doc, bool]:
            with pymongo.timeout(self.store.database.timeout_seconds):
                return await self._store(owner, doc)

        storing = asyncio.get_running_loop().create_task(insert(), context=contextvars.Context())
        storing.add_done_callback(lambda done: self._stored_running(done, before, claim))
        job, created = await asyncio.shield(storing)
        return records.job(unclaimed(job, before, claim) if created else job)

    def _stored_running(self, done: asyncio.Future[tuple[Doc, bool]], before: Doc, claim: Doc) -> None:
        """The insert of a job stored running ended (`done`). Stored: its
        snapshot as submitted is told (sequence 1), then its lane runs it,
        whose start is told as a claimed run's is. Otherwise its lane goes;
        an insert whose outcome is unknown (a database error) that landed
        after all is a job claimed here and never run: housekeeping gives it
        back once its lease lapses."""
        if done.cancelled() or done.exception() is not None:
            self.dispatcher.not_stored(before["_id"])
            return
        job, created = done.result()
        if not created:  # a repeated request: the earlier job holds its own place
            self.cap.unplaced(before["owner"], [before["_id"]])
            self.dispatcher.not_stored(before["_id"])
            return
        metrics.job_submitted(before["mode"])
        self.changes.announce(unclaimed(job, before, claim))
        self.dispatcher.stored(job)

    def offer(self, doc: Doc) -> None:
        """Hand a job that is in the ready lane to this server's dispatcher (no query)."""
        if doc["queue"] == READY:
            self.dispatcher.offer(doc["ck"], doc["_id"], doc["owner"], doc["rank"], doc)

    def check_channels(self, notify: Sequence[NotifyTarget]) -> None:
        """FAILED_PRECONDITION when a channel is asked for that this server has no sender for."""
        for target in notify:
            channel = channels.find(target.channel)
            if channel is not None and channel.unconfigured[0] and channel.name not in self.notify_channels:
                raise channel_not_configured(*channel.unconfigured)

    def get(self, caller: Caller, job_id: str) -> Job:
        """One of the caller's jobs."""
        return self.told_why(self.store.jobs.get(caller.owner_filter, job_id))

    def list_jobs(self, caller: Caller, filters: JobFilter, page_size: int, token: str) -> JobPage:
        """A page of the caller's jobs, newest first."""
        size, bad = validation.page_size(page_size)
        bad += _check_filter_values(filters)
        if bad:
            raise invalid(bad)
        page = self.store.jobs.list_jobs(caller.owner_filter, filters, size, token)
        page.jobs = [self.told_why(job) for job in page.jobs]
        return page

    def told_why(self, job: Job) -> Job:
        """A queued job with its provider's outage or rate limit as its wait
        reason: from this process's provider state, no write per job."""
        if job.status != Status.QUEUED or job.lane not in (Lane.READY, Lane.BACKOFF):
            return job  # held by its bulk job or its budget: that reason is stored
        reason = self.waiting(job.params.extra.get("model", ""))
        return dataclasses.replace(job, wait_reason=reason) if reason != job.wait_reason else job

    def cancel(self, caller: Caller, job_id: str) -> Job:
        """Cancel a queued job now, or ask the running one to stop."""
        doc, running = self.store.jobs.cancel(caller.owner_filter, job_id)
        if running:
            # Stored: the dispatcher's CANCELLED follows, and a resumed watch
            # must see this step too.
            self.changes.record(doc, STATUS_CHANGED)
            self.dispatcher.request_cancel(job_id)
        else:
            self.changes.publish(doc, STATUS_CHANGED)
        return records.job(doc)

    def retry(self, caller: Caller, job_id: str, request_id: str = "") -> Job:
        """A new queued job with the same mode and params as a failed or cancelled one."""
        bad = validation.check_common(request_id, "")
        if bad:
            raise invalid(bad)
        kept = self.store.jobs.retry_submission(
            caller.owner_filter, job_id, request_id, self.default_max_attempts
        )
        # The retry's creator is the caller, now: a HIGH job retried by one not
        # entitled to HIGH (a plain token) runs at NORMAL (server/services/entitlement.py).
        priority = Priority(entitlement.capped(caller, kept.priority, self.tiers))
        doc = self.store.jobs.new_retry(dataclasses.replace(kept, priority=priority))
        try:
            # A retry queues a job like a submit: the same limits and cap.
            self.limits.check_submit(doc["owner"], doc["project"], 1)
            stored = self.cap.store(doc["owner"], [doc], lambda docs: self.store.jobs.store_retry(docs[0]))
        except ServiceError:
            earlier = self.store.jobs.repeated(doc)  # a retry always has a request key
            if earlier is None:
                raise
            return records.job(earlier)
        new_id, doc = doc["_id"], stored
        if doc["_id"] != new_id:  # a repeat: the earlier retry holds its own place
            self.cap.unplaced(doc["owner"], [new_id])
        self.offer(doc)
        self.changes.publish(doc, STATUS_CHANGED)
        return records.job(doc)

    def delete(self, caller: Caller, job_id: str) -> None:
        """Remove a final job and its events."""
        self.changes.event_log.flush()  # so that no event of this job is stored after the delete
        self.store.jobs.delete(caller.owner_filter, job_id)

    def run_bulk_operation(
        self, caller: Caller, operation: str, filters: JobFilter, validate_only: bool
    ) -> BulkOperationResult:
        """Retry, cancel or delete up to 100 of the caller's matching jobs."""
        bad = validation.check_choices("operation", [operation], OPERATION_STATUS, "BULK_OPERATION_")
        bad += _check_filter_values(filters)
        if bad:
            raise invalid(bad)
        filters.statuses = [OPERATION_STATUS[operation]]
        query = self.store.jobs.job_query(caller.owner_filter, filters)
        if operation == "RETRY_ALL_FAILED":
            query["retried_by"] = ""  # each failed job is retried once
        if validate_only:
            total = self.store.jobs.count(query)
            sample = self.store.jobs.matching_ids(query, SAMPLE_SIZE)
            # What one call would leave: it acts on at most MAX_BULK_OPERATION.
            left = max(total - MAX_BULK_OPERATION, 0)
            return BulkOperationResult([str(i) for i in sample], total, left)
        ids = self.store.jobs.matching_ids(query, MAX_BULK_OPERATION)
        done: list[str] = []
        if operation == "CANCEL_ALL_QUEUED":
            for oid in ids:
                doc = self.store.jobs.cancel_queued(oid)
                if doc is not None:
                    done.append(str(oid))
                    self.changes.publish(doc, STATUS_CHANGED)
        elif operation == "DELETE_ALL_COMPLETED":
            if ids:
                self.changes.event_log.flush()
                self.store.jobs.delete_completed(ids)
            done = [str(i) for i in ids]
        else:
            for oid in ids:
                try:
                    new = self.retry(caller, str(oid))
                except ServiceError:
                    if not done:
                        raise
                    break  # a limit or the queued-jobs cap: the rest stay failed, counted below
                done.append(new.id)
        more = len(ids) == MAX_BULK_OPERATION or len(done) < len(ids)  # a cut-off retry leaves some
        remaining = self.store.jobs.count(query) if more else 0
        return BulkOperationResult(done, len(done), remaining)

    def stats(self, caller: Caller, filters: JobFilter) -> JobStats:
        """Counts by status and mode, total cost, mean duration, failure rate."""
        bad = _check_filter_values(filters)
        if bad:
            raise invalid(bad)
        status_rows, mode_rows = self.store.jobs.stats(caller.owner_filter, filters)
        by_status = {row["_id"]: int(row["n"]) for row in status_rows}
        by_mode = {row["_id"]: int(row["n"]) for row in mode_rows}
        cost = sum(int(row.get("cost") or 0) for row in status_rows)
        seconds = sum(
            float(row.get("seconds") or 0.0) for row in status_rows if row["_id"] == str(Status.COMPLETED)
        )
        completed = by_status.get(str(Status.COMPLETED), 0)
        failed = by_status.get(str(Status.FAILED), 0)
        unknown = 0
        if completed:  # only completed jobs have a cost, known or not
            scope = dataclasses.replace(filters, statuses=[str(Status.COMPLETED)])
            query = {
                **self.store.jobs.job_query(caller.owner_filter, scope),
                "result.metadata.cost_unknown": "true",
            }
            unknown = self.store.jobs.count_with_archive(query)
        return JobStats(
            total=sum(by_status.values()),
            by_status=by_status,
            by_mode=by_mode,
            cost_cents=cost,
            cost_unknown=unknown,
            mean_duration=seconds / completed if completed else 0.0,
            failure_rate=failed / (completed + failed) if completed + failed else 0.0,
        )

    def known_now(self, caller: Caller, job_id: str) -> Doc | None:
        """The caller's job as this server changed it last, when that stands for
        the job as stored (None: read it): on a leader alone, which makes every
        change and tells it here, within KNOWN_SECONDS of a change, while the
        job runs (the moves of queued jobs in bulk, a budget's hold or a
        pause, are not told one by one). WatchJob's snapshot then costs no read."""
        event = self.changes.hub.known(job_key(job_id))
        if event is None or not self.dispatcher.alone():
            return None
        job: Doc = event.doc["job"]
        if job["status"] != Status.PROCESSING or caller.owner_filter not in (None, job["owner"]):
            return None
        return job

    def history(self, caller: Caller, job_id: str, after: int) -> tuple[Doc, list[Doc]]:
        """The job now and its stored events after `after` (for WatchJob): the
        wire's event snapshots, documents on purpose (the API converts them once)."""
        doc = self.store.jobs.document(caller.owner_filter, job_id)
        if not after:
            return doc, []
        self.changes.event_log.flush()  # what this server already published is stored too
        events = self.store.archive.events_after if doc.get("archived_us") else self.store.events.events_after
        return doc, events(job_id, after)


def normalized(params: Params) -> Params:
    """Params as stored: the default word count filled in, blanks trimmed."""
    return dataclasses.replace(
        params,
        topic=params.topic.strip(),
        keywords=tuple(k.strip() for k in params.keywords),
        word_count=params.word_count or validation.DEFAULT_WORD_COUNT,
    )


def _check_filter_values(filters: JobFilter) -> list[FieldViolation]:
    """Everything wrong with the filters of ListJobs, GetJobStats or RunBulkOperation."""
    bad = validation.check_choices("statuses", filters.statuses, [str(s) for s in Status], "JOB_STATUS_")
    bad += validation.check_choices("modes", filters.modes, Mode, "MODE_")
    bad += validation.check_choices("priorities", filters.priorities, Priority, "PRIORITY_")
    bad += validation.check_query(filters.query)
    bad += validation.check_label(filters.project, "project", validation.MAX_PROJECT)
    if filters.bulk_job_id:
        bad += validation.check_id(filters.bulk_job_id, "bulk_job_id", "bulk job")
    if filters.schedule_id:
        bad += validation.check_id(filters.schedule_id, "schedule_id", "schedule")
    after, before = filters.created_after_us, filters.created_before_us
    if after is not None and before is not None and after >= before:
        bad.append(FieldViolation("created_before", "must be later than created_after"))
    return bad
