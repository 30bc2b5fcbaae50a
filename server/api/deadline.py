"""Every call's database deadline, over gRPC (an interceptor) and HTTP (a
wrapped handler): the api's half of `storage.outage.database_deadline`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from genjobs.server.storage.outage import database_deadline


def bounded(handler: Callable[[Any], Any], limit_seconds: float) -> Callable[[Any], Any]:
    """An HTTP face's handler (request in, answer out) whose database calls
    together take `limit_seconds` at most, as DatabaseDeadline bounds a gRPC
    call's; a streaming handler is returned unchanged."""
    body = getattr(handler, "func", handler)
    if inspect.isasyncgenfunction(body):
        return handler

    async def call(request: Any) -> Any:
        with database_deadline(limit_seconds):
            return await handler(request)

    return call


class DatabaseDeadline(grpc.aio.ServerInterceptor):
    """Bounds the database calls of every unary RPC by the caller's deadline or
    by `limit_seconds`, whichever ends first (pymongo's `timeout()` is carried
    by context variables: into the threads `asyncio.to_thread` starts too).
    A database that does not answer in time then gives UNAVAILABLE."""

    def __init__(self, limit_seconds: float) -> None:
        self.limit = limit_seconds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler  # streams are long; each database call in them has the store's limit
        behavior = handler.unary_unary
        limit = self.limit

        async def bounded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            with database_deadline(limit if remaining is None else min(limit, remaining)):
                return await behavior(request, context)

        return handler._replace(unary_unary=bounded)
