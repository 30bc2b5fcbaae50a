"""Model records (and the stored documents of notifications, templates and
schedules) to protobuf messages, and request messages to plain values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from genjobs.server.model import clock
from genjobs.server.model.channels import CHANNELS
from genjobs.server.model.errors import FieldViolation, invalid
from genjobs.server.model.records import BulkJob, Job, JobError, Params, Schedule, Template
from genjobs.server.model.states import Status
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.model.vocabulary import Priority
from genjobs.server.services.estimates import Estimate
from genjobs.server.storage import records
from genjobs.v1 import bulk_pb2, jobs_pb2, schedules_pb2, templates_pb2

Doc = dict[str, Any]


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """An enum number as its name without `prefix` (MODE_TOPIC -> "TOPIC");
    "" for the unspecified zero or a number the enum does not have."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return ""
    return "" if value == 0 else name.removeprefix(prefix)


def mode_name(value: int) -> str:
    """MODE_TOPIC (enum number) -> "TOPIC"; "" for unspecified or unknown."""
    return enum_name(jobs_pb2.Mode, value, "MODE_")


def status_name(value: int) -> str:
    """JOB_STATUS_QUEUED -> "QUEUED"; "" for unspecified or unknown."""
    return enum_name(jobs_pb2.JobStatus, value, "JOB_STATUS_")


def bulk_status_name(value: int) -> str:
    """BULK_JOB_STATUS_PAUSED -> "PAUSED"; "" for unspecified or unknown."""
    return enum_name(bulk_pb2.BulkJobStatus, value, "BULK_JOB_STATUS_")


def schedule_state_name(value: int) -> str:
    """SCHEDULE_STATE_PAUSED -> "PAUSED"; "" for unspecified or unknown."""
    return enum_name(schedules_pb2.ScheduleState, value, "SCHEDULE_STATE_")


def priority_name(value: int) -> str:
    """PRIORITY_HIGH -> "HIGH"; unspecified is "NORMAL"; "" for an unknown number."""
    return enum_name(jobs_pb2.Priority, value, "PRIORITY_") if value else str(Priority.NORMAL)


def priority(value: Priority) -> jobs_pb2.Priority.ValueType:
    """A job's or bulk job's priority as the enum number."""
    return jobs_pb2.Priority.Value("PRIORITY_" + value)


def operation_name(value: int) -> str:
    """BULK_OPERATION_RETRY_ALL_FAILED -> "RETRY_ALL_FAILED"; "" for unspecified or unknown."""
    return enum_name(jobs_pb2.BulkOperation, value, "BULK_OPERATION_")


def params_of(params: jobs_pb2.GenerationParams) -> Params:
    """GenerationParams as the model's Params (as asked: validated and normalized below)."""
    return Params(
        topic=params.topic,
        keywords=tuple(params.keywords),
        word_count=params.word_count,
        tone=params.tone,
        source_text=params.source_text,
        extra=dict(params.extra),
    )


def timestamp(value: datetime | int | None) -> Timestamp | None:
    """A protobuf Timestamp of a datetime or epoch microseconds; None when unset."""
    if not value:
        return None
    stamp = Timestamp()
    stamp.FromMicroseconds(value if isinstance(value, int) else clock.to_us(value))
    return stamp


# The range google.protobuf.Timestamp allows: 0001-01-01 to 9999-12-31 (UTC).
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799


def timestamp_us(value: Timestamp, present: bool, field: str) -> int | None:
    """Epoch microseconds of a request Timestamp, None when it was not set;
    INVALID_ARGUMENT naming `field` when it is outside Timestamp's range
    (which also keeps it inside MongoDB's 64-bit integers)."""
    if not present:
        return None
    if not (MIN_SECONDS <= value.seconds <= MAX_SECONDS and 0 <= value.nanos <= 999_999_999):
        raise invalid(
            [FieldViolation(field, "seconds from 0001-01-01 to 9999-12-31 and nanos from 0 to 999999999")]
        )
    return value.seconds * 1_000_000 + value.nanos // 1000


def schedule_us(request: jobs_pb2.SubmitJobRequest | bulk_pb2.CreateBulkJobRequest) -> int:
    """A create request's schedule_time in epoch microseconds, 0 when unset (range checked)."""
    return timestamp_us(request.schedule_time, request.HasField("schedule_time"), "schedule_time") or 0


def duration(seconds: float) -> Duration:
    """A protobuf Duration of `seconds`, to the microsecond."""
    value = Duration()
    value.FromMicroseconds(round(seconds * 1_000_000))
    return value


def now() -> Timestamp:
    """The current time as a Timestamp (heartbeats)."""
    stamp = timestamp(clock.now_us())
    assert stamp is not None
    return stamp


def job_error(error: JobError | None) -> jobs_pb2.JobError | None:
    """A job's error as JobError."""
    if error is None:
        return None
    return jobs_pb2.JobError(
        code=error.code,
        category=error.category,
        message=error.message,
        retryable=error.retryable,
        attempt=error.attempt,
    )


def stages_done(job: Job, stages: Sequence[str]) -> int:
    """How many of the declared `stages` a job has finished: all of them once
    it completed, else the position of its current stage (0 when that is not
    one of them: queued, "starting", a service's own stage)."""
    if job.status == Status.COMPLETED:
        return len(stages)
    current = job.progress.stage if job.progress else ""
    return stages.index(current) if current in stages else 0


def job(job: Job, full: bool = True, stages: Sequence[str] = ()) -> jobs_pb2.Job:
    """A job as the Job message; without result.content unless `full`.
    `stages` are those the server's generator declares (Job.stages)."""
    params = job.params
    message = jobs_pb2.Job(
        id=job.id,
        owner=job.owner,
        project=job.project,
        mode=jobs_pb2.Mode.Value("MODE_" + job.mode),
        params=jobs_pb2.GenerationParams(
            topic=params.topic,
            keywords=params.keywords,
            word_count=params.word_count,
            tone=params.tone,
            source_text=params.source_text,
            extra=params.extra,
        ),
        status=jobs_pb2.JobStatus.Value("JOB_STATUS_" + job.status),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        retry_of=job.retry_of,
        bulk_job_id=job.bulk_job_id,
        queue_position=job.queue_position,
        request_id=job.request_id,
        cancel_requested=job.cancel_requested,
        create_time=timestamp(job.created_us),
        update_time=timestamp(job.updated_us),
        start_time=timestamp(job.started_us),
        end_time=timestamp(job.ended_us),
        archive_time=timestamp(job.archived_us),
        error=job_error(job.error),
        attempt_errors=[e for e in map(job_error, job.attempt_errors) if e is not None],
        **notify_fields(job.targets),
        schedule_id=job.schedule_id,
        template=job.template,
        priority=priority(job.priority),
        schedule_time=timestamp(job.schedule_us),
        stages=list(stages),
        stages_done=stages_done(job, stages),
    )
    progress = job.progress
    if progress:
        message.progress.CopyFrom(
            jobs_pb2.Progress(
                percentage=progress.percentage,
                stage=progress.stage,
                stage_progress=progress.stage_progress,
                message=progress.message,
                started_at=timestamp(progress.started_at_us),
                estimated_completion=timestamp(progress.estimated_completion_us),
                elapsed_seconds=progress.elapsed_seconds,
                elapsed=duration(progress.elapsed_seconds),
            )
        )
    if job.wait_reason and job.status == Status.QUEUED:
        # Why a queued job is not started (budgets; its provider down: services/jobs.py).
        message.progress.message = job.wait_reason
    result = job.result
    if result:
        message.result.CopyFrom(
            jobs_pb2.GenerationResult(
                content=result.content if full else "",
                title=result.title,
                word_count=result.word_count,
                cost_cents=result.cost_cents,
                metadata=result.metadata,
                cost_unknown=result.cost_unknown,
            )
        )
    return message


def job_event(
    event: Doc, stages: Sequence[str] = (), told: Callable[[Job], Job] | None = None
) -> jobs_pb2.JobEvent:
    """A stored (or just published) event as the JobEvent message (an event
    carries its job as stored: read through the storage edge's conversion;
    `told` adds why a queued job waits, as GetJob does)."""
    record = records.job(event["job"])
    return jobs_pb2.JobEvent(
        sequence=event["seq"],
        type=jobs_pb2.JobEventType.Value("JOB_EVENT_TYPE_" + event["type"]),
        job=job(told(record) if told else record, stages=stages),
        time=timestamp(event["at_us"]),
    )


def estimate(value: Estimate) -> jobs_pb2.Estimate:
    """An estimate (SubmitJob's or CreateBulkJob's with validate_only) as the Estimate message."""
    message = jobs_pb2.Estimate(
        low_cents=value.low_cents,
        high_cents=value.high_cents,
        cost_unknown=value.cost_unknown,
        cost_unknown_reason=value.cost_unknown_reason,
        model=value.model,
        provider=value.provider,
        prompt_tokens=value.prompt_tokens,
        word_count=value.word_count,
    )
    if value.expected_seconds is not None:
        message.expected_duration.CopyFrom(duration(value.expected_seconds))
    return message


def bulk_job(view: Any, with_items: bool = True) -> bulk_pb2.BulkJob:
    """A bulk job (a `bulk.BulkView`: the record and its counts) as the BulkJob message."""
    bulk: BulkJob = view.bulk_job
    message = bulk_pb2.BulkJob(
        id=bulk.id,
        owner=bulk.owner,
        project=bulk.project,
        mode=jobs_pb2.Mode.Value("MODE_" + bulk.mode),
        status=bulk_pb2.BulkJobStatus.Value("BULK_JOB_STATUS_" + bulk.status),
        total_items=view.total,
        completed_items=view.completed,
        failed_items=view.failed,
        cancelled_items=view.cancelled,
        remaining_items=view.remaining,
        done_items=view.done,
        deleted_items=view.deleted,
        percentage=view.percentage,
        error_summary=view.error_summary,
        create_time=timestamp(bulk.created_us),
        start_time=timestamp(bulk.started_us),
        end_time=timestamp(bulk.ended_us),
        estimated_completion=timestamp(view.estimated_completion_us),
        request_id=bulk.request_id,
        **notify_fields(bulk.targets),
        schedule_id=bulk.schedule_id,
        template=bulk.template,
        priority=priority(bulk.priority),
        schedule_time=timestamp(bulk.schedule_us),
    )
    if with_items:
        message.items.extend(
            bulk_pb2.BulkJobItem(
                id=item.id,
                queue_position=item.queue_position,
                status=jobs_pb2.JobStatus.Value("JOB_STATUS_" + item.status),
                error=job_error(item.error),
            )
            for item in view.item_records
        )
    return message


# The request and answer fields that are shorthands for one target each: the
# only place the API names channels (the contract keeps them for older clients).
SHORTHANDS = {"notify_url": "webhook", "notify_email": "email"}


def notify_targets(request: jobs_pb2.SubmitJobRequest | bulk_pb2.CreateBulkJobRequest) -> list[NotifyTarget]:
    """The notification targets a request asks for: its `notify` list, then its shorthands."""
    targets = [NotifyTarget(t.channel, t.address) for t in request.notify]
    for field, channel in SHORTHANDS.items():
        if address := getattr(request, field):
            targets.append(NotifyTarget(channel, address, given_as=field))
    return targets


def notify_fields(targets: Sequence[NotifyTarget]) -> dict[str, Any]:
    """A job's or bulk job's targets as the Job and BulkJob fields: `notify`, and the shorthands."""
    fields: dict[str, Any] = {
        "notify": [jobs_pb2.NotifyTarget(channel=t.channel, address=t.address) for t in targets]
    }
    for field, channel in SHORTHANDS.items():
        fields[field] = next((t.address for t in targets if t.channel == channel), "")
    return fields


def notification(doc: Doc) -> bulk_pb2.Notification:
    """A stored notification as the Notification message."""
    return bulk_pb2.Notification(
        id=str(doc["_id"]),
        bulk_job_id=doc.get("bulk_job_id", ""),
        message=doc.get("message", ""),
        create_time=timestamp(doc.get("created_us")),
        delivered=doc.get("delivery") == "delivered",
        delivery_attempts=int(doc.get("attempts", 0)),
        job_id=doc.get("job_id", ""),
        event=doc.get("event") or doc.get("payload", {}).get("event", ""),
        deliveries=[
            bulk_pb2.NotificationDelivery(
                channel=bulk_pb2.DeliveryChannel.Value("DELIVERY_CHANNEL_" + channel.name.upper()),
                target=doc.get(channel.target, ""),
                state=bulk_pb2.DeliveryState.Value("DELIVERY_STATE_" + doc[channel.state].upper()),
                attempts=int(doc.get(channel.attempts, 0)),
                last_error=doc.get(channel.error, ""),
                next_attempt_time=timestamp(
                    doc.get(channel.next_us) if doc[channel.state] == "pending" else 0
                ),
            )
            for channel in CHANNELS
            if doc.get(channel.state, "none") != "none"
        ],
    )


def bulk_event(payload: Doc) -> bulk_pb2.BulkJobEvent:
    """A bulk event payload ({view, kind, notification, at_us}) as BulkJobEvent."""
    view = payload["view"]
    event = bulk_pb2.BulkJobEvent(
        sequence=view.doc["seq"],
        type=bulk_pb2.BulkJobEventType.Value("BULK_JOB_EVENT_TYPE_" + payload["kind"]),
        bulk_job=bulk_job(view),
        time=timestamp(payload["at_us"]),
    )
    if payload.get("notification"):
        event.notification.CopyFrom(notification(payload["notification"]))
    return event


def template(value: Template) -> templates_pb2.Template:
    """A template as the Template message."""
    message = templates_pb2.Template(
        name=value.name,
        owner=value.owner,
        create_time=timestamp(value.created_us),
        update_time=timestamp(value.updated_us),
    )
    getattr(message, value.kind).ParseFromString(value.request)
    return message


def schedule(value: Schedule) -> schedules_pb2.Schedule:
    """A schedule as the Schedule message."""
    message = schedules_pb2.Schedule(
        id=value.id,
        owner=value.owner,
        cron=value.cron,
        time_zone=value.time_zone,
        state=schedules_pb2.ScheduleState.Value("SCHEDULE_STATE_" + value.state),
        next_run_time=timestamp(value.next_run_us),
        last_run_time=timestamp(value.last_run_us),
        last_job_id=value.last_job_id,
        last_bulk_job_id=value.last_bulk_job_id,
        run_count=value.run_count,
        last_error=value.last_error,
        request_id=value.request_id,
        create_time=timestamp(value.created_us),
        update_time=timestamp(value.updated_us),
    )
    if value.kind == "template":
        message.template = value.template
    else:
        getattr(message, value.kind).ParseFromString(value.request)
    return message
