"""The embedded database abused (issue 26 item 3): killed with kill -9, frozen,
shared by several servers; and what a database outage does to the log and to
calls made during it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from grpc_health.v1 import health_pb2

from genjobs.client import GenJobsClient, Unavailable
from genjobs.client.client import params
from genjobs.server.runtime.embedded import DATABASE_MODULE
from genjobs.v1 import jobs_pb2
from tests.harness import (
    MongoServer,
    ServerProcess,
    ServerThread,
    health_of,
    make_settings,
    settled,
    wait_for,
)

S = jobs_pb2
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def databases_of(data_dir: Path) -> list[int]:
    """The pids of every live embedded database serving `data_dir` (zombies are not live)."""
    mongo_dir = str((data_dir / "mongo").resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if DATABASE_MODULE in args and mongo_dir in args and state != "Z":
            found.append(int(entry.name))
    return found


def database_pid(data_dir: Path) -> int:
    """The one embedded database serving `data_dir`."""
    pids = databases_of(data_dir)
    assert len(pids) == 1, pids
    return pids[0]


def accepted(client: GenJobsClient, topic: str) -> jobs_pb2.Job:
    """A job submitted once the server takes submits again (the same request id each try)."""

    def submit() -> jobs_pb2.Job | None:
        try:
            return client.submit("topic", topic=topic, request_id=f"accepted-{topic}")
        except Unavailable:
            return None

    return wait_for(submit, timeout=60, interval=0.2)


def warnings_and_tracebacks(log: str) -> tuple[list[str], int]:
    """The WARNING and ERROR lines of a server's text log, and how many tracebacks it holds."""
    lines = log.splitlines()
    loud = [line for line in lines if " WARNING " in line or " ERROR " in line or " CRITICAL " in line]
    return loud, log.count("Traceback (most recent call last)")


def test_killed_embedded_database_is_restarted_by_one_of_the_servers_sharing_it(tmp_path: Path) -> None:
    """kill -9 of the embedded database two servers share: one new database is
    started on the same data (never two), both servers serve again, a job
    submitted before the kill completes and new ones are accepted."""
    data = tmp_path / "data"
    settings = make_settings("", data)
    first = ServerProcess(settings, tmp_path / "first.log").start()
    second = ServerProcess(settings, tmp_path / "second.log").start()
    try:
        with first.client() as alice, second.client() as bob:
            before = alice.submit("topic", topic="before the kill", extra={"demo_seconds": "1"})
            killed = database_pid(data)
            os.kill(killed, signal.SIGKILL)
            for server in (first, second):
                wait_for(lambda s=server: health_of(s.target) == SERVING and databases_of(data), timeout=60)
            revived = database_pid(data)  # exactly one, whoever started it
            assert revived != killed
            assert settled(alice, before.id, timeout=60).status == S.JOB_STATUS_COMPLETED
            after = accepted(bob, "after the kill")
            assert settled(bob, after.id, timeout=60).status == S.JOB_STATUS_COMPLETED
            assert alice.get(before.id).id == before.id  # the same data: jobs from before are there
            assert databases_of(data) == [revived]
    finally:
        codes = [first.terminate(), second.terminate()]
    assert codes == [0, 0]
    assert not databases_of(data)  # the last server to leave stopped it
    for name in ("first.log", "second.log"):
        _, tracebacks = warnings_and_tracebacks((tmp_path / name).read_text())
        assert tracebacks == 0, (tmp_path / name).read_text()[-3000:]


def test_database_outage_logs_one_warning_when_it_starts_and_one_when_it_ends(
    own_mongo: MongoServer, tmp_path: Path
) -> None:
    """The database away for a few seconds: the server's log says so once, and
    once more when it is back; no traceback, however long it lasts."""
    settings = make_settings(own_mongo.uri, tmp_path)
    server = ServerProcess(settings, tmp_path / "server.log").start()
    try:
        with server.client() as alice:
            settled(alice, alice.submit("topic", topic="warm up").id, timeout=30)
            # Schedules due every second: each tick meets the outage too.
            for _ in range(3):
                alice.create_schedule(
                    "* * * * * *",
                    job=jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=params(topic="tick")),
                )
        started_at = len((tmp_path / "server.log").read_text())
        own_mongo.kill()
        wait_for(lambda: health_of(server.target) == NOT_SERVING, timeout=20)
        back_at = time.monotonic() + 5.0  # long enough for every loop to meet the outage a few times
        wait_for(lambda: time.monotonic() >= back_at, timeout=10)
        own_mongo.start()  # same port, same data
        wait_for(lambda: health_of(server.target) == SERVING, timeout=30)
        with server.client() as alice:
            settled(alice, accepted(alice, "after the outage").id, timeout=30)
    finally:
        assert server.terminate() == 0
    during = (tmp_path / "server.log").read_text()[started_at:]
    loud, tracebacks = warnings_and_tracebacks(during)
    assert tracebacks == 0, during[-3000:]
    assert len(loud) == 2, "\n".join(loud)
    assert "database" in loud[0] and "database" in loud[1], loud


def test_call_during_a_database_freeze_is_unavailable_within_the_configured_time(
    own_mongo: MongoServer, tmp_path: Path
) -> None:
    """SIGSTOP of the database while a job runs: every call (gRPC or HTTP,
    DeleteJob too, which first waits for the job events to be stored) answers
    UNAVAILABLE within 1.5 times GENJOBS_DB_TIMEOUT_SECONDS, not one wait per
    database call."""
    assert own_mongo.process is not None
    limit = 3.0
    server = ServerThread(make_settings(own_mongo.uri, tmp_path, db_timeout_seconds=limit)).start()
    assert server.app is not None
    headers = {"authorization": f"Bearer {server.token()}"}
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.app.http_port}", headers=headers, timeout=60)
    try:
        with server.client() as alice:
            done = settled(alice, alice.submit("topic", topic="done").id, timeout=30)
            # A running job: its progress events wait to be stored during the freeze.
            running = alice.submit("topic", topic="running", extra={"demo_seconds": "30"})
            wait_for(lambda: alice.get(running.id).progress.percentage > 0, timeout=20)
            os.kill(own_mongo.process.pid, signal.SIGSTOP)
            try:
                body = {"mode": "MODE_TOPIC", "params": {"topic": "frozen", "wordCount": 80}}
                for name, call in (
                    ("HTTP DELETE", lambda: http.delete(f"/v1/jobs/{done.id}").status_code),
                    ("HTTP POST", lambda: http.post("/v1/jobs", json=body).status_code),
                    ("HTTP GET", lambda: http.get(f"/v1/jobs/{done.id}").status_code),
                    ("HTTP LIST", lambda: http.get("/v1/jobs").status_code),
                    ("gRPC DeleteJob", lambda: _code_of(lambda: alice.delete(done.id))),
                    ("gRPC SubmitJob", lambda: _code_of(lambda: alice.submit("topic", topic="frozen"))),
                ):
                    started = time.monotonic()
                    answer = call()
                    took = time.monotonic() - started
                    assert answer in (503, "UNAVAILABLE"), (name, answer)
                    assert took < 1.5 * limit, f"{name} took {took:.1f} s; the limit is {limit} s"
            finally:
                os.kill(own_mongo.process.pid, signal.SIGCONT)
            wait_for(lambda: health_of(server.target) == SERVING, timeout=30)
            alice.cancel(running.id)
    finally:
        http.close()
        server.stop()


def _code_of(call: object) -> str:
    """The gRPC status name a client call ended with ("OK" when it did not fail)."""
    assert callable(call)
    try:
        call()
    except Unavailable:
        return "UNAVAILABLE"
    except Exception as exc:
        return type(exc).__name__
    return "OK"


def test_busy_embedded_database_is_not_killed_by_a_server_joining_it(tmp_path: Path) -> None:
    """The shared database does not answer for longer than one ping's 5 s (frozen
    here) while a second server joins: the second waits for it instead of
    killing it and starting another; both serve once it answers."""
    data = tmp_path / "data"
    settings = make_settings("", data)
    first = ServerProcess(settings, tmp_path / "first.log").start()
    second = ServerProcess(settings, tmp_path / "second.log")
    database = database_pid(data)
    os.kill(database, signal.SIGSTOP)
    try:
        second.launch()
        busy_until = time.monotonic() + 8.0  # past one 5 s ping
        wait_for(lambda: time.monotonic() >= busy_until, timeout=10)
        assert databases_of(data) == [database]
        assert second.process is not None and second.process.poll() is None
    finally:
        os.kill(database, signal.SIGCONT)
    try:
        wait_for(lambda: health_of(second.target) == SERVING, timeout=60)
        wait_for(lambda: health_of(first.target) == SERVING, timeout=30)
        assert databases_of(data) == [database]
        with second.client() as bob:
            assert settled(bob, accepted(bob, "joined").id, timeout=30).status == S.JOB_STATUS_COMPLETED
    finally:
        assert [second.terminate(), first.terminate()] == [0, 0]


def test_dead_external_database_is_not_restarted_by_genjobs(own_mongo: MongoServer, tmp_path: Path) -> None:
    """With GENJOBS_MONGODB_URI the database is the operator's: killed, it stays
    dead (genjobs starts none), the server waits NOT_SERVING and serves again
    when the operator brings it back."""
    data = tmp_path / "data"
    server = ServerProcess(make_settings(own_mongo.uri, data), tmp_path / "server.log").start()
    try:
        own_mongo.kill()
        wait_for(lambda: health_of(server.target) == NOT_SERVING, timeout=20)
        later = time.monotonic() + 4.0  # several health checks' time to (wrongly) start one
        wait_for(lambda: time.monotonic() >= later, timeout=6)
        assert not databases_of(data) and not (data / "nx-27017.pid").exists()
        with socket.socket() as probe:  # nothing answers on the database's port
            assert probe.connect_ex(("127.0.0.1", own_mongo.port)) != 0
        assert health_of(server.target) == NOT_SERVING
        own_mongo.start()
        wait_for(lambda: health_of(server.target) == SERVING, timeout=30)
    finally:
        assert server.terminate() == 0


def test_embedded_database_that_cannot_be_restarted_stops_the_server_non_zero(tmp_path: Path) -> None:
    """kill -9 of the embedded database while something else takes its port: the
    server cannot bring it back where its clients look for it, so it exits
    non-zero (for its supervisor to restart it) instead of waiting for good."""
    data = tmp_path / "data"
    server = ServerProcess(make_settings("", data), tmp_path / "server.log").start()
    port = int((data / "mongo.port").read_text())
    assert server.process is not None
    process = server.process
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past its connections' TIME_WAIT
        # The server paused meanwhile, so that the port is taken before it can look.
        os.kill(process.pid, signal.SIGSTOP)
        try:
            os.kill(database_pid(data), signal.SIGKILL)
            wait_for(lambda: not databases_of(data), timeout=10)

            def taken() -> bool:
                # A killed process's leader shows as dead before its other threads
                # have closed its files: the port frees a moment later.
                try:
                    squatter.bind(("127.0.0.1", port))
                except OSError:
                    return False
                return True

            wait_for(taken, timeout=10)
            squatter.listen()
        finally:
            os.kill(process.pid, signal.SIGCONT)
        wait_for(lambda: process.poll() is not None, timeout=60)
    server.log.close()
    assert process.returncode not in (None, 0)
    assert not databases_of(data)


def test_hung_embedded_database_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded database that answers nothing for HUNG_SECONDS (frozen here;
    3 s instead of 60 for the test) is killed and a new one started on the
    same data: the server serves again, with the jobs from before."""
    monkeypatch.setattr("genjobs.server.runtime.app.HUNG_SECONDS", 3.0)
    monkeypatch.setattr("genjobs.server.runtime.embedded.HUNG_SECONDS", 3.0)
    data = tmp_path / "data"
    server = ServerThread(make_settings("", data)).start()
    try:
        with server.client() as alice:
            before = alice.submit("topic", topic="before the freeze")
            frozen = database_pid(data)
            os.kill(frozen, signal.SIGSTOP)
            try:
                wait_for(lambda: health_of(server.target) == NOT_SERVING, timeout=20)
                wait_for(lambda: databases_of(data) and frozen not in databases_of(data), timeout=60)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(frozen, signal.SIGCONT)
            wait_for(lambda: health_of(server.target) == SERVING, timeout=60)
            assert len(databases_of(data)) == 1
            assert settled(alice, before.id, timeout=60).status == S.JOB_STATUS_COMPLETED
    finally:
        server.stop()
    assert not databases_of(data)
