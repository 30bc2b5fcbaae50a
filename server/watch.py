"""Following a job or bulk job: the snapshot or replay first, then live events,
with no duplicates, ending after the final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from server.events import SHUTDOWN, Event


class ShuttingDown(Exception):
    """The server is stopping: the stream ends with UNAVAILABLE so clients reconnect."""


HEARTBEAT: Any = None  # yielded when nothing happened for a heartbeat interval


async def follow(
    queue: asyncio.Queue[Any], replay: list[Event], after: int, heartbeat_seconds: float
) -> AsyncIterator[Event | None]:
    """Yield `replay`, then the queue's events, each sequence once and in order.

    Yields HEARTBEAT (None) after `heartbeat_seconds` of silence; returns after
    a final event; raises ShuttingDown when the server stops.
    """
    last = after
    for event in replay:
        if event.seq > last:
            last = event.seq
            yield event
            if event.final:
                return
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), heartbeat_seconds)
        except TimeoutError:
            yield HEARTBEAT
            continue
        if item is SHUTDOWN:
            raise ShuttingDown()
        if item.seq <= last:
            continue  # already sent (replay, or delivered both locally and by the poller)
        last = item.seq
        yield item
        if item.final:
            return
