"""Plain rules about requests and text that more than one layer reads: the
default length, the demo's failure count, and the
cleaning of text from outside. Validation (services) refuses by them; the
generators and storage follow them; none of them needs anything but `re`."""

from __future__ import annotations

import re
import unicodedata

DEFAULT_WORD_COUNT = 800
MAX_DEMO_FAIL_ATTEMPTS = 100
# Control characters a text field refuses: C0 but tab and newline, DEL, C1
# (\x80-\x9f: \x9b is a one-byte CSI to many terminals), lone surrogates.
# Long text (source_text) also holds \r\n line ends, pasted from Windows.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
LONG_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]|\r(?!\n)")
# What `clean_text` removes whole: ANSI escape sequences (CSI, the OSC, DCS,
# SOS, PM and APC strings up to their terminator, two-character escapes).
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]"
)


def demo_fail_attempts(extra: dict[str, str]) -> int:
    """How many attempts `demo_fail=transient` fails (default 1): validation and the
    demo generator both read it here, so what passes one never breaks the other."""
    value = extra.get("demo_fail_attempts", "1")
    # ASCII digits only: int() also takes Arabic-Indic digits and " 1 ", str.isdigit() also "²".
    if not re.fullmatch(r"[0-9]{1,3}", value) or int(value) > MAX_DEMO_FAIL_ATTEMPTS:
        raise ValueError(f"demo_fail_attempts must be 0 to {MAX_DEMO_FAIL_ATTEMPTS}")
    return int(value)


def clean_text(value: str) -> str:
    """Text from outside that is stored, not refused (what a generator produced):
    ANSI escape sequences and other control characters removed, line ends
    made \\n; tabs and newlines kept."""
    if "\r" not in value and CONTROL.search(value) is None:
        return value
    value = _ANSI.sub("", value).replace("\r\n", "\n").replace("\r", "\n")
    return CONTROL.sub("", value)


def has_control(value: str) -> bool:
    """Whether `value` holds a control character or a lone surrogate."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in value)
