"""A typed Python client over the generated genjobs stubs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

# The exceptions live in client.errors; named here too, so that
# `from client.client import NotFound` goes on working.
from genjobs.client.errors import AlreadyExists as AlreadyExists
from genjobs.client.errors import FailedPrecondition as FailedPrecondition
from genjobs.client.errors import GenJobsError as GenJobsError
from genjobs.client.errors import InvalidArgument as InvalidArgument
from genjobs.client.errors import NotFound as NotFound
from genjobs.client.errors import ResourceExhausted as ResourceExhausted
from genjobs.client.errors import Unauthenticated as Unauthenticated
from genjobs.client.errors import Unavailable as Unavailable
from genjobs.client.errors import translate as translate
from genjobs.v1 import (
    bulk_pb2,
    bulk_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)

T = TypeVar("T")
# Told that a watch lost the server (the error) or reached it again (None).
ReconnectHook = Callable[[Exception | None], None]


def mode_value(mode: str | int) -> int:
    """A Mode from "topic", "TOPIC", "MODE_TOPIC" or the enum number ("": unspecified)."""
    if isinstance(mode, int):
        return mode
    if not mode:
        return 0
    name = mode.upper()
    return int(jobs_pb2.Mode.Value(name if name.startswith("MODE_") else "MODE_" + name))


def status_value(status: str | int) -> int:
    """A JobStatus from "failed", "JOB_STATUS_FAILED" or the enum number."""
    if isinstance(status, int):
        return status
    name = status.upper()
    prefix = "JOB_STATUS_"
    return int(jobs_pb2.JobStatus.Value(name if name.startswith(prefix) else prefix + name))


def priority_value(priority: str | int) -> int:
    """A Priority from "high", "PRIORITY_HIGH" or the enum number ("" : unspecified, normal)."""
    if isinstance(priority, int):
        return priority
    if not priority:
        return 0
    name = priority.upper()
    return int(jobs_pb2.Priority.Value(name if name.startswith("PRIORITY_") else "PRIORITY_" + name))


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp of a datetime (None stays None)."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def targets(pairs: Sequence[tuple[str, str]]) -> list[jobs_pb2.NotifyTarget]:
    """(channel, address) pairs as the `notify` list of a request."""
    return [jobs_pb2.NotifyTarget(channel=channel, address=address) for channel, address in pairs]


def params(
    topic: str = "",
    keywords: Sequence[str] = (),
    word_count: int = 0,
    tone: str = "",
    source_text: str = "",
    extra: Mapping[str, str] | None = None,
) -> jobs_pb2.GenerationParams:
    """GenerationParams from keyword arguments."""
    return jobs_pb2.GenerationParams(
        topic=topic,
        keywords=list(keywords),
        word_count=word_count,
        tone=tone,
        source_text=source_text,
        extra=dict(extra or {}),
    )


class GenJobsClient:
    """JobService and BulkService with Python types and exceptions by kind.

    >>> with GenJobsClient("localhost:50051", token) as jobs:
    ...     job = jobs.submit("topic", topic="Green tea")
    ...     for event in jobs.watch(job.id): print(event.job.progress.percentage)
    """

    def __init__(
        self,
        target: str,
        token: str,
        *,
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        tls: bool = False,
        ca_file: str = "",
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = channel or make_channel(target, tls, ca_file)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self.bulk = bulk_pb2_grpc.BulkServiceStub(self._channel)
        self.schedules = schedules_pb2_grpc.ScheduleServiceStub(self._channel)
        self.templates = templates_pb2_grpc.TemplateServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> GenJobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise translate(error) from None

    # ---- JobService -------------------------------------------------------

    def submit(
        self,
        mode: str | int,
        *,
        request_id: str = "",
        project: str = "",
        max_attempts: int = 0,
        generation: jobs_pb2.GenerationParams | None = None,
        notify: Sequence[tuple[str, str]] = (),
        notify_url: str = "",
        notify_email: str = "",
        template: str = "",
        priority: str | int = 0,
        schedule_time: datetime | None = None,
        validate_only: bool = False,
        **param_fields: Any,
    ) -> jobs_pb2.Job:
        """Queue a job: `submit("topic", topic="Tea", word_count=300)`; `priority`
        "low", "normal" or "high"; not started before `schedule_time` when given;
        `notify`: (channel, address) pairs, e.g. [("webhook", "https://...")];
        with `template`, mode "" takes the template's, and what is set overrides it.
        `validate_only`: store nothing; the job as it would be, with its `estimate`."""
        request = jobs_pb2.SubmitJobRequest(
            mode=mode_value(mode),  # type: ignore[arg-type]
            params=generation or params(**param_fields),
            request_id=request_id,
            project=project,
            max_attempts=max_attempts,
            notify=targets(notify),
            notify_url=notify_url,
            notify_email=notify_email,
            template=template,
            priority=priority_value(priority),  # type: ignore[arg-type]
            schedule_time=timestamp(schedule_time),
            validate_only=validate_only,
        )
        return self._call(self.jobs.SubmitJob, request)

    def get(self, job_id: str) -> jobs_pb2.Job:
        """One job."""
        return self._call(self.jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id))

    def list(self, **filters: Any) -> jobs_pb2.ListJobsResponse:
        """One page of ListJobs; see `list_request` for the filters."""
        return self._call(self.jobs.ListJobs, list_request(**filters))

    def iter_jobs(self, limit: int = 0, **filters: Any) -> Iterator[jobs_pb2.Job]:
        """Every matching job, newest first, fetching pages as needed."""
        return _paged(lambda token: self.list(page_token=token, **filters), "jobs", limit)

    def cancel(self, job_id: str) -> jobs_pb2.Job:
        """Cancel a queued or processing job."""
        return self._call(self.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id))

    def retry(self, job_id: str, request_id: str = "") -> jobs_pb2.Job:
        """Queue a new job like a failed or cancelled one."""
        request = jobs_pb2.RetryJobRequest(id=job_id, request_id=request_id)
        return self._call(self.jobs.RetryJob, request)

    def delete(self, job_id: str) -> None:
        """Delete a completed, failed or cancelled job."""
        self._call(self.jobs.DeleteJob, jobs_pb2.DeleteJobRequest(id=job_id))

    def run_bulk_operation(
        self,
        operation: str | int,
        *,
        bulk_job_id: str = "",
        modes: Sequence[str | int] = (),
        project: str = "",
        validate_only: bool = False,
    ) -> jobs_pb2.RunBulkOperationResponse:
        """RETRY_ALL_FAILED, CANCEL_ALL_QUEUED or DELETE_ALL_COMPLETED on up to 100 jobs."""
        if isinstance(operation, str):
            name = operation.upper()
            prefix = "BULK_OPERATION_"
            operation = int(jobs_pb2.BulkOperation.Value(name if name.startswith(prefix) else prefix + name))
        request = jobs_pb2.RunBulkOperationRequest(
            operation=operation,  # type: ignore[arg-type]
            bulk_job_id=bulk_job_id,
            modes=[mode_value(m) for m in modes],  # type: ignore[misc]
            project=project,
            validate_only=validate_only,
        )
        return self._call(self.jobs.RunBulkOperation, request)

    def stats(
        self,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        project: str = "",
    ) -> jobs_pb2.GetJobStatsResponse:
        """Counts by status and mode, cost, mean duration and failure rate."""
        request = jobs_pb2.GetJobStatsRequest(
            created_after=timestamp(created_after),
            created_before=timestamp(created_before),
            project=project,
        )
        return self._call(self.jobs.GetJobStats, request)

    def watch(
        self,
        job_id: str,
        after_sequence: int = 0,
        *,
        reconnect: bool = True,
        on_reconnect: ReconnectHook | None = None,
    ) -> Iterator[jobs_pb2.JobEvent]:
        """The job's events until its final status, resuming after dropped
        connections from the last sequence seen (heartbeats are skipped).

        `on_reconnect(error)` is called each time the server is unreachable
        and another try follows, and `on_reconnect(None)` when it answers again."""
        return self._follow(
            lambda after: self.jobs.WatchJob(
                jobs_pb2.WatchJobRequest(id=job_id, after_sequence=after), metadata=self._metadata
            ),
            after_sequence,
            reconnect,
            jobs_pb2.JOB_EVENT_TYPE_HEARTBEAT,
            on_reconnect,
        )

    def _follow(
        self,
        open_stream: Callable[[int], Any],
        after: int,
        reconnect: bool,
        heartbeat: int,
        on_reconnect: ReconnectHook | None = None,
    ) -> Iterator[Any]:
        last = after
        failures = 0
        while True:
            try:
                for event in open_stream(last):
                    if failures and on_reconnect is not None:
                        on_reconnect(None)
                    failures = 0
                    if event.type == heartbeat:
                        continue
                    last = event.sequence
                    yield event
                return
            except grpc.RpcError as error:
                translated = translate(error)
                if not reconnect or not _dropped(translated) or failures >= 30:
                    raise translated from None
                failures += 1
                if on_reconnect is not None:
                    on_reconnect(translated)
                time.sleep(min(0.1 * 2**failures, 2.0))

    def set_budget(self, owner: str, monthly_limit_cents: int, project: str = "") -> jobs_pb2.Budget:
        """Set an owner's (or one project's) monthly limit in cents; 0 removes it. Admin tokens only."""
        request = jobs_pb2.SetBudgetRequest(
            owner=owner, project=project, monthly_limit_cents=monthly_limit_cents
        )
        return self._call(self.jobs.SetBudget, request)

    def set_tier(self, owner: str, tier: str) -> jobs_pb2.Tier:
        """Grant ("premium": PRIORITY_HIGH, schedule ticks included) or revoke ("")
        an owner's stored tier. Admin tokens only."""
        return self._call(self.jobs.SetTier, jobs_pb2.SetTierRequest(owner=owner, tier=tier))

    def usage(self, owner: str = "") -> jobs_pb2.Usage:
        """Spend this month, limits and queue: the caller's own, or (admins) `owner`'s."""
        return self._call(self.jobs.GetUsage, jobs_pb2.GetUsageRequest(owner=owner))

    # ---- BulkService ------------------------------------------------------

    def create_bulk(
        self,
        mode: str | int,
        items: Sequence[jobs_pb2.GenerationParams | Mapping[str, Any]],
        *,
        request_id: str = "",
        project: str = "",
        notify: Sequence[tuple[str, str]] = (),
        notify_url: str = "",
        notify_email: str = "",
        template: str = "",
        priority: str | int = 0,
        schedule_time: datetime | None = None,
        validate_only: bool = False,
    ) -> bulk_pb2.BulkJob:
        """Queue 10 to 50 items as one bulk job (or a template's, overridden by what
        is set), all at `priority`, none before `schedule_time`. `validate_only`:
        store nothing; the bulk job as it would be, with its `estimate`."""
        request = bulk_pb2.CreateBulkJobRequest(
            mode=mode_value(mode),  # type: ignore[arg-type]
            items=[i if isinstance(i, jobs_pb2.GenerationParams) else params(**i) for i in items],
            request_id=request_id,
            project=project,
            notify=targets(notify),
            notify_url=notify_url,
            notify_email=notify_email,
            template=template,
            priority=priority_value(priority),  # type: ignore[arg-type]
            schedule_time=timestamp(schedule_time),
            validate_only=validate_only,
        )
        return self._call(self.bulk.CreateBulkJob, request)

    def get_bulk(self, bulk_id: str) -> bulk_pb2.BulkJob:
        """One bulk job with its items."""
        return self._call(self.bulk.GetBulkJob, bulk_pb2.GetBulkJobRequest(id=bulk_id))

    def list_bulk(self, page_size: int = 0, page_token: str = "") -> bulk_pb2.ListBulkJobsResponse:
        """One page of bulk jobs, newest first."""
        request = bulk_pb2.ListBulkJobsRequest(page_size=page_size, page_token=page_token)
        return self._call(self.bulk.ListBulkJobs, request)

    def iter_bulk(self, limit: int = 0) -> Iterator[bulk_pb2.BulkJob]:
        """Every bulk job, newest first."""
        return _paged(lambda token: self.list_bulk(page_token=token), "bulk_jobs", limit)

    def pause_bulk(self, bulk_id: str) -> bulk_pb2.BulkJob:
        """Start no further items."""
        return self._call(self.bulk.PauseBulkJob, bulk_pb2.PauseBulkJobRequest(id=bulk_id))

    def resume_bulk(self, bulk_id: str) -> bulk_pb2.BulkJob:
        """Go on with a paused bulk job."""
        return self._call(self.bulk.ResumeBulkJob, bulk_pb2.ResumeBulkJobRequest(id=bulk_id))

    def cancel_bulk(self, bulk_id: str) -> bulk_pb2.BulkJob:
        """Cancel the queued items and stop the running one."""
        return self._call(self.bulk.CancelBulkJob, bulk_pb2.CancelBulkJobRequest(id=bulk_id))

    def watch_bulk(
        self,
        bulk_id: str,
        after_sequence: int = 0,
        *,
        reconnect: bool = True,
        on_reconnect: ReconnectHook | None = None,
    ) -> Iterator[bulk_pb2.BulkJobEvent]:
        """The bulk job's events until it is final, resuming after dropped
        connections with its newest snapshot (every event is a whole snapshot,
        so the sequences may skip); `on_reconnect` as for `watch`."""
        return self._follow(
            lambda after: self.bulk.WatchBulkJob(
                bulk_pb2.WatchBulkJobRequest(id=bulk_id, after_sequence=after),
                metadata=self._metadata,
            ),
            after_sequence,
            reconnect,
            bulk_pb2.BULK_JOB_EVENT_TYPE_HEARTBEAT,
            on_reconnect,
        )

    def notifications(
        self, page_size: int = 0, page_token: str = "", job_id: str = "", bulk_job_id: str = ""
    ) -> bulk_pb2.ListNotificationsResponse:
        """One page of the caller's notifications, newest first (one job's or bulk job's when given)."""
        request = bulk_pb2.ListNotificationsRequest(
            page_size=page_size, page_token=page_token, job_id=job_id, bulk_job_id=bulk_job_id
        )
        return self._call(self.bulk.ListNotifications, request)

    def iter_notifications(self, limit: int = 0) -> Iterator[bulk_pb2.Notification]:
        """Every notification, newest first, up to `limit` (0: all)."""
        return _paged(lambda token: self.notifications(page_token=token), "notifications", limit)

    # ---- ScheduleService ----------------------------------------------------

    def create_schedule(
        self,
        cron: str,
        *,
        time_zone: str = "",
        job: jobs_pb2.SubmitJobRequest | None = None,
        bulk_job: bulk_pb2.CreateBulkJobRequest | None = None,
        template: str = "",
        request_id: str = "",
    ) -> schedules_pb2.Schedule:
        """Run `job`, `bulk_job` or the template named `template` on `cron`
        (five fields, or six with seconds first) read in `time_zone` (UTC)."""
        request = schedules_pb2.CreateScheduleRequest(cron=cron, time_zone=time_zone, request_id=request_id)
        if job is not None:
            request.job.CopyFrom(job)
        elif bulk_job is not None:
            request.bulk_job.CopyFrom(bulk_job)
        elif template:
            request.template = template
        return self._call(self.schedules.CreateSchedule, request)

    def get_schedule(self, schedule_id: str) -> schedules_pb2.Schedule:
        """One schedule."""
        return self._call(self.schedules.GetSchedule, schedules_pb2.GetScheduleRequest(id=schedule_id))

    def list_schedules(self, page_size: int = 0, page_token: str = "") -> schedules_pb2.ListSchedulesResponse:
        """One page of schedules, newest first."""
        request = schedules_pb2.ListSchedulesRequest(page_size=page_size, page_token=page_token)
        return self._call(self.schedules.ListSchedules, request)

    def iter_schedules(self, limit: int = 0) -> Iterator[schedules_pb2.Schedule]:
        """Every schedule, newest first, up to `limit` (0: all)."""
        return _paged(lambda token: self.list_schedules(page_token=token), "schedules", limit)

    def pause_schedule(self, schedule_id: str) -> schedules_pb2.Schedule:
        """No more ticks until resumed."""
        return self._call(self.schedules.PauseSchedule, schedules_pb2.PauseScheduleRequest(id=schedule_id))

    def resume_schedule(self, schedule_id: str) -> schedules_pb2.Schedule:
        """Tick again, from the next tick after now."""
        request = schedules_pb2.ResumeScheduleRequest(id=schedule_id)
        return self._call(self.schedules.ResumeSchedule, request)

    def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule (its jobs stay)."""
        self._call(self.schedules.DeleteSchedule, schedules_pb2.DeleteScheduleRequest(id=schedule_id))

    # ---- TemplateService ----------------------------------------------------

    def create_template(
        self,
        name: str,
        *,
        job: jobs_pb2.SubmitJobRequest | None = None,
        bulk_job: bulk_pb2.CreateBulkJobRequest | None = None,
    ) -> templates_pb2.Template:
        """Save a named request; AlreadyExists if the name is taken."""
        return self._call(
            self.templates.CreateTemplate,
            templates_pb2.CreateTemplateRequest(name=name, job=job, bulk_job=bulk_job),
        )

    def update_template(
        self,
        name: str,
        *,
        job: jobs_pb2.SubmitJobRequest | None = None,
        bulk_job: bulk_pb2.CreateBulkJobRequest | None = None,
    ) -> templates_pb2.Template:
        """Replace a template's request."""
        return self._call(
            self.templates.UpdateTemplate,
            templates_pb2.UpdateTemplateRequest(name=name, job=job, bulk_job=bulk_job),
        )

    def save_template(
        self,
        name: str,
        *,
        job: jobs_pb2.SubmitJobRequest | None = None,
        bulk_job: bulk_pb2.CreateBulkJobRequest | None = None,
    ) -> tuple[templates_pb2.Template, bool]:
        """Create the template, or replace it if the name is taken; (it, whether it is new)."""
        try:
            return self.create_template(name, job=job, bulk_job=bulk_job), True
        except AlreadyExists:
            return self.update_template(name, job=job, bulk_job=bulk_job), False

    def get_template(self, name: str) -> templates_pb2.Template:
        """One template."""
        return self._call(self.templates.GetTemplate, templates_pb2.GetTemplateRequest(name=name))

    def list_templates(self, page_size: int = 0, page_token: str = "") -> templates_pb2.ListTemplatesResponse:
        """One page of templates, by name."""
        request = templates_pb2.ListTemplatesRequest(page_size=page_size, page_token=page_token)
        return self._call(self.templates.ListTemplates, request)

    def iter_templates(self, limit: int = 0) -> Iterator[templates_pb2.Template]:
        """Every template, by name, up to `limit` (0: all)."""
        return _paged(lambda token: self.list_templates(page_token=token), "templates", limit)

    def delete_template(self, name: str) -> None:
        """Remove a template."""
        self._call(self.templates.DeleteTemplate, templates_pb2.DeleteTemplateRequest(name=name))


def _paged(fetch: Callable[[str], Any], field: str, limit: int) -> Iterator[Any]:
    """The items of every page `fetch(page_token)` returns, up to `limit` (0: all)."""
    token, seen = "", 0
    while True:
        page = fetch(token)
        for item in getattr(page, field):
            yield item
            seen += 1
            if limit and seen >= limit:
                return
        token = page.next_page_token
        if not token:
            return


def list_request(
    *,
    statuses: Sequence[str | int] = (),
    modes: Sequence[str | int] = (),
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    query: str = "",
    bulk_job_id: str = "",
    project: str = "",
    page_size: int = 0,
    page_token: str = "",
    full: bool = False,
    schedule_id: str = "",
    priorities: Sequence[str | int] = (),
    show_archived: bool = False,
    archived_only: bool = False,
) -> jobs_pb2.ListJobsRequest:
    """A ListJobsRequest from Python values; `full` asks for the articles too,
    `show_archived` for the archived jobs too, `archived_only` for them alone."""
    return jobs_pb2.ListJobsRequest(
        statuses=[status_value(s) for s in statuses],  # type: ignore[misc]
        modes=[mode_value(m) for m in modes],  # type: ignore[misc]
        created_after=timestamp(created_after),
        created_before=timestamp(created_before),
        query=query,
        bulk_job_id=bulk_job_id,
        project=project,
        page_size=page_size,
        page_token=page_token,
        view=jobs_pb2.JOB_VIEW_FULL if full else jobs_pb2.JOB_VIEW_BASIC,
        schedule_id=schedule_id,
        priorities=[priority_value(p) for p in priorities],  # type: ignore[misc]
        show_archived=show_archived,
        archived_only=archived_only,
    )


def make_channel(target: str, tls: bool = False, ca_file: str = "") -> grpc.Channel:
    """A channel to `target`: plaintext, or TLS (`tls`, or a CA file to trust
    instead of the system's roots)."""
    if not (tls or ca_file):
        return grpc.insecure_channel(target)
    roots = Path(ca_file).read_bytes() if ca_file else None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


# What grpc says when this client ended a call itself: never a dropped connection.
_ENDED_HERE = ("Locally cancelled by application!", "Channel closed!")


def _dropped(error: GenJobsError) -> bool:
    """Whether a watch stream ended because the server went away: UNAVAILABLE,
    or CANCELLED by the server (its stop cancels a stream still open at the
    end of its grace), not by this client."""
    if isinstance(error, Unavailable):
        return True
    return error.code == grpc.StatusCode.CANCELLED and error.message not in _ENDED_HERE
