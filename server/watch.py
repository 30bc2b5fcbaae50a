"""Following a job or bulk job: the snapshot or replay first, then live events,
with no duplicates, ending after the final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from server.events import HEARTBEAT, SHUTDOWN, Event


class ShuttingDown(Exception):
    """The server is stopping: the stream ends with UNAVAILABLE so clients reconnect."""


async def follow(queue: asyncio.Queue[Any], replay: list[Event], after: int) -> AsyncIterator[Event | None]:
    """Yield `replay`, then the queue's events, each sequence once and in order.

    Yields None when the hub asks for a heartbeat (the stream was idle);
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
            yield None
            continue
        if item is SHUTDOWN:
            raise ShuttingDown()
        if item.seq <= last:
            continue  # already sent (replay, or delivered both locally and by the poller)
        last = item.seq
        yield item
        if item.final:
            return
