"""`http`: calls an external generation service and maps its answer."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from server.generators.base import GenerationCancelled, GenerationFailed, JobSpec, Output, ProgressFn


class HttpGenerator:
    """Calls `POST {url}/api/content/generate/{mode}` and maps the answer.

    Timeouts, connection errors and 5xx answers are transient; 4xx answers
    and `success: false` are permanent. Cancel closes the connection.
    """

    def __init__(self, url: str, timeout_seconds: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout_seconds

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        body = {"job_id": job.id, "user_id": job.owner, "mode": job.mode, **job.params}
        outcome: dict[str, Any] = {}
        client = httpx.Client(timeout=self.timeout)

        def call() -> None:
            try:
                outcome["response"] = client.post(
                    f"{self.url}/api/content/generate/{job.mode.lower()}", json=body
                )
            except Exception as exc:  # reported below, in the dispatcher's thread
                outcome["error"] = exc

        report_progress(5, "requesting", 0, "calling the generation service")
        worker = threading.Thread(target=call, daemon=True, name=f"http-generate-{job.id}")
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


def _http_output(response: httpx.Response) -> Output:
    if response.status_code >= 500:
        raise GenerationFailed("GENERATOR_UNAVAILABLE", f"HTTP {response.status_code}", True)
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code >= 400:
        message = answer.get("error") if isinstance(answer, dict) else None
        raise GenerationFailed(
            "GENERATOR_REJECTED", f"HTTP {response.status_code}: {message or response.text[:200]}", False
        )
    if not isinstance(answer, dict) or not answer.get("success"):
        message = answer.get("error", "no content") if isinstance(answer, dict) else "not JSON"
        raise GenerationFailed("GENERATOR_FAILED", str(message), False)
    content = str(answer.get("content", ""))
    return Output(
        content=content,
        title=str(answer.get("title") or ""),
        word_count=len(content.split()),
        cost_cents=int(answer.get("cost_cents") or 0),
        metadata={"generator": "http"},
    )
