"""Budgets: monthly spending limits per owner and per project (the cap on an
owner's queued jobs is queue_cap.py's).

- Spend is the sum of completed jobs' `cost_cents` in the calendar month
  (UTC); completed jobs whose cost is unknown are counted apart, by the same
  write. A job that cost something, or whose cost is unknown, completes with
  `spend_pending` set (by the same write); `job_changed` then adds its cost to its owner's month
  (`BudgetStore.count_spend`, idempotent) and clears the flag: before the
  lane's next claim where a limit covers the job, else behind the run, with
  the other ends of a second (written_behind.py). What reads the
  spend here (admission under a limit, a release, GetUsage) writes what is
  pending first. A server that
  stops in between leaves the flag: the leader's sweep (`recover`) counts
  such jobs. So each completed job is counted exactly once; a job that cost
  nothing costs no write.
- A submit (SubmitJob, CreateBulkJob, RetryJob) is refused with
  RESOURCE_EXHAUSTED and a QuotaFailure when the owner, or the project it
  names, is at or over a limit. The limits are checked from memory: the
  budgets are read in whole once, then what changed is re-read at most every
  CACHE_SECONDS; an owner's spend every SPEND_CACHE_SECONDS. (The cap on an
  owner's open jobs is queue_cap.py's.)
- The dispatcher asks `admit(job)` before running a claimed job. When a
  limit binds, the job goes back to the queue in the budget lane with a
  `wait_reason`, and so do the owner's (project's) other ready jobs, in one
  update; the limit is marked `holding`. `release()`, run by the leader's
  housekeeping, moves them back to the ready lane once the limit no longer
  binds (raised, removed, or a new month).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pymongo

from genjobs.server.model import clock
from genjobs.server.model.caller import Caller, subject_problem
from genjobs.server.model.errors import FieldViolation, ServiceError, admins_only, invalid, quota_exceeded
from genjobs.server.model.recheck import Recheck
from genjobs.server.model.records import Budget, Job, MonthSpend, Spend
from genjobs.server.model.states import Status
from genjobs.server.services import validation
from genjobs.server.services.queue_cap import QueueCap
from genjobs.server.services.written_behind import RUN_PATH, WrittenBehind
from genjobs.server.storage.budgets import (
    BudgetStore,
    budget_key,
    month_of,
    usage_key,
)
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import STATUS_CHANGED

log = logging.getLogger(__name__)

CACHE_SECONDS = 1.5  # how old the budgets read on the submit path may be
SPEND_CACHE_SECONDS = 1.0  # how old an owner's spend read on the submit path may be
# How long a job may stay completed with its cost uncounted before the sweep
# counts it (a live server counts it at once).
SWEEP_DELAY_US = 10_000_000
# A cost counted behind its run is counted by half that delay after its end,
# with at least this long left for the count's commands (else the sweep counts it).
BEHIND_MARGIN_US = 500_000
MAX_CACHED_OWNERS = 4096  # beyond this many, the caches drop their expired entries
# Each re-read of the limits reads those stamped from this long before the
# last read began: a replica whose clock is behind by less still gets seen.
CHANGE_MARGIN_US = 60_000_000

# The thread that writes behind the runs: named for the dispatcher, whose commands they are.
FLAGS_THREAD = "dispatcher-spend-flags"

EventSink = Callable[[Doc, str], None]


@dataclass(frozen=True)
class Limit:
    """One monthly limit with the spend it covers this month."""

    owner: str
    project: str  # "": the owner's whole spend
    limit_cents: int
    spent_cents: int
    updated_us: int = 0

    @property
    def exhausted(self) -> bool:
        """At or over the limit (a limit of 0 is none)."""
        return self.limit_cents > 0 and self.spent_cents >= self.limit_cents

    def short_of(self, cents: int) -> bool:
        """Whether `cents` more would pass what is left of the limit (0 is none)."""
        return self.limit_cents > 0 and cents > self.limit_cents - self.spent_cents

    @property
    def subject(self) -> str:
        """The QuotaFailure subject: "owner:alice" or "owner:alice/project:blog"."""
        return f"owner:{self.owner}" + (f"/project:{self.project}" if self.project else "")

    def describe(self) -> str:
        """E.g. "the monthly budget of 500 cents for alice is spent"."""
        whose = f"{self.owner}'s project {self.project!r}" if self.project else self.owner
        return f"the monthly budget of {self.limit_cents} cents for {whose} is spent"


class Ended(NamedTuple):
    """A completed job's cost written behind its run, `counted` already or not."""

    spend: Spend
    counted: bool


@dataclass
class Usage:
    """An owner's spend this month, their limits and their queue (GetUsage)."""

    owner: str
    month: str
    spent_cents: int
    projects: list[tuple[str, int]] = field(default_factory=list)  # largest first
    limits: list[Limit] = field(default_factory=list)  # the whole-spend one first
    queued: int = 0
    max_queued: int = 0
    cost_unknown_jobs: int = 0  # completed this month, their cost unknown (not in spent_cents)


class Budgets:
    """The budget rules: spend accounting, submit checks, admission and release."""

    def __init__(self, store: BudgetStore, record: EventSink, cap: QueueCap) -> None:
        self.store = store
        self.record = record
        self.cap = cap  # the queued-jobs cap: GetUsage counts it, a submit's check asks it
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}  # by budget_key
        # The reads of what changed: each stands CACHE_SECONDS, a recheck for a leader alone.
        self._reloads = Recheck(CACHE_SECONDS)
        self._last_read_us: int | None = None  # clock time the last read began; None: nothing read yet
        self._spend: dict[str, tuple[float, MonthSpend]] = {}  # usage key -> (read at, spend)
        # Written behind the dispatcher's runs (services/written_behind.py): the
        # costs of owners no limit covers, and every counted cost's flag.
        self.counted = WrittenBehind(self._settle, "completed jobs' costs", FLAGS_THREAD)

    # ---- spend ------------------------------------------------------------

    def job_changed(self, job: Job, kind: str) -> None:
        """A job changed here: count its cost if it just completed with one.
        A run's cost is counted before the lane's next claim where a limit
        covers it (admission reads it), else behind the run with others."""
        if kind == STATUS_CHANGED and job.spend_pending and job.status == Status.COMPLETED:
            spend = job.spend
            if RUN_PATH.get() and self._no_limit(spend.owner, spend.project):
                self.counted.add(spend.owner, [Ended(spend, counted=False)])
            else:
                self._count(spend, RUN_PATH.get())

    def close(self) -> None:
        """Write what is pending behind the runs (the server is stopping)."""
        self.counted.close()

    def recover(self) -> None:
        """Count the cost of jobs completed on a server that stopped before it
        counted them. The dispatcher's leader runs it once a sweep."""
        for job in self.store.uncounted_jobs(clock.now_us() - SWEEP_DELAY_US):
            self._count(job)

    def _count(self, job: Spend, behind: bool = False) -> None:
        """Add a completed job's cost to its month (before the lane's next claim:
        admission reads it), then clear its flag and marker, `behind` the run
        or now."""
        self.store.count_spend(job)
        if behind:
            self.counted.add(job.owner, [Ended(job, counted=True)])
        else:
            self.store.spend_counted(job)
        self._forget_spend([job])

    def _settle(self, by_owner: dict[str, list[Ended]]) -> int:
        """What was written behind the runs: the costs not counted yet, in one
        command a month document, then their flags and markers. How many jobs.

        A cost is counted here only within half the sweep's delay of its end,
        every command of it bounded by that deadline (sent with it, so the
        database gives up too): one counted after the sweep had counted it
        and cleared its marker would be counted twice. The rest, and a count
        that failed, are left to the sweep, their flags kept."""
        deadline_us = clock.now_us() + BEHIND_MARGIN_US  # the count may take until the oldest's deadline
        kept = {
            owner: [e for e in listed if e.counted or e.spend.ended_us + SWEEP_DELAY_US // 2 >= deadline_us]
            for owner, listed in by_owner.items()
        }
        uncounted = [ended.spend for listed in kept.values() for ended in listed if not ended.counted]
        settled = {owner: [ended.spend for ended in listed] for owner, listed in kept.items() if listed}
        if uncounted:
            oldest_us = min(job.ended_us for job in uncounted)
            with pymongo.timeout((oldest_us + SWEEP_DELAY_US // 2 - clock.now_us()) / 1e6):
                self.store.count_spend_many(uncounted)
            self._forget_spend(uncounted)
        return self.store.spend_counted_many(settled)

    def _forget_spend(self, jobs: list[Spend]) -> None:
        """The cached spend of these jobs' months is out of date."""
        with self._lock:
            for job in jobs:
                self._spend.pop(usage_key(job.owner, month_of(job.ended_us)), None)

    def _no_limit(self, owner: str, project: str) -> bool:
        """Whether the budgets, once read, show no limit over `owner`'s `project`."""
        with self._lock:
            return bool(self._reloads.last) and not self._scopes(owner, project)

    # ---- submits ------------------------------------------------------------

    async def check_submit_async(self, owner: str, project: str, count: int, cents: int = 0) -> None:
        """`check_submit` from the event loop: from memory when the caches allow."""
        if not self._passes_from_memory(owner, project, count, cents):
            await asyncio.to_thread(self.check_submit, owner, project, count, cents)

    def check_submit(self, owner: str, project: str, count: int, cents: int = 0) -> None:
        """Refuse (RESOURCE_EXHAUSTED, QuotaFailure) `count` new jobs of `owner`
        in `project` when a limit is spent, or what is left of it is less than
        `cents` (their low estimate), or they could never fit under the cap.
        The cap itself is taken by their inserts (queue_cap.py)."""
        for limit in self._limits(owner, project, SPEND_CACHE_SECONDS):
            if limit.exhausted or limit.short_of(cents):
                raise budget_refusal(limit, cents)
        self.cap.check_count(owner, count)

    def _passes_from_memory(self, owner: str, project: str, count: int, cents: int = 0) -> bool:
        """True when the caches alone show the limits pass (no query needed)."""
        now = time.monotonic()
        with self._lock:
            if self._reloads.due(alone=False):  # the submit path trusts a read CACHE_SECONDS old
                return False
            for doc in self._scopes(owner, project):
                cached = self._spend.get(usage_key(owner, month_of(clock.now_us())))
                if cached is None or now - cached[0] > SPEND_CACHE_SECONDS:
                    return False
                limit = _limit(doc, cached[1])
                if limit.exhausted or limit.short_of(cents):
                    return False
            return count <= self.cap.cap

    # ---- the dispatcher -----------------------------------------------------

    def unlimited(self, job: Doc, alone: bool = False) -> bool:
        """Whether no limit applies to `job`'s owner and project, as budgets read
        at most CACHE_SECONDS ago say (for a leader `alone`, a recheck; no
        query: False when they are older). Then `admit` would let it run
        without reading anything either, and its cost is counted behind."""
        with self._lock:
            fresh = not self._reloads.due(alone)
        return fresh and self._no_limit(job["owner"], job.get("project", ""))

    def admit(self, job: Doc, alone: bool = False) -> bool:
        """Whether a claimed job may run. False: a limit binds, and the job (and
        the owner's or project's other ready jobs) now wait in the budget lane.
        A leader `alone` trusts its budgets as `release` does."""
        # `job` stays the claimed document on purpose: the claim's hot path converts nothing.
        owner, project = job["owner"], job.get("project", "")
        self._reload_if_stale(alone)
        with self._lock:
            if not self._scopes(owner, project):
                return True
        self.counted.flush(owner)  # a cost counted behind since the limit came is in the spend read
        binding = [limit for limit in self._limits(owner, project, 0.0) if limit.exhausted]
        if not binding:
            return True
        limit = binding[0]
        reason = "waiting: " + limit.describe()
        # The hold first: if this server stops now, the release still looks.
        self.store.hold(limit.owner, limit.project)
        self.stale()
        after = self.store.to_budget_lane(job, reason)
        if after is not None and after.get("cancel_requested"):
            # Cancelled between its claim and now: the owner's wish, not a wait.
            after = self.store.cancel_queued(after["_id"]) or after
        if after is not None:
            self.record(after, STATUS_CHANGED)
        moved = self.store.hold_ready(owner, limit.project or None, reason)
        log.info("job %s and %d more of %s wait: %s", job["_id"], moved, limit.subject, limit.describe())
        return False

    def release(self, alone: bool = False) -> int:
        """Move jobs held by limits that no longer bind back to the ready lane;
        how many moved. Reads nothing from the database while nothing is held
        (but the budgets, at most every CACHE_SECONDS; for a leader `alone`,
        whose every limit and hold is written here, once a RECHECK_SECONDS)."""
        self._reload_if_stale(alone)
        with self._lock:
            held = [budget for budget in self._budgets.values() if budget.holding]
        if held:
            self.counted.flush()  # the spend read below has every cost counted here
        moved = 0
        for cached in held:
            budget = self.store.budget(cached.owner, cached.project)
            if budget is None or not budget.holding:
                continue
            limit = _limit(budget, self.store.month_spend(budget.owner, month_of(clock.now_us())))
            if limit.exhausted:
                continue
            moved += self.store.release(limit.owner, limit.project or None)
            self.store.unhold(limit.owner, limit.project, budget.hold_seq)
        if held:
            self.stale()
        return moved

    # ---- RPCs -----------------------------------------------------------------

    def set_budget(self, caller: Caller, owner: str, project: str, limit_cents: int) -> Limit:
        """Set (0: remove) a monthly limit; admins only."""
        if not caller.admin:
            raise admins_only("SetBudget")
        bad: list[FieldViolation] = []
        problem = subject_problem(owner)
        if problem:
            bad.append(FieldViolation("owner", "required: the user id the limit applies to"))
        bad += validation.check_label(project, "project", validation.MAX_PROJECT)
        if limit_cents < 0:
            bad.append(FieldViolation("monthly_limit_cents", "must be 0 (no limit) or more"))
        if bad:
            raise invalid(bad)
        budget = self.store.set_budget(owner, project, limit_cents)
        self.stale()
        return _limit(budget, self.store.month_spend(owner, month_of(clock.now_us())))

    def usage(self, caller: Caller, owner: str) -> Usage:
        """An owner's spend this month, limits and queue: the caller's own, or
        any owner's for an admin."""
        owner = owner or caller.user
        if owner != caller.user and not caller.admin:
            raise admins_only("reading another owner's usage")
        month = month_of(clock.now_us())
        self.counted.flush(owner)  # the costs of the runs that ended here are in
        spend = self.store.month_spend(owner, month)
        budgets = self.store.owner_budgets(owner)
        limits = [_limit(budget, spend) for budget in budgets if budget.limit_cents > 0]
        projects = list(spend.projects.items())
        return Usage(
            owner=owner,
            month=month,
            spent_cents=spend.spent_cents,
            projects=sorted(projects, key=lambda p: (-p[1], p[0])),
            limits=sorted(limits, key=lambda limit: (limit.project != "", limit.project)),
            queued=self.cap.open_count(owner),
            max_queued=self.cap.cap,
            cost_unknown_jobs=spend.cost_unknown_jobs,
        )

    # ---- caches -----------------------------------------------------------------

    def stale(self) -> None:
        """Make the next check re-read what changed (this server wrote a limit)."""
        with self._lock:
            self._reloads.forget()

    def _reload_if_stale(self, alone: bool = False) -> None:
        """Re-read the limits changed since the last read, if that read is older
        than CACHE_SECONDS (for a leader `alone`, whose every limit and hold is
        written here, RECHECK_SECONDS) or `stale` was called (the first read
        takes them all). The window starts
        from when the last read began, not from the newest stamp read: limits
        set in one burst long ago are not read again and again. The query runs
        without the lock: the event loop takes it on every submit."""
        now = time.monotonic()
        with self._lock:
            if not self._reloads.due(alone):
                return
            since = 0 if self._last_read_us is None else self._last_read_us - CHANGE_MARGIN_US
        began_us = clock.now_us()
        changed = self.store.changed_budgets(since)
        with self._lock:
            for budget in changed:
                # Two reads may cross: keep the later version of a limit.
                key = budget_key(budget.owner, budget.project)
                kept = self._budgets.get(key)
                if kept is None or budget.changed_us >= kept.changed_us:
                    self._budgets[key] = budget
            # The submit path's reads (`alone` False) do not know whether this
            # server is alone: they leave the leader's rechecks as they were.
            self._reloads.read(alone or None, now)
            self._last_read_us = max(self._last_read_us or 0, began_us)

    def _scopes(self, owner: str, project: str) -> list[Budget]:
        """The cached limits (limit > 0) over a job of `owner` in `project` (lock held)."""
        keys = [budget_key(owner, "")] + ([budget_key(owner, project)] if project else [])
        found = [self._budgets.get(key) for key in keys]
        return [budget for budget in found if budget is not None and budget.limit_cents > 0]

    def _limits(self, owner: str, project: str, max_age: float) -> list[Limit]:
        """The limits over a job of `owner` in `project`, with this month's
        spend read at most `max_age` seconds ago."""
        self._reload_if_stale()
        with self._lock:
            scopes = self._scopes(owner, project)
        if not scopes:
            return []
        key = usage_key(owner, month_of(clock.now_us()))
        now = time.monotonic()
        with self._lock:
            cached = self._spend.get(key)
        if cached is None or now - cached[0] > max_age:
            cached = (now, self.store.month_spend(owner, month_of(clock.now_us())))
            with self._lock:
                if len(self._spend) > MAX_CACHED_OWNERS:
                    _drop_older(self._spend, now - SPEND_CACHE_SECONDS)
                self._spend[key] = cached
        return [_limit(budget, cached[1]) for budget in scopes]


def _drop_older(cache: dict[str, tuple[float, Any]], before: float) -> None:
    """Remove the entries of `cache` read before `before` (they would be read again)."""
    for key in [key for key, (read, _) in cache.items() if read < before]:
        del cache[key]


def _limit(budget: Budget, spend: MonthSpend) -> Limit:
    """A stored limit with the spend it covers in the month of `spend`."""
    project = budget.project
    spent = spend.projects.get(project, 0) if project else spend.spent_cents
    return Limit(budget.owner, project, budget.limit_cents, spent, budget.updated_us)


def budget_refusal(limit: Limit, cents: int = 0) -> ServiceError:
    """RESOURCE_EXHAUSTED: `limit` is spent, or `cents` (a low estimate) would pass it."""
    if limit.exhausted:
        why = f"{limit.describe()} ({limit.spent_cents} cents this month):"
        why += " no new jobs until it is raised or the month turns"
    else:
        left = limit.limit_cents - limit.spent_cents
        why = (
            f"the low estimate of {cents} cents would pass the {left} cents left of the monthly"
            f" budget of {limit.subject}: ask for fewer words or a cheaper model, or raise the budget"
        )
    return quota_exceeded(
        "BUDGET_EXHAUSTED",
        limit.subject,
        why,
        {
            "owner": limit.owner,
            "project": limit.project,
            "monthly_limit_cents": str(limit.limit_cents),
            "spent_cents": str(limit.spent_cents),
            **({"estimate_low_cents": str(cents)} if cents else {}),
        },
    )
