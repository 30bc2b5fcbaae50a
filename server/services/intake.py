"""SubmitJob's and CreateBulkJob's requests, through the template they name:
the one operation the servicers and a schedule's tick both call.

A request reads as plain values through `RequestValues` (the API's
conversion, handed in by the wiring), so that a tick, which holds the
request its schedule stored, never goes through the API layer. Entitlement
(HIGH needs premium), the budgets and every other rule are applied below,
in `Jobs.submit` and `Bulks.create`, for both callers alike; the model a
request names is checked here, and its cost estimated, against the
generator's catalog (`estimates.py`).
"""

from __future__ import annotations

import asyncio

from genjobs.server.model.caller import Caller
from genjobs.server.model.errors import invalid
from genjobs.server.model.records import NO_ORIGIN, Job, Origin
from genjobs.server.services.bulk import Bulks, BulkView
from genjobs.server.services.estimates import Estimate, Estimates
from genjobs.server.services.jobs import Jobs
from genjobs.server.services.templates import RequestValues, Templates
from genjobs.v1 import bulk_pb2, jobs_pb2


class Intake:
    """Queue what a SubmitJobRequest or CreateBulkJobRequest asks for, as `caller`."""

    def __init__(
        self, jobs: Jobs, bulks: Bulks, templates: Templates, convert: RequestValues, estimates: Estimates
    ) -> None:
        self.jobs = jobs
        self.bulks = bulks
        self.templates = templates
        self.convert = convert
        self.estimates = estimates  # the generator's models and prices

    async def submit(
        self, caller: Caller, request: jobs_pb2.SubmitJobRequest, origin: Origin = NO_ORIGIN
    ) -> Job:
        """SubmitJob as `caller` (a schedule's tick too, with its `origin` fields);
        the stored job. Runs on the event loop (see `Jobs.submit`)."""
        job, _ = await self._submit(caller, request, origin, False)
        return job

    async def preview(self, caller: Caller, request: jobs_pb2.SubmitJobRequest) -> tuple[Job, Estimate]:
        """SubmitJob with validate_only: the job as it would be, unstored, and its estimate."""
        job, estimate = await self._submit(caller, request, NO_ORIGIN, True)
        return job, await asyncio.to_thread(self.estimates.timed, estimate, 1)

    async def _submit(
        self, caller: Caller, request: jobs_pb2.SubmitJobRequest, origin: Origin, validate_only: bool
    ) -> tuple[Job, Estimate]:
        request, origin = await self.templates.apply(caller.user, request, origin)
        convert = self.convert
        mode, params = convert.mode_name(request.mode), convert.params_of(request.params)
        bad = self.estimates.check_models([params], "params")
        if bad:
            raise invalid(bad)
        estimate = self.estimates.of(mode, [params])
        job = await self.jobs.submit(
            caller,
            mode,
            params,
            request.request_id,
            request.project,
            request.max_attempts,
            notify=convert.notify_targets(request),
            origin=origin,
            priority=convert.priority_name(request.priority),
            schedule_us=convert.schedule_us(request),
            estimate_cents=estimate.low_cents,
            validate_only=validate_only,
        )
        return job, estimate

    async def create_bulk(
        self, caller: Caller, request: bulk_pb2.CreateBulkJobRequest, origin: Origin = NO_ORIGIN
    ) -> BulkView:
        """CreateBulkJob as `caller` (a schedule's tick too, with its `origin`
        fields); the bulk job made."""
        view, _ = await self._create_bulk(caller, request, origin, False)
        return view

    async def preview_bulk(
        self, caller: Caller, request: bulk_pb2.CreateBulkJobRequest
    ) -> tuple[BulkView, Estimate]:
        """CreateBulkJob with validate_only: the bulk job as it would be, unstored,
        and the estimate of its items together."""
        view, estimate = await self._create_bulk(caller, request, NO_ORIGIN, True)
        return view, await asyncio.to_thread(self.estimates.timed, estimate, view.total)

    async def _create_bulk(
        self, caller: Caller, request: bulk_pb2.CreateBulkJobRequest, origin: Origin, validate_only: bool
    ) -> tuple[BulkView, Estimate]:
        request, origin = await self.templates.apply(caller.user, request, origin)
        convert = self.convert
        mode = convert.mode_name(request.mode)
        items = [convert.params_of(item) for item in request.items]
        bad = self.estimates.check_models(items, "items[{i}]")
        if bad:
            raise invalid(bad)
        estimate = self.estimates.of(mode, items)
        view = await asyncio.to_thread(
            self.bulks.create,
            caller,
            mode,
            items,
            request.request_id,
            request.project,
            convert.notify_targets(request),
            origin,
            convert.priority_name(request.priority),
            convert.schedule_us(request),
            estimate.low_cents,
            validate_only,
        )
        return view, estimate
