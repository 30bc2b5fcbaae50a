"""The provider gate: an outage or a rate limit is the provider's, not the job's.

The dispatcher asks it before claiming (`claim_wait`: is any provider open?),
after a claim (`hold`: may this job run now, or is it this provider's probe?)
and after a run (`settle`: was the failure the provider's? then the attempt is
given back and the job waits). A job's provider is its model's (the openai
generator's providers file); any other generator is one provider, "generator".

- Unreachable (connection refused/reset, no such name, connect timeout) or
  5xx/529 before any text came: the provider's failure. After `threshold` in
  a row it is marked down: none of its jobs start; one job probes it every
  `probe_seconds`; the first success (or any answer that is not an outage)
  marks it up. Past `max_outage_seconds` its waiting jobs fail, once each.
- 429: every job of the provider waits out its Retry-After.
- `rpm`/`tpm`: a token bucket a provider paces the requests (tokens are
  counted from each run's usage, after the fact).

The state is per process, mirrored in the `providers` collection (one
conditional write a change) and re-read by every replica's housekeeping,
so a second replica learns an outage within a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.errors import PyMongoError

from genjobs.server.generators.base import GenerationFailed, Output
from genjobs.server.model import clock
from genjobs.server.storage.database import Doc
from genjobs.server.storage.providers import ProviderStore
from genjobs.server.telemetry import metrics

log = logging.getLogger(__name__)

GENERATOR = "generator"  # the one provider of a generator without providers
# The failures that say the provider is unreachable or overloaded (5xx, 529).
OUTAGES = ("GENERATOR_UNREACHABLE", "GENERATOR_UNAVAILABLE")
RATE_LIMITED = "GENERATOR_RATE_LIMITED"
REFRESH_SECONDS = 1.0  # how stale the stored state read by `refresh` may be


@dataclass
class _Bucket:
    """A token bucket: `rate` a second, up to `burst`; it may go below 0 (tokens counted after a run)."""

    rate: float
    burst: float
    level: float
    at: float

    def wait(self, now: float) -> float:
        """Seconds until one unit is available (0: now)."""
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.level >= 1 else (1 - self.level) / self.rate

    def take(self, units: float) -> None:
        self.level -= units

    def give(self, units: float) -> None:
        """Units taken for work that did not happen, back (up to `burst`)."""
        self.level = min(self.burst, self.level + units)


@dataclass
class _State:
    """One provider as this process sees it."""

    failures: int = 0  # the provider's failures in a row
    down_since_us: int = 0
    next_probe: float = 0.0  # monotonic: when a down provider may be probed
    paused_until_us: int = 0
    requests: _Bucket | None = None  # rpm
    tokens: _Bucket | None = None  # tpm


@dataclass(frozen=True)
class Policy:
    """When a provider is down, how often it is probed, how long its jobs wait at most."""

    threshold: int = 3  # the provider's failures in a row that mark it down
    probe_seconds: float = 10.0
    max_outage_seconds: float = 6 * 3600.0
    retry_base_seconds: float = 1.0  # the wait after a failure before it is down, doubling


class ProviderGate:
    """Which jobs may start now, by their provider's health and limits (see the module)."""

    def __init__(
        self,
        store: ProviderStore,
        providers: Iterable[str],
        provider_of: Callable[[str], str],
        policy: Policy,
        limits: dict[str, tuple[int | None, int | None]] | None = None,
    ) -> None:
        self.store = store
        self._provider_of = provider_of
        self.threshold = max(1, policy.threshold)
        self.probe_seconds = policy.probe_seconds
        self.max_outage_us = int(policy.max_outage_seconds * 1_000_000)
        self.retry_base_seconds = policy.retry_base_seconds
        self._lock = threading.Lock()
        now = time.monotonic()
        self._states: dict[str, _State] = {}
        for name in providers:
            rpm, tpm = (limits or {}).get(name, (None, None))
            self._states[name] = _State(
                requests=_Bucket(rpm / 60, max(1.0, rpm / 60), max(1.0, rpm / 60), now) if rpm else None,
                tokens=_Bucket(tpm / 60, tpm / 60, tpm / 60, now) if tpm else None,
            )
            metrics.provider_up(name, True)
        self._refreshed = 0.0
        self._last_expiry = 0.0
        self._changes = 0  # this process's down/up marks so far: a read older than one is stale

    # ---- a job's provider ---------------------------------------------------

    def provider(self, params: Doc) -> str:
        """The provider of a job with these stored params (its model's)."""
        return self.provider_of(str((params.get("extra") or {}).get("model", "")))

    def provider_of(self, model: str) -> str:
        """The provider of `model` ("": the default model)."""
        try:
            name = self._provider_of(model)
        except KeyError:  # a model no longer in the file: the default's provider
            name = self._provider_of("")
        return name if name in self._states else next(iter(self._states))

    # ---- before and after a claim (dispatcher thread) ------------------------

    def claim_wait(self) -> float:
        """Seconds until some provider may take a job (0: one may now)."""
        now, now_us = time.monotonic(), clock.now_us()
        with self._lock:
            return min(self._closed_for(s, now, now_us) for s in self._states.values())

    def hold(self, job: Doc) -> float | None:
        """A claimed job: None to run it now (it may be its provider's probe), or
        the seconds it must wait (its attempt is given back)."""
        with self._lock:
            return self._hold_locked(job)

    def hold_now(self, job: Doc) -> bool:
        """`hold` for a job about to be stored running, asked on the event loop:
        whether it may run now (counted as `hold` counts it; `give_back` if it
        is not stored after all). False for a provider marked down (its probe
        is the dispatcher's to pick), and while the gate's lock is held (a
        lane may be storing a mark under it): it never waits."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._states[self.provider(job["params"])].down_since_us:
                return False
            return self._hold_locked(job) is None
        finally:
            self._lock.release()

    def give_back(self, job: Doc) -> None:
        """`hold_now` let `job` run, and it was not stored: its request back
        to its provider's rate (unless the lock is held: never waits)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            requests = self._states[self.provider(job["params"])].requests
            if requests is not None:
                requests.give(1)
        finally:
            self._lock.release()

    def _hold_locked(self, job: Doc) -> float | None:
        now, now_us = time.monotonic(), clock.now_us()
        state = self._states[self.provider(job["params"])]
        closed = self._closed_for(state, now, now_us)
        if closed > 0:
            return closed
        if state.down_since_us:
            state.next_probe = now + self.probe_seconds  # this job is the probe: the next one then
        if state.requests is not None:
            state.requests.take(1)
        return None

    def _closed_for(self, state: _State, now: float, now_us: int) -> float:
        """Seconds until `state`'s provider may take a job (0: now)."""
        wait = max(0.0, (state.paused_until_us - now_us) / 1e6)
        if state.down_since_us:
            wait = max(wait, state.next_probe - now)
        for bucket in (state.requests, state.tokens):
            if bucket is not None:
                wait = max(wait, bucket.wait(now))
        return max(0.0, wait)

    # ---- a run's end (lane threads) -----------------------------------------

    def settle(
        self, job: Doc, failure: GenerationFailed | None = None, output: Output | None = None
    ) -> float | None:
        """A run of `job` ended (`failure`, or `output`): None when its end is the
        job's own; else the provider's failure, and the seconds the job waits
        (its attempt is given back; 0: ready again at once)."""
        name = self.provider(job["params"])
        if output is not None:
            name = output.metadata.get("provider", name)
        elif failure is not None and failure.provider:
            name = failure.provider
        state = self._states.get(name)
        if state is None:
            return None
        now = time.monotonic()
        if failure is not None and failure.code == RATE_LIMITED:
            seconds = failure.retry_after_seconds or self.retry_base_seconds
            self._pause(name, state, clock.now_us() + int(seconds * 1_000_000))
            return seconds
        if failure is not None and failure.code in OUTAGES and not failure.started:
            with self._lock:
                state.failures += 1
                down = state.down_since_us > 0
                if not down and state.failures >= self.threshold:
                    state.down_since_us = clock.now_us()
                    state.next_probe = now + self.probe_seconds
                    down = True
                    self._changed(name, state, failure.message)
            # Down: it waits in the ready lane, where the gate stops its claim.
            return (
                0.0 if down else min(self.probe_seconds, self.retry_base_seconds * 2 ** (state.failures - 1))
            )
        # Any other end is an answer: the provider is reachable.
        with self._lock:
            state.failures = 0
            if state.tokens is not None and output is not None:
                used = (
                    output.metadata.get("prompt_tokens", "0"),
                    output.metadata.get("completion_tokens", "0"),
                )
                state.tokens.take(sum(int(n) for n in used if n.isdigit()))
            if state.down_since_us:
                state.down_since_us = 0
                self._changed(name, state, "answered again")
        return None

    def _pause(self, name: str, state: _State, until_us: int) -> None:
        with self._lock:
            state.paused_until_us = max(state.paused_until_us, until_us)
        log.info("provider %s: rate limited; no requests until %s", name, _hhmmss(until_us))
        self._store(lambda: self.store.pause(name, until_us))

    def _changed(self, name: str, state: _State, why: str) -> None:
        """Log, count and store a down/up change (called holding the lock)."""
        self._changes += 1
        down = state.down_since_us > 0
        metrics.provider_up(name, not down)
        if down:
            log.warning(
                "provider %s is down after %d failures in a row (%s); probing it every %gs",
                name,
                state.failures,
                why,
                self.probe_seconds,
            )
            since = state.down_since_us
            self._store(lambda: self.store.mark_down(name, since))
        else:
            log.warning("provider %s is up again (%s)", name, why)
            self._store(lambda: self.store.mark_up(name))

    def _store(self, write: Callable[[], object]) -> None:
        try:
            write()
        except PyMongoError as exc:  # this process knows; other replicas learn on the next change
            log.info("provider state not stored (%s)", exc)

    # ---- what queued jobs show, and the other replicas' marks -----------------

    def waiting_reason(self, model: str) -> str:
        """Why a queued job of `model` ("": the default) does not start ("" when it may):
        from memory (every replica's dispatcher thread refreshes it), never a read."""
        with self._lock:
            name = self.provider_of(model)
            state = self._states[name]
            if state.down_since_us:
                return f"waiting: {name} unreachable since {_hhmm(state.down_since_us)} UTC"
            if state.paused_until_us > clock.now_us():
                return f"waiting: {name} rate limited until {_hhmmss(state.paused_until_us)} UTC"
        return ""

    def refresh(self, force: bool = False) -> None:
        """Learn the marks other replicas stored (at most once a REFRESH_SECONDS)."""
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH_SECONDS:
            return
        self._refreshed = now
        changes = self._changes
        try:
            stored = self.store.states()
        except PyMongoError:
            return  # the database's outage is told elsewhere
        with self._lock:
            if changes != self._changes:
                return  # marked here while reading: the read may predate it
            for mark in stored:
                state = self._states.get(mark.name)
                if state is None:
                    continue
                state.paused_until_us = max(state.paused_until_us, mark.paused_until_us)
                if bool(mark.down_since_us) != bool(state.down_since_us):
                    state.down_since_us = mark.down_since_us
                    state.failures = 0 if not mark.down_since_us else self.threshold
                    state.next_probe = now + self.probe_seconds
                    metrics.provider_up(mark.name, not mark.down_since_us)
                    log.warning(
                        "provider %s is %s (stored by another server)",
                        mark.name,
                        "down" if mark.down_since_us else "up again",
                    )

    def expired(self) -> list[tuple[str, int]]:
        """(provider, down since) of the providers down longer than the outage
        limit, at most once a probe interval (what `tick` fails the jobs of)."""
        now = time.monotonic()
        if now - self._last_expiry < min(self.probe_seconds, 1.0):
            return []
        self._last_expiry = now
        limit_us = clock.now_us() - self.max_outage_us
        with self._lock:
            return [(n, s.down_since_us) for n, s in self._states.items() if 0 < s.down_since_us <= limit_us]

    def tick(self, record: Callable[[Doc], None], learn: bool = True) -> None:
        """Housekeeping: learn other replicas' marks (`learn`: some may have
        stored marks); fail the waiting jobs of providers down longer than the
        limit (each once; `record` tells of it)."""
        if learn:
            self.refresh(force=True)
        expired = dict(self.expired())
        if not expired:
            return
        for lane, oid, model in self.store.waiting():
            name = self.provider_of(model)
            if name not in expired:
                continue
            message = (
                f"{name} unreachable since {_hhmm(expired[name])} UTC, longer than"
                f" the outage limit ({self.max_outage_us / 3.6e9:g} h)"
            )
            after = self.store.fail_waiting(oid, lane, message)
            if after is not None:
                record(after)


def _hhmm(stamp_us: int) -> str:
    return datetime.fromtimestamp(stamp_us / 1e6, UTC).strftime("%H:%M")


def _hhmmss(stamp_us: int) -> str:
    return datetime.fromtimestamp(stamp_us / 1e6, UTC).strftime("%H:%M:%S")
