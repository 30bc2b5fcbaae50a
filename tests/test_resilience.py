"""A flaky database: killed, restarted or frozen while jobs run and RPCs arrive."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from genjobs.client import Unavailable
from genjobs.v1 import jobs_pb2
from tests.harness import MongoServer, ServerThread, health_of, make_settings, settled, wait_for

S = jobs_pb2
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("down_seconds", [0.0, 3.0])
def test_database_killed_while_a_job_runs_is_not_the_generators_fault(
    own_mongo: MongoServer, tmp_path: Path, down_seconds: float
) -> None:
    """kill -9 of the database mid-job (restarted at once, or after the generator
    has finished so that its outcome must wait): the job completes on attempt 1."""
    settings = make_settings(own_mongo.uri, tmp_path, lease_seconds=3.0)
    server = ServerThread(settings).start()
    try:
        with server.client() as alice:
            job = alice.submit("topic", topic="blip", max_attempts=3, extra={"demo_seconds": "2.5"})
            wait_for(lambda: alice.get(job.id).progress.percentage > 0, timeout=20)
            own_mongo.kill()
            if down_seconds:
                # The database stays away past the generator's end: the outcome write waits for it.
                back_at = time.monotonic() + down_seconds
                wait_for(lambda: time.monotonic() >= back_at, timeout=down_seconds + 1)
            own_mongo.start()  # same port, same data
            done = settled(alice, job.id, timeout=60)
            assert done.status == S.JOB_STATUS_COMPLETED, done
            assert done.attempt == 1 and not done.attempt_errors
    finally:
        server.stop()


def test_frozen_database_answers_unavailable_quickly_and_health_follows(
    own_mongo: MongoServer, tmp_path: Path
) -> None:
    """SIGSTOP of the database: calls answer UNAVAILABLE within the configured
    limit (not after 10 s), health goes NOT_SERVING, and both recover on SIGCONT."""
    assert own_mongo.process is not None
    settings = make_settings(own_mongo.uri, tmp_path, db_timeout_seconds=1.5)
    server = ServerThread(settings).start()
    try:
        with server.client() as alice:
            job = alice.submit("topic", topic="before the freeze")
            os.kill(own_mongo.process.pid, signal.SIGSTOP)
            try:
                for call in (
                    lambda: alice.submit("topic", topic="during the freeze"),
                    lambda: alice.get(job.id),
                    lambda: alice.list(),
                ):
                    started = time.monotonic()
                    with pytest.raises(Unavailable) as caught:
                        call()
                    assert time.monotonic() - started < 6.0  # the limit is 1.5 s; room for a loaded box
                    assert caught.value.reason == "DATABASE_UNAVAILABLE"
                wait_for(lambda: health_of(server.target) == NOT_SERVING, timeout=10)
            finally:
                os.kill(own_mongo.process.pid, signal.SIGCONT)
            wait_for(lambda: health_of(server.target) == SERVING, timeout=15)
            assert alice.get(job.id).id == job.id
            assert settled(alice, alice.submit("topic", topic="after").id, timeout=30).attempt == 1
    finally:
        server.stop()


def test_outage_longer_than_the_lease_leaves_the_job_to_the_replica_holding_its_result(
    own_mongo: MongoServer, tmp_path: Path
) -> None:
    """Two replicas, the database away for longer than the lease while a job's
    generator finishes: every lease lapses, yet the other replica does not take
    the job over (and generate it again); the result is stored on attempt 1."""
    settings = make_settings(own_mongo.uri, tmp_path, lease_seconds=1.0)
    servers = [ServerThread(settings).start() for _ in range(2)]
    try:
        with servers[0].client() as alice:
            job = alice.submit("topic", topic="outage", max_attempts=3, extra={"demo_seconds": "1.5"})
            wait_for(lambda: alice.get(job.id).progress.percentage > 0, timeout=20)
            own_mongo.kill()
            back_at = time.monotonic() + 3.0  # past the generator's end and the lease
            wait_for(lambda: time.monotonic() >= back_at, timeout=4)
            own_mongo.start()
            done = settled(alice, job.id, timeout=60)
            assert done.status == S.JOB_STATUS_COMPLETED, done
            assert done.attempt == 1 and not done.attempt_errors, done
    finally:
        for server in servers:
            server.stop()
