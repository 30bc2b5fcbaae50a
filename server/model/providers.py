"""A provider's stored state: down since when, paused until when (issue #31)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProviderState:
    """What every replica's dispatcher knows of a provider (0: not so)."""

    name: str
    down_since_us: int = 0  # marked down (unreachable, 5xx) at this time
    paused_until_us: int = 0  # a 429's Retry-After: no request before this time
