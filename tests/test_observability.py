"""Metrics through a real scrape of /metrics, traces into an in-memory
exporter, JSON logs from a real server process."""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from genjobs.client import GenJobsClient, NotFound, Unauthenticated
from genjobs.server.api.auth import make_token
from genjobs.server.model import caller
from genjobs.server.runtime import observability
from genjobs.server.runtime.embedded import free_port
from genjobs.server.telemetry import context, metrics
from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import SECRET, SERVING_ON, MongoServer, ServerThread, make_settings, server_env, wait_for
from tests.receivers import Receiver

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of a real GET /metrics, parsed with the Prometheus client's parser."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(mongo: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    monkeypatch.setattr(observability, "QUEUE_REFRESH_SECONDS", 0.2)
    settings = make_settings(mongo.uri, tmp_path, metrics_port=free_port())
    running = ServerThread(settings).start()
    yield running
    running.stop()


def test_the_queue_gauges_cost_the_database_nothing_while_nobody_reads_the_metrics(
    metered: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = metered.app
    assert app is not None
    queue = app.store.queue
    counts: list[float] = []
    count = queue.queue_counts

    def counted() -> tuple[int, int]:
        counts.append(time.monotonic())
        return count()

    passes: list[float] = []  # the gauges' loop asks once a pass whether the metrics were read
    scrapes = metrics.scrapes

    def asked() -> int:
        passes.append(time.monotonic())
        return scrapes()

    queue.queue_counts = counted  # type: ignore[method-assign]
    monkeypatch.setattr(metrics, "scrapes", asked)
    # Ten passes of the gauges' loop with no scrape: at most the count at the start.
    wait_for(lambda: len(passes) >= 10, timeout=30)
    at_rest = len(counts)
    assert at_rest <= 1
    scrape(metered.settings.metrics_port)  # someone reads them: they are counted again
    wait_for(lambda: len(counts) > at_rest, timeout=10)


def test_metrics_move_as_jobs_are_submitted_run_fail_and_are_cancelled(metered: ServerThread) -> None:
    port = metered.settings.metrics_port
    receiver = Receiver()
    before = scrape(port)
    with metered.client("alice") as alice:
        done = alice.submit("topic", topic="Green tea", word_count=200, notify_url=receiver.url())
        failing = alice.submit("keywords", keywords=["tea"], extra={"demo_fail": "permanent"})
        wait_for(lambda: alice.get(done.id).status == jobs_pb2.JOB_STATUS_COMPLETED, timeout=30)
        wait_for(lambda: alice.get(failing.id).status == jobs_pb2.JOB_STATUS_FAILED, timeout=30)
        long = alice.submit("topic", topic="Long", extra={"demo_seconds": "60"})
        wait_for(lambda: alice.get(long.id).status == jobs_pb2.JOB_STATUS_PROCESSING, timeout=30)
        queued = alice.submit("topic", topic="Waits")

        # Gauges: from the database (queue) and this replica (leader, streams).
        stub = jobs_pb2_grpc.JobServiceStub(alice._channel)
        stream = stub.WatchJob(
            jobs_pb2.WatchJobRequest(id=long.id), metadata=(("authorization", f"Bearer {metered.token()}"),)
        )
        next(stream)  # the snapshot: the stream is open
        gauges = wait_for(
            lambda: (
                (s := scrape(port))
                and value(s, "genjobs_queue_depth", priority="normal") == 1
                and value(s, "genjobs_jobs_running") == 1
                and s
            ),
            timeout=15,
        )
        assert value(gauges, "genjobs_streams_open", method="WatchJob", transport="grpc") == 1
        assert value(gauges, "genjobs_dispatcher_leader") == 1
        stream.cancel()

        alice.cancel(queued.id)
        alice.cancel(long.id)
        wait_for(lambda: alice.get(long.id).status == jobs_pb2.JOB_STATUS_CANCELLED, timeout=30)
        with pytest.raises(NotFound):
            alice.get("0" * 24)
        wait_for(lambda: receiver.received, timeout=30)
    wrong = make_token("wrong-secret-0123456789abcdef-0123", "eve")
    with GenJobsClient(metered.target, wrong) as eve, pytest.raises(Unauthenticated):
        eve.get("0" * 24)

    after = wait_for(
        lambda: (
            (s := scrape(port))
            and value(s, "genjobs_webhook_deliveries_total", outcome="delivered")
            > value(before, "genjobs_webhook_deliveries_total", outcome="delivered")
            and value(s, "genjobs_streams_open", method="WatchJob", transport="grpc") == 0
            and s
        ),
        timeout=15,
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("genjobs_jobs_submitted_total", mode="topic") == 3
    assert delta("genjobs_jobs_submitted_total", mode="keywords") == 1
    assert delta("genjobs_jobs_finished_total", mode="topic", status="completed") == 1
    assert delta("genjobs_jobs_finished_total", mode="keywords", status="failed") == 1
    assert delta("genjobs_jobs_finished_total", mode="topic", status="cancelled") == 2
    assert delta("genjobs_job_attempts_total", mode="topic", outcome="completed") == 1
    assert delta("genjobs_job_attempts_total", mode="keywords", outcome="failed") == 1
    assert delta("genjobs_job_attempts_total", mode="topic", outcome="cancelled") == 1
    assert delta("genjobs_job_failures_total", code="DEMO_PERMANENT") == 1
    assert delta("genjobs_job_wait_seconds_count") == 3
    assert delta("genjobs_job_run_seconds_count", mode="topic") == 2
    assert delta("genjobs_generator_cost_cents_total", mode="topic") >= 1
    assert (
        delta(
            "genjobs_rpc_handled_total",
            service="genjobs.v1.JobService",
            transport="grpc",
            method="SubmitJob",
            code="OK",
        )
        == 4
    )
    assert (
        delta(
            "genjobs_rpc_handled_total",
            service="genjobs.v1.JobService",
            transport="grpc",
            method="GetJob",
            code="NOT_FOUND",
        )
        == 1
    )
    assert (
        delta(
            "genjobs_rpc_handled_total",
            service="genjobs.v1.JobService",
            transport="grpc",
            method="GetJob",
            code="UNAUTHENTICATED",
        )
        == 1
    )
    assert delta(
        "genjobs_rpc_handled_total",
        service="genjobs.v1.JobService",
        transport="grpc",
        method="WatchJob",
        code="CANCELLED",
    )
    assert (
        delta(
            "genjobs_rpc_duration_seconds_count",
            service="genjobs.v1.JobService",
            transport="grpc",
            method="SubmitJob",
        )
        == 4
    )
    assert delta("genjobs_webhook_deliveries_total", outcome="delivered") == 1


def test_exposition_is_what_the_metrics_port_serves(metered: ServerThread) -> None:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"genjobs_jobs_submitted", "genjobs_queue_depth", "genjobs_rpc_duration_seconds"} <= names
    assert value(scrape(metered.settings.metrics_port), "genjobs_dispatcher_leader") == 1


@pytest.fixture
def spans(mongo: MongoServer) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    observability.setup_tracing(SimpleSpanProcessor(exporter))
    yield exporter
    observability.stop_tracing()


def test_attempt_spans_link_to_the_submit_and_parent_the_generator_call(
    spans: InMemorySpanExporter, mongo: MongoServer, tmp_path: Path
) -> None:
    generation_service = Receiver()  # answers 200 with no JSON: the job fails, after a real HTTP call
    settings = make_settings(mongo.uri, tmp_path, generator="http", generator_url=generation_service.url("/"))
    server = ServerThread(settings).start()
    try:
        with server.client() as alice:
            job = alice.submit("topic", topic="Traced")
            wait_for(lambda: alice.get(job.id).status == jobs_pb2.JOB_STATUS_FAILED, timeout=30)
    finally:
        server.stop()
    finished = spans.get_finished_spans()
    submit = next(s for s in finished if s.name == "/genjobs.v1.JobService/SubmitJob")
    attempt = next(s for s in finished if s.name == "genjobs.job_attempt")
    assert attempt.attributes is not None and attempt.attributes["genjobs.job_id"] == job.id
    assert attempt.attributes["genjobs.outcome"] == "failed"
    assert [(link.context.trace_id, link.context.span_id) for link in attempt.links] == [
        (submit.context.trace_id, submit.context.span_id)
    ]
    call = next(s for s in finished if s.name.startswith("POST"))
    assert call.parent is not None and call.parent.span_id == attempt.context.span_id
    assert call.context.trace_id == attempt.context.trace_id


def test_json_log_lines_carry_the_context_and_redact_tokens() -> None:
    """Pure logic: the formatter's fields, and a token in a message is redacted."""
    formatter = observability.JsonFormatter(observability.Redactor(["s3cret-value"]))
    token = make_token(SECRET, "alice")
    record = logging.LogRecord(
        "server.x", logging.WARNING, __file__, 1, "saw %s and %s", (token, "s3cret-value"), None
    )
    with context.job_attempt({"_id": "j1", "owner": "alice", "attempt": 2, "bulk_job_id": "b1"}):
        line = json.loads(formatter.format(record))
    assert line["level"] == "WARNING" and line["logger"] == "server.x" and line["time"].endswith("Z")
    assert (line["job_id"], line["owner"], line["attempt"], line["bulk_job_id"]) == ("j1", "alice", 2, "b1")
    assert line["message"] == "saw [redacted] and [redacted]"
    # In an RPC (the interceptor names it): the method, and the caller as the owner.
    caller_token = caller._caller.set(caller.Caller("bob"))
    rpc_token = context.rpc_method.set("GetJob")
    try:
        line = json.loads(formatter.format(record))
    finally:
        context.rpc_method.reset(rpc_token)
        caller._caller.reset(caller_token)
    assert (line["rpc"], line["owner"]) == ("GetJob", "bob") and "job_id" not in line


def test_json_logs_of_a_real_server_parse_line_by_line_and_hold_no_token(
    mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings(
        mongo.uri, tmp_path, log_format="json", db_name="t_" + uuid.uuid4().hex[:12]
    )  # port 0: the server binds a free one and logs it
    env = {**server_env(settings), "OTEL_TRACES_EXPORTER": "console"}
    stderr_path, stdout_path = tmp_path / "stderr", tmp_path / "stdout"
    with open(stderr_path, "wb") as stderr, open(stdout_path, "wb") as stdout:
        command = [sys.executable, "-m", "genjobs.server"]
        process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
    try:
        token = make_token(SECRET, "alice")

        def serving_on() -> re.Match[str] | None:
            assert process.poll() is None, stderr_path.read_text()
            return SERVING_ON.search(stderr_path.read_text())

        target = f"127.0.0.1:{wait_for(serving_on, timeout=60, interval=0.1).group(1)}"
        with GenJobsClient(target, token) as alice:
            done = alice.submit("topic", topic="Logged")
            failing = alice.submit("topic", topic="Fails", extra={"demo_fail": "permanent"})
            wait_for(lambda: alice.get(done.id).status == jobs_pb2.JOB_STATUS_COMPLETED, timeout=30)
            wait_for(lambda: alice.get(failing.id).status == jobs_pb2.JOB_STATUS_FAILED, timeout=30)
        with grpc.insecure_channel(target) as channel:  # a bad token, and a malformed header
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            for header in (f"Bearer {token}x", f"Basic {token}"):
                with pytest.raises(grpc.RpcError):
                    stub.GetJob(jobs_pb2.GetJobRequest(id=done.id), metadata=(("authorization", header),))
    finally:
        process.terminate()
        assert process.wait(30) == 0
    lines = [json.loads(line) for line in stderr_path.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    ended = [line for line in lines if line.get("job_id") == failing.id and "failed" in line["message"]]
    assert ended and ended[0]["owner"] == "alice" and ended[0]["attempt"] == 1
    assert len(ended[0]["trace_id"]) == 32
    text = stderr_path.read_text() + stdout_path.read_text()
    assert token not in text and SECRET not in text
    assert os.environ.get("GENJOBS_TOKEN", "") == "" or os.environ["GENJOBS_TOKEN"] not in text


def test_log_format_must_be_known() -> None:
    with pytest.raises(SystemExit):
        observability.configure_logging("INFO", "yaml")


def test_metrics_served_over_tls_when_configured(mongo: MongoServer, tmp_path: Path) -> None:
    from tests.test_tls import make_certificates

    certs = make_certificates(tmp_path)
    settings = replace(
        make_settings(mongo.uri, tmp_path, metrics_port=free_port()),
        tls_cert_file=str(certs.server_cert),
        tls_key_file=str(certs.server_key),
    )
    server = ServerThread(settings).start()
    try:
        trust = ssl.create_default_context(cafile=str(certs.ca_cert))
        answer = httpx.get(f"https://127.0.0.1:{settings.metrics_port}/metrics", verify=trust)
        assert answer.status_code == 200 and "genjobs_rpc_handled_total" in answer.text
    finally:
        server.stop()


def test_attempt_log_lines_say_which_attempt_ran_and_how_long_until_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now_us = int(time.time() * 1e6)
    backoff = {"_id": "j1", "mode": "TOPIC", "status": "QUEUED", "queue": "backoff", "attempt": 1,
               "run_after_us": now_us + 2_000_000, "error": {"code": "DEMO_TRANSIENT"}}  # fmt: skip
    # A requeued attempt is given back: the job stores attempt 0 after its first ran.
    requeued = {"_id": "j2", "mode": "TOPIC", "status": "QUEUED", "queue": "ready", "attempt": 0}
    with caplog.at_level(logging.INFO, logger="genjobs.server.telemetry.metrics"):
        metrics.attempt_ended(backoff, 0.003)
        metrics.attempt_ended(requeued, 0.5)
    retry, again = [r.getMessage() for r in caplog.records if r.name == "genjobs.server.telemetry.metrics"]
    assert retry.startswith("attempt 1 of job j1: failed after 0.003 s; retry in ")
    assert 1.5 <= float(retry.split("retry in ")[1].split(" s")[0]) <= 2.0  # the delay, not the run
    assert again.startswith("attempt 1 of job j2: requeued after 0.500 s")  # the attempt that ran
