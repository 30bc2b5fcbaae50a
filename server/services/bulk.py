"""Bulk jobs: 10 to 50 items of one mode, run in order, steered as one.

A bulk job's counts are never stored: they are computed from its item jobs
whenever it is read, so they always agree with the items, whoever changed
them. For each queue position the newest job counts (a retry supersedes
the job it retries). What is stored is the owner's intent (PAUSED,
CANCELLED), the completion, and a change sequence for watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.model import channels, clock
from genjobs.server.model.caller import Caller
from genjobs.server.model.channels import PENDING_FLAG, new_notification, targets_of
from genjobs.server.model.errors import ServiceError, invalid
from genjobs.server.model.records import NO_ORIGIN, BulkItem, BulkJob, Job, Origin, Params, Submission
from genjobs.server.model.states import BULK_FINAL, BulkAction, BulkStatus, Status
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.model.vocabulary import Mode, Priority
from genjobs.server.notify.ending import EndNotifications
from genjobs.server.services import entitlement, validation
from genjobs.server.services.events import BULK, Event, EventHub, bulk_key
from genjobs.server.services.jobs import Jobs, normalized
from genjobs.server.storage import records
from genjobs.server.storage.budgets import BUDGET
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import STATUS_CHANGED
from genjobs.server.storage.paging import Page, bulk_item_key, submission_key
from genjobs.server.storage.queue import BACKOFF, HELD, READY, SCHEDULED
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import context, metrics

log = logging.getLogger(__name__)

# Bulk event kinds (BulkJobEventType without its prefix); STATUS_CHANGED is the store's.
SNAPSHOT, ITEM_CHANGED, COMPLETED = "SNAPSHOT", "ITEM_CHANGED", "COMPLETED"
# How long bulk bookkeeping may stay half done before a sweep finishes it.
RECOVERY_DELAY_US = 10_000_000
_OPEN = [str(BulkStatus.QUEUED), str(BulkStatus.PROCESSING), str(BulkStatus.PAUSED)]


@dataclass
class BulkView:
    """A bulk job with its counts and current items, as GetBulkJob shows it."""

    doc: Doc
    items: list[Doc] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    remaining: int = 0
    cost_cents: int = 0
    estimated_completion_us: int = 0

    @property
    def bulk_job(self) -> BulkJob:
        """The bulk job as the model's record."""
        return records.bulk_job(self.doc)

    @property
    def item_records(self) -> list[BulkItem]:
        """The current items as the model's records."""
        return [records.bulk_item(item) for item in self.items]

    @property
    def total(self) -> int:
        return int(self.doc["total_items"])

    @property
    def deleted(self) -> int:
        """Items removed after they ended: missing from a bulk job that has
        started or is final (before, a missing item is one a creation cut
        short has yet to store, not a deleted one)."""
        if not (self.doc.get("started_us") or self.doc["status"] in {str(s) for s in BULK_FINAL}):
            return 0
        return max(self.total - len(self.items), 0)

    @property
    def done(self) -> int:
        """Items in a final status, deleted ones included (they were final)."""
        return self.completed + self.failed + self.cancelled + self.deleted

    @property
    def percentage(self) -> float:
        """How far the work got: done of total, but only what ran to its end
        (completed, failed) for a cancelled bulk job, so that it never reads
        as finished work; a completed bulk job is 100."""
        if not self.total:
            return 0.0
        status = self.doc["status"]
        if status == str(BulkStatus.COMPLETED):
            return 100.0
        done = self.completed + self.failed if status == str(BulkStatus.CANCELLED) else self.done
        return round(100.0 * done / self.total, 1)

    @property
    def all_final(self) -> bool:
        # An item missing from a bulk job that has started was deleted, which
        # only a final job can be; before the start it may be one a creation
        # cut short has yet to store (a repeated request stores it).
        stored = len(self.items) == self.total or bool(self.doc.get("started_us"))
        return self.remaining == 0 and stored

    @property
    def error_summary(self) -> list[str]:
        return [
            f"item {i['queue_position']}: {i['error']['code']}: {i['error']['message']}"
            for i in self.items
            if i["status"] == str(Status.FAILED) and i.get("error")
        ]


def summarize(doc: Doc, jobs: list[Doc]) -> BulkView:
    """Counts, current items and an estimate from a bulk job's item jobs."""
    current: dict[int, Doc] = {}
    for job in jobs:
        position = job["queue_position"]
        if position not in current or job["ck"] > current[position]["ck"]:
            current[position] = job
    view = BulkView(doc, [current[p] for p in sorted(current)])
    durations = []
    for item in view.items:
        status = item["status"]
        if status == str(Status.COMPLETED):
            view.completed += 1
            view.cost_cents += int(item.get("cost_cents", 0))
            durations.append(float(item.get("duration_s", 0.0)))
        elif status == str(Status.FAILED):
            view.failed += 1
        elif status == str(Status.CANCELLED):
            view.cancelled += 1
        else:
            view.remaining += 1
    if durations and view.remaining and doc["status"] not in {str(s) for s in BULK_FINAL}:
        mean = sum(durations) / len(durations)
        view.estimated_completion_us = clock.now_us() + int(mean * view.remaining * 1e6)
    return view


class Bulks:
    """The BulkService's domain, and the bookkeeping when an item changes."""

    def __init__(self, store: Store, hub: EventHub, jobs: Jobs, ends: EndNotifications) -> None:
        self.store = store
        self.hub = hub
        self.jobs = jobs
        self.ends = ends  # a completed bulk job stores its notification through it
        # (`item_changed` is not registered here: the wiring hands it to `jobs` as a listener)

    # ---- RPCs -------------------------------------------------------------

    def create(
        self,
        caller: Caller,
        mode: str,
        items: list[Params],
        request_id: str = "",
        project: str = "",
        notify: Sequence[NotifyTarget] = (),
        origin: Origin = NO_ORIGIN,
        priority: str = Priority.NORMAL,
        schedule_us: int = 0,
        estimate_cents: int = 0,
        validate_only: bool = False,
    ) -> BulkView:
        """Validate every item, then store the bulk job and its items (two writes).
        Every item runs at `priority`, none before `schedule_us`. A budget
        refuses them when what is left is less than `estimate_cents` (their low
        estimate); `validate_only`: every check, then the bulk job as it would
        be, stored nowhere.

        `origin`: what the server sets on the bulk job (its schedule, template,
        a schedule tick's own request key); its items carry the schedule and
        template too."""
        bad = validation.check_bulk(mode, items, request_id, project, notify)
        bad += validation.check_priority(priority)
        if bad:
            raise invalid(bad)
        entitlement.require(caller, priority, self.jobs.tiers)
        self.jobs.check_channels(notify)
        base = self.store.order_keys.next(len(items) + 1)
        bulk_id = ObjectId()
        bulk = {
            "_id": bulk_id,
            "owner": caller.user,
            "project": project,
            "mode": mode,
            "status": str(BulkStatus.QUEUED),
            "total_items": len(items),
            "ck": base,
            "request_id": request_id,
            "request_key": origin.request_key or submission_key(caller.user, request_id, bulk_id, "bulk"),
            **channels.target_fields(notify, pending=False),  # set as it completes
            "seq": 1,
            "started_us": 0,
            "ended_us": 0,
            "updated_us": base,
            "settled": False,
            "schedule_id": origin.schedule_id,
            "template": origin.template,
            "priority": priority,
            "rank": Priority(priority).rank,
            "schedule_us": schedule_us,
        }
        docs = [
            self.store.jobs.new_job(
                Submission(
                    owner=caller.user,
                    mode=Mode(mode),
                    params=normalized(params),
                    project=project,
                    max_attempts=self.jobs.default_max_attempts,
                    bulk_job_id=str(bulk_id),
                    queue_position=position,
                    request_key=bulk_item_key(caller.user, bulk_id, position),
                    priority=Priority(priority),
                    schedule_us=schedule_us,
                    schedule_id=origin.schedule_id,
                    template=origin.template,
                ),
                ck=base + position,  # items run in position order, FIFO among all jobs
            )
            for position, params in enumerate(items, start=1)
        ]
        trace = context.trace_fields()  # each item's attempts link to this call
        for doc in docs:
            doc.update(trace)
        opened: list[tuple[Doc, bool]] = []  # (the bulk job stored, whether this call made it)

        def insert(items: list[Doc]) -> None:
            if not opened:
                opened.append(self.store.bulks.insert_bulk(bulk, items))
            self.store.bulks.insert_items(items)

        try:
            self.jobs.limits.check_submit(caller.user, project, len(items), estimate_cents)
            if validate_only:
                return summarize(bulk, docs)
            self.jobs.cap.store(caller.user, docs, insert)
        except PyMongoError:
            self.jobs.dispatcher.wake()  # stored, its answer lost, perhaps: untold, found by a look
            raise
        except ServiceError:
            if opened and opened[0][1]:
                # Stored in part, when another replica's submits took some of its places.
                self._withdraw(opened[0][0], docs)
                raise
            # A repeat of a stored request is answered, not refused (see Jobs.submit).
            keyed = request_id or origin.keyed
            earlier = self.store.bulks.repeated(bulk) if keyed else None
            if earlier is None:
                raise
            return summarize(earlier, self.store.bulks.bulk_items([str(earlier["_id"])]))
        stored, created = opened[0]
        if not created:
            # A repeat: the items the first call stored hold their places; ours were not stored.
            kept = self.store.jobs.stored_ids([doc["_id"] for doc in docs])
            self.jobs.cap.unplaced(caller.user, [doc["_id"] for doc in docs if doc["_id"] not in kept])
        if created:
            metrics.job_submitted(mode, len(docs))
            for doc in docs:
                self.jobs.offer(doc)
                self.jobs.changes.announce(doc)
        return summarize(
            stored, self.store.bulks.bulk_items([str(stored["_id"])]) if stored is not bulk else docs
        )

    def _withdraw(self, bulk: Doc, items: list[Doc]) -> None:
        """Remove a bulk job the cap refused after it was stored in part (its
        items not started yet; the bulk job itself if none was)."""
        ids = [doc["_id"] for doc in items]
        self.jobs.cap.unplaced(bulk["owner"], ids)  # the next read tells the started ones
        if not self.store.bulks.withdraw(bulk["_id"], ids):
            log.warning(
                "bulk job %s refused by the cap, but some of its items had started: kept", bulk["_id"]
            )

    def get(self, caller: Caller, bulk_id: str) -> BulkView:
        """One bulk job with counts and items."""
        # Items first: the bulk job's sequence is then at least that of every
        # change the counts include, so a watcher starting from this view
        # skips no later event and sees no earlier (smaller) count after it.
        # Both queries carry the owner: another user's bulk job is NOT_FOUND.
        bad = validation.check_id(bulk_id, "id", "bulk job")
        if bad:
            raise invalid(bad)
        items = self.store.bulks.bulk_items([bulk_id], caller.owner_filter)
        return summarize(self.store.bulks.get_bulk(caller.owner_filter, bulk_id), items)

    def list_bulk(
        self, caller: Caller, statuses: list[str], project: str, size: int, token: str
    ) -> tuple[list[BulkView], Page]:
        """A page of bulk jobs with their counts (items fetched in one query)."""
        page_size, bad = validation.page_size(size)
        bad += validation.check_choices(
            "statuses", statuses, [str(s) for s in BulkStatus], "BULK_JOB_STATUS_"
        )
        bad += validation.check_label(project, "project", validation.MAX_PROJECT)
        if bad:
            raise invalid(bad)
        page = self.store.bulks.list_bulk(caller.owner_filter, statuses, project, page_size, token)
        by_bulk = self._items_by_bulk([str(d["_id"]) for d in page.docs])
        return [summarize(d, by_bulk[str(d["_id"])]) for d in page.docs], page

    def _items_by_bulk(self, bulk_ids: list[str]) -> dict[str, list[Doc]]:
        """The item jobs of these bulk jobs, by bulk job id (one query)."""
        by_bulk: dict[str, list[Doc]] = {i: [] for i in bulk_ids}
        for item in self.store.bulks.bulk_items(bulk_ids) if bulk_ids else []:
            by_bulk[item["bulk_job_id"]].append(item)
        return by_bulk

    def pause(self, caller: Caller, bulk_id: str) -> BulkView:
        """No further item starts; the running one finishes. Survives restarts."""
        self.store.bulks.bulk_transition(
            caller.owner_filter, bulk_id, BulkAction.PAUSE, {"status": str(BulkStatus.PAUSED)}
        )
        # Items waiting for a budget are held too: a release must not start them.
        self.store.bulks.set_item_lanes(bulk_id, [READY, BACKOFF, SCHEDULED, BUDGET], HELD)
        return self._publish(self.get(caller, bulk_id), STATUS_CHANGED)

    def resume(self, caller: Caller, bulk_id: str) -> BulkView:
        """Go on at the next queued item."""
        self.store.bulks.resume_bulk(caller.owner_filter, bulk_id)
        self.store.bulks.resume_items(bulk_id)
        self.jobs.dispatcher.wake()
        return self._publish(self.get(caller, bulk_id), STATUS_CHANGED)

    def cancel(self, caller: Caller, bulk_id: str) -> BulkView:
        """Cancel the queued items and stop the running one."""
        self.store.bulks.bulk_transition(
            caller.owner_filter, bulk_id, BulkAction.CANCEL, {"status": str(BulkStatus.CANCELLED)}
        )
        self._cancel_items(caller, bulk_id)
        bulk = self.store.bulks.get_bulk(caller.owner_filter, bulk_id)
        return self._settle(bulk, self.store.bulks.bulk_items([bulk_id])) or self.get(caller, bulk_id)

    def _cancel_items(self, caller: Caller, bulk_id: str) -> None:
        """Cancel a cancelled bulk job's queued items and stop its running one."""
        # Hold the queued items first, so the dispatcher starts none of them
        # while they are cancelled one by one; stop the running one last. The
        # items are read once held: one the dispatcher started just before
        # the hold is running now, and must be stopped, not skipped.
        self.store.bulks.set_item_lanes(bulk_id, [READY, BACKOFF, SCHEDULED, BUDGET], HELD)
        items = self.store.bulks.bulk_items([bulk_id])
        for item in items:
            if item["status"] == str(Status.QUEUED):
                cancelled = self.store.jobs.cancel_queued(item["_id"])
                if cancelled is not None:
                    self.jobs.changes.publish(cancelled, STATUS_CHANGED)
        for item in items:
            if item["status"] == str(Status.PROCESSING):
                with contextlib.suppress(ServiceError):  # it finished meanwhile
                    self.jobs.cancel(caller, str(item["_id"]))

    def notifications(
        self, caller: Caller, size: int, token: str, job_id: str = "", bulk_job_id: str = ""
    ) -> Page:
        """A page of the caller's notifications (only one job's or one bulk job's when given)."""
        page_size, bad = validation.page_size(size)
        if bad:
            raise invalid(bad)
        return self.store.notifications.list_notifications(caller.user, page_size, token, job_id, bulk_job_id)

    # ---- item bookkeeping -------------------------------------------------

    def item_changed(self, job: Job, kind: str) -> None:
        """An item job changed status: update the bulk job and tell its watchers."""
        if kind != STATUS_CHANGED or not job.bulk_job_id:
            return
        bulk_oid = ObjectId(job.bulk_job_id)
        status = job.status
        if status == Status.PROCESSING:
            self.store.bulks.mark_bulk_started(bulk_oid)
            self.store.bulks.bulk_status_change(
                bulk_oid, [str(BulkStatus.QUEUED)], {"status": str(BulkStatus.PROCESSING)}
            )
        elif status == Status.QUEUED and job.retry_of:
            # A retried item reopens a completed bulk job until it is final again.
            self.store.bulks.reopen_bulk(bulk_oid)
        # The sequence first, then the items: an event's counts then include
        # every change up to its sequence, so counts never go backwards for a
        # watcher that started from a view (`get` reads in the other order).
        bumped = self.store.bulks.bump_bulk(bulk_oid)
        if bumped is None:
            return
        items = self.store.bulks.bulk_items([job.bulk_job_id])
        if self._settle(bumped, items) is None:
            self._publish(summarize(bumped, items), ITEM_CHANGED)

    def recover(self) -> None:
        """Finish what a stopped server left half done: settle bulk jobs whose
        items all ended, cancel the items of cancelled ones, and store the
        notifications of those that completed (EndNotifications.recover).
        The dispatcher's leader runs it at start-up and then once a sweep."""
        # Untouched for a while: a live server settles a bulk job as its last item ends.
        settled_before_us = clock.now_us() - RECOVERY_DELAY_US
        stale = self.store.bulks.unsettled_bulks(settled_before_us)
        busy = self.store.bulks.bulks_with_open_items([str(d["_id"]) for d in stale]) if stale else set()
        for doc in stale:
            bulk_id = str(doc["_id"])
            if bulk_id not in busy:
                self._settle(doc, self.store.bulks.bulk_items([bulk_id]))
            elif doc["status"] == str(BulkStatus.CANCELLED):  # stopped while cancelling it
                self._cancel_items(Caller(doc["owner"]), bulk_id)

    def _settle(self, doc: Doc, items: list[Doc]) -> BulkView | None:
        """Complete the bulk job `doc` if every one of its `items` is final; the view when it did."""
        view = summarize(doc, items)
        if not view.all_final:
            return None
        now_us = clock.now_us()
        # One conditional update decides who settles it, and it carries the
        # notification: every watcher, on any replica, sees both together.
        if doc["status"] == str(BulkStatus.CANCELLED):
            settled = self.store.bulks.bulk_status_change(
                doc["_id"], [str(BulkStatus.CANCELLED)], {"ended_us": now_us, "settled": True}
            )
        elif doc.get("reopened") and _same_outcome(doc.get("notification"), view):
            # Completed again as it last did (a retried item failed again):
            # its notification stands; the owner is not told the same twice.
            settled = self.store.bulks.bulk_status_change(
                doc["_id"], _OPEN, {"status": str(BulkStatus.COMPLETED), "ended_us": now_us, "settled": True}
            )
        else:
            settled = self.store.bulks.bulk_status_change(
                doc["_id"],
                _OPEN,
                {
                    "status": str(BulkStatus.COMPLETED),
                    "ended_us": now_us,
                    "settled": True,
                    "notification": self._notification(view, now_us),
                    PENDING_FLAG: True,
                },
            )
        if settled is None:
            return None
        if settled.get(PENDING_FLAG):
            self.ends.ended(self.ends.bulk, settled)
        return self._publish(summarize(settled, view.items), STATUS_CHANGED)

    def _notification(self, view: BulkView, now_us: int) -> Doc:
        """The notification a bulk job completing now sends its owner."""
        doc = view.doc
        message = (
            f"Bulk job {doc['_id']} completed: {view.completed} of {view.total} items succeeded, "
            f"{view.failed} failed, {view.cancelled} cancelled."
        )
        return new_notification(
            oid=ObjectId(),
            owner=doc["owner"],
            event="bulk_job.completed",
            message=message,
            payload={
                "bulk_job_id": str(doc["_id"]),
                "owner": doc["owner"],
                "total_items": view.total,
                "completed_items": view.completed,
                "failed_items": view.failed,
                "cancelled_items": view.cancelled,
                "cost_cents": view.cost_cents,
                "error_summary": view.error_summary,
                "completed_at_us": now_us,
            },
            ck=self.store.order_keys.next(),
            created_us=now_us,
            targets=targets_of(doc),
            bulk_job_id=str(doc["_id"]),
        )

    def _publish(self, view: BulkView, kind: str) -> BulkView:
        self.hub.publish(bulk_event(view, kind))
        return view

    async def poll_remote(self) -> None:
        """Other replicas' bulk changes reach this server's watchers here."""
        ids = self.hub.watched(BULK)
        if not ids:
            return
        docs = await asyncio.to_thread(self.store.bulks.bulk_docs, ids)
        changed = [str(d["_id"]) for d in docs if d["seq"] > self.hub.last_seq(bulk_key(d["_id"]))]
        if not changed:
            return
        # The items, then the bulk jobs again (as `get` reads them): an event's
        # sequence then covers every change its counts include, so a later
        # event never carries smaller counts.
        items = await asyncio.to_thread(self._items_by_bulk, changed)
        for doc in await asyncio.to_thread(self.store.bulks.bulk_docs, changed):
            self.hub.deliver(bulk_event(summarize(doc, items[str(doc["_id"])]), ITEM_CHANGED))


def _same_outcome(notification: Doc | None, view: BulkView) -> bool:
    """Whether the bulk job's last notification told the outcome `view` has."""
    told = (notification or {}).get("payload") or {}
    now = {
        "total_items": view.total,
        "completed_items": view.completed,
        "failed_items": view.failed,
        "cancelled_items": view.cancelled,
    }
    return bool(told) and all(told.get(key) == value for key, value in now.items())


def bulk_event(view: BulkView, kind: str) -> Event:
    """`view` as an event for watchers: of `kind` (SNAPSHOT, ITEM_CHANGED or
    STATUS_CHANGED) while the bulk job runs; once it is final, STATUS_CHANGED
    (SNAPSHOT for a watcher arriving later) or, when it completed, COMPLETED
    with its notification, whichever path (local, poller, snapshot) built it."""
    final = is_final(view)
    notification = view.doc.get("notification") if final else None
    if notification and view.doc["status"] == str(BulkStatus.COMPLETED):
        kind = COMPLETED
    elif final and kind == ITEM_CHANGED:
        kind = STATUS_CHANGED
    payload: Doc = {
        "view": view,
        "kind": kind,
        "notification": notification if kind == COMPLETED else None,
        "at_us": clock.now_us(),
    }
    return Event(bulk_key(view.doc["_id"]), view.doc["seq"], payload, final)


def is_final(view: BulkView) -> bool:
    """Whether nothing more will happen to this bulk job: its status is final
    and no item is open, whatever became of its items (deleted ones were final)."""
    return view.doc["status"] in {str(s) for s in BULK_FINAL} and view.remaining == 0
