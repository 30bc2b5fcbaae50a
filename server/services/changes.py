"""Telling of job changes, in one place: each change is kept in job_events
for replay, told to this server's watchers (the hub: WatchJob and the
owner's WatchJobs), to the listeners (bulk accounting, notifications,
budgets), and, for a job in a waiting lane, to the dispatcher; a job's end
frees its place under the queued-jobs cap first.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from pymongo.errors import PyMongoError

from genjobs.server.model.records import Job
from genjobs.server.model.states import final
from genjobs.server.services.events import Event, EventHub, job_key, owner_key
from genjobs.server.services.queue_cap import QueueCap
from genjobs.server.services.written_behind import RUN_PATH
from genjobs.server.storage import records
from genjobs.server.storage.database import Doc
from genjobs.server.storage.eventlog import EventLog
from genjobs.server.storage.events import SNAPSHOT, STATUS_CHANGED
from genjobs.server.storage.queue import WAITING
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import metrics

log = logging.getLogger("genjobs.server.services.jobs")  # the jobs layer's lines, as before


@contextlib.contextmanager
def _on_run_path() -> Iterator[None]:
    """Mark what runs inside as the dispatcher's runs' bookkeeping (RUN_PATH)."""
    token = RUN_PATH.set(True)
    try:
        yield
    finally:
        RUN_PATH.reset(token)


# Runs' ends waiting to be told (`JobChanges.record_run_later`) beyond which a lane tells its own.
MAX_DELIVERIES_BEHIND = 64


class JobChanges:
    """Tells of the changes made here (see the module); `record_run_later`
    tells a run's end on a thread of its own, in order."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        event_log: EventLog,
        worker_id: str,
        cap: QueueCap,
        waiting: Callable[[int], None],
        on_change: Sequence[Callable[[Job, str], None]],
    ) -> None:
        self.store = store
        self.hub = hub
        self.event_log = event_log
        self.worker_id = worker_id
        self.cap = cap  # the queued-jobs cap: an ended job's place
        self._waiting = waiting  # the dispatcher, told when a job waits here till a time
        # Bulk accounting, notifications, budgets: each gets the changed Job and the event's kind.
        self.on_change = tuple(on_change)
        # Where `record_run_later` tells of changes: one thread, so in the order
        # recorded; named as the dispatcher's, whose runs' ends it tells.
        self._deliveries = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-deliveries")
        self._behind = 0  # changes handed to it and not yet told
        self._behind_lock = threading.Lock()

    def record(self, doc: Doc, kind: str) -> None:
        """Tell watchers of a change, and keep it in job_events for replay (in the background)."""
        self._deliver(doc, kind, self._keep(doc, kind))

    def record_run(self, doc: Doc, kind: str) -> None:
        """`record` for the dispatcher's runs: their costs (where no limit
        covers them) and the costs' flags are written behind them (see
        services/written_behind.py)."""
        with _on_run_path():
            self.record(doc, kind)

    def record_run_later(self, doc: Doc, kind: str) -> None:
        """`record_run`, with the change kept for replay now (a DeleteJob right
        after finds it) and told to watchers and listeners off the caller's
        thread, in order: for a lane whose next job is claimed already, so that
        the telling overlaps its next command instead of preceding it."""
        event = self._keep(doc, kind)
        # Now, as `record` does: the end is stored, and GetJob or a replay may tell of it.
        ended = self._free_place_if_ended(doc)
        with self._behind_lock:
            later = self._behind < MAX_DELIVERIES_BEHIND  # else the lane waits its turn: told here
            if later:
                self._behind += 1
        if later:
            try:
                # In the lane's context: the attempt's log context and span.
                context = contextvars.copy_context()
                self._deliveries.submit(context.run, self._tell_run, doc, kind, event, ended, True)
                return
            except RuntimeError:  # closed (the server stops): told here
                with self._behind_lock:
                    self._behind -= 1
        self._tell_run(doc, kind, event, ended)

    def close(self, timeout: float) -> None:
        """Tell what `record_run_later` still holds, within `timeout` seconds
        (what is left is dropped: its events are stored, and the listeners'
        sweeps repair what they missed); once the dispatcher stopped."""
        try:
            self._deliveries.submit(lambda: None).result(timeout)
        except TimeoutError:
            log.warning("stopping: %d job changes not told to watchers and listeners", self._behind)
        self._deliveries.shutdown(wait=False, cancel_futures=True)

    def _keep(self, doc: Doc, kind: str) -> Doc:
        """The change's event, queued for storage (for replay) before anyone is
        told of it: a DeleteJob that flushes the log right after the change finds
        it there, and the callbacks' bookkeeping (spend, notifications) comes after."""
        event = self.store.events.event_doc(doc, kind, self.worker_id)
        self.event_log.append(event)
        return event

    def _tell_run(self, doc: Doc, kind: str, event: Doc, ended: bool, queued: bool = False) -> None:
        """`_tell` for a run's end on the deliveries thread (`queued`) or the lane."""
        try:
            with _on_run_path():
                self._tell(doc, kind, event, ended)
        except Exception:  # on the deliveries' thread: nobody else would hear of it
            log.exception("job %s: telling of a %s event failed", doc["_id"], kind)
        finally:
            if queued:
                with self._behind_lock:
                    self._behind -= 1

    def announce(self, doc: Doc) -> None:
        """Tell the owner's stream (WatchJobs) of a new job: its watchers
        start from its snapshot, so it is no event of its own."""
        self._note_waiting(doc)
        event = self.store.events.event_doc(doc, SNAPSHOT, self.worker_id)
        self.hub.remember(Event(job_key(event["job_id"]), doc["seq"], event, False))  # a watch comes next
        self.hub.publish(Event(owner_key(doc["owner"]), doc["seq"], event, False))

    def _note_waiting(self, doc: Doc) -> None:
        """A job told of here in a waiting lane: the dispatcher learns when it falls due."""
        if doc.get("queue") in WAITING:
            self._waiting(doc.get("run_after_us", 0))

    def publish(self, doc: Doc, kind: str) -> None:
        """Hand a change to this server's watchers only (not kept for replay)."""
        self._deliver(doc, kind, self.store.events.event_doc(doc, kind, self.worker_id))

    def _deliver(self, doc: Doc, kind: str, event: Doc) -> None:
        # Before any watcher hears of an end: the submit it may prompt finds the place free.
        self._tell(doc, kind, event, self._free_place_if_ended(doc))

    def _free_place_if_ended(self, doc: Doc) -> bool:
        """Whether the changed job is final; if so, its place under the
        queued-jobs cap is free in this server's memory from now on."""
        ended = final(doc["status"])
        if ended:
            self.cap.unplaced(doc["owner"], [doc["_id"]])
        return ended

    def _tell(self, doc: Doc, kind: str, event: Doc, ended: bool) -> None:
        """Tell watchers and listeners of a change (`ended`: it made the job final)."""
        self._note_waiting(doc)
        # `doc` is the job as the storage write returned it and `event` the wire's
        # snapshot of it: both stay documents on purpose (watchers get the event as is).
        self.hub.publish(Event(job_key(event["job_id"]), event["seq"], event, ended))
        # The owner's stream (WatchJobs) sees every job of theirs; it never ends with one.
        self.hub.publish(Event(owner_key(doc["owner"]), event["seq"], event, False))
        # The listeners hear a job's status changes that end it and every status
        # change of a bulk item: the claim of a lone job (PROCESSING) and its
        # progress reports convert nothing.
        if kind != STATUS_CHANGED or not (ended or doc.get("bulk_job_id")):
            return
        job = records.job(doc)  # the one conversion of this change, for every listener
        metrics.job_changed(job, kind)
        for callback in self.on_change:
            # Each on its own: a database error in one (bulk counts) must not skip
            # the next (the job's notification); their sweeps repair what failed.
            try:
                callback(job, kind)
            except PyMongoError as exc:
                if not self.store.outage.failed(exc, f"job {job.id}'s {callback.__name__}"):
                    log.warning(
                        "job %s: %s after a %s event failed (%s)", job.id, callback.__name__, kind, exc
                    )
