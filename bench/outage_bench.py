"""Issue 31 figures: what a 20 s provider outage costs.

A genjobs server (in process, generator=openai, the default probe interval
of 10 s and failure threshold of 3) with 5 jobs queued while its provider,
the tests' own streaming server, is away for 20 s: refusing connections
(stopped, restarted on its port) or answering 503. The runs last 20, 23 and
26 s, so that the return falls at different points of the probe interval
(a 20 s outage alone returns just before the second probe). Printed:
- jobs lost (FAILED) to the outage (goal 0), and attempts spent (goal: none,
  each job COMPLETED on attempt 1);
- requests sent to the provider while it is marked down (503 variant, where
  the provider counts them; goal: the probes only, one a probe interval);
- seconds from the provider's return to the first job running there (goal:
  under one probe interval, 10 s).

    .venv/bin/python bench/outage_bench.py
"""

from __future__ import annotations

import json
import time

from common import median, scratch, start_mongo

from genjobs.client import GenJobsClient
from genjobs.v1 import jobs_pb2 as S
from tests.fake_openai import FakeOpenAI, Plan
from tests.harness import ServerThread, make_settings, wait_for

JOBS = 5
OUTAGES = (20.0, 23.0, 26.0)  # seconds
PROBE_SECONDS = 10.0
PRICES = {"bench-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}


def one_outage(mongo_uri: str, refused: bool, outage: float) -> tuple[int, int, int, float, float]:
    """(jobs lost, attempts beyond the first, requests while marked down, seconds marked down,
    seconds from the return to the first run)."""
    with FakeOpenAI() as fake:
        settings = make_settings(
            mongo_uri,
            scratch(),
            generator="openai",
            openai_base_url=fake.base_url,
            openai_model="bench-model",
            openai_prices=json.dumps(PRICES),
            provider_probe_seconds=PROBE_SECONDS,
            retry_base_seconds=1.0,
        )
        server = ServerThread(settings).start()
        try:
            with server.client("alice") as alice:
                return _measure(alice, fake, refused, outage)
        finally:
            server.stop()


def _measure(
    alice: GenJobsClient, fake: FakeOpenAI, refused: bool, outage: float
) -> tuple[int, int, int, float, float]:
    if refused:
        fake.stop()
    else:
        fake.default = Plan(status=503, error="upstream restarting")
    went = time.monotonic()
    ids = [alice.submit("topic", topic=f"Outage {n}").id for n in range(JOBS)]
    wait_for(lambda: alice.get(ids[-1]).progress.message.startswith("waiting: "), timeout=outage)
    marked = time.monotonic()
    time.sleep(max(0.0, went + outage - time.monotonic()))  # the outage lasts its time
    back = time.monotonic()
    sent_while_down = sum(marked <= r.arrived < back for r in fake.requests)
    if refused:
        fake.restart()
    else:
        fake.default = Plan()
    done = wait_for(
        lambda: (js := [alice.get(i) for i in ids]) and all(j.status in FINAL for j in js) and js, timeout=120
    )
    first_after = min(r.arrived for r in fake.requests if r.arrived >= back)
    lost = sum(j.status == S.JOB_STATUS_FAILED for j in done)
    extra_attempts = sum(j.attempt - 1 for j in done)
    return lost, extra_attempts, sent_while_down, back - marked, first_after - back


FINAL = (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)


def main() -> None:
    mongo = start_mongo()
    try:
        for refused in (True, False):
            runs = [one_outage(mongo.uri, refused, outage) for outage in OUTAGES]
            kind = "refusing connections" if refused else "answering 503"
            lasting = ", ".join(f"{o:g}" for o in OUTAGES)
            print(f"provider {kind} for {lasting} s under {JOBS} queued jobs:")
            print(f"  jobs lost (FAILED): {[r[0] for r in runs]} (goal 0)")
            print(f"  attempts beyond the first: {[r[1] for r in runs]} (goal 0)")
            if not refused:
                sent, down = sum(r[2] for r in runs), sum(r[3] for r in runs)
                print(
                    f"  requests to the down provider: {[r[2] for r in runs]}"
                    f" in {[round(r[3]) for r in runs]} s marked down = {sent / (down / 60):.1f} a minute"
                    f" (the probes alone: {60 / PROBE_SECONDS:g} a minute)"
                )
            print(
                f"  provider back -> first job running there: {[round(r[4], 1) for r in runs]} s,"
                f" median {median([r[4] for r in runs]):.1f} s"
                f" (goal under the {PROBE_SECONDS:g} s probe interval)"
            )
    finally:
        mongo.stop()


if __name__ == "__main__":
    main()
