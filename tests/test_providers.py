"""Providers, fallbacks and estimates (issue 31) through a real server on the
openai generator, against two OpenAI-compatible streaming servers of the
tests' own named by a providers file: the model a job asks for, an unknown
one refused, a fallback while the first provider answers 503, validate_only
estimates (a job, a 10-item bulk job, an unpriced model), a budget refusing
by estimate, and `--dry-run` on the command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from genjobs.client import GenJobsClient
from genjobs.client.cli import app
from genjobs.client.client import InvalidArgument
from genjobs.server.generators.providers import Price, Providers
from genjobs.server.runtime.config import Settings
from genjobs.server.runtime.factories import make_generator
from genjobs.v1 import jobs_pb2 as S
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.test_budgets import quota_failure

ARTICLE = ["# Tea in the hills\n\n", "Green ", "tea grows ", "on steep", " slopes."]


def providers_file(path: Path, main: str, backup: str) -> Path:
    """Two providers: `main` serves small (priced, falls back to local) and
    big (dear); `backup` serves local (unpriced)."""
    path.write_text(
        f"""
default_model = "small"

[providers.main]
base_url = "{main}"
api_key_env = "MAIN_TEST_KEY"
rpm = 500

[providers.main.models.small]
input_per_mtok = 2.5
output_per_mtok = 10
fallbacks = ["local"]

[providers.main.models.big]
input_per_mtok = 30
output_per_mtok = 60

[providers.backup]
base_url = "{backup}"

[providers.backup.models.local]
"""
    )
    return path


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI() as main, FakeOpenAI() as backup:
        main.default = Plan(pieces=ARTICLE)
        backup.default = Plan(pieces=ARTICLE)
        yield main, backup


@pytest.fixture
def server(
    mongo: MongoServer, tmp_path: Path, fakes: tuple[FakeOpenAI, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerThread]:
    monkeypatch.setenv("MAIN_TEST_KEY", "sk-main")
    path = providers_file(tmp_path / "providers.toml", fakes[0].base_url, fakes[1].base_url)
    settings = make_settings(mongo.uri, tmp_path, generator="openai", providers_file=str(path))
    running = ServerThread(settings).start()
    yield running
    running.stop()


def final(client: GenJobsClient, job_id: str) -> S.Job:
    finals = (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)
    return wait_for(lambda: (j := client.get(job_id)).status in finals and j, timeout=20)  # type: ignore[no-any-return]


def test_the_job_runs_on_the_model_it_names_or_the_default(
    alice: GenJobsClient, fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    main, backup = fakes
    plain = final(alice, alice.submit("topic", topic="Tea").id)
    big = final(alice, alice.submit("topic", topic="Tea", extra={"model": "big"}).id)
    local = final(alice, alice.submit("topic", topic="Tea", extra={"model": "local"}).id)
    assert [r.body["model"] for r in main.requests] == ["small", "big"]
    assert [r.body["model"] for r in backup.requests] == ["local"]
    assert main.requests[0].headers["authorization"] == "Bearer sk-main"  # from api_key_env
    for job, model, provider in ((plain, "small", "main"), (big, "big", "main"), (local, "local", "backup")):
        assert job.status == S.JOB_STATUS_COMPLETED, job.error
        assert (job.result.metadata["model"], job.result.metadata["provider"]) == (model, provider)
        assert "fallback_from" not in job.result.metadata
    assert plain.result.cost_cents == 1 and not plain.result.cost_unknown  # 10 + 4 tokens: a cent, rounded up
    assert local.result.cost_unknown and local.result.cost_cents == 0  # unpriced: unknown, not free


def test_an_unknown_model_is_refused_naming_the_known_ones(alice: GenJobsClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        alice.submit("topic", topic="Tea", extra={"model": "gpt-5"})
    [(field, why)] = caught.value.violations
    assert field == "params.extra['model']"
    assert why == "unknown model 'gpt-5': known models are big, local, small"
    items = [{"topic": f"Tea {i}"} for i in range(10)]
    items[3]["extra"] = {"model": "nope"}
    with pytest.raises(InvalidArgument) as caught:
        alice.create_bulk("topic", items)
    assert caught.value.violations == [
        ("items[3].extra['model']", "unknown model 'nope': known models are big, local, small")
    ]
    assert not alice.list().jobs and not alice.list_bulk().bulk_jobs


@pytest.mark.parametrize("status", [503, 529])
def test_a_fallback_writes_while_the_first_provider_fails(
    alice: GenJobsClient, fakes: tuple[FakeOpenAI, FakeOpenAI], status: int
) -> None:
    main, backup = fakes
    main.queue(Plan(status=status, error="overloaded, try later"))
    job = final(alice, alice.submit("topic", topic="Tea", max_attempts=1).id)
    assert job.status == S.JOB_STATUS_COMPLETED and job.attempt == 1, job.error
    assert [r.body["model"] for r in main.requests] == ["small"]
    assert [r.body["model"] for r in backup.requests] == ["local"]
    meta = dict(job.result.metadata)
    assert (meta["model"], meta["provider"], meta["fallback_from"]) == ("local", "backup", "small")
    assert (
        meta["fallback_reason"]
        == f"small on main: HTTP {status}: overloaded, try later (GENERATOR_UNAVAILABLE)"
    )
    assert job.result.content == "".join(ARTICLE) and job.result.cost_unknown


def test_when_every_model_of_the_list_fails_the_error_names_each(
    alice: GenJobsClient, fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    main, backup = fakes
    main.queue(Plan(status=503, error="main is down"))
    backup.queue(Plan(status=400, error="backup refuses"))
    job = final(alice, alice.submit("topic", topic="Tea", max_attempts=1).id)
    assert job.status == S.JOB_STATUS_FAILED and job.error.code == "GENERATOR_REJECTED"
    assert job.error.message == (
        "local on backup: HTTP 400: backup refuses"
        " (after small on main: HTTP 503: main is down (GENERATOR_UNAVAILABLE))"
    )


def test_a_refusal_that_is_the_jobs_takes_no_fallback(
    alice: GenJobsClient, fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    main, backup = fakes
    main.queue(Plan(status=400, error="bad request"))
    job = final(alice, alice.submit("topic", topic="Tea", max_attempts=1).id)
    assert job.status == S.JOB_STATUS_FAILED and job.error.code == "GENERATOR_REJECTED"
    assert not backup.requests


def test_validate_only_stores_nothing_and_estimates(
    alice: GenJobsClient, fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    preview = alice.submit("topic", topic="Green tea", word_count=1000, validate_only=True)
    assert preview.status == S.JOB_STATUS_QUEUED and preview.params.topic == "Green tea"
    assert not alice.list().jobs and not fakes[0].requests  # nothing stored, nothing sent
    estimate = preview.estimate
    assert (estimate.model, estimate.provider, estimate.word_count) == ("small", "main", 1000)
    assert 20 < estimate.prompt_tokens < 200  # the built-in prompts, about 4 characters a token
    # 1000 words are about 1330 tokens: 0.75x to 1.5x of them at $10/M, plus the prompt at $2.50/M.
    assert (estimate.low_cents, estimate.high_cents) == (1, 3)
    assert not estimate.cost_unknown and not estimate.HasField("expected_duration")  # no job of small yet
    big = alice.submit(
        "topic", topic="Green tea", word_count=5000, extra={"model": "big"}, validate_only=True
    )
    # 6650 tokens at $60/M, 0.75x to 1.5x, and the prompt at $30/M.
    assert (big.estimate.low_cents, big.estimate.high_cents) == (30, 61)
    done = final(alice, alice.submit("topic", topic="Green tea").id)
    timed = alice.submit("topic", topic="Green tea", validate_only=True).estimate
    ran = done.end_time.ToDatetime() - done.start_time.ToDatetime()
    assert timed.HasField("expected_duration")
    assert abs(timed.expected_duration.ToTimedelta() - ran).total_seconds() < 0.01


def test_the_estimate_of_a_ten_item_bulk_job(alice: GenJobsClient) -> None:
    items = [{"topic": f"Tea garden {i}", "word_count": 1000} for i in range(10)]
    one = alice.submit("topic", topic="Tea garden 0", word_count=1000, validate_only=True).estimate
    bulk = alice.create_bulk("topic", items, validate_only=True)
    assert bulk.total_items == 10 and len(bulk.items) == 10
    assert not alice.list_bulk().bulk_jobs and not alice.list().jobs  # nothing stored
    estimate = bulk.estimate
    assert estimate.word_count == 10_000 and (estimate.model, estimate.provider) == ("small", "main")
    assert estimate.low_cents == 10 * one.low_cents and estimate.high_cents == 10 * one.high_cents
    assert estimate.high_cents > estimate.low_cents and not estimate.cost_unknown
    assert 10 * one.prompt_tokens - 10 <= estimate.prompt_tokens <= 10 * one.prompt_tokens + 10


def test_the_http_face_estimates_too(server: ServerThread, alice: GenJobsClient) -> None:
    assert server.app is not None
    auth = {"authorization": f"Bearer {server.token('alice')}"}
    body = {"mode": "MODE_TOPIC", "params": {"topic": "Tea", "wordCount": 1000}, "validateOnly": True}
    with httpx.Client(base_url=f"http://127.0.0.1:{server.app.http_port}", timeout=30) as http:
        answer = http.post("/v1/jobs", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    estimate = answer.json()["estimate"]
    assert (estimate["lowCents"], estimate["highCents"], estimate["model"]) == ("1", "3", "small")
    assert not alice.list().jobs


def test_an_unpriced_model_estimates_an_unknown_cost(alice: GenJobsClient) -> None:
    estimate = alice.submit("topic", topic="Tea", extra={"model": "local"}, validate_only=True).estimate
    assert estimate.cost_unknown and estimate.cost_unknown_reason == "model local has no price"
    assert (estimate.low_cents, estimate.high_cents) == (0, 0)
    items = [{"topic": f"Tea {i}", "extra": {"model": "local" if i == 5 else "small"}} for i in range(10)]
    mixed = alice.create_bulk("topic", items, validate_only=True).estimate
    assert mixed.cost_unknown and mixed.cost_unknown_reason == "model local has no price"
    assert mixed.model == ""  # items on two models


def test_a_budget_refuses_a_job_whose_low_estimate_passes_what_is_left(
    server: ServerThread, alice: GenJobsClient
) -> None:
    with server.client("root", admin=True) as admin:
        admin.set_budget("alice", 10)
    dear = S.SubmitJobRequest(
        mode=S.MODE_TOPIC, params=S.GenerationParams(topic="Tea", word_count=5000, extra={"model": "big"})
    )
    for validate_only in (False, True):  # a dry run says what the submit would meet
        dear.validate_only = validate_only
        reason, violations = quota_failure(
            server, "alice", lambda _, stub, metadata: stub.SubmitJob(dear, metadata=metadata)
        )
        assert reason == "BUDGET_EXHAUSTED" and [v[0] for v in violations] == ["owner:alice"]
        assert "low estimate of 30 cents would pass the 10 cents left" in violations[0][1]
    assert not alice.list().jobs
    cheap = alice.submit(
        "topic", topic="Tea", word_count=300
    )  # low estimate 0 (300 words): within the 10 cents
    assert final(alice, cheap.id).status == S.JOB_STATUS_COMPLETED


def test_dry_runs_on_the_command_line(server: ServerThread, alice: GenJobsClient, tmp_path: Path) -> None:
    cli = _cli(server)
    out = cli("submit", "--topic", "Green tea", "--word-count", "1000", "--dry-run")
    assert out == "dry run, nothing queued (topic: Green tea): estimate 1-3¢ (small on main)\n"
    out = cli("submit", "--topic", "Tea", "--extra", "model=local", "--dry-run")
    assert (
        out
        == "dry run, nothing queued (topic: Tea): cost unknown: model local has no price (local on backup)\n"
    )
    final(alice, alice.submit("topic", topic="Green tea").id)  # now small has a duration to go by
    out = cli("submit", "--topic", "Green tea", "--word-count", "1000", "--dry-run")
    assert out.startswith("dry run, nothing queued (topic: Green tea): estimate 1-3¢, about ")
    items = tmp_path / "items.csv"
    items.write_text("topic,word_count\n" + "".join(f"Tea {i},1000\n" for i in range(10)))
    out = cli("bulk", "create", str(items), "--dry-run")
    assert out.startswith("dry run, nothing queued (bulk job of 10 items): estimate 10-30¢, about ")
    answer = json.loads(cli("-o", "json", "bulk", "create", str(items), "--dry-run"))
    assert answer["estimate"]["low_cents"] == "10" and answer["total_items"] == 10
    assert len(alice.list().jobs) == 1 and not alice.list_bulk().bulk_jobs  # only the one submitted


def _cli(server: ServerThread) -> Callable[..., str]:
    runner = CliRunner()
    env = {"GENJOBS_TARGET": server.target, "GENJOBS_TOKEN": server.token("alice"), "COLUMNS": "200"}

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout

    return run


# ---- the providers file, read at start ----------------------------------------


def test_a_bad_providers_file_stops_the_server_naming_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    good = providers_file(path, "http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1").read_text()
    cases: dict[str, str] = {
        "default_model = [": "Invalid",  # not TOML
        good.replace('default_model = "small"', 'default_model = "huge"'): "default_model must name one of",
        good.replace('fallbacks = ["local"]', 'fallbacks = ["gone"]'): "fallback 'gone' is not another model",
        good.replace("rpm = 500", "rpm = -1"): "[providers.main] rpm must be a whole number above 0",
        good.replace("output_per_mtok = 60\n", ""): "needs both input_per_mtok and output_per_mtok",
        good.replace(
            'base_url = "http://127.0.0.1:2/v1"', 'base_url = "ftp://x"'
        ): "base_url must be an http",
        good.replace("rpm = 500", "rmp = 500"): "unknown key 'rmp'",
        good.replace(
            "[providers.backup.models.local]", "[providers.backup.models.big]"
        ): "also a model of main",
        'default_model = "x"\n': "no [providers.<name>] table",
    }
    for text, problem in cases.items():
        path.write_text(text)
        with pytest.raises(SystemExit) as caught:
            make_generator(Settings(generator="openai", providers_file=str(path)))
        assert str(caught.value).startswith(f"genjobs: GENJOBS_PROVIDERS_FILE {path}: ")
        assert problem in str(caught.value)
    with pytest.raises(SystemExit, match="No such file"):
        make_generator(Settings(generator="openai", providers_file=str(tmp_path / "missing.toml")))
    openai_without_key = good.replace("http://127.0.0.1:1/v1", "https://api.openai.com/v1")
    path.write_text(openai_without_key.replace('api_key_env = "MAIN_TEST_KEY"\n', ""))
    with pytest.raises(SystemExit, match="needs api_key_env"):
        make_generator(Settings(generator="openai", providers_file=str(path)))
    with pytest.raises(SystemExit, match="set GENJOBS_GENERATOR=openai"):
        make_generator(Settings(providers_file=str(path)))


def test_the_single_provider_settings_are_a_one_provider_file() -> None:
    made = Providers.single("http://127.0.0.1:9/v1", "", "m1", {"m2": Price(1.0, 2.0)})
    assert list(made.providers) == ["openai"] and made.default_model == "m1"
    assert made.model("").name == "m1" and made.model("m2").price == Price(1.0, 2.0)
    assert made.accepts("anything/else:7b") and made.known_models() == []  # any model the endpoint serves
    assert made.model("anything/else:7b").price is None and made.chain("m1") == [made.model("m1")]
