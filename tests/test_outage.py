"""A provider's outage and rate limits (issue 31 items 1 and 2) through a real
server on the openai generator, against the tests' own streaming server
stopped and restarted on its port or answering 429: queued jobs wait with
their attempts given back and say why, health stays SERVING, the metric
marks the provider down and up, a 429 pauses the next job too, and an outage
past its limit fails the waiting jobs once, one webhook each."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from genjobs.client import GenJobsClient
from genjobs.server.runtime.embedded import free_port
from genjobs.v1 import jobs_pb2 as S
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import MongoServer, ServerThread, health_of, make_settings, wait_for
from tests.receivers import Receiver

PRICES = {"test-model": {"input_per_mtok": 2.5, "output_per_mtok": 10.0}}
WAITING = re.compile(r"waiting: openai unreachable since \d\d:\d\d UTC")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def start(mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI, **overrides: object) -> ServerThread:
    settings = make_settings(
        mongo.uri,
        tmp_path,
        generator="openai",
        openai_base_url=fake.base_url,
        openai_model="test-model",
        openai_prices=json.dumps(PRICES),
        **overrides,
    )
    return ServerThread(settings).start()


def provider_up(metrics_port: int) -> float:
    """genjobs_provider_up{provider="openai"} from a real scrape of /metrics."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "genjobs_provider_up" and sample.labels.get("provider") == "openai":
                return sample.value
    return -1.0


def jobs_of(client: GenJobsClient, ids: list[str]) -> list[S.Job]:
    return [client.get(job_id) for job_id in ids]


def test_an_outage_under_five_queued_jobs_fails_none_and_costs_no_attempt(
    mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI, receiver: Receiver
) -> None:
    metrics_port = free_port()
    server = start(mongo, tmp_path, fake, metrics_port=metrics_port)
    try:
        with server.client("alice") as alice:
            fake.stop()  # the provider restarts: connections are refused
            ids = [
                alice.submit("topic", topic=f"Tea {n}", notify_url=receiver.url(f"/job{n}")).id
                for n in range(5)
            ]
            # Marked down: every queued job says why, in GetJob and in ListJobs.
            wait_for(lambda: all(WAITING.fullmatch(j.progress.message) for j in jobs_of(alice, ids)))
            listed = {j.id: j for j in alice.list().jobs}
            assert all(WAITING.fullmatch(listed[i].progress.message) for i in ids)
            assert all(j.status == S.JOB_STATUS_QUEUED and j.attempt == 0 for j in jobs_of(alice, ids))
            watching = alice.watch(ids[0])  # what `genjobs submit --watch` shows meanwhile
            assert WAITING.fullmatch(next(iter(watching)).job.progress.message)
            watching.close()  # type: ignore[attr-defined]
            assert health_of(f"127.0.0.1:{server.port}") == 1  # SERVING
            assert provider_up(metrics_port) == 0
            fake.restart()
            done = wait_for(
                lambda: (
                    (js := jobs_of(alice, ids)) and all(j.status == S.JOB_STATUS_COMPLETED for j in js) and js
                ),
                timeout=30,
            )
            assert all(j.attempt == 1 and not j.attempt_errors for j in done)
            assert provider_up(metrics_port) == 1
            wait_for(lambda: len(receiver.received) >= 5)
            assert sorted(h.path for h in receiver.received) == [f"/job{n}" for n in range(5)]
    finally:
        server.stop()


def test_a_429_pauses_the_next_job_too_across_lanes(
    mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI
) -> None:
    server = start(mongo, tmp_path, fake, concurrency=2)
    try:
        with server.client("alice") as alice:
            fake.queue(Plan(status=429, error="slow down", headers={"Retry-After": "2"}))
            first = alice.submit("topic", topic="busy").id
            # Its 429 answered and taken in: the first job waits (not only its request sent,
            # or the next job may start, and end, before the 429 comes back).
            wait_for(lambda: "rate limited" in alice.get(first).progress.message)
            second = alice.submit("topic", topic="next").id  # a lane is free, the provider is not
            paused = wait_for(lambda: (j := alice.get(second)).progress.message and j)
            assert paused.status == S.JOB_STATUS_QUEUED
            assert re.fullmatch(
                r"waiting: openai rate limited until \d\d:\d\d:\d\d UTC", paused.progress.message
            )
            done = wait_for(
                lambda: (
                    (js := jobs_of(alice, [first, second]))
                    and all(j.status == S.JOB_STATUS_COMPLETED for j in js)
                    and js
                )
            )
            assert all(j.attempt == 1 for j in done)
            assert min(r.arrived for r in fake.requests[1:]) - fake.requests[0].arrived >= 2.0
    finally:
        server.stop()


def test_an_outage_past_its_limit_fails_the_waiting_jobs_once(
    mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI, receiver: Receiver
) -> None:
    server = start(mongo, tmp_path, fake, provider_max_outage_seconds=1.0)
    try:
        with server.client("alice") as alice:
            fake.stop()
            ids = [
                alice.submit("topic", topic=f"Tea {n}", notify_url=receiver.url(f"/job{n}")).id
                for n in range(3)
            ]
            failed = wait_for(
                lambda: (
                    (js := jobs_of(alice, ids)) and all(j.status == S.JOB_STATUS_FAILED for j in js) and js
                ),
                timeout=30,
            )
            for job in failed:
                assert job.error.code == "GENERATOR_UNREACHABLE" and job.attempt == 0
                assert "longer than the outage limit" in job.error.message
            wait_for(lambda: len(receiver.received) >= 3)
            # Submitted after: failed too (the outage goes on), and only those get a webhook more.
            late = alice.submit("topic", topic="late", notify_url=receiver.url("/late")).id
            wait_for(lambda: alice.get(late).status == S.JOB_STATUS_FAILED)
            wait_for(lambda: len(receiver.received) >= 4)
            assert sorted(h.path for h in receiver.received) == ["/job0", "/job1", "/job2", "/late"]
    finally:
        server.stop()


def test_a_second_replica_learns_the_outage(mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI) -> None:
    first = start(mongo, tmp_path, fake)
    (tmp_path / "b").mkdir()
    second = start(mongo, tmp_path / "b", fake, db_name=first.settings.db_name)
    try:
        with first.client("alice") as alice, second.client("alice") as other:
            fake.stop()
            job = alice.submit("topic", topic="Tea").id
            # Whichever replica dispatches, the other tells the same reason from the stored state.
            wait_for(lambda: WAITING.fullmatch(alice.get(job).progress.message))
            wait_for(lambda: WAITING.fullmatch(other.get(job).progress.message))
            fake.restart()
            wait_for(lambda: other.get(job).status == S.JOB_STATUS_COMPLETED, timeout=30)
            assert other.get(job).attempt == 1
    finally:
        second.stop()
        first.stop()


def test_rpm_paces_the_requests_before_the_provider_refuses(
    mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI
) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
default_model = "test-model"

[providers.paced]
base_url = "{fake.base_url}"
rpm = 60

[providers.paced.models.test-model]
"""
    )
    server = start(mongo, tmp_path, fake, providers_file=str(path), concurrency=3)
    try:
        with server.client("alice") as alice:
            ids = [alice.submit("topic", topic=f"Tea {n}").id for n in range(3)]
            wait_for(lambda: all(j.status == S.JOB_STATUS_COMPLETED for j in jobs_of(alice, ids)), timeout=30)
            arrived = sorted(r.arrived for r in fake.requests)
            # 60 a minute: one a second, though three lanes were free.
            assert arrived[2] - arrived[0] >= 1.5  # two intervals, less the claims' own jitter
    finally:
        server.stop()


def test_an_overloaded_529_costs_no_attempt_but_a_4xx_does(
    mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI
) -> None:
    server = start(mongo, tmp_path, fake)
    try:
        with server.client("alice") as alice:
            fake.queue(Plan(status=529, error="overloaded"), Plan(status=529, error="overloaded"), Plan())
            job = alice.submit("topic", topic="Tea", max_attempts=1).id
            done = wait_for(lambda: (j := alice.get(job)).status == S.JOB_STATUS_COMPLETED and j)
            assert done.attempt == 1 and not done.attempt_errors
            fake.queue(Plan(status=422, error="unprocessable"))
            refused = alice.submit("topic", topic="Coffee", max_attempts=1).id
            failed = wait_for(lambda: (j := alice.get(refused)).status == S.JOB_STATUS_FAILED and j)
            assert failed.attempt == 1 and failed.error.code == "GENERATOR_REJECTED"
    finally:
        server.stop()


def test_a_job_an_outage_sent_back_to_the_ready_lane_runs_when_the_provider_is_back(
    mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI
) -> None:
    """A leader alone reads its ready lane only once a recheck: a run its
    provider's outage sends back there is offered to it as it is stored."""
    server = start(mongo, tmp_path, fake)
    try:
        assert server.app is not None
        dispatcher = server.app.dispatcher
        wait_for(dispatcher.alone)
        dispatcher._fair._polls.alone_every = 3600.0  # no read of the lane comes to the rescue
        with server.client("alice") as alice:
            fake.stop()  # the provider restarts: connections are refused
            job = alice.submit("topic", topic="Sent back").id
            # Its run failed against the provider marked down: back in the ready lane.
            wait_for(lambda: WAITING.fullmatch(alice.get(job).progress.message))
            fake.restart()
            done = wait_for(lambda: (j := alice.get(job)).status == S.JOB_STATUS_COMPLETED and j, timeout=10)
            assert done.attempt == 1 and not done.attempt_errors
    finally:
        server.stop()
