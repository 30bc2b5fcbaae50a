"""How many mails one owner may send an hour (GENJOBS_MAIL_PER_OWNER_PER_HOUR).

The count lives in MongoDB, so every replica keeps to one limit: a document
per owner and clock hour (`mail_quota`, `_id` "<hour>:<owner>"), and each
mail is one conditional update of it, `$inc` guarded by `count < limit`
(an upsert the first time in the hour). Past the limit the filter matches
nothing and the upsert meets the existing `_id`: DuplicateKeyError, so the
mail is not sent. Hours gone by are deleted by an indexed `delete_many`.
"""

from __future__ import annotations

import threading
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock

HOUR_US = 3_600_000_000


class MailQuota:
    """Counts each owner's mails in the current hour, shared by every replica."""

    def __init__(self, collection: Collection[dict[str, Any]], per_hour: int) -> None:
        self.collection = collection
        self.per_hour = per_hour
        self._indexed = False
        self._purged_hour = -1
        self._lock = threading.Lock()

    def take(self, owner: str, now_us: int | None = None) -> bool:
        """Count one mail of `owner`'s; False (nothing counted) past the limit."""
        hour = (clock.now_us() if now_us is None else now_us) // HOUR_US
        self._tidy(hour)
        guarded = {"_id": f"{hour}:{owner}", "count": {"$lt": self.per_hour}}
        counted = {"$inc": {"count": 1}, "$set": {"hour": hour}}
        try:
            self.collection.update_one(guarded, counted, upsert=True)
            return True
        except DuplicateKeyError:
            # The hour's document exists: at the limit, or another replica
            # inserted it a moment ago (then this one counts under the guard).
            return self.collection.update_one(guarded, counted).modified_count == 1

    def _tidy(self, hour: int) -> None:
        """Once per hour and process: the index, and the counts of hours gone."""
        with self._lock:
            if self._purged_hour == hour:
                return
            self._purged_hour = hour
        if not self._indexed:
            self.collection.create_index([("hour", 1)])
            self._indexed = True
        self.collection.delete_many({"hour": {"$lt": hour - 1}})
