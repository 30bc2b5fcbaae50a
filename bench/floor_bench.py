"""Issue 30 item 1: the floor of a no-op job on nx-27017 — what each command
on a job's path costs, measured alone, and what the path adds up to.

Each command runs ROUNDS times one after another through the server's own
storage classes (the real documents and indexes), from one thread: its
round trip (median) and nx-27017's CPU per command (read from /proc). The
floor of a design is its commands per job times their cost; nx-27017 serves
every command on one core, so its CPU per job bounds jobs per second.

    .venv/bin/python bench/floor_bench.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from common import median, process_cpu, start_mongo

from genjobs.server.model.records import Params, Submission
from genjobs.server.model.vocabulary import Mode
from genjobs.server.storage.database import Doc
from genjobs.server.storage.events import STATUS_CHANGED, stored
from genjobs.server.storage.places import PLACE, place_key
from genjobs.server.storage.store import Store

ROUNDS = 500
RUNS = 3
# Jobs whose two events (start, end) go in one insert: about what the event
# log gathers in its 50 ms at 350 jobs a second.
EVENT_JOBS = 16


def measure(pid: int, step: Callable[[int], object], rounds: int = ROUNDS) -> tuple[float, float]:
    """(median round trip, nx-27017 CPU per call), in µs."""
    times = []
    cpu = process_cpu(pid)
    for i in range(rounds):
        began = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - began)
    return median(times) * 1e6, (process_cpu(pid) - cpu) / rounds * 1e6


Step = Callable[[int], object]


def path_steps(store: Store, submission: Submission) -> dict[str, Step]:
    """The commands of ROUNDS new jobs' paths, each step to run ROUNDS times in turn."""
    docs = [store.jobs.new_job(submission) for _ in range(ROUNDS)]
    for doc in docs:  # each holds its place under the queued-jobs cap, as a submit stores it
        doc[PLACE] = place_key(submission.owner, int(doc["ck"]))
    claimed: list[dict[str, Any]] = []
    done = store.queue.completion({"content": ""}, 0)
    # For the lane's way: ROUNDS + 1 more jobs stored, the first claimed; each
    # round ends the running one and claims the next (their documents as stored).
    queued = [store.jobs.new_job(submission) for _ in range(ROUNDS + 1)]
    store.queue.jobs.insert_many(queued)
    running = [store.queue.claim(queued[0]["_id"], "w", 10.0) or {}]

    def end_and_claim(i: int) -> None:
        running.append(store.queue.end_and_claim(running[-1], done, queued[i + 1], "w", 10.0)[1] or {})

    return {
        "insert the job (with its place)": lambda i: store.jobs.insert_job(docs[i]),
        "claim (findAndModify)": lambda i: claimed.append(store.queue.claim(docs[i]["_id"], "w", 10.0) or {}),
        "outcome (fenced findAndModify)": lambda i: store.queue.fenced_update(
            docs[i]["_id"], int(claimed[i]["epoch"]), done
        ),
        "outcome and next claim (end_and_claim)": end_and_claim,
    }


def events_steps(store: Store, docs: list[Doc]) -> dict[str, Step]:
    """A job's two events stored in the event log's batches of EVENT_JOBS jobs
    (each step runs ROUNDS // EVENT_JOBS times): as stored now (the job
    snapshot one BSON value), and as nested documents (as stored before)."""

    def batch(i: int, first_seq: int) -> list[Doc]:
        jobs = docs[i * EVENT_JOBS : (i + 1) * EVENT_JOBS]
        events = store.events
        return [events.event_doc({**d, "seq": first_seq + k}, STATUS_CHANGED) for d in jobs for k in (0, 1)]

    return {
        "a job's 2 events, snapshots as BSON values": lambda i: store.events.events.insert_many(
            [stored(e) for e in batch(i, 1)]
        ),
        "a job's 2 events, snapshots nested (before)": lambda i: store.events.events.insert_many(batch(i, 3)),
    }


def main() -> None:
    mongo = start_mongo()
    assert mongo.process is not None
    pid = mongo.process.pid
    store = Store(mongo.uri, "floor")
    store.ensure_indexes()
    submission = Submission(owner="alice", mode=Mode.TOPIC, params=Params(topic="floor", word_count=800))
    figures: dict[str, list[tuple[float, float]]] = {}
    for _ in range(RUNS):
        for name, step in path_steps(store, submission).items():
            figures.setdefault(name, []).append(measure(pid, step))
        docs = [store.jobs.new_job(submission) for _ in range(ROUNDS)]
        for name, step in events_steps(store, docs).items():
            trip, cpu = measure(pid, step, ROUNDS // EVENT_JOBS)
            figures.setdefault(name, []).append((trip / EVENT_JOBS, cpu / EVENT_JOBS))
    print(f"nx-27017, {ROUNDS} calls of each, one after another, median of {RUNS} runs (events: per job):")
    print(f"  {'command':44s} {'round trip':>11s} {'nx-27017 CPU':>13s}")
    for name, runs in figures.items():
        trip = median([r[0] for r in runs])
        cpu = median([r[1] for r in runs])
        print(f"  {name:44s} {trip:8.0f} µs {cpu:10.0f} µs")
    path = {name: median([r[1] for r in runs]) for name, runs in figures.items()}
    submit = path["insert the job (with its place)"]
    dispatch = path["claim (findAndModify)"] + path["outcome (fenced findAndModify)"]
    print(f"  a job's path (insert, claim, outcome): {submit + dispatch:.0f} µs of nx-27017 CPU:")
    print(
        f"    at most {1e6 / (submit + dispatch):.0f} jobs/s end to end,"
        f" {1e6 / dispatch:.0f} jobs/s dispatch alone"
    )
    lane = path["outcome and next claim (end_and_claim)"]
    print(f"  with end_and_claim instead: {submit + lane:.0f} µs of nx-27017 CPU:")
    print(f"    at most {1e6 / (submit + lane):.0f} jobs/s end to end, {1e6 / lane:.0f} dispatch alone")
    events = path["a job's 2 events, snapshots as BSON values"]
    print(f"  and its two events stored: {submit + lane + events:.0f} µs of nx-27017 CPU:")
    print(
        f"    at most {1e6 / (submit + lane + events):.0f} jobs/s end to end,"
        f" {1e6 / (lane + events):.0f} dispatch alone"
    )
    store.close()
    mongo.stop()


if __name__ == "__main__":
    main()
