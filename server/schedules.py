"""Schedules: a job or bulk job created on a cron schedule, once per tick.

The dispatcher's leader calls `tick()` on each housekeeping pass. A due
schedule (an index range search on `next_run_us`) fires its latest tick at
or before now: ticks missed while no server ran are not replayed, only the
latest of them is. What a tick creates carries a request key made of the
schedule id and the tick time, so a tick repeated after a crash, or by a
new leader, finds what it made the first time instead of making it again;
then one conditional update on the expected `next_run_us` moves the
schedule on. A tick submits as its owner would (the same path as SubmitJob
and CreateBulkJob, templates, budgets and all); a refusal is kept as
`last_error` and the schedule moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bson import ObjectId
from croniter import croniter
from genjobs.v1 import jobs_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from pymongo.errors import PyMongoError

from server import clock, validation
from server.auth import Caller
from server.errors import FieldViolation, ServiceError, invalid
from server.jobs import check_priority_allowed
from server.schedule_store import ACTIVE, PAUSED, ScheduleStore, tick_key
from server.store import Doc, Page, submission_key
from server.templates import BULK_JOB, JOB, KINDS, Templates, check_name, check_request, stored_request

log = logging.getLogger(__name__)

TEMPLATE = "template"  # a schedule's third kind of target: a template's name
DUE_BATCH = 100  # schedules fired per housekeeping pass at most; the rest on the next
TICK_SUBMIT_SECONDS = 30.0  # a tick's submit waits this long for the event loop's answer
STATES = (ACTIVE, PAUSED)

# What a tick calls to create its job or bulk job: (owner, request, origin fields) ->
# the job document, or the bulk job's view.
Submitter = Callable[[Caller, Any, Doc], Coroutine[Any, Any, Any]]


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
                "with an optional first field of seconds (e.g. '*/5 * * * * *')",
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

    def __init__(self, store: ScheduleStore, templates: Templates) -> None:
        self.store = store
        self.templates = templates
        # Set by the app once its servicers exist: a tick submits as SubmitJob
        # and CreateBulkJob do, on the server's event loop.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.submitters: dict[str, Submitter] = {}

    # ---- RPCs -----------------------------------------------------------------

    def create(
        self,
        caller: Caller,
        cron: str,
        time_zone: str,
        kind: str,
        target: Message | str | None,
        request_id: str = "",
    ) -> Doc:
        """Start a schedule; the same request_id from the same owner returns the first."""
        cron = cron.strip()
        bad = check_cron(cron, time_zone)
        bad += validation.check_label(request_id, "request_id", validation.MAX_REQUEST_ID)
        fields: Doc = {"kind": kind, "request": b"", "template": ""}
        if target is None:
            bad.append(FieldViolation("target", "exactly one of job, bulk_job or template is required"))
        elif isinstance(target, str):
            bad += check_name(target, TEMPLATE)
            fields["template"] = target
        else:
            request = KINDS[kind]()
            request.CopyFrom(target)
            request.ClearField("request_id")  # each tick's job has its own key
            fields["request"] = request.SerializeToString()
            if not bad:
                # As if submitted now: through the template it names, if any.
                resolved, _ = self.templates.resolve(caller.user, request)  # type: ignore[type-var]
                bad += check_request(kind, resolved, kind)
                check_standing(caller, resolved)
        if bad:
            raise invalid(bad)
        if kind == TEMPLATE:
            # NOT_FOUND, or a HIGH priority this token may not ask for: now, not at every tick.
            check_standing(caller, stored_request(self.templates.get(caller, fields["template"])))
        now = clock.now_us()
        oid = ObjectId()
        ck = self.store.store.order_keys.next()
        doc = {
            "_id": oid,
            "owner": caller.user,
            # Ticks submit as the owner with this token's standing: HIGH priority
            # jobs (from a template too) need it.
            "premium": caller.premium or caller.admin,
            "cron": cron,
            "time_zone": time_zone,
            **fields,
            "state": ACTIVE,
            "next_run_us": next_tick(cron, time_zone, now),
            "last_run_us": 0,
            "last_job_id": "",
            "last_bulk_job_id": "",
            "run_count": 0,
            "last_error": "",
            "request_id": request_id,
            "request_key": submission_key(caller.user, request_id, oid, "schedule"),
            "ck": ck,
            "updated_us": ck,
        }
        return self.store.insert_schedule(doc)

    def get(self, caller: Caller, schedule_id: str) -> Doc:
        """One of the caller's schedules."""
        return self.store.get_schedule(caller.user, schedule_id)

    def list_schedules(self, caller: Caller, states: list[str], page_size: int, token: str) -> Page:
        """A page of the caller's schedules, newest first."""
        size, bad = validation.page_size(page_size)
        bad += validation.check_choices("states", states, STATES, "SCHEDULE_STATE_")
        if bad:
            raise invalid(bad)
        return self.store.list_schedules(caller.user, states, size, token)

    def pause(self, caller: Caller, schedule_id: str) -> Doc:
        """No more ticks until resumed (a paused schedule stays paused)."""
        return self.store.set_state(caller.user, schedule_id, ACTIVE, {"state": PAUSED, "next_run_us": 0})

    def resume(self, caller: Caller, schedule_id: str) -> Doc:
        """Tick again from the first tick after now (an active schedule stays as it is)."""
        doc = self.store.get_schedule(caller.user, schedule_id)
        changes = {"state": ACTIVE, "next_run_us": next_tick(doc["cron"], doc["time_zone"], clock.now_us())}
        return self.store.set_state(caller.user, schedule_id, PAUSED, changes)

    def delete(self, caller: Caller, schedule_id: str) -> None:
        """Remove a schedule; the jobs it created stay."""
        self.store.delete_schedule(caller.user, schedule_id)

    # ---- ticks (the dispatcher leader's thread) -------------------------------

    def tick(self) -> None:
        """Fire every due schedule once (the dispatcher leader, about once a second)."""
        now = clock.now_us()
        for doc in self.store.due_schedules(now, DUE_BATCH):
            try:
                self._fire(doc, now)
            except (PyMongoError, TimeoutError) as exc:  # still due: the next pass tries again
                log.warning("schedule %s: tick not done (%s)", doc["_id"], exc)
            except Exception:  # a bug here must not stop the other schedules or the dispatcher
                log.exception("schedule %s: tick failed", doc["_id"])

    def _fire(self, doc: Doc, now: int) -> None:
        expected = doc["next_run_us"]
        # The latest tick due; earlier ones missed while no server ran are skipped.
        at = max(expected, latest_tick(doc["cron"], doc["time_zone"], now))
        schedule_id = str(doc["_id"])
        origin = {"schedule_id": schedule_id, "request_key": tick_key(doc["owner"], schedule_id, at)}
        changes: Doc = {
            "next_run_us": next_tick(doc["cron"], doc["time_zone"], max(at, now)),
            "last_run_us": at,
            "last_error": "",
        }
        request = self._request(doc)
        try:
            made = self._submit(Caller(user=doc["owner"], premium=doc.get("premium", False)), request, origin)
        except ServiceError as exc:  # a deleted template, a spent budget, a refused field
            log.info("schedule %s: tick created nothing: %s", schedule_id, exc)
            changes["last_error"] = f"{exc.reason}: {exc.message}"
            self.store.advance(doc["_id"], expected, changes, ran=False)
            return
        key = "last_job_id" if isinstance(request, KINDS[JOB]) else "last_bulk_job_id"
        changes[key] = made
        self.store.advance(doc["_id"], expected, changes, ran=True)

    def _request(self, doc: Doc) -> Message:
        """What a tick submits: the schedule's request, or a request naming its template."""
        if doc["kind"] != TEMPLATE:
            return stored_request(doc)
        kind = self.store.template_kind(doc["owner"], doc["template"]) or JOB  # none: NOT_FOUND on submit
        return json_format.ParseDict({"template": doc["template"]}, KINDS[kind]())

    def _submit(self, caller: Caller, request: Message, origin: Doc) -> str:
        """Submit `request` as the schedule's owner on the server's event loop; the id made."""
        kind = JOB if isinstance(request, KINDS[JOB]) else BULK_JOB
        if self.loop is None or kind not in self.submitters:
            raise RuntimeError("schedules are not wired to the job services")
        call = self.submitters[kind](caller, request, origin)
        made: Any = asyncio.run_coroutine_threadsafe(call, self.loop).result(TICK_SUBMIT_SECONDS)
        return str(made.doc["_id"] if kind == BULK_JOB else made["_id"])


def check_standing(caller: Caller, request: Message) -> None:
    """PERMISSION_DENIED when a schedule's request asks for a priority its creator may not."""
    if getattr(request, "priority", 0) == jobs_pb2.PRIORITY_HIGH:
        check_priority_allowed(caller, "HIGH")
