"""The archive: finished jobs and their events, moved out of the live collections.

`jobs_archive` and `job_events_archive` hold what `jobs` and `job_events` held,
each job document with `archived_us` set. A job is in exactly one of the two
collections as readers see it, without transactions (nx-27017 does not isolate
them, MONGO.md item 8):

1. copy: the job is upserted into the archive by `_id`, its events inserted
   unless there (idempotent: a copy made twice is one copy);
2. delete: its live events go, then the live job.

A reader looks in `jobs` first, then in `jobs_archive` (`JobStore.document`),
so between 1 and 2 it finds the live job, after 2 the archived one: its read
of the archive comes after its read of `jobs` missed, hence after the copy.
Listings of both de-duplicate by `_id`, live first (`merged_page`). A crash
between 1 and 2 leaves a job in both, which the next batch (it still finds the
job live) copies again and deletes. Every query is an indexed range: the live
jobs due are `{status, ended_us < cutoff}` along (status, ended_us), oldest
first, a batch at a time; the archive's due are `{archived_us < cutoff}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pymongo
from bson import ObjectId

from genjobs.server.model.channels import PENDING_FLAG
from genjobs.server.model.states import Status
from genjobs.server.storage.database import Database, Doc, owned
from genjobs.server.storage.events import delete_events_of, insert_new, loaded

DELETE, ARCHIVE = "delete", "archive"  # GENJOBS_RETENTION_MODE
BATCH = 200  # jobs a batch moves: one find, a few bulk commands
DAY_US = 86400 * 1_000_000


@dataclass(frozen=True)
class Retention:
    """What happens to finished jobs, and when (0 days: never)."""

    mode: str = ARCHIVE
    completed_days: float = 30.0
    failed_days: float = 90.0  # failed and cancelled jobs, archive mode only
    archive_days: float = 0.0  # how long the archive keeps a job; 0: for ever

    def due(self, now_us: int) -> list[tuple[str, int]]:
        """(status, ended before) of the live jobs due for the archive now."""
        failed = now_us - int(self.failed_days * DAY_US)
        return [
            (str(Status.COMPLETED), now_us - int(self.completed_days * DAY_US)),
            (str(Status.FAILED), failed),
            (str(Status.CANCELLED), failed),
        ]

    @property
    def sweep_seconds(self) -> float:
        """How often to sweep: a job outlives its period by at most a quarter of it."""
        days = [self.completed_days]
        if self.mode == ARCHIVE:
            days += [self.failed_days] + ([self.archive_days] if self.archive_days else [])
        return min(60.0, min(days) * 86400 / 4)


class ArchiveStore:
    """Moves finished jobs to the archive, reads them there, deletes them from it."""

    def __init__(self, database: Database) -> None:
        self.live_jobs = database.jobs
        self.live_events = database.events
        self.jobs = database.jobs_archive
        self.events = database.events_archive

    def ensure_indexes(self) -> None:
        """The indexes behind the move (on the live jobs) and every archive query."""
        # The move's batches: a range of one status's end times, oldest first
        # (nx-27017 searches this compound index for {status, ended_us range}).
        self.live_jobs.create_index([("status", 1), ("ended_us", 1)])
        jobs = self.jobs
        jobs.create_index([("ck", 1)], unique=True)  # listings of every owner (admin)
        jobs.create_index([("owner", 1)])  # makes {owner} an index search on nx-27017
        jobs.create_index([("owner", 1), ("ck", 1)])  # ListJobs with the archive
        jobs.create_index([("owner", 1), ("status", 1), ("ck", 1)])
        jobs.create_index([("archived_us", 1)])  # archive retention
        jobs.create_index([("bulk_job_id", 1)])  # a bulk job's items (its counts)
        self.events.create_index([("job_id", 1), ("seq", 1)], unique=True)
        self.events.create_index([("job_id", 1)])

    def move_due(self, retention: Retention, now_us: int, budget_seconds: float) -> int:
        """Move the jobs due for the archive, a batch at a time, until none is
        left or `budget_seconds` have passed (the next sweep goes on); how many moved."""
        deadline = time.monotonic() + budget_seconds
        moved = 0
        for status, before in retention.due(now_us):
            while True:
                batch = self.move_batch(status, before, BATCH)
                moved += batch
                if batch < BATCH or time.monotonic() > deadline:
                    break
            if time.monotonic() > deadline:
                break
        return moved

    def move_batch(self, status: str, ended_before_us: int, limit: int) -> int:
        """Move up to `limit` of the oldest `status` jobs that ended before
        `ended_before_us`: copy (jobs upserted by `_id`, events inserted once),
        then delete from live."""
        cursor = (
            self.live_jobs.find({"status": status, "ended_us": {"$gte": 1, "$lt": ended_before_us}})
            .sort("ended_us", pymongo.ASCENDING)
            .limit(limit)
        )
        found = list(cursor)
        # A notification or a spend not yet stored stays live until its sweeper
        # has stored it (they read the live jobs); seconds, usually.
        docs = [d for d in found if not d.get(PENDING_FLAG) and not d.get("spend_pending")]
        if not docs:
            return 0
        stamp = time.time_ns() // 1000
        self.jobs.bulk_write(
            [pymongo.ReplaceOne({"_id": d["_id"]}, {**d, "archived_us": stamp}, upsert=True) for d in docs],
            ordered=False,
        )
        events = [e for d in docs for e in self.live_events.find({"job_id": str(d["_id"])})]
        if events:
            insert_new(self.events, events)  # a move done again (a crash before its deletes) adds none twice
            # By `_id`: a delete filtered on `job_id` reads every event on
            # nx-27017 (like update_many, MONGO.md item 21), 23 ms a job at 3k events.
            self.live_events.delete_many({"_id": {"$in": [e["_id"] for e in events]}})
        self.live_jobs.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
        return len(docs)

    def purge(self, retention: Retention, now_us: int, budget_seconds: float) -> int:
        """Delete archived jobs (and events) kept longer than the archive keeps them."""
        if not retention.archive_days:
            return 0
        before = now_us - int(retention.archive_days * DAY_US)
        deadline = time.monotonic() + budget_seconds
        gone = 0
        while time.monotonic() <= deadline:
            query = {"archived_us": {"$gte": 1, "$lt": before}}
            ids = [row["_id"] for row in self.jobs.find(query, {"_id": 1}).limit(BATCH)]
            if not ids:
                break
            # Events first: a crash in between leaves the job, which the next batch finds.
            delete_events_of(self.events, [str(i) for i in ids])
            gone += self.jobs.delete_many({"_id": {"$in": ids}}).deleted_count
        return gone

    def document(self, owner: str | None, oid: ObjectId) -> Doc | None:
        """An archived job's document (None: not archived, or another owner's)."""
        return self.jobs.find_one(owned(owner, oid))

    def events_after(self, job_id: str, seq: int) -> list[Doc]:
        """An archived job's events after `seq`, in order (WatchJob's replay)."""
        return [loaded(e) for e in self.events.find({"job_id": job_id, "seq": {"$gt": seq}}).sort("seq", 1)]

    def delete(self, owner: str | None, oid: ObjectId) -> bool:
        """Remove an archived job and its events; whether it was there."""
        if self.jobs.delete_one(owned(owner, oid)).deleted_count == 0:
            return False
        delete_events_of(self.events, [str(oid)])
        return True

    def note_retry(self, oid: ObjectId, retry_id: str) -> None:
        """Record the retry of an archived job (after the live copy's update:
        whichever copy holds the job then is marked)."""
        self.jobs.update_one({"_id": oid}, {"$set": {"retried_by": retry_id}})
