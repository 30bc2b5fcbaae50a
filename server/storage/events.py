"""The job_events collection: each change of a job, stored for WatchJob's replay.

An event's job snapshot is stored as one BSON value (`stored`), not as a
nested document: nothing queries inside it, it comes back exactly as it went
in, and nx-27017 charges by the nested value (a deep copy and a JSON dump of
each), so a stored event costs it about a quarter less. `loaded` turns it back
(and passes the nested snapshots that older servers stored as they are).
"""

from __future__ import annotations

from collections.abc import Iterable

import bson
import pymongo
from bson import ObjectId
from bson.codec_options import CodecOptions
from pymongo.collection import Collection

from genjobs.server.model import clock
from genjobs.server.storage.database import Database, Doc

CODEC: CodecOptions[Doc] = CodecOptions(tz_aware=True)  # as the database's client reads

# Event types, as stored and as sent on WatchJob.
SNAPSHOT, STATUS_CHANGED, PROGRESS = "SNAPSHOT", "STATUS_CHANGED", "PROGRESS"

# Fields the service keeps for itself; never sent in an event snapshot twice.
_EVENT_EXCLUDE = ("search_text", "request_key", "expire_us")


def delete_events_of(events: Collection[Doc], job_ids: Iterable[str]) -> None:
    """Delete these jobs' events from `events` (live or archived): found by
    `job_id`, an index search each, deleted by `_id`. A delete filtered on
    `job_id` (or `$in` over it) reads every event on nx-27017 (MONGO.md 21)."""
    found = [e["_id"] for job_id in job_ids for e in events.find({"job_id": job_id}, {"_id": 1})]
    if found:
        events.delete_many({"_id": {"$in": found}})


def insert_new(events: Collection[Doc], docs: list[Doc]) -> None:
    """Insert stored events into `events` (live or archived), skipping those
    there already (same `_id`, or job and sequence): an event never changes.
    Never replaced: nx-27017 fails a replace of a document holding binary."""
    if not docs:
        return
    try:
        events.insert_many(docs, ordered=False)
    except pymongo.errors.BulkWriteError as exc:
        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
            raise


def stored(event: Doc) -> Doc:
    """`event` as stored: its job snapshot one BSON value (the event itself unchanged)."""
    return {**event, "job": bson.Binary(bson.encode(event["job"]))}


def loaded(event: Doc) -> Doc:
    """A stored event as delivered: its job snapshot a document again."""
    if isinstance(event.get("job"), bytes):
        event["job"] = bson.decode(event["job"], CODEC)
    return event


class EventStore:
    """Job events: stored once each (job, sequence), read in order, retained with the job."""

    def __init__(self, database: Database) -> None:
        self.events = database.events
        self.retention_us = database.retention_us

    def ensure_indexes(self) -> None:
        """The indexes behind every query on job_events."""
        self.events.create_index([("job_id", 1), ("seq", 1)], unique=True)  # WatchJob replay
        self.events.create_index([("job_id", 1)])  # the same, and DeleteJob, as index searches
        self.events.create_index([("at_us", 1)])  # the remote-event poller
        self.events.create_index([("expire_us", 1)])  # retention sweep

    def event_doc(self, job: Doc, kind: str, origin: str = "") -> Doc:
        """The event recording `job` as it is now, at its current sequence."""
        now_us = clock.now_us()
        snapshot = {k: v for k, v in job.items() if k not in _EVENT_EXCLUDE}
        return {
            "job_id": str(job["_id"]),
            "seq": job["seq"],
            "type": kind,
            "at_us": now_us,
            "job": snapshot,
            "origin": origin,
            # Events are the log that WatchJob resumes from; they expire with
            # the retention period, never before the completed job itself.
            "expire_us": now_us + self.retention_us,
        }

    def insert_events(self, events: list[Doc]) -> None:
        """Store events; one already stored (same job and sequence) is skipped."""
        insert_new(self.events, [stored(e) for e in events])

    def events_after(self, job_id: str, seq: int) -> list[Doc]:
        """The stored events of a job after `seq`, in order."""
        cursor = self.events.find({"job_id": job_id, "seq": {"$gt": seq}}).sort("seq", 1)
        return [loaded(e) for e in cursor]

    def events_since(self, job_ids: Iterable[str], since_us: int) -> list[Doc]:
        """Events of any of `job_ids` stored at or after `since_us` (for the poller)."""
        cursor = self.events.find({"at_us": {"$gte": since_us}, "job_id": {"$in": list(job_ids)}})
        return sorted((loaded(e) for e in cursor), key=lambda e: (e["job_id"], e["seq"]))

    def forget(self, job_id: str) -> None:
        """Delete a deleted job's events."""
        delete_events_of(self.events, [job_id])

    def forget_all(self, ids: list[ObjectId]) -> None:
        """Delete the events of these deleted jobs."""
        delete_events_of(self.events, [str(i) for i in ids])
