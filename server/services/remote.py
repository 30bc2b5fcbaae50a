"""Other servers' changes, reaching this server's watch streams: one poll
every `GENJOBS_POLL_SECONDS` (the app's remote-events task).

- A watched job (WatchJob) changed elsewhere: its stored events fill in the
  steps since what its watchers were told, a snapshot of the job the rest.
  A leader alone makes every change and tells it here, so it reads them only
  once every RECHECK_SECONDS (for a change made by hand in the database).
- A watched bulk job (WatchBulkJob) changed elsewhere: `Bulks.poll_remote`,
  as often as the watched jobs.
- A watched owner's jobs (WatchJobs): those changed since the last read, by
  the index on `updated_us` (what changed, not the history), less
  CHANGE_MARGIN_US, and the jobs last told running, by `_id`; each is sent
  as it is now when its sequence is newer than any told on that owner's key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from genjobs.server.model import clock
from genjobs.server.model.recheck import Recheck
from genjobs.server.model.states import final
from genjobs.server.services.events import JOB, OWNER, Event, EventHub, job_key, owner_key
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import SNAPSHOT, STATUS_CHANGED
from genjobs.server.storage.store import Store

# Owners' streams read what changed since the last read minus this: a write
# is stamped before it is sent, and may land up to the database's deadline
# (5 s) later, on a replica whose clock differs by a second or two. A write
# retried for longer (an outcome through an outage) keeps its first stamp:
# jobs last told running are read again by id until they say otherwise.
# The last SETTLE_US are left to the next read: changes made here are told before then.
CHANGE_MARGIN_US = 7_000_000
SETTLE_US = 250_000


class Replicas(Protocol):
    """Whether other servers share the database (the dispatcher knows)."""

    def alone(self) -> bool:
        """Whether no other server shares the database (as last read)."""
        return False


class RemoteChanges:
    """Reads what other servers changed for the streams open here."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        replicas: Replicas,
        watched_bulks: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.hub = hub
        self.replicas = replicas
        # Reads the watched bulk jobs changed elsewhere (`Bulks.poll_remote`).
        self.watched_bulks = watched_bulks
        self._owners_read_us = 0  # when the owners' streams last read what changed (0: nobody watched)
        self._recheck = Recheck()  # the watched (bulk) jobs' reads

    async def poll(self) -> None:
        """One read for the watched jobs and one for the watched bulk jobs
        (`watched_bulks`), then one for the watched owners. The first two are
        made at every poll while other servers share the database; for a
        leader alone, which makes and tells every change here, once every
        RECHECK_SECONDS (for a change made by hand), the first at once (the
        last changes of the servers gone)."""
        if self._recheck.take(self.replicas.alone()):
            await self._poll_watched_jobs()
            await self.watched_bulks()
        await self._poll_watched_owners()

    def _snapshot(self, doc: Doc) -> Doc:
        """The event standing for a job's changes not told one by one: a final
        job's last change was its final status."""
        return self.store.events.event_doc(doc, STATUS_CHANGED if final(doc["status"]) else SNAPSHOT)

    async def _poll_watched_jobs(self) -> None:
        """Stored events fill in the steps of a watched job changed elsewhere, a snapshot the rest."""
        ids = self.hub.watched(JOB)
        if not ids:
            return
        docs = await asyncio.to_thread(self.store.jobs.jobs_by_ids, ids)
        for doc in docs:
            key = job_key(doc["_id"])
            last = self.hub.last_seq(key)
            if doc["seq"] <= last:
                continue
            stored = await asyncio.to_thread(self.store.events.events_after, str(doc["_id"]), last)
            for event in stored:
                self.hub.deliver(Event(key, event["seq"], event, final(event["job"]["status"])))
            if doc["seq"] > (stored[-1]["seq"] if stored else last):
                self.hub.deliver(Event(key, doc["seq"], self._snapshot(doc), final(doc["status"])))

    async def _poll_watched_owners(self) -> None:
        """Each job of a watched owner that changed since the last read (or was
        last told running), as it is now, on the owner's key; a sequence
        already delivered is not read again."""
        owners = set(self.hub.watched(OWNER))
        if not owners:
            self._owners_read_us = 0
            return
        now_us = clock.now_us()
        if self.replicas.alone():
            # Every change is made here and told here. A server joining is
            # heard of within a second: its changes are read from seven back.
            self._owners_read_us = now_us
            return
        since_us = (self._owners_read_us or now_us) - CHANGE_MARGIN_US
        running = self.hub.running_on_owner_keys()
        rows = await asyncio.to_thread(self.store.jobs.changed_since, since_us, running)
        wanted = [
            str(row["_id"])
            for row in rows
            if row.get("owner") in owners
            and row["updated_us"] <= now_us - SETTLE_US
            and row["seq"] > self.hub.delivered_seq(owner_key(row["owner"]), str(row["_id"]))
        ]
        docs = await asyncio.to_thread(self.store.jobs.jobs_by_ids, wanted) if wanted else []
        for doc in docs:
            self.hub.deliver(Event(owner_key(doc["owner"]), doc["seq"], self._snapshot(doc), False))
        # Read: the next read starts here (a failed one is read again), and the
        # sequences delivered before this read's span cannot come again.
        self._owners_read_us = now_us
        self.hub.forget_job_seqs((now_us - since_us) / 1e6 + 1.0)
