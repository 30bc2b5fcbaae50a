"""Issue 20 (budgets) figures: what the budget and queue-cap checks cost SubmitJob.

    .venv/bin/python bench/budget_bench.py

MongoDB commands of one SubmitJob (RPC threads and event loop) for an owner
with no limit, an owner with a monthly limit, and an owner with half the
queued-jobs cap or more queued; then what keeping a server's copy of the limits fresh costs with 5,000
limits stored (each server re-reads them every 1.5 s: what changed, beside
every limit as before); then SubmitJob throughput from 8 callers
(a server process of its own, its dispatcher busy on one long job, as
bench/service_bench.py measures it), for owners with no limit and owners
with a limit, in alternated runs. The cap is raised to a million for the
throughput runs (8 callers queue thousands of jobs each; the check still
runs: one query per owner a second). Run from a tree from before budgets
(this script and bench/service_bench.py copied in, PYTHONPATH=.), it
measures that tree ("budgets: absent").
"""

from __future__ import annotations

import dataclasses
import functools
import time

from common import COUNTER, ServerProcess, ServerThread, make_settings, measured, median, scratch, start_mongo
from service_bench import RPC_THREADS, submit_jobs

from genjobs.client import GenJobsClient
from genjobs.server.api.auth import make_token
from genjobs.server.runtime.config import Settings
from genjobs.server.services.budgets import Budgets
from genjobs.server.services.queue_cap import QueueCap
from genjobs.server.storage.budgets import BudgetStore
from genjobs.server.storage.store import Store
from tests.harness import SECRET

RUNS = 5
CALLERS = 8
LIMITS = 5000
BUDGETS = "max_queued_per_owner" in {f.name for f in dataclasses.fields(Settings)}


def settings(uri: str, **overrides: object) -> Settings:
    base = make_settings(uri, scratch())
    if BUDGETS:
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    return base


def commands_per_submit(uri: str) -> dict[str, float]:
    """Median commands of a SubmitJob in each case (10 submits each, after a warm-up)."""
    server = ServerThread(settings(uri, max_queued_per_owner=4)).start()
    table: dict[str, float] = {}
    try:
        with server.client("admin", admin=True) as admin, server.client("busy") as busy:
            blocker = busy.submit("topic", topic="blocker", extra={"demo_seconds": "60"})
            while busy.get(blocker.id).status != 2:
                time.sleep(0.01)
            cases = {"no limit": "free", "monthly limit": "capped"}
            if BUDGETS:
                admin.set_budget("capped", 1_000_000)
            for name, owner in cases.items():
                with server.client(owner) as client:
                    client.submit("topic", topic="warm")
                    counts = []
                    for _ in range(3):
                        COUNTER.take(RPC_THREADS)
                        job = client.submit("topic", topic="counted")
                        counts.append(COUNTER.take(RPC_THREADS))
                        client.cancel(job.id)
                        COUNTER.take(RPC_THREADS)
                    table[name] = median(counts)
            if BUDGETS:
                with server.client("near") as client:
                    for i in range(3):  # the first finds none queued: room for 3 without asking
                        client.submit("topic", topic=f"filler {i}")
                    COUNTER.take(RPC_THREADS)
                    client.submit("topic", topic="counted")
                    table["half the cap queued"] = COUNTER.take(RPC_THREADS)
            busy.cancel(blocker.id)
    finally:
        server.stop()
    return table


def limit_rereads(uri: str) -> dict[str, float]:
    """Median ms of 20 re-reads of the limits, with LIMITS stored: what changed
    (today) and every limit (before), both through the same store."""
    store = Store(uri, "bench_limits")
    budget_store = BudgetStore(store)
    budget_store.ensure_indexes()
    for i in range(LIMITS):
        budget_store.set_budget(f"owner{i}", "", 500)
    # As if set an hour ago: a re-read looks back a minute (clock skew) before
    # its last read began, so limits set just now would all be read again.
    budget_store.budgets.update_many({}, {"$inc": {"changed_us": -3_600_000_000}})
    budgets = Budgets(budget_store, lambda job, kind: None, QueueCap(store.jobs, 1000))
    budgets.check_submit("owner0", "", 1)  # the first read: every limit
    timings: dict[str, list[float]] = {"what changed": [], "every limit": []}
    for _ in range(20):
        budgets.stale()
        started = time.perf_counter()
        budgets.check_submit("nobody", "", 1)
        timings["what changed"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        list(budget_store.budgets.find({}))
        timings["every limit"].append((time.perf_counter() - started) * 1000)
    store.database.db.client.drop_database("bench_limits")
    store.close()
    return {name: median(values) for name, values in timings.items()}


def main() -> None:
    mongo = start_mongo()
    print(f"budgets: {'present' if BUDGETS else 'absent'}")
    print("MongoDB commands of one SubmitJob:")
    for name, n in commands_per_submit(mongo.uri).items():
        print(f"  {name:<22} {n:g}")
    if BUDGETS:
        print(f"A re-read of the limits with {LIMITS:,} stored (median of 20):")
        for name, ms in limit_rereads(mongo.uri).items():
            print(f"  {name:<22} {ms:6.2f} ms")
    server = ServerProcess(
        settings(mongo.uri, max_queued_per_owner=1_000_000), scratch() / "server.log"
    ).start()
    with server.client("bench") as c:
        c.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "3600"})
    if BUDGETS:
        with GenJobsClient(server.target, make_token(SECRET, "admin", admin=True)) as admin:
            for i in range(CALLERS):
                admin.set_budget(f"load{i}", 10**12)  # the throughput callers of the limited runs
    assert server.process is not None and mongo.process is not None
    parties = {"server": server.process.pid, "nx-27017": mongo.process.pid}
    free: list[tuple[float, dict[str, float]]] = []
    limited: list[tuple[float, dict[str, float]]] = []
    for run in range(RUNS):  # alternated, so that both see the same machine
        free.append(measured(functools.partial(submit_jobs, server, CALLERS, f"free{run}-"), parties))
        limited.append(measured(lambda: submit_jobs(server, CALLERS), parties))
    server.terminate()
    print(f"SubmitJob, {CALLERS} concurrent callers, {RUNS} runs of 5 s:")
    for name, runs in (("owners without a limit", free), ("owners with a limit", limited)):
        rates = [rate for rate, _ in runs]
        cpu = median([spent["server"] + spent["nx-27017"] for _, spent in runs])
        print(
            f"  {name:<24} median {median(rates):6.0f} jobs/s  runs {[round(r) for r in rates]}"
            f"  server+nx CPU {cpu:4.0f} µs/job"
        )
    mongo.stop()


if __name__ == "__main__":
    main()
