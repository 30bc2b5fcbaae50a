"""How long a read of something a server keeps in memory stands.

A leader alone (no other server shares the database) makes every change and
tells it here, so what it keeps is read again only once every RECHECK_SECONDS,
for a change made by hand in the database. While other servers share it, a
read stands for the keeper's own interval. The first read made alone comes at
once: it brings the last changes of the servers gone.

The watched jobs (services/remote.py), the leader's housekeeping, fair share's
ready lane and the budgets each keep one `Recheck`."""

from __future__ import annotations

import time

RECHECK_SECONDS = 10.0


class Recheck:
    """When the next read of one thing kept in memory is due. Not locked: its
    keeper holds its own lock around it where threads share it."""

    def __init__(self, every: float = 0.0, alone_every: float = RECHECK_SECONDS) -> None:
        self.every = every  # how long a read stands while others share the database
        self.alone_every = alone_every  # and for a leader alone, once a read was made alone
        self.last = 0.0  # monotonic time of the last read; 0: none, or forgotten
        self._alone = False  # whether the last read was made alone

    def interval(self, alone: bool) -> float:
        """How long the last read stands for a server that is `alone` now."""
        return self.alone_every if alone and self._alone else self.every

    def due(self, alone: bool) -> bool:
        """Whether a server that is `alone` now should read again."""
        return not self.last or time.monotonic() - self.last >= self.interval(alone)

    def take(self, alone: bool) -> bool:
        """`due`, and if so the read counts as made now (its keeper reads at once)."""
        if not self.due(alone):
            return False
        self.read(alone)
        return True

    def read(self, alone: bool | None = None, at: float | None = None) -> None:
        """A read was made (at `at`, monotonic; now by default), `alone` or not
        (None: as the last one)."""
        self.last = time.monotonic() if at is None else at
        if alone is not None:
            self._alone = alone

    def forget(self) -> None:
        """Something changed that was not told: the next read is due at once."""
        self.last = 0.0
