"""Assembles the server: database, store, dispatcher, event feed, gRPC services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pymongo
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pymongo.errors import PyMongoError

from genjobs.server.api import reflection
from genjobs.server.api.auth import AuthInterceptor, load_secret
from genjobs.server.api.deadline import DatabaseDeadline, bounded
from genjobs.server.api.http.face import HttpFace, make_api, port_setting
from genjobs.server.api.http.guard import Limits
from genjobs.server.api.servicers.common import RequestDecoding
from genjobs.server.api.watch import StreamCap
from genjobs.server.model.loops import new_event_loop
from genjobs.server.model.progress import AttemptTokens, ProgressLink
from genjobs.server.runtime import observability, wiring
from genjobs.server.runtime.config import Settings
from genjobs.server.runtime.embedded import HUNG_SECONDS, EmbeddedError, EmbeddedMongo
from genjobs.server.runtime.factories import make_generator
from genjobs.server.services.events import EventHub
from genjobs.server.storage.archive import Retention
from genjobs.server.storage.eventlog import EventLog
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import metrics
from genjobs.v1 import (
    bulk_pb2,
    bulk_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    bulk_pb2.DESCRIPTOR.services_by_name["BulkService"].full_name,
    schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
    templates_pb2.DESCRIPTOR.services_by_name["TemplateService"].full_name,
)
HEALTH_CHECK_SECONDS = 1.0
# A lease renewal (once a second at most) this recent stands for the health check's ping.
ANSWER_STANDS_SECONDS = 1.5
DATABASE_START_SECONDS = 30.0  # a start gives up when the database has not answered by then
HEALTH_PING_SECONDS = 2.0  # a database slower than this to answer a ping is NOT_SERVING
INDEX_BUILD_SECONDS = 600.0
STOP_RPC_SECONDS = 5.0  # at shutdown, how long unary calls under way may take to answer
# gRPC turns away calls beyond 1,000 not yet taken up by the server (3,000 always).
# Thousands of watchers reconnecting at once after a restart must queue, not fail.
SERVER_OPTIONS = [
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 30_000),
    # A port in use is a start-up error: with SO_REUSEPORT a second server would
    # share it, and calls would land on either at random.
    ("grpc.so_reuseport", 0),
]


def check_port_free(host: str, port: int) -> None:
    """Stop (one line naming the port) when something already listens on it:
    grpc would report it only in its own log, after the database has started."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
            )  # as grpc binds: TIME_WAIT is no owner
            probe.bind(address)
    except OSError as exc:
        raise SystemExit(_port_error(host, port, exc.strerror or str(exc))) from None


def _port_error(host: str, port: int, why: str, setting: str = "GENJOBS_PORT") -> str:
    """One line naming the port, and the setting that moves it."""
    return (
        f"genjobs: cannot listen on {host}:{port}: {why} (the port is in use or not allowed);"
        f" stop what holds it or choose another port with {setting}"
        f" or --{setting.removeprefix('GENJOBS_').lower().replace('_', '-')}"
    )


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on the event loop genjobs serves from (`model.loops`)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def advertised(host: str, port: int) -> str:
    """host:port where generation services reach this server: the bound host,
    or this machine's name when bound to every interface."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.getfqdn()
    return f"{host}:{port}"


class StartError(Exception):
    """The server could not start; the message says why, in one line."""


class App:
    """One genjobs server: `await start()`, then `await stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.embedded: EmbeddedMongo | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.http: HttpFace | None = None
        self.streams = StreamCap(settings.max_streams_per_owner)  # per process: see server/api/watch.py
        self.http_port = 0  # 0 while the HTTP face is off
        self.health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self._database_answered = asyncio.Event()  # the first ping was answered
        self._database_ready = asyncio.Event()  # ... and the indexes are built: serving
        self._stopped = asyncio.Event()
        # Set when this server cannot go on (its embedded database cannot be
        # brought back): the process should exit non-zero for its supervisor.
        self.failed = asyncio.Event()
        self.failure = ""
        self.secret = load_secret(settings.auth_secret, settings.data_dir)
        # Made first: a configuration mistake stops the server before it starts anything.
        self.progress_link = ProgressLink(AttemptTokens(self.secret), self._progress_target)
        self.generator = make_generator(settings, self.progress_link)
        self.metrics: observability.MetricsServer | None = None
        self._hurried = False
        self._hurry_task: asyncio.Future[None] | None = None
        check_port_free(settings.host, settings.port)

    async def start(self) -> int:
        """Connect (or start the embedded database), then serve; returns the port.

        A start that fails undoes what it did (the embedded database it started
        is stopped) and raises; `stop()` is only for a server that started."""
        async with contextlib.AsyncExitStack() as undo:
            port = await self._start(undo)
            undo.pop_all()
        return port

    async def _start(self, undo: contextlib.AsyncExitStack) -> int:
        settings = self.settings
        secret = self.secret
        uri = settings.mongodb_uri
        if not uri:
            self.embedded = EmbeddedMongo(settings.data_dir)
            uri = await asyncio.to_thread(self.embedded.acquire)
            undo.push_async_callback(asyncio.to_thread, self.embedded.release)
        loop = asyncio.get_running_loop()
        # Every RPC runs its pymongo call in a thread: enough of them for many
        # concurrent callers, each holding one pooled connection briefly.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="rpc"))
        self.store = Store(
            uri,
            settings.db_name,
            settings.retention_days,
            settings.db_timeout_seconds,
            page_secret=secret,
            retention=retention_of(settings),
        )
        undo.push_async_callback(self.store.close_async)
        self.hub = EventHub(loop)
        self.event_log = EventLog(self.store.events, self.store.outage)
        self.event_log.start()
        undo.push_async_callback(asyncio.to_thread, self.event_log.stop)
        services = wiring.build(
            settings,
            self.store,
            self.hub,
            self.event_log,
            load_secret(settings.webhook_secret, settings.data_dir, "webhook_secret"),
            self.generator,
            self.progress_link,
            self.worker_id,
            loop,
        )
        self.services = services
        self.jobs, self.bulks, self.budgets = services.jobs, services.bulks, services.budgets
        self.notifier, self.dispatcher, self.schedules = (
            services.notifier,
            services.dispatcher,
            services.schedules,
        )
        undo.push_async_callback(self._stop_workers)

        observability.setup_tracing()  # on only when OpenTelemetry's variables ask for it
        # Auth first: a caller without a token learns nothing, not even about its body.
        interceptors = [
            *observability.server_interceptors(),
            AuthInterceptor(secret),
            RequestDecoding(),
            DatabaseDeadline(settings.db_timeout_seconds),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        servicers = wiring.servicers(services, self.hub, self.streams, self.generator)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(servicers.jobs, server)
        bulk_pb2_grpc.add_BulkServiceServicer_to_server(servicers.bulk, server)
        schedules_pb2_grpc.add_ScheduleServiceServicer_to_server(servicers.schedules, server)
        templates_pb2_grpc.add_TemplateServiceServicer_to_server(servicers.templates, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable((*SERVICE_NAMES, health.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = add_port(server, settings)
        except RuntimeError:  # grpcio raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            raise SystemExit(_port_error(settings.host, settings.port, "grpc could not bind it"))
        await server.start()
        self.server = server
        undo.push_async_callback(server.stop, 0)
        self.http_port = await self._start_http(secret, *servicers.in_order())
        if self.http is not None:
            undo.push_async_callback(self.http.stop, 0)
        self._tasks = [
            asyncio.create_task(self._watch_database(), name="database-health"),
            asyncio.create_task(self._poll_remote_events(), name="remote-events"),
            asyncio.create_task(self.hub.beat(settings.heartbeat_seconds), name="heartbeats"),
            asyncio.create_task(self._count_queue(), name="queue-gauges"),
        ]
        undo.push_async_callback(self._end_tasks)
        if settings.metrics_port:
            try:
                self.metrics = observability.MetricsServer(
                    settings.host, settings.metrics_port, settings.tls_cert_file, settings.tls_key_file
                )
            except OSError as exc:
                why = exc.strerror or str(exc)
                raise SystemExit(
                    _port_error(settings.host, settings.metrics_port, why, "GENJOBS_METRICS_PORT")
                ) from None
            undo.callback(self.metrics.stop)
        await self._await_database(self._tasks[0])
        return self.port

    async def _await_database(self, watcher: asyncio.Task[None]) -> None:
        """Until the database has answered (DATABASE_START_SECONDS at most) and
        its indexes are built (INDEX_BUILD_SECONDS: long on a large history);
        a watcher that died says why."""
        for event, seconds, what in (
            (self._database_answered, DATABASE_START_SECONDS, "the database did not answer"),
            (self._database_ready, INDEX_BUILD_SECONDS, "the database's indexes were not built"),
        ):
            if event is self._database_ready and not event.is_set():
                log.info("building the database's indexes (a large history takes a while)")
            waiter = asyncio.ensure_future(event.wait())
            await asyncio.wait([waiter, watcher], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
                raise StartError(f"{what}: {watcher.exception()}")
            if not event.is_set():
                raise StartError(f"{what} within {seconds:g} s")

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: NOT_SERVING, no new jobs, streams end UNAVAILABLE, then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        began = asyncio.get_running_loop().time()
        await self._stop_dispatching(grace)
        await asyncio.to_thread(self.event_log.stop)
        self.hub.close()
        await self._streams_ended(min(grace, STOP_RPC_SECONDS))
        # Notifications under way get what is left of the grace (at most a
        # couple of seconds), then are cancelled and given back: a receiver
        # cannot keep the server past its grace.
        left = grace - (asyncio.get_running_loop().time() - began)
        await asyncio.to_thread(self.notifier.stop, max(0.0, left))
        if self.metrics is not None:
            self.metrics.stop()
        if self.http is not None:
            await self.http.stop(0 if self._hurried else grace)
        if self.server is not None:
            # Streams have ended; unary calls under way get a moment to answer.
            await self.server.stop(0 if self._hurried else min(grace, STOP_RPC_SECONDS))
        observability.shutdown_tracing()
        await self._end_tasks()
        await self.store.close_async()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.release)

    async def _streams_ended(self, within: float) -> None:
        """Wait (at most `within` s) for the open Watch streams to end: the closed
        hub ends each with UNAVAILABLE, which clients retry; one the server's
        stop cancels first (on a loaded machine) reads CANCELLED, which the
        genjobs client retries too."""
        loop = asyncio.get_running_loop()
        until = loop.time() + within
        while self.streams.open and loop.time() < until:
            await asyncio.sleep(0.01)

    async def _stop_workers(self) -> None:
        """Stop the dispatcher and the notifier if they were started
        (they start once the database first answers)."""
        if self._database_ready.is_set():
            await self._stop_dispatching(0)
            await asyncio.to_thread(self.notifier.stop)

    async def _stop_dispatching(self, grace: float) -> None:
        """Stop the dispatcher (its runs get `grace`), then tell of the ends its
        lanes left to be told, and write what they left pending behind them (the
        counted costs' flags)."""
        await asyncio.to_thread(self.dispatcher.stop, grace)
        await asyncio.to_thread(self.jobs.changes.close, max(grace, 1.0))
        await asyncio.to_thread(self.budgets.close)

    async def _end_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _start_http(self, secret: str, *servicers: object) -> int:
        """The HTTP/JSON face and the dashboard on GENJOBS_HTTP_PORT, over the
        same servicers' RPC bodies; returns its port (0: off)."""
        port = port_setting(self.settings.http_port)
        if port is None:
            return 0
        services = [
            jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
            bulk_pb2.DESCRIPTOR.services_by_name["BulkService"],
            schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"],
            templates_pb2.DESCRIPTOR.services_by_name["TemplateService"],
        ]
        limits = Limits(
            max_header_bytes=self.settings.http_max_header_bytes,
            header_timeout_seconds=self.settings.http_header_timeout_seconds,
            body_timeout_seconds=self.settings.http_body_timeout_seconds,
            max_connections=self.settings.http_max_connections,
        )
        # The same one deadline for an HTTP call's database calls as DatabaseDeadline gives a gRPC call's.
        seconds = self.settings.db_timeout_seconds
        api = make_api(
            dict(zip(services, servicers, strict=True)),
            secret,
            wrap=lambda handler: bounded(handler, seconds),
        )
        self.http = HttpFace(api, limits, self.settings.http_idle_seconds)
        return await self.http.start(
            self.settings.http_host or self.settings.host, port, http_tls(self.settings)
        )

    def hurry(self) -> None:
        """Stop now (a second signal): the running job is stopped and requeued at
        once, and calls still under way are cancelled."""
        self._hurried = True
        if hasattr(self, "dispatcher"):
            self.dispatcher.hurry()
        if self.server is not None and self._stopped.is_set():
            self._hurry_task = asyncio.ensure_future(self.server.stop(0))

    async def wait(self) -> None:
        """Until the server stops."""
        if self.server is not None:
            await self.server.wait_for_termination()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _watch_database(self) -> None:
        """SERVING only while the database answers; indexes and the dispatcher
        start the first time it does. An embedded database that died is
        started again (see `_revive`).

        The ping has a thread of its own and a short bound: RPC threads all
        waiting on a frozen database must not keep health from saying so."""
        serving: bool | None = None
        pinger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        loop = asyncio.get_running_loop()
        ping_seconds = min(HEALTH_PING_SECONDS, self.settings.db_timeout_seconds)
        unanswered_since: float | None = None
        try:
            while True:
                try:
                    if self.embedded is not None and await loop.run_in_executor(pinger, self.embedded.dead):
                        # Dead for sure: no need to wait out a ping first.
                        await self._revive(hung=False)
                    if not self._answered_lately(serving):
                        await loop.run_in_executor(pinger, self._ping, ping_seconds)
                    unanswered_since = None
                    self.store.outage.answered()
                    self._database_answered.set()
                    if not self._database_ready.is_set():
                        await asyncio.to_thread(self._ensure_indexes)
                        self.dispatcher.start()
                        self.notifier.start()
                        self._database_ready.set()
                    ok = True
                except PyMongoError as exc:
                    ok = False
                    if not self.store.outage.failed(exc, "health check") and serving is not False:
                        log.warning("database unreachable: %s", exc)
                    now = loop.time()
                    unanswered_since = unanswered_since or now
                    if self.embedded is not None and now - unanswered_since >= HUNG_SECONDS:
                        unanswered_since = None  # another HUNG_SECONDS before the next try
                        await self._revive(hung=True)
                if ok != serving and not self._stopped.is_set():
                    serving = ok
                    await self._set_health(
                        health_pb2.HealthCheckResponse.SERVING
                        if ok
                        else health_pb2.HealthCheckResponse.NOT_SERVING
                    )
                await asyncio.sleep(HEALTH_CHECK_SECONDS)
        finally:
            pinger.shutdown(wait=False)

    async def _revive(self, hung: bool) -> None:
        """Bring the embedded database back (whichever server using it gets its
        lock first starts it, on the same port and data); `failed` is set when
        that cannot be done where this server's connections look for it."""
        assert self.embedded is not None
        if self._stopped.is_set():
            return
        try:
            uri = await asyncio.to_thread(self.embedded.revive, hung)
        except (EmbeddedError, OSError) as exc:  # OSError: its data dir's files
            uri, why = "", f"the embedded database could not be restarted: {exc}"
        else:
            why = f"the embedded database moved to {uri}; restart to reconnect"
        if uri != self.embedded.uri and not self._stopped.is_set():
            log.error("stopping: %s", why)
            self.failure = why
            self.failed.set()

    def _progress_target(self) -> str:
        """host:port where generation services reach this server ("" until it listens)."""
        if not self.port:
            return ""
        return self.settings.progress_target or advertised(self.settings.host, self.port)

    def _answered_lately(self, serving: bool | None) -> bool:
        """Whether the database answered the lease keeper lately while all
        was well: then that answer stands for the ping (a frozen database
        answers neither, and the next check pings)."""
        outage = self.store.outage
        recent = time.monotonic() - outage.answered_at < ANSWER_STANDS_SECONDS
        return recent and bool(serving) and not outage.on and self._database_ready.is_set()

    def _ping(self, seconds: float) -> None:
        with pymongo.timeout(seconds):
            self.store.ping()

    def _ensure_indexes(self) -> None:
        # Building an index on a large collection may take longer than any one query.
        with pymongo.timeout(INDEX_BUILD_SECONDS):
            self.store.ensure_indexes()
            self.services.schedule_store.ensure_indexes()
            self.budgets.store.ensure_indexes()

    async def _count_queue(self) -> None:
        """The queue gauges, from the database (two indexed counts) at the
        start and then every few seconds while the metrics are read: a server
        nobody scrapes sends no command for them. A scrape after a pause finds
        them as last counted, the next ones fresh."""
        await self._database_ready.wait()
        counted_at = -1  # the metrics' reads as of the last count
        while True:
            read = metrics.scrapes()
            if read != counted_at:
                counted_at = read
                try:
                    queued, running = await asyncio.to_thread(self.store.queue.queue_counts)
                    metrics.queue_gauges(queued, running)
                except PyMongoError as exc:
                    log.debug("queue count failed: %s", exc)
            await asyncio.sleep(observability.QUEUE_REFRESH_SECONDS)

    async def _poll_remote_events(self) -> None:
        """Changes made by other replicas reach this server's watchers here.

        One query per interval for all watched jobs: the job documents are the
        truth; stored events fill in the steps between, a snapshot the rest.
        """
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.services.remote.poll()
            except PyMongoError as exc:
                log.debug("remote event poll failed: %s", exc)


def http_tls(settings: Settings) -> dict[str, Any] | None:
    """uvicorn's TLS options for the HTTP face: the same certificate, key and
    client CA as gRPC (None: plain HTTP)."""
    if not settings.tls_cert_file:
        return None
    options: dict[str, Any] = {"ssl_certfile": settings.tls_cert_file, "ssl_keyfile": settings.tls_key_file}
    if settings.tls_client_ca_file:
        options.update(ssl_ca_certs=settings.tls_client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def add_port(server: grpc.aio.Server, settings: Settings) -> int:
    """Listen on the configured address, over TLS when a certificate is
    configured (with client certificates required when a client CA is); the port."""
    address = f"{settings.host}:{settings.port}"
    if not (settings.tls_cert_file or settings.tls_key_file):
        return server.add_insecure_port(address)
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise SystemExit("genjobs: GENJOBS_TLS_CERT_FILE and GENJOBS_TLS_KEY_FILE go together")
    try:
        key = Path(settings.tls_key_file).read_bytes()
        chain = Path(settings.tls_cert_file).read_bytes()
        client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    except OSError as exc:
        raise SystemExit(f"genjobs: cannot read a TLS file: {exc}") from exc
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    return server.add_secure_port(address, credentials)


def retention_of(settings: Settings) -> Retention:
    """What the settings ask retention to do with finished jobs."""
    return Retention(
        settings.retention_mode,
        settings.retention_days,
        settings.archive_failed_days,
        settings.archive_retention_days,
    )
