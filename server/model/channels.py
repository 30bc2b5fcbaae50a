"""The delivery channels of a notification: the registry, and how each is stored.

A channel (webhook, email, ...) is described once, by its own module in
server/notify, which registers it here as it is imported: its name, how an
address on it is checked, and its fields. Every generic piece (validation,
the job and bulk job documents, the notifications, the notifier) goes
through the registry and names no channel.

One notification document carries every channel's delivery as flat fields
(flat, so that each channel's due deliveries are one single-field index
away, and so that webhook-only documents written by older versions need no
migration: the webhook channel keeps their field names). A job or bulk job
keeps each of its targets' addresses in its channel's `target` field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from genjobs.server.model.targets import NotifyTarget

Doc = dict[str, Any]

# Delivery states, per channel.
NONE = "none"  # the owner did not ask for this channel
PENDING = "pending"  # not sent yet, or waiting for its next attempt
DELIVERED = "delivered"
FAILED = "failed"  # given up: attempts exhausted, or a target that cannot work
REFUSED = "refused"  # the private-address guard would not send it

# Set on a job from its submission, on a bulk job when it completes, while
# its notification is not stored yet (see notify/ending.py).
PENDING_FLAG = "notify_pending"


def _any_address(address: str) -> str:
    return ""


@dataclass(frozen=True)
class Channel:
    """One channel: its name, its address check, and where its delivery lives."""

    name: str
    target: str  # the field holding the URL or address (on jobs, bulk jobs and notifications)
    state: str
    attempts: str
    next_us: str  # when the next attempt is due (or, while one runs, its claim expires)
    error: str
    claim: str  # the token of the attempt under way ("" for none): only it may record an outcome
    problem: Callable[[str], str] = _any_address  # why an address cannot be used ("" when it can)
    # The error's reason and message when a server has no sender for it ("" if it always has).
    unconfigured: tuple[str, str] = ("", "")

    def fields(self, target: str) -> Doc:
        """The delivery fields of a new notification sent to `target` ("" for none)."""
        return {
            self.target: target,
            self.state: PENDING if target else NONE,
            self.attempts: 0,
            self.next_us: 0,
            self.error: "",
            self.claim: "",
        }


# Every channel, in the order they registered (the notify package imports them all).
CHANNELS: list[Channel] = []


def register(channel: Channel) -> Channel:
    """Make `channel` known (its module does it once, as it is imported)."""
    if all(c.name != channel.name for c in CHANNELS):
        CHANNELS.append(channel)
    return channel


def find(name: str) -> Channel | None:
    """The channel called `name`, None when there is none."""
    return next((c for c in CHANNELS if c.name == name), None)


def target_fields(targets: Iterable[NotifyTarget], *, pending: bool = True) -> Doc:
    """The fields a job or bulk job created with `targets` (checked) carries:
    each address in its channel's field, and (`pending`: a job, whose flag is
    set from its submission) the pending flag when there is any."""
    fields: Doc = {}
    for target in targets:
        channel = find(target.channel)
        if channel is not None and target.address:
            fields[channel.target] = target.address
    return {**fields, PENDING_FLAG: True} if fields and pending else fields


def targets_of(doc: Doc) -> list[NotifyTarget]:
    """The targets a job, bulk job or notification document holds."""
    return [NotifyTarget(c.name, doc[c.target]) for c in CHANNELS if doc.get(c.target)]


def new_notification(
    *,
    oid: ObjectId,
    owner: str,
    event: str,
    message: str,
    payload: Doc,
    ck: int,
    created_us: int,
    targets: Iterable[NotifyTarget],
    job_id: str = "",
    bulk_job_id: str = "",
) -> Doc:
    """A notification document, every channel's delivery pending or none.
    `oid` is fixed by what it announces, so storing it twice stores it once."""
    addresses = {t.channel: t.address for t in targets}
    doc: Doc = {
        "_id": oid,
        "owner": owner,
        "job_id": job_id,
        "bulk_job_id": bulk_job_id,
        "event": event,
        "message": message,
        "ck": ck,
        "created_us": created_us,
        "payload": {"event": event, **payload},
    }
    for channel in CHANNELS:
        doc.update(channel.fields(addresses.get(channel.name, "")))
    return doc
