"""The openai generator against a real local server speaking the OpenAI
streaming protocol: content, cost, progress, failures, cancel and time limits."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from genjobs.client import GenJobsClient
from genjobs.client.client import InvalidArgument
from genjobs.server.generators.base import (
    CancelSignal,
    GenerationCancelled,
    GenerationFailed,
    JobSpec,
    Output,
    ProgressFn,
    cost_cents,
    title_of,
)
from genjobs.server.generators.openai import OpenAIGenerator, Price, _Draft, parse_prices
from genjobs.server.generators.prompts import Prompts, fill
from genjobs.server.generators.watchdog import Watchdog
from genjobs.server.runtime.config import Settings
from genjobs.server.runtime.embedded import free_port
from genjobs.server.runtime.factories import make_generator
from genjobs.v1 import jobs_pb2 as S
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import MongoServer, ServerThread, make_settings, wait_for

PRICES = {"test-model": {"input_per_mtok": 2.5, "output_per_mtok": 10.0}}
ARTICLE = ["# Tea in the hills\n\n", "Green ", "tea grows ", "on steep", " slopes.\n\nPickers ", "go early."]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def openai_server(
    mongo: MongoServer, tmp_path: Path, fake: FakeOpenAI
) -> Iterator[Callable[..., GenJobsClient]]:
    """Starts a genjobs server on the openai generator (settings overridable); yields a client."""
    started: list[tuple[ServerThread, GenJobsClient]] = []

    def start(**overrides: Any) -> GenJobsClient:
        defaults: dict[str, Any] = {
            "openai_base_url": fake.base_url,
            "openai_model": "test-model",
            "openai_prices": json.dumps(PRICES),
        }
        settings = make_settings(mongo.uri, tmp_path, generator="openai", **{**defaults, **overrides})
        server = ServerThread(settings).start()
        client = server.client()
        started.append((server, client))
        return client

    yield start
    for server, client in started:
        client.close()
        server.stop()


def final(client: GenJobsClient, job_id: str, timeout: float = 20.0) -> S.Job:
    finals = (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)
    return wait_for(lambda: (j := client.get(job_id)).status in finals and j, timeout=timeout)


def test_job_completes_with_the_streamed_text_and_cost_from_usage(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    # 120,000 prompt tokens at $2.50/M and 40,300 completion tokens at $10/M: 70.3 cents.
    fake.queue(Plan(pieces=ARTICLE, usage=(120_000, 40_300)))
    job = alice.submit("topic", topic="Tea growing", keywords=["slopes"], tone="warm", word_count=400)
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_COMPLETED, done.error
    assert done.result.content == "".join(ARTICLE)
    assert done.result.title == "Tea in the hills"
    assert done.result.word_count == len("".join(ARTICLE).split())
    assert done.result.cost_cents == 71  # rounded up to a whole cent
    meta = dict(done.result.metadata)
    assert meta["model"] == "test-model" and meta["finish_reason"] == "stop"
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == ("120000", "40300")
    assert "cost_unknown" not in meta and "truncated" not in meta
    request = fake.requests[0].body
    assert request["model"] == "test-model" and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    prompt = request["messages"][-1]["content"]
    for param in ("Tea growing", "slopes", "warm", "400"):
        assert param in prompt


def test_per_job_model_and_temperature_unpriced_and_truncated(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    fake.queue(Plan(pieces=["Cut short"], finish_reason="length"))
    job = alice.submit("keywords", keywords=["a"], extra={"model": "local/llama3:8b", "temperature": "0.3"})
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_COMPLETED, done.error
    assert fake.requests[0].body["model"] == "local/llama3:8b"
    assert fake.requests[0].body["temperature"] == 0.3
    meta = dict(done.result.metadata)
    assert meta["truncated"] == "true" and meta["cost_unknown"] == "true"
    assert done.result.cost_cents == 0 and done.result.title == "Cut short"


def test_progress_events_rise_while_it_streams(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    fake.queue(Plan(pieces=["one two three four five "] * 50, delay=0.04))  # 250 words in ~2 s
    job = alice.submit("topic", topic="counting", word_count=300)
    progress = []
    for event in alice.watch(job.id):
        if event.type == S.JOB_EVENT_TYPE_PROGRESS:
            progress.append(event.job.progress)
    assert len(progress) >= 3
    percentages = [p.percentage for p in progress]
    assert percentages == sorted(percentages) and percentages[-1] > percentages[0]
    assert all(p.percentage < 100 and p.stage == "drafting" for p in progress if p.percentage)
    assert any(re.fullmatch(r"\d+ of 300 words", p.message) for p in progress)
    assert all(p.HasField("estimated_completion") for p in progress if p.percentage)
    assert alice.get(job.id).status == S.JOB_STATUS_COMPLETED


def test_rate_limit_waits_for_retry_after_then_completes(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()  # the usual backoff here is 0.05 to 0.1 s
    fake.queue(Plan(status=429, error="slow down", headers={"Retry-After": "2"}), Plan())
    job = alice.submit("topic", topic="busy")
    done = final(alice, job.id)
    # The provider's limit, not the job's failure: the attempt was given back.
    assert done.status == S.JOB_STATUS_COMPLETED and done.attempt == 1 and not done.attempt_errors
    assert fake.requests[1].arrived - fake.requests[0].arrived >= 2.0


def test_bad_request_fails_at_once_with_the_providers_message(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    fake.queue(Plan(status=400, error="model 'nope' does not exist"))
    job = alice.submit("topic", topic="anything", max_attempts=3)
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_FAILED and done.attempt == 1
    assert done.error.code == "GENERATOR_REJECTED" and not done.error.retryable
    assert done.error.category == "permanent"
    assert "model 'nope' does not exist" in done.error.message
    assert len(fake.requests) == 1


def test_content_filter_fails_as_refused(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    fake.queue(Plan(pieces=["Well"], finish_reason="content_filter"))
    job = alice.submit("topic", topic="something awkward", max_attempts=3)
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_FAILED and done.attempt == 1
    assert done.error.code == "GENERATOR_REFUSED" and not done.error.retryable


def test_cancel_mid_stream_closes_the_connection(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    fake.queue(Plan(pieces=["word "] * 2000, delay=0.02))  # 40 s if left alone
    job = alice.submit("topic", topic="long")
    wait_for(lambda: fake.requests and fake.requests[0].chunks_sent > 5)
    alice.cancel(job.id)
    asked = time.monotonic()
    wait_for(lambda: alice.get(job.id).status == S.JOB_STATUS_CANCELLED, timeout=2.0)
    assert time.monotonic() - asked < 2.0
    assert fake.requests[0].closed_by_client.wait(2.0)


def test_a_stream_that_stops_sending_times_out_and_the_retry_completes(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server(stream_idle_seconds=1.5)
    fake.queue(Plan(pieces=ARTICLE, stall_after=2), Plan(pieces=ARTICLE))
    job = alice.submit("topic", topic="hangs once")
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_COMPLETED and done.attempt == 2
    first = done.attempt_errors[0]
    assert first.code == "GENERATOR_TIMEOUT" and first.retryable and first.category == "transient"
    assert fake.requests[0].closed_by_client.wait(2.0)
    assert done.result.content == "".join(ARTICLE)


def test_an_attempt_past_its_time_limit_fails_as_timeout(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    fake.queue(Plan(pieces=["word "] * 500, delay=0.02))  # 10 s, never silent
    job = alice.submit("topic", topic="slow", max_attempts=1, extra={"timeout_seconds": "1"})
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_FAILED and done.error.code == "GENERATOR_TIMEOUT"
    assert "1 s" in done.error.message
    assert fake.requests[0].closed_by_client.wait(2.0)


def test_generator_extras_are_checked_at_submit(openai_server: Callable[..., GenJobsClient]) -> None:
    alice = openai_server()
    for extra in ({"temperature": "3"}, {"model": "two words"}, {"timeout_seconds": "0"}):
        with pytest.raises(InvalidArgument) as caught:
            alice.submit("topic", topic="x", extra=extra)
        assert any(next(iter(extra)) in field for field, _ in caught.value.violations)


# ---- pure logic -----------------------------------------------------------


def test_a_providers_odd_chunks_are_passed_over_not_fatal() -> None:
    draft = _Draft(model="asked")
    chunks: list[object] = [
        {"model": "asked-2026", "choices": [{"delta": {"content": "Hello "}}]},
        {"choices": [None, {"delta": None}, {"delta": {"content": 5}}], "model": None},
        "not a chunk",
        {"choices": [{"delta": {"content": "world"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3}},
    ]
    for chunk in chunks:
        draft.take(chunk)
    assert ("".join(draft.pieces), draft.words) == ("Hello world", 2)
    assert (draft.model, draft.finish_reason, draft.usage) == ("asked-2026", "stop", {"prompt_tokens": 3})


def test_costs_round_up_to_whole_cents() -> None:
    assert cost_cents(0.0) == 0
    assert cost_cents(0.07) == 7  # not 8: 0.07 * 100 is 7.000000000000001
    assert cost_cents(0.0001) == 1
    assert cost_cents(Price(2.5, 10.0).dollars(120_000, 40_300)) == 71


def test_prices_must_be_well_formed() -> None:
    assert parse_prices("") == {}
    assert parse_prices('{"m": {"input_per_mtok": 1, "output_per_mtok": 2}}') == {"m": Price(1.0, 2.0)}
    for bad in ('{"m": {"input_per_mtok": 1}}', "[1]", "not json"):
        with pytest.raises(SystemExit):
            parse_prices(bad)


def test_titles_and_prompt_lines() -> None:
    assert title_of("Intro line\n# Heading\ntext") == "Heading"
    assert title_of("\n**Plain title**\n\ntext") == "Plain title"
    values = {"topic": "", "keywords": "a, b", "tone": "", "word_count": "300", "source_text": ""}
    assert fill("About {topic}\nKeywords: {keywords}\nTone: {tone}\nPlain", values) == "Keywords: a, b\nPlain"


def test_a_prompts_file_replaces_prompts_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text('topic = "Write {word_count} words on {topic}, {tone}."\n')
    messages = Prompts.load(str(path)).messages("TOPIC", {"topic": "owls", "tone": "calm", "word_count": 90})
    assert messages[1]["content"] == "Write 90 words on owls, calm."
    assert "professional writer" in messages[0]["content"]  # the built-in system prompt stays
    for text in ('topic = "{subject}"\n', 'essay = "x"\n'):
        path.write_text(text)
        with pytest.raises(SystemExit):
            Prompts.load(str(path))


class _Stubborn:
    """A generator that ignores its cancel signal until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def generate(self, job: JobSpec, report: ProgressFn, cancelled: threading.Event) -> Output:
        self.release.wait(30)
        return Output(content="late", title="", word_count=1)


def test_the_watchdog_frees_the_lane_from_a_generator_that_ignores_cancel() -> None:
    stubborn = _Stubborn()
    job = JobSpec("j", "alice", "TOPIC", {"topic": "t", "extra": {"timeout_seconds": "0.2"}}, 1)
    started = time.monotonic()
    with pytest.raises(GenerationFailed) as caught:
        Watchdog(stubborn, attempt_seconds=900, idle_seconds=60).generate(job, _ignore, threading.Event())
    assert caught.value.code == "GENERATOR_TIMEOUT" and caught.value.retryable
    assert time.monotonic() - started < 5  # the 0.2 s limit and the 1 s grace, on a loaded machine
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(GenerationCancelled):
        Watchdog(stubborn, 900, 60).generate(JobSpec("k", "alice", "TOPIC", {}, 1), _ignore, cancelled)
    stubborn.release.set()


def _ignore(percentage: int, stage: str, stage_progress: int, message: str) -> None:
    pass


def test_server_errors_and_unreachable_endpoints_cost_no_attempt(
    openai_server: Callable[..., GenJobsClient], fake: FakeOpenAI
) -> None:
    alice = openai_server()
    fake.queue(Plan(status=503, error="overloaded"), Plan())
    job = alice.submit("topic", topic="retried")
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_COMPLETED and done.attempt == 1 and not done.attempt_errors
    nobody = openai_server(openai_base_url=f"http://127.0.0.1:{free_port()}/v1", provider_probe_seconds=0.2)
    job = nobody.submit("topic", topic="unreachable", max_attempts=1)
    waiting = wait_for(lambda: (j := nobody.get(job.id)).progress.message.startswith("waiting: ") and j)
    assert waiting.status == S.JOB_STATUS_QUEUED and waiting.attempt == 0
    assert re.fullmatch(r"waiting: openai unreachable since \d\d:\d\d UTC", waiting.progress.message)


def test_configuration_mistakes_stop_the_server_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="needs GENJOBS_OPENAI_API_KEY"):
        make_generator(Settings(generator="openai"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    made = make_generator(Settings(generator="openai"))
    assert isinstance(made, Watchdog) and isinstance(made.inner, OpenAIGenerator)
    assert made.inner.providers.providers["openai"].api_key == "sk-from-the-environment"
    local = Settings(generator="openai", openai_base_url="http://localhost:11434/v1")
    with pytest.raises(SystemExit, match="GENJOBS_OPENAI_PRICES"):
        make_generator(replace(local, openai_prices='{"m": 1}'))
    with pytest.raises(SystemExit, match="GENJOBS_GENERATOR_HEADERS"):
        make_generator(Settings(generator="http", generator_url="http://x", generator_headers="[]"))


def test_a_cancel_signal_calls_back_once_when_set() -> None:
    """A run's cancel reaches a waiting generator at once, without polling."""
    signal = CancelSignal()
    calls: list[str] = []
    signal.on_set(lambda: calls.append("before"))
    signal.set()
    signal.set()
    signal.on_set(lambda: calls.append("after"))
    assert calls == ["before", "after"] and signal.is_set()
