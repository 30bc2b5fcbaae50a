"""Schedules: a job or bulk job created on a cron schedule, once per tick.

The dispatcher's leader calls `tick()` on each housekeeping pass (a leader
alone only when the next tick it knows of falls due, a schedule is made or
resumed here, or once a recheck: it keeps when that is). A due
schedule (an index range search on `next_run_us`) fires its latest tick at
or before now: ticks missed while no server ran are not replayed, only the
latest of them is. What a tick creates carries a request key made of the
schedule id and the tick time, so a tick repeated after a crash, or by a
new leader, finds what it made the first time instead of making it again;
then one conditional update on the expected `next_run_us` moves the
schedule on. A tick submits as its owner would (the same path as SubmitJob
and CreateBulkJob, templates, budgets and all); a refusal is kept as
`last_error` and the schedule moves on.

Abuse limits (issue 26): an owner has at most GENJOBS_MAX_SCHEDULES_PER_OWNER
schedules (a counter taken with one conditional write, storage/schedules.py); no
cron may tick more often than GENJOBS_MIN_SCHEDULE_INTERVAL_SECONDS; each pass
fires the due ticks round robin between owners (`fair_order`); a schedule
that keeps failing counts its failures in `last_error` and is logged once per
change of state, not per tick. A tick has no token: PRIORITY_HIGH runs only
while the owner holds the stored premium tier (server/services/entitlement.py), else
at NORMAL with `last_error` saying so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bson import ObjectId
from croniter import croniter
from google.protobuf import json_format
from google.protobuf.message import Message
from pymongo.errors import PyMongoError

from genjobs.server.dispatch.housekeeping import NextDue
from genjobs.server.model import clock
from genjobs.server.model.caller import Caller
from genjobs.server.model.errors import FieldViolation, ServiceError, invalid
from genjobs.server.model.records import Origin, Schedule
from genjobs.server.services import entitlement, validation
from genjobs.server.services.entitlement import HIGH, Tiers
from genjobs.server.services.intake import Intake
from genjobs.server.services.templates import (
    JOB,
    KINDS,
    Templates,
    check_name,
    check_request,
    stored_request,
)
from genjobs.server.storage.database import Doc
from genjobs.server.storage.paging import submission_key
from genjobs.server.storage.schedules import ACTIVE, PAUSED, SCHEDULES, ScheduleStore, fair_order, tick_key
from genjobs.v1 import bulk_pb2, jobs_pb2

log = logging.getLogger(__name__)

TEMPLATE = "template"  # a schedule's third kind of target: a template's name
DUE_BATCH = 100  # schedules fired per housekeeping pass at most; the rest on the next
DUE_SCAN = 1000  # the longest due schedules shared out between owners on each pass
RECOVERED_TICKS = 3  # good ticks in a row before a failing schedule is logged as running again
QUIET_SECONDS = 600  # the same refusal as the last logged, this soon after it, is not logged again
DAY_SECONDS = 23 * 3600  # the least gap of a daily tick (a day can be 23 hours at a DST change)
TICK_SUBMIT_SECONDS = 30.0  # a tick's submit waits this long for the event loop's answer
STATES = (ACTIVE, PAUSED)
T = TypeVar("T")
__all__ = ["Schedules", "check_cron", "fair_order", "latest_tick", "least_interval", "next_tick"]


def check_cron(cron: str, time_zone: str) -> list[FieldViolation]:
    """Violations for a cron expression (five fields, or six with seconds first,
    or an @alias such as @hourly) and an IANA time zone ("" is UTC)."""
    bad = []
    fields = cron.split()
    if not (len(fields) in (5, 6) or (len(fields) == 1 and cron.strip().startswith("@"))) or not (
        croniter.is_valid(cron, second_at_beginning=len(fields) == 6)
    ):
        bad.append(
            FieldViolation(
                "cron",
                "a cron expression: minute hour day-of-month month day-of-week, "
                "with an optional first field of seconds (e.g. '30 */5 * * * *')",
            )
        )
    if time_zone:
        try:
            ok = not validation.has_control(time_zone) and len(time_zone) <= 64 and bool(ZoneInfo(time_zone))
        except (ZoneInfoNotFoundError, ValueError):
            ok = False
        if not ok:
            bad.append(FieldViolation("time_zone", "an IANA time zone such as Europe/Berlin (empty: UTC)"))
    return bad


def least_interval(cron: str) -> int:
    """The least number of seconds between two ticks of `cron` (a valid one):
    from the finest field that lists more than one value, the least gap between
    neighbours, counting the wrap (second 59, then second 0 of the next minute).
    A lower bound: the wrap is counted even where the next minute is not a tick."""
    fields, _ = croniter.expand(cron, second_at_beginning=len(cron.split()) == 6)
    seconds = fields[5] if len(fields) > 5 else [0]
    for values, size, unit in ((seconds, 60, 1), (fields[0], 60, 60), (fields[1], 24, 3600)):
        listed = sorted(range(size) if "*" in values else {int(v) for v in values})
        if len(listed) > 1:
            gaps = [b - a for a, b in itertools.pairwise(listed)]
            return min([*gaps, size - listed[-1] + listed[0]]) * unit
    return DAY_SECONDS


def _cron(cron: str, time_zone: str, at_us: int) -> croniter:
    zone = ZoneInfo(time_zone or "UTC")
    # Exact to the microsecond (a float of epoch seconds is not): a tick at `at_us` is not "before" it.
    seconds, micros = divmod(at_us, 1_000_000)
    start = datetime.fromtimestamp(seconds, zone).replace(microsecond=micros)
    return croniter(cron, start, second_at_beginning=len(cron.split()) == 6)


def next_tick(cron: str, time_zone: str, after_us: int) -> int:
    """The first tick strictly after `after_us` (epoch microseconds)."""
    return clock.to_us(_cron(cron, time_zone, after_us).get_next(datetime))


def latest_tick(cron: str, time_zone: str, at_us: int) -> int:
    """The last tick at or before `at_us`."""
    return clock.to_us(_cron(cron, time_zone, at_us + 1).get_prev(datetime))


class Schedules:
    """The ScheduleService's domain, and the ticks the dispatcher leader fires."""

    def __init__(
        self,
        store: ScheduleStore,
        templates: Templates,
        tiers: Tiers,
        intake: Intake,
        loop: asyncio.AbstractEventLoop,
        max_per_owner: int = 100,
        min_interval_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.templates = templates
        self.tiers = tiers
        # A tick submits through the operation SubmitJob and CreateBulkJob call,
        # on the server's event loop (`loop`), where `Jobs.submit` runs.
        self.intake = intake
        self.loop = loop
        self.max_per_owner = max_per_owner
        self.min_interval_seconds = min_interval_seconds
        self.next_due = NextDue()  # a leader alone's: when the next tick falls due

    # ---- RPCs -----------------------------------------------------------------

    def create(
        self,
        caller: Caller,
        cron: str,
        time_zone: str,
        kind: str,
        target: Message | str | None,
        request_id: str = "",
    ) -> Schedule:
        """Start a schedule; the same request_id from the same owner returns the first."""
        cron = cron.strip()
        bad = check_cron(cron, time_zone)
        if not bad and least_interval(cron) < self.min_interval_seconds:
            bad.append(
                FieldViolation(
                    "cron",
                    f"ticks {least_interval(cron)} s apart; a schedule may tick at most once every "
                    f"{self.min_interval_seconds:g} s (GENJOBS_MIN_SCHEDULE_INTERVAL_SECONDS)",
                )
            )
        bad += validation.check_label(request_id, "request_id", validation.MAX_REQUEST_ID)
        raw, template_name = b"", ""
        if target is None:
            bad.append(FieldViolation("target", "exactly one of job, bulk_job or template is required"))
        elif isinstance(target, str):
            bad += check_name(target, TEMPLATE)
            template_name = target
        else:
            request = KINDS[kind]()
            request.CopyFrom(target)
            request.ClearField("request_id")  # each tick's job has its own key
            raw = request.SerializeToString()
            if not bad:
                # As if submitted now: through the template it names, if any.
                resolved, _ = self.templates.resolve(caller.user, request)  # type: ignore[type-var]
                bad += check_request(kind, resolved, kind, self.templates.convert)
                self.check_standing(caller, resolved)
        if bad:
            raise invalid(bad)
        if kind == TEMPLATE:
            # NOT_FOUND, or a HIGH priority this caller may not ask for: now, not at every tick.
            template = self.templates.get(caller, template_name)
            self.check_standing(caller, stored_request(template.kind, template.request))
        now = clock.now_us()
        oid = ObjectId()
        ck = self.store.order_keys.next()
        schedule = Schedule(
            id=str(oid),
            owner=caller.user,
            cron=cron,
            kind=kind,
            time_zone=time_zone,
            request=raw,
            template=template_name,
            state=ACTIVE,
            next_run_us=next_tick(cron, time_zone, now),
            request_id=request_id,
            request_key=submission_key(caller.user, request_id, oid, "schedule"),
            created_us=ck,
            updated_us=ck,
        )
        try:
            self.store.take_place(
                SCHEDULES, caller.user, self.max_per_owner, "GENJOBS_MAX_SCHEDULES_PER_OWNER"
            )
        except ServiceError:
            earlier = self.store.schedule_by_key(schedule.request_key) if request_id else None
            if earlier is None:
                raise
            return earlier  # a repeated create is answered, not refused
        stored: Schedule | None = None
        try:
            stored = self.store.insert_schedule(schedule)
            self.next_due.lower(stored.next_run_us)
            return stored
        finally:
            if stored is None or stored.id != schedule.id:  # nothing new stored: give the place back
                self.store.give_place(SCHEDULES, caller.user)

    def get(self, caller: Caller, schedule_id: str) -> Schedule:
        """One of the caller's schedules."""
        return self.store.get_schedule(caller.user, schedule_id)

    def list_schedules(
        self, caller: Caller, states: list[str], page_size: int, token: str
    ) -> tuple[list[Schedule], str]:
        """A page of the caller's schedules, newest first, and the next page's token."""
        size, bad = validation.page_size(page_size)
        bad += validation.check_choices("states", states, STATES, "SCHEDULE_STATE_")
        if bad:
            raise invalid(bad)
        return self.store.list_schedules(caller.user, states, size, token)

    def pause(self, caller: Caller, schedule_id: str) -> Schedule:
        """No more ticks until resumed (a paused schedule stays paused)."""
        return self.store.set_state(caller.user, schedule_id, ACTIVE, PAUSED, 0)

    def resume(self, caller: Caller, schedule_id: str) -> Schedule:
        """Tick again from the first tick after now (an active schedule stays as it is)."""
        found = self.store.get_schedule(caller.user, schedule_id)
        next_run_us = next_tick(found.cron, found.time_zone, clock.now_us())
        resumed = self.store.set_state(caller.user, schedule_id, PAUSED, ACTIVE, next_run_us)
        self.next_due.lower(resumed.next_run_us)
        return resumed

    def delete(self, caller: Caller, schedule_id: str) -> None:
        """Remove a schedule; the jobs it created stay."""
        self.store.delete_schedule(caller.user, schedule_id)

    def check_standing(self, caller: Caller, request: Message) -> None:
        """PERMISSION_DENIED when a schedule's request asks for a priority its creator may not."""
        if getattr(request, "priority", 0) == jobs_pb2.PRIORITY_HIGH:
            entitlement.require(caller, HIGH, self.tiers)

    # ---- ticks (the dispatcher leader's thread) -------------------------------

    def tick(self, alone: bool = False, recheck: bool = True) -> None:
        """Fire every due schedule once (the dispatcher leader, about once a
        second). A leader `alone` writes every schedule here: it reads them
        only when the next tick falls due, or at a `recheck` (for a schedule
        written by hand), and then reads when the one after falls due."""
        now = clock.now_us()
        if not alone:
            self.next_due.forget()  # another server may make or move one
        elif not recheck and not self.next_due.due(now):
            return
        version = self.next_due.reading()
        due = self.store.due_schedules(now, DUE_SCAN, DUE_BATCH)
        self._fire_all(due, now)
        if alone:
            # Those left due (a failed tick, or more than a batch) are read again at the next pass.
            self.next_due.read(version, now if len(due) >= DUE_BATCH else self.store.next_tick_us())

    def _fire_all(self, due: list[Schedule], now: int) -> None:
        for doc in due:
            try:
                self._fire(doc, now)
            except (PyMongoError, TimeoutError) as exc:  # still due: the next pass tries again
                if self.store.outage.failed(exc, f"schedule {doc.id}"):
                    return  # the other due schedules would fail the same way
                log.warning("schedule %s: tick not done (%s)", doc.id, exc)
            except Exception:  # a bug here must not stop the other schedules or the dispatcher
                log.exception("schedule %s: tick failed", doc.id)

    def _fire(self, doc: Schedule, now: int) -> None:
        expected = doc.next_run_us
        # The latest tick due; earlier ones missed while no server ran are skipped.
        at = max(expected, latest_tick(doc.cron, doc.time_zone, now))
        schedule_id = doc.id
        origin = Origin(schedule_id=schedule_id, request_key=tick_key(doc.owner, schedule_id, at))
        changes: Doc = {
            # Never sooner than the least interval after this tick: a schedule stored
            # before the limit (or under a lower one) ticks no faster than it allows.
            "next_run_us": next_tick(
                doc.cron, doc.time_zone, max(at, now, at + int(self.min_interval_seconds * 1e6) - 1)
            ),
            "last_run_us": at,
        }
        owner = Caller(user=doc.owner)  # no token at a tick: only the owner's stored tier counts
        try:
            request = self._request(doc)
            note = self._entitled_priority(owner, request)
            made = self._submit(owner, request, origin)
        except ServiceError as exc:  # a deleted template, a spent budget, a refused field
            self._note(doc, changes, at, exc.reason, f"{exc.reason}: {exc.message}", failed=True)
            self.store.advance(doc.id, expected, changes, ran=False)
            return
        key = "last_job_id" if isinstance(request, KINDS[JOB]) else "last_bulk_job_id"
        changes[key] = made
        self._note(doc, changes, at, "PRIORITY_NOT_ALLOWED" if note else "", note, failed=False)
        self.store.advance(doc.id, expected, changes, ran=True)

    def _entitled_priority(self, owner: Caller, request: Message) -> str:
        """Run `request` at NORMAL when it (or its template, as it is now) asks
        for HIGH and the owner is not entitled to it now; what to tell them."""
        asked: Any = request  # a SubmitJobRequest or a CreateBulkJobRequest: both have these fields
        resolved = self.templates.resolve(owner.user, asked)[0] if asked.template else asked
        if resolved.priority != jobs_pb2.PRIORITY_HIGH or entitlement.entitled(owner, HIGH, self.tiers):
            return ""
        asked.priority = jobs_pb2.PRIORITY_NORMAL  # over the template's
        return (
            f"PRIORITY_NOT_ALLOWED: ran at PRIORITY_NORMAL: {owner.user} does not hold the tier "
            f'"premium" that PRIORITY_HIGH needs at each tick (an admin grants it: genjobs tier set)'
        )

    def _note(self, doc: Schedule, changes: Doc, at: int, state: str, error: str, failed: bool) -> None:
        """Keep how the tick went in `changes`: `last_error` (with how many ticks in a
        row have failed, and since when), and log only when the state changes.

        The state logged (`logged`) changes to a refusal at once, and back to
        "runs" only after RECOVERED_TICKS good ticks in a row. The same refusal
        as the last one logged, within QUIET_SECONDS of it, is not logged again
        (nor its end): a schedule that flaps (an owner at the queued-jobs cap,
        a tick in a few let through) logs once, not at every turn."""
        failed_ticks = doc.failed_ticks + 1 if failed else 0
        since = doc.failing_since_us if failed_ticks > 1 else (at if failed else 0)
        if failed_ticks > 1:
            when = datetime.fromtimestamp(since / 1e6, UTC).isoformat(timespec="seconds")
            error = f"{error} ({failed_ticks} ticks in a row since {when})"
        good_ticks = 0 if state else doc.good_ticks + 1
        changes.update(
            last_error=error,
            failing=state,
            failed_ticks=failed_ticks,
            failing_since_us=since,
            good_ticks=good_ticks,
        )
        logged = doc.logged
        schedule_id, owner = doc.id, doc.owner
        if state and state != logged:
            recent = doc.logged_reason == state and at - doc.logged_us < QUIET_SECONDS * 1e6
            if not recent:
                changes.update(logged=state, logged_reason=state, logged_us=at)
                log.warning(
                    "schedule %s of %s: %s (logged again only when this changes)", schedule_id, owner, error
                )
        elif not state and logged and good_ticks >= RECOVERED_TICKS:
            changes["logged"] = ""
            log.info("schedule %s of %s: its ticks run again (%d in a row)", schedule_id, owner, good_ticks)

    def _request(self, doc: Schedule) -> Message:
        """What a tick submits: the schedule's request, or a request naming its template."""
        if doc.kind != TEMPLATE:
            return stored_request(doc.kind, doc.request)
        kind = self.store.template_kind(doc.owner, doc.template) or JOB  # none: NOT_FOUND on submit
        return json_format.ParseDict({"template": doc.template}, KINDS[kind]())

    def _submit(self, caller: Caller, request: Message, origin: Origin) -> str:
        """Submit `request` as the schedule's owner on the server's event loop; the id made."""
        if isinstance(request, jobs_pb2.SubmitJobRequest):
            job = self._on_loop(self.intake.submit(caller, request, origin))
            return job.id
        assert isinstance(request, bulk_pb2.CreateBulkJobRequest)
        view = self._on_loop(self.intake.create_bulk(caller, request, origin))
        return str(view.doc["_id"])

    def _on_loop(self, call: Coroutine[Any, Any, T]) -> T:
        """`call`'s result, run on the server's event loop (a tick runs on the dispatcher's thread)."""
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(TICK_SUBMIT_SECONDS)
