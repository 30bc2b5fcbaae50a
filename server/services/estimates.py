"""Before a job runs: whether the model it asks for exists, and what it is
expected to cost and take (SubmitJob and CreateBulkJob with validate_only,
and the budget check of every submit).

The generator's catalog (its models, their prices, a prompt's tokens) comes
through the wiring as a `Catalog`; the services never import a generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from genjobs.server.model.errors import FieldViolation
from genjobs.server.model.records import Params
from genjobs.server.model.rules import DEFAULT_WORD_COUNT
from genjobs.server.storage import records
from genjobs.server.storage.jobs import JobStore

TOKENS_PER_WORD = 1.33  # English prose, measured on OpenAI's tokenizers
# A model writes within about this share of the words it is asked for.
LOW_SHARE, HIGH_SHARE = 0.75, 1.5
RECENT_JOBS = 20  # how many of a model's completed jobs time its next one


class Catalog(Protocol):
    """The models a generator declares (server/generators/providers.py)."""

    @property
    def default_model(self) -> str:
        """The model a job that names none gets."""
        ...

    def known_models(self) -> list[str]:
        """The model names a job may ask for (empty: any name)."""
        ...

    def accepts(self, name: str) -> bool:
        """Whether a job may ask for model `name`."""
        ...

    def provider_of(self, name: str) -> str:
        """The provider that serves model `name`."""
        ...

    def price(self, name: str) -> tuple[float, float] | None:
        """Dollars per million input and output tokens; None: unpriced."""
        ...

    def prompt_tokens(self, mode: str, params: dict[str, Any]) -> int:
        """About how many tokens the prompt of a job with these params holds."""
        ...


@dataclass
class Estimate:
    """What a job, or the items of a bulk job together, should cost and take."""

    low_cents: int = 0
    high_cents: int = 0
    cost_unknown: bool = False
    cost_unknown_reason: str = ""
    model: str = ""
    provider: str = ""
    prompt_tokens: int = 0
    word_count: int = 0
    expected_seconds: float | None = None  # None: no recent job of the model to go by

    def add(self, other: Estimate) -> None:
        """Count another item in (a bulk job's estimate is its items')."""
        self.low_cents += other.low_cents
        self.high_cents += other.high_cents
        self.prompt_tokens += other.prompt_tokens
        self.word_count += other.word_count
        if other.cost_unknown and not self.cost_unknown:
            self.cost_unknown, self.cost_unknown_reason = True, other.cost_unknown_reason
        if self.model != other.model:
            self.model = self.provider = ""  # items on several models: none names them all


class Estimates:
    """Model checks and estimates from the generator's catalog (None: the
    generator declares no models or prices, e.g. `demo` or `http`)."""

    def __init__(self, catalog: Catalog | None, generator: str, jobs: JobStore) -> None:
        self.catalog = catalog
        self.generator = generator
        self.jobs = jobs

    def check_models(self, items: Sequence[Params], field: str) -> list[FieldViolation]:
        """A violation for each item asking for a model the generator does not
        know, naming the known ones (`field` is "params" or "items[{i}]")."""
        if self.catalog is None:
            return []
        bad = []
        for i, params in enumerate(items):
            name = params.extra.get("model", "")
            if name and not self.catalog.accepts(name):
                known = ", ".join(self.catalog.known_models())
                bad.append(
                    FieldViolation(
                        f"{field.format(i=i)}.extra['model']",
                        f"unknown model {name!r}: known models are {known}",
                    )
                )
        return bad

    def of(self, mode: str, items: Sequence[Params]) -> Estimate:
        """The cost of these items (one for a job), without their duration."""
        total: Estimate | None = None
        for params in items:
            one = self._one(mode, params)
            if total is None:
                total = one
            else:
                total.add(one)
        return total or Estimate()

    def timed(self, estimate: Estimate, items: int) -> Estimate:
        """The estimate with its expected duration: the mean of the model's recent
        completed jobs, once per item (they run one after another). One query."""
        if estimate.model:
            durations = self.jobs.recent_durations(estimate.model, RECENT_JOBS)
            if durations:
                estimate.expected_seconds = sum(durations) / len(durations) * items
        return estimate

    def _one(self, mode: str, params: Params) -> Estimate:
        words = params.word_count or DEFAULT_WORD_COUNT
        if self.catalog is None:
            why = f"the {self.generator} generator declares no prices"
            return Estimate(cost_unknown=True, cost_unknown_reason=why, word_count=words)
        model = params.extra.get("model") or self.catalog.default_model
        estimate = Estimate(
            model=model,
            provider=self.catalog.provider_of(model),
            # The generator's prompts read the params as a job's document holds them.
            prompt_tokens=self.catalog.prompt_tokens(mode, records.params_doc(params)),
            word_count=words,
        )
        price = self.catalog.price(model)
        if price is None:
            estimate.cost_unknown, estimate.cost_unknown_reason = True, f"model {model} has no price"
            return estimate
        per_in, per_out = price
        written = words * TOKENS_PER_WORD
        low = (estimate.prompt_tokens * per_in + written * LOW_SHARE * per_out) / 1e6
        high = (estimate.prompt_tokens * per_in + written * HIGH_SHARE * per_out) / 1e6
        # Low rounds down (a budget refuses only what surely passes it), high up.
        estimate.low_cents = math.floor(round(low * 100, 6))
        estimate.high_cents = math.ceil(round(high * 100, 6))
        return estimate
