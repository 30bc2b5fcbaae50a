"""Issue 27 figures: the archive move's rate (jobs a second) and SubmitJob's
p50 while it runs against idle, with a given number of stored jobs.

    .venv/bin/python bench/archive_bench.py --stored 100000 --move 20000

Seeds `--stored` completed jobs (one event each) that ended long ago, through
the storage layer's insert_many; starts a genjobs server process (noop
generator, archive mode with a retention long enough that it moves nothing
itself); measures SubmitJob p50 idle; then moves `--move` of the jobs with
the server's own batches (`ArchiveStore.move_batch`) in this process while
rounds of SubmitJob run, and prints the rate and the p50s (medians of rounds).
"""

from __future__ import annotations

import argparse
import threading
import time

from common import ServerProcess, make_settings, median, scratch, start_mongo

from genjobs.server.model import clock
from genjobs.server.storage.archive import BATCH
from genjobs.server.storage.store import Store
from tests.harness import seed_job

SUBMITS = 100  # per round
ROUNDS = 3
SEED_CHUNK = 2000


def seed(store: Store, count: int) -> None:
    """`count` completed jobs (and an event each) that ended a year ago."""
    ended = clock.now_us() - 365 * 86400 * 10**6
    for first in range(0, count, SEED_CHUNK):
        docs = []
        for i in range(first, min(first + SEED_CHUNK, count)):
            doc = seed_job(store, f"owner{i % 50}", {"topic": f"seeded {i}", "word_count": 300})
            doc.update(status="COMPLETED", queue="none", ended_us=ended + i, cost_cents=1)
            docs.append(doc)
        store.jobs.jobs.insert_many(docs)
        store.events.insert_events([store.events.event_doc(d, "STATUS_CHANGED") for d in docs])


def submit_round(client: object) -> float:
    """p50 ms of SUBMITS SubmitJob calls."""
    times = []
    for i in range(SUBMITS):
        start = time.perf_counter()
        client.submit("topic", topic=f"bench {i}")  # type: ignore[attr-defined]
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--move", type=int, default=20_000)
    args = parser.parse_args()
    mongo = start_mongo()
    settings = make_settings(mongo.uri, scratch(), generator="noop", retention_days=3650.0)
    store = Store(mongo.uri, settings.db_name, timeout_seconds=120)
    store.ensure_indexes()
    start = time.perf_counter()
    seed(store, args.stored)
    print(f"seeded {args.stored} completed jobs and events in {time.perf_counter() - start:.0f} s")
    server = ServerProcess(settings, scratch() / "server.log").start()
    try:
        with server.client("bench") as client:
            submit_round(client)  # warm-up
            idle = [submit_round(client) for _ in range(ROUNDS)]
            moved = 0
            done = threading.Event()

            def mover() -> None:
                nonlocal moved
                cutoff = clock.now_us() - 3650 * 86400 * 10**6 // 10  # every seeded job
                while moved < args.move:
                    moved += store.archive.move_batch("COMPLETED", cutoff, BATCH)
                done.set()

            thread = threading.Thread(target=mover)
            began = time.perf_counter()
            thread.start()
            busy = []
            while not done.is_set() or not busy:
                busy.append(submit_round(client))
            thread.join()
            elapsed = time.perf_counter() - began
    finally:
        server.terminate()
    live = store.jobs.jobs.estimated_document_count()
    archived = store.archive.jobs.estimated_document_count()
    print(f"moved {moved} jobs (with their events) in {elapsed:.1f} s: {moved / elapsed:.0f} jobs/s")
    print(f"after: {live} live, {archived} archived; batches of {BATCH}")
    print(f"SubmitJob p50 idle: {median(idle):.2f} ms (rounds {', '.join(f'{v:.2f}' for v in idle)})")
    print(
        f"SubmitJob p50 during the move: {median(busy):.2f} ms "
        f"({len(busy)} rounds of {SUBMITS}: {', '.join(f'{v:.2f}' for v in busy)})"
    )
    print(f"ratio: {median(busy) / median(idle):.2f}x")
    store.close()
    mongo.stop()


if __name__ == "__main__":
    main()
