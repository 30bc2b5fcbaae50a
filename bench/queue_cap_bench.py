"""What the queued-jobs cap costs on nx-27017: the admission's conditional
write (`reserve_slots`) and a job end's release, for an owner with few and
with 1,000 open jobs (the default cap), beside a plain insert_one of a job.

    .venv/bin/python bench/queue_cap_bench.py [runs]

Prints the median over `runs` runs of each run's median of 50 calls, in ms.
The dispatcher's claim is not measured: the cap adds no write to it.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from bson import ObjectId
from common import start_mongo  # first: it puts the project on the path

from genjobs.server.storage.budgets import BudgetStore
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


def one_run(store: Store, slots: BudgetStore, run: int) -> dict[str, float]:
    """One run's medians, on owners of their own."""
    few, full = f"few{run}", f"full{run}"
    slots.reserve_slots(full, [ObjectId() for _ in range(1000 - CALLS)], 10**9)  # 950 open jobs
    new = [ObjectId() for _ in range(CALLS)]
    more = [ObjectId() for _ in range(CALLS)]
    docs = [seed_job(store, few, {"topic": "t"}) for _ in range(CALLS)]
    return {
        "insert_one of a job": _median_ms(lambda i: store.database.jobs.insert_one(docs[i])),
        "reserve, few open": _median_ms(lambda i: slots.reserve_slots(few, [new[i]], 10**9)),
        "release, few open": _median_ms(lambda i: slots.release_slots(few, [new[i]])),
        "reserve, ~1,000 open": _median_ms(lambda i: slots.reserve_slots(full, [more[i]], 10**9)),
        "release, ~1,000 open": _median_ms(lambda i: slots.release_slots(full, [more[i]])),
        "refusal at the cap": _median_ms(lambda i: slots.reserve_slots(full, [ObjectId()], 10)),
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    mongo = start_mongo()
    try:
        store = Store(mongo.uri, "queue_cap_bench")
        store.ensure_indexes()
        slots = BudgetStore(store)
        slots.ensure_indexes()
        results = [one_run(store, slots, run) for run in range(runs)]
        print(f"queued-jobs cap on nx-27017, median of {runs} runs x {CALLS} calls (ms):")
        for name in results[0]:
            print(f"  {name:24} {statistics.median(r[name] for r in results):6.2f}")
        store.database.client.drop_database("queue_cap_bench")
        store.close()
    finally:
        mongo.stop()


if __name__ == "__main__":
    main()
