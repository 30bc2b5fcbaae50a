"""Who is calling: the caller an RPC is served for (its token's subject and
claims), known to every layer below the API that acts for someone, and the
rule of what may name a user. Verifying tokens is server/api/auth.py's."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from genjobs.server.model.rules import has_control

MAX_SUBJECT = 256  # characters of a user id


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's subject, and whether it may see every user's jobs."""

    user: str
    admin: bool = False
    premium: bool = False  # the token's claim "tier": "premium"

    @property
    def owner_filter(self) -> str | None:
        """The owner to filter reads by; None lets an admin read every user's jobs."""
        return None if self.admin else self.user


_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("genjobs_caller")


def current_caller() -> Caller:
    """The authenticated caller of the RPC being served."""
    return _caller.get()


def set_current_caller(caller: Caller) -> None:
    """Make `caller` the caller of the request this task serves (the HTTP face's
    counterpart of what AuthInterceptor does for gRPC)."""
    _caller.set(caller)


def subject_problem(user: object) -> str:
    """Why `user` cannot be a token's subject, or "" when it can.

    The user id is the owner stored with every job and part of every
    idempotency key: printable text of sensible length only.
    """
    if not isinstance(user, str) or not user:
        return "the token names no user"
    if len(user) > MAX_SUBJECT:
        return f"the token's subject is longer than {MAX_SUBJECT} characters"
    if has_control(user):
        return "the token's subject contains control characters"
    return ""
