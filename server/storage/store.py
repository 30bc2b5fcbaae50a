"""The aggregate stores over one database connection, made together.

A thin composition: each caller reaches the aggregate store it needs
(`store.jobs`, `store.queue`, ...), and the store as a whole only sets up
indexes, purges retention, pings and closes.
"""

from __future__ import annotations

from genjobs.server.storage.archive import DAY_US, DELETE, ArchiveStore, Retention
from genjobs.server.storage.bulk import BulkStore
from genjobs.server.storage.database import Database
from genjobs.server.storage.events import EventStore
from genjobs.server.storage.jobs import JobStore
from genjobs.server.storage.notifications import NotificationStore
from genjobs.server.storage.queue import QueueStore

# How long one sweep may move jobs to the archive: it runs in the dispatcher's
# housekeeping, and a backlog goes on at the next sweep.
ARCHIVE_SWEEP_SECONDS = 2.0


class Store:
    """Every aggregate store of the jobs database, sharing one connection."""

    def __init__(
        self,
        uri: str,
        db_name: str,
        retention_days: float = 30.0,
        timeout_seconds: float = 5.0,
        page_secret: str = "",
        retention: Retention | None = None,
    ) -> None:
        self._compose(Database(uri, db_name, retention_days, timeout_seconds, page_secret))
        self.retention = retention or Retention(completed_days=retention_days)

    @classmethod
    def over(cls, database: Database) -> Store:
        """The stores over `database` as it is (a test or bench may route its
        collections through a client of its own first)."""
        store = cls.__new__(cls)
        store._compose(database)
        store.retention = Retention(completed_days=database.retention_us / DAY_US)
        return store

    def _compose(self, database: Database) -> None:
        self.database = database
        self.outage = self.database.outage  # what the loops meeting a database outage log
        self.order_keys = self.database.order_keys
        self.queue = QueueStore(self.database)
        self.events = EventStore(self.database)
        self.bulks = BulkStore(self.database, self.queue)
        self.archive = ArchiveStore(self.database)
        self.jobs = JobStore(self.database, self.events, self.bulks, self.archive)
        self.notifications = NotificationStore(self.database)

    def ensure_indexes(self) -> None:
        """Create the index behind every query of every aggregate store."""
        self.database.drop_ttl_indexes()
        self.jobs.ensure_indexes()
        self.archive.ensure_indexes()
        self.events.ensure_indexes()
        self.bulks.ensure_indexes()
        self.notifications.ensure_indexes()

    def purge_expired(self, now_us: int, budget_seconds: float = ARCHIVE_SWEEP_SECONDS) -> int:
        """Retention: delete completed jobs and events past it (mode delete), or
        move finished jobs to the archive and delete what the archive keeps no
        longer (mode archive, for about `budget_seconds`); how many jobs went."""
        if self.retention.mode == DELETE:
            return self.database.purge_expired(now_us)
        moved = self.archive.move_due(self.retention, now_us, budget_seconds)
        self.archive.purge(self.retention, now_us, budget_seconds)
        return moved

    def ping(self) -> None:
        """Raise unless the database answers."""
        self.database.ping()

    def close(self) -> None:
        """Close every connection."""
        self.database.close()

    async def close_async(self) -> None:
        """Close every connection, the event loop's too."""
        await self.database.close_async()
