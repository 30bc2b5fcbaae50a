"""Issue 19 figures: what the openai generator adds to a streamed completion.

A local server speaking the OpenAI streaming protocol sends 1,000 chunks as
fast as it can to a genjobs server process (generator=openai). Printed:
- genjobs' CPU per chunk: the server process's CPU for a 1,000-chunk job
  minus that of a 1-chunk job, over 999 chunks;
- the openai client's own CPU per chunk reading the same stream alone;
- the job's end-to-end time (SubmitJob until WatchJob shows COMPLETED)
  against the stream's own duration, both as the streaming server saw it
  (request in to [DONE] out) and as the openai client alone reads it;
- the same comparison in CPU: the server's CPU for the whole 1,000-chunk job
  over the openai client's CPU reading that stream alone (wall-clock time on
  a shared, loaded machine mostly measures waiting for a core);
- progress writes a second while a stream of 1,000 chunks takes ~5 s.

    .venv/bin/python bench/generator_bench.py
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import replace

import openai
from common import ServerProcess, core_count, make_settings, median, process_cpu, scratch, start_mongo

from genjobs.client import GenJobsClient
from genjobs.v1 import jobs_pb2 as S
from tests.fake_openai import FakeOpenAI, Plan

CHUNKS = 1000
RUNS = 5
PRICES = {"bench-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}


def run_job(client: GenJobsClient, fake: FakeOpenAI, plan: Plan) -> tuple[float, float, int]:
    """One job on `plan`: (end-to-end seconds, stream seconds seen by the server, PROGRESS events)."""
    fake.queue(plan)
    started = time.monotonic()
    job = client.submit("topic", topic="bench", word_count=CHUNKS)
    progress = 0
    last = None
    for event in client.watch(job.id):
        progress += event.type == S.JOB_EVENT_TYPE_PROGRESS
        last = event
    elapsed = time.monotonic() - started
    assert last is not None and last.job.status == S.JOB_STATUS_COMPLETED, last
    seen = fake.requests[-1]
    return elapsed, seen.ended - seen.arrived, progress


def bare_client(fake: FakeOpenAI, plan: Plan) -> tuple[float, float]:
    """The same stream read by the openai client alone, no genjobs around it:
    (wall seconds, CPU seconds of the reading thread)."""

    async def read() -> tuple[float, float]:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="unused", max_retries=0)
        fake.queue(plan)
        started, cpu = time.monotonic(), time.thread_time()
        stream = await client.chat.completions.create(
            model="bench-model",
            messages=[{"role": "user", "content": "bench"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for _ in stream:
                pass
        elapsed, cpu = time.monotonic() - started, time.thread_time() - cpu
        await client.close()
        return elapsed, cpu

    return asyncio.run(read())


def main() -> None:
    mongo = start_mongo()
    fast = Plan(pieces=["word "] * CHUNKS, usage=(50, CHUNKS))
    one = Plan(pieces=["word "], usage=(50, 1))
    paced = Plan(pieces=["word "] * CHUNKS, usage=(50, CHUNKS), delay=0.005)
    with FakeOpenAI() as fake:
        settings = make_settings(
            mongo.uri,
            scratch(),
            generator="openai",
            openai_base_url=fake.base_url,
            openai_model="bench-model",
            openai_prices=json.dumps(PRICES),
        )
        server = ServerProcess(replace(settings), scratch() / "server.log").start()
        assert server.process is not None
        pid = server.process.pid
        cpu_per_chunk, bare_cpu, ratios, bare_ratios, e2e, streams, bare = [], [], [], [], [], [], []
        cpu_ratios = []
        try:
            with server.client("bench") as client:
                run_job(client, fake, fast)  # warm-up: the first job makes the openai client
                for _ in range(RUNS):
                    before = process_cpu(pid)
                    run_job(client, fake, one)
                    small = process_cpu(pid) - before
                    before = process_cpu(pid)
                    elapsed, stream, _ = run_job(client, fake, fast)
                    large = process_cpu(pid) - before
                    alone, alone_cpu = bare_client(fake, fast)
                    bare_cpu.append(alone_cpu / CHUNKS * 1e6)
                    cpu_ratios.append(large / alone_cpu)
                    cpu_per_chunk.append((large - small) / (CHUNKS - 1) * 1e6)
                    e2e.append(elapsed)
                    streams.append(stream)
                    bare.append(alone)
                    ratios.append(elapsed / stream)
                    bare_ratios.append(elapsed / alone)
                rates = []
                for _ in range(3):
                    _, stream, progress = run_job(client, fake, paced)
                    rates.append(progress / stream)
        finally:
            server.terminate()
            mongo.stop()
    print(f"generator bench: {CHUNKS} chunks, medians of {RUNS} runs")
    print(f"  genjobs server CPU per chunk:        {median(cpu_per_chunk):8.1f} µs")
    print(f"  openai client alone, CPU per chunk:  {median(bare_cpu):8.1f} µs")
    print(f"  job end to end:                      {median(e2e) * 1000:8.1f} ms")
    print(f"  stream as the server sent it:        {median(streams) * 1000:8.1f} ms")
    print(f"  stream read by the openai client:    {median(bare) * 1000:8.1f} ms")
    print(f"  end to end / stream (server's view): {median(ratios):8.2f}x  (goal <= 1.10x)")
    print(f"  end to end / openai client alone:    {median(bare_ratios):8.2f}x")
    print(f"  CPU, whole job / openai client alone: {median(cpu_ratios):7.2f}x  (wall clock: idle box)")
    print(f"  load average during the run:         {os.getloadavg()[0]:8.1f}  on {core_count()} cores")
    print(f"  progress writes a second, ~5 s stream: {median(rates):6.2f}  (goal <= 4)")


if __name__ == "__main__":
    main()
