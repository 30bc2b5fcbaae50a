"""Issue 3 figures: no-op jobs end to end beside RQ's SimpleWorker, enqueue-to-start
latency, MongoDB commands per dispatched job.

    .venv/bin/python bench/dispatch_bench.py
"""

from __future__ import annotations

import time

from common import COUNTER, Redis, ServerThread, make_settings, median, noop, percentile, scratch, start_mongo

N = 2000
RUNS = 3


def genjobs_rate(mongo_uri: str) -> tuple[float, float]:
    server = ServerThread(make_settings(mongo_uri, scratch(), generator="noop")).start()
    with server.client("bench") as c:
        COUNTER.take("dispatcher")
        COUNTER.take("lease")
        started = time.monotonic()
        for i in range(N):
            c.submit("topic", topic=f"noop {i}")
        while c.stats().by_status and not (
            len(c.stats().by_status) == 1 and c.stats().by_status[0].count == N
        ):
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        per_job = (COUNTER.take("dispatcher") + COUNTER.take("lease")) / N
    server.stop()
    return N / elapsed, per_job


def rq_rate(redis: Redis) -> float:
    import redis as redis_lib
    from rq import Queue, SimpleWorker

    connection = redis_lib.Redis(port=redis.port)
    queue = Queue("bench", connection=connection)
    started = time.monotonic()
    for _ in range(N):
        queue.enqueue(noop)
    SimpleWorker([queue], connection=connection).work(burst=True, logging_level="WARNING")
    elapsed = time.monotonic() - started
    redis.client.flushall()
    return N / elapsed


def start_latency(mongo_uri: str) -> list[float]:
    server = ServerThread(make_settings(mongo_uri, scratch(), generator="noop")).start()
    latencies = []
    with server.client("latency") as c:
        for i in range(100):
            time.sleep(0.02)  # idle dispatcher
            t0 = time.time()
            job = c.submit("topic", topic=f"l{i}")
            while not (done := c.get(job.id)).start_time.seconds:
                time.sleep(0.005)
            latencies.append((done.start_time.ToNanoseconds() / 1e9 - t0) * 1000)
    server.stop()
    return latencies


def main() -> None:
    mongo = start_mongo()
    redis = Redis()
    ours, theirs, commands = [], [], []
    for _ in range(RUNS):
        rate, per_job = genjobs_rate(mongo.uri)
        ours.append(rate)
        commands.append(per_job)
        theirs.append(rq_rate(redis))
    redis.stop()
    print(f"{N} no-op jobs, submit then wait for all, {RUNS} runs:")
    print(f"  genjobs          median {median(ours):6.0f} jobs/s  runs {[round(x) for x in ours]}")
    print(f"  RQ SimpleWorker  median {median(theirs):6.0f} jobs/s  runs {[round(x) for x in theirs]}")
    print(f"  ratio            {median(ours) / median(theirs):.2f}x RQ")
    print(f"MongoDB commands per dispatched job (dispatcher + lease keeper): {median(commands):.2f}")
    lat = start_latency(mongo.uri)
    print(
        f"Enqueue-to-start on an idle dispatcher: p50 {percentile(lat, 50):.1f} ms"
        f"  p99 {percentile(lat, 99):.1f} ms"
    )
    mongo.stop()


if __name__ == "__main__":
    main()
