"""What one job costs the server and nx-27017 in CPU, by what the job does:
a no-op job, and a streamed job through the openai generator that answers one
word at once (so the figure is its start and its end, not its stream), each
with and without a WatchJob following it. Lanes are idle when each job comes
(`--lanes` 32 by default), as in workload_bench's round at 32, whose submits
are this cost 32 times beside the streams already running.

    .venv/bin/python bench/job_cost.py               # 128 jobs a round, 3 rounds
    .venv/bin/python bench/job_cost.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import replace

from common import ServerProcess, core_count, process_cpu, scratch, start_mongo
from workload_bench import OWNERS, Streams, settings_for, watch

from genjobs.client import GenJobsClient
from genjobs.v1 import jobs_pb2
from tests.harness import MongoServer

VARIANTS = [("noop", False), ("noop", True), ("openai", False), ("openai", True)]
POLL_SECONDS = 0.1  # how often the round's end is looked for, once the last job ended


def completed(client: GenJobsClient) -> int:
    """How many of the client's jobs completed (one GetJobStats call)."""
    stats = client.stats()
    return sum(s.count for s in stats.by_status if s.status == jobs_pb2.JOB_STATUS_COMPLETED)


def cost_round(
    mongo: MongoServer, streams: Streams, generator: str, watched: bool, jobs: int, lanes: int
) -> dict[str, float]:
    """`jobs` jobs submitted one after another to a fresh server: the server's
    and nx-27017's CPU a job (ms), and a submit's round trip (ms)."""
    settings = replace(settings_for(mongo, streams, lanes), generator=generator)
    server = ServerProcess(settings, scratch() / "s.log").start()
    assert server.process is not None and mongo.process is not None
    clients = [server.client(f"owner{k}") for k in range(OWNERS)]
    try:
        for client in clients:  # warm: each owner's first job (its caches, the generator's client)
            watch(client, client.submit("topic", topic="warm-up").id, [], {})
        time.sleep(1.0)  # the warm-up's writes behind the runs are done
        cpu = process_cpu(server.process.pid), process_cpu(mongo.process.pid)
        watchers = []
        submits = []
        last = ""
        for j in range(jobs):
            client = clients[j % OWNERS]
            started = time.perf_counter()
            last = client.submit("topic", topic=f"jc-{j}").id
            submits.append((time.perf_counter() - started) * 1000)
            if watched:
                watcher = threading.Thread(target=watch, args=(client, last, [], {}), daemon=True)
                watcher.start()
                watchers.append(watcher)
        if watched:
            for watcher in watchers:
                watcher.join(120)
        else:
            # The last job's end, then every job's, by each owner's counts: no call a job.
            watch(clients[(jobs - 1) % OWNERS], last, [], {})
            for k, client in enumerate(clients):
                mine = 1 + len(range(k, jobs, OWNERS))
                while completed(client) < mine:
                    time.sleep(POLL_SECONDS)
        spent = process_cpu(server.process.pid) - cpu[0], process_cpu(mongo.process.pid) - cpu[1]
    finally:  # a failed round leaves no server behind
        for client in clients:
            client.close()
        server.terminate()
    return {
        "server": spent[0] / jobs * 1000,
        "database": spent[1] / jobs * 1000,
        "submit": statistics.median(submits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=128, help="jobs a round")
    parser.add_argument("--lanes", type=int, default=32, help="GENJOBS_CONCURRENCY")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind; medians are printed")
    args = parser.parse_args()
    if args.jobs <= 0 or args.rounds <= 0 or args.lanes <= 0:
        raise SystemExit("--jobs, --lanes and --rounds must be positive")
    mongo = start_mongo()
    streams = Streams(1, 0.001)  # one word, at once
    figures: dict[tuple[str, bool], list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}: {args.jobs} jobs a round, one after another,"
        f" to {args.lanes} idle lanes; medians of {args.rounds} rounds"
    )
    try:
        for _ in range(args.rounds):
            for generator, watched in VARIANTS:  # interleaved: an hour's noise falls on every kind
                figures[(generator, watched)].append(
                    cost_round(mongo, streams, generator, watched, args.jobs, args.lanes)
                )
    finally:
        streams.stop()
        mongo.stop()
    medians = {
        variant: {key: statistics.median(r[key] for r in rounds) for key in ("server", "database", "submit")}
        for variant, rounds in figures.items()
    }
    for (generator, watched), figure in medians.items():
        kind = f"{generator} job{', watched' if watched else ''}"
        print(
            f"  {kind:20} server {figure['server']:5.2f} ms of CPU a job,"
            f" nx-27017 {figure['database']:5.2f} ms; a submit's round trip p50 {figure['submit']:5.2f} ms"
        )
    # workload_bench's round at 32: a job runs from its start, so the makespan
    # is at least the last start plus one stream, and the 32 starts cannot
    # take less than their CPU spread over every core (the streams' reading,
    # which runs beside them, left out).
    cores = core_count()
    watched_stream = medians[("openai", True)]
    starts = 32 * (watched_stream["server"] + watched_stream["database"]) / 1000 / cores
    print(
        f"32 watched streamed jobs: {starts:.2f} s at least on {cores} cores before the last starts,"
        f" so 2-second streams at 32 lanes take at least {(2 + starts) / 2:.2f}x the ideal makespan"
    )


if __name__ == "__main__":
    main()
