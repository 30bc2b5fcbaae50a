"""Domain errors, each with a gRPC code and an UPPER_SNAKE ErrorInfo reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "genjobs.v1"


@dataclass
class FieldViolation:
    """One bad request field, e.g. ("params.topic", "required for MODE_TOPIC")."""

    field: str
    description: str


@dataclass
class ServiceError(Exception):
    """An error the caller should see: code, reason, message, optional details."""

    code: grpc.StatusCode
    reason: str
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # Seconds a client should wait before retrying, sent as google.rpc.RetryInfo.
    retry_delay: float | None = None

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status carrying ErrorInfo (and BadRequest when relevant)."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        info.metadata.update(self.metadata)
        details = [_pack(info)]
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_delay is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(self.retry_delay * 1000))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def invalid(violations: list[FieldViolation], reason: str = "INVALID_REQUEST") -> ServiceError:
    """INVALID_ARGUMENT naming every bad field."""
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, summary, violations)


def not_found(kind: str, ident: str) -> ServiceError:
    """NOT_FOUND; also what another user's resource looks like."""
    reason = f"{kind.upper().replace(' ', '_')}_NOT_FOUND"
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, reason, f"{kind} {ident!r} not found", metadata={"id": ident}
    )


def wrong_status(reason: str, kind: str, ident: str, status: str, hint: str) -> ServiceError:
    """FAILED_PRECONDITION naming the current status."""
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        reason,
        f"{kind} {ident} is {status.lower()}: {hint}",
        metadata={"id": ident, "status": status},
    )


def email_not_configured() -> ServiceError:
    """FAILED_PRECONDITION: notify_email on a server with no SMTP server configured."""
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "EMAIL_NOT_CONFIGURED",
        "email is not configured on this server (GENJOBS_SMTP_URL is unset): notify_email cannot be used",
    )


def sequence_out_of_range(kind: str, ident: str, after: int, last: int) -> ServiceError:
    """OUT_OF_RANGE: a watch resumed after a sequence the stream never reached."""
    return ServiceError(
        grpc.StatusCode.OUT_OF_RANGE,
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
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message, retry_delay=UNAVAILABLE_RETRY_SECONDS)


def unauthenticated(reason: str, message: str) -> ServiceError:
    """UNAUTHENTICATED: no, malformed, badly signed or expired token."""
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, message)
