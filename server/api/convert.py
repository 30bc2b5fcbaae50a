"""Stored documents to protobuf messages and request messages to plain values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from genjobs.v1 import bulk_pb2, jobs_pb2, schedules_pb2, templates_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from server.model import clock
from server.model.channels import CHANNELS, targets_of
from server.model.errors import FieldViolation, invalid
from server.model.targets import NotifyTarget

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
    return enum_name(jobs_pb2.Priority, value, "PRIORITY_") if value else "NORMAL"


def priority(doc: Doc) -> jobs_pb2.Priority.ValueType:
    """A stored job's or bulk job's priority (NORMAL when stored before priorities)."""
    return jobs_pb2.Priority.Value("PRIORITY_" + doc.get("priority", "NORMAL"))


def operation_name(value: int) -> str:
    """BULK_OPERATION_RETRY_ALL_FAILED -> "RETRY_ALL_FAILED"; "" for unspecified or unknown."""
    return enum_name(jobs_pb2.BulkOperation, value, "BULK_OPERATION_")


def params_dict(params: jobs_pb2.GenerationParams) -> Doc:
    """GenerationParams as the document stored in a job."""
    return {
        "topic": params.topic,
        "keywords": list(params.keywords),
        "word_count": params.word_count,
        "tone": params.tone,
        "source_text": params.source_text,
        "extra": dict(params.extra),
    }


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


def job_error(doc: Doc | None) -> jobs_pb2.JobError | None:
    """A stored error as JobError."""
    if not doc:
        return None
    return jobs_pb2.JobError(
        code=doc.get("code", ""),
        category=doc.get("category", ""),
        message=doc.get("message", ""),
        retryable=bool(doc.get("retryable", False)),
        attempt=int(doc.get("attempt", 0)),
    )


def stages_done(doc: Doc, stages: Sequence[str]) -> int:
    """How many of the declared `stages` a stored job has finished: all of
    them once it completed, else the position of its current stage (0 when
    that is not one of them: queued, "starting", a service's own stage)."""
    if doc["status"] == "COMPLETED":
        return len(stages)
    current = (doc.get("progress") or {}).get("stage", "")
    return stages.index(current) if current in stages else 0


def job(doc: Doc, full: bool = True, stages: Sequence[str] = ()) -> jobs_pb2.Job:
    """A stored job as the Job message; without result.content unless `full`.
    `stages` are those the server's generator declares (Job.stages)."""
    params = doc.get("params", {})
    message = jobs_pb2.Job(
        id=str(doc["_id"]),
        owner=doc.get("owner", ""),
        project=doc.get("project", ""),
        mode=jobs_pb2.Mode.Value("MODE_" + doc["mode"]),
        params=jobs_pb2.GenerationParams(
            topic=params.get("topic", ""),
            keywords=params.get("keywords", []),
            word_count=params.get("word_count", 0),
            tone=params.get("tone", ""),
            source_text=params.get("source_text", ""),
            extra=params.get("extra", {}),
        ),
        status=jobs_pb2.JobStatus.Value("JOB_STATUS_" + doc["status"]),
        attempt=doc.get("attempt", 0),
        max_attempts=doc.get("max_attempts", 0),
        retry_of=doc.get("retry_of", ""),
        bulk_job_id=doc.get("bulk_job_id", ""),
        queue_position=doc.get("queue_position", 0),
        request_id=doc.get("request_id", ""),
        cancel_requested=bool(doc.get("cancel_requested", False)),
        create_time=timestamp(doc.get("ck")),
        update_time=timestamp(doc.get("updated_us")),
        start_time=timestamp(doc.get("started_us")),
        end_time=timestamp(doc.get("ended_us")),
        error=job_error(doc.get("error")),
        attempt_errors=[e for e in map(job_error, doc.get("attempt_errors", [])) if e is not None],
        **notify_fields(doc),
        schedule_id=doc.get("schedule_id", ""),
        template=doc.get("template", ""),
        priority=priority(doc),
        schedule_time=timestamp(doc.get("schedule_us")),
        stages=list(stages),
        stages_done=stages_done(doc, stages),
    )
    progress = doc.get("progress")
    if progress:
        message.progress.CopyFrom(
            jobs_pb2.Progress(
                percentage=int(progress.get("percentage", 0)),
                stage=progress.get("stage", ""),
                stage_progress=int(progress.get("stage_progress", 0)),
                message=progress.get("message", ""),
                started_at=timestamp(progress.get("started_at_us")),
                estimated_completion=timestamp(progress.get("estimated_completion_us")),
                elapsed_seconds=float(progress.get("elapsed_seconds", 0.0)),
                elapsed=duration(float(progress.get("elapsed_seconds", 0.0))),
            )
        )
    if doc.get("wait_reason") and doc["status"] == "QUEUED" and doc.get("queue") != "ready":
        message.progress.message = doc["wait_reason"]  # why a queued job is not started (budgets)
    result = doc.get("result")
    if result:
        message.result.CopyFrom(
            jobs_pb2.GenerationResult(
                content=result.get("content", "") if full else "",
                title=result.get("title", ""),
                word_count=int(result.get("word_count", 0)),
                cost_cents=int(result.get("cost_cents", 0)),
                metadata={str(k): str(v) for k, v in result.get("metadata", {}).items()},
                # Generators say so in metadata (stored results keep it there).
                cost_unknown=str(result.get("metadata", {}).get("cost_unknown", "")) == "true",
            )
        )
    return message


def job_event(event: Doc, stages: Sequence[str] = ()) -> jobs_pb2.JobEvent:
    """A stored (or just published) event as the JobEvent message."""
    return jobs_pb2.JobEvent(
        sequence=event["seq"],
        type=jobs_pb2.JobEventType.Value("JOB_EVENT_TYPE_" + event["type"]),
        job=job(event["job"], stages=stages),
        time=timestamp(event["at_us"]),
    )


def bulk_job(view: Any, with_items: bool = True) -> bulk_pb2.BulkJob:
    """A bulk job (a `bulk.BulkView`) as the BulkJob message."""
    doc = view.doc
    message = bulk_pb2.BulkJob(
        id=str(doc["_id"]),
        owner=doc["owner"],
        project=doc.get("project", ""),
        mode=jobs_pb2.Mode.Value("MODE_" + doc["mode"]),
        status=bulk_pb2.BulkJobStatus.Value("BULK_JOB_STATUS_" + doc["status"]),
        total_items=view.total,
        completed_items=view.completed,
        failed_items=view.failed,
        cancelled_items=view.cancelled,
        remaining_items=view.remaining,
        done_items=view.done,
        deleted_items=view.deleted,
        percentage=view.percentage,
        error_summary=view.error_summary,
        create_time=timestamp(doc.get("ck")),
        start_time=timestamp(doc.get("started_us")),
        end_time=timestamp(doc.get("ended_us")),
        estimated_completion=timestamp(view.estimated_completion_us),
        request_id=doc.get("request_id", ""),
        **notify_fields(doc),
        schedule_id=doc.get("schedule_id", ""),
        template=doc.get("template", ""),
        priority=priority(doc),
        schedule_time=timestamp(doc.get("schedule_us")),
    )
    if with_items:
        message.items.extend(
            bulk_pb2.BulkJobItem(
                id=str(item["_id"]),
                queue_position=item["queue_position"],
                status=jobs_pb2.JobStatus.Value("JOB_STATUS_" + item["status"]),
                error=job_error(item.get("error")),
            )
            for item in view.items
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


def notify_fields(doc: Doc) -> dict[str, Any]:
    """A job's or bulk job's targets as the Job and BulkJob fields: `notify`, and the shorthands."""
    targets = targets_of(doc)
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


def template(doc: Doc) -> templates_pb2.Template:
    """A stored template as the Template message."""
    message = templates_pb2.Template(
        name=doc["name"],
        owner=doc["owner"],
        create_time=timestamp(doc.get("ck")),
        update_time=timestamp(doc.get("updated_us")),
    )
    getattr(message, doc["kind"]).ParseFromString(doc["request"])
    return message


def schedule(doc: Doc) -> schedules_pb2.Schedule:
    """A stored schedule as the Schedule message."""
    message = schedules_pb2.Schedule(
        id=str(doc["_id"]),
        owner=doc["owner"],
        cron=doc["cron"],
        time_zone=doc.get("time_zone", ""),
        state=schedules_pb2.ScheduleState.Value("SCHEDULE_STATE_" + doc["state"]),
        next_run_time=timestamp(doc.get("next_run_us")),
        last_run_time=timestamp(doc.get("last_run_us")),
        last_job_id=doc.get("last_job_id", ""),
        last_bulk_job_id=doc.get("last_bulk_job_id", ""),
        run_count=int(doc.get("run_count", 0)),
        last_error=doc.get("last_error", ""),
        request_id=doc.get("request_id", ""),
        create_time=timestamp(doc.get("ck")),
        update_time=timestamp(doc.get("updated_us")),
    )
    if doc["kind"] == "template":
        message.template = doc["template"]
    else:
        getattr(message, doc["kind"]).ParseFromString(doc["request"])
    return message
