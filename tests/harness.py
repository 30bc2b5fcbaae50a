"""Test harness: a real nx-27017 and real genjobs servers, started on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pymongo
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genjobs.client import GenJobsClient
from genjobs.server.api.auth import make_token
from genjobs.server.model.records import Submission
from genjobs.server.model.vocabulary import Mode
from genjobs.server.runtime.app import App, run
from genjobs.server.runtime.config import Settings
from genjobs.server.runtime.embedded import free_port
from genjobs.server.storage import records
from genjobs.server.storage.store import Store
from genjobs.v1 import jobs_pb2

SECRET = "test-secret-0123456789abcdef0123"
# How a server says where it listens: its banner, or its JSON log line.
SERVING_ON = re.compile(r"serving on [^\s:]+:(\d+)")


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"condition not met within {timeout} s")
        # The pause between checks; never past the deadline, which is checked once more.
        time.sleep(min(interval, remaining))


FINAL = (jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED)


@contextlib.contextmanager
def scratch_store(uri: str, name: str) -> Iterator[Store]:
    """A Store over a database of its own (named `name`), with its indexes;
    the database is dropped afterwards."""
    store = Store(uri, name)
    store.ensure_indexes()
    try:
        yield store
    finally:
        store.database.db.client.drop_database(name)
        store.close()


def seed_job(store: Store, owner: str, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A QUEUED TOPIC job document of `owner`, not stored: what tests and
    benches fill the jobs collection with (`fields`: more of the Submission)."""
    return store.jobs.new_job(Submission(owner, Mode.TOPIC, records.params(params), **fields))


def health_of(target: str) -> int:
    """The server's health status (-1: it does not answer)."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return answer.status
        except grpc.RpcError:
            return -1


def settled(client: GenJobsClient, job_id: str, timeout: float) -> jobs_pb2.Job:
    """The job once final; calls may fail meanwhile (a database or server away)."""

    def final_job() -> jobs_pb2.Job | None:
        try:
            job = client.get(job_id)
        except Exception:
            return None
        return job if job.status in FINAL else None

    return wait_for(final_job, timeout=timeout, interval=0.1)


class MongoServer:
    """An nx-27017 process on a free port, or the URI in GENJOBS_MONGODB_URI."""

    def __init__(self, data_dir: Path, own: bool = False) -> None:
        # own=True: always a local process, for tests that stop and restart it.
        self.external = "" if own else os.environ.get("GENJOBS_MONGODB_URI", "")
        self.process: subprocess.Popen[bytes] | None = None
        self.data_dir = data_dir
        self.port = 0
        self.uri = self.external

    def start(self) -> None:
        if self.external:
            return
        fresh = not self.port  # a restart keeps its port: its clients hold the URI
        for _ in range(3):
            self.port = self.port or free_port()
            if self._launch():
                return
            if not fresh:
                raise RuntimeError(f"nx-27017 exited at its restart on port {self.port}")
            # The free port was taken before nx-27017 bound it (another test's
            # server, an outgoing connection): another one.
            self.port = 0
        raise RuntimeError("nx-27017 found no free port in 3 tries")

    def _launch(self) -> bool:
        """Start nx-27017 on self.port and wait until it answers; False if it
        exited instead, or another process answers there (its port was taken)."""
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nx_27017.nx_27017",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--pid-file",
                str(self.data_dir / "pid"),
                "--log-file",
                str(self.data_dir / "log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=200
        )
        process = self.process

        def answers_or_exited() -> bool:
            if process.poll() is not None:
                return True
            try:
                client.admin.command("ping")
                return True
            except pymongo.errors.PyMongoError:
                return False

        try:
            wait_for(answers_or_exited, timeout=30)
            # Another test's server on the port would answer too: ours must be the one.
            ours = process.poll() is None and client.admin.command("serverStatus").get("pid") == process.pid
        finally:
            client.close()
        if ours:
            return True
        if process.poll() is None:
            process.kill()
            process.wait(10)
        self.process = None
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                # A session's server closes hundreds of databases: on a loaded
                # machine that took over 10 s once (CI, the suite's teardown).
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()  # as a crash: its write-ahead log keeps what it stored
                self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """kill -9: no shutdown at all (restart with start(): same port, same data)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class ServerThread:
    """A genjobs App serving in a thread of its own, with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: App | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="server-loop", daemon=True)
        self._grace = 1.0

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise AssertionError("server did not start")
        if self._error:
            raise self._error
        return self

    def _main(self) -> None:
        run(self._serve())  # the server's own event loop

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.app = App(self.settings)
        try:
            self.port = await self.app.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.app.stop(self._grace)

    def stop(self, grace: float = 1.0) -> None:
        if self._loop is None or self._stop is None or not self._thread.is_alive():
            return
        self._grace = grace
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token(self, user: str = "alice", admin: bool = False, ttl: int = 3600, tier: str = "") -> str:
        return make_token(SECRET, user, admin, ttl, tier)

    def client(self, user: str = "alice", admin: bool = False, tier: str = "") -> GenJobsClient:
        """A client with `user`'s token (`tier` "premium": the claim that allows PRIORITY_HIGH)."""
        return GenJobsClient(self.target, self.token(user, admin, tier=tier))


@contextlib.contextmanager
def serving(settings: Settings, user: str = "alice") -> Iterator[GenJobsClient]:
    """A client of a server started on `settings`, stopped when the block ends."""
    server = ServerThread(settings).start()
    try:
        with server.client(user) as client:
            yield client
    finally:
        server.stop()


def make_settings(mongo_uri: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: its own database, fast polling and leases."""
    base = Settings(
        port=0,
        host="127.0.0.1",
        data_dir=data_dir,
        mongodb_uri=mongo_uri,
        db_name="t_" + uuid.uuid4().hex[:12],
        auth_secret=SECRET,
        lease_seconds=2.0,
        poll_seconds=0.1,
        retry_base_seconds=0.1,
        heartbeat_seconds=1.0,
        webhook_allow_private=True,  # tests' receivers listen on loopback
        http_port="0",
        shutdown_grace_seconds=2.0,  # a stopped test server requeues its running job soon
        min_schedule_interval_seconds=1.0,  # tests' schedules tick every second or two
        provider_probe_seconds=0.5,  # a provider marked down is probed twice a second
    )
    return replace(base, **overrides)


def server_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a genjobs-server subprocess use `settings`."""
    env = dict(os.environ)
    for name, value in settings.__dict__.items():
        env["GENJOBS_" + name.upper()] = str(value)
    return env


class ServerProcess:
    """`python -m genjobs.server` in a subprocess (for kill -9 and multi-process tests).

    Unless its settings name a port, the server binds a free one itself and
    the harness reads it from the server's banner: a port chosen here and
    bound later by the child could be taken meanwhile by another test's
    server, which would then answer for this one (a JOB_NOT_FOUND from the
    wrong database, seen once in CI)."""

    # A bench may run an older checkout's server from that checkout's folder:
    # before issue 28's packaging its module was the top-level `server`.
    module = "genjobs.server"

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this process's output begins in its log (a log may be reused)

    def start(self) -> ServerProcess:
        self.launch()
        wait_for(self._serving, timeout=60, interval=0.1)
        return self

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it to serve."""
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=server_env(self.settings),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        return self

    def _announced_port(self) -> bool:
        """Whether the port is known: named in the settings, or read from the
        banner (or the JSON log's "serving on" line) once the server serves."""
        if self.settings.port:
            return True
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            found = SERVING_ON.search(log.read().decode(errors="replace"))
        if found:
            self.settings = replace(self.settings, port=int(found.group(1)))
        return found is not None

    def _serving(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert self.process is not None and self.process.poll() is None, self.log_path.read_text()
        if not self._announced_port():
            return False
        with grpc.insecure_channel(self.target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    @property
    def target(self) -> str:
        """host:port of the server; waits for its banner when only launched."""
        wait_for(self._announced_port, timeout=60, interval=0.1)
        return f"127.0.0.1:{self.settings.port}"

    def token(self, user: str = "alice") -> str:
        return make_token(SECRET, user)

    def client(self, user: str = "alice") -> GenJobsClient:
        return GenJobsClient(self.target, self.token(user))

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.log.close()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(30)
        self.log.close()
        return code
