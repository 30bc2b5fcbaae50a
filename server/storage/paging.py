"""Listings a page at a time, and the keys that make a stored request idempotent.

A page is a keyset page on the integer order key `ck`, newest first, carried
in a signed page token (`pagetoken`); `JobFilter` is the filters of ListJobs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import bson
import pymongo
from bson import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection

from genjobs.server.model.errors import invalid
from genjobs.server.model.ids import check_id
from genjobs.server.storage.database import Doc
from genjobs.server.storage.pagetoken import PageTokens

# A listing's total_size counts at most this many (it reads what it counts):
# beyond it, the total reads "this many or more", and the first page of a big
# history costs what it costs for a small one.
TOTAL_SIZE_CAP = 1000

# A page's documents stop at this size: replies stay under gRPC's 4 MB default.
MAX_PAGE_BYTES = 3 * 1024 * 1024


@dataclass
class JobFilter:
    """The filters of ListJobs (and of RunBulkOperation and GetJobStats)."""

    statuses: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    # None: no bound (0 is a time like any other: 1970-01-01).
    created_after_us: int | None = None
    created_before_us: int | None = None
    query: str = ""
    bulk_job_id: str = ""
    project: str = ""
    schedule_id: str = ""
    priorities: list[str] = field(default_factory=list)

    def fingerprint(self, owner: str | None) -> str:
        """A short hash of the filters; a page token is only valid for the same one."""
        blob = json.dumps(
            [
                owner,
                sorted(self.statuses),
                sorted(self.modes),
                self.created_after_us,
                self.created_before_us,
                self.query,
                self.bulk_job_id,
                self.project,
                self.schedule_id,
                sorted(self.priorities),
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Page:
    """One page of a listing."""

    docs: list[Doc]
    next_token: str
    total: int


def parse_id(ident: str, kind: str = "job", field: str = "id") -> ObjectId:
    """The ObjectId of a client-supplied id, or INVALID_ARGUMENT naming `field`."""
    bad = check_id(ident, field, kind)
    if bad:
        raise invalid(bad)
    return ObjectId(ident)


def request_key(owner: str, kind: str, *parts: str | int) -> str:
    """The unique idempotency key of a stored job or bulk job.

    A JSON array: no owner, client request id or part can run into the next
    one, and each `kind` is a namespace of its own: "request" holds the
    client's request ids, the server's own keys ("job", "retry-of",
    "bulk-item", "bulk") can never be reached through one.
    """
    return json.dumps([owner, kind, *parts], separators=(",", ":"))


def submission_key(owner: str, request_id: str, own_id: ObjectId, kind: str) -> str:
    """The key of a submitted job or bulk job: the client's request id, else its own id."""
    return request_key(owner, "request", request_id) if request_id else request_key(owner, kind, str(own_id))


def bulk_item_key(owner: str, bulk_id: ObjectId | str, position: int) -> str:
    """The key of a bulk job's item at `position` (a repeated create stores it once)."""
    return request_key(owner, "bulk-item", str(bulk_id), position)


def keyset_page(
    collection: Collection[Doc],
    query: Doc,
    fingerprint: str,
    size: int,
    token: str,
    tokens: PageTokens,
    count: bool = True,
) -> Page:
    """A page of `query`, newest first, by keyset on `ck`; the total (counted
    on the first page, carried in the signed token after) matches `query`."""
    total = -1
    page_query = query
    if token:
        before, total = tokens.decode(token, fingerprint)
        # Below the last item shown, within any date range of `query`.
        created = query.get("ck", {})
        page_query = {**query, "ck": {**created, "$lt": min(before, created.get("$lt", before))}}
    # Read raw, to weigh each document: a page stops short of gRPC's 4 MB
    # message limit however large its jobs. One decode of the kept ones
    # after costs what pymongo's own decoding would have.
    raw = collection.with_options(
        codec_options=collection.codec_options.with_options(document_class=RawBSONDocument)
    )
    kept: list[bytes] = []
    weight, more = 0, False
    for found in raw.find(page_query).sort("ck", pymongo.DESCENDING).limit(size + 1):
        weight += len(found.raw)
        if len(kept) == size or (kept and weight > MAX_PAGE_BYTES):
            more = True
            break
        kept.append(found.raw)
    docs: list[Doc] = bson.decode_all(b"".join(kept), collection.codec_options)
    if total < 0:  # the first page: `query` has no token bound, only the filters
        found = size + 1 if more else len(kept)
        total = _first_total(collection, query, found, size) if count else 0
    return Page(docs, tokens.encode(docs[-1]["ck"], total, fingerprint) if more else "", total)


def _first_total(collection: Collection[Doc], query: Doc, found: int, size: int) -> int:
    """How many documents match `query`, at most TOTAL_SIZE_CAP, for a first
    page that found `found` of them (asking for size + 1).

    No aggregation: nx-27017 counts the whole collection before every
    aggregate (40 ms at 1M jobs). A first page that holds every match is its
    own count; else one step to the cap-th newest match through the
    (owner, ck) index says whether the cap is reached, and only below it a
    `count` command (a SQL COUNT over the matches' index) counts them.
    """
    if found <= size:
        return found
    beyond = (
        collection.find(query, {"_id": 1}).sort("ck", pymongo.DESCENDING).skip(TOTAL_SIZE_CAP - 1).limit(1)
    )
    if next(iter(beyond), None) is not None:
        return TOTAL_SIZE_CAP
    return int(collection.database.command("count", collection.name, query=query)["n"])
