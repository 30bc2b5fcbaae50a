"""Writes that follow a dispatcher run's end, sent behind it in batches.

A run's end is followed by bookkeeping writes that need not stand between
it and the lane's next claim: its cost counted in its month where no limit
covers it (`BudgetStore.count_spend_many`), then its `spend_pending` flag and
its counting marker cleared (`BudgetStore.spend_counted_many`). On the run's
path that was three commands per job before the next claim; here the ends of
a short window are written together, a command or two for every month
document, by a thread of its own. Each write is idempotent while the job's
counting marker stands, and a server that stops before it leaves the work to
the leader's sweep, as a crash right after a job's end always did. The
writes do not wait out a database outage, and a cost is counted here only
by a deadline well before the sweep may take its job (`Budgets._settle`):
a count or a flag's clear that lands after another server's sweep read the
flag, and cleared the marker, would let the cost be counted twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Generic, TypeVar

from pymongo.errors import PyMongoError

from genjobs.server.storage.outage import unreachable

log = logging.getLogger(__name__)

# Set while the dispatcher records its runs' changes (`JobChanges.record_run`):
# their ends' bookkeeping is written here, not by writes in the run's path.
RUN_PATH: ContextVar[bool] = ContextVar("run_path", default=False)

# Ends gathered into one write: nx-27017 rewrites a month's usage document, markers and all, per write.
WINDOW_SECONDS = 1.0

Item = TypeVar("Item")


class WrittenBehind(Generic[Item]):
    """Items by owner, written together every `window_seconds` by `write`
    (which says how many it wrote) on a thread named `thread`."""

    def __init__(
        self,
        write: Callable[[dict[str, list[Item]]], int],
        what: str,
        thread: str,
        window_seconds: float = WINDOW_SECONDS,
    ) -> None:
        self.write = write
        self.what = what  # for the log: "completed jobs' costs"
        self.thread_name = thread  # named for the dispatcher: its commands are the runs'
        self.window_seconds = window_seconds
        self._pending: dict[str, list[Item]] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # held through a write: a flush returns once it landed
        self._due = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, owner: str, items: list[Item]) -> None:
        """Write these within the window."""
        with self._lock:
            self._pending.setdefault(owner, []).extend(items)
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                self._thread.start()
        self._due.set()

    def flush(self, owner: str | None = None) -> int:
        """Write every pending item (of `owner` only, when given) now, and wait
        for a write under way; how many were written. An error leaves them to
        the leader's sweep."""
        with self._writing:
            with self._lock:
                if owner is None:
                    batch, self._pending = self._pending, {}
                else:
                    mine = self._pending.pop(owner, None)
                    batch = {owner: mine} if mine else {}
            return self._write(batch) if batch else 0

    def _write(self, batch: dict[str, list[Item]]) -> int:
        try:
            return self.write(batch)
        except PyMongoError as exc:
            down = unreachable(exc)
            count = sum(map(len, batch.values()))
            # An outage is logged once, elsewhere: what it leaves to the sweep is a detail.
            level = logging.INFO if down else logging.WARNING
            log.log(level, "%s: %d left to the sweep (%s)", self.what, count, exc)
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
