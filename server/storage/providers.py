"""The `providers` collection: one small document a provider, written once a
state change (down, up, paused), read by each dispatcher's housekeeping so
that every replica learns an outage or a rate limit within a second.

Every write is one conditional update (or an insert that loses to a
concurrent one on `_id`): two replicas noticing the same outage store it once.
"""

from __future__ import annotations

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock
from genjobs.server.model.providers import ProviderState
from genjobs.server.model.states import Status
from genjobs.server.storage.database import Database, Doc
from genjobs.server.storage.jobs import job_error
from genjobs.server.storage.places import state_update
from genjobs.server.storage.queue import BACKOFF, NONE, READY


class ProviderStore:
    """Providers' down/paused marks, and the waiting jobs an outage ends."""

    def __init__(self, database: Database) -> None:
        self.providers: Collection[Doc] = database.db["providers"]
        self.jobs = database.jobs

    def states(self) -> list[ProviderState]:
        """Every stored provider state (a handful of documents, no index needed)."""
        return [
            ProviderState(str(d["_id"]), int(d.get("down_since_us", 0)), int(d.get("paused_until_us", 0)))
            for d in self.providers.find({})
        ]

    def mark_down(self, name: str, since_us: int) -> bool:
        """Store `name` as down since `since_us`; False: it was down already."""
        done = self.providers.update_one(
            {"_id": name, "down_since_us": 0}, {"$set": {"down_since_us": since_us}}
        )
        return done.modified_count == 1 or self._insert(name, down_since_us=since_us)

    def mark_up(self, name: str) -> bool:
        """Store `name` as up; False: it was not down."""
        done = self.providers.update_one(
            {"_id": name, "down_since_us": {"$gt": 0}}, {"$set": {"down_since_us": 0}}
        )
        return done.modified_count == 1

    def pause(self, name: str, until_us: int) -> None:
        """No request to `name` before `until_us` (a later pause stored already stands)."""
        done = self.providers.update_one(
            {"_id": name, "paused_until_us": {"$lt": until_us}}, {"$set": {"paused_until_us": until_us}}
        )
        if done.matched_count == 0:
            self._insert(name, paused_until_us=until_us)

    def _insert(self, name: str, down_since_us: int = 0, paused_until_us: int = 0) -> bool:
        try:
            self.providers.insert_one(
                {"_id": name, "down_since_us": down_since_us, "paused_until_us": paused_until_us}
            )
        except DuplicateKeyError:
            return False  # stored meanwhile (by another replica), or stored with another state
        return True

    def waiting(self) -> list[tuple[str, ObjectId, str]]:
        """(lane, id, model) of the jobs waiting to run (ready or backing off):
        one index search of `queue` a lane; the model as the job names it ("" = default)."""
        return [
            (lane, row["_id"], str(((row.get("params") or {}).get("extra") or {}).get("model", "")))
            for lane in (READY, BACKOFF)
            for row in self.jobs.find({"queue": lane}, {"_id": 1, "params": 1})
        ]

    def fail_waiting(self, oid: ObjectId, lane: str, message: str) -> Doc | None:
        """Fail a waiting job with GENERATOR_UNREACHABLE, if it still waits in `lane`
        (once: a second call finds it ended); its document after, or None."""
        stamp = clock.now_us()
        error = job_error("GENERATOR_UNREACHABLE", "transient", message, False, 0)
        return self.jobs.find_one_and_update(
            {"_id": oid, "queue": lane, "status": str(Status.QUEUED)},
            state_update(
                {
                    "status": str(Status.FAILED),
                    "queue": NONE,
                    "ended_us": stamp,
                    "updated_us": stamp,
                    "error": error,
                }
            ),
            return_document=ReturnDocument.AFTER,
        )
