"""`noop`: an empty article at once, for measuring the service itself."""

from __future__ import annotations

import threading

from genjobs.server.generators.base import JobSpec, Output, ProgressFn


class NoopGenerator:
    """Returns an empty article at once: measures the service, not the generator."""

    stages = ("generating",)  # one step, never reported: the job completes at once

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        return Output(content="", title="", word_count=0)
