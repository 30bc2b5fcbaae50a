"""Places under the queued-jobs cap given back behind the dispatcher's runs.

A job's end gives its place back with a write on the owner's counter
(`BudgetStore.release_slots`). On the dispatcher's path that was one more
command per job, in line before the next claim; here the ends of a short
window are given back together, in one command for every owner, by a thread
of their own. Each place still counts out once (the counter's markers make
the write idempotent), and a server that stops before the write leaves the
places to the leader's sweep, as a crash between a job's end and its release
always did. Until the write, the owner's count is higher by the jobs that
ended in the window: a submit the cap would refuse here first sends what is
pending (`flush`) and tries again.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar

from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.storage.budgets import BudgetStore
from genjobs.server.storage.outage import unreachable

log = logging.getLogger(__name__)

# Set while the dispatcher records its runs' changes (`Jobs.record_run`):
# their ends give their places back here, not by a write in the run's path.
RUN_PATH: ContextVar[bool] = ContextVar("run_path", default=False)

# Ends gathered into one write: nx-27017 rewrites the counter, markers and all, per write.
WINDOW_SECONDS = 0.25
THREAD = "dispatcher-place-returns"  # named for the dispatcher: its commands are the runs'


class PlaceReturns:
    """Ended jobs' places, by owner, written back together every WINDOW_SECONDS."""

    def __init__(self, store: BudgetStore, window_seconds: float = WINDOW_SECONDS) -> None:
        self.store = store
        self.window_seconds = window_seconds
        self._pending: dict[str, list[ObjectId]] = {}
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, owner: str, ids: list[ObjectId]) -> None:
        """Give these places back within the window."""
        with self._lock:
            self._pending.setdefault(owner, []).extend(ids)
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._loop, name=THREAD, daemon=True)
                self._thread.start()
        self._due.set()

    def pending(self, owner: str) -> bool:
        """Whether places of `owner` wait to be given back."""
        with self._lock:
            return owner in self._pending

    def flush(self) -> int:
        """Give back every pending place now (one command an owner); how many
        counted out. While the database does not answer they wait for the next
        window (its outage is logged once, elsewhere); another error leaves
        them to the leader's sweep."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            return self.store.release_places(batch)
        except PyMongoError as exc:
            if unreachable(exc) and not self._closed.is_set():
                with self._lock:
                    for owner, ids in batch.items():
                        self._pending.setdefault(owner, []).extend(ids)
                self._due.set()
                return 0
            places = sum(map(len, batch.values()))
            log.warning("queued-jobs cap: %d places left to the sweep (%s)", places, exc)
            return 0

    def close(self) -> None:
        """Write what is pending and stop the thread."""
        self._closed.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.flush()

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._due.wait()
            self._closed.wait(self.window_seconds)  # gather the window's ends
            self._due.clear()
            self.flush()
