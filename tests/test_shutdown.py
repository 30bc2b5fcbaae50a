"""Graceful shutdown of real `python -m genjobs.server` processes sharing one database:
SIGTERM lets a short job finish, requeues a long one for the other replica at
once (attempt given back), ends streams with UNAVAILABLE, exits 0; a second
signal stops at once."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pymongo
import pytest
from bson import ObjectId

from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import MongoServer, ServerProcess, make_settings, wait_for

Doc = dict[str, Any]


class Replicas:
    """Server processes on one database, and that database."""

    def __init__(self, mongo: MongoServer, tmp_path: Path) -> None:
        self.settings = make_settings(mongo.uri, tmp_path)
        self.tmp_path = tmp_path
        self.processes: list[ServerProcess] = []
        self.client: pymongo.MongoClient[Doc] = pymongo.MongoClient(mongo.uri)
        self.jobs = self.client[self.settings.db_name]["jobs"]

    def start(self, name: str, grace: float) -> ServerProcess:
        process = ServerProcess(
            replace(self.settings, shutdown_grace_seconds=grace), self.tmp_path / f"{name}.log"
        ).start()
        self.processes.append(process)
        return process

    def job(self, job_id: str) -> Doc:
        found = self.jobs.find_one({"_id": ObjectId(job_id)})
        assert found is not None
        return found

    def runner(self, job_id: str) -> ServerProcess | None:
        """The process running the job now, if any."""
        doc = self.job(job_id)
        if doc["status"] != "PROCESSING":
            return None
        for process in self.processes:
            assert process.process is not None
            if doc["worker"].startswith(f"{socket.gethostname()}:{process.process.pid}:"):
                return process
        return None

    def close(self) -> None:
        for process in self.processes:
            if process.process is not None and process.process.poll() is None:
                process.kill()
        self.client.close()


@pytest.fixture
def replicas(mongo: MongoServer, tmp_path: Path) -> Iterator[Replicas]:
    found = Replicas(mongo, tmp_path)
    yield found
    found.close()


def _serving(process: ServerProcess) -> bool:
    return process._serving()


def test_sigterm_lets_a_short_job_finish_and_exits_0(replicas: Replicas) -> None:
    server = replicas.start("a", grace=20)
    with server.client() as alice:
        job = alice.submit("topic", topic="Short", extra={"demo_seconds": "2"})
        wait_for(lambda: replicas.runner(job.id) is server, timeout=30)
        behind = alice.submit("topic", topic="Queued behind it")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: not _serving(server), timeout=2)  # NOT_SERVING at once, while the job runs
    assert replicas.job(job.id)["status"] == "PROCESSING"
    assert server.process.wait(30) == 0
    server.log.close()
    done = replicas.job(job.id)
    assert (done["status"], done["attempt"]) == ("COMPLETED", 1)
    left = replicas.job(behind.id)
    assert (left["status"], left["attempt"]) == ("QUEUED", 0)  # no new job claimed while stopping


def test_sigterm_requeues_a_long_job_that_another_replica_starts_at_once(replicas: Replicas) -> None:
    first = replicas.start("a", grace=1)
    second = replicas.start("b", grace=1)
    with first.client() as alice:
        job = alice.submit("topic", topic="Long", extra={"demo_seconds": "120"})
    runner = wait_for(lambda: replicas.runner(job.id), timeout=30)
    other = second if runner is first else first
    assert runner.process is not None
    channel = grpc.insecure_channel(runner.target)
    stream = jobs_pb2_grpc.JobServiceStub(channel).WatchJob(
        jobs_pb2.WatchJobRequest(id=job.id), metadata=(("authorization", f"Bearer {runner.token()}"),)
    )
    next(stream)  # the snapshot: the stream is open

    runner.process.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as ended:
        for _ in stream:
            pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
    assert runner.process.wait(30) == 0
    exited = time.time()
    runner.log.close()

    wait_for(lambda: replicas.runner(job.id) is other, timeout=10)
    taken = replicas.job(job.id)
    assert taken["attempt"] == 1 and taken["attempt_errors"] == []  # the stopped attempt was not counted
    # The requeue wrote before the process exited; the other replica claimed within 1 s of it.
    assert taken["started_us"] / 1e6 - exited <= 1.0


def test_a_second_signal_stops_at_once(replicas: Replicas) -> None:
    server = replicas.start("a", grace=120)
    with server.client() as alice:
        job = alice.submit("topic", topic="Long", extra={"demo_seconds": "120"})
    wait_for(lambda: replicas.runner(job.id) is server, timeout=30)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: not _serving(server), timeout=2)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(15) == 0
    server.log.close()
    back = replicas.job(job.id)
    state = (back["status"], back["queue"], back["attempt"], back["lease_until_us"])
    assert state == ("QUEUED", "ready", 0, 0)
