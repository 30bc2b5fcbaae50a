"""A single job's notification, stored when the job ends.

A job submitted with notify_url or notify_email carries `notify_pending`
from its submission. When a change makes it final (COMPLETED, FAILED for
good, CANCELLED: never a failure that is retried) its notification is
stored, under the job's own id, then the flag is cleared. Storing it twice
stores it once, and a server that stops between the job's final write and
the notification leaves the flag set: the leader's sweep finds such jobs
(an indexed query on the flag, which only unfinished jobs and those few
carry) and stores what is missing. So a crash neither loses nor doubles it.
"""

from __future__ import annotations

import logging

from pymongo.errors import PyMongoError

from server.model import clock
from server.model.channels import Doc, new_notification
from server.notify.sender import Notifier
from server.storage.events import STATUS_CHANGED
from server.storage.jobs import final
from server.storage.store import Store

log = logging.getLogger(__name__)

# How long a job may stay final with its notification unstored before the
# sweep stores it (a live server stores it at once).
SWEEP_DELAY_US = 10_000_000
EVENTS = {"COMPLETED": "job.completed", "FAILED": "job.failed", "CANCELLED": "job.cancelled"}


def job_notification(job: Doc, ck: int, now_us: int) -> Doc:
    """The notification announcing that `job` ended."""
    status = job["status"]
    params = job.get("params", {})
    result = job.get("result") or {}
    error = job.get("error") if status != "COMPLETED" else None
    what = params.get("topic") or ", ".join(params.get("keywords", [])) or job["mode"]
    message = f"Job {job['_id']} ({job['mode']} {what!r}) {status.lower()}"
    if error:
        message += f": {error['code']}: {error['message']}"
    payload = {
        "job_id": str(job["_id"]),
        "owner": job["owner"],
        "project": job.get("project", ""),
        "status": status,
        "mode": job["mode"],
        "topic": params.get("topic", ""),
        "keywords": params.get("keywords", []),
        "title": result.get("title", ""),
        "word_count": int(result.get("word_count", 0)),
        "cost_cents": int(job.get("cost_cents", 0)),
        "attempt": int(job.get("attempt", 0)),
        "error": {"code": error["code"], "message": error["message"]} if error else None,
        "ended_at_us": int(job.get("ended_us", 0)),
    }
    return new_notification(
        oid=job["_id"],
        owner=job["owner"],
        event=EVENTS[status],
        message=message[:1000],
        payload=payload,
        ck=ck,
        created_us=now_us,
        notify_url=job.get("notify_url", ""),
        notify_email=job.get("notify_email", ""),
        job_id=str(job["_id"]),
    )


class JobNotifications:
    """Stores single jobs' notifications as they end (and after a crash)."""

    def __init__(self, store: Store, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier

    def job_changed(self, job: Doc, kind: str) -> None:
        """A job changed here: store its notification if it just ended with one asked for."""
        if kind == STATUS_CHANGED and job.get("notify_pending") and final(job["status"]):
            try:
                self._store(job)
            except PyMongoError as exc:  # never the dispatcher's problem: the sweep stores it
                if not self.store.outage.failed(exc, f"job {job['_id']}'s notification"):
                    log.warning("job %s: notification not stored yet (%s)", job["_id"], exc)

    def recover(self) -> None:
        """Store the notifications of jobs that ended on a server that then stopped.
        The dispatcher's leader runs it once a sweep."""
        for job in self.store.jobs.unnotified_jobs(clock.now_us() - SWEEP_DELAY_US):
            self._store(job)

    def _store(self, job: Doc) -> None:
        self.store.notifications.insert_notification(
            job_notification(job, self.store.order_keys.next(), clock.now_us())
        )
        self.store.jobs.job_notification_stored(job["_id"])
        self.notifier.wake()
