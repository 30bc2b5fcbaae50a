"""Database outages: telling "the database did not answer" from "it refused",
waiting one out for a write that must not be lost, and bounding how long an
RPC waits for it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pymongo
from pymongo.errors import ConnectionFailure, PyMongoError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_SECONDS = 0.5  # first pause between tries; doubles up to MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 2.0


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer (down, restarting, frozen,
    slower than the time allowed): the same command may succeed later."""
    return isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout)


def persist(write: Callable[[], T], what: str, patience: float, give_up: threading.Event | None = None) -> T:
    """`write()`, tried again while the database is unreachable, for up to
    `patience` seconds or until `give_up` is set; then its last error is raised.
    Only for writes that are safe to repeat (conditional, fenced)."""
    deadline = time.monotonic() + patience
    pause = RETRY_SECONDS
    warned = False
    while True:
        try:
            return write()
        except PyMongoError as exc:
            left = deadline - time.monotonic()
            if not unreachable(exc) or left <= 0 or (give_up is not None and give_up.is_set()):
                raise
            if not warned:
                log.warning("database unreachable while writing %s (%s); waiting for it", what, exc)
                warned = True
            if give_up is None:
                time.sleep(min(pause, left))
            elif give_up.wait(min(pause, left)):
                raise
            pause = min(pause * 2, MAX_RETRY_SECONDS)


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
            seconds = limit if remaining is None else min(limit, remaining)
            with pymongo.timeout(max(seconds, 0.001)):  # 0 would mean "no limit" to pymongo
                return await behavior(request, context)

        return handler._replace(unary_unary=bounded)
