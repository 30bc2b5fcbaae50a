"""Issue 4 figures: CreateBulkJob of 50 items (MongoDB commands, p50 latency),
GetBulkJob of a 50-item bulk job (p50 latency), and the MongoDB commands of
PauseBulkJob and ResumeBulkJob.

    .venv/bin/python bench/bulk_bench.py
"""

from __future__ import annotations

import time

from common import COUNTER, ServerThread, make_settings, median, percentile, scratch, start_mongo

ROUNDS = 30


def main() -> None:
    mongo = start_mongo()
    server = ServerThread(make_settings(mongo.uri, scratch())).start()
    items = [{"topic": f"article {i}", "word_count": 60} for i in range(50)]
    creates, gets, commands = [], [], []
    steering: dict[str, list[int]] = {"PauseBulkJob": [], "ResumeBulkJob": []}
    with server.client("bench") as c:
        # The dispatcher is kept busy so that items stay queued: the figures are the RPCs' own.
        c.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "3600"})
        for _ in range(ROUNDS):
            COUNTER.take("rpc")
            t = time.perf_counter()
            bulk = c.create_bulk("topic", items)
            creates.append((time.perf_counter() - t) * 1000)
            commands.append(COUNTER.take("rpc"))
            t = time.perf_counter()
            c.get_bulk(bulk.id)
            gets.append((time.perf_counter() - t) * 1000)
            COUNTER.take("rpc")
            c.pause_bulk(bulk.id)
            steering["PauseBulkJob"].append(COUNTER.take("rpc"))
            c.resume_bulk(bulk.id)
            steering["ResumeBulkJob"].append(COUNTER.take("rpc"))
    server.stop()
    mongo.stop()
    print(f"CreateBulkJob, 50 items, {ROUNDS} calls:")
    print(f"  MongoDB commands per call: median {median(commands):.0f} (runs {sorted(set(commands))})")
    print(f"  latency p50 {percentile(creates, 50):.1f} ms  p99 {percentile(creates, 99):.1f} ms")
    print(f"GetBulkJob of a 50-item bulk job, {ROUNDS} calls:")
    print(f"  latency p50 {percentile(gets, 50):.1f} ms  p99 {percentile(gets, 99):.1f} ms")
    for rpc, counts in steering.items():
        print(f"{rpc} of a 50-item bulk job (answer included): median {median(counts):.0f} MongoDB commands")


if __name__ == "__main__":
    main()
