"""The HTTP port: the JSON API (transcoded from the protos' annotations), its
event streams as server-sent events, and the dashboard's static files, served
by uvicorn on the event loop grpc.aio already runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import Any

import uvicorn
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from genjobs.server.api.auth import VerifiedTokens, is_open
from genjobs.server.api.http import transcode
from genjobs.server.api.http.errors import error_body, error_response, no_route
from genjobs.server.api.http.guard import Limits, protocol
from genjobs.server.api.http.web import WebFiles, security_headers
from genjobs.server.api.servicers.common import plain_handlers, service_error
from genjobs.server.model.caller import set_current_caller
from genjobs.server.model.errors import Code, ServiceError
from genjobs.server.telemetry import metrics

API_PREFIX = "/v1/"
MAX_BODY_BYTES = 4 * 1024 * 1024  # gRPC's own limit on a request message
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The service and method label of an API call that matched no route (a path is no label).
NO_ROUTE = ("genjobs.http", "NoRoute")
TICK_SECONDS = 1.0  # the HTTP server's housekeeping tick: the Date header's resolution


class HttpApi:
    """The ASGI app: `/v1/...` transcoded to the RPC handlers, everything else
    the dashboard's files."""

    def __init__(
        self,
        services: Iterable[ServiceDescriptor],
        handlers: dict[str, Callable[[Any], Any]],
        tokens: VerifiedTokens,
    ) -> None:
        self.routes = transcode.routes(services)
        self.handlers = handlers
        self.tokens = tokens
        self.frames = transcode.FrameCache()
        files = WebFiles()
        self.app = Starlette(
            middleware=[
                # Every answer: the dashboard's CSP, no sniffing, no framing.
                Middleware(security_headers, headers=files.security_headers()),
                # Compressed when the caller accepts it (browsers do): a page of 50
                # jobs with their articles shrinks about fivefold. Never the event streams.
                Middleware(GZipMiddleware, minimum_size=1024, compresslevel=5),
            ],
            routes=[
                Route(
                    API_PREFIX + "{rest:path}",
                    self.serve,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
                Route("/metrics", _metrics, methods=["GET"]),
                Route("/{path:path}", files.serve, methods=["GET", "HEAD"]),
            ],
            # A path no route's pattern takes (one with a newline, say): still the API's error shape.
            exception_handlers={404: _not_found},
        )

    def find(self, method: str, path: str) -> tuple[transcode.Route, dict[str, str]]:
        """The route serving `method path` and its path variables, or NOT_FOUND / UNIMPLEMENTED."""
        bare, custom = transcode.split_custom(path)
        allowed = []
        for route in self.routes:
            variables = route.match(bare, custom)
            if variables is None:
                continue
            if route.verb == method:
                return route, variables
            allowed.append(route.verb)
        raise no_route(method, path, allowed)

    async def serve(self, request: Request) -> Response:
        """One API call: route, authenticate, build the request, call the RPC's handler;
        counted in the RPC metrics with transport="http" (a stream: when it ends)."""
        started = time.perf_counter()
        name = request.url.path
        service, method = NO_ROUTE
        try:
            route, variables = self.find(request.method, request.url.path)
            name = route.method.full_name
            service, method = route.method.containing_service.full_name, route.method.name
            if not is_open(f"/{route.method.containing_service.full_name}/{route.method.name}"):
                set_current_caller(self.tokens.caller(request.headers.get("authorization")))
            message = transcode.build_request(
                route,
                variables,
                request.query_params.multi_items(),
                await _body(request),
                request.headers.get("last-event-id"),
            )
            handler = self.handlers.get(name)
            if handler is None:
                raise ServiceError(Code.UNIMPLEMENTED, "NOT_IMPLEMENTED", f"{name} is not served")
            if route.streaming:
                return await self._stream(handler(message), name, started)
            answer = await handler(message)
        except Exception as exc:
            error = service_error(exc, name)
            metrics.rpc_done(service, method, error.code.name, started, "http")
            return error_response(error)
        metrics.rpc_done(service, method, "OK", started, "http")
        return Response(transcode.to_json(answer, route.response_body), media_type="application/json")

    async def _stream(self, stream: AsyncIterator[Message], name: str, started: float) -> Response:
        """Server-sent events, one per message. The first message is awaited
        here, so that a stream refused at once (not found, bad request) is an
        HTTP error status, not an event."""
        try:
            first: Message | None = await anext(stream)
        except StopAsyncIteration:  # resumed after the end: nothing more will come
            first = None
        return StreamingResponse(
            self._events(stream, first, name, started), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def _events(
        self, stream: AsyncIterator[Message], first: Message | None, name: str, started: float
    ) -> AsyncIterator[str]:
        service, _, method = name.rpartition(".")
        gauge = metrics.stream_gauge(method, "http")
        gauge.inc()
        code = "CANCELLED"  # unless it ends otherwise: the caller went away
        try:
            if first is not None:
                yield transcode.sse_frame(first, self.frames.json(first))
                async for message in stream:
                    yield transcode.sse_frame(message, self.frames.json(message))
            code = "OK"
        except Exception as exc:
            # Headers are sent: the error (e.g. UNAVAILABLE at shutdown) is the last event.
            error = service_error(exc, name)
            code = error.code.name
            body = error_body(error)
            yield f"event: error\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
        finally:
            gauge.dec()
            metrics.rpc_done(service, method, code, started, "http")
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]


def port_setting(value: str) -> int | None:
    """GENJOBS_HTTP_PORT: a port, 0 for a free one, or None for `off`."""
    if value.strip().lower() == "off":
        return None
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise SystemExit(f"genjobs: GENJOBS_HTTP_PORT={value!r} is not a port, 0 or 'off'")
    return port


async def _not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith(API_PREFIX):
        return error_response(no_route(request.method, request.url.path, []))
    return PlainTextResponse("not found", status_code=404)


async def _metrics(request: Request) -> Response:
    """Prometheus' scrape of this replica (the same as GENJOBS_METRICS_PORT serves)."""
    body, content_type = metrics.exposition(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)


async def _body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY_BYTES (as gRPC refuses a message
    over 4 MB): one route needs no token, so no caller may make the server hold more."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _too_large()
    except ClientDisconnect:  # gone before its body was whole (or closed by the body's deadline)
        raise ServiceError(
            Code.CANCELLED, "CLIENT_GONE", "the connection closed before the body arrived"
        ) from None
    return bytes(body)


def _too_large() -> ServiceError:
    return ServiceError(
        Code.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE", f"the body is over {MAX_BODY_BYTES} bytes"
    )


def make_api(
    servicers: dict[ServiceDescriptor, object],
    secret: str,
    wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]] | None = None,
) -> HttpApi:
    """The API over the same servicers' RPC bodies as gRPC, with the same token
    check; each handler through `wrap` when given (the database's deadline)."""
    handlers: dict[str, Callable[[Any], Any]] = {}
    for service, servicer in servicers.items():
        handlers.update(plain_handlers(servicer, service))
    if wrap is not None:
        handlers = {name: wrap(handler) for name, handler in handlers.items()}
    return HttpApi(servicers, handlers, VerifiedTokens(secret))


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the genjobs server owns SIGTERM
    and SIGINT), and with one tick a second instead of ten."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_asked = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        """uvicorn's own loop wakes the event loop every 0.1 s, most of a
        server's CPU at rest on that loop; its tick's work (the Date header)
        is once a second. So: a tick a second, and at once when asked to exit."""
        while not await self.on_tick(0):  # 0: the tick that renews the Date header
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit_asked.wait(), TICK_SECONDS)

    def ask_exit(self) -> None:
        """Stop taking connections; `serve` then shuts down."""
        self.should_exit = True
        self.exit_asked.set()


class HttpFace:
    """The HTTP port's lifetime: `await start(host, port)`, then `await stop(grace)`."""

    def __init__(self, api: HttpApi, limits: Limits | None = None, idle_seconds: float = 5.0) -> None:
        self.api = api
        self.limits = limits or Limits()
        self.idle_seconds = idle_seconds
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, tls: dict[str, Any] | None = None) -> int:
        """Listen on host:port (0: a free port) and serve, over TLS with uvicorn's
        `tls` options when given; returns the port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise SystemExit(
                f"genjobs: cannot listen for HTTP on {host}:{port}: {exc.strerror or exc};"
                " stop what holds it or choose another port with GENJOBS_HTTP_PORT or --http-port"
            ) from None
        sock.listen(2048)  # connections wait in the backlog until uvicorn takes them up
        config = uvicorn.Config(
            self.api.app,
            log_config=None,  # genjobs configures logging
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            server_header=False,
            # httptools under the guards (server/api/http/guard.py): heads capped and
            # timed, connections bounded; then a kept-alive connection's idle time.
            http=protocol(self.limits),
            timeout_keep_alive=self.idle_seconds,  # type: ignore[arg-type]
            **(tls or {}),
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        return int(sock.getsockname()[1])

    async def stop(self, grace: float) -> None:
        """Stop taking connections; open streams end (the hub closes them first)."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(1, int(grace))
        self._server.ask_exit()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
