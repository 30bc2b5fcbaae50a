"""Progress: the stored shape of a job's progress report, and the attempt
tokens an external generation service proves its reports with. The
dispatcher, the generators and ReportProgress (services) all read them here."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from genjobs.server.model import clock

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


class ProgressLink:
    """What a generator tells an external service so that it can report progress:
    this server's address (`target`: "" until the server listens) and the
    attempt's token. Made before the server binds its port, so the address is
    asked of `address` each time."""

    def __init__(self, tokens: AttemptTokens, address: Callable[[], str]) -> None:
        self.tokens = tokens
        self._address = address

    @property
    def target(self) -> str:
        """host:port where a generation service reaches this server; "" before it listens."""
        return self._address()

    def token(self, job: Any) -> str:
        """The token for the attempt `job` (a JobSpec) is running."""
        return self.tokens.issue(job.id, job.epoch, job.started_us)
