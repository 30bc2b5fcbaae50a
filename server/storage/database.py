"""The MongoDB connection every aggregate store shares, and the rules of its use.

Rules kept by every storage module (see shared/MONGO.md):
- every state change is one conditional update on `_id` (nx-27017 only uses an
  index for find_one_and_update when it filters on `_id`), built from the
  state machine table in `states`;
- orderings and time ranges use the integer `ck` (creation microseconds,
  unique), never dates: both servers compare integers the same way, fast;
- references (owner, bulk_job_id, retry_of) are strings;
- costs stay flat as history grows: every hot query reads what is queued or
  what its caller named, through an index. On nx-27017 an equality uses an
  index only when a single-field index on that field exists (MONGO.md item
  15), and `$in` on any field but `_id` always scans: hot queries use
  equalities (one query per value where several are needed).
"""

from __future__ import annotations

from typing import Any

import pymongo
from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import Collection

from genjobs.server.model import clock
from genjobs.server.model.errors import ServiceError
from genjobs.server.storage.outage import Outage
from genjobs.server.storage.pagetoken import PageTokens

Doc = dict[str, Any]


class LoopClient:
    """pymongo's async client for commands sent from the event loop, opened on
    first use (on the loop that uses it): a command sent from the loop has no
    hop to a thread and back, about half a millisecond on a busy process."""

    def __init__(self, uri: str, db_name: str, **options: Any) -> None:
        self._open = lambda: pymongo.AsyncMongoClient(uri, **options)[db_name]
        self._database: AsyncDatabase[Doc] | None = None

    def collection(self, name: str) -> AsyncCollection[Doc]:
        """The collection `name`, through the loop's client."""
        if self._database is None:
            self._database = self._open()
        return self._database[name]

    async def close(self) -> None:
        """Close the async client's connections."""
        if self._database is not None:
            await self._database.client.close()


class Database:
    """The client, the collections, the order keys and page tokens the stores share."""

    def __init__(
        self,
        uri: str,
        db_name: str,
        retention_days: float = 30.0,
        timeout_seconds: float = 5.0,
        page_secret: str = "",
    ) -> None:
        # Short timeouts: a down database must turn into UNAVAILABLE quickly,
        # and pymongo reconnects by itself when it is back. `timeoutMS` bounds
        # every operation as a whole (a frozen database too), unless a
        # `pymongo.timeout()` block (an RPC's deadline) sets another bound.
        self.options: dict[str, Any] = {
            "serverSelectionTimeoutMS": 2000,
            "connectTimeoutMS": 2000,
            "timeoutMS": int(timeout_seconds * 1000),
            "tz_aware": True,
        }
        self.uri, self.db_name = uri, db_name
        self.timeout_seconds = timeout_seconds  # what a write that outlives its call is bounded by
        self.client: pymongo.MongoClient[Doc] = pymongo.MongoClient(uri, maxPoolSize=64, **self.options)
        self.db = self.client[db_name]
        self.loop_client = LoopClient(uri, db_name, **self.options)  # the event loop's commands
        self.jobs: Collection[Doc] = self.db["jobs"]
        self.events: Collection[Doc] = self.db["job_events"]
        self.leases: Collection[Doc] = self.db["leases"]
        self.bulk_jobs: Collection[Doc] = self.db["bulk_jobs"]
        self.notifications: Collection[Doc] = self.db["notifications"]
        self.turns: Collection[Doc] = self.db["turns"]  # owner -> last start (fair share)
        self.jobs_archive: Collection[Doc] = self.db["jobs_archive"]  # finished jobs (archive.py)
        self.events_archive: Collection[Doc] = self.db["job_events_archive"]
        self.retention_us = int(retention_days * 86400 * 1_000_000)
        self.order_keys = clock.OrderKeys()
        # Signs page tokens; replicas sharing the auth secret accept each other's.
        self.page_tokens = PageTokens(page_secret)
        self.outage = Outage()  # what the loops meeting a database outage log

    def drop_ttl_indexes(self) -> None:
        """Remove TTL indexes left by earlier versions.

        nx-27017 purges a collection with a TTL index on every command, by a
        scan of the whole collection (about 2 µs a document): retention is a
        periodic indexed delete instead (`purge_expired`).
        """
        for collection in (self.jobs, self.events):
            for index in collection.list_indexes():
                if "expireAfterSeconds" in index:
                    collection.drop_index(index["name"])

    def purge_expired(self, now_us: int) -> int:
        """Delete completed jobs and events past their retention; how many jobs went."""
        expired = {"expire_us": {"$gte": 1, "$lt": now_us}}
        gone = self.jobs.delete_many(expired).deleted_count
        self.events.delete_many(expired)
        return gone

    def ping(self) -> None:
        """Raise unless the database answers."""
        self.client.admin.command("ping")

    def close(self) -> None:
        """Close every connection but the event loop's (`close_async`)."""
        self.client.close()

    async def close_async(self) -> None:
        """Close every connection, the event loop's too."""
        await self.loop_client.close()
        self.close()


def count(collection: Collection[Doc], query: Doc, cap: int = 0) -> int:
    """How many documents match, counted by the server in one aggregation;
    at most `cap` when given (a count reads every document it counts)."""
    limit = [{"$limit": cap}] if cap else []
    rows = list(collection.aggregate([{"$match": query}, *limit, {"$count": "n"}]))
    return int(rows[0]["n"]) if rows else 0


def one_of(values: list[str]) -> str | Doc:
    """The condition "equal to one of `values`": a plain equality when there is one.

    nx-27017 spends about 0.4 ms more on a `$in` than on an equality, and the
    dispatcher's claim and fenced writes each have one status to match.
    """
    return values[0] if len(values) == 1 else {"$in": values}


def owned(owner: str | None, oid: ObjectId) -> Doc:
    """A filter on `_id` that also requires the owner (None: any owner, for admins)."""
    return {"_id": oid} if owner is None else {"_id": oid, "owner": owner}


def raise_error(error: ServiceError) -> Doc:
    """Raise `error` (an expression, for a refusal in a return)."""
    raise error
