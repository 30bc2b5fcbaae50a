"""The bulk_jobs collection, and the lanes of a bulk job's items (held while it is paused)."""

from __future__ import annotations

import hashlib
import json

import pymongo
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock
from genjobs.server.model.channels import PENDING_FLAG
from genjobs.server.model.errors import not_found, wrong_status
from genjobs.server.model.states import BULK_REFUSAL_REASON, BulkAction, BulkStatus, Status, bulk_allowed
from genjobs.server.storage.database import Database, Doc, one_of, owned, raise_error
from genjobs.server.storage.paging import Page, bulk_item_key, keyset_page, parse_id
from genjobs.server.storage.places import PlaceTaken, is_place_taken, state_update
from genjobs.server.storage.queue import HELD, READY, SCHEDULED, QueueStore

# What versions before issue 28 called PENDING_FLAG on bulk jobs (renamed at start).
LEGACY_FLAG = "notification_pending"


class BulkStore:
    """Bulk jobs, their items' lanes, and the recovery of their notifications."""

    def __init__(self, database: Database, queue: QueueStore) -> None:
        self.jobs = database.jobs
        self.archived_jobs = database.jobs_archive  # items past retention (storage/archive.py)
        self.bulk_jobs = database.bulk_jobs
        self.page_tokens = database.page_tokens
        self.queue = queue

    def ensure_indexes(self) -> None:
        """The indexes behind every query on bulk_jobs (and an older version's flag renamed)."""
        self.bulk_jobs.create_index([("owner", 1)])
        self.bulk_jobs.create_index([("owner", 1), ("ck", 1)])
        self.bulk_jobs.create_index([("ck", 1)], unique=True)
        self.bulk_jobs.create_index([("request_key", 1)], unique=True)
        self.bulk_jobs.create_index([("settled", 1)])  # bulk recovery after a crash
        self.bulk_jobs.create_index([(PENDING_FLAG, 1)])  # notifications a crash left unstored
        self.bulk_jobs.create_index([(LEGACY_FLAG, 1)])
        # What an older version left flagged under the old name (rare: a crash
        # between completing a bulk job and storing its notification) is
        # renamed once at start, so that the sweep's query stays one index.
        self.bulk_jobs.update_many(
            {LEGACY_FLAG: True}, {"$set": {PENDING_FLAG: True}, "$unset": {LEGACY_FLAG: ""}}
        )

    def repeated(self, doc: Doc) -> Doc | None:
        """The stored bulk job with `doc`'s request key, if any (a repeat)."""
        return self.bulk_jobs.find_one({"request_key": doc["request_key"]})

    def waiting_lane(self, job: Doc, lane: str) -> str:
        """`lane` for a job going back to the queue, or held while its bulk job is
        paused (a paused bulk job starts nothing: a lane that ends in ready would)."""
        return HELD if self.bulk_lane(job.get("bulk_job_id", "")) == HELD else lane

    def requeue_changes(self, job: Doc, lane: str = READY) -> Doc:
        """The fields that put a claimed job back in the queue with its attempt given
        back (the run was not the job's fault): in `lane`, or held (`waiting_lane`)."""
        now_us = clock.now_us()
        changes: Doc = {
            "status": str(Status.QUEUED),
            "queue": self.waiting_lane(job, lane),
            "attempt": job["attempt"] - 1,
            "worker": "",
            "lease_until_us": 0,
            "updated_us": now_us,
        }
        if changes["queue"] == READY:
            changes["ready_us"] = now_us  # found by the dispatcher's next read of the lane
        return changes

    def bulk_lane(self, bulk_job_id: str) -> str:
        """The lane a new item of this bulk job starts in: held while it is paused."""
        if not bulk_job_id:
            return READY
        bulk = self.bulk_jobs.find_one({"_id": ObjectId(bulk_job_id)}, {"status": 1})
        return HELD if bulk is not None and bulk["status"] == str(BulkStatus.PAUSED) else READY

    def insert_bulk(self, bulk: Doc, items: list[Doc]) -> tuple[Doc, bool]:
        """Store a bulk job, before its items (`insert_items`): (the bulk job,
        whether it is new). A repeated request key returns the earlier bulk
        job, and `items` are given its keys, so that storing them completes
        what a crash may have cut short in the first call."""
        try:
            self.bulk_jobs.insert_one(bulk)
            created = True
        except DuplicateKeyError:
            earlier = self.bulk_jobs.find_one({"request_key": bulk["request_key"]})
            if earlier is None:
                raise
            bulk, created = earlier, False
            for item in items:
                item["bulk_job_id"] = str(bulk["_id"])
                item["request_key"] = bulk_item_key(bulk["owner"], bulk["_id"], item["queue_position"])
        return bulk, created

    def insert_items(self, items: list[Doc]) -> None:
        """Store bulk items (one command); PlaceTaken with those another job
        took the place of meanwhile (the others are stored). Items stored
        before (a repeated request) are skipped by their unique key."""
        try:
            self.jobs.insert_many(items, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            taken = [items[e["index"]] for e in errors if is_place_taken(e)]
            if taken:
                raise PlaceTaken(taken) from None

    def withdraw(self, bulk_oid: ObjectId, item_ids: list[ObjectId]) -> bool:
        """Remove a bulk job just created and refused after all (the cap had no
        room for the rest of its items): its items not claimed yet, then the
        bulk job itself if none of them was. Whether it is gone."""
        self.jobs.delete_many({"_id": {"$in": item_ids}, "epoch": 0})
        if self.jobs.find_one({"bulk_job_id": str(bulk_oid)}, {"_id": 1}):
            return False
        self.bulk_jobs.delete_one({"_id": bulk_oid})
        return True

    def get_bulk(self, owner: str | None, bulk_id: str) -> Doc:
        """One bulk job; another user's is NOT_FOUND."""
        found = self.bulk_jobs.find_one(owned(owner, parse_id(bulk_id, "bulk job")))
        if found is None:
            raise not_found("bulk job", bulk_id)
        return found

    def bulk_items(self, bulk_ids: list[str], owner: str | None = None) -> list[Doc]:
        """Every job of these bulk jobs (retries included), without their content;
        only `owner`'s when given.

        One query per bulk job and side (live, archived): nx-27017 answers an
        equality on `bulk_job_id` from its index, but `$in` on any field but
        `_id` by a scan of every job. An item met on both sides (a move between
        its copy and its delete) counts once.
        """
        projection = {
            "status": 1,
            "queue_position": 1,
            "ck": 1,
            "error": 1,
            "duration_s": 1,
            "cost_cents": 1,  # a bulk job's cost, in its notification
            "bulk_job_id": 1,
            "ended_us": 1,
            "started_us": 1,
        }
        items: dict[object, Doc] = {}
        for bulk_id in bulk_ids:
            query: Doc = {"bulk_job_id": bulk_id}
            if owner is not None:
                query["owner"] = owner
            for collection in (self.archived_jobs, self.jobs):  # live last: live wins
                items.update((doc["_id"], doc) for doc in collection.find(query, projection))
        return list(items.values())

    def bulk_transition(self, owner: str | None, bulk_id: str, action: BulkAction, changes: Doc) -> Doc:
        """Apply `changes` if the bulk job's status allows `action`, else explain why not."""
        after = self._bulk_transition(owner, bulk_id, action, changes)
        return after if after is not None else self._bulk_refusal(owner, bulk_id, action)

    def resume_bulk(self, owner: str | None, bulk_id: str) -> Doc:
        """Resume a paused bulk job: PROCESSING if an item has started, else QUEUED.
        One conditional update for each case; a paused bulk job starts no item,
        so which case holds cannot change between them."""
        for started, status in (({"$gt": 0}, BulkStatus.PROCESSING), (0, BulkStatus.QUEUED)):
            changes = {"status": str(status)}
            after = self._bulk_transition(owner, bulk_id, BulkAction.RESUME, changes, {"started_us": started})
            if after is not None:
                return after
        return self._bulk_refusal(owner, bulk_id, BulkAction.RESUME)

    def _bulk_transition(
        self, owner: str | None, bulk_id: str, action: BulkAction, changes: Doc, when: Doc | None = None
    ) -> Doc | None:
        """Apply `changes` if the bulk job's status allows `action` and it matches `when`."""
        oid = parse_id(bulk_id, "bulk job")
        return self.bulk_jobs.find_one_and_update(
            {**owned(owner, oid), "status": one_of(bulk_allowed(action)), **(when or {})},
            {"$set": changes, "$inc": {"seq": 1}},
            return_document=ReturnDocument.AFTER,
        )

    def _bulk_refusal(self, owner: str | None, bulk_id: str, action: BulkAction) -> Doc:
        """Raise why `action` does not apply to the bulk job as it is now (NOT_FOUND if it is not there)."""
        current = self.get_bulk(owner, bulk_id)
        return raise_error(
            wrong_status(
                BULK_REFUSAL_REASON[action],
                "bulk job",
                bulk_id,
                current["status"],
                f"cannot {action} a {current['status'].lower()} bulk job",
            )
        )

    def set_item_lanes(self, bulk_id: str, lanes: list[str], lane: str) -> int:
        """Move a bulk job's still-queued items from any of `lanes` to `lane`.

        Each move is conditional on any of `lanes`, not on the lane read: an
        item promoted from backoff to ready between the read and the move
        (housekeeping on another thread or server) is moved all the same."""
        rows = self.jobs.find({"bulk_job_id": bulk_id, "status": str(Status.QUEUED)}, {"queue": 1})
        return self.queue.move_queued([(row["_id"], lanes, lane) for row in rows if row["queue"] in lanes])

    def hold_if_paused(self, job: Doc) -> Doc | None:
        """After `job` (as just written) went back to a lane that can end in a
        run: held instead, if its bulk job is paused; the job after, else None.

        The pause writes its status before it moves its items, and this reads
        the status after the job's own write: so either the pause's move finds
        the job in its new lane, or this sees the pause (never neither)."""
        bulk_id = job.get("bulk_job_id", "")
        if not bulk_id or job.get("status") != str(Status.QUEUED) or job.get("queue") == HELD:
            return None
        if self.bulk_lane(bulk_id) != HELD:
            return None
        return self.jobs.find_one_and_update(
            {"_id": job["_id"], "status": str(Status.QUEUED), "queue": job["queue"]},
            state_update({"queue": HELD}),
            return_document=ReturnDocument.AFTER,
        )

    def resume_items(self, bulk_id: str) -> None:
        """Release a resumed bulk job's held items: those whose time (a
        schedule_time, a retry backoff) is still to come wait for it in the
        scheduled lane, the rest are ready."""
        now_us = clock.now_us()
        query = {"bulk_job_id": bulk_id, "status": str(Status.QUEUED), "queue": HELD}
        rows = self.jobs.find(query, {"run_after_us": 1})
        self.queue.move_queued(
            [(row["_id"], HELD, SCHEDULED if row.get("run_after_us", 0) > now_us else READY) for row in rows]
        )

    def bump_bulk(self, bulk_oid: ObjectId) -> Doc | None:
        """Count one more change of a bulk job (its watchers' sequence)."""
        return self.bulk_jobs.find_one_and_update(
            {"_id": bulk_oid},
            {"$inc": {"seq": 1}, "$set": {"updated_us": clock.now_us()}},
            return_document=ReturnDocument.AFTER,
        )

    def bulk_status_change(self, bulk_oid: ObjectId, from_statuses: list[str], changes: Doc) -> Doc | None:
        """Conditionally move an unsettled bulk job between statuses (item
        accounting); the bulk job after the change, None when it did not apply."""
        return self.bulk_jobs.find_one_and_update(
            {"_id": bulk_oid, "status": one_of(from_statuses), "settled": False},
            {"$set": {**changes, "updated_us": clock.now_us()}, "$inc": {"seq": 1}},
            return_document=ReturnDocument.AFTER,
        )

    def reopen_bulk(self, bulk_oid: ObjectId) -> None:
        """A completed bulk job got a new item (a retry): it runs again
        (`reopened`: its notification was sent, and tells its last outcome)."""
        self.bulk_jobs.update_one(
            {"_id": bulk_oid, "status": str(BulkStatus.COMPLETED)},
            {
                "$set": {
                    "status": str(BulkStatus.PROCESSING),
                    "ended_us": 0,
                    "settled": False,
                    "reopened": True,
                },
                "$inc": {"seq": 1},
            },
        )

    def mark_bulk_started(self, bulk_oid: ObjectId) -> None:
        """Record when a bulk job's first item started (once)."""
        self.bulk_jobs.update_one(
            {"_id": bulk_oid, "started_us": 0}, {"$set": {"started_us": clock.now_us()}}
        )

    def list_bulk(self, owner: str | None, statuses: list[str], project: str, size: int, token: str) -> Page:
        """A page of bulk jobs, newest first (keyset on `ck`)."""
        query: Doc = {} if owner is None else {"owner": owner}
        if statuses:
            query["status"] = one_of(statuses)
        if project:
            query["project"] = project
        fingerprint = hashlib.sha256(json.dumps([owner, sorted(statuses), project]).encode()).hexdigest()[:16]
        return keyset_page(self.bulk_jobs, query, fingerprint, size, token, self.page_tokens)

    def bulk_docs(self, ids: list[str]) -> list[Doc]:
        """The current documents of these bulk jobs (the remote-event poller)."""
        return list(self.bulk_jobs.find({"_id": {"$in": [ObjectId(i) for i in ids if ObjectId.is_valid(i)]}}))

    def unsettled_bulks(self, updated_before_us: int) -> list[Doc]:
        """Bulk jobs not yet settled whose last change is older than `updated_before_us`."""
        return list(self.bulk_jobs.find({"settled": False, "updated_us": {"$lt": updated_before_us}}))

    def bulks_with_open_items(self, bulk_ids: list[str]) -> set[str]:
        """Which of these bulk jobs still have a queued or processing item."""
        open_statuses = {"$in": [str(Status.QUEUED), str(Status.PROCESSING)]}
        return {
            bulk_id
            for bulk_id in bulk_ids  # one indexed query each (see `bulk_items`)
            if self.jobs.find_one({"bulk_job_id": bulk_id, "status": open_statuses}, {"_id": 1})
        }

    def unstored_notifications(self, ended_before_us: int) -> list[Doc]:
        """Bulk jobs that completed before `ended_before_us` whose notification
        is not yet in `notifications` (the server settling them stopped)."""
        return list(self.bulk_jobs.find({PENDING_FLAG: True, "ended_us": {"$lt": ended_before_us}}))

    def notification_stored(self, bulk: Doc) -> None:
        """The notification `bulk` completed with is in `notifications` now (not
        that of a later completion: a retried item reopens a bulk job)."""
        self.bulk_jobs.update_one(
            {"_id": bulk["_id"], "ended_us": bulk["ended_us"]},
            {"$set": {PENDING_FLAG: False}},
        )
