"""ReportProgress: external generation services report a running job's
progress with the attempt token they were sent; nothing else is accepted."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from genjobs.server.model.progress import AttemptTokens
from genjobs.server.runtime.embedded import free_port
from genjobs.v1 import jobs_pb2 as S
from genjobs.v1 import jobs_pb2_grpc
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.receivers import JsonHandler, serving

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "generation_service.py"
FINALS = (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)


def test_the_example_service_moves_a_jobs_progress(mongo: MongoServer, tmp_path: Path) -> None:
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", str(port), "--step-seconds", "0.3"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _listening(port), timeout=30)
        url = f"http://127.0.0.1:{port}"
        server = ServerThread(make_settings(mongo.uri, tmp_path, generator="http", generator_url=url)).start()
        try:
            with server.client() as alice:
                job = alice.submit("topic", topic="herons", word_count=120)
                events = list(alice.watch(job.id))
        finally:
            server.stop()
    finally:
        service.terminate()
        service.wait(10)
    stages = [e.job.progress.stage for e in events if e.type == S.JOB_EVENT_TYPE_PROGRESS]
    assert [s for s in stages if s != "requesting"] == ["research", "outline", "drafting", "editing"]
    reported = next(e.job.progress for e in events if e.job.progress.stage == "editing")
    assert reported.percentage == 95 and reported.message == "editing herons"
    assert reported.HasField("estimated_completion") and reported.elapsed_seconds > 0
    assert events[-1].job.status == S.JOB_STATUS_COMPLETED
    assert events[-1].job.result.word_count == 120


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class _Holding(JsonHandler):
    """A generation service that fails its first request (500) and holds the others."""

    bodies: ClassVar[list[dict[str, Any]]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.body()
        _Holding.bodies.append(body)
        if body.get("topic") == "fails once" and len(_Holding.bodies) == 1:
            code, answer = 500, {"success": False, "error": "warming up"}
        else:
            _Holding.release.wait(20)
            code, answer = 200, {"success": True, "content": "done at last"}
        self.answer(code, answer)


@pytest.fixture
def holding(mongo: MongoServer, tmp_path: Path) -> Iterator[ServerThread]:
    _Holding.bodies = []
    _Holding.release = threading.Event()
    with serving(_Holding) as url:
        server = ServerThread(make_settings(mongo.uri, tmp_path, generator="http", generator_url=url)).start()
        yield server
    _Holding.release.set()
    server.stop()


def _report(server: ServerThread, job_id: str, token: str, percentage: int = 50) -> grpc.StatusCode:
    """ReportProgress with no bearer token, as a generation service sends it."""
    request = S.ReportProgressRequest(
        job_id=job_id, token=token, percentage=percentage, stage="writing", stage_progress=30, message="half"
    )
    with grpc.insecure_channel(server.target) as channel:
        try:
            jobs_pb2_grpc.JobServiceStub(channel).ReportProgress(request, timeout=5)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_report_with_the_attempts_token_moves_progress(holding: ServerThread) -> None:
    with holding.client() as alice:
        job = alice.submit("topic", topic="held")
        wait_for(lambda: _Holding.bodies)
        progress = _Holding.bodies[0]["progress"]
        assert progress["target"] == holding.target
        stream = alice.watch(job.id)
        assert next(stream).type == S.JOB_EVENT_TYPE_SNAPSHOT
        assert _report(holding, job.id, progress["token"], percentage=100) == grpc.StatusCode.OK
        event = next(e for e in stream if e.job.progress.stage == "writing")
        assert event.type == S.JOB_EVENT_TYPE_PROGRESS
        shown = alice.get(job.id).progress
        # 100 is the completion's: a service's 100 reads 99 until the job completes.
        assert (shown.percentage, shown.stage_progress, shown.message) == (99, 30, "half")
        _Holding.release.set()
        done = wait_for(lambda: (j := alice.get(job.id)).status in FINALS and j)
        assert done.status == S.JOB_STATUS_COMPLETED


def test_foreign_forged_and_ended_tokens_are_refused(holding: ServerThread) -> None:
    with holding.client() as alice:
        job = alice.submit("topic", topic="held")
        other = alice.submit("topic", topic="queued behind it")
        wait_for(lambda: _Holding.bodies)
        token = _Holding.bodies[0]["progress"]["token"]
        # The generator's own first report ("requesting") is written within an
        # interval of the start (a trailing write): it is the progress to keep.
        before = wait_for(lambda: (j := alice.get(job.id)).progress.stage == "requesting" and j)
        assert _report(holding, other.id, token) == grpc.StatusCode.PERMISSION_DENIED  # another job's
        forged = AttemptTokens("not the server's secret").issue(job.id, 1, 0)
        assert _report(holding, job.id, forged) == grpc.StatusCode.PERMISSION_DENIED
        assert _report(holding, job.id, token + "0") == grpc.StatusCode.PERMISSION_DENIED
        assert alice.get(job.id).progress == before.progress
        alice.cancel(job.id)
        wait_for(lambda: alice.get(job.id).status == S.JOB_STATUS_CANCELLED)
        ended = alice.get(job.id)
        assert _report(holding, job.id, token) == grpc.StatusCode.PERMISSION_DENIED
        assert alice.get(job.id) == ended  # nothing changed
        alice.cancel(other.id)


def test_a_token_from_an_earlier_attempt_is_refused(holding: ServerThread) -> None:
    with holding.client() as alice:
        job = alice.submit("topic", topic="fails once", max_attempts=2)
        wait_for(lambda: len(_Holding.bodies) == 2)  # the first attempt failed, the second runs
        stale, current = (b["progress"]["token"] for b in _Holding.bodies)
        assert stale != current
        assert _report(holding, job.id, stale) == grpc.StatusCode.PERMISSION_DENIED
        assert _report(holding, job.id, current) == grpc.StatusCode.OK
        assert alice.get(job.id).progress.stage == "writing"
