"""The contract a client team relies on: current errors, list views, watch
resumption, retry idempotency, error details, reflection, field annotations."""

from __future__ import annotations

from genjobs.v1 import jobs_pb2

from client import GenJobsClient
from tests.harness import wait_for

S = jobs_pb2
FINAL = (S.JOB_STATUS_COMPLETED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELLED)


def final(client: GenJobsClient, job_id: str, timeout: float = 30) -> jobs_pb2.Job:
    return wait_for(lambda: (j := client.get(job_id)).status in FINAL and j, timeout=timeout)


def test_completed_job_after_a_failed_attempt_has_no_current_error(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="flaky", extra={"demo_fail": "transient", "demo_fail_attempts": "1"})
    done = final(alice, job.id)
    assert done.status == S.JOB_STATUS_COMPLETED and done.attempt == 2
    assert not done.HasField("error")  # nothing is wrong now
    assert [e.code for e in done.attempt_errors] == ["DEMO_TRANSIENT"]  # the history stays
    listed = alice.list(statuses=["COMPLETED"]).jobs
    assert [j.id for j in listed] == [job.id] and not listed[0].HasField("error")
