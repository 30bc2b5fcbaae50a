"""SubmitJob's and CreateBulkJob's requests, through the template they name:
the one operation the servicers and a schedule's tick both call.

A request reads as plain values through `RequestValues` (the API's
conversion, handed in by the wiring), so that a tick, which holds the
request its schedule stored, never goes through the API layer. Entitlement
(HIGH needs premium), the budgets and every other rule are applied below,
in `Jobs.submit` and `Bulks.create`, for both callers alike.
"""

from __future__ import annotations

import asyncio

from genjobs.server.model.caller import Caller
from genjobs.server.model.records import NO_ORIGIN, Job, Origin
from genjobs.server.services.bulk import Bulks, BulkView
from genjobs.server.services.jobs import Jobs
from genjobs.server.services.templates import RequestValues, Templates
from genjobs.v1 import bulk_pb2, jobs_pb2


class Intake:
    """Queue what a SubmitJobRequest or CreateBulkJobRequest asks for, as `caller`."""

    def __init__(self, jobs: Jobs, bulks: Bulks, templates: Templates, convert: RequestValues) -> None:
        self.jobs = jobs
        self.bulks = bulks
        self.templates = templates
        self.convert = convert

    async def submit(
        self, caller: Caller, request: jobs_pb2.SubmitJobRequest, origin: Origin = NO_ORIGIN
    ) -> Job:
        """SubmitJob as `caller` (a schedule's tick too, with its `origin` fields);
        the stored job. Runs on the event loop (see `Jobs.submit`)."""
        request, origin = await self.templates.apply(caller.user, request, origin)
        convert = self.convert
        return await self.jobs.submit(
            caller,
            convert.mode_name(request.mode),
            convert.params_of(request.params),
            request.request_id,
            request.project,
            request.max_attempts,
            notify=convert.notify_targets(request),
            origin=origin,
            priority=convert.priority_name(request.priority),
            schedule_us=convert.schedule_us(request),
        )

    async def create_bulk(
        self, caller: Caller, request: bulk_pb2.CreateBulkJobRequest, origin: Origin = NO_ORIGIN
    ) -> BulkView:
        """CreateBulkJob as `caller` (a schedule's tick too, with its `origin`
        fields); the bulk job made."""
        request, origin = await self.templates.apply(caller.user, request, origin)
        convert = self.convert
        return await asyncio.to_thread(
            self.bulks.create,
            caller,
            convert.mode_name(request.mode),
            [convert.params_of(item) for item in request.items],
            request.request_id,
            request.project,
            convert.notify_targets(request),
            origin,
            convert.priority_name(request.priority),
            convert.schedule_us(request),
        )
