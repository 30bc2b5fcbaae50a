"""What the queued-jobs cap costs on nx-27017: a job's insert with and
without its place (`place`, under a unique index), and the read of an
owner's open jobs that a submit makes when the cap's memory is not enough
(an owner's first submit here, or one that looks full), for an owner with
few and with 1,000 open jobs (the default cap).

    .venv/bin/python bench/queue_cap_bench.py [runs]

Prints the median over `runs` runs of each run's median of 50 calls, in ms.
Giving a place back costs no command: the write that ends the job removes it.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from common import start_mongo  # first: it puts the project on the path

from genjobs.server.storage.places import PLACE, place_key
from genjobs.server.storage.store import Store
from tests.harness import seed_job

CALLS = 50


def _median_ms(call: Callable[[int], object]) -> float:
    times = []
    for i in range(CALLS):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def one_run(store: Store, run: int) -> dict[str, float]:
    """One run's medians, on owners of their own."""
    few, full = f"few{run}", f"full{run}"
    filler = [seed_job(store, full, {"topic": "t"}) for _ in range(1000 - CALLS)]
    for number, doc in enumerate(filler):
        doc[PLACE] = place_key(full, number)
    store.database.jobs.insert_many(filler)  # 950 open jobs
    plain = [seed_job(store, few, {"topic": "t"}) for _ in range(CALLS)]
    placed = [{**seed_job(store, few, {"topic": "t"}), PLACE: place_key(few, i)} for i in range(CALLS)]
    more = [{**seed_job(store, full, {"topic": "t"}), PLACE: place_key(full, 950 + i)} for i in range(CALLS)]
    return {
        "insert, no place": _median_ms(lambda i: store.database.jobs.insert_one(plain[i])),
        "insert with its place, few open": _median_ms(lambda i: store.database.jobs.insert_one(placed[i])),
        "insert with its place, ~1,000 open": _median_ms(lambda i: store.database.jobs.insert_one(more[i])),
        "read the open jobs, few open": _median_ms(lambda i: store.jobs.open_places(few)),
        "read the open jobs, ~1,000 open": _median_ms(lambda i: store.jobs.open_places(full)),
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    mongo = start_mongo()
    try:
        store = Store(mongo.uri, "queue_cap_bench")
        store.ensure_indexes()
        results = [one_run(store, run) for run in range(runs)]
        print(f"queued-jobs cap on nx-27017, median of {runs} runs x {CALLS} calls (ms):")
        for name in results[0]:
            print(f"  {name:36} {statistics.median(r[name] for r in results):6.2f}")
        store.database.client.drop_database("queue_cap_bench")
        store.close()
    finally:
        mongo.stop()


if __name__ == "__main__":
    main()
