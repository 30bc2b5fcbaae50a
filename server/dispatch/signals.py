"""How replicas tell the leader that they queued jobs: the wakeups in its lease.

A replica that is not the leader, having queued jobs, bumps the wakeups
count in the leader lease (one update from its dispatcher thread, coalesced
over the jobs queued meanwhile), and its keeper notes there once a tick that
it is alive. The leader hears the count as its keeper renews the lease; while
a follower is alive it also reads it by `_id` every WAKEUP_POLL_SECONDS. On a
new count the leader reads what entered the queue up to now, so a job queued
on any replica starts about as soon as on the leader, and an idle leader
alone reads nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pymongo.errors import PyMongoError

from genjobs.server.dispatch.keeper import LEADER_LEASE
from genjobs.server.model import clock
from genjobs.server.storage.queue import LeaderLease, QueueStore

WAKEUP_POLL_SECONDS = 0.02


class LeaderSignals:
    """Both ends of the wakeups for one server: what it queued as a follower
    and has not told yet, and, as the leader, the count it heard and whether a
    follower is alive. `signalled` is called (on the dispatcher's thread) when
    a new count is heeded; `wake` when the keeper heard something to heed."""

    def __init__(self, queue: QueueStore, signalled: Callable[[], None], wake: Callable[[], None]) -> None:
        self.queue = queue
        self._signalled = signalled
        self._wake = wake
        self.pending = False  # jobs queued here as a follower, not yet told to the leader
        self.followers = False  # whether another replica was alive as the leader last heard
        self._heeded = -1  # the count last heeded (-1: none yet)
        # The lease's wakeups as last heard (the keeper's renewal, or a read).
        self._renewed: LeaderLease | None = None
        self._read_at = 0.0  # monotonic time of the last read

    # ---- as a follower ------------------------------------------------------

    def queued(self) -> None:
        """Jobs were queued here while another server leads: tell it at the next `send`."""
        self.pending = True

    def send(self) -> None:
        """Tell the leader of the jobs queued here since the last send (one
        update; kept for the next try if it fails). From the dispatcher's thread."""
        if not self.pending:
            return
        self.pending = False
        try:
            self.queue.signal_leader(LEADER_LEASE)
        except PyMongoError:
            self.pending = True
            raise

    def unsent(self) -> bool:
        """Now leading: whether jobs queued here as a follower were never told
        (the leader that took them over must look at everything)."""
        unsent, self.pending = self.pending, False
        return unsent

    # ---- as the leader ------------------------------------------------------

    def heard(self, lease: LeaderLease) -> None:
        """The keeper renewed the leader lease and heard its wakeups: a new
        count, or a follower come or gone, is heeded now (on the dispatcher's thread)."""
        self._renewed = lease
        followers = lease.followers_until_us > clock.now_us()
        if lease.signals != self._heeded or followers != self.followers:
            self._wake()

    def heed(self) -> bool:
        """Heed the wakeups: as last heard while no other replica is alive (no
        read), else read by `_id` every WAKEUP_POLL_SECONDS; a new count is
        `signalled`. Whether it read (the lease, or what `signalled` reads)."""
        read = self.followers
        if read:
            now = time.monotonic()
            if now - self._read_at < WAKEUP_POLL_SECONDS:
                return False
            self._read_at = now
            self._renewed = self.queue.read_leader(LEADER_LEASE)  # the newest heard, should the followers go
        lease = self._renewed
        if lease is None:
            return False  # elected, the first renewal's wakeups not heard yet
        self.followers = lease.followers_until_us > clock.now_us()
        if lease.signals != self._heeded:
            self._heeded = lease.signals
            self._signalled()
            return True
        return read
