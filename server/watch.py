"""Following a job or bulk job: the snapshot or replay first, then live events,
with no duplicates, ending after the final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.errors import sequence_out_of_range
from server.events import HEARTBEAT, SHUTDOWN, Event


class ShuttingDown(Exception):
    """The server is stopping: the stream ends with UNAVAILABLE so clients reconnect."""


@dataclass
class Heartbeat:
    """The stream was idle: a heartbeat carrying the last sequence sent."""

    sequence: int


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
