"""The delivery channels of a notification and how each is stored.

One notification document carries every channel's delivery as flat fields
(flat, so that each channel's due deliveries are one single-field index
away, and so that webhook-only documents written by older versions need no
migration: the webhook channel keeps their field names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId

Doc = dict[str, Any]

# Delivery states, per channel.
NONE = "none"  # the owner did not ask for this channel
PENDING = "pending"  # not sent yet, or waiting for its next attempt
DELIVERED = "delivered"
FAILED = "failed"  # given up: attempts exhausted, or a target that cannot work
REFUSED = "refused"  # the private-address guard would not send it


@dataclass(frozen=True)
class Channel:
    """Where one channel's delivery lives in a notification document."""

    name: str
    target: str  # the URL or address
    state: str
    attempts: str
    next_us: str  # when the next attempt is due (or, while one runs, its claim expires)
    error: str
    claim: str  # the token of the attempt under way ("" for none): only it may record an outcome

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


WEBHOOK = Channel(
    "webhook", "notify_url", "delivery", "attempts", "next_attempt_us", "last_error", "claim_token"
)
EMAIL = Channel(
    "email",
    "notify_email",
    "email_delivery",
    "email_attempts",
    "email_next_us",
    "email_last_error",
    "email_claim_token",
)
CHANNELS = (WEBHOOK, EMAIL)


def new_notification(
    *,
    oid: ObjectId,
    owner: str,
    event: str,
    message: str,
    payload: Doc,
    ck: int,
    created_us: int,
    notify_url: str,
    notify_email: str,
    job_id: str = "",
    bulk_job_id: str = "",
) -> Doc:
    """A notification document, every channel's delivery pending or none.
    `oid` is fixed by what it announces, so storing it twice stores it once."""
    return {
        "_id": oid,
        "owner": owner,
        "job_id": job_id,
        "bulk_job_id": bulk_job_id,
        "event": event,
        "message": message,
        "ck": ck,
        "created_us": created_us,
        "payload": {"event": event, **payload},
        **WEBHOOK.fields(notify_url),
        **EMAIL.fields(notify_email),
    }


def targets(notify_url: str, notify_email: str) -> Doc:
    """The fields a job submitted with these targets carries; `notify_pending`
    stays set until its notification is stored (see job_end)."""
    if not notify_url and not notify_email:
        return {}
    return {"notify_url": notify_url, "notify_email": notify_email, "notify_pending": True}
