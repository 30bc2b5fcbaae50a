"""Reports from external generation services (ReportProgress), which prove
with an attempt token that they work on the job's current attempt. The
stored shape of a report and the tokens are server/model/progress.py's."""

from __future__ import annotations

from collections.abc import Callable

from genjobs.server.model import clock
from genjobs.server.model.errors import Code, FieldViolation, ServiceError, invalid
from genjobs.server.model.progress import AttemptTokens, progress_fields
from genjobs.server.services.validation import check_label, check_text
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import PROGRESS
from genjobs.server.storage.paging import parse_id
from genjobs.server.storage.store import Store

MAX_STAGE, MAX_MESSAGE = 50, 500


def _denied(why: str) -> ServiceError:
    return ServiceError(Code.PERMISSION_DENIED, "PROGRESS_TOKEN_REFUSED", why)


def _backwards(current: int, asked: int) -> ServiceError:
    return ServiceError(
        Code.FAILED_PRECONDITION,
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
