"""The queue: the ready lane the dispatcher reads, claims and fenced writes of
a run, the job leases, the leader lease, and the owners' turns for fair share.

The queue is the job document's own `queue` lane ("ready", "held",
"backoff", "scheduled"; "none" once a job left the queue), changed by the
same conditional write that changes its status, so queue and job never
disagree; the (queue, ck) index is the compact queue the dispatcher reads, a
bounded number of entries a claim however long the history or the queue.
"""

from __future__ import annotations

from typing import NamedTuple

import pymongo
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock
from genjobs.server.model.states import Action, Status, allowed
from genjobs.server.model.vocabulary import Lane, Priority
from genjobs.server.storage.database import Database, Doc, count, one_of
from genjobs.server.storage.places import state_update

# The queue lanes of a QUEUED job; every other status is in lane NONE.
# Plain strings (the lanes of model.vocabulary.Lane): compared on the dispatcher's hot path.
READY, HELD, BACKOFF, NONE = str(Lane.READY), str(Lane.HELD), str(Lane.BACKOFF), str(Lane.NONE)
SCHEDULED = str(Lane.SCHEDULED)  # not before its schedule_time (run_after_us)
# Lanes whose jobs become ready at their run_after_us (housekeeping promotes them).
WAITING = (BACKOFF, SCHEDULED)

DUE_LIMIT = 1000  # due jobs of a waiting lane read at a time (the rest at the next pass)
_CANDIDATE = {"owner": 1, "rank": 1, "ck": 1}  # what the dispatcher reads of a ready job
# Where a read of jobs entering the ready lane got to: (ready_us, _id of the
# last job read at it; None when every job of that microsecond was read).
ReadyCursor = tuple[int, ObjectId | None]


class ProgressUpdate(NamedTuple):
    """One run's progress write: `changes` (`progress` among them) to the job
    `oid` its run holds under `epoch`, known at sequence `seq`."""

    oid: ObjectId
    epoch: int
    seq: int
    changes: Doc


class LeaderLease(NamedTuple):
    """The leader lease as its holder reads it: its term (each taking of the
    lease counts one), and what replicas that are not the leader left in it:
    how many times they queued jobs, and until when one of them is alive."""

    term: int
    signals: int
    followers_until_us: int


_LEADER_LEASE_FIELDS = {"term": 1, "wakeups": 1, "followers_until_us": 1}


def _leader_lease(doc: Doc) -> LeaderLease:
    return LeaderLease(
        int(doc.get("term", 0)), int(doc.get("wakeups", 0)), int(doc.get("followers_until_us", 0))
    )


class QueueStore:
    """The queue lanes of the jobs collection, the leases and the fair-share turns."""

    def __init__(self, database: Database) -> None:
        self.jobs = database.jobs
        self.leases = database.leases
        self.turns = database.turns
        self.retention_us = database.retention_us

    def runnable(self, limit: int) -> list[tuple[int, ObjectId]]:
        """The oldest ready jobs as (order key, id): FIFO, whoever owns them."""
        return [(ck, oid) for _, _, ck, oid in self.runnable_heads(limit)]

    def runnable_heads(self, limit: int) -> list[tuple[str, int, int, ObjectId]]:
        """The oldest ready jobs as (owner, rank, order key, id).

        The ready lane read in order through the (queue, ck) index: at most
        `limit` documents, however long the history or the queue.
        """
        cursor = self.jobs.find({"queue": READY}, _CANDIDATE).sort("ck", 1).limit(limit)
        return [candidate(row) for row in cursor]

    def owner_head(self, owner: str, limit: int) -> list[Doc]:
        """An owner's first `limit` ready jobs, whole, best rank first, then in
        order: one index search of (queue, owner, rank, ck). Whole: the
        dispatcher may claim one of them together with a run's end
        (`end_and_claim`), which needs the job as it is stored."""
        cursor = self.jobs.find({"queue": READY, "owner": owner}).sort([("rank", 1), ("ck", 1)]).limit(limit)
        return list(cursor)

    def ready_owners(self) -> dict[str, tuple[int, int]]:
        """Each owner with ready jobs -> (best rank, oldest order key) of them.

        A grouping of the ready lane, which nx-27017 runs in SQL (about 9 ms at
        10,000 ready jobs; `distinct` takes 20 times as long): for the
        dispatcher's rebuild only, never per claim.
        """
        rows = self.jobs.aggregate(
            [
                {"$match": {"queue": READY}},
                {"$group": {"_id": "$owner", "rank": {"$min": "$rank"}, "ck": {"$min": "$ck"}}},
            ]
        )
        return {str(r["_id"]): (_rank(r), int(r["ck"])) for r in rows}

    def entered_ready(
        self, after: ReadyCursor, until_us: int, limit: int
    ) -> tuple[list[tuple[str, int, int, ObjectId]], ReadyCursor]:
        """The jobs still ready that entered the ready lane after `after` and
        no later than `until_us`, at most `limit` of them, as (owner, rank,
        order key, id); and the cursor to read on from.

        The cursor is (ready_us, _id) of the last job read (an _id of None:
        all of that microsecond was read), so a page that ends inside a run of
        jobs stamped with one microsecond (a bulk move) goes on inside it next
        time. A range on the `ready_us` index alone (nx-27017 would take the
        queue index for `{queue, ready_us}`, the whole lane); the rest of a
        cut run, an equality on it (both SEARCH on nx-27017): what entered
        the lane lately, however long the queue or the history.
        """
        after_us, after_id = after
        fields = {**_CANDIDATE, "queue": 1, "ready_us": 1}
        rows: list[Doc] = []
        if after_id is not None:
            # Equality alone: with any condition on `_id` nx-27017 scans the
            # collection. A run is one write's (a bulk move): read whole, once
            # a page it spans.
            run = self.jobs.find({"ready_us": after_us}, fields).sort("_id", 1)
            rows = [row for row in run if row["_id"] > after_id][:limit]
        cursor: ReadyCursor = (after_us, rows[-1]["_id"]) if rows else (after_us, None)
        if len(rows) < limit:
            window = {"ready_us": {"$gt": after_us, "$lte": until_us}}
            wanted = limit - len(rows)
            more = list(self.jobs.find(window, fields).sort([("ready_us", 1), ("_id", 1)]).limit(wanted))
            rows += more
            cut = len(more) >= wanted
            cursor = (int(rows[-1]["ready_us"]), rows[-1]["_id"]) if cut else (max(until_us, after_us), None)
        return [candidate(row) for row in rows if row["queue"] == READY], cursor

    def turns_of(self, owners: list[str]) -> dict[str, int]:
        """The stored last starts of these owners (one search of `_id`)."""
        if not owners:
            return {}
        return {str(d["_id"]): int(d["last_us"]) for d in self.turns.find({"_id": {"$in": owners}})}

    def save_turns(self, turns: dict[str, int]) -> None:
        """Store when each owner's job last started (one command)."""
        self.turns.bulk_write(
            [pymongo.UpdateOne({"_id": o}, {"$set": {"last_us": t}}, upsert=True) for o, t in turns.items()],
            ordered=False,
        )

    def claim(self, oid: ObjectId, worker: str, lease_seconds: float) -> Doc | None:
        """Take a ready job for running: one atomic update on `_id`.

        Increments the lease epoch: every later write for this run is
        conditional on it, so a stale dispatcher cannot overwrite a newer run.
        """
        return self.jobs.find_one_and_update(
            {"_id": oid, "status": one_of(allowed(Action.CLAIM)), "queue": READY},
            self.claim_update(worker, lease_seconds),
            return_document=ReturnDocument.AFTER,
        )

    @staticmethod
    def claim_update(worker: str, lease_seconds: float) -> Doc:
        """What a claim by `worker` writes now (a job stored already claimed
        carries it in its insert: see `Dispatcher.start_as_stored`)."""
        return _claim_update(worker, lease_seconds, clock.now_us())

    def end_and_claim(
        self, ended: Doc, changes: Doc, ready: Doc, worker: str, lease_seconds: float
    ) -> tuple[Doc | None, Doc | None]:
        """Store a run's outcome and claim the next job in one command: two
        conditional updates, each on the exact version of its document that
        the caller holds (its `seq`), so that each one's result is that
        document with the update applied. (The ended job as stored, the
        claimed job), None for an update that did not apply.

        `ended` is the run's job as the run knows it (its claim, its own
        progress writes, and what their read-backs brought; a change by
        another hand it has not read, a cancel request, leaves the outcome
        unapplied); `ready` a ready job as read.
        When only one update applied, the two documents are read back to
        tell which (rare: the next job changed since it was read).
        """
        now_us = clock.now_us()
        claim = _claim_update(worker, lease_seconds, now_us)
        outcome = state_update(changes)
        result = self.jobs.bulk_write(
            [
                pymongo.UpdateOne(
                    {**held_by(ended["_id"], ended["epoch"]), "seq": ended["seq"]},
                    outcome,
                ),
                pymongo.UpdateOne(
                    {
                        "_id": ready["_id"],
                        "seq": ready["seq"],
                        "status": one_of(allowed(Action.CLAIM)),
                        "queue": READY,
                    },
                    claim,
                ),
            ],
            ordered=True,
        )
        if result.modified_count == 2:
            return applied(ended, outcome), applied(ready, claim)
        if result.modified_count == 0:
            return None, None
        stored = {d["_id"]: d for d in self.jobs.find({"_id": {"$in": [ended["_id"], ready["_id"]]}})}
        after, claimed = stored.get(ended["_id"]), stored.get(ready["_id"])
        ours = after is not None and stamped_by(after, ended["epoch"], changes)
        taken = claimed is not None and (claimed.get("worker"), claimed.get("started_us")) == (worker, now_us)
        return (after if ours else None), (claimed if taken else None)

    def fenced_update(
        self, oid: ObjectId, epoch: int, changes: Doc, bump: bool = True, when: Doc | None = None
    ) -> Doc | None:
        """Update a running job only if this run still holds it (same epoch) and
        it matches `when` besides (a final status gives its place back)."""
        return self.jobs.find_one_and_update(
            {**held_by(oid, epoch), **(when or {})},
            state_update(changes, bump),
            return_document=ReturnDocument.AFTER,
        )

    def write_progress(self, writes: list[ProgressUpdate]) -> int:
        """Several runs' progress in one command; how many were applied. Each
        is applied only if its run still holds the job, nothing changed the
        job since the run last knew it (its `seq`), and the stored percentage
        is not higher (an external service's report may be ahead)."""
        ops = [
            pymongo.UpdateOne(
                {
                    **held_by(write.oid, write.epoch),
                    "seq": write.seq,
                    "progress.percentage": {"$lte": write.changes["progress"]["percentage"]},
                },
                state_update(write.changes),
            )
            for write in writes
        ]
        return self.jobs.bulk_write(ops, ordered=False).matched_count if ops else 0

    def run_progress(self, oid: ObjectId, epoch: int) -> Doc | None:
        """The progress of a job's run under `epoch` while it is processing; None once that run ended."""
        return self.jobs.find_one({"_id": oid, "epoch": epoch, "status": "PROCESSING"}, {"progress": 1})

    def renew_job_lease(self, oid: ObjectId, epoch: int, lease_seconds: float) -> Doc | None:
        """Extend a running job's lease; None when the run lost it."""
        return self.jobs.find_one_and_update(
            {"_id": oid, "epoch": epoch, "status": str(Status.PROCESSING)},
            {"$set": {"lease_until_us": clock.now_us() + int(lease_seconds * 1_000_000)}},
            projection={"cancel_requested": 1},
            return_document=ReturnDocument.AFTER,
        )

    def completion(self, result: Doc, started_us: int) -> Doc:
        """The fields a COMPLETED job gets."""
        now_us = clock.now_us()
        cost = int(result.get("cost_cents", 0))
        unknown = (result.get("metadata") or {}).get("cost_unknown") == "true"
        # A cost is counted in the owner's monthly spend once (server/services/budgets.py),
        # an unknown one apart (top-level flag: the recovery sweep projects no dotted path);
        # a job that cost nothing adds no flag, so no write.
        pending: Doc = {"spend_pending": True} if cost > 0 or unknown else {}
        if unknown:
            pending["cost_unknown"] = True
        return {
            **pending,
            "status": str(Status.COMPLETED),
            "result": result,
            # Nothing is wrong now: earlier attempts' errors stay in attempt_errors.
            "error": None,
            "cost_cents": cost,
            "duration_s": max((now_us - started_us) / 1e6, 0.0),
            "progress": {
                "percentage": 100,
                "stage": "done",
                "stage_progress": 100,
                "message": "",
                "started_at_us": started_us,
                "elapsed_seconds": round(max((now_us - started_us) / 1e6, 0.0), 3),
            },
            "ended_us": now_us,
            "updated_us": now_us,
            # The retention sweep removes it then (failed and cancelled jobs stay).
            "expire_us": now_us + self.retention_us,
        }

    def processing_jobs(self) -> list[Doc]:
        """Every PROCESSING job, with its lease (few: at most one per dispatcher)."""
        return list(self.jobs.find({"status": str(Status.PROCESSING)}))

    def queue_counts(self) -> tuple[int, int]:
        """(queued, processing) jobs in the deployment: two counts on the status index."""
        return count(self.jobs, {"status": str(Status.QUEUED)}), count(
            self.jobs, {"status": str(Status.PROCESSING)}
        )

    def due_waiting(self, now_us: int) -> list[tuple[str, ObjectId, str]]:
        """(lane, id, bulk job id) of the jobs of the waiting lanes (retry backoff,
        schedule time) whose time has come, DUE_LIMIT at most: one index
        search of (queue, run_after_us) a lane."""
        due: list[tuple[str, ObjectId, str]] = []
        for lane in WAITING:
            rows = self.jobs.find(
                {"queue": lane, "run_after_us": {"$lte": now_us}}, {"_id": 1, "bulk_job_id": 1}
            ).limit(DUE_LIMIT - len(due))
            due.extend((lane, row["_id"], row.get("bulk_job_id", "")) for row in rows)
            if len(due) >= DUE_LIMIT:
                break
        return due

    def next_due(self, now_us: int) -> int | None:
        """When the next job of the waiting lanes falls due after `now_us`
        (None: none waits): the first entry after it of (queue, run_after_us) a lane."""
        times = [
            row["run_after_us"]
            for lane in WAITING
            for row in self.jobs.find(
                {"queue": lane, "run_after_us": {"$gt": now_us}}, {"_id": 0, "run_after_us": 1}
            )
            .sort("run_after_us", 1)
            .limit(1)
        ]
        return min(times, default=None)

    def make_ready(self, oid: ObjectId, lane: str = BACKOFF) -> Doc | None:
        """Move a job from a waiting lane to the ready lane; the job's candidate
        fields (owner, rank, ck) when it did."""
        return self.jobs.find_one_and_update(
            {"_id": oid, "status": str(Status.QUEUED), "queue": lane},
            {"$set": {"queue": READY, "ready_us": clock.now_us()}},
            projection=_CANDIDATE,
        )

    def move_queued(
        self,
        moves: list[tuple[ObjectId, str | list[str], str]],
        changes: Doc | None = None,
        bump: bool = False,
    ) -> int:
        """Move queued jobs between lanes, each (id, from lane or any of lanes, to lane), with
        `changes` besides (`bump`: count a change the job's watchers hear of):
        one conditional update on `_id` each (a job claimed, cancelled or moved
        meanwhile is left alone), sent as one command; how many moved.

        Never update_many: on nx-27017 an update filtered on anything but `_id`
        reads the whole collection (150 ms at 20,000 jobs, even when nothing
        matches), however small the set its filter names.
        """
        now_us = clock.now_us()
        writes = []
        for oid, lane, to in moves:
            fields: Doc = {**(changes or {}), "queue": to}
            if to == READY:
                fields["ready_us"] = now_us  # found by the dispatcher's next read of the lane
            query = {
                "_id": oid,
                "status": str(Status.QUEUED),
                "queue": lane if isinstance(lane, str) else one_of(lane),
            }
            writes.append(pymongo.UpdateOne(query, state_update(fields, bump)))
        return self.jobs.bulk_write(writes, ordered=False).modified_count if writes else 0

    def hold_leader(self, lease_id: str, holder: str, lease_seconds: float) -> LeaderLease | None:
        """Renew or take the named lease: while `holder` has it, the wakeups
        other replicas left in it (one command when renewed); else None."""
        now_us = clock.now_us()
        until = now_us + int(lease_seconds * 1_000_000)
        for query, update in (
            ({"_id": lease_id, "holder": holder}, {"$set": {"until_us": until}}),
            (
                {"_id": lease_id, "until_us": {"$lt": now_us}},
                {"$set": {"holder": holder, "until_us": until}, "$inc": {"term": 1}},
            ),
        ):
            held = self.leases.find_one_and_update(
                query, update, projection=_LEADER_LEASE_FIELDS, return_document=ReturnDocument.AFTER
            )
            if held is not None:
                return _leader_lease(held)
        try:
            self.leases.insert_one({"_id": lease_id, "holder": holder, "until_us": until, "term": 1})
            return LeaderLease(1, 0, 0)
        except DuplicateKeyError:
            return None

    def release_leader(self, lease_id: str, holder: str) -> None:
        """Give the lease up at once (a clean shutdown), so another replica need not wait."""
        self.leases.update_one({"_id": lease_id, "holder": holder}, {"$set": {"until_us": 0}})

    def signal_leader(self, lease_id: str) -> None:
        """Tell the leader that jobs entered the queue here: one update of its
        lease, which it reads at each renewal (or more often, see `note_follower`).
        No lease, no leader: the first one reads the queue as it is elected."""
        self.leases.update_one({"_id": lease_id}, {"$inc": {"wakeups": 1}})

    def note_follower(self, lease_id: str, until_us: int) -> None:
        """A replica that is not the leader is alive until `until_us`: the
        leader reads its lease's wakeups often till then, not only as it renews it."""
        self.leases.update_one({"_id": lease_id}, {"$max": {"followers_until_us": until_us}})

    def read_leader(self, lease_id: str) -> LeaderLease:
        """The named lease's term and wakeups: one read by `_id`."""
        doc = self.leases.find_one({"_id": lease_id}, _LEADER_LEASE_FIELDS)
        return _leader_lease(doc) if doc else LeaderLease(0, 0, 0)

    def note_run_end(self, lease_id: str, ended_us: int) -> None:
        """Remember in the named lease when a run ended, unless a later end is there."""
        self.leases.update_one(
            {
                "_id": lease_id,
                "$or": [{"last_end_us": {"$lt": ended_us}}, {"last_end_us": {"$exists": False}}],
            },
            {"$set": {"last_end_us": ended_us}},
        )

    def last_run_end(self, lease_id: str) -> int:
        """When the last run ended as the named lease remembers it (0: never)."""
        doc = self.leases.find_one({"_id": lease_id}, {"last_end_us": 1})
        return int(doc.get("last_end_us", 0)) if doc else 0


def _rank(row: Doc) -> int:
    """A job's rank; a job stored before priorities existed is NORMAL."""
    return Priority.rank_of(row.get("rank"))


def _claim_update(worker: str, lease_seconds: float, now_us: int) -> Doc:
    """What a claim writes: the job is PROCESSING here, leased, at 0%, under a new epoch."""
    return {
        "$set": {
            "status": str(Status.PROCESSING),
            "queue": NONE,
            "worker": worker,
            "lease_until_us": now_us + int(lease_seconds * 1_000_000),
            "started_us": now_us,
            "updated_us": now_us,
            "progress": {
                "percentage": 0,
                "stage": "starting",
                "stage_progress": 0,
                "message": "",
                "started_at_us": now_us,
                "elapsed_seconds": 0.0,
            },
        },
        "$inc": {"epoch": 1, "attempt": 1, "seq": 1},
    }


_RUNNING = allowed(Action.FINISH)  # the statuses of a job its run still holds


def held_by(oid: ObjectId, epoch: int) -> Doc:
    """The filter of a job still held by its run of `epoch` (a run's writes are fenced by it)."""
    return {"_id": oid, "epoch": epoch, "status": one_of(_RUNNING)}


def holds(doc: Doc, epoch: int) -> bool:
    """Whether the run of `epoch` still holds the job `doc` (`held_by`, in memory)."""
    return bool(doc["epoch"] == epoch and doc["status"] in _RUNNING)


def stamped_by(doc: Doc, epoch: int, changes: Doc) -> bool:
    """Whether `doc` holds the write of `changes` by the run of `epoch` (an
    outcome whose answer was lost, or that shared a command): its stamp is there."""
    return bool(doc["epoch"] == epoch and doc["updated_us"] == changes["updated_us"])


def applied(doc: Doc, update: Doc) -> Doc:
    """`doc` with a top-level `$set`, `$inc` and `$unset` applied, as the database applies them."""
    after = {**doc, **update.get("$set", {})}
    for name, by in update.get("$inc", {}).items():
        after[name] = doc.get(name, 0) + by
    for name in update.get("$unset", {}):
        after.pop(name, None)
    return after


def unclaimed(job: Doc, before: Doc, claim: Doc) -> Doc:
    """A job stored claimed (`claim` applied to `before` in its insert) as it
    was submitted: each field the claim wrote as `before` had it."""
    after = dict(job)
    for name in (*claim.get("$set", {}), *claim.get("$inc", {})):
        if name in before:
            after[name] = before[name]
        else:
            after.pop(name, None)
    return after


def candidate(row: Doc) -> tuple[str, int, int, ObjectId]:
    """(owner, rank, order key, id) of a ready job."""
    return str(row["owner"]), _rank(row), int(row["ck"]), row["_id"]
