"""Inserts from the event loop that share round trips (SubmitJob under load)."""

from __future__ import annotations

import asyncio
import contextvars

import pymongo
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from genjobs.server.storage.database import Doc, LoopClient
from genjobs.server.storage.outage import time_left


class LoopInsert:
    """Inserts into one collection from coroutines on the event loop, sharing round trips.

    The first caller to find no flush under way starts one: it sends
    everything pending as one unordered insert_many through pymongo's async
    client, again until nothing is pending, and hands each caller its own
    outcome. Callers that arrive during a round trip share the next one; on
    the event loop there is no thread hop per call, which is what lets
    SubmitJob keep up under load (nx-27017 charges about 0.3 ms per command
    on top of its cost per document).
    """

    def __init__(self, client: LoopClient, collection: str) -> None:
        self._client, self._name = client, collection
        # Looked up once (pymongo builds a new one on each lookup).
        self._collection: AsyncCollection[Doc] | None = None
        self._pending: list[tuple[Doc, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    async def insert(self, doc: Doc) -> None:
        """Insert `doc`; raises DuplicateKeyError (or the batch's error) as insert_one would."""
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((doc, outcome))
        if self._flusher is None or self._flusher.done():
            # A context of its own: the round trip serves many callers, so no
            # one caller's deadline (a pymongo.timeout of its RPC) may bound it.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_all(), context=contextvars.Context()
            )
        left = time_left()
        if left is None:
            await outcome
            return
        try:
            # Within the caller's RPC deadline, though the round trip is not
            # bounded by it: a caller must not wait for the batch ahead and then its own.
            await asyncio.wait_for(outcome, left)
        except TimeoutError:
            raise pymongo.errors.NetworkTimeout(
                "the database did not answer within the call's deadline"
            ) from None

    async def _flush_all(self) -> None:
        # Ends (done) in the same step as its last look at `_pending`, so a
        # caller never finds it running with nothing left to send.
        while self._pending:
            batch, self._pending = self._pending, []
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[Doc, asyncio.Future[None]]]) -> None:
        if self._collection is None:
            self._collection = self._client.collection(self._name)
        collection = self._collection
        failed: dict[int, BaseException] = {}
        try:
            await collection.insert_many([doc for doc, _ in batch], ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                kind = DuplicateKeyError if error.get("code") == 11000 else pymongo.errors.WriteError
                failed[error["index"]] = kind(error.get("errmsg", ""), error.get("code"), error)
        except Exception as exc:  # the whole round trip failed: every caller sees it
            failed = dict.fromkeys(range(len(batch)), exc)
        for index, (_, outcome) in enumerate(batch):
            if outcome.done():  # its caller went away
                continue
            if index in failed:
                outcome.set_exception(failed[index])
            else:
                outcome.set_result(None)
