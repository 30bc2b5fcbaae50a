"""The job and bulk-job state machines: which action each status allows.

This table is the one place these rules live; the store turns each entry into
the status condition of an atomic update.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A job's status, as stored."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
_FINAL_NAMES = frozenset(str(s) for s in FINAL)


def final(status: str) -> bool:
    """Whether a stored status is final."""
    return status in _FINAL_NAMES


class Action(StrEnum):
    """Something that moves a job or acts on it."""

    CANCEL_QUEUED = "cancel_queued"  # straight to CANCELLED
    CANCEL_RUNNING = "cancel_running"  # asks the dispatcher to stop it
    RETRY = "retry"
    DELETE = "delete"
    CLAIM = "claim"
    FINISH = "finish"  # the dispatcher records an outcome


ALLOWED: dict[Action, frozenset[Status]] = {
    Action.CANCEL_QUEUED: frozenset({Status.QUEUED}),
    Action.CANCEL_RUNNING: frozenset({Status.PROCESSING}),
    Action.RETRY: frozenset({Status.FAILED, Status.CANCELLED}),
    Action.DELETE: FINAL,
    Action.CLAIM: frozenset({Status.QUEUED}),
    Action.FINISH: frozenset({Status.PROCESSING}),
}

# The ErrorInfo reason sent when a user's action meets the wrong status.
REFUSAL_REASON: dict[Action, str] = {
    Action.CANCEL_QUEUED: "JOB_NOT_CANCELLABLE",
    Action.CANCEL_RUNNING: "JOB_NOT_CANCELLABLE",
    Action.RETRY: "JOB_NOT_RETRYABLE",
    Action.DELETE: "JOB_NOT_DELETABLE",
}

REFUSAL_HINT: dict[Action, str] = {
    Action.CANCEL_QUEUED: "only queued or processing jobs can be cancelled",
    Action.CANCEL_RUNNING: "only queued or processing jobs can be cancelled",
    Action.RETRY: "only failed or cancelled jobs can be retried",
    Action.DELETE: "only completed, failed or cancelled jobs can be deleted; cancel it first",
}


def allowed(action: Action) -> list[str]:
    """The statuses (as stored strings) from which `action` may happen."""
    return sorted(str(s) for s in ALLOWED[action])


class BulkStatus(StrEnum):
    """A bulk job's status, as stored."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


BULK_FINAL: frozenset[BulkStatus] = frozenset({BulkStatus.COMPLETED, BulkStatus.CANCELLED})


class BulkAction(StrEnum):
    """Something an owner does to a bulk job."""

    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


BULK_ALLOWED: dict[BulkAction, frozenset[BulkStatus]] = {
    BulkAction.PAUSE: frozenset({BulkStatus.QUEUED, BulkStatus.PROCESSING}),
    BulkAction.RESUME: frozenset({BulkStatus.PAUSED}),
    BulkAction.CANCEL: frozenset({BulkStatus.QUEUED, BulkStatus.PROCESSING, BulkStatus.PAUSED}),
}

BULK_REFUSAL_REASON: dict[BulkAction, str] = {
    BulkAction.PAUSE: "BULK_JOB_NOT_PAUSABLE",
    BulkAction.RESUME: "BULK_JOB_NOT_PAUSED",
    BulkAction.CANCEL: "BULK_JOB_NOT_CANCELLABLE",
}


def bulk_allowed(action: BulkAction) -> list[str]:
    """The bulk statuses (as stored strings) from which `action` may happen."""
    return sorted(str(s) for s in BULK_ALLOWED[action])
