"""`http`: calls an external generation service and maps its answer."""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import threading
from typing import Any

import httpx

from genjobs.server.generators.base import (
    GenerationCancelled,
    GenerationFailed,
    JobSpec,
    Output,
    ProgressFn,
    excerpt,
    http_failure,
    retry_after,
    title_of,
)
from genjobs.server.model.progress import ProgressLink


def parse_headers(raw: str) -> dict[str, str]:
    """GENJOBS_GENERATOR_HEADERS: a JSON object of header names to values."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        # The value may hold credentials: never echo it.
        raise SystemExit(
            'genjobs: GENJOBS_GENERATOR_HEADERS must be a JSON object of strings, {"Name": "value"}'
        )
    return {str(k): v for k, v in data.items()}


class HttpGenerator:
    """Calls `POST {url}/api/content/generate/{mode}` and maps the answer.

    The body is the job's params with job_id, user_id and mode, and, when the
    server knows its address, `progress: {target, token}` for ReportProgress.
    Timeouts, connection errors, 429 and 5xx answers are transient; other
    4xx answers, `success: false` and malformed answers are permanent.
    Cancel closes the connection.
    """

    def __init__(
        self,
        url: str,
        timeout_seconds: float = 600.0,
        headers: dict[str, str] | None = None,
        progress: ProgressLink | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout_seconds
        self.headers = headers or {}
        self.progress = progress

    # None declared: the service reports its own stages, known only as they come.
    stages: tuple[str, ...] = ()

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        # job_id + attempt identify one generation: a service may see an attempt twice
        # (a crash after it answered, before the answer was stored).
        body: dict[str, Any] = {
            "job_id": job.id,
            "attempt": job.attempt,
            "user_id": job.owner,
            "mode": job.mode,
            **job.params,
        }
        if self.progress is not None and self.progress.target:
            body["progress"] = {"target": self.progress.target, "token": self.progress.token(job)}
        outcome: dict[str, Any] = {}
        client = httpx.Client(timeout=self.timeout, headers=self.headers)

        def call() -> None:
            try:
                outcome["response"] = client.post(
                    f"{self.url}/api/content/generate/{job.mode.lower()}", json=body
                )
            except Exception as exc:  # reported below, in the dispatcher's thread
                outcome["error"] = exc

        report_progress(5, "requesting", 0, "calling the generation service")
        # In the attempt's context: the request's trace span is the attempt's child.
        worker = threading.Thread(
            target=contextvars.copy_context().run, args=(call,), daemon=True, name=f"http-generate-{job.id}"
        )
        worker.start()
        while worker.is_alive():
            if cancelled.wait(0.05):
                client.close()  # aborts the request in flight
                raise GenerationCancelled()
        client.close()
        if "error" in outcome:
            error = outcome["error"]
            code = (
                "GENERATOR_TIMEOUT" if isinstance(error, httpx.TimeoutException) else "GENERATOR_UNREACHABLE"
            )
            raise GenerationFailed(code, f"{type(error).__name__}: {error}", True)
        return _http_output(outcome["response"])


def _bad(what: str) -> GenerationFailed:
    return GenerationFailed("GENERATOR_BAD_RESPONSE", f"the generation service answered {what}", False)


def _http_output(response: httpx.Response) -> Output:
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        detail = answer.get("error") if isinstance(answer, dict) else None
        raise http_failure(response.status_code, str(detail or response.text), retry_after(response.headers))
    if answer is None:
        raise _bad(
            f"HTTP {response.status_code} with a body that is not JSON: {excerpt(response.text, 100)!r}"
        )
    if not isinstance(answer, dict):
        raise _bad(f"a JSON {type(answer).__name__}, not an object with success and content")
    if not answer.get("success"):
        raise GenerationFailed("GENERATOR_FAILED", excerpt(str(answer.get("error") or "no content")), False)
    content, title = answer.get("content", ""), answer.get("title") or ""
    if not isinstance(content, str) or not isinstance(title, str):
        raise _bad("content or title that is not a string")
    return Output(
        content=content,
        title=title or title_of(content),
        word_count=len(content.split()),
        cost_cents=_cost_cents(answer.get("cost_cents")),
        metadata={"generator": "http"},
    )


def _cost_cents(value: Any) -> int:
    """cost_cents as a whole number of cents: numbers and numeric strings, rounded up."""
    if value is None or value == "":
        return 0
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
    if not math.isfinite(number) or number < 0:
        raise _bad(f"cost_cents {excerpt(repr(value), 40)}: a number of cents (0 or more) was expected")
    return math.ceil(number)
