"""What counts as an id: the one rule, shared by request validation and storage."""

from __future__ import annotations

import re

from genjobs.server.model.errors import FieldViolation

# Ids are ObjectId hex; anything else is refused before it reaches a query.
_ID = re.compile(r"[0-9a-fA-F]{24}")


def check_id(value: str, field: str = "id", kind: str = "job") -> list[FieldViolation]:
    """A violation unless `value` is an id: 24 hexadecimal characters."""
    if _ID.fullmatch(value):
        return []
    return [FieldViolation(field, f"not a {kind} id (24 hexadecimal characters)")]
