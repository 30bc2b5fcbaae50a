"""Issue 20 figures: what a claim costs with fair share, beside plain FIFO on the
same queue: 10,000 ready jobs from 100 owners over 40,000 finished ones.

    .venv/bin/python bench/fairshare_bench.py [--claims 1000] [--runs 5]
    .venv/bin/python bench/fairshare_bench.py --dispatch-against f55c186


Each run claims `--claims` jobs the way the dispatcher does, without running
them: fair share through `server.dispatch.fairshare.FairShare` (its rebuild included,
in the first claim), FIFO through the single-query path the dispatcher used
before (the oldest 64 of the ready lane, read again every poll interval or
when used up). MongoDB commands are counted with a pymongo listener. Between
runs the claimed jobs go back to the ready lane and the turns are forgotten.

With `--dispatch-against REF`: the no-op dispatch rate of `dispatch_bench.py`
(one owner) of this tree and of the server at git REF (extracted with git
archive), alternated with RQ's, 3 rounds: what fair share costs the
one-owner path, on a machine too noisy for runs minutes apart to compare.
"""

from __future__ import annotations

import argparse
import heapq
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pymongo
from common import COUNTER, Redis, median, scratch, start_mongo

from genjobs.server.dispatch.fairshare import FairShare
from genjobs.server.storage.queue import READY
from genjobs.server.storage.store import Store
from tests.harness import ServerProcess, seed_job

OWNERS, QUEUED, HISTORY = 100, 10_000, 40_000
PARAMS = {"topic": "t", "keywords": ["k"], "word_count": 800, "tone": "", "source_text": "", "extra": {}}
POLL, BATCH = 0.5, 64
WORKER = "bench"


def fill(store: Store) -> None:
    """The history, then the queue: each owner queues two blocks of 50, as bulk jobs do."""
    with pymongo.timeout(600):
        for start in range(0, HISTORY, 5000):
            docs = [seed_job(store, f"user{i % OWNERS}", PARAMS) for i in range(start, start + 5000)]
            for doc in docs:
                doc.update(store.queue.completion({"content": "x"}, doc["ck"]), queue="none")
            store.database.jobs.insert_many(docs)
        block = QUEUED // OWNERS // 2
        docs = [
            seed_job(store, f"user{owner}", PARAMS)
            for _ in range(2)
            for owner in range(OWNERS)
            for _ in range(block)
        ]
        store.database.jobs.insert_many(docs)
        store.ensure_indexes()


def reset(store: Store) -> None:
    """The claimed jobs back in the ready lane; no turns."""
    with pymongo.timeout(300):
        store.database.jobs.update_many(
            {"worker": WORKER}, {"$set": {"status": "QUEUED", "queue": READY, "worker": ""}}
        )
        store.database.turns.delete_many({})


REBUILDS: list[float] = []  # seconds of each fair run's first look at the queue (its rebuild)


def fair(store: Store, claims: int) -> list[str]:
    """Claim in fair-share order; the owners in claim order."""
    share = FairShare(store.queue, store.outage, POLL, 60.0, 5.0)
    started = time.perf_counter()
    share.rebuild()
    REBUILDS.append(time.perf_counter() - started)
    owners = []
    while len(owners) < claims:
        pick = share.next()
        assert pick is not None and pick.oid is not None
        job = store.queue.claim(pick.oid, WORKER, 10.0)
        if job is not None:
            share.started(job["owner"])
            owners.append(job["owner"])
    share.save_turns()
    return owners


def fifo(store: Store, claims: int) -> list[str]:
    """Claim oldest first, as the dispatcher did before fair share."""
    heap: list[tuple[int, object]] = []
    horizon, refreshed, owners = -1, 0.0, []
    while len(owners) < claims:
        stale = time.monotonic() - refreshed > POLL
        if stale or not heap or (horizon >= 0 and heap[0][0] > horizon):
            found = store.queue.runnable(BATCH)
            known = {oid for _, oid in heap}
            for item in found:
                if item[1] not in known:
                    heapq.heappush(heap, item)
            horizon = found[-1][0] if len(found) == BATCH else -1
            refreshed = time.monotonic()
        _, oid = heapq.heappop(heap)
        job = store.queue.claim(oid, WORKER, 10.0)  # type: ignore[arg-type]
        if job is not None:
            owners.append(job["owner"])
    return owners


def measure(
    store: Store, how: Callable[[Store, int], list[str]], claims: int
) -> tuple[float, float, int, str]:
    """(ms a claim, commands a claim, distinct owners among the first 100 claims, commands by name)."""
    reset(store)
    COUNTER.take("MainThread")
    COUNTER.names.clear()
    started = time.perf_counter()
    owners = how(store, claims)
    seconds = time.perf_counter() - started
    commands = COUNTER.take("MainThread")
    names = ", ".join(f"{n.split(':')[1]} {c / claims:.3f}" for n, c in COUNTER.names.most_common())
    return seconds / claims * 1000, commands / claims, len(set(owners[:100])), names


def dispatch_against(ref: str) -> None:
    """The one-owner dispatch rate here and at `ref`, alternated with RQ's."""
    import dispatch_bench

    here = Path(__file__).resolve().parent.parent
    there = scratch()
    archive = subprocess.run(["git", "-C", str(here), "archive", ref], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(there)], input=archive.stdout, check=True)
    mongo, redis = start_mongo(), Redis()
    rates: dict[str, list[float]] = {ref: [], "this tree": [], "RQ": []}
    # A checkout from before the packaging of issue 28 runs as `python -m server`
    # from its folder; a packaged one would run the installed genjobs.server, this tree's.
    if (there / "client" / "pyproject.toml").exists():
        raise SystemExit(f"{ref} is packaged (genjobs.server): run this bench in its own checkout instead")
    for _ in range(3):
        for name, tree in ((ref, there), ("this tree", here)):
            os.chdir(tree)
            ServerProcess.module = "genjobs.server" if tree == here else "server"
            rates[name].append(dispatch_bench.genjobs_rate(mongo.uri))
        rates["RQ"].append(dispatch_bench.rq_rate(redis))
    redis.stop()
    mongo.stop()
    print(f"{dispatch_bench.N} no-op jobs, submit then wait for all, 3 rounds alternated:")
    for name, runs in rates.items():
        print(f"  {name:10}  median {median(runs):6.0f} jobs/s  runs {[round(x) for x in runs]}")
    ours, theirs, rq = (median(rates[n]) for n in ("this tree", ref, "RQ"))
    print(f"  this tree {ours / theirs:.2f}x {ref}; {ours / rq:.2f}x RQ ({ref}: {theirs / rq:.2f}x RQ)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dispatch-against", metavar="REF", default="")
    args = parser.parse_args()
    if args.dispatch_against:
        dispatch_against(args.dispatch_against)
        return
    mongo = start_mongo()
    store = Store(mongo.uri, "bench_" + uuid.uuid4().hex[:8], timeout_seconds=60)
    fill(store)
    results: dict[str, list[tuple[float, float, int, str]]] = {"fair share": [], "FIFO": []}
    for _ in range(args.runs):  # alternated: load on the machine hits both alike
        results["fair share"].append(measure(store, fair, args.claims))
        results["FIFO"].append(measure(store, fifo, args.claims))
    print(
        f"{args.claims} claims from {QUEUED:,} ready jobs of {OWNERS} owners over {HISTORY:,} finished,"
        f" medians of {args.runs} runs:"
    )
    for name, runs in results.items():
        ms = [r[0] for r in runs]
        print(
            f"  {name:10}  {median(ms):6.2f} ms a claim (runs {', '.join(f'{x:.2f}' for x in ms)})"
            f"  {median([r[1] for r in runs]):.3f} commands a claim"
            f"  owners among the first 100 claims: {runs[0][2]}"
        )
        print(f"              commands a claim by name (first run): {runs[0][3]}")
    fair_ms, fifo_ms = (median([r[0] for r in results[name]]) for name in ("fair share", "FIFO"))
    print(f"  ratio       {fair_ms / fifo_ms:.2f}x FIFO's time a claim")
    print(
        f"  fair share's rebuild (leader start, once a sweep): {median(REBUILDS) * 1000:.1f} ms, in the above"
    )
    store.close()
    mongo.stop()


if __name__ == "__main__":
    main()
