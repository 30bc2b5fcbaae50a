"""The generator interface: `generate(job, report_progress, cancelled) -> Output`,
what a generator is told (JobSpec) and its two ways of not producing (errors)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
