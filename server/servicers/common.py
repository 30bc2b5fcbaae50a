"""What every servicer shares: turning domain errors into gRPC statuses."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_status import rpc_status
from pymongo.errors import ConnectionFailure, PyMongoError

from server.errors import ServiceError, unavailable
from server.watch import ShuttingDown

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def service_error(exc: BaseException, method: str) -> ServiceError:
    """The error a caller sees for `exc` raised while serving `method`, over
    gRPC or HTTP alike (anything unexpected is logged and becomes INTERNAL)."""
    if isinstance(exc, ServiceError):
        error = exc
    elif isinstance(exc, ConnectionFailure):
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
    return error


def _status_of(exc: BaseException, method: str) -> grpc.Status:
    return rpc_status.to_status(service_error(exc, method).to_status())


def rpc(method: F) -> F:
    """Wrap a servicer method (unary or streaming) so that errors become statuses.

    The wrapped body is the RPC's one translation (proto in, domain call,
    proto out); the HTTP face calls it too, with no gRPC context (None), so a
    body reads its caller from current_caller() and raises ServiceError.
    """
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


def plain_handlers(servicer: object, service: ServiceDescriptor) -> dict[str, Callable[[Any], Any]]:
    """`servicer`'s RPCs of `service` by full method name (genjobs.v1.JobService.GetJob),
    each its body without the gRPC wrapper: request in, response (or an async
    iterator of them) out, errors raised. RPCs it does not implement are left out."""
    bodies: dict[str, Callable[[Any], Any]] = {}
    for method in service.methods:
        bound = getattr(servicer, method.name, None)
        body = inspect.unwrap(bound) if bound is not None else None
        if body is None or body is bound:  # not an @rpc method: unimplemented
            continue
        bodies[method.full_name] = functools.partial(body, servicer, context=None)
    return bodies
