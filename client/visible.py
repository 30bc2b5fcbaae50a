"""What the command line shows of the server's text: control characters made
visible, never sent to the terminal.

The server refuses control characters in what it is sent, but a row stored
before it did, or by another writer, may hold some: an escape sequence in a
topic would retitle the terminal or erase lines when printed. So every
string the CLI prints comes through here: a control character other than
tab and newline is shown as its escape (`\\x1b`, `\\x00`, `\\x9b`).
JSON output needs none of this (JSON escapes them itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

T = TypeVar("T")

# C0 but tab and newline, DEL, C1 (\x9b is a one-byte CSI to many terminals), lone surrogates.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def text(value: str) -> str:
    """`value` with each control character but tab and newline shown as its escape."""
    return _CONTROL.sub(_escape, value) if _CONTROL.search(value) else value


def message(msg: T) -> T:
    """A copy of a protobuf message with every string in it made visible (`text`)."""
    assert isinstance(msg, Message)
    copy = type(msg)()
    copy.CopyFrom(msg)
    _clean(copy)
    return copy


def _clean(msg: Message) -> None:
    for field, value in msg.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = dict(value)
            value.clear()
            for key, item in entries.items():
                key = text(key) if isinstance(key, str) else key
                if isinstance(item, Message):
                    value[key].CopyFrom(item)
                    _clean(value[key])
                else:
                    value[key] = text(item) if isinstance(item, str) else item
        elif field.type == FieldDescriptor.TYPE_STRING:
            if _is_repeated(field):
                cleaned = [text(v) for v in value]
                del value[:]
                value.extend(cleaned)
            else:
                setattr(msg, field.name, text(value))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if _is_repeated(field) else [value]:
                _clean(item)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def anything(value: Any) -> Any:
    """`value` made visible: a message, a string, a list or tuple of them, or
    an iterator (a Watch stream) yielding them; anything else as it is."""
    if isinstance(value, Message):
        return message(value)
    if isinstance(value, str):
        return text(value)
    if isinstance(value, list | tuple):
        return type(value)(anything(v) for v in value)
    if isinstance(value, Iterator):
        return (anything(v) for v in value)
    return value


class VisibleClient:
    """A client whose every answer is made visible (`anything`): what the CLI
    uses for everything it prints but JSON."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return anything(attr(*args, **kwargs))

        return call
