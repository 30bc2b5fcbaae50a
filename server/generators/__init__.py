"""Content generators: `generate(job, report_progress, cancelled) -> result`.

One module per generator beside the interface and its errors (`base`):
`demo` writes a deterministic article locally, `http` calls an external
generation service, `openai` streams from an OpenAI-compatible endpoint,
`noop` returns at once. Each checks `cancelled` and raises
GenerationCancelled; `Watchdog` holds every attempt to its time limits.
"""

from __future__ import annotations

import os

from server.generators.base import (
    GenerationCancelled,
    GenerationFailed,
    Generator,
    JobSpec,
    Output,
    ProgressFn,
)
from server.generators.demo import DemoGenerator, write_article
from server.generators.http import HttpGenerator, parse_headers
from server.generators.noop import NoopGenerator
from server.generators.openai import OpenAIGenerator, parse_prices
from server.generators.prompts import Prompts
from server.generators.watchdog import Watchdog
from server.runtime.config import Settings
from server.services.progress import ProgressLink

__all__ = [
    "DemoGenerator",
    "GenerationCancelled",
    "GenerationFailed",
    "Generator",
    "HttpGenerator",
    "JobSpec",
    "NoopGenerator",
    "OpenAIGenerator",
    "Output",
    "ProgressFn",
    "Watchdog",
    "declared_stages",
    "make_generator",
    "write_article",
]


def make_generator(settings: Settings, progress: ProgressLink | None = None) -> Generator:
    """The generator named by configuration, held to every attempt's time limits."""
    kind = settings.generator
    if kind == "noop":
        return NoopGenerator()  # returns at once: nothing to watch, and benchmarks measure the service
    inner: Generator
    if kind == "demo":
        inner = DemoGenerator()
    elif kind == "http":
        if not settings.generator_url:
            raise SystemExit("genjobs: GENJOBS_GENERATOR=http needs GENJOBS_GENERATOR_URL")
        inner = HttpGenerator(
            settings.generator_url,
            settings.generator_timeout_seconds,
            parse_headers(settings.generator_headers),
            progress,
        )
    elif kind == "openai":
        key = settings.openai_api_key or os.environ.get("OPENAI_API_KEY", "")
        if not key and "api.openai.com" in settings.openai_base_url:
            raise SystemExit("genjobs: the OpenAI API needs GENJOBS_OPENAI_API_KEY (or OPENAI_API_KEY)")
        inner = OpenAIGenerator(
            settings.openai_base_url,
            key,
            settings.openai_model,
            parse_prices(settings.openai_prices),
            Prompts.load(settings.prompts_file),
            settings.attempt_timeout_seconds,
        )
    else:
        raise SystemExit(f"genjobs: unknown generator {kind!r} (use 'demo', 'http', 'openai' or 'noop')")
    return Watchdog(inner, settings.attempt_timeout_seconds, settings.stream_idle_seconds)


def declared_stages(generator: object) -> tuple[str, ...]:
    """The stages a generator declares (its `stages`, in order; a Watchdog
    says its inner generator's); () when it declares none."""
    return tuple(getattr(generator, "stages", ()))
