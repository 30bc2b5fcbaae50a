"""Issue 3 figures: no-op jobs end to end beside RQ's SimpleWorker and Celery's solo
worker, enqueue-to-start latency, MongoDB commands per dispatched job; and
(issue 30) the dispatcher alone draining a queue beside RQ's worker alone,
enqueue to the generator's call, and the CPU a job costs each process end to end.

    .venv/bin/python bench/dispatch_bench.py
    .venv/bin/python bench/dispatch_bench.py --lanes   # the no-op rate at GENJOBS_CONCURRENCY 1, 2, 3
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymongo
from common import (
    COUNTER,
    Redis,
    ServerProcess,
    ServerThread,
    busy_share,
    core_count,
    machine_cpu,
    make_settings,
    median,
    noop,
    percentile,
    process_cpu,
    scratch,
    start_mongo,
)

from tests.harness import wait_for

N = 2000
DISPATCH_THREADS = ("dispatcher", "lease", "event-log")
BENCH = Path(__file__).resolve().parent
RUNS = 3
DEMO_JOBS, DEMO_SECONDS = 30, 0.2  # jobs whose time is the generator's: what lanes are for


def genjobs_rate(mongo_uri: str, concurrency: int = 1, jobs: int = N, demo_seconds: float = 0.0) -> float:
    """`jobs` no-op jobs (or demo jobs of `demo_seconds`) submitted to a server
    process, until the last one completed.

    Jobs start in submission order, `concurrency` at a time, so once the last
    `concurrency` of them completed every one did; the bench follows them with
    WatchJob, not by polling.
    """
    generator = "demo" if demo_seconds else "noop"
    settings = make_settings(mongo_uri, scratch(), generator=generator, concurrency=concurrency)
    server = ServerProcess(settings, scratch() / "s.log").start()
    rate = drain(server, jobs, concurrency, {"demo_seconds": str(demo_seconds)} if demo_seconds else {})
    server.terminate()
    return rate


def drain(server: ServerProcess, jobs: int, lanes: int = 1, extra: dict[str, str] | None = None) -> float:
    """Submit `jobs` jobs one after another and follow the last `lanes` to
    their end: jobs a second, from the first submit to the last completion."""
    with server.client("bench") as c:
        started = time.monotonic()
        last = [c.submit("topic", topic=f"noop {i}", extra=extra or {}).id for i in range(jobs)][-lanes:]
        for job_id in last:
            for _ in c.watch(job_id):
                pass
        elapsed = time.monotonic() - started
        assert all(c.get(job_id).status == 3 for job_id in last)  # COMPLETED
    return jobs / elapsed


def drain_rate(mongo_uri: str, jobs: int = N) -> tuple[float, float]:
    """The dispatcher alone: `jobs` no-op jobs are queued on a server that
    keeps a gap of an hour after its one job, then a second server without
    the gap drains them. Jobs a second from the first start to the last end
    (read from the database afterwards), and the submits alone a second (to
    the server that runs nothing meanwhile): end to end can be no quicker."""
    settings = make_settings(
        mongo_uri, scratch(), generator="noop", job_gap_seconds=3600.0, max_queued_per_owner=jobs + 10
    )
    holder = ServerProcess(settings, scratch() / "hold.log").start()
    with holder.client("bench") as c:
        for _ in c.watch(c.submit("topic", topic="before the gap").id):
            pass
        started = time.monotonic()
        last = [c.submit("topic", topic=f"queued {i}").id for i in range(jobs)][-1]
        submits = jobs / (time.monotonic() - started)
    holder.terminate()
    drainer = ServerProcess(replace(settings, job_gap_seconds=0.0), scratch() / "drain.log").start()
    with drainer.client("bench") as c:
        for _ in c.watch(last):
            pass
    drainer.terminate()
    database: pymongo.database.Database[dict[str, object]] = pymongo.MongoClient(mongo_uri)[settings.db_name]
    runs = list(database.jobs.find({}, {"started_us": 1, "ended_us": 1}))
    runs = sorted(runs, key=lambda d: int(d["started_us"]))[1:]  # type: ignore[call-overload]
    span = max(int(d["ended_us"]) for d in runs) - int(runs[0]["started_us"])  # type: ignore[call-overload]
    database.client.close()
    return len(runs) / (span / 1e6), submits


def commands_per_job(mongo_uri: str, jobs: int = 300) -> float:
    """MongoDB commands sent per job by the dispatcher, its lease keeper and the
    event log that stores its events (in-process, counted by thread)."""
    server = ServerThread(make_settings(mongo_uri, scratch(), generator="noop")).start()
    with server.client("count") as c:
        for thread in DISPATCH_THREADS:
            COUNTER.take(thread)
        ids = [c.submit("topic", topic=f"counted {i}").id for i in range(jobs)]
        for _ in c.watch(ids[-1]):
            pass
        assert server.app is not None
        server.app.event_log.flush()
        per_job = sum(COUNTER.take(thread) for thread in DISPATCH_THREADS) / jobs
    server.stop()
    return per_job


def rq_rate(redis: Redis, worker_alone: bool = False) -> float:
    """`N` jobs enqueued, then RQ's SimpleWorker until they are done: jobs a
    second over both, or (`worker_alone`) over the worker's part alone."""
    import redis as redis_lib
    from rq import Queue, SimpleWorker

    connection = redis_lib.Redis(port=redis.port)
    queue = Queue("bench", connection=connection)
    started = time.monotonic()
    for _ in range(N):
        queue.enqueue(noop)
    if worker_alone:
        started = time.monotonic()
    # A name of its own: a second worker named like the last (same host and pid) waited about 60 s.
    worker = SimpleWorker([queue], connection=connection, name=uuid.uuid4().hex)
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.monotonic() - started
    redis.client.flushall()
    return N / elapsed


def celery_rate(redis: Redis) -> float:
    """Celery's solo worker (one task at a time, like the dispatcher) on the same redis."""
    ensure_celery()
    env = {**os.environ, "BENCH_REDIS_URL": redis.url, "PYTHONPATH": str(BENCH)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "-P",
            "solo",
            "-c",
            "1",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "WARNING",
        ],
        cwd=BENCH,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sys.path.insert(0, str(BENCH))
        os.environ["BENCH_REDIS_URL"] = redis.url
        import celery_app

        celery_app._counter.delete("celery-done")
        celery_app.noop.delay()  # the worker is up once it ran this one
        wait_for(lambda: int(celery_app._counter.get("celery-done") or 0) == 1, timeout=60)
        celery_app._counter.delete("celery-done")
        started = time.monotonic()
        for _ in range(N):
            celery_app.noop.delay()
        wait_for(lambda: int(celery_app._counter.get("celery-done") or 0) >= N, timeout=300, interval=0.01)
        return N / (time.monotonic() - started)
    finally:
        worker.terminate()
        worker.wait(30)
        redis.client.flushall()


def ensure_celery() -> None:
    try:
        import celery  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "celery[redis]"], check=True)


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


def generator_latency(mongo_uri: str) -> list[float]:
    """Enqueue to the generator's call (ms) on an idle dispatcher: what a user
    waits for before work begins, beside `start_latency`'s started stamp
    (taken when the claim is decided). In-process, the noop generator's
    `generate` wrapped to note when it is called."""
    from genjobs.server.generators.noop import NoopGenerator

    called: dict[str, float] = {}
    generate = NoopGenerator.generate

    def noting(self: NoopGenerator, job: Any, report: Any, cancelled: Any) -> Any:
        called[job.id] = time.time()
        return generate(self, job, report, cancelled)

    NoopGenerator.generate = noting  # type: ignore[method-assign]
    server = ServerThread(make_settings(mongo_uri, scratch(), generator="noop")).start()
    latencies = []
    try:
        with server.client("latency") as c:
            for i in range(100):
                time.sleep(0.02)  # idle dispatcher
                t0 = time.time()
                job = c.submit("topic", topic=f"g{i}")
                wait_for(lambda job_id=job.id: job_id in called, timeout=10, interval=0.0005)
                latencies.append((called[job.id] - t0) * 1000)
    finally:
        server.stop()
        NoopGenerator.generate = generate  # type: ignore[method-assign]
    return latencies


def cpu_split(mongo_uri: str, jobs: int = 1000) -> tuple[float, float, dict[str, float]]:
    """End to end (submits one after another while the server runs them): jobs
    a second, the machine's busy share, and µs of CPU a job spent by the
    server, nx-27017 and this client process."""
    settings = make_settings(mongo_uri, scratch(), generator="noop", max_queued_per_owner=jobs + 10)
    server = ServerProcess(settings, scratch() / "split.log").start()
    assert server.process is not None
    mongo_pid = _mongo_pid(mongo_uri)
    with server.client("bench") as c:
        for _ in c.watch(c.submit("topic", topic="warm-up").id):
            pass
        before = process_cpu(server.process.pid), process_cpu(mongo_pid), time.process_time()
        machine, started = machine_cpu(), time.monotonic()
        last = [c.submit("topic", topic=f"split {i}").id for i in range(jobs)][-1]
        for _ in c.watch(last):
            pass
        elapsed, busy = time.monotonic() - started, busy_share(machine)
        after = process_cpu(server.process.pid), process_cpu(mongo_pid), time.process_time()
    server.terminate()
    spent = [(b - a) / jobs * 1e6 for a, b in zip(before, after, strict=True)]
    return jobs / elapsed, busy, {"server": spent[0], "nx-27017": spent[1], "client": spent[2]}


def _mongo_pid(mongo_uri: str) -> int:
    """The pid of the nx-27017 serving `mongo_uri` (it says so in serverStatus)."""
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri)
    try:
        return int(client.admin.command("serverStatus")["pid"])
    finally:
        client.close()


def lanes() -> None:
    """The rate of no-op jobs, and of demo jobs of DEMO_SECONDS, with 1, 2 and
    3 jobs running at once (GENJOBS_CONCURRENCY)."""
    mongo = start_mongo()
    for jobs, seconds, what in (
        (N, 0.0, "no-op jobs"),
        (DEMO_JOBS, DEMO_SECONDS, f"demo jobs of {DEMO_SECONDS} s"),
    ):
        print(f"{jobs} {what}, submit then wait for all, {RUNS} runs, by GENJOBS_CONCURRENCY:")
        for concurrency in (1, 2, 3):
            rates = [genjobs_rate(mongo.uri, concurrency, jobs, seconds) for _ in range(RUNS)]
            print(f"  {concurrency}  median {median(rates):6.1f} jobs/s  runs {[round(x, 1) for x in rates]}")
    mongo.stop()


def main() -> None:
    if "--lanes" in sys.argv[1:]:
        lanes()
        return
    mongo = start_mongo()
    redis = Redis()
    ours, theirs, celeries = [], [], []
    for _ in range(RUNS):
        ours.append(genjobs_rate(mongo.uri))
        theirs.append(rq_rate(redis))
        celeries.append(celery_rate(redis))
    print(f"{N} no-op jobs, submit then wait for all, {RUNS} runs:")
    print(f"  genjobs          median {median(ours):6.0f} jobs/s  runs {[round(x) for x in ours]}")
    print(f"  RQ SimpleWorker  median {median(theirs):6.0f} jobs/s  runs {[round(x) for x in theirs]}")
    print(f"  Celery solo      median {median(celeries):6.0f} jobs/s  runs {[round(x) for x in celeries]}")
    print(
        f"  ratio            {median(ours) / median(theirs):.2f}x RQ,"
        f" {median(ours) / median(celeries):.2f}x Celery"
    )
    drains, submits, workers = [], [], []
    for _ in range(RUNS):
        drained, submitted = drain_rate(mongo.uri)
        drains.append(drained)
        submits.append(submitted)
        workers.append(rq_rate(redis, worker_alone=True))
    print(f"{N} queued no-op jobs drained, the dispatcher or the worker alone, {RUNS} runs:")
    print(f"  genjobs dispatcher  median {median(drains):6.0f} jobs/s  runs {[round(x) for x in drains]}")
    print(f"  RQ SimpleWorker     median {median(workers):6.0f} jobs/s  runs {[round(x) for x in workers]}")
    print(f"  ratio               {median(drains) / median(workers):.2f}x RQ")
    print(
        f"  the submits alone, one after another to a server running nothing: median {median(submits):.0f}/s"
        f" runs {[round(x) for x in submits]}; end to end can be no quicker"
        f" ({median(submits) / median(theirs):.2f}x RQ's end to end)"
    )
    redis.stop()
    per_job = commands_per_job(mongo.uri)
    print(f"MongoDB commands per dispatched job (dispatcher, lease keeper, event log): {per_job:.2f}")
    lat = start_latency(mongo.uri)
    print(
        f"Enqueue-to-start on an idle dispatcher: p50 {percentile(lat, 50):.1f} ms"
        f"  p99 {percentile(lat, 99):.1f} ms"
    )
    lat = generator_latency(mongo.uri)
    print(
        f"Enqueue to the generator's call, idle: p50 {percentile(lat, 50):.1f} ms"
        f"  p99 {percentile(lat, 99):.1f} ms"
    )
    rate, busy, split = cpu_split(mongo.uri)
    print("End to end, CPU a job: " + ", ".join(f"{name} {micros:.0f} µs" for name, micros in split.items()))
    # What 1.5x RQ would ask of the CPU a job, beside submit_floor.py's floor of it.
    whole, cores = sum(split.values()), core_count()
    kept_busy, goal = rate * whole / 1e6, 1.5 * median(theirs)
    print(
        f"  {rate:.0f} jobs/s, so the three kept {kept_busy:.2f} of {cores} cores busy"
        f" (the machine {busy:.0%} busy); 1.5x RQ ({goal:.0f} jobs/s) needs at most"
        f" {kept_busy / goal * 1e6:.0f} µs of CPU a job at that,"
        f" {cores / goal * 1e6:.0f} µs with every core busy"
    )
    # nx-27017 runs one database's commands one at a time (a lock a database,
    # one interpreter), so its CPU a job alone bounds the rate.
    database = split["nx-27017"]
    print(f"  nx-27017's {database:.0f} µs a job alone bound it at {1e6 / database:.0f} jobs/s")
    mongo.stop()


if __name__ == "__main__":
    main()
