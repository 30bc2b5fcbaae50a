"""MongoDB access for budgets and spend: the `budgets` and `usage` collections,
and the few job queries the budget rules need.

- `budgets`: one document per limit, `_id` = [owner, project] as JSON
  (project "" is the owner's whole spend); `limit_cents` 0 means no limit.
  `holding` is set while jobs of that scope wait in the budget lane, with
  `hold_seq` counting each hold, so a release never clears a newer hold.
  Every write stamps `changed_us` (indexed), so a server's copy of the limits
  is kept fresh by reading what changed since its last read, never every
  limit again.
- `usage`: one document per owner and calendar month (UTC), `_id` = [owner,
  month] as JSON: `spent_cents`, `projects` (spend per encoded project name)
  `cost_unknown_jobs` (completed jobs whose model has no price: counted
  apart, never as 0) and `counted` (the jobs whose cost it holds and whose
  own flag is still set). A job's cost is added by one conditional update that also marks the
  job in `counted`, so adding it twice adds it once; the marker goes once
  the job's `spend_pending` flag is cleared. Reading an owner's spend is one
  find by `_id`, however long the history.
- On jobs: `spend_pending` (set by the completion write of a job that cost
  something) with a single-field index, so the recovery sweep is an index
  search of the few jobs not yet counted; the moves in and out of the
  budget lane read the (owner, status, ck) index: the owner's queued jobs,
  never their history.
"""

from __future__ import annotations

import functools
import json

import pymongo
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock
from genjobs.server.model.records import Budget, MonthSpend, Spend
from genjobs.server.model.states import Status
from genjobs.server.storage.database import Doc
from genjobs.server.storage.queue import READY
from genjobs.server.storage.store import Store

BUDGET = "budget"  # the lane of queued jobs whose owner (or project) is over a limit


@functools.lru_cache(maxsize=4096)  # asked on every claim's admission: json.dumps is not cheap
def budget_key(owner: str, project: str) -> str:
    """The `_id` of the limit on `owner`'s spend (project "": all of it)."""
    return json.dumps([owner, project], separators=(",", ":"))


def usage_key(owner: str, month: str) -> str:
    """The `_id` of `owner`'s spend in `month` ("2026-11")."""
    return json.dumps([owner, month], separators=(",", ":"))


def month_of(micros: int) -> str:
    """The calendar month (UTC) of an epoch-microsecond time, as "2026-11"."""
    return clock.from_us(micros).strftime("%Y-%m")


def project_field(project: str) -> str:
    """A project name as a key of the `projects` map: no dots, no leading `$`,
    never empty (MongoDB field names), and reversible (`project_name`)."""
    return "p" + project.replace("%", "%25").replace(".", "%2E").replace("$", "%24")


def project_name(key: str) -> str:
    """The project name of a `projects` key."""
    return key[1:].replace("%24", "$").replace("%2E", ".").replace("%25", "%")


class BudgetStore:
    """Every query on budgets, usage, and the jobs they hold back."""

    def __init__(self, store: Store) -> None:
        self.jobs = store.database.jobs
        self.budgets: Collection[Doc] = store.database.db["budgets"]
        self.usage: Collection[Doc] = store.database.db["usage"]
        self.queue = store.queue
        self.bulks = store.bulks
        self.job_store = store.jobs

    def ensure_indexes(self) -> None:
        """The indexes behind these queries (see the module docstring)."""
        self.budgets.create_index([("owner", 1)])  # GetUsage: an owner's limits
        self.budgets.create_index([("changed_us", 1)])  # what changed since a server's last read
        self.jobs.create_index([("spend_pending", 1)])  # spend a crash left uncounted

    # ---- budgets ----------------------------------------------------------

    def changed_budgets(self, since_us: int) -> list[Budget]:
        """The limits written at or after `since_us` (0: every limit)."""
        return [_budget(d) for d in self.budgets.find({"changed_us": {"$gte": since_us}})]

    def owner_budgets(self, owner: str) -> list[Budget]:
        """`owner`'s limits, removed ones (0) included."""
        return [_budget(d) for d in self.budgets.find({"owner": owner})]

    def budget(self, owner: str, project: str) -> Budget | None:
        """One limit as stored now."""
        found = self.budgets.find_one({"_id": budget_key(owner, project)})
        return None if found is None else _budget(found)

    def set_budget(self, owner: str, project: str, limit_cents: int) -> Budget:
        """Set (0: remove) a limit; the limit after. One upsert."""
        after = self.budgets.find_one_and_update(
            {"_id": budget_key(owner, project)},
            {
                "$set": {
                    "owner": owner,
                    "project": project,
                    "limit_cents": limit_cents,
                    "updated_us": clock.now_us(),
                    "changed_us": clock.now_us(),
                }
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert after is not None  # an upsert always leaves a document
        return _budget(after)

    def hold(self, owner: str, project: str) -> None:
        """Mark the limit as holding jobs back (before any job is moved)."""
        self.budgets.update_one(
            {"_id": budget_key(owner, project)},
            {"$set": {"holding": True, "changed_us": clock.now_us()}, "$inc": {"hold_seq": 1}},
        )

    def unhold(self, owner: str, project: str, hold_seq: int) -> bool:
        """Clear the hold, unless a newer one was set since `hold_seq` was read."""
        result = self.budgets.update_one(
            {"_id": budget_key(owner, project), "hold_seq": hold_seq},
            {"$set": {"holding": False, "changed_us": clock.now_us()}},
        )
        return result.modified_count == 1

    # ---- spend ------------------------------------------------------------

    def month_spend(self, owner: str, month: str) -> MonthSpend:
        """`owner`'s spend in `month` (nothing before their first cost in it)."""
        found = self.usage.find_one({"_id": usage_key(owner, month)}, {"counted": 0})
        if found is None:
            return MonthSpend()
        projects = {project_name(k): int(v) for k, v in (found.get("projects") or {}).items()}
        return MonthSpend(int(found.get("spent_cents", 0)), projects, int(found.get("cost_unknown_jobs", 0)))

    def count_spend(self, job: Spend) -> bool:
        """Add a completed job's cost to its owner's month, once however often
        this is called; True if this call added it."""
        key = usage_key(job.owner, month_of(job.ended_us))
        for _ in range(2):
            # One conditional update: the cost and its marker together, or neither.
            if self._count_together(key, [job]):
                return True
            # Not applied: counted already, or the month's document is missing.
            if not self._new_month(key, job.owner, month_of(job.ended_us)) and self._marked(key, job):
                return False
        return False

    def count_spend_many(self, jobs: list[Spend]) -> int:
        """`count_spend` for many jobs: one command a month document while none
        of its jobs is counted yet (the usual case), else one by one. How many
        this call added."""
        by_month: dict[str, dict[str, Spend]] = {}
        for job in jobs:  # each job once: a cost listed twice would be added twice
            by_month.setdefault(usage_key(job.owner, month_of(job.ended_us)), {})[job.job_id] = job
        added = 0
        for key, by_id in by_month.items():
            listed = list(by_id.values())
            if len(listed) > 1 and self._count_together(key, listed):
                added += len(listed)
            else:
                added += sum(self.count_spend(job) for job in listed)
        return added

    def _count_together(self, key: str, jobs: list[Spend]) -> bool:
        """Add these jobs' costs to the month document `key` with their markers,
        all in one conditional update: applied only if none is counted yet."""
        counts: dict[str, int] = {}
        for job in jobs:
            counts["spent_cents"] = counts.get("spent_cents", 0) + job.cost_cents
            if job.cost_cents:  # an unknown cost alone lists no project at 0
                field = f"projects.{project_field(job.project)}"
                counts[field] = counts.get(field, 0) + job.cost_cents
            if job.cost_unknown:
                counts["cost_unknown_jobs"] = counts.get("cost_unknown_jobs", 0) + 1
        markers = [f"counted.{job.job_id}" for job in jobs]
        unmarked = {marker: {"$exists": False} for marker in markers}
        update = {"$inc": counts, "$set": dict.fromkeys(markers, True)}
        return bool(self.usage.update_one({"_id": key, **unmarked}, update).modified_count)

    def _marked(self, key: str, job: Spend) -> bool:
        """Whether the month document `key` has counted `job`."""
        return self.usage.find_one({"_id": key, f"counted.{job.job_id}": True}, {"_id": 1}) is not None

    def _new_month(self, key: str, owner: str, month: str) -> bool:
        """Insert the month document `key` at nothing spent; False if it is there.
        (Not an upsert of the count: nx-27017 stores a dotted $inc of an upsert
        as one flat key.)"""
        month_doc = {
            "owner": owner,
            "month": month,
            "spent_cents": 0,
            "cost_unknown_jobs": 0,
            "projects": {},
            "counted": {},
        }
        try:
            self.usage.insert_one({"_id": key, **month_doc})
        except DuplicateKeyError:
            return False
        return True

    def spend_counted(self, job: Spend) -> None:
        """The job's cost is in its month: clear its flag, then its marker."""
        self.spend_counted_many({job.owner: [job]})

    def spend_counted_many(self, by_owner: dict[str, list[Spend]]) -> int:
        """These jobs' costs are in their months: clear their flags (one
        command), then their markers (one command a month document). In that
        order: a sweep between the two finds no flag; the other way round it
        would find a flag and no marker, and count the cost again. How many."""
        jobs = [job for listed in by_owner.values() for job in listed]
        if not jobs:
            return 0
        cleared = {"$set": {"spend_pending": False}}
        flags = [pymongo.UpdateOne({"_id": ObjectId(j.job_id), "spend_pending": True}, cleared) for j in jobs]
        self.jobs.bulk_write(flags, ordered=False)  # each by `_id` (MONGO.md 21)
        markers: dict[str, list[str]] = {}
        for job in jobs:
            markers.setdefault(usage_key(job.owner, month_of(job.ended_us)), []).append(job.job_id)
        for key, ids in markers.items():
            self.usage.update_one({"_id": key}, {"$unset": {f"counted.{job_id}": "" for job_id in ids}})
        return len(jobs)

    def uncounted_jobs(self, ended_before_us: int, limit: int = 500) -> list[Spend]:
        """The costs of completed jobs that ended before `ended_before_us` not
        yet counted (the server that completed them stopped in between)."""
        cursor = self.jobs.find(
            {"spend_pending": True, "ended_us": {"$lt": ended_before_us}},
            {"owner": 1, "project": 1, "cost_cents": 1, "ended_us": 1, "cost_unknown": 1},
        )
        return [
            Spend(
                str(d["_id"]),
                d["owner"],
                d.get("project", ""),
                int(d.get("cost_cents", 0)),
                int(d["ended_us"]),
                bool(d.get("cost_unknown", False)),
            )
            for d in cursor.limit(limit)
        ]

    def hold_ready(self, owner: str, project: str | None, reason: str) -> int:
        """Move `owner`'s ready jobs (of `project` only, when given) to the
        budget lane, saying why. How many moved."""
        return self._move(owner, project, READY, {"queue": BUDGET, "wait_reason": reason})

    def release(self, owner: str, project: str | None) -> int:
        """Move `owner`'s jobs (of `project` only, when given) from the budget
        lane back to the ready lane, where their order keys put them where
        they were. How many moved."""
        # ready_us: the leader's read of what entered the ready lane finds them.
        return self._move(
            owner, project, BUDGET, {"queue": READY, "wait_reason": "", "ready_us": clock.now_us()}
        )

    def _move(self, owner: str, project: str | None, lane: str, changes: Doc) -> int:
        """Apply `changes` (a new `queue` among them) to `owner`'s queued jobs in
        `lane`: their ids read through the (owner, status, ck) index, then
        `QueueStore.move_queued`."""
        query: Doc = {"owner": owner, "status": str(Status.QUEUED), "queue": lane}
        if project is not None:
            query["project"] = project
        to = changes.pop("queue")
        ids = [row["_id"] for row in self.jobs.find(query, {"_id": 1})]
        return self.queue.move_queued([(oid, lane, to) for oid in ids], changes, bump=True)

    def to_budget_lane(self, job: Doc, reason: str) -> Doc | None:
        """Put a job this run claimed back in the queue, in the budget lane, its
        attempt given back (fenced by the run's epoch); the job after, None if
        the run lost it."""
        # A paused bulk job's item waits held, for its resume first.
        changes = {**self.bulks.requeue_changes(job, BUDGET), "wait_reason": reason}
        return self.queue.fenced_update(job["_id"], job["epoch"], changes)

    def cancel_queued(self, oid: ObjectId) -> Doc | None:
        """Cancel a job if it is still queued (one its owner cancelled on its way to the budget lane)."""
        return self.job_store.cancel_queued(oid)


def _budget(doc: Doc) -> Budget:
    """A stored limit as a Budget."""
    return Budget(
        owner=doc["owner"],
        project=doc.get("project", ""),
        limit_cents=int(doc.get("limit_cents", 0)),
        updated_us=int(doc.get("updated_us", 0)),
        changed_us=int(doc.get("changed_us", 0)),
        holding=bool(doc.get("holding", False)),
        hold_seq=int(doc.get("hold_seq", 0)),
    )
