"""Content generators: `generate(job, report_progress, cancelled) -> result`.

`demo` writes a deterministic article locally; `http` calls an external
generation service. Both check `cancelled` and raise GenerationCancelled.
"""

from __future__ import annotations

import contextvars
import hashlib
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from server.validation import DEFAULT_WORD_COUNT

ProgressFn = Callable[[int, str, int, str], None]  # percentage, stage, stage_progress, message


@dataclass(frozen=True)
class JobSpec:
    """What a generator is told about the job it runs."""

    id: str
    owner: str
    mode: str
    params: dict[str, Any]
    attempt: int


@dataclass
class Output:
    """What a generator produced."""

    content: str
    title: str
    word_count: int
    cost_cents: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def as_doc(self) -> dict[str, Any]:
        """The result as stored in the job."""
        return {
            "content": self.content,
            "title": self.title,
            "word_count": self.word_count,
            "cost_cents": self.cost_cents,
            "metadata": self.metadata,
        }


class GenerationFailed(Exception):
    """The attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class GenerationCancelled(Exception):
    """The generator saw the cancel signal and stopped."""


class Generator(Protocol):
    """Anything that turns a job into content."""

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output: ...


STAGES = (("research", 0.15), ("outline", 0.15), ("drafting", 0.55), ("editing", 0.15))

_OPENERS = (
    "Few subjects reward a closer look as much as {s}.",
    "Anyone working with {s} soon learns that the details matter.",
    "The story of {s} is still being written.",
    "{S} is easy to name and harder to explain well.",
)
_BODY = (
    "Start with what readers already know, then add one idea at a time.",
    "A clear example does more than a page of abstractions.",
    "Good practice grows out of small, repeated improvements.",
    "The strongest arguments are the ones that admit their limits.",
    "Numbers help, but only when they answer a question someone asked.",
    "Most mistakes come from skipping the step that seemed obvious.",
    "The best teams write down what they learn and share it early.",
    "Context decides whether a tactic is clever or careless.",
    "It pays to revisit assumptions once the first results arrive.",
    "Simple tools, used consistently, beat complex ones used rarely.",
)


class DemoGenerator:
    """A local generator: a real, deterministic article of the asked length.

    `params.extra`: `demo_seconds` stretches the run over that many seconds;
    `demo_fail` = `transient` fails the first `demo_fail_attempts` (default 1)
    attempts with a retryable error, `permanent` fails every attempt.
    """

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        extra = job.params.get("extra", {})
        seconds = float(extra.get("demo_seconds", 0) or 0)
        failure = extra.get("demo_fail", "")
        words = job.params.get("word_count") or DEFAULT_WORD_COUNT
        subject = _subject(job)
        for index, (stage, share) in enumerate(STAGES):
            steps = 4 if seconds else 1
            for step in range(1, steps + 1):
                if cancelled.wait(seconds * share / steps) if seconds else cancelled.is_set():
                    raise GenerationCancelled()
                done = sum(s for _, s in STAGES[:index]) + share * step / steps
                report_progress(int(done * 100), stage, int(step * 100 / steps), f"{stage} {subject}")
            if stage == "drafting" and failure == "permanent":
                raise GenerationFailed("DEMO_PERMANENT", "demo_fail=permanent asked for a failure", False)
            fails_now = job.attempt <= int(extra.get("demo_fail_attempts", "1"))
            if stage == "drafting" and failure == "transient" and fails_now:
                raise GenerationFailed("DEMO_TRANSIENT", "demo_fail=transient: try again", True)
        content = write_article(job.mode, job.params, words)
        return Output(
            content=content,
            title=_title(subject),
            word_count=len(content.split()),
            cost_cents=max(1, words // 100),
            metadata={"generator": "demo"},
        )


def _subject(job: JobSpec) -> str:
    params = job.params
    if job.mode == "SPIN":
        return " ".join(params.get("source_text", "").split()[:6]) or "the source text"
    return params.get("topic") or ", ".join(params.get("keywords", [])) or "the subject"


def _title(subject: str) -> str:
    return subject[:1].upper() + subject[1:80]


def write_article(mode: str, params: dict[str, Any], words: int) -> str:
    """`words` words of readable text about the params, the same every time."""
    seed = hashlib.sha256(repr((mode, sorted(params.items(), key=str))).encode()).digest()
    rng = random.Random(seed)
    subject = _subject(JobSpec("", "", mode, params, 1))
    keywords = params.get("keywords", [])
    sentences: list[str] = []
    count = 0
    while count < words:
        if not sentences or rng.random() < 0.2:
            sentence = rng.choice(_OPENERS).format(s=subject, S=_title(subject))
        elif keywords and rng.random() < 0.3:
            sentence = f"Consider {rng.choice(keywords)} in that light."
        else:
            sentence = rng.choice(_BODY)
        sentences.append(sentence)
        count += len(sentence.split())
    text = " ".join(sentences).split()[:words]
    paragraphs = [" ".join(text[i : i + 80]) for i in range(0, len(text), 80)]
    return "\n\n".join(paragraphs)


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


class NoopGenerator:
    """Returns an empty article at once: measures the service, not the generator."""

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        return Output(content="", title="", word_count=0)


def make_generator(kind: str, url: str) -> Generator:
    """The generator named by configuration."""
    if kind == "demo":
        return DemoGenerator()
    if kind == "noop":
        return NoopGenerator()
    if kind == "http":
        if not url:
            raise SystemExit("genjobs: GENJOBS_GENERATOR=http needs GENJOBS_GENERATOR_URL")
        return HttpGenerator(url)
    raise SystemExit(f"genjobs: unknown generator {kind!r} (use 'demo', 'http' or 'noop')")
