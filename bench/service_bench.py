"""Issue 2 figures: MongoDB commands per RPC, SubmitJob throughput beside RQ's
enqueue rate, ListJobs latency with 100k jobs stored for one user.

    .venv/bin/python bench/service_bench.py
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from common import (
    COUNTER,
    Redis,
    ServerProcess,
    ServerThread,
    make_settings,
    measured,
    median,
    noop,
    percentile,
    scratch,
    start_mongo,
)

from genjobs.server.storage.paging import TOTAL_SIZE_CAP
from genjobs.server.storage.store import Store
from tests.harness import seed_job

# Where the server sends an RPC's commands from: the executor's threads,
# and the event loop's (SubmitJob inserts from there).
RPC_THREADS = ("rpc", "server-loop")
CALLERS = 8
SECONDS = 5.0
RUNS = 5
LIGHT_JOBS = 500  # ListJobs' user beside the 100,000 jobs' one


def commands_per_rpc(server: ServerThread) -> dict[str, int]:
    with server.client("counter") as c:
        for i in range(3):
            c.submit("topic", topic=f"warm {i}")
        blocker = c.submit("topic", topic="blocker", extra={"demo_seconds": "30"})
        while c.get(blocker.id).status != 2:
            time.sleep(0.01)
        table = {}
        COUNTER.take(RPC_THREADS)
        job = c.submit("topic", topic="counted")
        table["SubmitJob"] = COUNTER.take(RPC_THREADS)
        c.get(job.id)
        table["GetJob"] = COUNTER.take(RPC_THREADS)
        c.cancel(job.id)
        table["CancelJob (queued)"] = COUNTER.take(RPC_THREADS)
        first = c.list(page_size=2)
        table["ListJobs first page"] = COUNTER.take(RPC_THREADS)
        c.list(page_size=2, page_token=first.next_page_token)
        table["ListJobs next page"] = COUNTER.take(RPC_THREADS)
        c.cancel(blocker.id)
        return table


def hammer(calls: list[Callable[[], object]]) -> tuple[int, float]:
    """Each of `calls` in a thread of its own, over and over for SECONDS:
    (calls made, seconds taken)."""
    done = [0] * len(calls)
    deadline = time.monotonic() + SECONDS

    def caller(i: int) -> None:
        while time.monotonic() < deadline:
            calls[i]()
            done[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(calls))]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), time.monotonic() - started


def submit_jobs(
    server: ServerThread | ServerProcess, callers: int = CALLERS, owner_prefix: str = "load"
) -> tuple[int, float]:
    """SubmitJob from `callers` threads, each with a channel (and owner) of its own."""
    clients = [server.client(f"{owner_prefix}{i}") for i in range(callers)]
    try:
        return hammer([functools.partial(c.submit, "topic", topic="throughput") for c in clients])
    finally:
        for c in clients:
            c.close()


def rq_enqueues(redis: Redis) -> tuple[int, float]:
    """RQ's enqueue of a no-op job from CALLERS threads, each with a connection of its own."""
    import redis as redis_lib
    from rq import Queue

    queues = [Queue("bench", connection=redis_lib.Redis(port=redis.port)) for _ in range(CALLERS)]
    try:
        return hammer([functools.partial(q.enqueue, noop) for q in queues])
    finally:
        redis.client.flushall()


def list_latency(mongo_uri: str, settings_dir: object) -> tuple[list[float], list[float], list[float]]:
    """ListJobs' first and later pages of a user with 100,000 jobs, and the
    first page of a user with LIGHT_JOBS of them (ms)."""
    settings = make_settings(mongo_uri, scratch(), generator="noop")
    store = Store(mongo_uri, settings.db_name)
    store.ensure_indexes()
    total = 100_000
    params = {"topic": "", "keywords": [], "word_count": 800, "tone": "", "source_text": "", "extra": {}}

    def store_completed(owner: str, numbers: range) -> None:
        docs = [seed_job(store, owner, {**params, "topic": f"topic {i}"}) for i in numbers]
        for d in docs:
            d.update(status="COMPLETED", queue="none")
        store.database.jobs.insert_many(docs)

    for start in range(0, total, 5000):
        store_completed("heavy", range(start, start + 5000))
    # A user with a page's worth and more, below the total's cap: counted, not capped.
    store_completed("light", range(LIGHT_JOBS))
    store.close()
    server = ServerThread(settings).start()
    firsts, nexts, lights = [], [], []
    with server.client("heavy") as c:
        for _ in range(30):
            t = time.perf_counter()
            page = c.list()
            firsts.append((time.perf_counter() - t) * 1000)
            assert page.total_size == min(total, TOTAL_SIZE_CAP)
            token = page.next_page_token
            for _ in range(3):
                t = time.perf_counter()
                page = c.list(page_token=token)
                nexts.append((time.perf_counter() - t) * 1000)
                token = page.next_page_token
    with server.client("light") as c:
        for _ in range(30):
            t = time.perf_counter()
            page = c.list()
            lights.append((time.perf_counter() - t) * 1000)
            assert page.total_size == LIGHT_JOBS
    server.stop()
    return firsts, nexts, lights


def main() -> None:
    mongo = start_mongo()
    demo = ServerThread(make_settings(mongo.uri, scratch())).start()
    print("MongoDB commands per RPC (pymongo CommandListener, RPC threads and event loop):", flush=True)
    for name, n in commands_per_rpc(demo).items():
        print(f"  {name:<22} {n}", flush=True)
    demo.stop()
    # The server in a process of its own, as deployed (not sharing the
    # callers' GIL), with its dispatcher busy on one long job: like RQ's
    # enqueue with no worker, this measures taking jobs in.
    server = ServerProcess(make_settings(mongo.uri, scratch()), scratch() / "server.log").start()
    with server.client("bench") as c:
        c.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "3600"})
    redis = Redis()
    assert server.process is not None and mongo.process is not None
    ours_parties = {"server": server.process.pid, "nx-27017": mongo.process.pid}
    rq_parties = {"redis-server": redis.process.pid}
    ours, theirs = [], []
    for _ in range(RUNS):  # alternated, so that both see the same machine
        ours.append(measured(lambda: submit_jobs(server), ours_parties))
        theirs.append(measured(lambda: rq_enqueues(redis), rq_parties))
    # With callers enough to keep both cores busy: the most this machine gives.
    saturated = [measured(lambda: submit_jobs(server, 4 * CALLERS), ours_parties) for _ in range(3)]
    redis.stop()
    server.terminate()
    print(f"SubmitJob, {CALLERS} concurrent callers, {RUNS} runs of {SECONDS:g} s, alternated with RQ:")
    for name, runs in (("genjobs", ours), ("RQ", theirs)):
        rates = [rate for rate, _ in runs]
        print(f"  {name:<8} median {median(rates):7.0f} jobs/s  runs {[round(x) for x in rates]}")
    ratio = median([r for r, _ in ours]) / median([r for r, _ in theirs])
    print(f"  ratio    {ratio:.2f}x RQ")
    print("  CPU per job, median of the runs (callers: this process's threads):")
    for name, runs in (("genjobs", ours), ("RQ", theirs)):
        parties = runs[0][1]
        spent = {party: median([cpu[party] for _, cpu in runs]) for party in parties}
        shares = "  ".join(f"{party} {us:4.0f} µs" for party, us in spent.items())
        print(f"  {name:<8} {shares}  = {sum(spent.values()):4.0f} µs")
    rates = [rate for rate, _ in saturated]
    runs_text = [round(x) for x in rates]
    print(f"  genjobs with {4 * CALLERS} callers: median {median(rates):.0f} jobs/s  runs {runs_text}")
    firsts, nexts, lights = list_latency(mongo.uri, None)
    print("ListJobs with 100,000 jobs stored for one user (page size 50):")
    print(f"  first page  p50 {percentile(firsts, 50):6.1f} ms  p99 {percentile(firsts, 99):6.1f} ms")
    print(f"  later pages p50 {percentile(nexts, 50):6.1f} ms  p99 {percentile(nexts, 99):6.1f} ms")
    print(
        f"  first page of a user with {LIGHT_JOBS} jobs beside them p50 {percentile(lights, 50):6.1f} ms"
        f"  p99 {percentile(lights, 99):6.1f} ms"
    )
    mongo.stop()


if __name__ == "__main__":
    main()
