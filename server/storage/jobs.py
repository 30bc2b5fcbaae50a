"""The jobs collection: job documents, their insert, reads, listings, owner
actions (cancel, retry, delete) and statistics.

The queue lanes of a job and the writes of a run are `queue`'s; a job's
events are `events`'; the bulk job a job belongs to is `bulk`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

import pymongo
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock
from genjobs.server.model.channels import PENDING_FLAG
from genjobs.server.model.errors import ServiceError, not_found, wrong_status
from genjobs.server.model.records import Job, Submission
from genjobs.server.model.states import FINAL, REFUSAL_HINT, REFUSAL_REASON, Action, Status, allowed, final
from genjobs.server.storage import records
from genjobs.server.storage.archive import ArchiveStore
from genjobs.server.storage.bulk import BulkStore
from genjobs.server.storage.database import Database, Doc, count, one_of, owned
from genjobs.server.storage.events import EventStore
from genjobs.server.storage.inserts import LoopInsert
from genjobs.server.storage.paging import (
    JobFilter,
    keyset_page,
    merged_page,
    parse_id,
    request_key,
    submission_key,
)
from genjobs.server.storage.places import (
    PLACE,
    PlaceTaken,
    duplicate_index,
    is_place_taken,
    place_number,
    state_update,
)
from genjobs.server.storage.queue import NONE, READY, SCHEDULED


@dataclass
class JobPage:
    """One page of a job listing."""

    jobs: list[Job]
    next_token: str
    total: int


class JobStore:
    """Job documents: every query and update on them but the queue's."""

    def __init__(
        self, database: Database, events: EventStore, bulks: BulkStore, archive: ArchiveStore
    ) -> None:
        self.jobs = database.jobs
        self.archive = archive  # finished jobs moved out of `jobs`: read after it
        self.order_keys = database.order_keys
        self.page_tokens = database.page_tokens
        self.retention_us = database.retention_us
        self.job_inserts = LoopInsert(database.loop_client, "jobs")
        self.events = events
        self.bulks = bulks

    def ensure_indexes(self) -> None:
        """Create the index behind every query on jobs (the queue's too).

        Every hot query must read what is queued or what its caller named,
        never the history (costs stay flat as history grows). nx-27017 uses an
        index for an equality only when an index on that field alone exists
        (MONGO.md item 15): so each field filtered by equality gets a
        single-field index, and the compound index beside it serves the sort
        (SQLite picks (queue, ck) for `{queue} sorted by ck`, (owner, ck) for
        `{owner} sorted by ck`). On MongoDB the single-field ones are only a
        little redundant (each is a prefix of a compound one).
        """
        jobs = self.jobs
        jobs.create_index([("ck", 1)], unique=True)  # order key; admin listing
        jobs.create_index([("owner", 1)])  # makes {owner} an index search on nx-27017
        jobs.create_index([("owner", 1), ("ck", 1)])  # ListJobs, bulk operations
        jobs.create_index([("owner", 1), ("status", 1), ("ck", 1)])  # ListJobs by status
        jobs.create_index([("request_key", 1)], unique=True)  # idempotent submit and retry
        jobs.create_index([(PLACE, 1)], unique=True, sparse=True)  # the queued-jobs cap (storage/places.py)
        jobs.create_index([("queue", 1)])  # the queue lanes: makes {queue} an index search
        jobs.create_index([("queue", 1), ("ck", 1)])  # dispatcher candidates, oldest first
        jobs.create_index([("status", 1)])  # expired-lease recovery
        jobs.create_index([("bulk_job_id", 1)])  # a bulk job's items
        jobs.create_index([("bulk_job_id", 1), ("queue_position", 1)])
        jobs.create_index([("expire_us", 1)])  # retention sweep; set on COMPLETED only
        # Fair share: an owner's ready jobs in (rank, ck) order, and the jobs
        # that entered the ready lane lately (see `fairshare`).
        jobs.create_index([("queue", 1), ("owner", 1), ("rank", 1), ("ck", 1)])
        jobs.create_index([("ready_us", 1)])
        jobs.create_index([("queue", 1), ("run_after_us", 1)])  # due jobs of a waiting lane
        jobs.create_index([(PENDING_FLAG, 1)])  # job notifications a crash left unstored
        jobs.create_index([("schedule_id", 1)])  # ListJobs of a schedule's runs
        jobs.create_index([("result.metadata.model", 1)])  # an estimate's recent jobs of a model
        jobs.create_index([("updated_us", 1)])  # what changed lately: owners' streams on other replicas

    def repeated(self, doc: Doc) -> Doc | None:
        """The stored job with `doc`'s request key, if any (a repeat)."""
        return self.jobs.find_one({"request_key": doc["request_key"]})

    def count(self, query: Doc, cap: int = 0) -> int:
        """How many jobs match `query` (at most `cap` when given)."""
        return count(self.jobs, query, cap)

    def new_job(self, submission: Submission, *, ck: int = 0, lane: str = READY) -> Doc:
        """A QUEUED job document of `submission`, not yet stored; with a
        schedule_us still to come, in the scheduled lane until then."""
        job_id = ObjectId()
        ck = ck or self.order_keys.next()
        if lane == READY and submission.schedule_us > clock.now_us():
            lane = SCHEDULED
        key = submission.request_key or submission_key(submission.owner, submission.request_id, job_id, "job")
        return records.job_doc(submission, job_id, ck, lane, key)

    async def submit_job(self, doc: Doc) -> tuple[Doc, bool]:
        """`insert_job` from the event loop, sharing round trips with concurrent
        submits: one command between them unless a key was used before.
        PlaceTaken when another job took its place meanwhile."""
        try:
            await self.job_inserts.insert(doc)
            return doc, True
        except DuplicateKeyError as exc:
            earlier = await asyncio.to_thread(self._earlier_or_next_key, doc, exc)
            if earlier is not None:
                return earlier, False
            return await asyncio.to_thread(self.insert_job, doc)

    def insert_job(self, doc: Doc) -> tuple[Doc, bool]:
        """Store a new job: (the job, True), or (the earlier job, False) when its
        request key was used before. One command unless it was a repeat.
        PlaceTaken when another job took its place meanwhile."""
        for _ in range(5):
            try:
                self.jobs.insert_one(doc)
                return doc, True
            except DuplicateKeyError as exc:
                earlier = self._earlier_or_next_key(doc, exc)
                if earlier is not None:
                    return earlier, False
        raise RuntimeError("could not store the job after 5 tries")

    def _earlier_or_next_key(self, doc: Doc, exc: DuplicateKeyError) -> Doc | None:
        """After `doc` hit a unique key: the earlier job with its request key,
        PlaceTaken for its place, or None with `doc` given the next order key
        (another replica took its key)."""
        if "request_key" in duplicate_index(exc):
            earlier = self.jobs.find_one({"request_key": doc["request_key"]})
            if earlier is not None:
                return earlier
        if is_place_taken(exc):
            raise PlaceTaken([doc])
        doc["ck"] = doc["updated_us"] = self.order_keys.next()
        return None

    def open_places(self, owner: str) -> dict[ObjectId, int | None]:
        """`owner`'s queued and running jobs -> the number of the place each
        holds (None: a job stored before places), through the (owner, status,
        ck) index."""
        return {
            row["_id"]: place_number(row.get(PLACE))
            for status in (Status.QUEUED, Status.PROCESSING)  # one equality each: `$in` would scan
            for row in self.jobs.find({"owner": owner, "status": str(status)}, {PLACE: 1})
        }

    def free_ended(self, places: list[str]) -> int:
        """Give back those of these places that a final job holds (ended by a
        write that did not give it back: a server of an older version); how
        many. A search of the place index each, then a conditional update on
        the job's final status."""
        freed = 0
        for place in places:
            holder = self.jobs.find_one({PLACE: place}, {"status": 1})
            if holder is not None and final(holder["status"]):
                freed += self.jobs.update_one(
                    {"_id": holder["_id"], "status": holder["status"], PLACE: place}, {"$unset": {PLACE: ""}}
                ).modified_count
        return freed

    def get(self, owner: str | None, job_id: str) -> Job:
        """One job; another user's is NOT_FOUND (owner None: an admin sees all)."""
        return records.job(self.document(owner, job_id))

    def document(self, owner: str | None, job_id: str) -> Doc:
        """One job's stored document, as `get` finds it: what job events carry
        (watchers and the event log read documents)."""
        oid = parse_id(job_id)
        # Live first, then the archive: a job moves by copy, then delete (storage/archive.py).
        found = self.jobs.find_one(owned(owner, oid)) or self.archive.document(owner, oid)
        if found is None:
            raise not_found("job", job_id)
        return found

    def list_jobs(self, owner: str | None, filters: JobFilter, size: int, token: str) -> JobPage:
        """A page of jobs, newest first, by keyset on `ck`.

        First page: a find and a $count aggregation (nx-27017's count_documents
        reads every document; its $count runs in SQL), capped at
        TOTAL_SIZE_CAP. Later pages: one find, the total carried in the token
        from the first page. With the owner's single-field index, `{owner}`
        sorted by ck reads the (owner, ck) index from the page's edge: the
        page's documents, not the owner's history.
        """
        query = self.job_query(owner, filters)
        mark = filters.fingerprint(owner)
        if filters.archived_only:
            page = keyset_page(self.archive.jobs, query, mark, size, token, self.page_tokens)
        elif filters.show_archived:
            page = merged_page(self.jobs, self.archive.jobs, query, mark, size, token, self.page_tokens)
        else:
            page = keyset_page(self.jobs, query, mark, size, token, self.page_tokens)
        return JobPage([records.job(doc) for doc in page.docs], page.next_token, page.total)

    def job_query(self, owner: str | None, filters: JobFilter) -> Doc:
        """The MongoDB filter for `filters`, restricted to the owner's jobs."""
        query: Doc = {} if owner is None else {"owner": owner}
        if filters.statuses:
            query["status"] = one_of(filters.statuses)
        if filters.modes:
            query["mode"] = one_of(filters.modes)
        created: Doc = {}
        if filters.created_after_us is not None:
            created["$gte"] = filters.created_after_us
        if filters.created_before_us is not None:
            created["$lt"] = filters.created_before_us
        if created:
            query["ck"] = created
        if filters.query:
            query["search_text"] = {"$regex": re.escape(filters.query.lower()), "$options": "i"}
        if filters.bulk_job_id:
            query["bulk_job_id"] = filters.bulk_job_id
        if filters.project:
            query["project"] = filters.project
        if filters.schedule_id:
            query["schedule_id"] = filters.schedule_id
        if filters.priorities:  # read along the owner's (owner, ck) index, like modes
            query["priority"] = one_of(filters.priorities)
        return query

    def cancel(self, owner: str | None, job_id: str) -> tuple[Doc, bool]:
        """Cancel a job: (the job after, True when it was processing and the
        dispatcher must stop it). One command for a queued job."""
        oid = parse_id(job_id)
        done = self._transition(owner, oid, Action.CANCEL_QUEUED, _cancelled())
        if done is not None:
            return done, False
        running = self._transition(
            owner, oid, Action.CANCEL_RUNNING, {"cancel_requested": True, "updated_us": clock.now_us()}
        )
        if running is not None:
            return running, True
        raise self.refusal(owner, job_id, Action.CANCEL_QUEUED)

    def retry_submission(
        self, owner: str | None, job_id: str, request_id: str, default_attempts: int
    ) -> Submission:
        """What retrying a failed or cancelled job submits (`Job.retry_submission`
        says what it keeps), with a request key that makes a repeated or
        concurrent retry return the first (`store_retry`)."""
        retryable = {**owned(owner, parse_id(job_id)), "status": one_of(allowed(Action.RETRY))}
        original = self.jobs.find_one(retryable) or self.archive.jobs.find_one(retryable)
        if original is None:
            raise self.refusal(owner, job_id, Action.RETRY)
        kept = records.job(original).retry_submission(request_id, default_attempts)
        # One retry per (job, request_id), whoever asks and however often: the
        # unique request key makes a repeated or concurrent retry return the
        # first. Without a request_id, one retry per job.
        key = request_key(kept.owner, "retry-of", job_id, *([request_id] if request_id else []))
        return dataclasses.replace(kept, request_key=key)

    def new_retry(self, submission: Submission) -> Doc:
        """The new QUEUED job document of a retry (`retry_submission`), in the
        lane of its bulk job (held while that is paused)."""
        return self.new_job(submission, lane=self.bulks.bulk_lane(submission.bulk_job_id))

    def store_retry(self, doc: Doc) -> Doc:
        """Store a retry made by `new_retry`; the earlier one for a repeat."""
        stored, created = self.insert_job(doc)
        if created:  # the newest retry; a repeated request changes nothing
            original = parse_id(doc["retry_of"])
            self.jobs.update_one({"_id": original}, {"$set": {"retried_by": str(stored["_id"])}})
            self.archive.note_retry(original, str(stored["_id"]))
        return stored

    def delete(self, owner: str | None, job_id: str) -> None:
        """Remove a job in a final status, and its events."""
        oid = parse_id(job_id)
        result = self.jobs.delete_one({**owned(owner, oid), "status": one_of(allowed(Action.DELETE))})
        # The archive too, after live: a copy made before the live delete goes as well.
        archived = self.archive.delete(owner, oid)
        if result.deleted_count == 0 and not archived:
            raise self.refusal(owner, job_id, Action.DELETE)
        self.events.forget(job_id)

    def refusal(self, owner: str | None, job_id: str, action: Action) -> ServiceError:
        """Why `action` did not happen: NOT_FOUND, or the status that forbids it."""
        oid = parse_id(job_id)
        found = self.jobs.find_one(owned(owner, oid), {"status": 1}) or self.archive.document(owner, oid)
        if found is None:
            return not_found("job", job_id)
        return wrong_status(REFUSAL_REASON[action], "job", job_id, found["status"], REFUSAL_HINT[action])

    def _transition(self, owner: str | None, oid: ObjectId, action: Action, changes: Doc) -> Doc | None:
        """Apply `changes` if the job's status allows `action`; bump its sequence
        (a final status gives its place back)."""
        return self.jobs.find_one_and_update(
            {**owned(owner, oid), "status": one_of(allowed(action))},
            state_update(changes),
            return_document=ReturnDocument.AFTER,
        )

    def matching_ids(self, query: Doc, limit: int) -> list[ObjectId]:
        """The oldest `limit` job ids matching `query`."""
        cursor = self.jobs.find(query, {"_id": 1}).sort("ck", pymongo.ASCENDING).limit(limit)
        return [row["_id"] for row in cursor]

    def cancel_queued(self, oid: ObjectId) -> Doc | None:
        """Cancel one job if it is still queued (bulk operations, bulk cancel)."""
        return self._transition(None, oid, Action.CANCEL_QUEUED, _cancelled())

    def delete_completed(self, ids: list[ObjectId]) -> int:
        """Delete those of `ids` that are COMPLETED, with their events."""
        result = self.jobs.delete_many({"_id": {"$in": ids}, "status": str(Status.COMPLETED)})
        if ids:
            self.events.forget_all(ids)
        return result.deleted_count

    def stats(self, owner: str | None, filters: JobFilter) -> tuple[list[Doc], list[Doc]]:
        """(rows by status with count, cost and duration sums; rows by mode with count).

        Two single-key groupings: nx-27017 does not group by a compound key.
        """
        match = {"$match": self.job_query(owner, filters)}
        by_status: dict[str, Doc] = {}
        by_mode: dict[str, Doc] = {}
        # The archive counts too: archiving a job moves it, it does not undo it.
        for collection in (self.jobs, self.archive.jobs):
            status_rows = collection.aggregate(
                [
                    match,
                    {
                        "$group": {
                            "_id": "$status",
                            "n": {"$sum": 1},
                            "cost": {"$sum": "$cost_cents"},
                            "seconds": {"$sum": "$duration_s"},
                        }
                    },
                ]
            )
            _add_rows(by_status, status_rows)
            _add_rows(by_mode, collection.aggregate([match, {"$group": {"_id": "$mode", "n": {"$sum": 1}}}]))
        return list(by_status.values()), list(by_mode.values())

    def count_with_archive(self, query: Doc) -> int:
        """How many jobs match `query`, live or archived (statistics)."""
        return count(self.jobs, query) + count(self.archive.jobs, query)

    def recent_durations(self, model: str, limit: int) -> list[float]:
        """How long the newest `limit` completed jobs of `model` ran, in seconds:
        an index search on the model (only a completed job has a result; a
        status condition beside it makes nx-27017 pick the status index, MONGO.md
        item 18), sorted among that model's jobs, which expire with retention."""
        query = {"result.metadata.model": model}
        cursor = self.jobs.find(query, {"duration_s": 1}).sort("ck", pymongo.DESCENDING).limit(limit)
        return [float(doc["duration_s"]) for doc in cursor if doc.get("duration_s") is not None]

    def stored_ids(self, oids: list[ObjectId]) -> set[ObjectId]:
        """Which of these job ids are stored (one search of `_id`)."""
        return {row["_id"] for row in self.jobs.find({"_id": {"$in": oids}}, {"_id": 1})}

    def changed_since(self, since_us: int, also: Iterable[str] = ()) -> list[Doc]:
        """{_id, owner, seq, updated_us} of every live job changed at or after
        `since_us` (an index search of what changed, not the history), and of
        the jobs `also` names (by `_id`)."""
        fields = {"owner": 1, "seq": 1, "updated_us": 1}
        rows = {row["_id"]: row for row in self.jobs.find({"updated_us": {"$gte": since_us}}, fields)}
        named = [ObjectId(i) for i in also if ObjectId.is_valid(i)]
        if named:
            rows.update((row["_id"], row) for row in self.jobs.find({"_id": {"$in": named}}, fields))
        return list(rows.values())

    def jobs_by_ids(self, ids: list[str]) -> list[Doc]:
        """The current documents of these jobs (the remote-event poller)."""
        oids = [ObjectId(i) for i in ids if ObjectId.is_valid(i)]
        return list(self.jobs.find({"_id": {"$in": oids}}))

    def unnotified_jobs(self, ended_before_us: int) -> list[Job]:
        """Jobs that ended before `ended_before_us` with their notification not
        yet stored (the server that ended them stopped in between)."""
        return list(
            map(
                records.job,
                self.jobs.find(
                    {
                        PENDING_FLAG: True,
                        "status": {"$in": [str(s) for s in FINAL]},
                        "ended_us": {"$lt": ended_before_us},
                    }
                ),
            )
        )

    def notification_stored(self, job: Job) -> None:
        """The job's notification is in `notifications` now."""
        self.jobs.update_one({"_id": ObjectId(job.id), PENDING_FLAG: True}, {"$set": {PENDING_FLAG: False}})


def _add_rows(into: dict[str, Doc], rows: Iterable[Doc]) -> None:
    """Sum grouped rows into `into` by their `_id`, field by field."""
    for row in rows:
        kept = into.setdefault(row["_id"], {"_id": row["_id"]})
        for key, value in row.items():
            if key != "_id":
                kept[key] = (kept.get(key) or 0) + (value or 0)


def _cancelled() -> Doc:
    now_us = clock.now_us()
    return {
        "status": str(Status.CANCELLED),
        "queue": NONE,
        "ended_us": now_us,
        "updated_us": now_us,
        "error": job_error("CANCELLED", "cancelled", "cancelled by its owner", False, 0),
    }


def job_error(code: str, category: str, message: str, retryable: bool, attempt: int) -> Doc:
    """A job error as stored (code, category, message, retryable, attempt)."""
    return {
        "code": code,
        "category": category,
        "message": message,
        "retryable": retryable,
        "attempt": attempt,
    }
