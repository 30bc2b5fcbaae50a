"""Domain errors, each with a canonical `Code` and an UPPER_SNAKE ErrorInfo reason.

No transport here: the api maps a `Code` to gRPC (the same numbers) and to
HTTP, once each (server/api/status.py, server/api/http/errors.py). The
bounds are the model's: a client must be able to read any error (gRPC
refuses trailers past a few KB), so an error repeats at most a short prefix
of any input (`echo`), at most `MAX_VIOLATIONS` field violations (then says
how many more), and its wire form fits in about 1.7 KB of trailers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

DOMAIN = "genjobs.v1"

MAX_ECHO = 64  # characters of an input an error repeats
MAX_VIOLATIONS = 20
MAX_FIELD, MAX_DESCRIPTION = 80, 200  # characters of one violation
MAX_METADATA = 8  # ErrorInfo entries, each value at most MAX_ECHO characters
# The message travels twice (grpc-message, and inside grpc-status-details-bin):
# 2 x 300 + 1,100 bytes of details stays well under 2 KB of trailers.
MAX_MESSAGE_BYTES = 300
MAX_DETAILS_BYTES = 1100


class Code(IntEnum):
    """The canonical error codes (google.rpc.Code): gRPC's status codes have
    the same names and numbers, HTTP a status for each."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass
class FieldViolation:
    """One bad request field, e.g. ("params.topic", "required for MODE_TOPIC")."""

    field: str
    description: str


@dataclass
class ServiceError(Exception):
    """An error the caller should see: code, reason, message, optional details."""

    code: Code
    reason: str
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # Seconds a client should wait before retrying, sent as google.rpc.RetryInfo.
    retry_delay: float | None = None
    # (subject, description) of each limit hit, sent as google.rpc.QuotaFailure.
    quota: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def clip(value: str, limit: int = MAX_ECHO) -> str:
    """`value` in at most `limit` characters: cut short, saying how long it was."""
    if len(value) <= limit:
        return value
    tail = f"… ({len(value)} characters)"
    return value[: max(limit - len(tail), 0)] + tail


def echo(value: str) -> str:
    """An input as an error repeats it: quoted, control characters escaped, at most
    MAX_ECHO characters of it."""
    quoted = repr(value[:MAX_ECHO])
    return quoted if len(value) <= MAX_ECHO else f"{quoted}… ({len(value)} characters)"


def invalid(violations: list[FieldViolation], reason: str = "INVALID_REQUEST") -> ServiceError:
    """INVALID_ARGUMENT naming every bad field (the message names the first few)."""
    shown = 3
    summary = "; ".join(f"{clip(v.field)}: {clip(v.description)}" for v in violations[:shown])
    if len(violations) > shown:
        summary += f" (and {len(violations) - shown} more)"
    return ServiceError(Code.INVALID_ARGUMENT, reason, summary, violations)


def not_found(kind: str, ident: str) -> ServiceError:
    """NOT_FOUND; also what another user's resource looks like."""
    reason = f"{kind.upper().replace(' ', '_')}_NOT_FOUND"
    return ServiceError(Code.NOT_FOUND, reason, f"{kind} {echo(ident)} not found", metadata={"id": ident})


def wrong_status(reason: str, kind: str, ident: str, status: str, hint: str) -> ServiceError:
    """FAILED_PRECONDITION naming the current status."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        reason,
        f"{kind} {clip(ident)} is {status.lower()}: {hint}",
        metadata={"id": ident, "status": status},
    )


def channel_not_configured(reason: str, message: str) -> ServiceError:
    """FAILED_PRECONDITION: a notification channel this server has no sender for
    (the channel's module says which `reason` and `message`)."""
    return ServiceError(Code.FAILED_PRECONDITION, reason, message)


def quota_exceeded(reason: str, subject: str, description: str, metadata: dict[str, str]) -> ServiceError:
    """RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming the limit that was hit."""
    quota = [(subject, description)]
    return ServiceError(Code.RESOURCE_EXHAUSTED, reason, description, metadata=metadata, quota=quota)


def already_exists(reason: str, message: str, metadata: dict[str, str]) -> ServiceError:
    """ALREADY_EXISTS: a name (or key) the caller has already used."""
    return ServiceError(Code.ALREADY_EXISTS, reason, message, metadata=metadata)


def admins_only(what: str) -> ServiceError:
    """PERMISSION_DENIED: an RPC (or a use of one) only admin tokens may make."""
    return ServiceError(Code.PERMISSION_DENIED, "ADMIN_REQUIRED", f"{what} needs an admin token")


def sequence_out_of_range(kind: str, ident: str, after: int, last: int) -> ServiceError:
    """OUT_OF_RANGE: a watch resumed after a sequence the stream never reached."""
    return ServiceError(
        Code.OUT_OF_RANGE,
        "SEQUENCE_OUT_OF_RANGE",
        f"after_sequence {after} is beyond {kind} {ident}'s last event ({last}): resume from {last} or 0",
        metadata={"id": ident, "last_sequence": str(last)},
    )


# How long a client should wait before retrying an UNAVAILABLE call: about the
# time pymongo takes to find a database that came back, or a replica to restart.
UNAVAILABLE_RETRY_SECONDS = 1.0


def unavailable(
    message: str = "the database is unreachable; try again shortly",
    reason: str = "DATABASE_UNAVAILABLE",
) -> ServiceError:
    """UNAVAILABLE with RetryInfo: a retry after the delay may succeed."""
    return ServiceError(Code.UNAVAILABLE, reason, message, retry_delay=UNAVAILABLE_RETRY_SECONDS)


def unauthenticated(reason: str, message: str) -> ServiceError:
    """UNAUTHENTICATED: no, malformed, badly signed or expired token."""
    return ServiceError(Code.UNAUTHENTICATED, reason, message)


def permission_denied(reason: str, message: str) -> ServiceError:
    """PERMISSION_DENIED: the token is valid but may not do this."""
    return ServiceError(Code.PERMISSION_DENIED, reason, message)
