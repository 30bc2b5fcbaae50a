"""What every servicer shares: turning domain errors into gRPC statuses."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_status import rpc_status
from pymongo.errors import ConnectionFailure, PyMongoError

from server.errors import ServiceError, unavailable
from server.watch import ShuttingDown

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _status_of(exc: BaseException, method: str) -> grpc.Status:
    if isinstance(exc, ServiceError):
        error = exc
    elif isinstance(exc, ConnectionFailure):
        error = unavailable()
    elif isinstance(exc, ShuttingDown):
        error = unavailable(
            "the server is restarting; reconnect with after_sequence to resume", "SERVER_SHUTTING_DOWN"
        )
    else:
        if isinstance(exc, PyMongoError):
            log.error("database error in %s: %s", method, exc)
        else:
            log.exception("bug in %s", method)
        error = ServiceError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error; see the server log")
    return rpc_status.to_status(error.to_status())


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
