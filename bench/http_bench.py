"""Issue 15 figures: the HTTP/JSON face and the dashboard, on one server process.

- GetJob over HTTP against over gRPC: p50 latency and throughput with 8
  callers each, in alternating rounds, as ratios.
- The dashboard in headless chromium with 50 jobs stored: time from the
  start of navigation to the jobs table showing all 50 rows, and the bytes
  the page load transferred (a fresh browser context each time: no cache).
- Event fan-out: 1,000 server-sent-event streams on one running job,
  progress publish-to-receive p50 and p99, beside 1,000 WatchJob gRPC streams
  on the same server in the same run (bench/watch_bench.py's measurement).

    .venv/bin/python bench/http_bench.py
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime

import grpc
from common import ServerProcess, make_settings, median, percentile, scratch, start_mongo
from watch_bench import fan_out

from genjobs.server.runtime.embedded import free_port
from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import wait_for
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS

CALLERS = 8
ROUND_SECONDS = 4.0
ROUNDS = 3
PAGE_JOBS = 50
PAGE_RUNS = 5
FAN_OUT = 1_000
FAN_OUT_RUNS = 3


class Http11:
    """A minimal keep-alive HTTP/1.1 client (as grpc's client is C, so that
    the figure is the server's cost, not a Python HTTP library's)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Http11:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def get(self, path: str) -> bytes:
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{self.auth}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length)
        if status != b"200":
            raise SystemExit(f"GET {path}: {status.decode()} {body[:200]!r}")
        return body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def timed(call: object, seconds: float) -> tuple[list[float], float]:
    """Latencies of `call` (an async function) made by CALLERS callers for `seconds`."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        while time.perf_counter() < end:
            start = time.perf_counter()
            await call(i)  # type: ignore[operator]
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    return latencies, len(latencies) / (time.perf_counter() - began)


async def get_job_rounds(
    server: ServerProcess, http_port: int, job_id: str
) -> dict[str, list[tuple[float, float]]]:
    token = server.token()
    channel = grpc.aio.insecure_channel(server.target)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    request = jobs_pb2.GetJobRequest(id=job_id)
    clients = [await Http11(http_port, token).open() for _ in range(CALLERS)]
    path = f"/v1/jobs/{job_id}"

    async def over_grpc(i: int) -> None:
        await stub.GetJob(request, metadata=metadata)

    async def over_http(i: int) -> None:
        await clients[i].get(path)

    await timed(over_grpc, 1.0)  # warm up both
    await timed(over_http, 1.0)
    results: dict[str, list[tuple[float, float]]] = {"grpc": [], "http": []}
    for _ in range(ROUNDS):
        for name, call in (("grpc", over_grpc), ("http", over_http)):
            latencies, rate = await timed(call, ROUND_SECONDS)
            results[name].append((percentile(latencies, 50) * 1000, rate))
    for client in clients:
        client.close()
    await channel.close()
    return results


# Set before any page script runs: notes when the table shows all 50 rows.
TABLE_WATCH = """
window.__tableShown = null;
new MutationObserver((_, observer) => {
  if (document.querySelectorAll('tr[data-job-id]').length >= PAGE_JOBS) {
    window.__tableShown = performance.now();
    observer.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
""".replace("PAGE_JOBS", str(PAGE_JOBS))


def dashboard_runs(http_port: int, token: str) -> list[tuple[float, int, float]]:
    """(ms from navigation start to the table with 50 rows, bytes transferred,
    ms to the last API answer) per run."""
    from playwright.sync_api import Request, sync_playwright

    runs = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(PAGE_RUNS + 1):  # the first run warms the server and the browser
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.add_init_script(TABLE_WATCH)
            sizes: list[int] = []

            def finished(request: Request, sizes: list[int] = sizes) -> None:
                sizes.append(sum(request.sizes()[k] for k in ("responseBodySize", "responseHeadersSize")))

            page.on("requestfinished", finished)
            page.goto(f"http://127.0.0.1:{http_port}/#token={token}")
            # A function, not an expression: the page's CSP refuses eval, which an expression needs.
            page.wait_for_function("() => window.__tableShown !== null", timeout=30_000)
            shown = page.evaluate("window.__tableShown")
            answered = page.evaluate(
                "Math.max(...performance.getEntriesByType('resource')"
                ".filter(e => e.name.includes('/v1/')).map(e => e.responseEnd))"
            )
            page.wait_for_load_state("networkidle")
            runs.append((float(shown), sum(sizes), float(answered)))
            context.close()
        browser.close()
    return runs[1:]


async def sse_fan_out(server: ServerProcess, http_port: int) -> list[float]:
    """Publish-to-receive ms of progress events on FAN_OUT server-sent-event streams."""
    token = server.token()
    with server.client() as c:
        blocker = c.submit("topic", topic="watched by many", extra={"demo_seconds": "3600"})
        wait_for(lambda: c.get(blocker.id).status == jobs_pb2.JOB_STATUS_PROCESSING)
        watched = c.submit("topic", topic="fan-out", extra={"demo_seconds": "8"})
    latencies: list[float] = []
    started = 0
    all_started = asyncio.Event()
    request = (
        f"GET /v1/jobs/{watched.id}:watch HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()

    async def stream() -> None:
        nonlocal started
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        first = True
        try:
            while True:
                chunk = await reader.readuntil(b"\n\n")  # chunked framing lines are skipped below
                if b'"type":"JOB_EVENT_TYPE_' not in chunk:
                    if chunk.endswith(b"0\r\n\r\n") or not chunk:
                        return
                    continue
                if first:
                    first = False
                    started += 1
                    if started == FAN_OUT:
                        all_started.set()
                if b"JOB_EVENT_TYPE_PROGRESS" in chunk:
                    stamp = chunk.rsplit(b'"time":"', 1)[1].split(b'"', 1)[0].decode()
                    sent = datetime.fromisoformat(stamp).timestamp()
                    latencies.append(time.time() * 1000 - sent * 1000)
                if b'"status":"JOB_STATUS_COMPLETED"' in chunk or b'"status":"JOB_STATUS_CANCELLED"' in chunk:
                    return
        except asyncio.IncompleteReadError:
            return
        finally:
            writer.close()

    tasks = []
    for i in range(FAN_OUT):
        tasks.append(asyncio.create_task(stream()))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # let the server keep up with new streams
    await asyncio.wait_for(all_started.wait(), timeout=600)
    with server.client() as c:
        c.cancel(blocker.id)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    return latencies


def main() -> None:
    mongo = start_mongo()
    http_port = free_port()
    settings = replace(
        make_settings(mongo.uri, scratch()),
        heartbeat_seconds=15.0,
        http_port=str(http_port),
        max_streams_per_owner=10 * FAN_OUT,  # one owner holds every stream: a fan-out measure, not the cap
    )
    server = ServerProcess(settings, scratch() / "server.log").start()
    with server.client() as c:
        job = c.submit("topic", topic="Read many times", word_count=400)
        wait_for(lambda: c.get(job.id).status == jobs_pb2.JOB_STATUS_COMPLETED)
    rounds = asyncio.run(get_job_rounds(server, http_port, job.id))
    grpc_p50, http_p50 = (median([r[0] for r in rounds[k]]) for k in ("grpc", "http"))
    grpc_rate, http_rate = (median([r[1] for r in rounds[k]]) for k in ("grpc", "http"))
    print(f"GetJob, {CALLERS} callers, {ROUNDS} alternating rounds of {ROUND_SECONDS:.0f} s (medians)")
    print(f"  gRPC  p50 {grpc_p50:6.2f} ms  {grpc_rate:7.0f} calls/s")
    print(f"  HTTP  p50 {http_p50:6.2f} ms  {http_rate:7.0f} calls/s")
    print(
        f"  HTTP/gRPC: p50 {http_p50 / grpc_p50:.2f}x, throughput {http_rate / grpc_rate:.2f}x"
        " (goal: p50 <= 1.5x)"
    )

    with server.client("dashboard") as c:
        ids = [c.submit("topic", topic=f"Dashboard article {i}", word_count=400).id for i in range(PAGE_JOBS)]
        wait_for(lambda: all(c.get(i).status == jobs_pb2.JOB_STATUS_COMPLETED for i in ids), timeout=120)
    page = dashboard_runs(http_port, server.token("dashboard"))
    print(f"Dashboard, {PAGE_JOBS} completed jobs, {PAGE_RUNS} loads in fresh contexts (headless chromium)")
    print(
        f"  navigation start to table shown: median {median([p[0] for p in page]):.0f} ms "
        f"(each {[round(p[0]) for p in page]}; goal <= 300 ms)"
    )
    print(f"  of which waiting for the API's answers: median {median([p[2] for p in page]):.0f} ms")
    print(f"  transferred: median {median([p[1] for p in page]) / 1024:.1f} KB (goal <= 150 KB)")

    ours_sse, ours_grpc = [], []
    for _ in range(FAN_OUT_RUNS):  # alternating, so that both see the same machine
        sse = asyncio.run(sse_fan_out(server, http_port))
        watch = asyncio.run(fan_out(server))
        ours_sse.append((percentile(sse, 50), percentile(sse, 99)))
        ours_grpc.append((percentile(watch, 50), percentile(watch, 99)))
    print(f"Fan-out: {FAN_OUT} streams on one running job, progress publish-to-receive, {FAN_OUT_RUNS} runs")
    for name, runs in (("SSE (HTTP)", ours_sse), ("WatchJob (gRPC)", ours_grpc)):
        p50s, p99s = [r[0] for r in runs], [r[1] for r in runs]
        print(
            f"  {name:<16} median p50 {median(p50s):5.1f} ms  p99 {median(p99s):5.1f} ms"
            f"  (p99 of each run {[round(x) for x in p99s]})"
        )
    server.terminate()
    mongo.stop()


if __name__ == "__main__":
    main()
