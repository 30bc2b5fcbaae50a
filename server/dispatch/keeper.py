"""The lease keeper: the dispatcher's thread that keeps its leases.

Once a tick (a third of a lease, at most a second) it holds or takes the
leader lease in `leases`, hearing as it does the wakeups other replicas
left in it (a follower notes instead in the lease that it is alive, so that
the leader reads the wakeups more often than it renews), and renews the
lease of every run of this server that no progress write extended within
the tick, noticing on the way runs taken over by another server and cancel
requests. It also knows since when the database has answered it, which is
what may let the dispatcher take a lapsed run over (`may_take_over`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pymongo.errors import PyMongoError

from genjobs.server.dispatch.progress import ErrorLog
from genjobs.server.dispatch.run import Run
from genjobs.server.model import clock
from genjobs.server.storage.database import Doc
from genjobs.server.storage.queue import LeaderLease, QueueStore
from genjobs.server.telemetry import metrics

log = logging.getLogger("genjobs.server.dispatch.dispatcher")  # the dispatcher's lines

# The leader lease; replicas that queue jobs bump its wakeups count (see QueueStore.signal_leader).
LEADER_LEASE = "dispatcher"


class LeaseKeeper:
    """Holds the leader lease and the leases of this server's runs, on a thread of its own."""

    def __init__(
        self,
        queue: QueueStore,
        worker_id: str,
        lease_seconds: float,
        runs: Callable[[], list[Run]],
        stopping: threading.Event,
        elected: Callable[[], None],
        heard: Callable[[LeaderLease], None],
        database_error: ErrorLog,
        answered: Callable[[], None] = lambda: None,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.tick = min(1.0, lease_seconds / 3)
        self._runs = runs  # the runs going on here now
        self._stopping = stopping  # the dispatcher's: kept on while runs are left
        self._elected = elected  # told when this server becomes the leader
        self._heard = heard  # told the lease's wakeups at each renewal
        self._database_error = database_error
        self._answered = answered  # told of each renewal the database answered (the health check's ping)
        self._leader_until = 0.0  # monotonic time until which our lease surely holds
        self._term = 0  # the leader lease's term this server last held it in (0: none)
        self._reachable_since: float | None = None  # monotonic; None while renewals fail
        self._thread = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)

    def start(self) -> None:
        """Start the keeper thread."""
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the keeper to end: once stopping with no run left."""
        self._thread.join(timeout)

    def is_leader(self) -> bool:
        """Whether this server surely holds the leader lease now."""
        return time.monotonic() < self._leader_until

    def may_take_over(self, doc: Doc, now: float) -> bool:
        """Whether a run whose lease lapsed is lost. Leases lapse in a database
        outage too, while their holders wait with results in hand: a run is
        taken over only once this server has reached the database for a whole
        lease period (its holder, if alive, has renewed by then)."""
        if doc["worker"] == self.worker_id:
            return True  # ours: we know it is not running
        since = self._reachable_since
        return since is not None and now - since >= self.lease_seconds

    def _keep(self) -> None:
        while not self._stopping.is_set() or self._runs():
            started = time.monotonic()
            try:
                self._renew(started)
                self._answered()
                ended = time.monotonic()
                if self._reachable_since is None or ended - started > self.tick:
                    # A renewal that took long may have waited out an outage (pymongo
                    # waits for a server within its timeout): contact is certain from now.
                    self._reachable_since = ended
            except PyMongoError as exc:
                self._reachable_since = None
                self._database_error(exc, "lease renewal", logging.DEBUG, "lease renewal failed: %s", exc)
            self._stopping.wait(max(0.0, self.tick - (time.monotonic() - started)))
            if self._stopping.is_set() and not self._runs():
                return

    def _renew(self, before: float) -> None:
        if not self._stopping.is_set() or self._runs():
            self._hold_leader(before)
        for run in self._runs():
            if before - run.lease_renewed < self.tick:
                continue  # a progress write extended its lease within the tick
            held = self.queue.renew_job_lease(run.oid, run.epoch, self.lease_seconds)
            if held is None:
                run.lost = True
                run.cancel.set()
            elif held.get("cancel_requested"):
                run.cancel.set()

    def _hold_leader(self, before: float) -> None:
        lease = self.queue.hold_leader(LEADER_LEASE, self.worker_id, self.lease_seconds)
        if lease is not None:
            # Trust the lease a little less long than it lasts (clock drift).
            self._leader_until = before + self.lease_seconds * 0.8
            if lease.term != self._term:  # taken, not renewed (another server may have led meanwhile)
                log.info("this server now runs the dispatcher (%s)", self.worker_id)
                self._term = lease.term
                self._elected()
                metrics.leader(True)
            self._heard(lease)
        else:
            self._term = 0
            metrics.leader(False)
            self.queue.note_follower(LEADER_LEASE, clock.now_us() + int(self.lease_seconds * 1_000_000))
