"""Issue 2 figures: MongoDB commands per RPC, SubmitJob throughput beside RQ's
enqueue rate, ListJobs latency with 100k jobs stored for one user.

    .venv/bin/python bench/service_bench.py
"""

from __future__ import annotations

import threading
import time

from common import (
    COUNTER,
    Redis,
    ServerProcess,
    ServerThread,
    make_settings,
    median,
    noop,
    percentile,
    scratch,
    start_mongo,
)

from server.store import Store

# Where the server sends an RPC's commands from: the executor's threads,
# and the event loop's (SubmitJob inserts from there).
RPC_THREADS = ("rpc", "server-loop")
CALLERS = 8
SECONDS = 5.0
RUNS = 5


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


def submit_rate(server: ServerThread | ServerProcess) -> float:
    clients = [server.client(f"load{i}") for i in range(CALLERS)]
    count = [0] * CALLERS
    deadline = time.monotonic() + SECONDS

    def caller(i: int) -> None:
        while time.monotonic() < deadline:
            clients[i].submit("topic", topic="throughput")
            count[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / (time.monotonic() - started)


def rq_rate(redis: Redis) -> float:
    import redis as redis_lib
    from rq import Queue

    queues = [Queue("bench", connection=redis_lib.Redis(port=redis.port)) for _ in range(CALLERS)]
    count = [0] * CALLERS
    deadline = time.monotonic() + SECONDS

    def caller(i: int) -> None:
        while time.monotonic() < deadline:
            queues[i].enqueue(noop)
            count[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum(count) / (time.monotonic() - started)
    redis.client.flushall()
    return rate


def list_latency(mongo_uri: str, settings_dir: object) -> tuple[list[float], list[float]]:
    settings = make_settings(mongo_uri, scratch(), generator="noop")
    store = Store(mongo_uri, settings.db_name)
    store.ensure_indexes()
    total = 100_000
    for start in range(0, total, 5000):
        docs = [
            store.new_job_doc(
                "heavy",
                "TOPIC",
                {
                    "topic": f"topic {i}",
                    "keywords": [],
                    "word_count": 800,
                    "tone": "",
                    "source_text": "",
                    "extra": {},
                },
            )
            for i in range(start, start + 5000)
        ]
        for d in docs:
            d.update(status="COMPLETED", queue="none")
        store.jobs.insert_many(docs)
    store.close()
    server = ServerThread(settings).start()
    firsts, nexts = [], []
    with server.client("heavy") as c:
        for _ in range(30):
            t = time.perf_counter()
            page = c.list()
            firsts.append((time.perf_counter() - t) * 1000)
            assert page.total_size == total
            token = page.next_page_token
            for _ in range(3):
                t = time.perf_counter()
                page = c.list(page_token=token)
                nexts.append((time.perf_counter() - t) * 1000)
                token = page.next_page_token
    server.stop()
    return firsts, nexts


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
    ours, theirs = [], []
    for _ in range(RUNS):
        ours.append(submit_rate(server))
        theirs.append(rq_rate(redis))
    redis.stop()
    server.terminate()
    print(f"SubmitJob, {CALLERS} concurrent callers, {RUNS} runs of {SECONDS:g} s:")
    print(f"  genjobs  median {median(ours):7.0f} jobs/s  runs {[round(x) for x in ours]}")
    print(f"  RQ       median {median(theirs):7.0f} jobs/s  runs {[round(x) for x in theirs]}")
    print(f"  ratio    {median(ours) / median(theirs):.2f}x RQ", flush=True)
    firsts, nexts = list_latency(mongo.uri, None)
    print("ListJobs with 100,000 jobs stored for one user (page size 50):")
    print(f"  first page  p50 {percentile(firsts, 50):6.1f} ms  p99 {percentile(firsts, 99):6.1f} ms")
    print(f"  later pages p50 {percentile(nexts, 50):6.1f} ms  p99 {percentile(nexts, 99):6.1f} ms")
    mongo.stop()


if __name__ == "__main__":
    main()
