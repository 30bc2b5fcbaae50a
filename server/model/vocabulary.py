"""The words a job is described in: its mode, its priority (and the rank the
queue sorts by), the queue lanes. Each list lives here once; the proto's
enums name the same values with a prefix (MODE_TOPIC, PRIORITY_HIGH).
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """What a job generates from."""

    TOPIC = "TOPIC"
    KEYWORDS = "KEYWORDS"
    TRENDS = "TRENDS"
    SPIN = "SPIN"


class Priority(StrEnum):
    """A job's or bulk job's priority, as stored; `rank` is what the queue sorts by."""

    LOW = "LOW"
    NORMAL = "NORMAL"
    HIGH = "HIGH"

    @property
    def rank(self) -> int:
        """The stored sort key: ascending sorts run the highest priority first."""
        return _RANKS[self]

    @classmethod
    def of(cls, value: object) -> Priority:
        """THE rule for a priority that is missing (stored before priorities
        existed) or unknown: NORMAL."""
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        return cls.NORMAL

    @classmethod
    def rank_of(cls, rank: int | None) -> int:
        """A stored rank; a job stored before priorities (no rank) ranks NORMAL."""
        return cls.NORMAL.rank if rank is None else int(rank)


_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class Lane(StrEnum):
    """A job's queue lane: where a QUEUED job waits; every other status is NONE."""

    READY = "ready"
    HELD = "held"  # a budget or limit holds it
    BACKOFF = "backoff"  # waiting for its next attempt (run_after_us)
    SCHEDULED = "scheduled"  # not before its schedule_time (run_after_us)
    NONE = "none"
