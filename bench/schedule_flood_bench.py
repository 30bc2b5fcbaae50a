"""Issue 26 item 5 figures: one owner's flood of per-second schedules beside
another owner's one. Mallory asks for 500 schedules `* * * * * *` (the issue's
flood); bob's per-second schedule then ticks for a 31 s window. Printed: how
many of mallory's were made and refused (and how long the 500 asks took),
bob's ticks in the window (31 would be every second), and the schedule log
lines a second over the window and the 31 s after it (the issue saw ~20 a
second from refused ticks).
The least interval is set to 1 s here, so that per-second schedules are
allowed and the cap and the fairness are what is measured; the default (60 s)
refuses all 500. Medians of three runs, each on a fresh server and database.

    .venv/bin/python bench/schedule_flood_bench.py
"""

from __future__ import annotations

import logging
import statistics
import time

from common import ServerThread, make_settings, scratch, start_mongo

from genjobs.client import GenJobsError
from genjobs.client.client import params
from genjobs.v1 import jobs_pb2

FLOOD = 500
WINDOW_SECONDS = 31.0
RUNS = 3
EVERY_SECOND = "* * * * * *"


class Lines(logging.Handler):
    """Counts the schedule log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.kinds: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        kind = record.getMessage().split(": ", 1)[-1][:40]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def job(topic: str) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=params(topic=topic, word_count=60))


def one_run(mongo_uri: str) -> tuple[int, int, float, int, float, float]:
    """(made, refused, seconds for the flood, bob's ticks in the window, log lines a
    second in that window and in the 31 s after it)."""
    settings = make_settings(mongo_uri, scratch(), min_schedule_interval_seconds=1.0)
    server = ServerThread(settings).start()
    lines = Lines()
    logger = logging.getLogger("genjobs.server.services.schedules")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with server.client("mallory") as mallory, server.client("bob") as bob:
            made = refused = 0
            started = time.perf_counter()
            for i in range(FLOOD):
                try:
                    mallory.create_schedule(EVERY_SECOND, job=job(f"flood {i}"))
                    made += 1
                except GenJobsError as exc:
                    if exc.code.name != "RESOURCE_EXHAUSTED":
                        raise
                    refused += 1
            flood_seconds = time.perf_counter() - started
            mine = bob.create_schedule(EVERY_SECOND, job=job("bob's digest"))
            before = bob.get_schedule(mine.id).run_count
            lines.count = 0
            time.sleep(WINDOW_SECONDS)  # the measured window itself, not a wait for a condition
            ticks = bob.get_schedule(mine.id).run_count - before
            first = lines.count / WINDOW_SECONDS
            print(f"log lines in the first window by kind: {lines.kinds}")
            lines.count, lines.kinds = 0, {}
            time.sleep(WINDOW_SECONDS)  # a second window: the flood's steady state
            later = lines.count / WINDOW_SECONDS
            print(f"log lines in the second window by kind: {lines.kinds}")
    finally:
        logger.removeHandler(lines)
        server.stop()
    return made, refused, flood_seconds, ticks, first, later


def main() -> None:
    mongo = start_mongo()
    results = [one_run(mongo.uri) for _ in range(RUNS)]
    mongo.stop()
    made, refused, seconds, ticks, first, later = (
        statistics.median(column) for column in zip(*results, strict=True)
    )
    print(f"runs: {results}")
    print(
        f"mallory asked for {FLOOD} per-second schedules: {made:.0f} made, {refused:.0f} refused "
        f"RESOURCE_EXHAUSTED, in {seconds:.1f} s (medians of {RUNS})"
    )
    print(f"bob's per-second schedule beside them: {ticks:.0f} ticks in {WINDOW_SECONDS:.0f} s")
    print(f"schedule log lines: {first:.2f} a second in that window, {later:.2f} a second in the next 31 s")


if __name__ == "__main__":
    main()
