"""ScheduleService: protobuf in, a `Schedules` call, protobuf out."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import empty_pb2

from genjobs.server.api import convert
from genjobs.server.api.servicers.common import rpc
from genjobs.server.model.caller import current_caller
from genjobs.server.services.schedules import Schedules
from genjobs.v1 import schedules_pb2, schedules_pb2_grpc


class ScheduleServicer(schedules_pb2_grpc.ScheduleServiceServicer):
    """The ScheduleService RPCs."""

    def __init__(self, schedules: Schedules) -> None:
        self.schedules = schedules

    @rpc
    async def CreateSchedule(
        self, request: schedules_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        kind = request.WhichOneof("target") or ""
        target = getattr(request, kind) if kind else None
        doc = await asyncio.to_thread(
            self.schedules.create,
            current_caller(),
            request.cron,
            request.time_zone,
            kind,
            target,
            request.request_id,
        )
        return convert.schedule(doc)

    @rpc
    async def GetSchedule(
        self, request: schedules_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        return convert.schedule(await asyncio.to_thread(self.schedules.get, current_caller(), request.id))

    @rpc
    async def ListSchedules(
        self, request: schedules_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.ListSchedulesResponse:
        states = list(dict.fromkeys(convert.schedule_state_name(s) for s in request.states))
        found, token = await asyncio.to_thread(
            self.schedules.list_schedules, current_caller(), states, request.page_size, request.page_token
        )
        return schedules_pb2.ListSchedulesResponse(
            schedules=[convert.schedule(s) for s in found], next_page_token=token
        )

    @rpc
    async def PauseSchedule(
        self, request: schedules_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        return convert.schedule(await asyncio.to_thread(self.schedules.pause, current_caller(), request.id))

    @rpc
    async def ResumeSchedule(
        self, request: schedules_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedules_pb2.Schedule:
        return convert.schedule(await asyncio.to_thread(self.schedules.resume, current_caller(), request.id))

    @rpc
    async def DeleteSchedule(
        self, request: schedules_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await asyncio.to_thread(self.schedules.delete, current_caller(), request.id)
        return empty_pb2.Empty()
