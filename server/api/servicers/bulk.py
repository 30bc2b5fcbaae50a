"""BulkService: protobuf in, a `Bulks` call, protobuf out."""

from __future__ import annotations

import asyncio

import grpc

from genjobs.server.api import convert
from genjobs.server.api.servicers.common import rpc
from genjobs.server.api.watch import Heartbeat, StreamCap, check_resume, follow
from genjobs.server.model.caller import current_caller
from genjobs.server.services.bulk import SNAPSHOT, Bulks, bulk_event, is_final
from genjobs.server.services.events import EventHub, bulk_key
from genjobs.server.services.intake import Intake
from genjobs.v1 import bulk_pb2, bulk_pb2_grpc


class BulkServicer(bulk_pb2_grpc.BulkServiceServicer):
    """The BulkService RPCs."""

    def __init__(
        self,
        bulks: Bulks,
        intake: Intake,
        hub: EventHub,
        streams: StreamCap,
    ) -> None:
        self.bulks = bulks
        self.intake = intake  # CreateBulkJob's operation, which a schedule's tick calls too
        self.hub = hub
        self.streams = streams  # open WatchBulkJob streams per owner

    @rpc
    async def CreateBulkJob(
        self, request: bulk_pb2.CreateBulkJobRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkJob:
        if request.validate_only:
            view, estimate = await self.intake.preview_bulk(current_caller(), request)
            message = convert.bulk_job(view)
            message.estimate.CopyFrom(convert.estimate(estimate))
            return message
        return convert.bulk_job(await self.intake.create_bulk(current_caller(), request))

    @rpc
    async def GetBulkJob(
        self, request: bulk_pb2.GetBulkJobRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkJob:
        return convert.bulk_job(await asyncio.to_thread(self.bulks.get, current_caller(), request.id))

    @rpc
    async def ListBulkJobs(
        self, request: bulk_pb2.ListBulkJobsRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.ListBulkJobsResponse:
        statuses = list(dict.fromkeys(convert.bulk_status_name(s) for s in request.statuses))
        views, page = await asyncio.to_thread(
            self.bulks.list_bulk,
            current_caller(),
            statuses,
            request.project,
            request.page_size,
            request.page_token,
        )
        return bulk_pb2.ListBulkJobsResponse(
            bulk_jobs=[convert.bulk_job(v, with_items=False) for v in views],
            next_page_token=page.next_token,
            total_size=page.total,
        )

    @rpc
    async def PauseBulkJob(
        self, request: bulk_pb2.PauseBulkJobRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkJob:
        return convert.bulk_job(await asyncio.to_thread(self.bulks.pause, current_caller(), request.id))

    @rpc
    async def ResumeBulkJob(
        self, request: bulk_pb2.ResumeBulkJobRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkJob:
        return convert.bulk_job(await asyncio.to_thread(self.bulks.resume, current_caller(), request.id))

    @rpc
    async def CancelBulkJob(
        self, request: bulk_pb2.CancelBulkJobRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.BulkJob:
        return convert.bulk_job(await asyncio.to_thread(self.bulks.cancel, current_caller(), request.id))

    @rpc
    async def ListNotifications(
        self, request: bulk_pb2.ListNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> bulk_pb2.ListNotificationsResponse:
        page = await asyncio.to_thread(
            self.bulks.notifications,
            current_caller(),
            request.page_size,
            request.page_token,
            request.job_id,
            request.bulk_job_id,
        )
        return bulk_pb2.ListNotificationsResponse(
            notifications=[convert.notification(d) for d in page.docs],
            next_page_token=page.next_token,
        )

    @rpc
    async def WatchBulkJob(self, request: bulk_pb2.WatchBulkJobRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        # Every bulk event is a whole snapshot (counts and items), so resuming
        # needs only the newest one: nothing between is lost by skipping it.
        key = bulk_key(request.id)
        after = max(0, request.after_sequence)
        caller = current_caller()
        with self.streams.hold(caller.user), self.hub.subscribe(key) as queue:
            view = await asyncio.to_thread(self.bulks.get, caller, request.id)
            seq = view.doc["seq"]
            check_resume("bulk job", request.id, after, seq)
            if after == seq and is_final(view):
                return
            replay = [bulk_event(view, SNAPSHOT)] if seq > after or after == 0 else []
            self.hub.note(key, max(after, seq))
            async for event in follow(queue, replay, after):
                if isinstance(event, Heartbeat):
                    yield bulk_pb2.BulkJobEvent(
                        type=bulk_pb2.BULK_JOB_EVENT_TYPE_HEARTBEAT,
                        sequence=event.sequence,
                        time=convert.now(),
                    )
                else:
                    yield event.message(convert.bulk_event)
