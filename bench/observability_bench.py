"""Issue 16 figures: what observability costs, and how long a clean stop takes.

1. SubmitJob throughput (8 callers, dispatcher busy, as in service_bench) and
   the no-op dispatch rate (as in dispatch_bench) of a server process with
   metrics, JSON logs and a scrape of /metrics every second ("on"), against
   the same server with every recording call of server/telemetry/
   turned into a no-op and text logs ("off"); runs alternated, order swapped
   each round, medians and ratios.
2. Shutdown with a long job running, two replicas on one database: SIGTERM
   to exit, and SIGTERM to the job starting on the other replica.

    .venv/bin/python bench/observability_bench.py
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pymongo
from bson import ObjectId
from common import MongoServer, ServerProcess, make_settings, measured, median, scratch, start_mongo
from dispatch_bench import drain
from service_bench import submit_jobs

from genjobs.server.runtime.config import Settings
from genjobs.server.runtime.embedded import free_port
from tests.harness import wait_for

ROUNDS = 7
DISPATCH_JOBS = 600
GRACE_SECONDS = 2.0

# Loaded first by the "off" server process: every recording call and the RPC
# interceptor (server/telemetry/, server/runtime/observability.py) become no-ops (what genjobs was before it).
_BARE = """
import contextlib
import genjobs.server.runtime.observability as o
import genjobs.server.telemetry.context as c
import genjobs.server.telemetry.metrics as m
for _name in ("job_submitted", "job_changed", "attempt_started", "attempt_ended", "attempt_lost",
              "leader", "webhook_delivery", "queue_gauges"):
    setattr(m, _name, lambda *args, **kwargs: None)
o.server_interceptors = lambda: []
c.job_attempt = lambda job: contextlib.nullcontext()
o.QUEUE_REFRESH_SECONDS = 1e9
"""


@contextlib.contextmanager
def bare_python() -> Iterator[None]:
    """While open, server processes started here run with observability stubbed out."""
    folder = scratch()
    (folder / "sitecustomize.py").write_text(_BARE)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(folder) + (os.pathsep + before if before else "")
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def start(settings: Settings, observed: bool) -> ServerProcess:
    """A server process, with observability on (JSON logs, metrics port) or stubbed out."""
    if observed:
        settings = replace(settings, log_format="json", metrics_port=free_port())
        return ServerProcess(settings, scratch() / "on.log").start()
    with bare_python():
        return ServerProcess(settings, scratch() / "off.log").start()


@contextlib.contextmanager
def scraped(server: ServerProcess) -> Iterator[None]:
    """Scrape the server's /metrics once a second while open (a busy Prometheus)."""
    port = server.settings.metrics_port
    stop = threading.Event()

    def scrape() -> None:
        with httpx.Client() as client:
            while not stop.wait(1.0):
                client.get(f"http://127.0.0.1:{port}/metrics").raise_for_status()

    thread = threading.Thread(target=scrape, daemon=True)
    if port:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if port:
            thread.join()


Figures = dict[bool, list[tuple[float, float]]]  # on/off -> [(jobs a second, server CPU µs a job)]


def cost(mongo: MongoServer) -> None:
    # SubmitJob: one long-lived server of each kind, each dispatcher busy on a long job.
    intake = {on: start(make_settings(mongo.uri, scratch()), observed=on) for on in (True, False)}
    for server in intake.values():
        with server.client("bench") as c:
            c.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "3600"})
    submits: Figures = {True: [], False: []}
    dispatch: Figures = {True: [], False: []}
    for round_ in range(ROUNDS):
        order = (True, False) if round_ % 2 == 0 else (False, True)
        for on in order:
            with scraped(intake[on]):
                submits[on].append(in_server(intake[on], functools.partial(submit_jobs, intake[on])))
        for on in order:
            server = start(make_settings(mongo.uri, scratch(), generator="noop"), observed=on)
            with scraped(server):
                dispatch[on].append(in_server(server, functools.partial(timed_drain, server)))
            server.terminate()
    for server in intake.values():
        server.kill()
    print(f"Observability on (metrics, JSON logs, /metrics scraped each second) against off, {ROUNDS} runs:")
    for title, figures in (
        ("SubmitJob, 8 callers", submits),
        (f"no-op dispatch, {DISPATCH_JOBS} jobs", dispatch),
    ):
        print(f"  {title}")
        for index, unit, words in (
            (0, "jobs/s", ("slower", "faster")),
            (1, "µs server CPU a job", ("more", "less")),
        ):
            with_it = [run[index] for run in figures[True]]
            without = [run[index] for run in figures[False]]
            print(f"    on   median {median(with_it):7.0f} {unit}  runs {[round(x) for x in with_it]}")
            print(f"    off  median {median(without):7.0f} {unit}  runs {[round(x) for x in without]}")
            ratio = median([a / b for a, b in zip(with_it, without, strict=True)])
            change = 100 * ((1 - ratio) if index == 0 else (ratio - 1))
            word = words[0] if change >= 0 else words[1]
            print(f"    on/off: median of the per-run ratios {ratio:.3f} (on: {abs(change):.1f}% {word})")


def timed_drain(server: ServerProcess) -> tuple[int, float]:
    rate = drain(server, DISPATCH_JOBS)
    return DISPATCH_JOBS, DISPATCH_JOBS / rate


def in_server(server: ServerProcess, run: Callable[[], tuple[int, float]]) -> tuple[float, float]:
    """(jobs a second, the server process's CPU µs a job) of `run`: CPU is the
    steadier figure on a shared machine."""
    assert server.process is not None
    rate, spent = measured(run, {"server": server.process.pid})
    return rate, spent["server"]


def runner(jobs: Any, job_id: str, replicas: list[ServerProcess]) -> ServerProcess | None:
    """Which of `replicas` runs the job now."""
    doc = jobs.find_one({"_id": ObjectId(job_id)})
    for process in replicas:
        assert doc is not None and process.process is not None
        if doc["status"] == "PROCESSING" and doc["worker"].startswith(
            f"{socket.gethostname()}:{process.process.pid}:"
        ):
            return process
    return None


def stop_one(jobs: Any, replicas: list[ServerProcess]) -> tuple[float, float, ServerProcess]:
    """SIGTERM the replica running a long job: (seconds to its exit, seconds
    to the job starting on the other replica, the other replica)."""
    with replicas[0].client("bench") as c:
        job = c.submit("topic", topic="long", extra={"demo_seconds": "3600"})
    running = wait_for(lambda: runner(jobs, job.id, replicas), timeout=60)
    assert running.process is not None
    signalled = time.time()
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(60) == 0
    exited = time.time() - signalled
    running.log.close()
    other = next(p for p in replicas if p is not running)
    wait_for(lambda: runner(jobs, job.id, replicas) is other, timeout=30)
    doc = jobs.find_one({"_id": ObjectId(job.id)})
    assert doc is not None and doc["attempt"] == 1  # the stopped attempt was given back
    with other.client("bench") as c:
        c.cancel(job.id)
    return exited, doc["started_us"] / 1e6 - signalled, other


def shutdown(mongo: MongoServer) -> None:
    base = make_settings(mongo.uri, scratch(), shutdown_grace_seconds=GRACE_SECONDS)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    jobs = client[base.db_name]["jobs"]
    to_exit, to_other = [], []
    replicas = [start(base, observed=True), start(base, observed=True)]
    for _ in range(ROUNDS):
        exited, taken, other = stop_one(jobs, replicas)
        to_exit.append(exited)
        to_other.append(taken)
        replicas = [other, start(base, observed=True)]
    for process in replicas:
        process.terminate()
    client.close()
    print(f"Shutdown with a long job running (grace {GRACE_SECONDS:g} s, two replicas), {ROUNDS} runs:")
    print(f"  SIGTERM to exit  median {median(to_exit):.2f} s  runs {[round(x, 2) for x in to_exit]}")
    print(
        f"  SIGTERM to the job started on the other replica"
        f"  median {median(to_other):.2f} s  runs {[round(x, 2) for x in to_other]}"
    )
    print(f"  (both include the {GRACE_SECONDS:g} s grace the job is given to finish)")


def main() -> None:
    mongo = start_mongo()
    try:
        cost(mongo)
        shutdown(mongo)
    finally:
        mongo.stop()


if __name__ == "__main__":
    main()
