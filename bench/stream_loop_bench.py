"""Issue 30: what the event loop costs the openai client a streamed token.

The workload bench's streaming server (80 tokens over 2 s a request, in a
process of its own) is read by the `openai` client in a process of its own,
J requests, L at once, four ways: on asyncio's loop or on uvloop, with its
typed chunk models (`chat.completions.create`, what a team would write) or
with plain JSON chunks (`client.post(..., cast_to=object)`, what the openai
generator does). Printed: CPU per token of each way, the median of R runs
(each after a first request not counted), the ways taken in turn.

    .venv/bin/python bench/stream_loop_bench.py [--jobs 16 --lanes 8 --runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from common import median
from workload_bench import Streams

WAYS = [(loop, chunks) for loop in ("asyncio", "uvloop") for chunks in ("typed", "plain")]


def read_streams(base_url: str, loop: str, chunks: str, jobs: int, lanes: int) -> dict[str, float]:
    """In this process: `jobs` streamed requests, `lanes` at once; CPU seconds and words."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    gate = asyncio.Semaphore(lanes)
    body: dict[str, Any] = {"model": "bench", "stream": True, "stream_options": {"include_usage": True}}

    async def typed(j: int) -> int:
        words = 0
        answer = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"loop-{j}"}], stream=True
        )
        async with answer:
            async for chunk in answer:
                for choice in chunk.choices:
                    words += len((choice.delta.content or "").split())
        return words

    async def plain(j: int) -> int:
        words = 0
        answer = await client.post(
            "/chat/completions",
            body={**body, "messages": [{"role": "user", "content": f"loop-{j}"}]},
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        async with answer:
            async for chunk in answer:
                for choice in chunk.get("choices") or ():
                    words += len(((choice.get("delta") or {}).get("content") or "").split())
        return words

    one = typed if chunks == "typed" else plain

    async def run(count: int) -> int:
        async def gated(j: int) -> int:
            async with gate:
                return await one(j)

        return sum(await asyncio.gather(*(gated(j) for j in range(count))))

    async def measured() -> dict[str, float]:
        await run(1)  # the client's first request imports and connects: not counted
        cpu = time.process_time()
        words = await run(jobs)
        return {"cpu": time.process_time() - cpu, "words": words}

    if loop == "uvloop":
        import uvloop

        return uvloop.run(measured())
    return asyncio.run(measured())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16, help="J, requests a run")
    parser.add_argument("--lanes", type=int, default=8, help="L, requests at once")
    parser.add_argument("--runs", type=int, default=3, help="R, runs of each way")
    parser.add_argument("--read", nargs=3, metavar=("BASE_URL", "LOOP", "CHUNKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_streams(*args.read, args.jobs, args.lanes)))
        return
    streams = Streams(80, 2.0)
    per_token: dict[tuple[str, str], list[float]] = {way: [] for way in WAYS}
    try:
        for _ in range(args.runs):
            for loop, chunks in WAYS:
                command = [sys.executable, __file__, "--jobs", str(args.jobs), "--lanes", str(args.lanes)]
                out = subprocess.run(
                    [*command, "--read", streams.base_url, loop, chunks], capture_output=True, text=True
                )
                if out.returncode:
                    raise SystemExit(out.stderr[-2000:])
                figure = json.loads(out.stdout.strip().splitlines()[-1])
                per_token[loop, chunks].append(figure["cpu"] / max(1, figure["words"]) * 1e6)
    finally:
        streams.stop()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}: {args.jobs} streams of 80 tokens over 2 s, {args.lanes} at once"
    )
    for (loop, chunks), figures in per_token.items():
        runs = ", ".join(f"{f:.0f}" for f in figures)
        print(f"  {loop:8} {chunks:6} chunks: {median(figures):5.0f} µs of CPU a token (runs: {runs})")


if __name__ == "__main__":
    main()
