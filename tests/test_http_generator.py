"""The http generator against a real local generation service: configured
headers and timeout, malformed answers, cost_cents and error bodies."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from genjobs.client import GenJobsClient
from genjobs.server.generators.http import parse_headers
from genjobs.v1 import jobs_pb2 as S
from tests.harness import MongoServer, ServerThread, make_settings, wait_for

SECRET_HEADER = "Bearer s3cret-value"
LONG_ERROR = "overloaded: " + "x" * 5000


class _Service(BaseHTTPRequestHandler):
    """Answers by topic: each topic is one way a generation service can answer."""

    headers_seen: ClassVar[list[dict[str, str]]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Service.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        topic = body.get("topic", "")
        answers: dict[str, tuple[int, Any]] = {
            "not json": (200, b"<html>proxy error</html>"),
            "a list": (200, [1, 2]),
            "cost string": (200, {"success": True, "content": "# Owls\nHoot hoot", "cost_cents": "12.5"}),
            "cost number": (200, {"success": True, "content": "a b", "cost_cents": 12.5}),
            "cost words": (200, {"success": True, "content": "a b", "cost_cents": "lots"}),
            "server error": (500, LONG_ERROR.encode()),
        }
        if topic == "slow":
            _Service.release.wait(10)
        code, answer = answers.get(topic, (200, {"success": True, "content": "fine"}))
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        if topic == "busy, retry soon":  # a Retry-After that is neither seconds nor a date
            code, data = 429, b"slow down"
        self.send_response(code)
        if code == 429:
            self.send_header("Retry-After", "soon")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    _Service.headers_seen = []
    _Service.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Service.release.set()
    httpd.shutdown()


@pytest.fixture
def alice(mongo: MongoServer, tmp_path: Path, service: str) -> Iterator[GenJobsClient]:
    settings = make_settings(
        mongo.uri,
        tmp_path,
        generator="http",
        generator_url=service,
        generator_headers=json.dumps({"Authorization": SECRET_HEADER}),
        generator_timeout_seconds=1.0,
    )
    assert "s3cret" not in repr(settings)  # credentials never reach a log line
    server = ServerThread(settings).start()
    with server.client() as client:
        yield client
    server.stop()


def run(alice: GenJobsClient, topic: str) -> S.Job:
    job = alice.submit("topic", topic=topic, max_attempts=1)
    finals = (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED)
    return wait_for(lambda: (j := alice.get(job.id)).status in finals and j, timeout=20)


def test_configured_headers_are_sent(alice: GenJobsClient) -> None:
    assert run(alice, "fine").status == S.JOB_STATUS_COMPLETED
    assert _Service.headers_seen[0]["authorization"] == SECRET_HEADER


def test_answers_that_are_not_json_or_of_the_wrong_shape_are_reported(alice: GenJobsClient) -> None:
    for topic, says in (("not json", "not JSON: '<html>proxy error</html>'"), ("a list", "a JSON list")):
        job = run(alice, topic)
        assert job.status == S.JOB_STATUS_FAILED and job.error.code == "GENERATOR_BAD_RESPONSE"
        assert says in job.error.message and not job.error.retryable


def test_cost_cents_numbers_and_numeric_strings_round_up(alice: GenJobsClient) -> None:
    job = run(alice, "cost string")
    assert (job.status, job.result.cost_cents, job.result.title) == (S.JOB_STATUS_COMPLETED, 13, "Owls")
    assert run(alice, "cost number").result.cost_cents == 13
    refused = run(alice, "cost words")
    assert refused.error.code == "GENERATOR_BAD_RESPONSE" and "cost_cents 'lots'" in refused.error.message


def waiting(alice: GenJobsClient, topic: str) -> S.Job:
    """A job the service's own trouble keeps waiting: queued, attempt given back, the error on it."""
    job = alice.submit("topic", topic=topic, max_attempts=1)
    return wait_for(lambda: (j := alice.get(job.id)).error.code and j, timeout=20)


def test_a_server_errors_body_is_kept_as_a_bounded_excerpt(alice: GenJobsClient) -> None:
    job = waiting(alice, "server error")
    assert job.status == S.JOB_STATUS_QUEUED and job.attempt == 0  # the service's failure, not the job's
    assert job.error.code == "GENERATOR_UNAVAILABLE" and job.error.retryable
    assert job.error.message.startswith("HTTP 500: overloaded: xxx")
    assert len(job.error.message) < 400


def test_an_unreadable_retry_after_is_still_a_transient_failure(alice: GenJobsClient) -> None:
    job = waiting(alice, "busy, retry soon")
    assert job.status == S.JOB_STATUS_QUEUED and job.attempt == 0
    assert (job.error.code, job.error.retryable) == ("GENERATOR_RATE_LIMITED", True)


def test_the_timeout_is_configurable(alice: GenJobsClient) -> None:
    job = run(alice, "slow")
    assert job.error.code == "GENERATOR_TIMEOUT" and job.error.retryable


def test_headers_must_be_a_json_object_of_strings() -> None:
    assert parse_headers('{"X-Key": "v"}') == {"X-Key": "v"}
    for bad in ('{"X-Key": 987654}', '["987654"]', "X-Key: 987654"):
        with pytest.raises(SystemExit) as caught:
            parse_headers(bad)
        assert "987654" not in str(caught.value)  # what may be a credential is never echoed
