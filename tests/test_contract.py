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


def list_page(client: GenJobsClient, **fields: object) -> jobs_pb2.ListJobsResponse:
    """A ListJobs call with raw request fields (the view among them)."""
    return client._call(client.jobs.ListJobs, jobs_pb2.ListJobsRequest(**fields))  # type: ignore[arg-type]


def test_lists_leave_articles_out_unless_asked_and_stay_small(alice: GenJobsClient) -> None:
    ids = [alice.submit("topic", topic=f"Long read {i}", word_count=5000).id for i in range(50)]
    wait_for(lambda: list_page(alice, statuses=[S.JOB_STATUS_COMPLETED], page_size=1).total_size == 50, 90)
    basic = list_page(alice, page_size=50)
    assert len(basic.jobs) == 50 and basic.ByteSize() < 64 * 1024
    first = basic.jobs[0]
    assert first.result.content == "" and first.result.title and first.result.word_count >= 4900
    assert list_page(alice, page_size=50, view=S.JOB_VIEW_BASIC) == basic
    full = list_page(alice, page_size=50, view=S.JOB_VIEW_FULL)
    whole = alice.get(ids[-1])
    assert full.jobs[0] == whole and len(whole.result.content.split()) >= 4900
