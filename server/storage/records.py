"""Documents <-> model records, in one place: a stored job or bulk job as a
`Job` or `BulkJob`, a `Submission` as a new job document.

A field missing from a document (stored by an older version) reads as its
default here, so nothing above storage writes `.get(key, default)`.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from genjobs.server.model import channels
from genjobs.server.model.records import (
    BulkItem,
    BulkJob,
    Job,
    JobError,
    Params,
    Progress,
    Result,
    Submission,
)
from genjobs.server.model.states import BulkStatus, Status
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.model.vocabulary import Mode, Priority
from genjobs.server.storage.queue import SCHEDULED

Doc = dict[str, Any]


def search_text(params: Doc) -> str:
    """What the free-text `query` filter matches: topic and keywords, lower-cased."""
    return " | ".join([params.get("topic", ""), *params.get("keywords", [])]).lower()


def targets(doc: Doc) -> tuple[NotifyTarget, ...]:
    """THE reading of a job's or bulk job's stored notification targets
    (the channels' flat target fields, as notifications store them)."""
    return tuple(channels.targets_of(doc))


def targets_doc(found: tuple[NotifyTarget, ...]) -> Doc:
    """The stored fields of notification `found` targets (and the pending
    flag a job's notification needs), as `targets` reads them back."""
    return channels.target_fields(found)


def params(doc: Doc) -> Params:
    """Stored params as Params."""
    return Params(
        topic=doc.get("topic", ""),
        keywords=tuple(doc.get("keywords", ())),
        word_count=int(doc.get("word_count", 0)),
        tone=doc.get("tone", ""),
        source_text=doc.get("source_text", ""),
        extra=dict(doc.get("extra", {})),
    )


def params_doc(value: Params) -> Doc:
    """Params as stored in a job."""
    return {
        "topic": value.topic,
        "keywords": list(value.keywords),
        "word_count": value.word_count,
        "tone": value.tone,
        "source_text": value.source_text,
        "extra": dict(value.extra),
    }


def job_error(doc: Doc | None) -> JobError | None:
    """A stored error as JobError (None for none)."""
    if not doc:
        return None
    return JobError(
        code=doc.get("code", ""),
        category=doc.get("category", ""),
        message=doc.get("message", ""),
        retryable=bool(doc.get("retryable", False)),
        attempt=int(doc.get("attempt", 0)),
    )


def _progress(doc: Doc | None) -> Progress | None:
    if not doc:
        return None
    return Progress(
        percentage=int(doc.get("percentage", 0)),
        stage=doc.get("stage", ""),
        stage_progress=int(doc.get("stage_progress", 0)),
        message=doc.get("message", ""),
        started_at_us=int(doc.get("started_at_us") or 0),
        estimated_completion_us=int(doc.get("estimated_completion_us") or 0),
        elapsed_seconds=float(doc.get("elapsed_seconds", 0.0)),
    )


def _result(doc: Doc | None) -> Result | None:
    if not doc:
        return None
    return Result(
        content=doc.get("content", ""),
        title=doc.get("title", ""),
        word_count=int(doc.get("word_count", 0)),
        cost_cents=int(doc.get("cost_cents", 0)),
        metadata={str(k): str(v) for k, v in doc.get("metadata", {}).items()},
    )


def job(doc: Doc) -> Job:
    """A stored job document as a Job."""
    return Job(
        id=str(doc["_id"]),
        owner=doc.get("owner", ""),
        mode=Mode(doc["mode"]),
        params=params(doc.get("params", {})),
        status=Status(doc["status"]),
        project=doc.get("project", ""),
        priority=Priority.of(doc.get("priority")),
        lane=doc.get("queue", ""),
        attempt=int(doc.get("attempt", 0)),
        max_attempts=int(doc.get("max_attempts", 0)),
        retry_of=doc.get("retry_of", ""),
        retried_by=doc.get("retried_by", ""),
        bulk_job_id=doc.get("bulk_job_id", ""),
        queue_position=int(doc.get("queue_position", 0)),
        request_id=doc.get("request_id", ""),
        cancel_requested=bool(doc.get("cancel_requested", False)),
        created_us=int(doc.get("ck") or 0),
        updated_us=int(doc.get("updated_us") or 0),
        started_us=int(doc.get("started_us") or 0),
        ended_us=int(doc.get("ended_us") or 0),
        schedule_us=int(doc.get("schedule_us") or 0),
        archived_us=int(doc.get("archived_us") or 0),
        error=job_error(doc.get("error")),
        attempt_errors=tuple(e for e in map(job_error, doc.get("attempt_errors", [])) if e is not None),
        targets=targets(doc),
        schedule_id=doc.get("schedule_id", ""),
        template=doc.get("template", ""),
        progress=_progress(doc.get("progress")),
        wait_reason=doc.get("wait_reason", ""),
        result=_result(doc.get("result")),
        seq=int(doc.get("seq", 0)),
        notify_pending=bool(doc.get(channels.PENDING_FLAG, False)),
        spend_pending=bool(doc.get("spend_pending", False)),
    )


def job_doc(submission: Submission, job_id: ObjectId, ck: int, lane: str, request_key: str) -> Doc:
    """A QUEUED job document of `submission`, not yet stored: `ck` its order
    key, `lane` its queue lane (with a schedule to come, "scheduled")."""
    stored_params = params_doc(submission.params)
    return {
        "_id": job_id,
        "owner": submission.owner,
        "project": submission.project,
        "mode": str(submission.mode),
        "params": stored_params,
        "search_text": search_text(stored_params),
        "status": str(Status.QUEUED),
        "queue": lane,
        "run_after_us": submission.schedule_us if lane == SCHEDULED else 0,
        "ck": ck,
        "priority": str(submission.priority),
        "rank": submission.priority.rank,
        "schedule_us": submission.schedule_us,
        "ready_us": ck,  # when it entered the ready lane (the dispatcher's incremental read)
        "attempt": 0,
        "max_attempts": submission.max_attempts,
        "attempt_errors": [],
        "retry_of": submission.retry_of,
        "retried_by": "",
        "bulk_job_id": submission.bulk_job_id,
        "queue_position": submission.queue_position,
        "request_id": submission.request_id,
        # Always set, so one plain unique index makes request_id idempotent
        # (partial indexes are silently full on nx-27017).
        "request_key": request_key,
        "cancel_requested": False,
        "epoch": 0,
        "lease_until_us": 0,
        "worker": "",
        "seq": 1,
        "updated_us": ck,
        "schedule_id": submission.schedule_id,  # the schedule whose tick created it
        "template": submission.template,  # the template it was submitted from
        **targets_doc(submission.targets),
    }


def bulk_item(doc: Doc) -> BulkItem:
    """A bulk job's item (a job document, or its projection without content) as a BulkItem."""
    return BulkItem(
        str(doc["_id"]), int(doc["queue_position"]), Status(doc["status"]), job_error(doc.get("error"))
    )


def bulk_job(doc: Doc) -> BulkJob:
    """A stored bulk job document as a BulkJob."""
    return BulkJob(
        id=str(doc["_id"]),
        owner=doc["owner"],
        mode=Mode(doc["mode"]),
        status=BulkStatus(doc["status"]),
        project=doc.get("project", ""),
        priority=Priority.of(doc.get("priority")),
        total=int(doc.get("total_items", 0)),
        request_id=doc.get("request_id", ""),
        created_us=int(doc.get("ck") or 0),
        started_us=int(doc.get("started_us") or 0),
        ended_us=int(doc.get("ended_us") or 0),
        schedule_us=int(doc.get("schedule_us") or 0),
        targets=targets(doc),
        schedule_id=doc.get("schedule_id", ""),
        template=doc.get("template", ""),
        seq=int(doc.get("seq", 0)),
    )
