"""Database outages: telling "the database did not answer" from "it refused",
waiting one out for a write that must not be lost, and bounding how long an
RPC waits for it (`database_deadline`; the api's DatabaseDeadline sets it per call)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pymongo
from pymongo.errors import ConnectionFailure, PyMongoError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_SECONDS = 0.5  # first pause between tries; doubles up to MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 2.0
# When the database calls of the RPC being served must be done (time.monotonic()).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("database_deadline", default=None)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer (down, restarting, frozen,
    slower than the time allowed): the same command may succeed later."""
    return isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout)


class Outage:
    """A database outage in the log: one WARNING when the first failure shows
    it (whichever loop meets it first), one when the database answers again
    (the health check says so). Failures in between are logged at DEBUG: a
    loop retrying every second must not write a line, let alone a traceback,
    each time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        # How many times the database did not answer so far: a write's answer
        # may have been lost then (what it left is looked for, see housekeeping).
        self.failures = 0
        self.answered_at = 0.0  # when a periodic command last answered (monotonic; `note_answer`)

    @property
    def on(self) -> bool:
        """Whether the database is known not to answer."""
        return self._since is not None

    def failed(self, exc: BaseException, what: str) -> bool:
        """Note that `what` failed with `exc`. True when `exc` says the database
        did not answer (then it is logged here); False for any other error,
        which the caller logs as before."""
        if not unreachable(exc):
            return False
        with self._lock:
            self.failures += 1
            first = self._since is None
            if first:
                self._since = time.monotonic()
        if first:
            log.warning("database unreachable (%s: %s); waiting for it", what, brief(exc))
        else:
            log.debug("database still unreachable (%s: %s)", what, brief(exc))
        return True

    def note_answer(self) -> None:
        """A periodic command (the lease keeper's, once a second) answered: the
        health check needs no ping of its own meanwhile."""
        self.answered_at = time.monotonic()

    def answered(self) -> None:
        """The database answered: the outage, if one was on, is over."""
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("database answers again, after %.1f s unreachable", time.monotonic() - since)


def brief(exc: BaseException) -> str:
    """`exc` in one short line (pymongo appends a whole topology description)."""
    return str(exc).split(", Timeout:")[0].split("\n")[0][:300]


def persist(
    write: Callable[[], T],
    what: str,
    patience: float,
    give_up: threading.Event | None = None,
    outage: Outage | None = None,
) -> T:
    """`write()`, tried again while the database is unreachable, for up to
    `patience` seconds or until `give_up` is set; then its last error is raised.
    Only for writes that are safe to repeat (conditional, fenced). The wait is
    reported to `outage` when given."""
    deadline = time.monotonic() + patience
    pause = RETRY_SECONDS
    warned = False
    while True:
        try:
            return write()
        except PyMongoError as exc:
            left = deadline - time.monotonic()
            if not unreachable(exc) or left <= 0 or (give_up is not None and give_up.is_set()):
                raise
            if not warned:
                if outage is None or not outage.failed(exc, f"writing {what}"):
                    log.warning("database unreachable while writing %s (%s); waiting for it", what, exc)
                warned = True
            if give_up is None:
                time.sleep(min(pause, left))
            elif give_up.wait(min(pause, left)):
                raise
            pause = min(pause * 2, MAX_RETRY_SECONDS)


def time_left() -> float | None:
    """Seconds left for the database calls of the RPC being served (None
    outside an RPC: each call then has the store's own limit)."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@contextlib.contextmanager
def database_deadline(seconds: float) -> Iterator[None]:
    """One deadline, `seconds` from now, for every database call made in the
    block and in threads it starts (contextvars follow `asyncio.to_thread`):
    pymongo's own calls through `pymongo.timeout`, and waits of ours (job
    events to be stored, a shared insert) through `time_left()`."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        with pymongo.timeout(max(seconds, 0.001)):  # 0 would mean "no limit" to pymongo
            yield
    finally:
        _deadline.reset(token)
