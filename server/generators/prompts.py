"""The openai generator's prompts: `prompts.toml` beside this module, or a file
of the same shape named by GENJOBS_PROMPTS_FILE, filled from a job's params."""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genjobs.server.model.rules import DEFAULT_WORD_COUNT
from genjobs.server.model.vocabulary import Mode

BUILT_IN = Path(__file__).with_name("prompts.toml")
KEYS = ("system", *(m.lower() for m in Mode))
PLACEHOLDERS = ("topic", "keywords", "tone", "word_count", "source_text")
_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Prompts:
    """A system prompt and one user prompt per mode (keys: system, topic, keywords, trends, spin)."""

    texts: dict[str, str]

    @classmethod
    def load(cls, path: str = "") -> Prompts:
        """The built-in prompts, with those of `path` (if given) in their place.

        A file that cannot be read, or names an unknown key or placeholder,
        stops the server at start-up rather than failing every job later.
        """
        texts = _read(BUILT_IN)
        if path:
            override = _read(Path(path))
            unknown = sorted(set(override) - set(KEYS))
            if unknown:
                raise SystemExit(f"genjobs: {path}: unknown prompt {unknown[0]!r} (use {', '.join(KEYS)})")
            texts.update(override)
        for key, text in texts.items():
            for _, name, _, _ in _FORMATTER.parse(text):
                if name is not None and name not in PLACEHOLDERS:
                    raise SystemExit(
                        f"genjobs: prompt {key!r} uses {{{name}}}; placeholders are {', '.join(PLACEHOLDERS)}"
                    )
        return cls(texts)

    def messages(self, mode: str, params: dict[str, Any]) -> list[dict[str, str]]:
        """The chat messages for a job: the system prompt, then the mode's prompt."""
        values = {
            "topic": params.get("topic", ""),
            "keywords": ", ".join(params.get("keywords", [])),
            "tone": params.get("tone", ""),
            "word_count": str(params.get("word_count") or DEFAULT_WORD_COUNT),
            "source_text": params.get("source_text", ""),
        }
        return [
            {"role": "system", "content": fill(self.texts["system"], values)},
            {"role": "user", "content": fill(self.texts[mode.lower()], values)},
        ]


def fill(template: str, values: dict[str, str]) -> str:
    """`template` with its placeholders filled; lines whose placeholders are all empty left out."""
    lines = []
    for line in template.strip().splitlines():
        names = [name for _, name, _, _ in _FORMATTER.parse(line) if name is not None]
        if names and not any(values[name].strip() for name in names):
            continue
        lines.append(line.format_map(values))
    return "\n".join(lines)


def _read(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"genjobs: cannot read prompts from {path}: {exc}") from None
    if not all(isinstance(v, str) for v in data.values()):
        raise SystemExit(f'genjobs: {path}: every prompt is a string (key = """text""")')
    return dict(data)
