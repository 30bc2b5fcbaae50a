"""Page tokens: opaque, signed by the server, bound to one listing's filters.

A token carries where the next page starts (the order key `ck` of the last
item shown), the total counted on the first page, and a fingerprint of the
filters and caller. It is signed with HMAC-SHA256 under a key derived from
the server's auth secret, so every replica accepts every other's tokens and
a client can neither forge a total nor move the position; a token is also
checked field by field, so nothing out of range reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from genjobs.server.model.errors import FieldViolation, ServiceError, invalid

MAX_TOKEN = 256  # characters; real tokens are about 90
_INT64 = 2**63
_CONTEXT = b"genjobs page tokens v1"


def _bad(reason: str, why: str) -> ServiceError:
    return invalid([FieldViolation("page_token", why)], reason=reason)


def _not_ours() -> ServiceError:
    return _bad("INVALID_PAGE_TOKEN", "not a token from this listing; start again without it")


class PageTokens:
    """Makes and checks the page tokens of every listing."""

    def __init__(self, secret: str = "") -> None:
        # Without a secret (a bare Store in a script), a key of this process alone.
        seed = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hmac.new(seed, _CONTEXT, hashlib.sha256).digest()

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def _seal(self, claims: dict[str, Any]) -> str:
        raw = json.dumps(claims, separators=(",", ":"))
        payload = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def _open(self, token: str, fingerprint: str, names: tuple[str, ...]) -> list[Any]:
        """The claims `names` of a token this server signed for the listing with
        `fingerprint`; INVALID_ARGUMENT for anything else."""
        payload, _, signature = token.partition(".")
        if len(token) > MAX_TOKEN or not hmac.compare_digest(
            signature.encode(), self._sign(payload).encode()
        ):
            raise _not_ours()
        try:
            claims: Any = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            values, signed_for = [claims[n] for n in names], claims["f"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _not_ours() from None
        if not isinstance(signed_for, str):
            raise _not_ours()
        if signed_for != fingerprint:
            raise _bad("PAGE_TOKEN_FILTER_MISMATCH", "the filters changed since this token was issued")
        return values

    def encode(self, before_ck: int, total: int, fingerprint: str) -> str:
        """The token of the page after the item with order key `before_ck`."""
        return self._seal({"b": before_ck, "t": total, "f": fingerprint})

    def decode(self, token: str, fingerprint: str) -> tuple[int, int]:
        """(order key to continue below, total) of a token this server signed for
        the listing with `fingerprint`; INVALID_ARGUMENT for anything else."""
        before, total = self._open(token, fingerprint, ("b", "t"))
        if not (_count(before) and _count(total)):
            raise _not_ours()
        return before, total

    def encode_after(self, key: str, fingerprint: str) -> str:
        """The token of the page after the item with sort key `key`, for
        listings in name order (templates)."""
        return self._seal({"a": key, "f": fingerprint})

    def decode_after(self, token: str, fingerprint: str) -> str:
        """The sort key to continue after, of a token from `encode_after`."""
        (after,) = self._open(token, fingerprint, ("a",))
        if not isinstance(after, str):
            raise _not_ours()
        return after


def _count(value: Any) -> bool:
    """A non-negative integer MongoDB can store (bool is an int in Python: refused)."""
    return type(value) is int and 0 <= value < _INT64
