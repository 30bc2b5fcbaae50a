"""Jobs on their way into the ready lane on this server: submitted, their
insert not yet answered.

A lane whose run ends with no job known ready waits for one of them, for a
few milliseconds at most, so that the job's claim rides that run's outcome
(`QueueStore.end_and_claim`: one command for both) instead of costing a
claim of its own once the outcome is stored. Quick jobs submitted one
after another meet this all the time: each arrives while the last still
runs, so it cannot be stored running, and that run ends before its insert
is answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bson import ObjectId

COMING_WAIT_SECONDS = 0.02  # from the submit: an insert slower than this is not waited for


class ComingJobs:
    """The jobs being stored queued on this server that would be claimed next."""

    def __init__(self, wait_seconds: float = COMING_WAIT_SECONDS) -> None:
        self.wait_seconds = wait_seconds
        self._until: dict[ObjectId, float] = {}  # job -> when a lane stops waiting for it (monotonic)
        self._changed = threading.Condition()
        self.waiting = 0  # lanes waiting now

    def expect(self, oid: ObjectId) -> None:
        """`oid` is being inserted, and no job is known ready before it."""
        now = time.monotonic()
        with self._changed:
            self._forget(now)  # those whose insert failed, with no lane ending since
            self._until[oid] = now + self.wait_seconds

    def offered(self, oid: ObjectId) -> None:
        """A job entered the ready lane here (`oid`, expected or not): a waiting
        lane looks again. A failed insert need not be told: it is waited for
        no longer than `wait_seconds`."""
        with self._changed:
            self._until.pop(oid, None)
            if self.waiting:
                self._changed.notify_all()

    def wait(self, ready: Callable[[], bool]) -> None:
        """While jobs are expected, wait until `ready()` (a job is known ready),
        at most until the latest of their bounds as the wait starts: jobs
        expected meanwhile do not make it longer. At once when none is."""
        with self._changed:
            if not self._until:
                return
            deadline = max(self._until.values())
            self.waiting += 1
            try:
                while not ready():
                    now = time.monotonic()
                    self._forget(now)
                    if not self._until or now >= deadline:
                        return
                    self._changed.wait(min(deadline, *self._until.values()) - now)
            finally:
                self.waiting -= 1

    def _forget(self, now: float) -> None:
        """Expect no more the jobs waited for long enough (under the condition)."""
        for oid in [oid for oid, until in self._until.items() if until <= now]:
            del self._until[oid]
