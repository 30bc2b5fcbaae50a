"""Who may have PRIORITY_HIGH: the one rule every path that creates a job
calls (SubmitJob, CreateBulkJob, RetryJob, RunBulkOperation's retries,
templates through them, and schedule ticks), and the stored tiers behind it.

The rule (`entitled`): a job may be HIGH when whoever creates it, at that
moment, holds the premium standing, which is

- a token with the claim "tier": "premium" (or an admin token) on the call, or
- the tier "premium" an admin has stored for the owner (SetTier; the
  collection `owner_tiers`, one document per owner, `_id` the owner).

A schedule's tick has no token: only the stored tier counts, read at each
tick, so a grant or revoke applies from the next tick. What each path does
when the creator is not entitled:

- SubmitJob, CreateBulkJob (a template's HIGH too): PERMISSION_DENIED
  (PRIORITY_NOT_ALLOWED); the caller asked for HIGH.
- RetryJob and RETRY_ALL_FAILED of a HIGH job: the retry runs at NORMAL (the
  caller did not ask for a priority; the retry is not refused).
- A schedule's tick: the job runs at NORMAL and the schedule's `last_error`
  says so (PRIORITY_NOT_ALLOWED).
"""

from __future__ import annotations

import asyncio

from pymongo.collection import Collection
from pymongo.database import Database

from genjobs.server.model import clock
from genjobs.server.model.caller import Caller, subject_problem
from genjobs.server.model.errors import FieldViolation, admins_only, invalid, permission_denied
from genjobs.server.model.vocabulary import Priority
from genjobs.server.storage.database import Doc

PREMIUM = "premium"
TIERS = ("", PREMIUM)  # "" is the plain tier: no stored grant
HIGH, NORMAL = Priority.HIGH, Priority.NORMAL  # short names for the rule below


class Tiers:
    """The stored per-owner tiers an admin grants and revokes (SetTier)."""

    def __init__(self, db: Database[Doc]) -> None:
        self.tiers: Collection[Doc] = db["owner_tiers"]

    def premium(self, owner: str) -> bool:
        """Whether an admin has granted `owner` the premium tier (one find by `_id`)."""
        return self.tiers.find_one({"_id": owner, "tier": PREMIUM}, {"_id": 1}) is not None

    def set_tier(self, caller: Caller, owner: str, tier: str) -> Doc:
        """Grant ("premium") or revoke ("") `owner`'s stored tier; admins only.
        One write: an upsert, or a delete."""
        if not caller.admin:
            raise admins_only("SetTier")
        bad = []
        if subject_problem(owner):
            bad.append(FieldViolation("owner", "required: the user id the tier applies to"))
        if tier not in TIERS:
            bad.append(FieldViolation("tier", '"premium" grants PRIORITY_HIGH; "" revokes it'))
        if bad:
            raise invalid(bad)
        now = clock.now_us()
        if tier:
            self.tiers.update_one(
                {"_id": owner},
                {"$set": {"tier": tier, "granted_by": caller.user, "updated_us": now}},
                upsert=True,
            )
        else:
            self.tiers.delete_one({"_id": owner})
        return {"owner": owner, "tier": tier, "updated_us": now}


def entitled(caller: Caller, priority: str, tiers: Tiers | None) -> bool:
    """THE rule: whether `caller` may create a job at `priority` now (HIGH needs
    a premium or admin token, or the owner's stored premium tier)."""
    if priority != HIGH or caller.premium or caller.admin:
        return True
    return tiers is not None and tiers.premium(caller.user)


def require(caller: Caller, priority: str, tiers: Tiers | None) -> None:
    """PERMISSION_DENIED (PRIORITY_NOT_ALLOWED) unless `entitled`."""
    if not entitled(caller, priority, tiers):
        raise not_allowed()


async def require_async(caller: Caller, priority: str, tiers: Tiers | None) -> None:
    """`require` from the event loop: the stored tier is read in a thread, and
    only when the token alone does not decide."""
    if priority == HIGH and not (caller.premium or caller.admin):
        await asyncio.to_thread(require, caller, priority, tiers)


def capped(caller: Caller, priority: str, tiers: Tiers | None) -> str:
    """`priority` when `entitled`, else NORMAL (a retry, a schedule's tick)."""
    return priority if entitled(caller, priority, tiers) else NORMAL


def not_allowed() -> Exception:
    """The refusal of a priority the creator is not entitled to."""
    return permission_denied(
        "PRIORITY_NOT_ALLOWED",
        'PRIORITY_HIGH needs a token with the claim "tier": "premium", an admin token, '
        'or the tier "premium" granted to the owner by an admin (genjobs tier set OWNER premium)',
    )
