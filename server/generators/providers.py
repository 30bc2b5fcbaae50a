"""Providers and their models: where the openai generator sends a job, what a
model costs, and which models stand in for it when its provider fails.

`GENJOBS_PROVIDERS_FILE` (TOML) names them; without it, the single-provider
`GENJOBS_OPENAI_*` settings build the same structure (`Providers.single`), so
there is one code path. Every provider has a name, so that an error, a
metric or a down-marking can say which one it concerns.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from genjobs.server.generators.prompts import Prompts

# The key that stands for any model name (the single-provider settings accept
# every model the endpoint serves, as they always did).
OPEN = "*"
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English prompts
TOKENS_PER_MESSAGE = 4  # the chat format's own framing of each message


@dataclass(frozen=True)
class Price:
    """A model's price in US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def dollars(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call with these token counts costs."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True)
class Model:
    """One model a job may ask for, on its provider."""

    name: str
    provider: str
    price: Price | None = None  # None: unpriced (its cost is unknown, never 0)
    fallbacks: tuple[str, ...] = ()  # tried in order while this one's provider fails


@dataclass(frozen=True)
class Provider:
    """An OpenAI-compatible endpoint."""

    name: str
    base_url: str
    api_key_env: str = ""
    api_key: str = field(default="", repr=False)
    rpm: int | None = None  # requests a minute (paced by the dispatcher, issue #31 item 2)
    tpm: int | None = None  # tokens a minute


@dataclass(frozen=True)
class Providers:
    """Every provider and model, and the model a job gets when it names none."""

    default_model: str
    providers: dict[str, Provider]
    models: dict[str, Model]  # OPEN: a template for names not listed (single-provider settings)

    @classmethod
    def single(cls, base_url: str, api_key: str, model: str, prices: dict[str, Price]) -> Providers:
        """The one provider the `GENJOBS_OPENAI_*` settings describe: its
        default model, the priced ones, and any other name the endpoint serves."""
        provider = Provider("openai", base_url, "GENJOBS_OPENAI_API_KEY", api_key)
        names = dict.fromkeys([model, *prices])
        models = {name: Model(name, provider.name, prices.get(name)) for name in names}
        models[OPEN] = Model(OPEN, provider.name)
        return cls(model, {provider.name: provider}, models)

    @classmethod
    def load(cls, path: str) -> Providers:
        """The providers file at `path`; SystemExit naming the file and the problem."""
        try:
            with open(path, "rb") as stream:
                data = tomllib.load(stream)
            return _parse(data, dict(os.environ))
        except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
            raise SystemExit(f"genjobs: GENJOBS_PROVIDERS_FILE {path}: {exc}") from None

    def known_models(self) -> list[str]:
        """The model names a job may ask for, sorted (empty: any name)."""
        return [] if OPEN in self.models else sorted(self.models)

    def accepts(self, name: str) -> bool:
        """Whether a job may ask for model `name`."""
        return name in self.models or OPEN in self.models

    def model(self, name: str) -> Model:
        """Model `name` ("" is the default); KeyError when it is unknown."""
        name = name or self.default_model
        if name in self.models:
            return self.models[name]
        return Model(name, self.models[OPEN].provider)  # KeyError unless any name goes

    def chain(self, name: str) -> list[Model]:
        """Model `name` and then its fallbacks, in order."""
        first = self.model(name)
        return [first, *(self.models[f] for f in first.fallbacks)]


@dataclass(frozen=True)
class Catalog:
    """What the service asks of the generator before a job runs: which models
    exist, their prices, and a prompt's tokens (the wiring hands it to the
    services; they never import a generator)."""

    providers: Providers
    prompts: Prompts

    @property
    def default_model(self) -> str:
        """The model a job that names none gets."""
        return self.providers.default_model

    def known_models(self) -> list[str]:
        """The model names a job may ask for (empty: any name)."""
        return self.providers.known_models()

    def accepts(self, name: str) -> bool:
        """Whether a job may ask for model `name`."""
        return self.providers.accepts(name)

    def provider_of(self, name: str) -> str:
        """The provider that serves model `name`."""
        return self.providers.model(name).provider

    def price(self, name: str) -> tuple[float, float] | None:
        """Model `name`'s dollars per million input and output tokens; None: unpriced."""
        price = self.providers.model(name).price
        return None if price is None else (price.input_per_mtok, price.output_per_mtok)

    def prompt_tokens(self, mode: str, params: dict[str, Any]) -> int:
        """About how many tokens the prompt of a job with these params holds."""
        messages = self.prompts.messages(mode, params)
        chars = sum(len(m["content"]) for m in messages)
        return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


def parse_prices(raw: str) -> dict[str, Price]:
    """GENJOBS_OPENAI_PRICES: `{"<model>": {"input_per_mtok": USD, "output_per_mtok": USD}}`."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        return {
            str(model): Price(float(p["input_per_mtok"]), float(p["output_per_mtok"]))
            for model, p in data.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SystemExit(
            "genjobs: GENJOBS_OPENAI_PRICES must be JSON like "
            '{"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}'
            f" ({type(exc).__name__}: {exc})"
        ) from None


_PROVIDER_KEYS = {"base_url", "api_key_env", "rpm", "tpm", "models"}
_MODEL_KEYS = {"input_per_mtok", "output_per_mtok", "fallbacks"}


def _parse(data: dict[str, Any], environ: dict[str, str]) -> Providers:
    """A providers file's contents; ValueError saying what is wrong and where."""
    unknown = set(data) - {"default_model", "providers"}
    if unknown:
        first = sorted(unknown)[0]
        raise ValueError(f"unknown key {first!r} (expected default_model and [providers.<name>])")
    tables = data.get("providers")
    if not isinstance(tables, dict) or not tables:
        raise ValueError("no [providers.<name>] table")
    providers: dict[str, Provider] = {}
    models: dict[str, Model] = {}
    for name, table in tables.items():
        where = f"[providers.{name}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table")
        _no_unknown(table, _PROVIDER_KEYS, where)
        base_url = table.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{where} base_url must be an http:// or https:// URL")
        key_env = _string(table, "api_key_env", where)
        key = environ.get(key_env, "") if key_env else ""
        if not key and "api.openai.com" in base_url:
            needs = f"its key in ${key_env}" if key_env else "api_key_env naming the variable of its key"
            raise ValueError(f"{where} (the OpenAI API) needs {needs}")
        providers[name] = Provider(
            name, base_url, key_env, key, _limit(table, "rpm", where), _limit(table, "tpm", where)
        )
        listed = table.get("models")
        if not isinstance(listed, dict) or not listed:
            raise ValueError(f"{where} has no [providers.{name}.models.<model>] table")
        for model_name, spec in listed.items():
            spot = f"[providers.{name}.models.{model_name}]"
            if model_name in models:
                other = models[model_name].provider
                raise ValueError(f"{spot}: model {model_name!r} is also a model of {other}")
            if not isinstance(spec, dict):
                raise ValueError(f"{spot} must be a table")
            models[model_name] = _model(model_name, name, spec, spot)
    for model in models.values():
        for fallback in model.fallbacks:
            if fallback not in models or fallback == model.name:
                raise ValueError(
                    f"model {model.name!r}: fallback {fallback!r} is not another model of the file"
                    f" (known: {', '.join(sorted(models))})"
                )
    default = data.get("default_model")
    if not isinstance(default, str) or default not in models:
        raise ValueError(f"default_model must name one of the models: {', '.join(sorted(models))}")
    return Providers(default, providers, models)


def _model(name: str, provider: str, spec: dict[str, Any], where: str) -> Model:
    _no_unknown(spec, _MODEL_KEYS, where)
    prices = [spec.get("input_per_mtok"), spec.get("output_per_mtok")]
    if prices.count(None) == 1:
        raise ValueError(f"{where} needs both input_per_mtok and output_per_mtok, or neither (unpriced)")
    price = None
    if prices[0] is not None:
        if not all(isinstance(p, int | float) and not isinstance(p, bool) and p >= 0 for p in prices):
            raise ValueError(f"{where} prices must be numbers of US dollars per million tokens, 0 or more")
        price = Price(float(prices[0]), float(prices[1]))  # type: ignore[arg-type]
    fallbacks = spec.get("fallbacks", [])
    if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
        raise ValueError(f"{where} fallbacks must be a list of model names")
    return Model(name, provider, price, tuple(fallbacks))


def _no_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(allowed))})")


def _string(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{where} {key} must be a string")
    return value


def _limit(table: dict[str, Any], key: str, where: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where} {key} must be a whole number above 0")
    return value
