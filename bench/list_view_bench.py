"""Issue 18 figures: one ListJobs page of 50 completed 2,000-word jobs, bytes
on the wire and p50 latency, by view (the default, BASIC and FULL), and what
reading the page from MongoDB costs with and without the articles.

    .venv/bin/python bench/list_view_bench.py

On a build without ListJobsRequest.view only the default row is printed (the
"before" figure).
"""

from __future__ import annotations

import time

from common import ServerProcess, make_settings, median, scratch, start_mongo

from genjobs.server.storage.paging import JobFilter
from genjobs.server.storage.store import Store
from genjobs.v1 import jobs_pb2

JOBS = 50
WORDS = 2000
CALLS = 60
RUNS = 3


def timed_page(call: object, request: jobs_pb2.ListJobsRequest) -> tuple[int, float]:
    """(serialized response bytes, p50 ms of CALLS calls)."""
    times = []
    size = 0
    for _ in range(CALLS):
        start = time.perf_counter()
        page = call(request)  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
        size = page.ByteSize()
        assert len(page.jobs) == JOBS
    return size, median(times)


def main() -> None:
    mongo = start_mongo()
    settings = make_settings(mongo.uri, scratch())
    server = ServerProcess(settings, scratch() / "server.log").start()
    try:
        with server.client("reader") as client:
            ids = [client.submit("topic", topic=f"Tea gardens {i}", word_count=WORDS).id for i in range(JOBS)]
            deadline = time.monotonic() + 300
            while client.list(statuses=["COMPLETED"], page_size=1).total_size < JOBS:
                assert time.monotonic() < deadline, "jobs did not complete"
                time.sleep(0.2)
            content = client.get(ids[0]).result.content
            print(f"{JOBS} completed jobs of {WORDS} words ({len(content)} characters each)")
            call = lambda request: client._call(client.jobs.ListJobs, request)  # noqa: E731
            views = [("default", jobs_pb2.ListJobsRequest(page_size=JOBS))]
            if hasattr(jobs_pb2, "JobView"):
                for name in ("JOB_VIEW_BASIC", "JOB_VIEW_FULL"):
                    views.append(
                        (name, jobs_pb2.ListJobsRequest(page_size=JOBS, view=jobs_pb2.JobView.Value(name)))
                    )
            print(
                f"{'ListJobs view':<16} {'bytes':>9} {'p50 ms':>8}   (median of {RUNS} runs of {CALLS} calls)"
            )
            for name, request in views:
                runs = [timed_page(call, request) for _ in range(RUNS)]
                print(f"{name:<16} {runs[0][0]:>9} {median([r[1] for r in runs]):>8.2f}")
        store = Store(mongo.uri, settings.db_name)
        query = store.jobs.job_query("reader", JobFilter())
        for label, projection in (("whole documents", None), ('projection {"result": 0}', {"result": 0})):
            times = []
            for _ in range(CALLS):
                start = time.perf_counter()
                docs = list(store.database.jobs.find(query, projection).sort("ck", -1).limit(JOBS + 1))
                times.append((time.perf_counter() - start) * 1000)
                assert len(docs) == JOBS
            print(f"MongoDB read of the page, {label}: p50 {median(times):.2f} ms")
        store.close()
    finally:
        server.terminate()
        mongo.stop()


if __name__ == "__main__":
    main()
