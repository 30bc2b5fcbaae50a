"""JobService through the typed client against a live server and a real wire server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from genjobs.client import FailedPrecondition, GenJobsClient, InvalidArgument, NotFound
from genjobs.v1 import jobs_pb2
from tests.harness import MongoServer, ServerThread, make_settings, serving, wait_for

QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED = (
    jobs_pb2.JOB_STATUS_QUEUED,
    jobs_pb2.JOB_STATUS_PROCESSING,
    jobs_pb2.JOB_STATUS_COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
)


def status_of(client: GenJobsClient, job_id: str, status: int) -> jobs_pb2.Job | None:
    job = client.get(job_id)
    return job if job.status == status else None


def occupy_dispatcher(client: GenJobsClient) -> jobs_pb2.Job:
    """Start a long job so that jobs submitted after it stay QUEUED."""
    blocker = client.submit("topic", topic="blocker", extra={"demo_seconds": "60"})
    wait_for(lambda: status_of(client, blocker.id, PROCESSING))
    return blocker


def test_submitted_job_runs_to_completion_with_an_article(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="Green tea", word_count=120, tone="friendly", project="blog")
    assert job.status == QUEUED and job.owner == "alice" and job.project == "blog"
    assert job.params.topic == "Green tea" and job.params.word_count == 120
    assert job.max_attempts == 3 and job.create_time.seconds > 0
    done = wait_for(lambda: status_of(alice, job.id, COMPLETED))
    assert done.result.word_count == 120
    assert len(done.result.content.split()) == 120
    assert "tea" in done.result.content.lower()
    assert done.result.cost_cents > 0 and done.attempt == 1
    assert done.end_time.ToDatetime() >= done.start_time.ToDatetime()


def test_default_word_count_is_filled_in(alice: GenJobsClient) -> None:
    job = alice.submit("keywords", keywords=["seo", "tea"])
    assert job.params.word_count == 800


@pytest.mark.parametrize(
    ("mode", "fields", "bad_field"),
    [
        ("MODE_UNSPECIFIED", {"topic": "x"}, "mode"),
        ("topic", {}, "params.topic"),
        ("keywords", {}, "params.keywords"),
        ("spin", {"topic": "x"}, "params.source_text"),
        ("trends", {}, "params.topic"),
        ("topic", {"topic": "x", "word_count": 10}, "params.word_count"),
        ("topic", {"topic": "x" * 501}, "params.topic"),
        ("topic", {"topic": "x", "extra": {"demo_fail": "sometimes"}}, "params.extra['demo_fail']"),
        ("topic", {"topic": "x", "keywords": [" "]}, "params.keywords[0]"),
    ],
)
def test_bad_submissions_name_the_field_and_store_nothing(
    alice: GenJobsClient, mode: str, fields: dict[str, object], bad_field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        alice.submit(mode, **fields)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_REQUEST"
    assert bad_field in [field for field, _ in caught.value.violations]
    assert alice.list().total_size == 0


def test_max_attempts_out_of_range_is_refused(alice: GenJobsClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        alice.submit("topic", topic="x", max_attempts=11)
    assert [f for f, _ in caught.value.violations] == ["max_attempts"]


def test_request_id_makes_submit_idempotent_per_owner(alice: GenJobsClient, bob: GenJobsClient) -> None:
    first = alice.submit("topic", topic="Tea", request_id="req-1")
    again = alice.submit("topic", topic="Tea", request_id="req-1")
    other = bob.submit("topic", topic="Tea", request_id="req-1")
    assert again.id == first.id
    assert other.id != first.id
    assert alice.list().total_size == 1


def test_concurrent_submits_share_inserts_and_keep_request_ids_unique(alice: GenJobsClient) -> None:
    # Submits that arrive together are stored in one insert; a request_id
    # repeated inside such a batch must still give every caller the one job.
    request_ids = ["same"] * 8 + [f"own-{i}" for i in range(8)]
    with ThreadPoolExecutor(len(request_ids)) as pool:
        jobs = list(pool.map(lambda rid: alice.submit("topic", topic="Tea", request_id=rid), request_ids))
    assert len({job.id for job in jobs[:8]}) == 1
    assert len({job.id for job in jobs}) == 9
    assert alice.list().total_size == 9


def test_other_users_jobs_are_not_found(alice: GenJobsClient, bob: GenJobsClient) -> None:
    job = alice.submit("topic", topic="private")
    for action in (bob.get, bob.cancel, bob.retry, bob.delete):
        with pytest.raises(NotFound) as caught:
            action(job.id)
        assert caught.value.reason == "JOB_NOT_FOUND"
    assert bob.list().total_size == 0
    assert alice.get(job.id).id == job.id


def test_admin_reads_every_users_jobs(server: ServerThread, alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="seen by admin")
    with server.client("root", admin=True) as admin:
        assert admin.get(job.id).owner == "alice"
        assert job.id in [j.id for j in admin.iter_jobs()]


def test_malformed_id_is_invalid_argument(alice: GenJobsClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        alice.get("not-an-id")
    assert caught.value.violations[0][0] == "id"


def test_cancel_queued_job_at_once(alice: GenJobsClient) -> None:
    occupy_dispatcher(alice)
    job = alice.submit("topic", topic="to cancel")
    cancelled = alice.cancel(job.id)
    assert cancelled.status == CANCELLED
    assert cancelled.error.code == "CANCELLED"
    assert alice.get(job.id).status == CANCELLED


def test_cancel_running_job_stops_it_within_two_seconds(alice: GenJobsClient) -> None:
    blocker = occupy_dispatcher(alice)
    asked = alice.cancel(blocker.id)
    assert asked.cancel_requested and asked.status == PROCESSING
    wait_for(lambda: status_of(alice, blocker.id, CANCELLED), timeout=2.0)


def test_cancel_final_job_names_its_status(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="quick")
    wait_for(lambda: status_of(alice, job.id, COMPLETED))
    with pytest.raises(FailedPrecondition) as caught:
        alice.cancel(job.id)
    assert caught.value.reason == "JOB_NOT_CANCELLABLE"
    assert caught.value.metadata["status"] == "COMPLETED"
    assert "completed" in caught.value.message


def test_retry_makes_a_new_job_once(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="fails", extra={"demo_fail": "permanent"})
    failed = wait_for(lambda: status_of(alice, job.id, FAILED))
    assert failed.error.code == "DEMO_PERMANENT" and not failed.error.retryable
    retried = alice.retry(job.id)
    assert retried.id != job.id and retried.retry_of == job.id
    assert retried.params == job.params and retried.mode == job.mode
    assert alice.retry(job.id).id == retried.id  # a second retry returns the same job


def test_retry_refused_unless_failed_or_cancelled(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="ok")
    wait_for(lambda: status_of(alice, job.id, COMPLETED))
    with pytest.raises(FailedPrecondition) as caught:
        alice.retry(job.id)
    assert caught.value.reason == "JOB_NOT_RETRYABLE"


def test_delete_only_final_jobs_and_their_events(alice: GenJobsClient) -> None:
    occupy_dispatcher(alice)
    job = alice.submit("topic", topic="delete me")
    with pytest.raises(FailedPrecondition) as caught:
        alice.delete(job.id)
    assert caught.value.reason == "JOB_NOT_DELETABLE"
    assert "cancel it first" in caught.value.message
    alice.cancel(job.id)
    alice.delete(job.id)
    with pytest.raises(NotFound):
        alice.get(job.id)


def test_list_filters(alice: GenJobsClient) -> None:
    occupy_dispatcher(alice)
    before = datetime.now(UTC)
    a = alice.submit("topic", topic="Green Tea guide", project="p1")
    b = alice.submit("keywords", keywords=["coffee", "Espresso"], project="p2")
    c = alice.submit("topic", topic="Mountains")
    alice.cancel(c.id)

    def ids(**filters: object) -> list[str]:
        return [j.id for j in alice.iter_jobs(**filters)]

    assert ids(statuses=["cancelled"]) == [c.id]
    assert ids(modes=["keywords"]) == [b.id]
    assert ids(query="TEA") == [a.id]
    assert ids(query="espresso") == [b.id]
    assert ids(project="p2") == [b.id]
    assert set(ids(created_after=before)) == {a.id, b.id, c.id}
    assert ids(created_before=before - timedelta(hours=1)) == []
    assert ids(statuses=["queued"], modes=["topic"]) == [a.id]


def test_list_pages_newest_first_and_stable_while_jobs_arrive(alice: GenJobsClient) -> None:
    occupy_dispatcher(alice)
    submitted = [alice.submit("topic", topic=f"t{i}").id for i in range(7)]
    first = alice.list(page_size=3, statuses=["queued"])
    assert [j.id for j in first.jobs] == submitted[::-1][:3]
    assert first.total_size == 7
    alice.submit("topic", topic="late arrival")
    second = alice.list(page_size=3, statuses=["queued"], page_token=first.next_page_token)
    third = alice.list(page_size=3, statuses=["queued"], page_token=second.next_page_token)
    assert [j.id for j in [*second.jobs, *third.jobs]] == submitted[::-1][3:]
    assert third.next_page_token == ""


def test_page_token_rejected_when_filters_change(alice: GenJobsClient) -> None:
    for i in range(3):
        alice.submit("topic", topic=f"t{i}")
    first = alice.list(page_size=1)
    with pytest.raises(InvalidArgument) as caught:
        alice.list(page_size=1, modes=["spin"], page_token=first.next_page_token)
    assert caught.value.reason == "PAGE_TOKEN_FILTER_MISMATCH"
    with pytest.raises(InvalidArgument) as caught:
        alice.list(page_token="garbage!")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_page_size_rules(alice: GenJobsClient) -> None:
    with pytest.raises(InvalidArgument):
        alice.list(page_size=-1)
    for i in range(3):
        alice.submit("topic", topic=f"t{i}")
    assert len(alice.list(page_size=0).jobs) == 3
    assert len(alice.list(page_size=1000).jobs) == 3


def test_bulk_operations(alice: GenJobsClient) -> None:
    occupy_dispatcher(alice)
    queued = [alice.submit("topic", topic=f"q{i}").id for i in range(3)]
    preview = alice.run_bulk_operation("cancel_all_queued", validate_only=True)
    assert preview.affected_count == 3 and set(preview.job_ids) == set(queued)
    assert alice.get(queued[0]).status == QUEUED
    done = alice.run_bulk_operation("CANCEL_ALL_QUEUED")
    assert set(done.job_ids) == set(queued) and done.remaining_count == 0
    assert all(alice.get(i).status == CANCELLED for i in queued)
    retried = alice.run_bulk_operation("RETRY_ALL_FAILED")
    assert retried.affected_count == 0  # cancelled jobs are not "failed"
    for job_id in queued:
        alice.delete(job_id)


def test_bulk_retry_and_clean(alice: GenJobsClient) -> None:
    failing = [alice.submit("topic", topic=f"f{i}", extra={"demo_fail": "permanent"}).id for i in range(2)]
    ok = alice.submit("topic", topic="fine").id
    for job_id in failing:
        wait_for(lambda job_id=job_id: status_of(alice, job_id, FAILED))
    wait_for(lambda: status_of(alice, ok, COMPLETED))
    retried = alice.run_bulk_operation("retry_all_failed")
    assert retried.affected_count == 2
    assert {alice.get(i).retry_of for i in retried.job_ids} == set(failing)
    for job_id in retried.job_ids:  # the retries fail too (demo_fail is kept)
        wait_for(lambda job_id=job_id: status_of(alice, job_id, FAILED))
    again = alice.run_bulk_operation("retry_all_failed")
    # Each failed job is retried once: now only the failed retries are.
    assert {alice.get(i).retry_of for i in again.job_ids} == set(retried.job_ids)
    cleaned = alice.run_bulk_operation("delete_all_completed")
    assert ok in cleaned.job_ids
    with pytest.raises(NotFound):
        alice.get(ok)


def test_bulk_operation_acts_on_at_most_100(alice: GenJobsClient) -> None:
    occupy_dispatcher(alice)
    for i in range(105):
        alice.submit("topic", topic=f"n{i}")
    first = alice.run_bulk_operation("cancel_all_queued")
    assert first.affected_count == 100 and first.remaining_count == 5
    second = alice.run_bulk_operation("cancel_all_queued")
    assert second.affected_count == 5 and second.remaining_count == 0


def test_stats(alice: GenJobsClient, bob: GenJobsClient) -> None:
    done = alice.submit("topic", topic="a", project="p")
    failed = alice.submit("keywords", keywords=["b"], extra={"demo_fail": "permanent"})
    bob.submit("topic", topic="not alice's")
    wait_for(lambda: status_of(alice, done.id, COMPLETED))
    wait_for(lambda: status_of(alice, failed.id, FAILED))
    stats = alice.stats()
    assert stats.total_jobs == 2
    assert {s.status: s.count for s in stats.by_status} == {COMPLETED: 1, FAILED: 1}
    assert {m.mode: m.count for m in stats.by_mode} == {jobs_pb2.MODE_TOPIC: 1, jobs_pb2.MODE_KEYWORDS: 1}
    assert stats.failure_rate == pytest.approx(0.5)
    assert stats.total_cost_cents == alice.get(done.id).result.cost_cents
    assert stats.mean_duration_seconds > 0
    assert alice.stats(project="p").total_jobs == 1
    assert alice.stats(created_after=datetime.now(UTC) + timedelta(hours=1)).total_jobs == 0


def test_delete_mode_expires_completed_jobs_keeps_failed_ones(mongo: MongoServer, tmp_path: Path) -> None:
    retention_seconds = 1.5
    settings = make_settings(
        mongo.uri, tmp_path, retention_days=retention_seconds / 86400, retention_mode="delete"
    )
    with serving(settings) as alice:
        done = alice.submit("topic", topic="short-lived")
        failed = alice.submit("topic", topic="kept", extra={"demo_fail": "permanent"})
        wait_for(lambda: status_of(alice, done.id, COMPLETED))
        wait_for(lambda: status_of(alice, failed.id, FAILED))

        def gone() -> bool:
            try:
                alice.get(done.id)
            except NotFound:
                return True
            return False

        wait_for(gone, timeout=retention_seconds * 4)
        assert alice.get(failed.id).status == FAILED
        assert [j.id for j in alice.iter_jobs()] == [failed.id]
