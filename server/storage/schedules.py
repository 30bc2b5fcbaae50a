"""MongoDB access for schedules and templates (collections `schedules`, `templates`).

One of the aggregate stores (see `store`): these two aggregates share
nothing with jobs but the connection, the order keys and the page tokens,
which this module borrows from the `Database`.

- A template's `_id` is its (owner, name) key: create is one insert (a taken
  name is the unique `_id`), and get, update and delete are one command on
  `_id` each (nx-27017 uses an index for find_one_and_update on `_id` only).
- A schedule's `next_run_us` is its next tick while ACTIVE and 0 while
  PAUSED, so the due schedules are one range search of the single-field
  index on it (`{next_run_us: {$gte: 1, $lte: now}}`), never a scan; each
  tick advances it with one conditional update on its expected value.
- How many schedules and templates an owner has is a counter document per
  owner and kind in `owner_counts` (`_id` "schedules:alice"): a create first
  takes a place with one conditional `$inc` guarded by `n < cap` (so two
  replicas' concurrent creates cannot both take the last place), and gives it
  back when nothing was stored; a delete gives it back. A counter starts from
  the owner's stored schedules (templates) through the owner index, so owners
  from before the caps are counted. A server that dies between taking a place
  and storing leaves the count one high, never low; a create refused at the
  cap counts the owner's again once the counter has not moved for
  RECOUNT_AFTER_US (no create or delete can be in flight then: a delete
  stamps the counter before it deletes), so such places come back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json

import pymongo
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from genjobs.server.model import clock
from genjobs.server.model.errors import already_exists, not_found, quota_exceeded
from genjobs.server.model.records import Schedule, Template
from genjobs.server.storage.database import Database, Doc
from genjobs.server.storage.paging import MAX_PAGE_BYTES, keyset_page, parse_id, request_key

ACTIVE, PAUSED = "ACTIVE", "PAUSED"
SCHEDULES, TEMPLATES = "schedules", "templates"  # what owner_counts counts
# A create takes its place and stores within the database's deadline (seconds):
# a counter unchanged for longer has no create in flight.
RECOUNT_AFTER_US = 60_000_000


def counter_key(kind: str, owner: str) -> str:
    """The `_id` of `owner`'s counter of `kind` in `owner_counts` ("schedules:alice")."""
    return f"{kind}:{owner}"


def template_key(owner: str, name: str) -> str:
    """A template's `_id`: its owner and name, unique together."""
    return json.dumps([owner, name], separators=(",", ":"))


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class ScheduleStore:
    """The schedules and templates collections, and every query on them."""

    def __init__(self, database: Database) -> None:
        self.schedules: Collection[Doc] = database.db["schedules"]
        self.templates: Collection[Doc] = database.db["templates"]
        self.counts: Collection[Doc] = database.db["owner_counts"]
        self.page_tokens = database.page_tokens
        self.order_keys = database.order_keys
        self.outage = database.outage  # what the schedule ticks log of a database outage

    def ensure_indexes(self) -> None:
        """The index behind every query here (single-field ones make equalities
        index searches on nx-27017, MONGO.md item 15)."""
        self.schedules.create_index([("ck", 1)], unique=True)
        self.schedules.create_index([("request_key", 1)], unique=True)  # idempotent create
        self.schedules.create_index([("owner", 1)])
        self.schedules.create_index([("owner", 1), ("ck", 1)])  # ListSchedules, newest first
        self.schedules.create_index([("next_run_us", 1)])  # due ticks; 0 while paused
        self.templates.create_index([("owner", 1)])
        self.templates.create_index([("owner", 1), ("name", 1)])  # ListTemplates by name

    # ---- per-owner caps -----------------------------------------------------

    def take_place(self, kind: str, owner: str, cap: int, setting: str) -> None:
        """Count one more of `owner`'s `kind` ("schedules", "templates"), or
        RESOURCE_EXHAUSTED naming `setting` when they have `cap` already."""
        key = counter_key(kind, owner)
        refused = True
        for _ in range(3):
            taken = {"$inc": {"n": 1}, "$set": {"changed_us": clock.now_us()}}
            if self.counts.find_one_and_update({"_id": key, "n": {"$lt": cap}}, taken):
                refused = False
                break
            counter = self.counts.find_one({"_id": key}, {"n": 1, "changed_us": 1})
            if counter is not None:
                if int(counter["n"]) >= cap and not self._recounted(kind, owner, counter):
                    break  # full
                continue  # made by a concurrent first create after our write, or recounted: try again
            # The owner's first counted create (or the first since counting began):
            # it starts from what they have, read through the owner index.
            started = {"_id": key, "n": self._have(kind, owner), "changed_us": clock.now_us()}
            with contextlib.suppress(DuplicateKeyError):  # another create started it first
                self.counts.insert_one(started)
        if refused:
            what = kind[:-1]
            raise quota_exceeded(
                f"TOO_MANY_{kind.upper()}",
                f"owner:{owner}",
                f"{owner} has {cap} {kind}, the most one owner may have ({setting}={cap}): "
                f"delete one to make another",
                {"owner": owner, "limit": str(cap), "setting": setting, "kind": what},
            )

    def _have(self, kind: str, owner: str) -> int:
        """How many `kind` `owner` has stored, read through the owner index."""
        return sum(1 for _ in self.collection(kind).find({"owner": owner}, {"_id": 1}))

    def _recounted(self, kind: str, owner: str, counter: Doc) -> bool:
        """A full counter that has not moved for RECOUNT_AFTER_US set to what
        the owner has, when that is less: whether it was. One conditional
        update on the counter as read (a create or delete meanwhile wins); a
        count found right is stamped too, so an owner at the cap retrying is
        counted once a RECOUNT_AFTER_US, not on every refusal."""
        stamp = counter.get("changed_us")
        now_us = clock.now_us()
        if stamp is not None and int(stamp) > now_us - RECOUNT_AFTER_US:
            return False
        have = self._have(kind, owner)
        as_read = {"_id": counter["_id"], "n": counter["n"]}
        as_read["changed_us"] = stamp if stamp is not None else {"$exists": False}
        freed = have < int(counter["n"])
        fix = {"n": have, "changed_us": now_us} if freed else {"changed_us": now_us}
        return self.counts.update_one(as_read, {"$set": fix}).modified_count == 1 and freed

    def collection(self, kind: str) -> Collection[Doc]:
        """The collection `owner_counts` counts for `kind`."""
        return self.schedules if kind == SCHEDULES else self.templates

    def _deleting(self, kind: str, owner: str) -> None:
        """Stamp the counter before a delete: no recount for RECOUNT_AFTER_US,
        so none counts the deleted one gone before `give_place` gives it back."""
        self.counts.update_one({"_id": counter_key(kind, owner)}, {"$set": {"changed_us": clock.now_us()}})

    def give_place(self, kind: str, owner: str) -> None:
        """Count one fewer of `owner`'s `kind` (never below 0)."""
        self.counts.update_one(
            {"_id": counter_key(kind, owner), "n": {"$gt": 0}},
            {"$inc": {"n": -1}, "$set": {"changed_us": clock.now_us()}},
        )

    # ---- templates ----------------------------------------------------------

    def insert_template(self, template: Template) -> None:
        """Store a new template; ALREADY_EXISTS when its owner has one of that name."""
        try:
            self.templates.insert_one(_template_doc(template))
        except DuplicateKeyError:
            raise already_exists(
                "TEMPLATE_EXISTS",
                f"you have a template named {template.name!r}; update it or choose another name",
                metadata={"name": template.name},
            ) from None

    def get_template(self, owner: str, name: str) -> Template:
        """One of `owner`'s templates; NOT_FOUND when there is none of that name."""
        found = self.templates.find_one({"_id": template_key(owner, name)})
        if found is None:
            raise not_found("template", name)
        return _template(found)

    def template_kind(self, owner: str, name: str) -> str | None:
        """The kind of request `owner`'s template `name` holds; None when there is none."""
        found = self.templates.find_one({"_id": template_key(owner, name)}, {"kind": 1})
        return None if found is None else str(found["kind"])

    def replace_template(self, owner: str, name: str, kind: str, request: bytes) -> Template:
        """Replace a template's request (of `kind`); NOT_FOUND when there is none of that name."""
        found = self.templates.find_one_and_update(
            {"_id": template_key(owner, name)},
            {"$set": {"kind": kind, "request": request, "updated_us": clock.now_us()}},
            return_document=ReturnDocument.AFTER,
        )
        if found is None:
            raise not_found("template", name)
        return _template(found)

    def delete_template(self, owner: str, name: str) -> None:
        """Remove a template; NOT_FOUND when there is none of that name."""
        self._deleting(TEMPLATES, owner)
        if self.templates.delete_one({"_id": template_key(owner, name)}).deleted_count == 0:
            raise not_found("template", name)
        self.give_place(TEMPLATES, owner)

    def list_templates(self, owner: str, size: int, token: str) -> tuple[list[Template], str]:
        """A page of `owner`'s templates in name order (keyset on name) and the next token."""
        fingerprint = _fingerprint(owner, "templates")
        query: Doc = {"owner": owner}
        if token:
            query["name"] = {"$gt": self.page_tokens.decode_after(token, fingerprint)}
        docs: list[Doc] = []
        weight, more = 0, False
        for found in self.templates.find(query).sort("name", pymongo.ASCENDING).limit(size + 1):
            # A page stops short of gRPC's 4 MB reply, as every listing's does (a
            # bulk template may hold megabytes of source text).
            weight += len(found["request"])
            if len(docs) == size or (docs and weight > MAX_PAGE_BYTES):
                more = True
                break
            docs.append(found)
        after = self.page_tokens.encode_after(docs[-1]["name"], fingerprint) if more else ""
        return [_template(d) for d in docs], after

    # ---- schedules ----------------------------------------------------------

    def insert_schedule(self, schedule: Schedule) -> Schedule:
        """Store a new schedule; a repeated request key returns the earlier one."""
        try:
            self.schedules.insert_one(_schedule_doc(schedule))
            return schedule
        except DuplicateKeyError as exc:
            if "request_key" not in str(exc.details or exc):
                raise
            earlier = self.schedule_by_key(schedule.request_key)
            if earlier is None:
                raise
            return earlier

    def schedule_by_key(self, key: str) -> Schedule | None:
        """The schedule a create with this request key stored, if any."""
        found = self.schedules.find_one({"request_key": key})
        return None if found is None else _schedule(found)

    def get_schedule(self, owner: str, schedule_id: str) -> Schedule:
        """One of `owner`'s schedules; another's is NOT_FOUND."""
        found = self.schedules.find_one({"_id": parse_id(schedule_id, "schedule"), "owner": owner})
        if found is None:
            raise not_found("schedule", schedule_id)
        return _schedule(found)

    def list_schedules(
        self, owner: str, states: list[str], size: int, token: str
    ) -> tuple[list[Schedule], str]:
        """A page of `owner`'s schedules, newest first (keyset on `ck`), and the next token."""
        query: Doc = {"owner": owner}
        if states:
            query["state"] = states[0] if len(states) == 1 else {"$in": states}
        fingerprint = _fingerprint(owner, sorted(states))
        page = keyset_page(self.schedules, query, fingerprint, size, token, self.page_tokens, count=False)
        return [_schedule(d) for d in page.docs], page.next_token

    def set_state(
        self, owner: str, schedule_id: str, from_state: str, state: str, next_run_us: int
    ) -> Schedule:
        """Move a schedule in `from_state` to `state`, next ticking at
        `next_run_us`; the schedule as it is after (unchanged when it was not in
        `from_state`), NOT_FOUND if none."""
        oid = parse_id(schedule_id, "schedule")
        after = self.schedules.find_one_and_update(
            {"_id": oid, "owner": owner, "state": from_state},
            {"$set": {"state": state, "next_run_us": next_run_us, "updated_us": clock.now_us()}},
            return_document=ReturnDocument.AFTER,
        )
        return _schedule(after) if after is not None else self.get_schedule(owner, schedule_id)

    def delete_schedule(self, owner: str, schedule_id: str) -> None:
        """Remove a schedule; NOT_FOUND if `owner` has none of that id."""
        oid = parse_id(schedule_id, "schedule")
        self._deleting(SCHEDULES, owner)
        if self.schedules.delete_one({"_id": oid, "owner": owner}).deleted_count == 0:
            raise not_found("schedule", schedule_id)
        self.give_place(SCHEDULES, owner)

    def due_schedules(self, now_us: int, scan: int, limit: int) -> list[Schedule]:
        """Up to `limit` active schedules whose next tick is at or before
        `now_us`, shared between owners (`fair_order`) among the `scan` longest
        due: an index range search of small documents, then the chosen ones whole
        by `_id` (a bulk schedule may hold megabytes of items)."""
        heads = list(
            self.schedules.find({"next_run_us": {"$gte": 1, "$lte": now_us}}, {"owner": 1, "next_run_us": 1})
            .sort("next_run_us", pymongo.ASCENDING)
            .limit(scan)
        )
        picked = fair_order(heads, limit)
        if not picked:
            return []
        whole = {d["_id"]: d for d in self.schedules.find({"_id": {"$in": [d["_id"] for d in picked]}})}
        return [_schedule(whole[d["_id"]]) for d in picked if d["_id"] in whole]

    def next_tick_us(self) -> int | None:
        """When the earliest active schedule ticks next (None: none is active):
        one search of the `next_run_us` index (a paused schedule's is 0)."""
        doc = self.schedules.find_one(
            {"next_run_us": {"$gte": 1}}, {"next_run_us": 1}, sort=[("next_run_us", pymongo.ASCENDING)]
        )
        return None if doc is None else int(doc["next_run_us"])

    def advance(self, schedule_id: str, expected_next_us: int, changes: Doc, ran: bool) -> bool:
        """Move a schedule past a tick, if no one has since (pause, resume,
        another replica's tick): one conditional update on its expected next tick.
        `changes` are the tick's fields to set (an update's $set: a document on purpose)."""
        oid = ObjectId(schedule_id)
        update: Doc = {"$set": {**changes, "updated_us": clock.now_us()}}
        if ran:
            update["$inc"] = {"run_count": 1}
        result = self.schedules.update_one({"_id": oid, "next_run_us": expected_next_us}, update)
        return result.modified_count == 1


def fair_order(due: list[Doc], limit: int) -> list[Doc]:
    """At most `limit` of `due` (longest due first), round robin between owners:
    each owner's longest due, then each owner's second, and so on. So one owner's
    hundreds of due ticks cannot keep another's waiting for the next pass."""
    by_owner: dict[str, list[Doc]] = {}
    for doc in due:  # owners in the order of their longest due tick
        by_owner.setdefault(doc["owner"], []).append(doc)
    picked: list[Doc] = []
    depth = 0
    while len(picked) < limit and any(len(docs) > depth for docs in by_owner.values()):
        for docs in by_owner.values():
            if len(docs) > depth and len(picked) < limit:
                picked.append(docs[depth])
        depth += 1
    return picked


# Stored under the record's own names, but for its id (`_id`) and creation time (`ck`).
_SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(Schedule) if f.name not in ("id", "created_us"))


def _schedule(doc: Doc) -> Schedule:
    """A stored schedule as a Schedule (a field an older version did not store reads as its default)."""
    found = {name: doc[name] for name in _SCHEDULE_FIELDS if doc.get(name) is not None}
    if "request" in found:
        found["request"] = bytes(found["request"])
    return Schedule(id=str(doc["_id"]), created_us=int(doc.get("ck") or 0), **found)


def _schedule_doc(schedule: Schedule) -> Doc:
    """A Schedule as stored."""
    return {
        "_id": ObjectId(schedule.id),
        **{name: getattr(schedule, name) for name in _SCHEDULE_FIELDS},
        "ck": schedule.created_us,
    }


def _template(doc: Doc) -> Template:
    """A stored template as a Template."""
    return Template(
        owner=doc["owner"],
        name=doc["name"],
        kind=doc["kind"],
        request=bytes(doc["request"]),
        created_us=int(doc.get("ck") or 0),
        updated_us=int(doc.get("updated_us") or 0),
    )


def _template_doc(template: Template) -> Doc:
    """A Template as stored (keyed by owner and name)."""
    return {
        "_id": template_key(template.owner, template.name),
        "owner": template.owner,
        "name": template.name,
        "kind": template.kind,
        "request": template.request,
        "ck": template.created_us,
        "updated_us": template.updated_us,
    }


def tick_key(owner: str, schedule_id: str, tick_us: int) -> str:
    """The request key of what a schedule's tick creates: a tick repeated (after a
    crash, by another replica) finds the job or bulk job it made the first time."""
    return request_key(owner, "schedule", schedule_id, tick_us)
