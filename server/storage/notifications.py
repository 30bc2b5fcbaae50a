"""The notifications collection: stored notifications, and their deliveries on each channel."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from genjobs.server.model.channels import CHANNELS, PENDING, Channel
from genjobs.server.storage.database import Database, Doc
from genjobs.server.storage.paging import Page, keyset_page, parse_id


class NotificationStore:
    """Notifications by owner, and the claim, renewal and outcome of each delivery attempt."""

    def __init__(self, database: Database) -> None:
        self.notifications = database.notifications
        self.page_tokens = database.page_tokens

    def ensure_indexes(self) -> None:
        """The indexes behind every query on notifications."""
        self.notifications.create_index([("owner", 1), ("ck", 1)])
        for channel in CHANNELS:  # due deliveries, one channel at a time
            self.notifications.create_index([(channel.state, 1)])
        self.notifications.create_index([("bulk_job_id", 1)])  # ListNotifications of a bulk job
        self.notifications.create_index([("owner", 1)])  # ListNotifications (owner, ck) is a scan on nx-27017

    def insert_notification(self, doc: Doc) -> None:
        """Store a notification; again with the same id, nothing happens."""
        with contextlib.suppress(DuplicateKeyError):
            self.notifications.insert_one(doc)

    def list_notifications(
        self, owner: str, size: int, token: str, job_id: str = "", bulk_job_id: str = ""
    ) -> Page:
        """A page of the owner's notifications, newest first; only one job's
        (its notification has the job's id) or one bulk job's when given."""
        query: Doc = {"owner": owner}
        if job_id:
            query["_id"] = parse_id(job_id, field="job_id")
        if bulk_job_id:
            query["bulk_job_id"] = bulk_job_id
        fingerprint = hashlib.sha256(json.dumps([owner, job_id, bulk_job_id]).encode()).hexdigest()[:16]
        return keyset_page(self.notifications, query, fingerprint, size, token, self.page_tokens, count=False)

    def due_deliveries(
        self, channel: Channel, now_us: int, limit: int = 500, skip_owners: Sequence[str] = ()
    ) -> list[Doc]:
        """Notifications whose delivery on `channel` is pending and due, but
        not `skip_owners`' (the notifier has no room for them): only what the
        notifier needs to pick one (the claim returns the whole)."""
        query: Doc = {channel.state: PENDING, channel.next_us: {"$lte": now_us}}
        if skip_owners:  # a filter on the rows the state index finds (no scan)
            query["owner"] = {"$nin": list(skip_owners)}
        return list(self.notifications.find(query, {"owner": 1, channel.target: 1}).limit(limit))

    def claim_delivery(
        self, channel: Channel, oid: Any, now_us: int, until_us: int, token: str = ""
    ) -> Doc | None:
        """Take one delivery attempt (so replicas never send the same attempt
        twice) under `token`; the notification with its attempt counted, None if taken."""
        return self.notifications.find_one_and_update(
            {"_id": oid, channel.state: PENDING, channel.next_us: {"$lte": now_us}},
            {"$set": {channel.next_us: until_us, channel.claim: token}, "$inc": {channel.attempts: 1}},
            return_document=ReturnDocument.AFTER,
        )

    def renew_delivery(self, channel: Channel, oid: Any, token: str, until_us: int) -> bool:
        """Hold the attempt under `token` until `until_us`; False if it is no longer held."""
        held = self.notifications.update_one(
            {"_id": oid, channel.state: PENDING, channel.claim: token}, {"$set": {channel.next_us: until_us}}
        )
        return held.matched_count == 1

    def release_delivery(self, channel: Channel, oid: Any, token: str, now_us: int) -> None:
        """Give back the attempt under `token`, unmade (its server is stopping): due
        now, for another server or the next start, and not counted."""
        self.notifications.update_one(
            {"_id": oid, channel.state: PENDING, channel.claim: token},
            {"$set": {channel.next_us: now_us, channel.claim: ""}, "$inc": {channel.attempts: -1}},
        )

    def record_delivery(
        self, channel: Channel, oid: Any, attempt: int, changes: Doc, token: str = ""
    ) -> None:
        """The outcome of attempt number `attempt` made under `token` (ignored if
        that claim lapsed and another attempt took it since)."""
        self.notifications.update_one(
            {"_id": oid, channel.state: PENDING, channel.attempts: attempt, channel.claim: token},
            {"$set": {**changes, channel.claim: ""}},
        )
