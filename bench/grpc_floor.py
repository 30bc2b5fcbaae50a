"""The floor under the WatchJob fan-out figure: a bare grpc.aio server (no auth,
no database, no genjobs code) pushing the same burst of one small message to
every open stream. Whatever genjobs measures above this is its own cost.

    .venv/bin/python bench/grpc_floor.py        (prints the floor for 1,000 streams)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc

METHOD = "/floor.Floor/Watch"
BURSTS = 16
INTERVAL = 0.5  # as often as the demo generator reports progress
PAYLOAD = b"x" * 300  # about the size of a JobEvent


async def serve(streams: int) -> None:
    """Serve until `streams` subscribers are open, push the bursts, then end them."""
    queues: set[asyncio.Queue[bytes | None]] = set()
    everyone = asyncio.Event()

    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> object:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        queues.add(queue)
        if len(queues) == streams:
            everyone.set()
        yield b"snapshot"
        while (item := await queue.get()) is not None:
            yield item

    handler = grpc.method_handlers_generic_handler(
        "floor.Floor", {"Watch": grpc.unary_stream_rpc_method_handler(watch)}
    )
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 20_000)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await everyone.wait()
    for _ in range(BURSTS):
        await asyncio.sleep(INTERVAL)
        stamp = f"{time.time():.6f}".encode().ljust(20) + PAYLOAD
        for queue in queues:
            queue.put_nowait(stamp)
    for queue in queues:
        queue.put_nowait(None)
    await server.stop(5)


async def receive(target: str, streams: int, per_channel: int) -> list[float]:
    """Open `streams` streams; the publish-to-receive latency of every message, in ms."""
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(streams // per_channel + 1)
    ]
    latencies: list[float] = []

    async def one(i: int) -> None:
        call = channels[i % len(channels)].unary_stream(METHOD)(b"")
        async for message in call:
            if message != b"snapshot":
                latencies.append((time.time() - float(message[:20])) * 1000)

    await asyncio.gather(*(one(i) for i in range(streams)))
    for channel in channels:
        await channel.close()
    return latencies


def floor_latencies(streams: int, per_channel: int) -> list[float]:
    """Run the bare server in a process of its own and measure the fan-out."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(streams)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    try:
        return asyncio.run(receive(f"127.0.0.1:{port}", streams, per_channel))
    finally:
        server.wait(30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(int(sys.argv[2])))
    else:
        from common import percentile

        found = floor_latencies(1000, 100)
        print(
            f"bare grpc.aio fan-out, 1000 streams: p50 {percentile(found, 50):.1f} ms"
            f"  p99 {percentile(found, 99):.1f} ms"
        )
