"""`demo`: a local, deterministic article of the asked length, in stages."""

from __future__ import annotations

import hashlib
import random
import threading
from typing import Any

from genjobs.server.generators.base import GenerationCancelled, GenerationFailed, JobSpec, Output, ProgressFn
from genjobs.server.model.rules import DEFAULT_WORD_COUNT, demo_fail_attempts

STAGES = (("research", 0.15), ("outline", 0.15), ("drafting", 0.55), ("editing", 0.15))

_OPENERS = (
    "Few subjects reward a closer look as much as {s}.",
    "Anyone working with {s} soon learns that the details matter.",
    "The story of {s} is still being written.",
    "{S} is easy to name and harder to explain well.",
)
_BODY = (
    "Start with what readers already know, then add one idea at a time.",
    "A clear example does more than a page of abstractions.",
    "Good practice grows out of small, repeated improvements.",
    "The strongest arguments are the ones that admit their limits.",
    "Numbers help, but only when they answer a question someone asked.",
    "Most mistakes come from skipping the step that seemed obvious.",
    "The best teams write down what they learn and share it early.",
    "Context decides whether a tactic is clever or careless.",
    "It pays to revisit assumptions once the first results arrive.",
    "Simple tools, used consistently, beat complex ones used rarely.",
)


class DemoGenerator:
    """A local generator: a real, deterministic article of the asked length.

    `params.extra`: `demo_seconds` stretches the run over that many seconds;
    `demo_fail` = `transient` fails the first `demo_fail_attempts` (default 1)
    attempts with a retryable error, `permanent` fails every attempt.
    """

    stages = tuple(name for name, _ in STAGES)

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        extra = job.params.get("extra", {})
        seconds = float(extra.get("demo_seconds", 0) or 0)
        failure = extra.get("demo_fail", "")
        words = job.params.get("word_count") or DEFAULT_WORD_COUNT
        subject = _subject(job)
        for index, (stage, share) in enumerate(STAGES):
            steps = 4 if seconds else 1
            for step in range(1, steps + 1):
                if cancelled.wait(seconds * share / steps) if seconds else cancelled.is_set():
                    raise GenerationCancelled()
                done = sum(s for _, s in STAGES[:index]) + share * step / steps
                report_progress(int(done * 100), stage, int(step * 100 / steps), f"{stage} {subject}")
            if stage == "drafting" and failure == "permanent":
                raise GenerationFailed("DEMO_PERMANENT", "demo_fail=permanent asked for a failure", False)
            fails_now = job.attempt <= demo_fail_attempts(extra)
            if stage == "drafting" and failure == "transient" and fails_now:
                raise GenerationFailed("DEMO_TRANSIENT", "demo_fail=transient: try again", True)
        content = write_article(job.mode, job.params, words)
        return Output(
            content=content,
            title=_title(subject),
            word_count=len(content.split()),
            cost_cents=max(1, words // 100),
            metadata={"generator": "demo"},
        )


def _subject(job: JobSpec) -> str:
    params = job.params
    if job.mode == "SPIN":
        return " ".join(params.get("source_text", "").split()[:6]) or "the source text"
    return params.get("topic") or ", ".join(params.get("keywords", [])) or "the subject"


def _title(subject: str) -> str:
    return subject[:1].upper() + subject[1:80]


# Sentences of exactly 1 to 6 words: the article ends on whole sentences and
# still has exactly the asked number of words.
_CLOSERS = {
    1: "Onward.",
    2: "Keep going.",
    3: "Small steps count.",
    4: "Test each idea early.",
    5: "That is where progress starts.",
    6: "Write down what you learn today.",
}


def write_article(mode: str, params: dict[str, Any], words: int) -> str:
    """Exactly `words` words of readable text about the params, the same every
    time: a heading, then paragraphs of whole sentences."""
    seed = hashlib.sha256(repr((mode, sorted(params.items(), key=str))).encode()).digest()
    rng = random.Random(seed)
    subject = _subject(JobSpec("", "", mode, params, 1))
    keywords = params.get("keywords", [])
    heading = f"# {_title(subject)}"
    budget = max(0, words - len(heading.split()))
    sentences: list[str] = []
    deck: list[str] = []  # the body sentences, shuffled: none repeats before all are used
    count = 0
    while (left := budget - count) > 0:
        if left <= len(_CLOSERS):
            sentence = _CLOSERS[left]
        else:
            if not deck:
                deck.extend(rng.sample(_BODY, len(_BODY)))
            if not sentences or rng.random() < 0.15:
                sentence = rng.choice(_OPENERS).format(s=subject, S=_title(subject))
            elif keywords and rng.random() < 0.25:
                sentence = f"Consider {rng.choice(keywords)} in that light."
            else:
                sentence = deck.pop()
            if len(sentence.split()) > left:  # near the end: the longest that fits
                fits = [s for s in _BODY if len(s.split()) <= left]
                sentence = max(fits, key=lambda s: len(s.split())) if fits else _CLOSERS[len(_CLOSERS)]
        sentences.append(sentence)
        count += len(sentence.split())
    paragraphs: list[str] = []
    while sentences:
        size = rng.randint(3, 5)
        if len(sentences) - size < 2:  # no one-sentence paragraph at the end
            size = len(sentences)
        paragraphs.append(" ".join(sentences[:size]))
        sentences = sentences[size:]
    return "\n\n".join([heading, *paragraphs])
