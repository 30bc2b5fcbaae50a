"""Content generators: `generate(job, report_progress, cancelled) -> result`.

One module per generator beside the interface and its errors (`base`):
`demo` writes a deterministic article locally, `http` calls an external
generation service, `openai` streams from an OpenAI-compatible endpoint,
`noop` returns at once; `providers` holds the openai generator's providers,
models and prices. Each checks `cancelled` and raises
GenerationCancelled; `Watchdog` holds every attempt to its time limits.
"""

from __future__ import annotations

from genjobs.server.generators.base import (
    GenerationCancelled,
    GenerationFailed,
    Generator,
    JobSpec,
    Output,
    ProgressFn,
)
from genjobs.server.generators.demo import DemoGenerator, write_article
from genjobs.server.generators.http import HttpGenerator, parse_headers
from genjobs.server.generators.noop import NoopGenerator
from genjobs.server.generators.openai import OpenAIGenerator
from genjobs.server.generators.prompts import Prompts
from genjobs.server.generators.providers import Catalog, Providers, parse_prices
from genjobs.server.generators.watchdog import Watchdog

__all__ = [
    "Catalog",
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
    "Prompts",
    "Providers",
    "Watchdog",
    "declared_catalog",
    "declared_stages",
    "parse_headers",
    "parse_prices",
    "write_article",
]


def declared_stages(generator: object) -> tuple[str, ...]:
    """The stages a generator declares (its `stages`, in order; a Watchdog
    says its inner generator's); () when it declares none."""
    return tuple(getattr(generator, "stages", ()))


def declared_catalog(generator: object) -> Catalog | None:
    """The models and prices a generator declares (its `catalog`; a Watchdog
    says its inner generator's); None when it declares none."""
    return getattr(generator, "catalog", None)
