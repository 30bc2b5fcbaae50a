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
from genjobs.server.storage.database import count as count_matches
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
    # The archive (storage/archive.py): also list it, or list only it.
    show_archived: bool = False
    archived_only: bool = False

    def fingerprint(self, owner: str | None) -> str:
        """A short hash of the filters; a page token is only valid for the same one."""
        # The archive flags only when set: the tokens of listings without them stay valid.
        flags = [self.show_archived, self.archived_only] if self.show_archived or self.archived_only else []
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
                *flags,
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
    page_query, total = resume(query, token, fingerprint, tokens)
    docs, more = read_page(collection, page_query, size)
    if total < 0:  # the first page: `query` has no token bound, only the filters
        found = size + 1 if more else len(docs)
        total = _first_total(collection, query, found, size) if count else 0
    return Page(docs, tokens.encode(docs[-1]["ck"], total, fingerprint) if more else "", total)


def merged_page(
    live: Collection[Doc],
    archive: Collection[Doc],
    query: Doc,
    fingerprint: str,
    size: int,
    token: str,
    tokens: PageTokens,
) -> Page:
    """A page of `query` over the live jobs and the archive together, newest first.

    `ck` orders both (a job keeps its order key when archived), so one keyset
    position serves both sides: every job of either side newer than the last
    one shown was shown. A page reads at most a page from each side; a job
    met on both sides (copied, not yet deleted from live) is shown once, live.
    """
    page_query, total = resume(query, token, fingerprint, tokens)
    live_docs, live_more = read_page(live, page_query, size)
    archived, archive_more = read_page(archive, page_query, size)
    seen = {d["_id"] for d in live_docs}
    merged = sorted(live_docs + [d for d in archived if d["_id"] not in seen], key=lambda d: -d["ck"])
    docs: list[Doc] = []
    weight = 0
    for doc in merged[:size]:
        weight += len(bson.encode(doc))
        if docs and weight > MAX_PAGE_BYTES:
            break
        docs.append(doc)
    more = live_more or archive_more or len(merged) > len(docs)
    if total < 0:
        found_live = size + 1 if live_more else len(live_docs)
        found_archive = size + 1 if archive_more else len(archived)
        total = min(
            _first_total(live, query, found_live, size) + _first_total(archive, query, found_archive, size),
            TOTAL_SIZE_CAP,
        )
    return Page(docs, tokens.encode(docs[-1]["ck"], total, fingerprint) if more and docs else "", total)


def resume(query: Doc, token: str, fingerprint: str, tokens: PageTokens) -> tuple[Doc, int]:
    """(the query of the page `token` points at, the total it carries); the
    first page's is `query` itself, its total -1 (not counted yet)."""
    if not token:
        return query, -1
    before, total = tokens.decode(token, fingerprint)
    # Below the last item shown, within any date range of `query`.
    created = query.get("ck", {})
    return {**query, "ck": {**created, "$lt": min(before, created.get("$lt", before))}}, total


def read_page(collection: Collection[Doc], page_query: Doc, size: int) -> tuple[list[Doc], bool]:
    """Up to `size` documents of `page_query`, newest first, and whether more follow."""
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
    return docs, more


def _first_total(collection: Collection[Doc], query: Doc, found: int, size: int) -> int:
    """How many documents match `query`, at most TOTAL_SIZE_CAP, for a first
    page that found `found` of them (asking for size + 1).

    Aggregate as little as may be: nx-27017 counts the whole collection
    before every aggregate (40 ms at 1M jobs). A first page that holds every
    match is its own count; else one step to the cap-th newest match through
    the (owner, ck) index says whether the cap is reached, and only below it
    an aggregate counts them. (Not the `count` command: nx-27017 reads the
    whole collection for it, 85-190 ms at 50k jobs against 2-16 ms.)
    """
    if found <= size:
        return found
    beyond = (
        collection.find(query, {"_id": 1}).sort("ck", pymongo.DESCENDING).skip(TOTAL_SIZE_CAP - 1).limit(1)
    )
    if next(iter(beyond), None) is not None:
        return TOTAL_SIZE_CAP
    return count_matches(collection, query)
