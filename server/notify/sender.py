"""The one delivery mechanism behind every channel.

The notifier runs on its own thread with its own event loop (never the
server's loop, never the dispatcher). It finds due deliveries (one indexed
query per channel), claims each with a conditional update under a fresh
token (so no two replicas send the same attempt), and runs the attempt as a
task. What one owner can hold is bounded: at most WORKERS attempts run at
once, at most PER_OWNER of them one owner's, at most PER_ENDPOINT of those
to one endpoint (a webhook's host and port, the SMTP server). A delivery is
claimed only when it can start at once, so no claim waits behind others.

Each attempt has a total deadline (connect, send and the whole answer), and
its claim is renewed while it runs, so it cannot lapse under it; its
outcome is written only under its own token (fencing), so an attempt whose
claim did lapse (a frozen server) cannot overwrite or double the outcome of
the attempt that took over. Stopping gives attempts under way a short grace,
then cancels them and gives their claims back, due at once, for another
server or the next start. No failure of any kind, one delivery's or the
database's, ends the notifier.

It looks for due deliveries when woken (a notification stored here, a slot
come free), when a retry it set falls due, and every POLL_SECONDS for what
other servers left (a claim lapsed, a server stopped): another server sends
what it stores itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from genjobs.server.model import clock
from genjobs.server.model.channels import FAILED, PENDING, REFUSED, Channel, Doc
from genjobs.server.model.loops import new_event_loop
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import metrics

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
WORKERS = 16  # attempts under way at once on one server
PER_OWNER = 4  # of which one owner's: no owner's endpoints can take them all
PER_ENDPOINT = 2  # of which to one of that owner's endpoints
MAX_BACKOFF_SECONDS = 600.0
# A claimed attempt not renewed within this time (its server died) is due again.
CLAIM_SECONDS = 120.0
STOP_SECONDS = 2.0  # how long a stopping notifier lets attempts under way finish
BATCH = 500  # due deliveries read at a time
LOOKS = 3  # reads a channel per pass, each leaving out the owners found with no room
IO_THREADS = 4  # database calls and name lookups: never on the notifier's loop
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: DELIVERED, PENDING (try again later), FAILED or REFUSED."""

    state: str
    detail: str = ""


class Sender(Protocol):
    """One channel's way of sending a notification."""

    channel: Channel
    max_attempts: int
    deadline_seconds: float  # the most one attempt may take, all of it

    def endpoint(self, doc: Doc) -> str:
        """The endpoint `doc` goes to (one owner's attempts to one endpoint are limited together)."""
        ...

    async def send(self, doc: Doc) -> Outcome:
        """Make one attempt, over within `deadline_seconds`."""
        ...

    async def aclose(self) -> None:
        """Close connections (on the notifier's loop, as it ends)."""
        ...


@dataclass(frozen=True)
class _Slot:
    owner: str
    endpoint: str


class Notifier:
    """Delivers pending notifications on every configured channel."""

    def __init__(
        self,
        store: Store,
        senders: list[Sender],
        backoff_seconds: float = 1.0,
        claim_seconds: float = CLAIM_SECONDS,
    ) -> None:
        self.store = store
        self.notifications = store.notifications
        self.senders = senders
        self.backoff_seconds = backoff_seconds
        self.claim_seconds = claim_seconds
        self._owners: collections.Counter[str] = collections.Counter()
        self._endpoints: collections.Counter[str] = collections.Counter()
        self._running: dict[asyncio.Task[None], _Slot] = {}
        self._stopping = threading.Event()
        self._grace = STOP_SECONDS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._retries: list[float] = []  # when the retries set here fall due (the loop's time), a heap
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="notify")
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)

    @property
    def channels(self) -> frozenset[str]:
        """The names of the channels this notifier sends."""
        return frozenset(sender.channel.name for sender in self.senders)

    def start(self) -> None:
        """Start delivering."""
        self._thread.start()

    def wake(self) -> None:
        """A notification is waiting (or a slot came free): look now. Any thread."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                loop.call_soon_threadsafe(wake.set)

    def stop(self, grace: float = STOP_SECONDS) -> None:
        """Stop delivering: attempts under way get `grace` seconds (at most
        STOP_SECONDS), then are cancelled and their claims given back; the
        next server sends them."""
        self._grace = min(grace, STOP_SECONDS)
        self._stopping.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(self._grace + 5)  # + giving claims back (bounded by the database timeout)
        self._io.shutdown(wait=False, cancel_futures=True)

    # ---- the notifier's loop ------------------------------------------------

    def _run(self) -> None:
        loop = new_event_loop()
        loop.set_default_executor(self._io)  # senders' to_thread calls too
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = asyncio.Event()
        self._loop = loop
        while not self._stopping.is_set():
            self._wake.clear()  # before looking: a wake while looking makes it look again
            try:
                await self._schedule()
            except Exception as exc:  # the database, or a bug: log it and go on
                if not self.store.outage.failed(exc, "notifications"):
                    log.exception("notifications: scheduling failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._until_next_look(loop.time())):
                    await self._wake.wait()
        await self._wind_down()

    def _until_next_look(self, now: float) -> float:
        """Seconds to the next look unless woken: POLL_SECONDS, or less to a retry set here."""
        while self._retries and self._retries[0] <= now:
            heapq.heappop(self._retries)  # due: the look just made, or the next, finds it
        return min(POLL_SECONDS, self._retries[0] - now) if self._retries else POLL_SECONDS

    async def _wind_down(self) -> None:
        pending = set(self._running)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self._grace)
        loop = asyncio.get_running_loop()
        until = loop.time() + 5  # giving claims back: bounded by the database timeout
        while pending and loop.time() < until:
            # Each gives its claim back as it ends. Again and again: a library
            # may swallow one cancellation (asyncio.wait_for's race in 3.11).
            for attempt in pending:
                attempt.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        for sender in self.senders:
            with contextlib.suppress(Exception):
                await sender.aclose()

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        """A blocking (database) call, on the notifier's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    async def _schedule(self) -> None:
        for sender in self.senders:
            # Owners with no room are left out of the next look, so that one
            # owner's backlog of due deliveries cannot hide everyone else's.
            full: set[str] = set()
            for _ in range(LOOKS):
                if self._stopping.is_set() or len(self._running) >= WORKERS:
                    return  # the rest waits for a slot (a finished attempt wakes the loop)
                skipped = len(full)
                due = await self._call(
                    self.notifications.due_deliveries,
                    sender.channel,
                    clock.now_us(),
                    BATCH,
                    sorted(full),
                )
                for doc in due:
                    if self._stopping.is_set() or len(self._running) >= WORKERS:
                        return
                    await self._start(sender, doc, full)
                if len(due) < BATCH or len(full) == skipped:
                    break  # all seen, or nobody more to leave out

    async def _start(self, sender: Sender, doc: Doc, full: set[str]) -> None:
        """Claim `doc`'s attempt and start it, if its owner and endpoint have room."""
        owner = str(doc.get("owner", ""))
        try:
            endpoint = f"{owner}\n{sender.endpoint(doc)}"
        except Exception:
            endpoint = f"{owner}\n?"
        if self._owners[owner] >= PER_OWNER:
            full.add(owner)
            return
        if self._endpoints[endpoint] >= PER_ENDPOINT:
            return  # it gets its turn when that endpoint has room
        token = secrets.token_hex(12)
        now_us = clock.now_us()
        until_us = now_us + int(self.claim_seconds * 1e6)
        claimed = await self._call(
            self.notifications.claim_delivery, sender.channel, doc["_id"], now_us, until_us, token
        )
        if claimed is None:
            return  # another replica took it
        self._owners[owner] += 1
        self._endpoints[endpoint] += 1
        task = asyncio.get_running_loop().create_task(self._attempt(sender, claimed, token))
        self._running[task] = _Slot(owner, endpoint)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        slot = self._running.pop(task)
        self._owners[slot.owner] -= 1
        self._endpoints[slot.endpoint] -= 1
        if self._wake is not None:
            self._wake.set()  # a slot came free

    async def _attempt(self, sender: Sender, doc: Doc, token: str) -> None:
        channel = sender.channel
        attempt = asyncio.current_task()
        assert attempt is not None
        renewer = asyncio.get_running_loop().create_task(self._renew(channel, doc["_id"], token, attempt))
        try:
            try:
                # The sender keeps its own deadline; this one holds a sender that does not.
                async with asyncio.timeout(sender.deadline_seconds + 1):
                    outcome = await sender.send(doc)
            except TimeoutError:
                outcome = Outcome(PENDING, f"no answer within {sender.deadline_seconds:g} s")
            except Exception as exc:  # a sender's bug must not lose the delivery
                log.exception("notification %s: %s attempt failed", doc["_id"], channel.name)
                outcome = Outcome(PENDING, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:  # stopping (or the claim was lost): give the claim back
            renewer.cancel()
            with contextlib.suppress(Exception):
                await self._call(
                    self.notifications.release_delivery, channel, doc["_id"], token, clock.now_us()
                )
            raise
        finally:
            renewer.cancel()
        try:
            retry = await self._call(self._record, sender, doc, token, outcome)
            if retry is not None:
                heapq.heappush(self._retries, asyncio.get_running_loop().time() + retry)
        except Exception as exc:
            # Unrecorded, the claim lapses and the attempt is made again.
            if not self.store.outage.failed(exc, f"notification {doc['_id']}"):
                log.exception("notification %s: could not record its %s delivery", doc["_id"], channel.name)

    async def _renew(self, channel: Channel, oid: Any, token: str, attempt: asyncio.Task[None]) -> None:
        """Hold the claim while the attempt runs; cancel the attempt if another took it."""
        while True:
            await asyncio.sleep(self.claim_seconds / 3)
            until_us = clock.now_us() + int(self.claim_seconds * 1e6)
            try:
                held = await self._call(self.notifications.renew_delivery, channel, oid, token, until_us)
            except Exception as exc:  # the database is away: a lapsed claim's outcome is fenced out
                if not self.store.outage.failed(exc, f"notification {oid}"):
                    log.warning("notification %s: could not renew its %s claim: %s", oid, channel.name, exc)
                continue
            if not held:
                log.warning("notification %s: its %s claim was taken over", oid, channel.name)
                attempt.cancel()
                return

    def _record(self, sender: Sender, doc: Doc, token: str, outcome: Outcome) -> float | None:
        """Write the attempt's outcome; in how many seconds it is tried again (None: never)."""
        channel = sender.channel
        attempts = int(doc[channel.attempts])
        state, detail = outcome.state, outcome.detail[:500]
        if state == PENDING and attempts >= sender.max_attempts:
            state, detail = FAILED, f"gave up after {attempts} attempts: {detail}"
        changes: Doc = {channel.state: state, channel.error: detail}
        if channel.name == "webhook":
            metrics.webhook_delivery("retry" if state == PENDING else state.lower())
        delay = None
        if state == PENDING:
            delay = min(self.backoff_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
            changes[channel.next_us] = clock.now_us() + int(delay * 1e6)
        elif state in (FAILED, REFUSED):
            log.warning("notification %s: %s %s: %s", doc["_id"], channel.name, state, detail)
        self.notifications.record_delivery(channel, doc["_id"], attempts, changes, token)
        return delay
