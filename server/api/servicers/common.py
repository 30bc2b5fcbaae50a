"""What every servicer shares: turning domain errors into gRPC statuses."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from pymongo.errors import PyMongoError

from genjobs.server.api.status import grpc_status
from genjobs.server.api.watch import ShuttingDown
from genjobs.server.model.errors import Code, ServiceError, clip, unavailable
from genjobs.server.storage.outage import unreachable

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def service_error(exc: BaseException, method: str) -> ServiceError:
    """The error a caller sees for `exc` raised while serving `method`, over
    gRPC or HTTP alike (anything unexpected is logged and becomes INTERNAL)."""
    if isinstance(exc, ServiceError):
        error = exc
    elif unreachable(exc):  # down, or slower than the time allowed (GENJOBS_DB_TIMEOUT_SECONDS)
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
        error = ServiceError(Code.INTERNAL, "INTERNAL", "internal error; see the server log")
    return error


def _status_of(exc: BaseException, method: str) -> grpc.Status:
    return grpc_status(service_error(exc, method))


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


class _Undecodable:
    """Stands for a request body that did not parse, so that the handler can refuse it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _malformed(undecodable: _Undecodable) -> grpc.Status:
    error = ServiceError(
        Code.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        f"the request body is not a valid protobuf message: {clip(str(undecodable.error), 200)}",
    )
    return grpc_status(error)


class RequestDecoding(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT to a body that does not parse (grpcio says UNKNOWN).

    grpcio calls the handler's request deserializer before any servicer code
    and turns what it raises into UNKNOWN. So each handler is wrapped once: its
    deserializer hands an `_Undecodable` on instead of raising, and its
    behaviour aborts with INVALID_ARGUMENT when it gets one. Placed after the
    auth interceptor, whose refusals then decode bodies the same way.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        known = self._wrapped.get(handler_call_details.method)
        if known is None or known[0] is not handler:
            known = (handler, _tolerant(handler))
            self._wrapped[handler_call_details.method] = known
        return known[1]


def _tolerant(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with a deserializer that never raises and a behaviour that refuses what did not parse."""
    parse = handler.request_deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception as exc:  # DecodeError, or bad UTF-8 in a string field
            return _Undecodable(exc)

    inner = handler.unary_stream if handler.response_streaming else handler.unary_unary
    behaviour: Callable[..., Any]
    if inspect.isasyncgenfunction(inner):  # a stream that yields its messages

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort_with_status(_malformed(request))
            async for item in inner(request, context):
                yield item

        behaviour = stream
    else:  # a unary call, or a stream written with context.write

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort_with_status(_malformed(request))
            return await inner(request, context)

        behaviour = call
    make = (
        grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(behaviour, request_deserializer=deserialize, response_serializer=handler.response_serializer)


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
