"""The genjobs client's exceptions: one GenJobsError subclass per gRPC status a
caller handles, made from an RpcError (its ErrorInfo and BadRequest) by `translate`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class GenJobsError(Exception):
    """An RPC failed. `reason` is the server's ErrorInfo reason (e.g. JOB_NOT_CANCELLABLE)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        violations: Sequence[tuple[str, str]] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{reason or code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = list(violations)
        self.metadata = dict(metadata or {})


class InvalidArgument(GenJobsError):
    """The request was malformed; `violations` lists (field, description)."""


class NotFound(GenJobsError):
    """No such job (or it belongs to someone else)."""


class FailedPrecondition(GenJobsError):
    """The job's status does not allow this; `metadata['status']` names it."""


class Unauthenticated(GenJobsError):
    """No token, or a malformed, badly signed or expired one."""


class Unavailable(GenJobsError):
    """The server or its database is unreachable; retry later."""


class ResourceExhausted(GenJobsError):
    """A limit was hit."""


class AlreadyExists(GenJobsError):
    """The name is taken (a template)."""


_KINDS: dict[grpc.StatusCode, type[GenJobsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
}


def translate(error: grpc.RpcError) -> GenJobsError:
    """The GenJobsError subclass for an RpcError, with its ErrorInfo and BadRequest."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    reason, violations, metadata = "", [], {}
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    kind = _KINDS.get(code, GenJobsError)
    return kind(code, message or "", reason, violations, metadata)
