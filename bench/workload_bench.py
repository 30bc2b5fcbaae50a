"""Issue 30 items 2 and 3: the work genjobs exists for. J jobs from 4 owners
through the openai generator, each streaming N tokens over S seconds from an
OpenAI-compatible server of the bench's own on 127.0.0.1 (a process of its
own), at concurrency 1, 8
and 32, a WatchJob on every job; beside the `openai` client alone reading the
same streams (warmed by a first request as the server is, the median of three
runs), and Celery (a threads pool of the same size, the `openai` client in the
task, progress and results in redis) in the same run.

    .venv/bin/python bench/workload_bench.py                        # J=32, N=80, S=2
    .venv/bin/python bench/workload_bench.py --jobs 64 --lanes 8 32 # the issue's sizes
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import (
    COUNTER,
    Redis,
    ServerProcess,
    ServerThread,
    busy_share,
    machine_cpu,
    make_settings,
    percentile,
    process_cpu,
    scratch,
)

from genjobs.client import GenJobsClient
from genjobs.server.runtime.config import Settings
from genjobs.v1 import jobs_pb2
from tests.fake_openai import _chunk
from tests.harness import MongoServer

BENCH = Path(__file__).resolve().parent
OWNERS = 4
BARE_RUNS = 3  # bare client runs per concurrency; their median is the reference
REST_SECONDS = 2.0  # how long the server's CPU at rest is measured before a round
MARK = re.compile(r"wb-\d+-\d+")  # the topic of one job: wb-<round>-<job>
WORDS = re.compile(r"^(\d+) of ")  # the openai generator's progress message


def framed(data: bytes) -> bytes:
    """One piece of a chunked HTTP/1.1 body (an empty one ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Listener(ThreadingHTTPServer):
    """A thread per stream, and a backlog for 32 clients connecting at once (the default is 5)."""

    daemon_threads = True
    request_queue_size = 256


class StreamServer:
    """An OpenAI-compatible streaming server: every request gets `tokens` words
    over `seconds`; it remembers when it sent each word of each topic (GET
    /marks tells)."""

    def __init__(self, tokens: int, seconds: float) -> None:
        self.tokens, self.seconds = tokens, seconds
        self.sent: dict[str, list[float]] = {}  # topic -> wall time each word was sent
        self.arrived: dict[str, float] = {}  # topic -> wall time its request was read
        streams = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive with chunked bodies, as a model's server answers: a
            # client's connections are reused, not opened once a stream.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                streams.answer(self)

            def do_GET(self) -> None:
                marks = json.dumps({"sent": streams.sent, "arrived": streams.arrived}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(marks)))
                self.end_headers()
                self.wfile.write(marks)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = Listener(("127.0.0.1", 0), Handler)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        found = MARK.search(json.dumps(body["messages"]))
        times: list[float] = []
        if found:
            self.sent[found.group()] = times
            self.arrived[found.group()] = time.time()
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        model = body.get("model", "")
        gap = self.seconds / self.tokens
        started = time.monotonic()
        try:
            for i in range(self.tokens):
                # On a schedule, not gap after gap: a slow reader does not stretch the stream.
                time.sleep(max(0.0, started + (i + 1) * gap - time.monotonic()))
                handler.wfile.write(framed(_chunk(model, [{"index": 0, "delta": {"content": f"w{i} "}}])))
                times.append(time.time())
            usage = {"prompt_tokens": 10, "completion_tokens": self.tokens, "total_tokens": 10 + self.tokens}
            handler.wfile.write(framed(_chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}])))
            handler.wfile.write(framed(_chunk(model, [], usage)))
            handler.wfile.write(framed(b"data: [DONE]\n\n") + framed(b""))
        except (BrokenPipeError, ConnectionResetError):
            pass


class Streams:
    """A `StreamServer` in a process of its own, as a model's server is never
    the client's: its writing threads would take the GIL from the bench's
    submits and watchers (and from Celery's). `refresh` reads its marks."""

    def __init__(self, tokens: int, seconds: float) -> None:
        command = [sys.executable, __file__, "--streams", str(tokens), str(seconds)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()
        self.sent: dict[str, list[float]] = {}  # topic -> wall time each word was sent
        self.arrived: dict[str, float] = {}  # topic -> wall time its request was read

    def refresh(self) -> None:
        """Read when each word of each topic was sent, and each request read."""
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/marks", timeout=30) as answer:
            marks = json.load(answer)
        self.sent, self.arrived = marks["sent"], marks["arrived"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def streams_main(tokens: int, seconds: float) -> None:
    server = StreamServer(tokens, seconds)
    print(f"http://127.0.0.1:{server.httpd.server_address[1]}/v1", flush=True)
    server.httpd.serve_forever()


def progress_latencies(sent: list[float], seen: list[tuple[int, float]]) -> list[float]:
    """For each word sent: ms until a watcher received an event counting it
    (a PROGRESS event with at least that many words, or the final one)."""
    found = []
    for i, at in enumerate(sent):
        heard = next((t for words, t in seen if words >= i + 1), None)
        if heard is not None:
            found.append((heard - at) * 1000)
    return found


def between_runs(streams: Streams, tag: int) -> float:
    """For a round at concurrency 1: ms from one stream's last word to the next
    stream's request reaching the streaming server, p50 (what a lane costs
    between two jobs: the outcome, the next claim, the request's way out)."""
    streams.refresh()
    ours = [mark for mark in streams.arrived if mark.startswith(f"wb-{tag}-")]
    marks = sorted(ours, key=lambda mark: streams.arrived[mark])
    gaps = [(streams.arrived[b] - streams.sent[a][-1]) * 1000 for a, b in itertools.pairwise(marks)]
    return percentile(gaps, 50) if gaps else 0.0


def watch(client: GenJobsClient, job_id: str, seen: list[tuple[int, float]], done: dict[str, float]) -> None:
    """Follow one job to its end: (words, when) of each event, when it ended."""
    for event in client.watch(job_id):
        now = time.time()
        job = event.job
        if job.status == jobs_pb2.JOB_STATUS_COMPLETED:
            seen.append((1 << 30, now))
            done[job_id] = now
        elif job.status in (jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED):
            done[job_id] = now
            raise SystemExit(f"job {job_id} ended {job.status}: {job.error.message}")
        elif (words := WORDS.match(job.progress.message)) is not None:
            seen.append((int(words.group(1)), now))


def settings_for(mongo: MongoServer, streams: Streams, lanes: int) -> Settings:
    """A server's settings: the openai generator on `streams`, `lanes` runs at
    once, the default poll interval and lease."""
    return make_settings(
        mongo.uri,
        scratch(),
        generator="openai",
        openai_base_url=streams.base_url,
        openai_api_key="bench",
        concurrency=lanes,
        poll_seconds=Settings.poll_seconds,
        lease_seconds=Settings.lease_seconds,
    )


def genjobs_round(mongo: MongoServer, streams: Streams, jobs: int, lanes: int, tag: int) -> dict[str, Any]:
    """J jobs from OWNERS owners on a server process at `lanes`: makespan,
    server and database CPU, progress latencies."""
    settings = settings_for(mongo, streams, lanes)
    server = ServerProcess(settings, scratch() / "s.log").start()
    assert server.process is not None and mongo.process is not None
    clients = [server.client(f"owner{k}") for k in range(OWNERS)]
    # Ready: a first job ran (not counted; it makes the generator's client, as
    # Celery's warm-up task does nothing the worker had not made at its start).
    warm_up = clients[0].submit("topic", topic="warm-up").id
    watch(clients[0], warm_up, [], {})
    # The server at rest (its polls, housekeeping, heartbeats): a cost per second, not per token.
    rest = process_cpu(server.process.pid)
    time.sleep(REST_SECONDS)
    at_rest = (process_cpu(server.process.pid) - rest) / REST_SECONDS
    seen: dict[str, list[tuple[int, float]]] = defaultdict(list)
    done: dict[str, float] = {}
    watchers = []
    cpu = process_cpu(server.process.pid), process_cpu(mongo.process.pid)
    machine = machine_cpu()
    started = time.time()
    topics = {}
    for j in range(jobs):
        client = clients[j % OWNERS]
        job = client.submit("topic", topic=f"wb-{tag}-{j}")
        topics[job.id] = f"wb-{tag}-{j}"
        watcher = threading.Thread(target=watch, args=(client, job.id, seen[job.id], done), daemon=True)
        watcher.start()
        watchers.append(watcher)
    submitted = time.time() - started
    for watcher in watchers:
        watcher.join(600)
    makespan = max(done.values()) - started
    busy = busy_share(machine)
    streams.refresh()
    spent = process_cpu(server.process.pid) - cpu[0], process_cpu(mongo.process.pid) - cpu[1]
    # Where the makespan goes: the submits, the last start, how long runs took.
    ran = [clients[j % OWNERS].get(job_id) for j, job_id in enumerate(topics)]
    last_start = max(job.start_time.ToNanoseconds() for job in ran) / 1e9 - started
    runs = [(job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9 for job in ran]
    # A run beyond its stream: from its start to the request reaching the
    # streaming server, and from the last word sent to its end.
    pairs = [(topics[job.id], job) for job in ran]
    lead = [streams.arrived[mark] - job.start_time.ToNanoseconds() / 1e9 for mark, job in pairs]
    tail = [job.end_time.ToNanoseconds() / 1e9 - streams.sent[mark][-1] for mark, job in pairs]
    for client in clients:
        client.close()
    server.terminate()
    latencies = [
        ms for job_id, topic in topics.items() for ms in progress_latencies(streams.sent[topic], seen[job_id])
    ]
    return {
        "makespan": makespan,
        "server_cpu": spent[0],
        "at_rest": at_rest,
        "db_cpu": spent[1],
        "busy": busy,
        "latencies": latencies,
        "submitted": submitted,
        "last_start": last_start,
        "run_p50": percentile(runs, 50),
        "run_max": max(runs),
        "lead_p50": percentile(lead, 50),
        "lead_max": max(lead),
        "tail_p50": percentile(tail, 50),
        "tail_max": max(tail),
    }


def commands_per_job(mongo: MongoServer, streams: Streams, jobs: int, lanes: int) -> float:
    """MongoDB commands a job costs, in-process (every command the server sends, counted)."""
    settings = settings_for(mongo, streams, lanes)
    server = ServerThread(settings).start()
    with server.client("owner0") as client:
        before = sum(COUNTER.by_thread.values())
        ids = [client.submit("topic", topic=f"wb-count-{j}").id for j in range(jobs)]
        for job_id in ids:
            for _ in client.watch(job_id):
                pass
        spent = sum(COUNTER.by_thread.values()) - before
    server.stop()
    return spent / jobs


def bare(base_url: str, jobs: int, lanes: int, runs: int = BARE_RUNS) -> dict[str, float]:
    """The `openai` client alone (AsyncOpenAI, `lanes` streams at once) in a
    process of its own reading the same streams: its CPU seconds and words,
    the run of median CPU among `runs` (one process's figure swings by a
    third on this shared machine, more than the differences measured)."""
    figures = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--bare", base_url, str(jobs), str(lanes)],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise SystemExit(f"the bare client failed: {out.stderr[-2000:]}")
        figures.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return sorted(figures, key=lambda figure: figure["cpu"])[len(figures) // 2]


def bare_main(base_url: str, jobs: int, lanes: int) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    gate = asyncio.Semaphore(lanes)

    async def one(j: int) -> int:
        async with gate:
            words = 0
            answer = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"wb-bare-{j}"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async with answer:
                async for chunk in answer:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            words += len(choice.delta.content.split())
            return words

    async def run(count: int) -> int:
        return sum(await asyncio.gather(*(one(j) for j in range(count))))

    async def measured() -> dict[str, float]:
        # Warmed as the server is (its first job is not counted): the client's
        # first request imports its resources and opens its connection.
        await run(1)
        cpu, started = time.process_time(), time.time()
        words = await run(jobs)
        return {"cpu": time.process_time() - cpu, "words": words, "seconds": time.time() - started}

    print(json.dumps(asyncio.run(measured())))


def celery_round(redis: Redis, streams: Streams, jobs: int, lanes: int, tag: int) -> dict[str, float]:
    """The same work through a Celery worker with a threads pool of `lanes`."""
    env = {**os.environ, "BENCH_REDIS_URL": redis.url, "BENCH_OPENAI_BASE_URL": streams.base_url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workload_celery", "worker", "--pool", "threads",
         "--concurrency", str(lanes), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=BENCH, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.environ["BENCH_REDIS_URL"] = redis.url
    sys.path.insert(0, str(BENCH))
    import workload_celery

    workload_celery.app.conf.broker_url = workload_celery.app.conf.result_backend = redis.url
    try:
        # Ready: a first task answered (not counted).
        workload_celery.stream.delay("warm-up").get(timeout=120)
        cpu = process_cpu(worker.pid), process_cpu(redis.process.pid)
        machine = machine_cpu()
        started = time.time()
        results = [workload_celery.stream.delay(f"wb-{tag}-{j}") for j in range(jobs)]
        words = sum(r.get(timeout=600)["words"] for r in results)
        makespan = time.time() - started
        busy = busy_share(machine)
        spent = process_cpu(worker.pid) - cpu[0], process_cpu(redis.process.pid) - cpu[1]
        return {"makespan": makespan, "cpu": spent[0], "redis_cpu": spent[1], "words": words, "busy": busy}
    finally:
        worker.terminate()
        worker.wait(30)
        redis.client.flushall()


def celery_available() -> str:
    """ "" when Celery can run here, else why not."""
    try:
        import celery  # noqa: F401
    except ImportError as exc:
        return f"celery is not installed ({exc}): pip install 'celery[redis]'"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32, help="J, jobs a round")
    parser.add_argument("--tokens", type=int, default=80, help="N, tokens a stream")
    parser.add_argument("--seconds", type=float, default=2.0, help="S, seconds a stream")
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 8, 32], help="GENJOBS_CONCURRENCY values")
    parser.add_argument("--no-celery", action="store_true")
    args = parser.parse_args()
    if args.jobs <= 0:
        raise SystemExit("--jobs must be positive")
    from common import start_mongo

    mongo = start_mongo()
    streams = Streams(args.tokens, args.seconds)
    why_not = "--no-celery" if args.no_celery else celery_available()
    redis = None if why_not else Redis()
    tokens = args.jobs * args.tokens
    print(
        f"{time.strftime('%Y-%m-%d')}: {args.jobs} jobs from {OWNERS} owners, {args.tokens} tokens over"
        f" {args.seconds:g} s each, openai generator, WatchJob on every job"
    )
    try:
        for tag, lanes in enumerate(args.lanes):
            ideal = args.jobs * args.seconds / lanes
            ours = genjobs_round(mongo, streams, args.jobs, lanes, tag)
            alone = bare(streams.base_url, args.jobs, lanes)
            lat = ours["latencies"]
            print(f"concurrency {lanes}: ideal makespan {ideal:.1f} s")
            print(
                f"  genjobs   makespan {ours['makespan']:6.2f} s = {ours['makespan'] / ideal:.2f}x ideal,"
                f" {args.jobs / ours['makespan']:5.2f} jobs/s;"
                f" CPU per token: server {ours['server_cpu'] / tokens * 1e6:.0f} µs"
                f" (= {ours['server_cpu'] / max(alone['cpu'], 1e-9):.2f}x the bare client), database"
                f" {ours['db_cpu'] / tokens * 1e6:.0f} µs; progress latency p50 {percentile(lat, 50):.0f} ms"
                f" p99 {percentile(lat, 99):.0f} ms"
            )
            print(
                f"            submits took {ours['submitted']:.2f} s, the last job started"
                f" {ours['last_start']:.2f} s after the first submit; a run took p50"
                f" {ours['run_p50']:.2f} s, at most {ours['run_max']:.2f} s: from its start to its request"
                f" {ours['lead_p50'] * 1000:.0f} ms (at most {ours['lead_max'] * 1000:.0f}),"
                f" from the last word to its end {ours['tail_p50'] * 1000:.0f} ms"
                f" (at most {ours['tail_max'] * 1000:.0f}); the machine's cores {ours['busy']:.0%} busy"
            )
            print(
                f"            the server at rest: {ours['at_rest'] * 1000:.1f} ms of CPU a second, over the"
                f" makespan {ours['at_rest'] * ours['makespan'] / tokens * 1e6:.0f} µs of its CPU per token"
            )
            if lanes == 1:
                gap = between_runs(streams, tag)
                print(f"            from a stream's last word to the next request p50 {gap:.1f} ms")
            print(
                f"  bare openai client  CPU per token {alone['cpu'] / max(1, alone['words']) * 1e6:.0f} µs"
                f" (the median of {BARE_RUNS} runs, each after a first request not counted)"
            )
            if redis is not None:
                theirs = celery_round(redis, streams, args.jobs, lanes, 100 + tag)
                print(
                    f"  Celery    makespan {theirs['makespan']:6.2f} s"
                    f" = {theirs['makespan'] / ideal:.2f}x ideal,"
                    f" {args.jobs / theirs['makespan']:5.2f} jobs/s; worker CPU per token"
                    f" {theirs['cpu'] / max(1, theirs['words']) * 1e6:.0f} µs, redis"
                    f" {theirs['redis_cpu'] / max(1, theirs['words']) * 1e6:.0f} µs;"
                    f" genjobs/Celery jobs/s {theirs['makespan'] / ours['makespan']:.2f}x;"
                    f" the machine's cores {theirs['busy']:.0%} busy"
                )
                if lanes == 1:
                    gap = between_runs(streams, 100 + tag)
                    print(f"            from a stream's last word to the next request p50 {gap:.1f} ms")
        if why_not:
            print(f"Celery not run: {why_not}")
        per_job = commands_per_job(mongo, streams, min(args.jobs, 16), 8)
        print(f"MongoDB commands per job (in-process server, concurrency 8): {per_job:.1f}")
    finally:
        if redis is not None:
            redis.stop()
        streams.stop()
        mongo.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        bare_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["--streams"]:
        streams_main(int(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
