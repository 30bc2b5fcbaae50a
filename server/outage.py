"""Database outages: telling "the database did not answer" from "it refused",
and waiting one out for a write that must not be lost."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from pymongo.errors import ConnectionFailure, PyMongoError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_SECONDS = 0.5  # first pause between tries; doubles up to MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 2.0


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer (down, restarting, frozen,
    slower than the time allowed): the same command may succeed later."""
    return isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout)


def persist(write: Callable[[], T], what: str, patience: float, give_up: threading.Event | None = None) -> T:
    """`write()`, tried again while the database is unreachable, for up to
    `patience` seconds or until `give_up` is set; then its last error is raised.
    Only for writes that are safe to repeat (conditional, fenced)."""
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
                log.warning("database unreachable while writing %s (%s); waiting for it", what, exc)
                warned = True
            if give_up is None:
                time.sleep(min(pause, left))
            elif give_up.wait(min(pause, left)):
                raise
            pause = min(pause * 2, MAX_RETRY_SECONDS)
