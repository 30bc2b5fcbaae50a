"""Job events written to `job_events` off the caller's thread, many per round trip.

Watchers get an event from the in-process hub at once; storing it is only for
replay (a resumed WatchJob, another replica's poller). So the dispatcher hands
events here and goes on: a writer thread sends whatever has gathered as one
insert_many. Losing unwritten events in a crash loses nothing a watcher needs:
the job document is the truth, and WatchJob fills a gap with a snapshot of it.

Progress events gather for up to PROGRESS_LINGER_SECONDS: a streaming run
reports every PROGRESS_WRITE_INTERVAL, and at concurrency 1 a command an
event was a third of a streamed job's commands. Any other event (a status
change) sends the batch within LINGER_SECONDS, and so does a FULL_BATCH; a
resumed WatchJob here flushes first, and another replica's watcher finds the
steps not yet stored in the job's snapshot.
"""

from __future__ import annotations

import logging
import threading
import time

from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import PROGRESS, EventStore
from genjobs.server.storage.outage import Outage, time_left, unreachable

log = logging.getLogger(__name__)

LINGER_SECONDS = 0.25  # gather this long after the first event: one insert for many
PROGRESS_LINGER_SECONDS = 1.0  # progress events alone gather this long
FULL_BATCH = 32  # this many pending are sent at once (a long insert holds up the database's other commands)
RETRY_SECONDS = 0.5
MAX_PENDING = 100_000  # while the database is away; beyond this the oldest are dropped


class EventLog:
    """Stores events in the background; `flush()` waits until those appended so far are stored."""

    def __init__(self, events: EventStore, outage: Outage) -> None:
        self.events = events
        self.outage = outage
        self._changed = threading.Condition()
        self._pending: list[Doc] = []
        self._appended = 0  # events handed over so far
        self._settled = 0  # of those, how many are stored (or given up)
        self._stopping = False
        self._hurry = False  # someone waits in flush(): write without lingering
        self._send_at = 0.0  # when the pending events are sent (monotonic)
        self._thread = threading.Thread(target=self._write_loop, name="event-log", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def append(self, event: Doc) -> None:
        """Queue `event` for storing; returns at once."""
        linger = PROGRESS_LINGER_SECONDS if event["type"] == PROGRESS else LINGER_SECONDS
        with self._changed:
            self._pending.append(event)
            self._appended += 1
            send_at = time.monotonic() + (linger if len(self._pending) < FULL_BATCH else 0.0)
            if len(self._pending) == 1 or send_at < self._send_at:
                self._send_at = send_at
                self._changed.notify_all()  # the writer waits for the first, or till later

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event appended before this call is stored; False on
        timeout (`timeout`, or what is left of the RPC's database deadline)."""
        left = time_left()
        if left is not None:
            timeout = min(timeout, left)  # the wait is one of the RPC's database calls
        with self._changed:
            target = self._appended
            if self._settled < target:
                self._hurry = True
                self._changed.notify_all()
            return self._changed.wait_for(lambda: self._settled >= target or self._stopping, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Store what is pending (within `timeout`), then end the writer."""
        self.flush(timeout)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                while not (self._hurry or self._stopping) and (left := self._send_at - time.monotonic()) > 0:
                    self._changed.wait(left)  # an event sent sooner (a status change) wakes it
                self._hurry = False
                batch, self._pending = self._pending, []
            try:
                self.events.insert_events(batch)
            except Exception as exc:
                if not unreachable(exc):
                    # Refused, not unanswered: trying again would refuse again. The job
                    # documents are the truth; a watcher fills the gap with a snapshot.
                    log.error("dropped %d job events the database refused: %r", len(batch), exc)
                    with self._changed:
                        self._settled += len(batch)
                        self._changed.notify_all()
                    continue
                if not self.outage.failed(exc, f"storing {len(batch)} job events"):
                    log.warning("could not store %d job events (%s); retrying", len(batch), exc)
                with self._changed:
                    waiting = batch + self._pending
                    dropped = max(0, len(waiting) - MAX_PENDING)
                    self._pending = waiting[dropped:]
                    self._settled += dropped
                    self._changed.wait(RETRY_SECONDS)
                continue
            with self._changed:
                self._settled += len(batch)
                self._changed.notify_all()
