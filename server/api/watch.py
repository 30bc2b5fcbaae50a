"""Following a job or bulk job: the snapshot or replay first, then live events,
with no duplicates, ending after the final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from genjobs.server.model.errors import quota_exceeded, sequence_out_of_range
from genjobs.server.services.events import HEARTBEAT, SHUTDOWN, Event


class ShuttingDown(Exception):
    """The server is stopping: the stream ends with UNAVAILABLE so clients reconnect."""


@dataclass
class Heartbeat:
    """The stream was idle: a heartbeat carrying the last sequence sent."""

    sequence: int


class StreamCap:
    """How many watch streams (WatchJob, WatchBulkJob, and their server-sent
    events on the HTTP face, which call the same handlers) each owner has open
    on this server process, and the most one may (GENJOBS_MAX_STREAMS_PER_OWNER).

    Per process, not per deployment: a stream holds this process's memory and
    task, and a count shared in the database would outlive a process that died
    with streams open. With N replicas an owner may hold N times the cap.
    Counted on the event loop, so the check and the count are one step."""

    def __init__(self, per_owner: int) -> None:
        self.per_owner = per_owner
        self.open: dict[str, int] = {}

    @contextmanager
    def hold(self, owner: str) -> Iterator[None]:
        """One stream of `owner`'s for the block, or RESOURCE_EXHAUSTED past the cap."""
        if self.open.get(owner, 0) >= self.per_owner:
            raise quota_exceeded(
                "TOO_MANY_STREAMS",
                f"owner:{owner}",
                f"{owner} has {self.per_owner} watch streams open on this server, the most one owner "
                f"may (GENJOBS_MAX_STREAMS_PER_OWNER={self.per_owner}): close one first",
                {"owner": owner, "limit": str(self.per_owner), "setting": "GENJOBS_MAX_STREAMS_PER_OWNER"},
            )
        self.open[owner] = self.open.get(owner, 0) + 1
        try:
            yield
        finally:
            left = self.open[owner] - 1
            if left:
                self.open[owner] = left
            else:
                del self.open[owner]  # no entry kept per owner who once watched


def check_resume(kind: str, ident: str, after: int, last: int) -> None:
    """Refuse (OUT_OF_RANGE) a resumption after a sequence beyond the newest, `last`."""
    if after > last:
        raise sequence_out_of_range(kind, ident, after, last)


async def follow(
    queue: asyncio.Queue[Any], replay: list[Event], after: int
) -> AsyncIterator[Event | Heartbeat]:
    """Yield `replay`, then the queue's events, each sequence once and in order.

    Yields a Heartbeat when the hub asks for one (the stream was idle);
    returns after a final event; raises ShuttingDown when the server stops.
    """
    last = after
    for event in replay:
        if event.seq > last:
            last = event.seq
            yield event
            if event.final:
                return
    while True:
        item = await queue.get()
        if item is HEARTBEAT:
            yield Heartbeat(last)
            continue
        if item is SHUTDOWN:
            raise ShuttingDown()
        if item.seq <= last:
            continue  # already sent (replay, or delivered both locally and by the poller)
        last = item.seq
        yield item
        if item.final:
            return


async def follow_all(queue: asyncio.Queue[Any]) -> AsyncIterator[Event | Heartbeat]:
    """An owner's stream (WatchJobs): a heartbeat at once (so the stream's
    headers go out before any change), then every event as it comes and a
    heartbeat when idle; raises ShuttingDown when the server stops. No replay
    and no ordering across jobs: each event carries its job whole."""
    yield Heartbeat(0)
    while True:
        item = await queue.get()
        if item is SHUTDOWN:
            raise ShuttingDown()
        yield Heartbeat(0) if item is HEARTBEAT else item
