"""Issue 30 item 1: how much of a SubmitJob's CPU is genjobs' own code.

A submit is one unary gRPC call answered after one insert. This bench
measures what the libraries alone charge for those, each in a process of its
own on this machine, then genjobs' server doing the same calls:

- a bare grpc.aio unary server on uvloop (no interceptors, no database):
  its CPU a call, for a request and answer of a SubmitJob's size;
- pymongo inserting one job-sized document at a time into nx-27017, with
  the async client on uvloop (the submit's way) and the sync client (the
  lanes' way): the client's CPU an insert;
- genjobs' server (a process of its own, a job gap of an hour: it queues
  and runs nothing, as `drain_rate` in dispatch_bench does before its drain):
  its CPU a SubmitJob, and which of its threads spent it.

The rest of the server's CPU, beyond the first two, is genjobs' own code
(servicer, interceptors, validation, the cap, the job's document and its
answer). Medians of R runs, the parts taken in turn.

Last, the libraries' floor of a whole no-op job end to end, in all three
processes: the caller's side of the bare call, the submit's floor and the
lane's one command on the server, and nx-27017's CPU for the job's insert,
its outcome with the next claim and its two events (floor_bench's steps).
Their sum bounds no-op jobs a second on this machine, whatever genjobs' own
code does.

    .venv/bin/python bench/submit_floor.py [--calls 2000 --runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from genjobs.server.model.records import Submission

BENCH = Path(__file__).resolve().parent
T = TypeVar("T")
REQUEST = b"r" * 120  # about a SubmitJob request with a topic
ANSWER = b"a" * 400  # about the Job it answers with


def bench_submission() -> Submission:
    """The job every part of this bench stores: a topic of a few words."""
    from genjobs.server.model.records import Params, Submission
    from genjobs.server.model.vocabulary import Mode

    return Submission(owner="bench", mode=Mode.TOPIC, params=Params(topic="a topic of a few words"))


def job_document(ck: int) -> dict[str, Any]:
    """A job's document as SubmitJob stores it (storage/records.py), with order key `ck`."""
    from bson import ObjectId

    from genjobs.server.storage.records import job_doc

    job_id = ObjectId()
    return job_doc(bench_submission(), job_id, ck, "ready", f"bench {job_id}")


def on_genjobs_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on the event loop genjobs' server runs (uvloop where installed)."""
    from genjobs.server.model.loops import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def serve_bare_grpc() -> None:
    """A grpc.aio server on uvloop answering one unary method; prints its port."""
    import grpc

    async def submit(request: bytes, context: Any) -> bytes:
        return ANSWER

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "floor.Floor", {"Submit": grpc.unary_unary_rpc_method_handler(submit)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    on_genjobs_loop(main())


def bare_grpc_cpu(calls: int) -> tuple[float, float]:
    """µs of CPU a unary call, called one after another: (the bare server's,
    this calling process's)."""
    import grpc
    from common import process_cpu

    server = subprocess.Popen(
        [sys.executable, __file__, "--part", "serve-grpc"], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    try:
        port = int(server.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/floor.Floor/Submit")
            for _ in range(200):  # warm
                call(REQUEST)
            before, caller_before = process_cpu(server.pid), time.process_time()
            for _ in range(calls):
                call(REQUEST, metadata=(("authorization", "Bearer " + "t" * 180),))
            caller = time.process_time() - caller_before
            return (process_cpu(server.pid) - before) / calls * 1e6, caller / calls * 1e6
    finally:
        server.kill()
        server.wait()


def pymongo_cpu(uri: str, calls: int) -> None:
    """Prints µs of this process's CPU an insert_one, async on uvloop then sync
    (the documents made beforehand: only the inserts are timed)."""
    from pymongo import AsyncMongoClient, MongoClient

    warm = 100

    def documents() -> list[dict[str, Any]]:
        return [job_document(ck) for ck in range(-warm, calls)]

    async def inserts(docs: list[dict[str, Any]]) -> float:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        collection = client.floor.async_jobs
        for doc in docs[:warm]:
            await collection.insert_one(doc)
        before = time.process_time()
        for doc in docs[warm:]:
            await collection.insert_one(doc)
        spent = time.process_time() - before
        await client.close()
        return spent / calls * 1e6

    async_us = on_genjobs_loop(inserts(documents()))
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    collection = client.floor.sync_jobs
    docs = documents()
    for doc in docs[:warm]:
        collection.insert_one(doc)
    before = time.process_time()
    for doc in docs[warm:]:
        collection.insert_one(doc)
    sync_us = (time.process_time() - before) / calls * 1e6
    client.close()
    print(f"{async_us:.1f} {sync_us:.1f}", flush=True)


def library_inserts(uri: str, calls: int) -> tuple[float, float]:
    """(async, sync) µs of pymongo's CPU an insert, in a process of its own
    (the bench's own process counts every command, which costs CPU)."""
    out = subprocess.run(
        [sys.executable, __file__, "--part", "pymongo", "--uri", uri, "--calls", str(calls)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def genjobs_submit_cpu(uri: str, calls: int) -> tuple[float, float, dict[str, float]]:
    """Submits one after another to a server that runs nothing: submits a
    second, µs of the server's CPU a submit, and that by thread."""
    from common import ServerProcess, make_settings, scratch

    settings = make_settings(
        uri, scratch(), generator="noop", job_gap_seconds=3600.0, max_queued_per_owner=10 * calls + 1000
    )
    server = ServerProcess(settings, scratch() / "submit.log").start()
    assert server.process is not None
    pid = server.process.pid
    try:
        with server.client("bench") as client:
            for _ in client.watch(client.submit("topic", topic="before the gap").id):
                pass
            for i in range(100):  # warm
                client.submit("topic", topic=f"warm {i}")
            before, started = thread_cpu(pid), time.monotonic()
            for i in range(calls):
                client.submit("topic", topic=f"a topic of a few words {i}")
            elapsed, after = time.monotonic() - started, thread_cpu(pid)
        names = thread_names(pid)
    finally:
        server.terminate()
    by_thread: dict[str, float] = {}
    for tid, spent in after.items():
        # A pool's threads together; those without a Python name are gRPC's C++ ones.
        name = re.sub(r"_\d+$", "", names.get(tid, "gRPC's own"))
        by_thread[name] = by_thread.get(name, 0.0) + (spent - before.get(tid, 0.0)) / calls * 1e6
    return calls / elapsed, sum(by_thread.values()), by_thread


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds each thread of a process has used so far, by thread id."""
    from common import process_cpu

    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found[tid] = process_cpu(pid, int(tid))
        except OSError:  # ended meanwhile
            continue
    return found


def nx_path_cpu(uri: str, pid: int) -> dict[str, float]:
    """µs of nx-27017's CPU for the rest of a no-op job's commands, through
    the server's own storage classes (floor_bench's steps): the insert, the
    lane's outcome-and-next-claim, and the job's two events."""
    from floor_bench import EVENT_JOBS, ROUNDS, events_steps, measure, path_steps

    from genjobs.server.storage.store import Store

    store = Store(uri, "submit_floor")
    store.ensure_indexes()
    submission = bench_submission()
    try:
        steps = path_steps(store, submission)
        events = events_steps(store, [store.jobs.new_job(submission) for _ in range(ROUNDS)])
        return {
            "insert": measure(pid, steps["insert the job (with its place)"])[1],
            "end_and_claim": measure(pid, steps["outcome and next claim (end_and_claim)"])[1],
            "events": measure(
                pid, events["a job's 2 events, snapshots as BSON values"], ROUNDS // EVENT_JOBS
            )[1]
            / EVENT_JOBS,
        }
    finally:
        store.close()


def thread_names(pid: int) -> dict[str, str]:
    """Python's names of a process's threads by thread id (py-spy reads them;
    the OS knows every one as `python`). Empty when py-spy is missing."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {}
    dump = subprocess.run([str(spy), "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    return dict(re.findall(r'^Thread (\d+) \([a-z]+\): "([^"]+)"', dump, re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls a part, one after another")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", default="", help=argparse.SUPPRESS)  # the bench's own child processes
    parser.add_argument("--uri", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "serve-grpc":
        serve_bare_grpc()
        return
    if args.part == "pymongo":
        pymongo_cpu(args.uri, args.calls)
        return
    if args.calls <= 0 or args.runs <= 0:
        raise SystemExit("--calls and --runs must be positive")
    from common import core_count, median, start_mongo

    mongo = start_mongo()
    grpc_us, caller_us, async_us, sync_us, ours_us, rates = [], [], [], [], [], []
    threads: dict[str, list[float]] = {}
    nx: dict[str, list[float]] = {}
    assert mongo.process is not None
    try:
        for _ in range(args.runs):
            server_side, caller_side = bare_grpc_cpu(args.calls)
            grpc_us.append(server_side)
            caller_us.append(caller_side)
            inserted = library_inserts(mongo.uri, args.calls)
            async_us.append(inserted[0])
            sync_us.append(inserted[1])
            rate, spent, by_thread = genjobs_submit_cpu(mongo.uri, args.calls)
            rates.append(rate)
            ours_us.append(spent)
            for name, us in by_thread.items():
                threads.setdefault(name, []).append(us)
            for name, us in nx_path_cpu(mongo.uri, mongo.process.pid).items():
                nx.setdefault(name, []).append(us)
    finally:
        mongo.stop()
    floor = median(grpc_us) + median(async_us)
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"{when}: {args.calls} calls a part, µs of CPU, medians of {args.runs} runs")
    figure("a bare grpc.aio unary call (the server's)", grpc_us)
    figure("pymongo's async insert_one on uvloop", async_us)
    figure("pymongo's sync insert_one", sync_us)
    figure("the libraries' floor of a submit (the first two)", [floor])
    figure("genjobs' server, a SubmitJob", ours_us)
    figure("of which genjobs' own code, about", [median(ours_us) - floor])
    print(f"  submits a second: median {median(rates):.0f}, runs {[round(x) for x in rates]}")
    print("  the server's CPU a SubmitJob by thread:")
    for name, values in sorted(threads.items(), key=lambda item: -median(item[1])):
        if median(values) >= 1:
            print(f"    {name:30s} {median(values):6.0f}")
    # A no-op job end to end is this submit, then the lane's one command (its
    # outcome and the next claim) and the job's two events: the libraries'
    # CPU for all of it, in the three processes, bounds jobs a second on this
    # machine whatever genjobs' own code does.
    caller = median(caller_us)
    server = floor + median(sync_us)  # the lane's command taken as a sync insert's client CPU
    database = sum(median(values) for values in nx.values())
    print("A no-op job end to end, the libraries' floor (genjobs' own code left out), µs of CPU:")
    figure("the caller: a bare gRPC call", caller_us)
    figure("the server: the submit's floor and one sync command", [server])
    for name, values in nx.items():
        figure(f"nx-27017: {name}", values)
    whole = caller + server + database
    figure("all three processes", [whole])
    cores = core_count()
    print(f"  so at most {cores * 1e6 / whole:.0f} no-op jobs a second with all {cores} cores busy")


def figure(what: str, values: list[float]) -> None:
    """One line: a median, and the runs when there were several."""
    from common import median

    runs = f"  runs {[round(x) for x in values]}" if len(values) > 1 else ""
    print(f"  {what:50s} {median(values):6.0f}{runs}")


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    main()
