"""Places under the queued-jobs cap, held on the jobs themselves.

An open job (queued in any lane, or running) holds a numbered place of its
owner's: `place` = "<owner>#<n>", n below GENJOBS_MAX_QUEUED_PER_OWNER, under
a unique index. So at most `cap` jobs of an owner hold a place at once,
whatever the replicas do, and taking a place costs nothing: it is stored by
the job's own insert (a place taken meanwhile fails that insert, with the
index's duplicate key, and `PlaceTaken`). The write that makes a job final
removes its place in the same command (`state_update`): no other write gives
it back, and nothing a crash can interrupt leaves a place taken.

The index is sparse: jobs without a place (final ones, and those stored
before places existed) are not in it. (nx-27017 ignores `sparse`, but keeps
documents without the field apart too: SQLite's unique indexes allow any
number of NULLs.)
"""

from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock
from genjobs.server.model.states import final
from genjobs.server.storage.database import Doc

PLACE = "place"


class PlaceTaken(Exception):
    """Jobs not stored because another job took their place meanwhile (another
    replica's submit): they need other places. Those of a batch that were
    stored stay stored."""

    def __init__(self, docs: list[Doc]) -> None:
        super().__init__(f"{len(docs)} place(s) under the queued-jobs cap taken meanwhile")
        self.docs = docs


def place_key(owner: str, number: int) -> str:
    """The stored value of `owner`'s place `number`."""
    return f"{owner}#{number}"


def place_number(value: object) -> int | None:
    """The number of a stored place; None for a job without one."""
    if not isinstance(value, str) or "#" not in value:
        return None
    number = value.rsplit("#", 1)[1]
    return int(number) if number.isdigit() else None


def state_update(changes: Doc, bump: bool = True) -> Doc:
    """The update that writes `changes` to a job: `$set` them, count a change
    its watchers hear of (`bump`), and, when they make it final, give its
    place back in the same command.

    A counted change is stamped (`updated_us`, unless `changes` carry their
    own): other servers' owner streams find changes by that stamp."""
    update: Doc = {"$set": changes}
    if bump:
        update["$inc"] = {"seq": 1}
        if "updated_us" not in changes:
            update["$set"] = {**changes, "updated_us": clock.now_us()}
    if final(str(changes.get("status", ""))):
        update["$unset"] = {PLACE: ""}
    return update


def duplicate_index(error: DuplicateKeyError | Doc) -> str:
    """What names the unique index a duplicate key error (or a bulk write's
    error entry) is about: MongoDB's `keyPattern` fields, or the index named
    in the message (nx-27017: "UNIQUE constraint failed: index
    'idx_jobs_place'"; MongoDB: "... index: place_1 dup key: {...}", the
    key's value cut off). Never the document, which bulk errors carry."""
    details = error if isinstance(error, dict) else (error.details or {})
    pattern = details.get("keyPattern")
    if isinstance(pattern, dict):
        return " ".join(pattern)
    message = str(details.get("errmsg") or ("" if isinstance(error, dict) else error))
    return message.split(" dup key")[0]


def is_place_taken(error: DuplicateKeyError | Doc) -> bool:
    """Whether a duplicate key error (or a bulk write's error entry) is the place's index."""
    index = duplicate_index(error)
    return index.rstrip("'\" ").endswith(f"_{PLACE}") or f"{PLACE}_1" in index or index == PLACE
