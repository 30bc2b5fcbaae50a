"""The one delivery mechanism behind every channel.

A scheduler thread finds due deliveries (one indexed query per channel),
claims each with a conditional update (so no two replicas send the same
attempt), and hands it to a small pool of workers. Each endpoint (a webhook
host, the SMTP server) has at most PER_ENDPOINT attempts in flight, and each
attempt has a short timeout: a slow or failing endpoint holds up only its
own deliveries, and a failed delivery backs off on its own. No failure of
any kind, one delivery's or the database's, ends the scheduler.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from server import clock, observability
from server.notify.channels import FAILED, PENDING, REFUSED, Channel, Doc
from server.store import Store

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
PER_ENDPOINT = 2
WORKERS = 8
MAX_BACKOFF_SECONDS = 600.0
# A claimed attempt not recorded within this time (its server died) is due again.
CLAIM_SECONDS = 120.0


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: DELIVERED, PENDING (try again later), FAILED or REFUSED."""

    state: str
    detail: str = ""


class Sender(Protocol):
    """One channel's way of sending a notification."""

    channel: Channel
    max_attempts: int

    def endpoint(self, doc: Doc) -> str:
        """The endpoint `doc` goes to (attempts to one endpoint are limited together)."""
        ...

    def send(self, doc: Doc) -> Outcome:
        """Make one attempt (blocking, bounded by a timeout)."""
        ...


class Notifier:
    """Delivers pending notifications on every configured channel."""

    def __init__(self, store: Store, senders: list[Sender], backoff_seconds: float = 1.0) -> None:
        self.store = store
        self.senders = senders
        self.backoff_seconds = backoff_seconds
        self._busy: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="notify")
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)

    def start(self) -> None:
        """Start delivering."""
        self._thread.start()

    def wake(self) -> None:
        """A notification is waiting: look now."""
        self._wake.set()

    def stop(self) -> None:
        """Stop delivering; attempts under way end within their timeout, and
        what is left is sent by the next server to run."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._schedule()
            except Exception as exc:  # the database, or a bug: log it and go on
                if not self.store.outage.failed(exc, "notifications"):
                    log.exception("notifications: scheduling failed")
            self._wake.wait(min(POLL_SECONDS, self.backoff_seconds))
            self._wake.clear()

    def _schedule(self) -> None:
        for sender in self.senders:
            channel = sender.channel
            now_us = clock.now_us()
            for doc in self.store.due_deliveries(channel, now_us):
                if self._stopping.is_set():
                    return
                try:
                    endpoint = sender.endpoint(doc)
                except Exception:
                    endpoint = "?"
                with self._lock:
                    if self._busy[endpoint] >= PER_ENDPOINT:
                        continue  # it gets its turn when that endpoint has room
                claimed = self.store.claim_delivery(
                    channel, doc["_id"], now_us, now_us + int(CLAIM_SECONDS * 1e6)
                )
                if claimed is None:
                    continue  # another replica took it
                with self._lock:
                    self._busy[endpoint] += 1
                self._pool.submit(self._attempt, sender, claimed, endpoint)

    def _attempt(self, sender: Sender, doc: Doc, endpoint: str) -> None:
        try:
            outcome = sender.send(doc)
        except Exception as exc:  # a sender's bug must not lose the delivery
            log.exception("notification %s: %s attempt failed", doc["_id"], sender.channel.name)
            outcome = Outcome(PENDING, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._busy[endpoint] -= 1
            self._wake.set()
        try:
            self._record(sender, doc, outcome)
        except Exception as exc:
            # Unrecorded, the claim lapses and the attempt is made again.
            if self.store.outage.failed(exc, f"notification {doc['_id']}"):
                return
            log.exception(
                "notification %s: could not record its %s delivery", doc["_id"], sender.channel.name
            )

    def _record(self, sender: Sender, doc: Doc, outcome: Outcome) -> None:
        channel = sender.channel
        attempts = int(doc[channel.attempts])
        state, detail = outcome.state, outcome.detail[:500]
        if state == PENDING and attempts >= sender.max_attempts:
            state, detail = FAILED, f"gave up after {attempts} attempts: {detail}"
        changes: Doc = {channel.state: state, channel.error: detail}
        if channel.name == "webhook":
            observability.webhook_delivery("retry" if state == PENDING else state.lower())
        if state == PENDING:
            delay = min(self.backoff_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
            changes[channel.next_us] = clock.now_us() + int(delay * 1e6)
        elif state in (FAILED, REFUSED):
            log.warning("notification %s: %s %s: %s", doc["_id"], channel.name, state, detail)
        self.store.record_delivery(channel, doc["_id"], attempts, changes)
