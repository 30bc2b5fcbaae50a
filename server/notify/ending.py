"""One path from the end of a job or a bulk job to its notification.

Whatever ends (a job: COMPLETED, FAILED for good, CANCELLED, never a failure
that is retried; a bulk job: COMPLETED) has the `notify_pending` flag set
while its notification is not stored: a job from its submission when it
has targets, a bulk job in the conditional update that completes it (which
also carries its notification, for watchers). Its notification is stored
under an id fixed by what it announces, then the flag is cleared and the
notifier woken. Storing it twice stores it once, and a server that stops in
between leaves the flag set: the leader's sweep finds such work (one
indexed query per kind, on the flag) and stores what is missing. So a crash
neither loses nor doubles a notification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.model import clock
from genjobs.server.model.channels import Doc, new_notification
from genjobs.server.model.records import Job, Result
from genjobs.server.model.states import Status
from genjobs.server.notify.sender import Notifier
from genjobs.server.storage.events import STATUS_CHANGED
from genjobs.server.storage.store import Store

log = logging.getLogger(__name__)

Ended = TypeVar("Ended")  # what ended: a Job, or a bulk job's document (its notification kept on it)

# How long work may stay ended with its notification unstored before the
# sweep stores it (a live server stores it at once).
SWEEP_DELAY_US = 10_000_000
EVENTS = {"COMPLETED": "job.completed", "FAILED": "job.failed", "CANCELLED": "job.cancelled"}


def job_notification(job: Job, ck: int, now_us: int) -> Doc:
    """The notification announcing that `job` ended."""
    status = str(job.status)
    params = job.params
    result = job.result or Result()
    error = job.error if job.status != Status.COMPLETED else None
    mode = str(job.mode)
    what = params.topic or ", ".join(params.keywords) or mode
    message = f"Job {job.id} ({mode} {what!r}) {status.lower()}"
    if error:
        message += f": {error.code}: {error.message}"
    # The payload is the notification's wire body (webhook JSON): a document on purpose.
    payload = {
        "job_id": job.id,
        "owner": job.owner,
        "project": job.project,
        "status": status,
        "mode": mode,
        "topic": params.topic,
        "keywords": list(params.keywords),
        "title": result.title,
        "word_count": result.word_count,
        "cost_cents": job.cost_cents,
        "attempt": job.attempt,
        "error": {"code": error.code, "message": error.message} if error else None,
        "ended_at_us": job.ended_us,
    }
    return new_notification(
        oid=ObjectId(job.id),
        owner=job.owner,
        event=EVENTS[status],
        message=message[:1000],
        payload=payload,
        ck=ck,
        created_us=now_us,
        targets=list(job.targets),
        job_id=job.id,
    )


@dataclass(frozen=True)
class Kind(Generic[Ended]):
    """What differs between a job's end and a bulk job's: where the flag
    lives (its store's two calls) and how its notification is made."""

    name: str
    unnotified: Callable[[int], list[Ended]]  # ended before a time, flag still set: one indexed query
    stored: Callable[[Ended], None]  # clear the flag of this end (conditional on it)
    notification: Callable[[Ended], Doc]  # the notification of this end


class EndNotifications:
    """Stores the notifications of jobs and bulk jobs as they end (and after a crash)."""

    def __init__(self, store: Store, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier
        self.job = Kind("job", store.jobs.unnotified_jobs, store.jobs.notification_stored, self._of_job)
        # A bulk job's notification is made as it completes (its counts then),
        # and kept on it: watchers get it with the COMPLETED event.
        self.bulk = Kind(
            "bulk job", store.bulks.unstored_notifications, store.bulks.notification_stored, _kept
        )

    def ended(self, kind: Kind[Ended], doc: Ended) -> None:
        """`doc` ended with its flag set: store its notification (once), clear the flag, wake the notifier."""
        self.store.notifications.insert_notification(kind.notification(doc))
        kind.stored(doc)
        self.notifier.wake()

    def job_changed(self, job: Job, kind: str) -> None:
        """A job changed here: store its notification if it just ended with one asked for."""
        if kind == STATUS_CHANGED and job.notify_pending and job.final:
            try:
                self.ended(self.job, job)
            except PyMongoError as exc:  # never the dispatcher's problem: the sweep stores it
                if not self.store.outage.failed(exc, f"job {job.id}'s notification"):
                    log.warning("job %s: notification not stored yet (%s)", job.id, exc)

    def recover(self) -> None:
        """Store the notifications of jobs and bulk jobs that ended on a server
        that then stopped. The dispatcher's leader runs it once a sweep."""
        before_us = clock.now_us() - SWEEP_DELAY_US
        for doc in self.job.unnotified(before_us):
            self.ended(self.job, doc)
        # A bulk job's stays a document: its notification was made and kept on it as it completed.
        for bulk in self.bulk.unnotified(before_us):
            self.ended(self.bulk, bulk)

    def _of_job(self, job: Job) -> Doc:
        return job_notification(job, self.store.order_keys.next(), clock.now_us())


def _kept(bulk: Doc) -> Doc:
    notification: Doc = bulk["notification"]
    return notification
