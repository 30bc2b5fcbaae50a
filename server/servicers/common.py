"""What every servicer shares: turning domain errors into gRPC statuses."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pymongo.errors import PyMongoError

from server.errors import ServiceError, unavailable
from server.outage import unreachable
from server.watch import ShuttingDown

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
RETRY_DELAY = duration_pb2.Duration(seconds=1)  # what an UNAVAILABLE answer suggests waiting


def _status_of(exc: BaseException, method: str) -> grpc.Status:
    if isinstance(exc, ServiceError):
        error = exc
    elif unreachable(exc):  # down, or slower than the time allowed (GENJOBS_DB_TIMEOUT_SECONDS)
        error = unavailable()
    elif isinstance(exc, ShuttingDown):
        error = ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "SERVER_SHUTTING_DOWN",
            "the server is restarting; reconnect with after_sequence to resume",
        )
    else:
        if isinstance(exc, PyMongoError):
            log.error("database error in %s: %s", method, exc)
        else:
            log.exception("bug in %s", method)
        error = ServiceError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error; see the server log")
    status = error.to_status()
    if error.code == grpc.StatusCode.UNAVAILABLE:
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=RETRY_DELAY))
        status.details.append(retry)
    return rpc_status.to_status(status)


def rpc(method: F) -> F:
    """Wrap a servicer method (unary or streaming) so that errors become statuses."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                await context.abort_with_status(_status_of(exc, method.__name__))

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await context.abort_with_status(_status_of(exc, method.__name__))

    return unary  # type: ignore[return-value]
