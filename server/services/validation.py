"""Request validation: pure functions from plain values to field violations."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import genjobs.server.notify  # noqa: F401  (its channels register as it is imported)
from genjobs.server.model import channels
from genjobs.server.model.errors import FieldViolation, echo
from genjobs.server.model.ids import check_id as check_id  # the rule lives in model; callers keep it here
from genjobs.server.model.records import Params
from genjobs.server.model.rules import (
    CONTROL,
    DEFAULT_WORD_COUNT,
    LONG_TEXT_CONTROL,
    MAX_DEMO_FAIL_ATTEMPTS,
    demo_fail_attempts,
    has_control,
)
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.model.vocabulary import Mode, Priority

MIN_WORDS, MAX_WORDS = 50, 5000
MAX_TOPIC = 500
MAX_KEYWORDS, MAX_KEYWORD = 20, 100
MAX_SOURCE_TEXT = 100_000
MAX_TONE = 50
MAX_EXTRA, MAX_EXTRA_KEY, MAX_EXTRA_VALUE = 20, 64, 1000
MAX_REQUEST_ID = 128
MAX_PROJECT = 100
MAX_ATTEMPTS_LIMIT = 10
MAX_DEMO_SECONDS = 3600.0
DEMO_FAILURES = ("transient", "permanent")
MIN_BULK_ITEMS, MAX_BULK_ITEMS = 10, 50
MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 100, 50
MAX_QUERY = 200
MAX_TIMEOUT_SECONDS = 86400.0
_MODEL = re.compile(r"[A-Za-z0-9._:/-]{1,100}")
# Extra keys become field names in MongoDB: no dots, no leading $.
_EXTRA_KEY = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_EXTRA_KEY}}}")


def check_params(mode: str, params: Params, prefix: str = "params") -> list[FieldViolation]:
    """Everything wrong with generation params for `mode` (an empty list when valid)."""
    bad: list[FieldViolation] = []

    def flag(name: str, why: str) -> None:
        bad.append(FieldViolation(f"{prefix}.{name}", why))

    topic, keywords = params.topic, params.keywords
    if len(topic) > MAX_TOPIC:
        flag("topic", f"at most {MAX_TOPIC} characters")
    bad.extend(check_text(topic, f"{prefix}.topic"))
    if mode == "TOPIC" and not topic.strip():
        flag("topic", "required for MODE_TOPIC")
    if mode == "KEYWORDS" and not keywords:
        flag("keywords", "at least one keyword is required for MODE_KEYWORDS")
    if mode == "TRENDS" and not topic.strip() and not keywords:
        flag("topic", "MODE_TRENDS needs a topic or keywords")
    if len(keywords) > MAX_KEYWORDS:
        flag("keywords", f"at most {MAX_KEYWORDS} keywords")
    for i, word in enumerate(keywords):
        if not word.strip() or len(word) > MAX_KEYWORD:
            flag(f"keywords[{i}]", f"must be 1 to {MAX_KEYWORD} non-blank characters")
        bad.extend(check_text(word, f"{prefix}.keywords[{i}]"))
    source = params.source_text
    if mode == "SPIN" and not source.strip():
        flag("source_text", "required for MODE_SPIN")
    if len(source) > MAX_SOURCE_TEXT:
        flag("source_text", f"at most {MAX_SOURCE_TEXT} characters")
    bad.extend(check_text(source, f"{prefix}.source_text", long_text=True))
    words = params.word_count
    if words != 0 and not MIN_WORDS <= words <= MAX_WORDS:
        flag("word_count", f"must be 0 (default {DEFAULT_WORD_COUNT}) or {MIN_WORDS} to {MAX_WORDS}")
    if len(params.tone) > MAX_TONE:
        flag("tone", f"at most {MAX_TONE} characters")
    bad.extend(check_text(params.tone, f"{prefix}.tone"))
    bad.extend(_check_extra(params.extra, prefix))
    return bad


def _check_extra(extra: dict[str, str], prefix: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if len(extra) > MAX_EXTRA:
        bad.append(FieldViolation(f"{prefix}.extra", f"at most {MAX_EXTRA} entries"))
    for key, value in extra.items():
        if not _EXTRA_KEY.fullmatch(key) or len(value) > MAX_EXTRA_VALUE:
            bad.append(
                FieldViolation(
                    f"{prefix}.extra[{echo(key)}]",
                    f"keys 1 to {MAX_EXTRA_KEY} of A-Z a-z 0-9 _ -, "
                    f"values at most {MAX_EXTRA_VALUE} characters",
                )
            )
        bad += check_text(value, f"{prefix}.extra[{key!r}]")
    if "demo_seconds" in extra:
        try:
            seconds = float(extra["demo_seconds"])
            ok = 0 <= seconds <= MAX_DEMO_SECONDS
        except ValueError:
            ok = False
        if not ok:
            bad.append(
                FieldViolation(f"{prefix}.extra['demo_seconds']", f"a number from 0 to {MAX_DEMO_SECONDS:g}")
            )
    if "demo_fail" in extra and extra["demo_fail"] not in DEMO_FAILURES:
        bad.append(FieldViolation(f"{prefix}.extra['demo_fail']", "either 'transient' or 'permanent'"))
    if "demo_fail_attempts" in extra:
        try:
            demo_fail_attempts(extra)
        except ValueError:
            bad.append(
                FieldViolation(
                    f"{prefix}.extra['demo_fail_attempts']",
                    f"a whole number of attempts from 0 to {MAX_DEMO_FAIL_ATTEMPTS} (digits 0-9)",
                )
            )
    bad += _check_generator_extra(extra, prefix)
    return bad


def _check_generator_extra(extra: dict[str, str], prefix: str) -> list[FieldViolation]:
    """The extras the generators read: model, temperature, timeout_seconds."""
    bad = []
    if "model" in extra and not _MODEL.fullmatch(extra["model"]):
        bad.append(
            FieldViolation(f"{prefix}.extra['model']", "a model name: 1 to 100 of A-Z a-z 0-9 . _ : / -")
        )
    for key, low, high in (("temperature", 0.0, 2.0), ("timeout_seconds", 1.0, MAX_TIMEOUT_SECONDS)):
        if key not in extra:
            continue
        try:
            ok = low <= float(extra[key]) <= high
        except ValueError:
            ok = False
        if not ok:
            bad.append(FieldViolation(f"{prefix}.extra[{key!r}]", f"a number from {low:g} to {high:g}"))
    return bad


def check_mode(mode: str, field: str = "mode") -> list[FieldViolation]:
    """A violation unless `mode` is a Mode."""
    return check_choices(field, [mode], Mode, "MODE_")


def check_priority(priority: str) -> list[FieldViolation]:
    """A violation unless `priority` is a Priority."""
    return check_choices("priority", [priority], Priority, "PRIORITY_")


def check_choices(
    field: str, names: Iterable[str], allowed: Iterable[str], prefix: str
) -> list[FieldViolation]:
    """A violation naming `field` unless every one of `names` is in `allowed`.

    The one check of enum values for every request: the servicers turn an
    unspecified or unknown number into "", which is never allowed.
    """
    allowed = tuple(allowed)
    if all(name in allowed for name in names):
        return []
    return [
        FieldViolation(
            field, "unspecified or unknown value: one of " + ", ".join(prefix + a for a in allowed)
        )
    ]


def check_text(value: str, field: str, long_text: bool = False) -> list[FieldViolation]:
    """The one check of control characters in a text field: a violation naming
    `field` when `value` holds one other than tab and newline (and, in
    `long_text`, a carriage return before a newline)."""
    found = (LONG_TEXT_CONTROL if long_text else CONTROL).search(value)
    if found is None:
        return []
    allowed = "tab, newline and CRLF line ends" if long_text else "tab and newline"
    return [
        FieldViolation(
            field,
            f"must not contain control characters ({allowed} are allowed):"
            f" {found.group()!r} at position {found.start()}",
        )
    ]


def check_label(value: str, field: str, limit: int) -> list[FieldViolation]:
    """A short identifier (request_id, project): at most `limit` characters, no control characters."""
    if len(value) > limit:
        return [FieldViolation(field, f"at most {limit} characters")]
    if has_control(value):
        return [FieldViolation(field, "must not contain control characters")]
    return []


def check_submit(
    mode: str, params: Params, request_id: str, project: str, max_attempts: int
) -> list[FieldViolation]:
    """Everything wrong with a SubmitJob request."""
    bad = check_mode(mode)
    bad += check_params(mode, params)
    bad += check_common(request_id, project)
    if not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        bad.append(FieldViolation("max_attempts", f"0 (server default) to {MAX_ATTEMPTS_LIMIT}"))
    return bad


def check_common(request_id: str, project: str) -> list[FieldViolation]:
    """Checks shared by every create request."""
    return check_label(request_id, "request_id", MAX_REQUEST_ID) + check_label(
        project, "project", MAX_PROJECT
    )


def check_notify(targets: Sequence[NotifyTarget]) -> list[FieldViolation]:
    """Violations for notification targets: a channel the server knows, an
    address its channel can use (its module's check), one target per channel
    (each is one delivery); a shorthand's violation names the shorthand."""
    bad = []
    seen: set[str] = set()
    for i, target in enumerate(targets):
        name = f"notify[{i}]"
        channel = channels.find(target.channel)
        if channel is None:
            known = ", ".join(repr(c.name) for c in channels.CHANNELS)
            bad.append(
                FieldViolation(f"{name}.channel", f"unknown channel {echo(target.channel)}: one of {known}")
            )
        elif not target.address:
            bad.append(FieldViolation(f"{name}.address", "required"))
        elif why := channel.problem(target.address):
            bad.append(FieldViolation(target.given_as or f"{name}.address", why))
        elif channel.name in seen:
            bad.append(
                FieldViolation(target.given_as or name, f"one target per channel: {channel.name} twice")
            )
        seen.add(target.channel)
    return bad


def check_bulk(
    mode: str,
    items: list[Params],
    request_id: str,
    project: str,
    notify: Sequence[NotifyTarget] = (),
) -> list[FieldViolation]:
    """Everything wrong with a CreateBulkJob request; item fields named items[i].field."""
    bad = check_mode(mode)
    if not MIN_BULK_ITEMS <= len(items) <= MAX_BULK_ITEMS:
        bad.append(
            FieldViolation(
                "items", f"a bulk job has {MIN_BULK_ITEMS} to {MAX_BULK_ITEMS} items, got {len(items)}"
            )
        )
    for i, item in enumerate(items):
        bad += check_params(mode, item, prefix=f"items[{i}]")
    bad += check_common(request_id, project)
    bad += check_notify(notify)
    return bad


def page_size(requested: int) -> tuple[int, list[FieldViolation]]:
    """The page size to use: 0 means the default, larger than the max is capped."""
    if requested < 0:
        return 0, [FieldViolation("page_size", "must not be negative")]
    if requested == 0:
        return DEFAULT_PAGE_SIZE, []
    return min(requested, MAX_PAGE_SIZE), []


def check_query(query: str) -> list[FieldViolation]:
    """A violation when the free-text query is too long or holds control
    characters (MongoDB refuses a regular expression with a NUL)."""
    return check_label(query, "query", MAX_QUERY)
