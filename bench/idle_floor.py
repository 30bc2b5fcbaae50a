"""Issue 30 item 1: what an idle moment costs each hop on this machine, and
so the floor of enqueue-to-start measured after one.

`dispatch_bench.py` takes enqueue-to-start on an idle dispatcher: 20 ms of
nothing before each submit. After such a pause every process on the path
(the client, the server, nx-27017) answers slower than when it was just
busy: caches are cold and a sleeping core or thread must be woken. This
script measures each hop back to back and after the same 20 ms pause:

- a `ping` to nx-27017 (no work at all in the database) and a job's insert
  (the server's own document and indexes), from pymongo's synchronous client;
- a bare grpc.aio unary call (a health check, uvloop, no genjobs code);
- SubmitJob and enqueue-to-start through a genjobs server (as
  `dispatch_bench.py` measures them), with the pause and without it (the
  next submit as soon as the last job started).

    .venv/bin/python bench/idle_floor.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from common import ServerThread, make_settings, median, scratch, start_mongo

from genjobs.server.model.records import Params, Submission
from genjobs.server.model.vocabulary import Mode
from genjobs.server.storage.store import Store

PAUSE = 0.02  # dispatch_bench.py's idle dispatcher
CALLS = 200
RUNS = 3
GRPC_SERVER = """
import asyncio, grpc, uvloop
from grpc_health.v1 import health, health_pb2_grpc
async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
uvloop.run(main())
"""


def timed(call: Callable[[int], object], pause: float, calls: int = CALLS) -> float:
    """The median time of `call` in ms, each call after `pause` seconds of nothing."""
    times = []
    for i in range(calls):
        if pause:
            time.sleep(pause)
        began = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - began)
    return median(times[10:]) * 1e3


def database_hops(uri: str) -> dict[str, Callable[[int], object]]:
    """A ping and a job's insert, through the server's own storage."""
    store = Store(uri, "idle_floor")
    store.ensure_indexes()
    submission = Submission(owner="floor", mode=Mode.TOPIC, params=Params(topic="idle"))

    def insert(_: int) -> object:
        return store.jobs.insert_job(store.jobs.new_job(submission))

    return {"nx-27017 ping": lambda _: store.database.ping(), "a job's insert": insert}


def grpc_hop() -> tuple[subprocess.Popen[str], Callable[[int], object]]:
    """A bare grpc.aio health server in its own process, and one call to it."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = subprocess.Popen([sys.executable, "-c", GRPC_SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return server, lambda _: stub.Check(health_pb2.HealthCheckRequest(), timeout=10)


def genjobs_hops(uri: str, pause: float) -> tuple[float, float]:
    """(SubmitJob, enqueue to start) medians in ms, as dispatch_bench.py takes them."""
    server = ServerThread(make_settings(uri, scratch(), generator="noop")).start()
    submits, starts = [], []
    with server.client("idle") as c:
        for i in range(100):
            if pause:
                time.sleep(pause)
            began = time.time()
            job = c.submit("topic", topic=f"idle {i}")
            submits.append(time.time() - began)
            while not (done := c.get(job.id)).start_time.seconds:
                time.sleep(0.002)
            starts.append(done.start_time.ToNanoseconds() / 1e9 - began)
    server.stop()
    return median(submits[10:]) * 1e3, median(starts[10:]) * 1e3


def main() -> None:
    mongo = start_mongo()
    grpc_server, grpc_call = grpc_hop()
    hops = {**database_hops(mongo.uri), "bare grpc.aio unary call": grpc_call}
    rows: dict[str, list[list[float]]] = {name: [[], []] for name in [*hops, "SubmitJob", "enqueue to start"]}
    try:
        for _ in range(RUNS):
            for column, pause in enumerate((0.0, PAUSE)):
                for name, call in hops.items():
                    rows[name][column].append(timed(call, pause))
                submit, start = genjobs_hops(mongo.uri, pause)
                rows["SubmitJob"][column].append(submit)
                rows["enqueue to start"][column].append(start)
    finally:
        grpc_server.kill()
        mongo.stop()
    print(f"medians of {RUNS} runs (each the median of its calls), ms:")
    print(f"  {'hop':28s} {'back to back':>13s} {'after 20 ms idle':>17s} {'added':>7s}")
    for name, (busy, idle) in rows.items():
        print(f"  {name:28s} {median(busy):13.2f} {median(idle):17.2f} {median(idle) - median(busy):7.2f}")
    grpc_idle = median(rows["bare grpc.aio unary call"][1])
    insert_idle = median(rows["a job's insert"][1])
    floor = grpc_idle / 2 + insert_idle
    print(f"  after a pause, half a bare gRPC call and one insert take {floor:.2f} ms of enqueue to start")
    print("  before any genjobs code runs (the claim's stamp comes after both)")


if __name__ == "__main__":
    main()
