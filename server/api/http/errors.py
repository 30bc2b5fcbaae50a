"""Errors over HTTP: Google's JSON error shape with the standard gRPC-to-HTTP status mapping."""

from __future__ import annotations

from google.protobuf import json_format
from starlette.responses import JSONResponse

from genjobs.server.api.status import to_status
from genjobs.server.model.errors import Code, FieldViolation, ServiceError

# google.rpc.Code -> HTTP status, as google/rpc/code.proto documents it.
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
}
# Errors whose HTTP status is more precise than their gRPC code's.
STATUS_BY_REASON = {"REQUEST_TOO_LARGE": 413}
# Longest piece of a caller's input echoed back in a message.
ECHO_LIMIT = 200


def error_body(error: ServiceError) -> dict[str, object]:
    """`{"error": {code, message, status, details}}` for `error`; details are
    the same ErrorInfo (and BadRequest) the gRPC status carries."""
    status = json_format.MessageToDict(to_status(error))
    return {
        "error": {
            "code": http_status(error),
            "message": error.message,
            "status": error.code.name,
            "details": status.get("details", []),
        }
    }


def error_response(error: ServiceError) -> JSONResponse:
    """The HTTP response for `error`."""
    headers = {"WWW-Authenticate": "Bearer"} if error.code == Code.UNAUTHENTICATED else None
    return JSONResponse(error_body(error), status_code=http_status(error), headers=headers)


def http_status(error: ServiceError) -> int:
    """The HTTP status of `error`: by its reason where one is more precise, else by its code."""
    return STATUS_BY_REASON.get(error.reason) or HTTP_STATUS.get(error.code, 500)


def bad_request(reason: str, where: str, problem: str) -> ServiceError:
    """INVALID_ARGUMENT for input the transcoder cannot read (bad JSON, an
    unknown field, a wrong type), naming where it is."""
    problem = problem.strip().splitlines()[0] if problem.strip() else "invalid"
    # Echoed input may hold lone surrogates, which neither UTF-8 nor a protobuf string can carry.
    problem = problem[:ECHO_LIMIT].encode("utf-8", "replace").decode()
    return ServiceError(
        Code.INVALID_ARGUMENT, reason, f"{where}: {problem}", [FieldViolation(where, problem)]
    )


def no_route(method: str, path: str, allowed: list[str]) -> ServiceError:
    """NOT_FOUND (no such path) or UNIMPLEMENTED (the path exists, not with this method)."""
    path = path[:ECHO_LIMIT]
    if allowed:
        return ServiceError(
            Code.UNIMPLEMENTED,
            "METHOD_NOT_ALLOWED",
            f"{method} is not served on {path}; use {', '.join(sorted(allowed))}",
        )
    return ServiceError(Code.NOT_FOUND, "NO_SUCH_ROUTE", f"no API route {method} {path}")
