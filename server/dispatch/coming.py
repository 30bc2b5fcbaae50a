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

from bson import ObjectId

COMING_WAIT_SECONDS = 0.02  # from the submit: an insert slower than this is not waited for


class ComingJobs:
    """The jobs being stored queued on this server that would be claimed next."""

    def __init__(self, wait_seconds: float = COMING_WAIT_SECONDS) -> None:
        self.wait_seconds = wait_seconds
        self._until: dict[ObjectId, float] = {}  # job -> when a lane stops waiting for it (monotonic)
        self._arrivals = 0
        self._changed = threading.Condition()
        self.waiting = 0  # lanes waiting now

    def expect(self, oid: ObjectId) -> None:
        """`oid` is being inserted, and no job is known ready before it."""
        now = time.monotonic()
        with self._changed:
            self._forget(now)  # those whose insert failed, with no lane ending since
            self._until[oid] = now + self.wait_seconds

    def arrived(self, oid: ObjectId) -> None:
        """`oid` is stored and offered (or will not be: a failed insert need not
        be told, it is waited for no longer than `wait_seconds`)."""
        with self._changed:
            if self._until.pop(oid, None) is not None:
                self._arrivals += 1
                self._changed.notify_all()

    def wait(self) -> bool:
        """Wait until a job expected arrives, or none is expected any more;
        whether one arrived. At once when none is expected."""
        with self._changed:
            arrivals = self._arrivals
            self.waiting += 1
            try:
                while self._arrivals == arrivals:
                    now = time.monotonic()
                    self._forget(now)
                    if not self._until:
                        return False
                    self._changed.wait(min(self._until.values()) - now)
                return True
            finally:
                self.waiting -= 1

    def _forget(self, now: float) -> None:
        """Expect no more the jobs waited for long enough (under the condition)."""
        for oid in [oid for oid, until in self._until.items() if until <= now]:
            del self._until[oid]
