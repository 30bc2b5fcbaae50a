"""Assembles the server: database, store, dispatcher, event feed, gRPC services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from genjobs.v1 import bulk_pb2, bulk_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pymongo.errors import PyMongoError

from server import reflection
from server.auth import AuthInterceptor, load_secret
from server.bulk import Bulks
from server.config import Settings
from server.dispatcher import Dispatcher
from server.embedded import EmbeddedMongo
from server.eventlog import EventLog
from server.events import EventHub
from server.generators import make_generator
from server.jobs import Jobs
from server.notify import make_notifier
from server.notify.job_end import JobNotifications
from server.progress import AttemptTokens, ExternalProgress, ProgressLink
from server.servicers.bulk import BulkServicer
from server.servicers.jobs import JobServicer
from server.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    bulk_pb2.DESCRIPTOR.services_by_name["BulkService"].full_name,
)
HEALTH_CHECK_SECONDS = 1.0
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


def _port_error(host: str, port: int, why: str) -> str:
    return (
        f"genjobs: cannot listen on {host}:{port}: {why} (the port is in use or not allowed);"
        " stop what holds it or choose another port with GENJOBS_PORT or --port"
    )


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on the event loop genjobs serves from: uvloop where it is
    installed (about 10% less server CPU per RPC than asyncio's own loop, with
    grpc.aio and pymongo's async client alike), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows)
        return asyncio.run(main)
    return uvloop.run(main)


def advertised(host: str, port: int) -> str:
    """host:port where generation services reach this server: the bound host,
    or this machine's name when bound to every interface."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.getfqdn()
    return f"{host}:{port}"


class App:
    """One genjobs server: `await start()`, then `await stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.embedded: EmbeddedMongo | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self._database_ready = asyncio.Event()
        self._stopped = asyncio.Event()
        # Made first: a configuration mistake stops the server before it starts anything.
        self.progress_link = ProgressLink()
        self.generator = make_generator(settings, self.progress_link)
        check_port_free(settings.host, settings.port)

    async def start(self) -> int:
        """Connect (or start the embedded database), then serve; returns the port."""
        settings = self.settings
        secret = load_secret(settings.auth_secret, settings.data_dir)
        uri = settings.mongodb_uri
        if not uri:
            self.embedded = EmbeddedMongo(settings.data_dir)
            uri = await asyncio.to_thread(self.embedded.acquire)
        loop = asyncio.get_running_loop()
        # Every RPC runs its pymongo call in a thread: enough of them for many
        # concurrent callers, each holding one pooled connection briefly.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="rpc"))
        self.store = Store(uri, settings.db_name, settings.retention_days)
        self.hub = EventHub(loop)
        self.event_log = EventLog(self.store)
        self.event_log.start()
        self.jobs = Jobs(self.store, self.hub, self.event_log, self.worker_id, settings.max_attempts)
        self.notifier = make_notifier(
            settings, self.store, load_secret(settings.webhook_secret, settings.data_dir, "webhook_secret")
        )
        self.jobs.email_enabled = bool(settings.smtp_url)
        self.bulks = Bulks(self.store, self.hub, self.jobs, self.notifier)
        self.job_notifications = JobNotifications(self.store, self.jobs, self.notifier)
        self.progress_link.tokens = AttemptTokens(secret)
        self.dispatcher = Dispatcher(
            self.store,
            self.generator,
            self.worker_id,
            record=self.jobs.record,
            lease_seconds=settings.lease_seconds,
            poll_seconds=settings.poll_seconds,
            retry_base_seconds=settings.retry_base_seconds,
            # Often enough that a completed job outlives its retention by at most a quarter.
            sweep_seconds=min(60.0, settings.retention_days * 86400 / 4),
            sweepers=[self.bulks.recover, self.job_notifications.recover],
        )
        self.jobs.dispatcher = self.dispatcher

        server = grpc.aio.server(interceptors=[AuthInterceptor(secret)], options=SERVER_OPTIONS)
        progress = ExternalProgress(self.store, self.progress_link.tokens, self.jobs.record)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self.jobs, self.hub, progress), server)
        bulk_pb2_grpc.add_BulkServiceServicer_to_server(BulkServicer(self.bulks, self.hub), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable((*SERVICE_NAMES, health.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        except RuntimeError:
            self.port = 0  # grpc raises, or returns 0, when it cannot bind
        if self.port == 0:
            raise SystemExit(_port_error(settings.host, settings.port, "grpc could not bind it"))
        self.progress_link.target = settings.progress_target or advertised(settings.host, self.port)
        await server.start()
        self.server = server
        self._tasks = [
            asyncio.create_task(self._watch_database(), name="database-health"),
            asyncio.create_task(self._poll_remote_events(), name="remote-events"),
            asyncio.create_task(self.hub.beat(settings.heartbeat_seconds), name="heartbeats"),
        ]
        await asyncio.wait_for(self._database_ready.wait(), timeout=30)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: NOT_SERVING, no new jobs, streams end UNAVAILABLE, then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.to_thread(self.dispatcher.stop, grace)
        await asyncio.to_thread(self.event_log.stop)
        self.hub.close()
        self.notifier.stop()
        if self.server is not None:
            await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close_async()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.release)

    async def wait(self) -> None:
        """Until the server stops."""
        if self.server is not None:
            await self.server.wait_for_termination()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _watch_database(self) -> None:
        """SERVING only while the database answers; indexes and the dispatcher
        start the first time it does."""
        serving: bool | None = None
        while True:
            try:
                await asyncio.to_thread(self.store.ping)
                if not self._database_ready.is_set():
                    await asyncio.to_thread(self.store.ensure_indexes)
                    self.dispatcher.start()
                    self.notifier.start()
                    self._database_ready.set()
                ok = True
            except PyMongoError as exc:
                ok = False
                if serving is not False:
                    log.warning("database unreachable: %s", exc)
            if ok != serving and not self._stopped.is_set():
                serving = ok
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
            await asyncio.sleep(HEALTH_CHECK_SECONDS)

    async def _poll_remote_events(self) -> None:
        """Changes made by other replicas reach this server's watchers here.

        One query per interval for all watched jobs: the job documents are the
        truth; stored events fill in the steps between, a snapshot the rest.
        """
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.jobs.poll_remote()
                await self.bulks.poll_remote()
            except PyMongoError as exc:
                log.debug("remote event poll failed: %s", exc)
