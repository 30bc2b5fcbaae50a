"""Content generators: `generate(job, report_progress, cancelled) -> result`.

One module per generator beside the interface and its errors (`base`):
`demo` writes a deterministic article locally, `http` calls an external
generation service, `noop` returns at once. Each checks `cancelled` and
raises GenerationCancelled.
"""

from __future__ import annotations

from server.generators.base import (
    GenerationCancelled,
    GenerationFailed,
    Generator,
    JobSpec,
    Output,
    ProgressFn,
)
from server.generators.demo import DemoGenerator, write_article
from server.generators.http import HttpGenerator
from server.generators.noop import NoopGenerator

__all__ = [
    "DemoGenerator",
    "GenerationCancelled",
    "GenerationFailed",
    "Generator",
    "HttpGenerator",
    "JobSpec",
    "NoopGenerator",
    "Output",
    "ProgressFn",
    "make_generator",
    "write_article",
]


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
