"""Every attempt's time limits, for any generator: past the attempt's limit, or
a stream silent too long, the generator is stopped and the attempt fails as
transient GENERATOR_TIMEOUT (retried by policy)."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any

from genjobs.server.generators.base import (
    GenerationCancelled,
    GenerationFailed,
    Generator,
    JobSpec,
    Output,
    ProgressFn,
    when_set,
)

TICK_SECONDS = 0.05
LONGEST_WAIT_SECONDS = 60.0  # a wait for a limit, at most (an Event cannot wait forever)
STOP_GRACE_SECONDS = 1.0  # how long a stopped generator may take to let go (cancel must end in 2 s)


class Watchdog:
    """Runs another generator in a thread of its own and stops it at its limits.

    The limit is GENJOBS_ATTEMPT_TIMEOUT_SECONDS, or the job's
    `params.extra.timeout_seconds` when lower. A generator with
    `streams = True` is also hung once it reports nothing for `idle_seconds`.
    A generator that ignores its cancel signal is left behind after a grace,
    so it never holds the one lane.
    """

    def __init__(self, inner: Generator, attempt_seconds: float, idle_seconds: float) -> None:
        self.inner = inner
        # The wrapped generator's declared stages are the ones its jobs go through.
        self.stages: tuple[str, ...] = tuple(getattr(inner, "stages", ()))
        self.catalog = getattr(inner, "catalog", None)  # and its models and prices
        self.attempt_seconds = attempt_seconds
        self.idle_seconds = idle_seconds

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        limit = self.attempt_seconds
        asked = job.params.get("extra", {}).get("timeout_seconds")
        if asked:
            limit = min(limit, float(asked))
        idle = self.idle_seconds if getattr(self.inner, "streams", False) else None
        finished = threading.Event()
        wake = threading.Event()  # finished or cancelled
        left_behind = threading.Event()
        heard = [time.monotonic()]
        outcome: dict[str, Any] = {}

        def report(percentage: int, stage: str, stage_progress: int, message: str) -> None:
            heard[0] = time.monotonic()
            if not left_behind.is_set():
                report_progress(percentage, stage, stage_progress, message)

        def work() -> None:
            try:
                # The dispatcher's own cancel signal: a cancel reaches the generator at once.
                outcome["output"] = self.inner.generate(job, report, cancelled)
            except BaseException as exc:  # handed to the dispatcher's thread below
                outcome["error"] = exc
            finally:
                finished.set()
                wake.set()

        started = time.monotonic()
        # In the attempt's context (its log fields and trace span carry over to the generator).
        threading.Thread(
            target=contextvars.copy_context().run, args=(work,), name=f"generate-{job.id}", daemon=True
        ).start()
        # Woken when the generator finishes or the job is cancelled, else at the
        # next limit (a plain Event as the signal: every TICK_SECONDS).
        tick = float("inf") if when_set(cancelled, wake.set) else TICK_SECONDS
        timeout = ""
        while not finished.is_set():
            now = time.monotonic()
            if not cancelled.is_set():
                if now - started > limit:
                    timeout = f"the attempt ran past its time limit of {limit:g} s"
                elif idle is not None and now - heard[0] > idle:
                    timeout = f"the stream sent nothing for {idle:g} s"
                if not timeout:
                    due = started + limit if idle is None else min(started + limit, heard[0] + idle)
                    wake.wait(min(max(due - now, 0.0) + TICK_SECONDS / 10, tick, LONGEST_WAIT_SECONDS))
                    continue
                cancelled.set()  # stops the generator as a cancel would
            if not finished.wait(STOP_GRACE_SECONDS):
                left_behind.set()  # it ignores its cancel signal: leave it, free the lane
            break
        if timeout:
            raise GenerationFailed("GENERATOR_TIMEOUT", timeout, True)
        if "error" in outcome:
            raise outcome["error"]
        if "output" not in outcome:
            raise GenerationCancelled()
        output: Output = outcome["output"]
        return output
