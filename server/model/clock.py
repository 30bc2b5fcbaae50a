"""Time helpers: stored times are UTC datetimes, orderings are integer microseconds."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


def now() -> datetime:
    """The current UTC time, at the millisecond precision MongoDB stores."""
    stamp = datetime.now(UTC)
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)


def now_us() -> int:
    """Microseconds since the epoch."""
    return time.time_ns() // 1000


def from_us(micros: int) -> datetime:
    """The UTC datetime of an epoch-microsecond value."""
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


def to_us(stamp: datetime) -> int:
    """Epoch microseconds of a datetime (naive ones are taken as UTC)."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1_000_000)


class OrderKeys:
    """Strictly increasing integer keys from the wall clock.

    Jobs are listed and dispatched by this key rather than by a date: nx-27017
    sorts and compares integers in SQL, but dates in Python (MONGO.md).
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self, count: int = 1) -> int:
        """The first of `count` consecutive fresh keys."""
        with self._lock:
            first = max(now_us(), self._last + 1)
            self._last = first + count - 1
            return first
