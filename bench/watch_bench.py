"""Issue 3 figures: WatchJob fan-out. 1,000 concurrent streams on one running job
(progress publish-to-receive p50 and p99) beside a bare grpc.aio server doing the
same (bench/grpc_floor.py), and the server's RSS with 10,000 idle streams open.

    .venv/bin/python bench/watch_bench.py
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import grpc
from common import ServerProcess, make_settings, median, percentile, scratch, start_mongo
from grpc_floor import floor_latencies

from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import wait_for

FAN_OUT = 1_000
IDLE = 10_000
STREAMS_PER_CHANNEL = 100  # streams spread over many connections, as many clients would
RUNS = 3


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def open_streams(
    target: str, token: str, job_id: str, count: int, on_event: object = None
) -> tuple[list[grpc.aio.Channel], list[asyncio.Task[None]], asyncio.Event]:
    """`count` WatchJob streams; returns once every one has its snapshot."""
    # A subchannel pool of its own: a connection per channel, not one shared by all.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count // STREAMS_PER_CHANNEL + 1)
    ]
    stubs = [jobs_pb2_grpc.JobServiceStub(ch) for ch in channels]
    metadata = (("authorization", f"Bearer {token}"),)
    started = 0
    all_started = asyncio.Event()

    async def stream(i: int) -> None:
        nonlocal started
        call = stubs[i % len(stubs)].WatchJob(jobs_pb2.WatchJobRequest(id=job_id), metadata=metadata)
        first = True
        async for event in call:
            if first:
                first = False
                started += 1
                if started == count:
                    all_started.set()
            elif callable(on_event):
                on_event(event)

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(stream(i)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # let the server keep up with new streams
    try:
        await asyncio.wait_for(all_started.wait(), timeout=600)
    except TimeoutError:
        raise SystemExit(f"only {started} of {count} streams opened within 600 s") from None
    return channels, tasks, all_started


async def fan_out(server: ServerProcess) -> list[float]:
    token = server.token()
    with server.client() as c:
        job = c.submit("topic", topic="watched by many", extra={"demo_seconds": "3600"})
        wait_for(lambda: c.get(job.id).status == jobs_pb2.JOB_STATUS_PROCESSING)
        # Queue the job to watch behind the long one, open the streams, then let it run.
        watched = c.submit("topic", topic="fan-out", extra={"demo_seconds": "8"})
    latencies: list[float] = []

    def on_event(event: jobs_pb2.JobEvent) -> None:
        if event.type == jobs_pb2.JOB_EVENT_TYPE_PROGRESS:
            latencies.append(time.time() * 1000 - event.time.ToMilliseconds())

    channels, tasks, _ = await open_streams(server.target, token, watched.id, FAN_OUT, on_event)
    with server.client() as c:
        c.cancel(job.id)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    for channel in channels:
        await channel.close()
    return latencies


async def idle_rss(server: ServerProcess) -> tuple[float, float]:
    assert server.process is not None
    with server.client() as c:
        job = c.submit("topic", topic="never starts", extra={"demo_seconds": "3600"})
        idle = c.submit("topic", topic="waits", extra={"demo_seconds": "1"})
    before = rss_mb(server.process.pid)
    channels, tasks, _ = await open_streams(server.target, server.token(), idle.id, IDLE)
    after = rss_mb(server.process.pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    with server.client() as c:
        c.cancel(job.id)
    return before, after


def spread(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 of one run."""
    return percentile(latencies, 50), percentile(latencies, 99)


def main() -> None:
    mongo = start_mongo()
    # One owner holds every stream here: a fan-out measure, not the per-owner cap (100).
    settings = replace(
        make_settings(mongo.uri, scratch()), heartbeat_seconds=15.0, max_streams_per_owner=IDLE + FAN_OUT
    )
    server = ServerProcess(settings, scratch() / "server.log").start()
    ours, floors = [], []
    for _ in range(RUNS):  # alternating, so that both see the same machine
        ours.append(spread(asyncio.run(fan_out(server))))
        floors.append(spread(floor_latencies(FAN_OUT, STREAMS_PER_CHANNEL)))
    print(f"WatchJob fan-out: {FAN_OUT} streams on one running job, progress publish-to-receive, {RUNS} runs")
    for name, runs in (("genjobs", ours), ("bare grpc.aio (floor)", floors)):
        p50s, p99s = [r[0] for r in runs], [r[1] for r in runs]
        print(
            f"  {name:<22} median p50 {median(p50s):5.1f} ms  p99 {median(p99s):5.1f} ms"
            f"  (p99 of each run {[round(x) for x in p99s]})"
        )
    before, after = asyncio.run(idle_rss(server))
    print(f"Server RSS: {before:.0f} MB before, {after:.0f} MB with {IDLE} idle WatchJob streams open")
    server.terminate()
    mongo.stop()


if __name__ == "__main__":
    main()
