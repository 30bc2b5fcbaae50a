"""Progress reports: the stored shape of a report, and reports from external
generation services (ReportProgress), which prove with an attempt token that
they work on the job's current attempt."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from server.model import clock
from server.model.errors import FieldViolation, ServiceError, invalid
from server.services.validation import check_label, check_text
from server.storage.database import Doc
from server.storage.events import PROGRESS
from server.storage.paging import parse_id
from server.storage.store import Store

MAX_STAGE, MAX_MESSAGE = 50, 500
_TOKEN_LABEL = b"genjobs-progress-token:"


def progress_fields(
    percentage: int, stage: str, stage_progress: int, message: str, started_us: int, elapsed: float
) -> dict[str, Any]:
    """A job's `progress` as stored, with an estimated completion from the rate so far."""
    progress: dict[str, Any] = {
        "percentage": max(0, min(100, percentage)),
        "stage": stage,
        "stage_progress": max(0, min(100, stage_progress)),
        "message": message,
        "started_at_us": started_us,
        "elapsed_seconds": round(elapsed, 3),
    }
    if percentage > 0:
        remaining = elapsed * (100 - percentage) / percentage
        progress["estimated_completion_us"] = clock.now_us() + int(remaining * 1e6)
    return progress


class AttemptTokens:
    """Tokens that stand for one attempt of one job:
    `<epoch>.<started_us>.<HMAC(job, epoch, started_us)>`.

    The epoch is the job's lease epoch, new with every claim, so a token dies
    with its attempt; the HMAC ties it to the job and to this deployment's
    secret (every replica shares it, so any replica can check a report). The
    attempt's start rides along, so a report needs no read before its write.
    """

    def __init__(self, secret: str) -> None:
        self._key = _TOKEN_LABEL + secret.encode()

    def issue(self, job_id: str, epoch: int, started_us: int) -> str:
        """The token for `job_id`'s attempt with lease epoch `epoch`."""
        return f"{epoch}.{started_us}.{self._mac(job_id, epoch, started_us)}"

    def attempt_of(self, job_id: str, token: str) -> tuple[int, int] | None:
        """(epoch, started_us) of a genuine token for `job_id`, else None."""
        parts = token.split(".")
        if len(parts) != 3 or not all(p.isdigit() and len(p) <= 18 for p in parts[:2]):
            return None
        epoch, started_us = int(parts[0]), int(parts[1])
        return (
            (epoch, started_us)
            if hmac.compare_digest(parts[2], self._mac(job_id, epoch, started_us))
            else None
        )

    def _mac(self, job_id: str, epoch: int, started_us: int) -> str:
        return hmac.new(self._key, f"{job_id}:{epoch}:{started_us}".encode(), hashlib.sha256).hexdigest()


@dataclass
class ProgressLink:
    """What a generator tells an external service so that it can report progress:
    this server's address and the attempt's token (both set once the server starts)."""

    target: str = ""
    tokens: AttemptTokens | None = None

    def token(self, job: Any) -> str:
        """The token for the attempt `job` (a JobSpec) is running."""
        assert self.tokens is not None, "the server sets the tokens before it runs jobs"
        return self.tokens.issue(job.id, job.epoch, job.started_us)


def _denied(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, "PROGRESS_TOKEN_REFUSED", why)


def _backwards(current: int, asked: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROGRESS_BACKWARDS",
        f"the job is at {current}%: progress never goes back (this report said {asked}%)",
        metadata={"percentage": str(current)},
    )


class ExternalProgress:
    """ReportProgress: a generation service's report becomes the job's
    progress, and a PROGRESS event, like the built-in generators' reports."""

    def __init__(self, store: Store, tokens: AttemptTokens, record: Callable[[Doc, str], None]) -> None:
        self.store = store
        self.tokens = tokens
        self.record = record

    def report(
        self, job_id: str, token: str, percentage: int, stage: str, stage_progress: int, message: str
    ) -> None:
        """Store one report: one write, fenced on the attempt's epoch and PROCESSING."""
        bad = []
        if not 0 <= percentage <= 100:
            bad.append(FieldViolation("percentage", "0 to 100"))
        if not 0 <= stage_progress <= 100:
            bad.append(FieldViolation("stage_progress", "0 to 100"))
        bad += check_label(stage, "stage", MAX_STAGE)  # a stage name: one line
        if len(message) > MAX_MESSAGE:
            bad.append(FieldViolation("message", f"at most {MAX_MESSAGE} characters"))
        bad += check_text(message, "message")
        if bad:
            raise invalid(bad)
        attempt = self.tokens.attempt_of(job_id, token)
        if attempt is None:
            raise _denied("the token is not this job's progress token")
        epoch, started_us = attempt
        now_us = clock.now_us()
        # 100 is the completion's to write: a service saying 100 is nearly done.
        progress = progress_fields(
            min(percentage, 99), stage, stage_progress, message, started_us, (now_us - started_us) / 1e6
        )
        # Never backwards: a report below the job's percentage (a late or
        # reordered one) is refused by the same write, not stored.
        oid = parse_id(job_id)
        at_most = {"progress.percentage": {"$lte": progress["percentage"]}}
        after = self.store.queue.fenced_update(
            oid, epoch, {"progress": progress, "updated_us": now_us}, when=at_most
        )
        if after is None:
            # Why not: the attempt ended, or the report went back (read only to say which).
            current = self.store.queue.run_progress(oid, epoch)
            if current is None:
                raise _denied("the attempt this token was issued for has ended")
            raise _backwards(int(current["progress"]["percentage"]), progress["percentage"])
        self.record(after, PROGRESS)
