"""JobService: protobuf in, a `Jobs` call, protobuf out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from google.protobuf import empty_pb2

from genjobs.server.api import convert
from genjobs.server.api.servicers.common import rpc
from genjobs.server.api.watch import Heartbeat, StreamCap, check_resume, follow, follow_all
from genjobs.server.model.caller import current_caller
from genjobs.server.model.records import Job
from genjobs.server.model.states import final
from genjobs.server.services.budgets import Budgets, Limit
from genjobs.server.services.events import Event, EventHub, job_key, owner_key
from genjobs.server.services.intake import Intake
from genjobs.server.services.jobs import Jobs
from genjobs.server.services.progress import ExternalProgress
from genjobs.server.storage.events import SNAPSHOT
from genjobs.server.storage.paging import JobFilter
from genjobs.v1 import jobs_pb2, jobs_pb2_grpc


def job_filter(request: jobs_pb2.ListJobsRequest | jobs_pb2.GetJobStatsRequest) -> JobFilter:
    """The domain filter of a ListJobs or GetJobStats request."""
    filters = JobFilter(
        created_after_us=convert.timestamp_us(
            request.created_after, request.HasField("created_after"), "created_after"
        ),
        created_before_us=convert.timestamp_us(
            request.created_before, request.HasField("created_before"), "created_before"
        ),
        project=request.project,
    )
    if isinstance(request, jobs_pb2.ListJobsRequest):
        # Each value once: a repeated field of thousands of copies is a short filter.
        filters.statuses = list(dict.fromkeys(convert.status_name(s) for s in request.statuses))
        filters.modes = list(dict.fromkeys(convert.mode_name(m) for m in request.modes))
        filters.query = request.query
        filters.bulk_job_id = request.bulk_job_id
        filters.schedule_id = request.schedule_id
        filters.show_archived, filters.archived_only = request.show_archived, request.archived_only
        filters.priorities = list(dict.fromkeys(convert.priority_name(p) for p in request.priorities))
    return filters


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """The JobService RPCs."""

    def __init__(
        self,
        jobs: Jobs,
        intake: Intake,
        hub: EventHub,
        progress: ExternalProgress,
        budgets: Budgets,
        streams: StreamCap,
        stages: Sequence[str],
    ) -> None:
        self.jobs = jobs
        self.intake = intake  # SubmitJob's operation, which a schedule's tick calls too
        # The stages the server's generator declares: every Job says them.
        self.stages = tuple(stages)
        self.hub = hub
        self.progress = progress
        self.budgets = budgets
        self.streams = streams  # open WatchJob streams per owner

    def job(self, job: Job, full: bool = True) -> jobs_pb2.Job:
        """A job as the Job message, with the declared stages."""
        return convert.job(job, full, self.stages)

    @rpc
    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        if request.validate_only:
            job, estimate = await self.intake.preview(current_caller(), request)
            message = self.job(job)
            message.estimate.CopyFrom(convert.estimate(estimate))
            return message
        return self.job(await self.intake.submit(current_caller(), request))

    @rpc
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        return self.job(await asyncio.to_thread(self.jobs.get, current_caller(), request.id))

    @rpc
    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        page = await asyncio.to_thread(
            self.jobs.list_jobs, current_caller(), job_filter(request), request.page_size, request.page_token
        )
        return jobs_pb2.ListJobsResponse(
            jobs=[self.job(j, full=request.view == jobs_pb2.JOB_VIEW_FULL) for j in page.jobs],
            next_page_token=page.next_token,
            total_size=page.total,
        )

    @rpc
    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        return self.job(await asyncio.to_thread(self.jobs.cancel, current_caller(), request.id))

    @rpc
    async def RetryJob(
        self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        job = await asyncio.to_thread(self.jobs.retry, current_caller(), request.id, request.request_id)
        return self.job(job)

    @rpc
    async def DeleteJob(
        self, request: jobs_pb2.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await asyncio.to_thread(self.jobs.delete, current_caller(), request.id)
        return empty_pb2.Empty()

    @rpc
    async def RunBulkOperation(
        self, request: jobs_pb2.RunBulkOperationRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.RunBulkOperationResponse:
        filters = JobFilter(
            modes=list(dict.fromkeys(convert.mode_name(m) for m in request.modes)),
            bulk_job_id=request.bulk_job_id,
            project=request.project,
        )
        operation = convert.operation_name(request.operation)
        result = await asyncio.to_thread(
            self.jobs.run_bulk_operation, current_caller(), operation, filters, request.validate_only
        )
        return jobs_pb2.RunBulkOperationResponse(
            job_ids=result.job_ids,
            affected_count=result.affected,
            remaining_count=result.remaining,
        )

    @rpc
    async def GetJobStats(
        self, request: jobs_pb2.GetJobStatsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobStatsResponse:
        stats = await asyncio.to_thread(self.jobs.stats, current_caller(), job_filter(request))
        return jobs_pb2.GetJobStatsResponse(
            total_jobs=stats.total,
            by_status=[
                jobs_pb2.StatusCount(status=jobs_pb2.JobStatus.Value("JOB_STATUS_" + s), count=n)
                for s, n in sorted(stats.by_status.items())
            ],
            by_mode=[
                jobs_pb2.ModeCount(mode=jobs_pb2.Mode.Value("MODE_" + m), count=n)
                for m, n in sorted(stats.by_mode.items())
            ],
            total_cost_cents=stats.cost_cents,
            cost_unknown_jobs=stats.cost_unknown,
            mean_duration_seconds=stats.mean_duration,
            mean_duration=convert.duration(stats.mean_duration),
            failure_rate=stats.failure_rate,
        )

    @rpc
    async def WatchJob(self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        caller = current_caller()
        key = job_key(request.id)
        after = max(0, request.after_sequence)
        with self.streams.hold(caller.user), self.hub.subscribe(key) as queue:
            known = None if after else self.jobs.known_now(caller, request.id)
            if known is None:
                doc, stored = await asyncio.to_thread(self.jobs.history, caller, request.id, after)
            else:
                doc, stored = known, []
            check_resume("job", request.id, after, doc["seq"])
            if after == doc["seq"] and final(doc["status"]):
                return  # resumed after the end: nothing more will come
            replay = [Event(key, e["seq"], e, final(e["job"]["status"])) for e in stored]
            newest = replay[-1].seq if replay else after
            if doc["seq"] > newest or after == 0:
                # The job as it is now stands for any change not kept as an event.
                snapshot = self.jobs.store.events.event_doc(doc, SNAPSHOT)
                replay.append(Event(key, doc["seq"], snapshot, final(doc["status"])))
            self.hub.note(key, max(after, doc["seq"]))
            async for event in follow(queue, replay, after):
                if isinstance(event, Heartbeat):
                    yield jobs_pb2.JobEvent(
                        type=jobs_pb2.JOB_EVENT_TYPE_HEARTBEAT, sequence=event.sequence, time=convert.now()
                    )
                else:
                    yield event.message(lambda e: convert.job_event(e, self.stages, self.jobs.told_why))

    @rpc
    async def WatchJobs(self, request: jobs_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        caller = current_caller()
        # One of the owner's watch streams, counted with WatchJob's under the same cap.
        with self.streams.hold(caller.user), self.hub.subscribe(owner_key(caller.user)) as queue:
            async for event in follow_all(queue):
                if isinstance(event, Heartbeat):
                    yield jobs_pb2.JobEvent(type=jobs_pb2.JOB_EVENT_TYPE_HEARTBEAT, time=convert.now())
                elif not request.project or event.doc["job"].get("project", "") == request.project:
                    yield event.message(lambda e: convert.job_event(e, self.stages))

    @rpc
    async def ReportProgress(
        self, request: jobs_pb2.ReportProgressRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await asyncio.to_thread(
            self.progress.report,
            request.job_id,
            request.token,
            request.percentage,
            request.stage,
            request.stage_progress,
            request.message,
        )
        return empty_pb2.Empty()

    @rpc
    async def SetBudget(
        self, request: jobs_pb2.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Budget:
        limit = await asyncio.to_thread(
            self.budgets.set_budget,
            current_caller(),
            request.owner,
            request.project,
            request.monthly_limit_cents,
        )
        return budget_message(limit)

    @rpc
    async def GetUsage(
        self, request: jobs_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Usage:
        usage = await asyncio.to_thread(self.budgets.usage, current_caller(), request.owner)
        return jobs_pb2.Usage(
            owner=usage.owner,
            month=usage.month,
            spent_cents=usage.spent_cents,
            projects=[jobs_pb2.ProjectSpend(project=p, spent_cents=c) for p, c in usage.projects],
            budgets=[budget_message(limit) for limit in usage.limits],
            queued_jobs=usage.queued,
            max_queued_jobs=usage.max_queued,
            cost_unknown_jobs=usage.cost_unknown_jobs,
        )

    @rpc
    async def SetTier(
        self, request: jobs_pb2.SetTierRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Tier:
        doc = await asyncio.to_thread(self.jobs.tiers.set_tier, current_caller(), request.owner, request.tier)
        return jobs_pb2.Tier(
            owner=doc["owner"], tier=doc["tier"], update_time=convert.timestamp(doc["updated_us"])
        )


def budget_message(limit: Limit) -> jobs_pb2.Budget:
    """A limit and its spend as the Budget message."""
    return jobs_pb2.Budget(
        owner=limit.owner,
        project=limit.project,
        monthly_limit_cents=limit.limit_cents,
        spent_cents=limit.spent_cents,
        exhausted=limit.exhausted,
        update_time=convert.timestamp(limit.updated_us),
    )
