"""A domain error's wire form, once: the google.rpc.Status (ErrorInfo,
BadRequest, RetryInfo, QuotaFailure) that gRPC sends in its trailers and the
HTTP face as JSON, bounded to fit in about 1.7 KB of trailers."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from genjobs.server.model.errors import (
    DOMAIN,
    MAX_DESCRIPTION,
    MAX_DETAILS_BYTES,
    MAX_ECHO,
    MAX_FIELD,
    MAX_MESSAGE_BYTES,
    MAX_METADATA,
    MAX_VIOLATIONS,
    FieldViolation,
    ServiceError,
    clip,
)


def to_status(error: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status carrying ErrorInfo (and BadRequest when relevant), bounded."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    for key, value in list(error.metadata.items())[:MAX_METADATA]:
        info.metadata[clip(key, MAX_ECHO)] = clip(value)
    if len(error.violations) > 1:
        info.metadata["violations"] = str(len(error.violations))
    details = [_pack(info)]
    if error.violations:
        budget = MAX_DETAILS_BYTES - info.ByteSize()
        details.append(_pack(_bad_request(error.violations, budget)))
    if error.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_delay * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if error.quota:
        failure = error_details_pb2.QuotaFailure()
        for subject, description in error.quota[:MAX_VIOLATIONS]:
            failure.violations.add(
                subject=clip(subject, MAX_FIELD), description=clip(description, MAX_DESCRIPTION)
            )
        details.append(_pack(failure))
    message = _cut_bytes(error.message, MAX_MESSAGE_BYTES)
    return status_pb2.Status(code=int(error.code), message=message, details=details)


def grpc_status(error: ServiceError) -> grpc.Status:
    """`error` as the status a gRPC call aborts with (the codes are the same numbers)."""
    return rpc_status.to_status(to_status(error))


def _bad_request(violations: list[FieldViolation], budget: int) -> error_details_pb2.BadRequest:
    """The first violations that fit `budget` bytes (at most MAX_VIOLATIONS), then how many more."""
    bad = error_details_pb2.BadRequest()
    for shown, violation in enumerate(violations):
        entry = error_details_pb2.BadRequest.FieldViolation(
            field=clip(violation.field, MAX_FIELD), description=clip(violation.description, MAX_DESCRIPTION)
        )
        # Room is kept for the closing "N more" entry (about 40 bytes).
        if shown == MAX_VIOLATIONS or bad.ByteSize() + entry.ByteSize() + 48 > budget:
            more = len(violations) - shown
            bad.field_violations.add(field="", description=f"and {more} more violations not shown")
            break
        bad.field_violations.append(entry)
    return bad


def _cut_bytes(text: str, limit: int) -> str:
    raw = text.encode("utf-8", "replace")
    return text if len(raw) <= limit else raw[: limit - 3].decode("utf-8", "ignore") + "…"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
