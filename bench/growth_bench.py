"""Issue 17 figures: what the hot paths cost as the history grows (1k to 1M
stored jobs) and with a deep queue, on one nx-27017 and one server process
running the noop generator.

    .venv/bin/python bench/growth_bench.py                      # 1k, 10k, 100k, 1M
    .venv/bin/python bench/growth_bench.py --sizes 1000,10000   # fewer sizes

The history is inserted directly, in batches, as the documents SubmitJob
writes (`JobStore.new_job`), finished: mostly COMPLETED, some FAILED and
CANCELLED, all but 5 of them owned by one big user. Job events are not
inserted (they would triple the fill time); every event query is by job id
or by time. At each size a fresh server process measures, with the
dispatcher idle between the measurements:

- idle CPU of the server and of nx-27017 over an idle window (/proc/<pid>/stat);
- SubmitJob p50/p99 from 8 callers (the noop dispatcher runs them meanwhile);
- GetJob p50 of stored jobs;
- no-op dispatch rate: 500 jobs submitted, until the last one completed;
- ListJobs first and later page p50, for the big user and a user with 5 jobs.

Once more at the first and the last size, with 10,000 ready jobs inserted
before the server starts: claims a second while it works through them, and
SubmitJob p50 meanwhile; and what one candidate query and one claim cost
then (MongoDB commands and time), measured with the Store directly.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from dataclasses import replace
from typing import Any

import pymongo
from common import ServerProcess, make_settings, percentile, process_cpu, scratch, start_mongo

from genjobs.server.storage.database import Database
from genjobs.server.storage.store import Store
from tests.harness import seed_job

CALLERS = 8
# Fewer calls for a slow database (today's code at 100k runs a few jobs a second).
CALLS_PER_CALLER = int(os.environ.get("GROWTH_CALLS", "40"))
GETS = 200
LIST_RUNS = int(os.environ.get("GROWTH_LIST_RUNS", "20"))
DISPATCH_JOBS = int(os.environ.get("GROWTH_DISPATCH_JOBS", "500"))
IDLE_SECONDS = float(os.environ.get("GROWTH_IDLE_SECONDS", "60"))
SETTLE_SECONDS = 5.0
QUEUED = 10_000
CLAIM_WINDOW_SECONDS = 10.0
BATCH = 2000
BIG, SMALL = "big", "small"
PARAMS = {
    "topic": "history",
    "keywords": ["a", "b"],
    "word_count": 800,
    "tone": "",
    "source_text": "",
    "extra": {},
}


def history_docs(store: Store, owner: str, n: int) -> list[dict[str, Any]]:
    """`n` finished jobs as SubmitJob stores them, then moved to a final status."""
    docs = [seed_job(store, owner, dict(PARAMS)) for _ in range(n)]
    for doc in docs:
        roll = random.random()
        started = doc["ck"] + 1000
        if roll < 0.9:
            doc.update(
                store.queue.completion({"content": "x" * 200, "title": "t", "word_count": 40}, started)
            )
        else:
            status = "FAILED" if roll < 0.97 else "CANCELLED"
            doc.update(status=status, ended_us=started + 1000, updated_us=started + 1000)
        doc.update(queue="none", attempt=1, epoch=1, started_us=started)
    return docs


def fill(store: Store, have: int, target: int) -> int:
    """Insert history until `target` jobs are stored; returns how many are stored."""
    if have == 0:
        store.database.jobs.insert_many(history_docs(store, SMALL, 5))
        have = 5
    started = time.monotonic()
    # A big fill goes in unindexed and is indexed after, one pass an index
    # (nx-27017 keeps 15 indexes up to date document by document otherwise).
    rebuild = target - have > 50_000
    if rebuild:
        store.database.jobs.drop_indexes()
    while have < target:
        n = min(BATCH, target - have)
        store.database.jobs.insert_many(history_docs(store, BIG, n))
        have += n
    if rebuild:
        store.ensure_indexes()
    print(f"  filled to {have:,} jobs in {time.monotonic() - started:.0f} s", flush=True)
    return have


def queue_ready(store: Store, n: int) -> None:
    """`n` ready no-op jobs, as SubmitJob stores them."""
    for start in range(0, n, BATCH):
        docs = [seed_job(store, BIG, dict(PARAMS)) for _ in range(min(BATCH, n - start))]
        store.database.jobs.insert_many(docs)


def timed(call: Any) -> float:
    t = time.perf_counter()
    call()
    return (time.perf_counter() - t) * 1000


def submit_latencies(server: ServerProcess, calls: int = CALLS_PER_CALLER) -> list[float]:
    """SubmitJob latency (ms) from CALLERS threads, each with its own channel."""
    clients = [server.client(f"load{i}") for i in range(CALLERS)]
    out: list[float] = []
    lock = threading.Lock()

    def caller(c: Any) -> None:
        mine = [timed(lambda: c.submit("topic", topic="growth")) for _ in range(calls)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=caller, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    return out


def dispatch_rate(server: ServerProcess) -> float:
    """DISPATCH_JOBS no-op jobs submitted one after another, until the last one completed."""
    with server.client("dispatch") as c:
        started = time.monotonic()
        last = None
        for i in range(DISPATCH_JOBS):
            last = c.submit("topic", topic=f"noop {i}")
        assert last is not None
        for _ in c.watch(last.id):
            pass
        return DISPATCH_JOBS / (time.monotonic() - started)


def list_p50(server: ServerProcess, user: str) -> tuple[float, float]:
    """ListJobs first page and later page p50 (ms), page size 50."""
    firsts, laters = [], []
    with server.client(user) as c:
        for _ in range(LIST_RUNS):
            firsts.append(timed(lambda: c.list()))
            page = c.list()
            if page.next_page_token:
                token = page.next_page_token
                laters.append(timed(lambda t=token: c.list(page_token=t)))
    return statistics.median(firsts), statistics.median(laters) if laters else 0.0


def idle_cpu(pids: dict[str, int]) -> dict[str, float]:
    """Percent of one core each process uses over IDLE_SECONDS with nothing queued."""
    before = {name: process_cpu(pid) for name, pid in pids.items()}
    time.sleep(IDLE_SECONDS)
    return {name: 100 * (process_cpu(pid) - before[name]) / IDLE_SECONDS for name, pid in pids.items()}


def wait_idle(store: Store) -> None:
    """Until nothing is queued or running."""
    while store.database.jobs.find_one({"queue": "ready"}, {"_id": 1}) or store.database.jobs.find_one(
        {"status": "PROCESSING"}, {"_id": 1}
    ):
        time.sleep(0.2)


def start_server(uri: str, db_name: str) -> ServerProcess:
    # Production timings (poll 0.5 s, lease 10 s), not the tests' fast ones.
    settings = replace(
        make_settings(uri, scratch(), generator="noop", db_name=db_name),
        poll_seconds=0.5,
        lease_seconds=10.0,
        heartbeat_seconds=15.0,
        retry_base_seconds=1.0,
    )
    return ServerProcess(settings, scratch() / "server.log").start()


def measure_size(uri: str, db_name: str, store: Store, mongo_pid: int, stored: int) -> dict[str, float]:
    """Every figure at one history size (server started fresh)."""
    server = start_server(uri, db_name)
    assert server.process is not None
    row: dict[str, float] = {"stored": stored}
    time.sleep(SETTLE_SECONDS)  # start-up sweeps and recovery done
    cpu = idle_cpu({"server": server.process.pid, "db": mongo_pid})
    row["idle_server"], row["idle_db"] = cpu["server"], cpu["db"]
    lat = submit_latencies(server)
    row["submit_p50"], row["submit_p99"] = percentile(lat, 50), percentile(lat, 99)
    wait_idle(store)
    ids = [
        str(d["_id"]) for d in store.database.jobs.find({"owner": BIG}, {"_id": 1}).sort("ck", -1).limit(GETS)
    ]
    with server.client(BIG) as c:
        row["get_p50"] = statistics.median(timed(lambda i=i: c.get(i)) for i in ids)
    row["dispatch_rate"] = dispatch_rate(server)
    row["list_big_first"], row["list_big_later"] = list_p50(server, BIG)
    row["list_small_first"], row["list_small_later"] = list_p50(server, SMALL)
    server.terminate()
    return row


def measure_deep_queue(uri: str, db_name: str, store: Store, stored: int) -> dict[str, float]:
    """Claims a second and SubmitJob p50 with QUEUED ready jobs waiting."""
    queue_ready(store, QUEUED)
    row: dict[str, float] = {"stored": stored}
    row.update(claim_cost(store))
    server = start_server(uri, db_name)
    ready = lambda: store.jobs.count({"queue": "ready"})  # noqa: E731 - the ready lane only
    time.sleep(2.0)
    before, t0 = ready(), time.monotonic()
    time.sleep(CLAIM_WINDOW_SECONDS)
    after, t1 = ready(), time.monotonic()
    row["claims_per_s"] = (before - after) / (t1 - t0)
    row["queued_submit_p50"] = percentile(submit_latencies(server, 20), 50)
    server.terminate()
    store.database.jobs.delete_many({"queue": "ready"})  # the rest would run in the next size's figures
    return row


def claim_cost(store: Store) -> dict[str, float]:
    """Time of the dispatcher's candidate query and of one claim on this
    queue (the Store's own methods; one MongoDB command each)."""
    runnable = [timed(lambda: store.queue.runnable(64)) for _ in range(7)]
    claims = []
    for ck_oid in store.queue.runnable(7):
        claims.append(timed(lambda oid=ck_oid[1]: store.queue.claim(oid, "bench", 10.0)))
    # Those claimed ones are not run: put them back in the ready lane.
    store.database.jobs.update_many(
        {"worker": "bench"}, {"$set": {"status": "QUEUED", "queue": "ready", "worker": ""}}
    )
    return {"candidates_ms": statistics.median(runnable), "claim_ms": statistics.median(claims)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    random.seed(17)
    mongo = start_mongo()
    assert mongo.process is not None
    db_name = "growth"
    database = Database(mongo.uri, db_name)
    # The fill's big batches through a client without the service's 30 s socket timeout.
    database.jobs = pymongo.MongoClient(mongo.uri)[db_name]["jobs"]
    store = Store.over(database)
    store.ensure_indexes()
    rows, deep = [], []
    stored = 0
    for size in sizes:
        stored = fill(store, stored, size)
        rows.append(measure_size(mongo.uri, db_name, store, mongo.process.pid, stored))
        print("  ", {k: round(v, 2) for k, v in rows[-1].items()}, flush=True)
        # What the measurements submitted and ran is history now too.
        stored = store.database.jobs.estimated_document_count()
        if size in (sizes[0], sizes[-1]):
            deep.append(measure_deep_queue(mongo.uri, db_name, store, stored))
            print("  deep queue:", {k: round(v, 2) for k, v in deep[-1].items()}, flush=True)
            stored = store.database.jobs.estimated_document_count()
    store.close()
    mongo.stop()
    print_table(rows, deep)


def print_table(rows: list[dict[str, float]], deep: list[dict[str, float]]) -> None:
    head = "| figure | " + " | ".join(f"{int(r['stored']):,} jobs" for r in rows) + " |"
    print(head)
    print("|---" * (len(rows) + 1) + "|")
    lines = [
        ("SubmitJob p50, 8 callers (ms)", "submit_p50", "{:.1f}"),
        ("SubmitJob p99, 8 callers (ms)", "submit_p99", "{:.1f}"),
        ("GetJob p50 (ms)", "get_p50", "{:.1f}"),
        ("no-op dispatch (jobs/s)", "dispatch_rate", "{:.0f}"),
        ("ListJobs big user, first page p50 (ms)", "list_big_first", "{:.1f}"),
        ("ListJobs big user, later page p50 (ms)", "list_big_later", "{:.1f}"),
        ("ListJobs 5-job user, first page p50 (ms)", "list_small_first", "{:.1f}"),
        ("idle CPU, nx-27017 (% of a core)", "idle_db", "{:.2f}"),
        ("idle CPU, server (% of a core)", "idle_server", "{:.2f}"),
    ]
    for name, key, fmt in lines:
        print(f"| {name} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
    print()
    print(
        "| with 10,000 ready jobs queued | " + " | ".join(f"{int(r['stored']):,} stored" for r in deep) + " |"
    )
    print("|---" * (len(deep) + 1) + "|")
    for name, key, fmt in [
        ("claims a second (noop generator)", "claims_per_s", "{:.0f}"),
        ("SubmitJob p50, 8 callers (ms)", "queued_submit_p50", "{:.1f}"),
        ("candidate query, 64 oldest ready (ms)", "candidates_ms", "{:.1f}"),
        ("one claim, find_one_and_update on _id (ms)", "claim_ms", "{:.1f}"),
    ]:
        print(f"| {name} | " + " | ".join(fmt.format(r[key]) for r in deep) + " |")


if __name__ == "__main__":
    main()
