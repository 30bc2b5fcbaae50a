"""The generator interface: `generate(job, report_progress, cancelled) -> Output`,
what a generator is told (JobSpec) and its two ways of not producing (errors)."""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from genjobs.server.model.rules import clean_text

ProgressFn = Callable[[int, str, int, str], None]  # percentage, stage, stage_progress, message


@dataclass(frozen=True)
class JobSpec:
    """What a generator is told about the job it runs."""

    id: str
    owner: str
    mode: str
    params: dict[str, Any]
    attempt: int
    epoch: int = 0  # this attempt's lease epoch and start: what its progress token names
    started_us: int = 0


@dataclass
class Output:
    """What a generator produced."""

    content: str
    title: str
    word_count: int
    cost_cents: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def as_doc(self) -> dict[str, Any]:
        """The result as stored in the job: its text without control characters
        (a generation service's escape codes never reach a terminal that shows it)."""
        return {
            "content": clean_text(self.content),
            "title": clean_text(self.title),
            "word_count": self.word_count,
            "cost_cents": self.cost_cents,
            "metadata": {clean_text(k): clean_text(v) for k, v in self.metadata.items()},
        }


class GenerationFailed(Exception):
    """The attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(
        self,
        code: str,
        message: str,
        retryable: bool,
        retry_after_seconds: float | None = None,
        *,
        provider: str = "",
        model: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        # The provider asked for this long a pause (HTTP 429 Retry-After).
        self.retry_after_seconds = retry_after_seconds
        # Where it came from (generators with providers): the provider's name and the model.
        self.provider = provider
        self.model = model
        self.started = False  # output had begun to arrive (a fallback would repeat it)


class GenerationCancelled(Exception):
    """The generator saw the cancel signal and stopped."""


class CancelSignal(threading.Event):
    """A run's cancel signal that also calls back when set: a generator or the
    watchdog waits for its own end or the cancel, with no polling."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def set(self) -> None:
        """Set the signal and call each callback once."""
        with self._callbacks_lock:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the signal is set (now, if it is)."""
        with self._callbacks_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()


def when_set(signal: threading.Event, callback: Callable[[], None]) -> bool:
    """Call `callback` once `signal` is set, when the signal can tell (a
    `CancelSignal`); whether it will (else the caller polls)."""
    if isinstance(signal, CancelSignal):
        signal.on_set(callback)
        return True
    return False


class Generator(Protocol):
    """Anything that turns a job into content.

    A generator that streams sets `streams = True` and calls report_progress
    for every piece it receives (the dispatcher coalesces the writes): a
    stream that stays silent longer than GENJOBS_STREAM_IDLE_SECONDS is hung.
    """

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output: ...


EXCERPT_CHARS = 300
MAX_RETRY_AFTER_SECONDS = 3600.0


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of a provider's text, on one line."""
    flat = " ".join(clean_text(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def retry_after(headers: Any) -> float | None:
    """Seconds from a response's `Retry-After` (seconds or an HTTP date) or
    `retry-after-ms`, bounded; None when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    raw = headers.get("retry-after")
    seconds: float | None = None
    try:
        if raw_ms:
            seconds = float(raw_ms) / 1000
        elif raw:
            seconds = float(raw)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        except (TypeError, ValueError):  # neither seconds nor a date: the usual backoff
            parsed = None
        seconds = parsed.timestamp() - time.time() if parsed else None
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def http_failure(status: int, detail: str, retry_after_seconds: float | None = None) -> GenerationFailed:
    """The failure an HTTP error status means, with the provider's own words.

    429, 408 and 5xx may pass (transient); 400, 401, 403, 404 and other 4xx
    will not by trying again (permanent).
    """
    text = f"HTTP {status}: {excerpt(detail)}" if detail.strip() else f"HTTP {status}"
    if status == 429:
        return GenerationFailed("GENERATOR_RATE_LIMITED", text, True, retry_after_seconds)
    if status == 408:
        return GenerationFailed("GENERATOR_TIMEOUT", text, True)
    if status >= 500:
        return GenerationFailed("GENERATOR_UNAVAILABLE", text, True, retry_after_seconds)
    if status in (401, 403):
        return GenerationFailed("GENERATOR_UNAUTHORIZED", text, False)
    if status == 404:
        return GenerationFailed("GENERATOR_NOT_FOUND", text, False)
    return GenerationFailed("GENERATOR_REJECTED", text, False)


def title_of(content: str) -> str:
    """An article's title: its first Markdown heading, else its first line."""
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("#"):
            return excerpt(line.lstrip("#").strip(), 200)
    return excerpt(lines[0].strip("*_ "), 200) if lines else ""


def cost_cents(dollars: float) -> int:
    """A cost in whole cents, rounded up (a fraction of a cent is a cent)."""
    return math.ceil(round(dollars * 100, 6))  # round first: 0.07 * 100 is 7.000000000000001
