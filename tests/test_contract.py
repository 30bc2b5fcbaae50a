"""The contract a client team relies on: current errors, list views, watch
resumption, retry idempotency, error details, reflection, field annotations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from google.api import field_behavior_pb2, resource_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from genjobs.client import GenJobsClient, GenJobsError, translate
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.harness import SECRET, MongoServer, ServerThread, make_settings, wait_for

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


def test_resuming_beyond_the_last_event_is_out_of_range(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="short")
    done = final(alice, job.id)
    last = list(alice.watch(done.id))[-1].sequence
    with pytest.raises(grpc.RpcError) as caught:
        list(
            alice.jobs.WatchJob(
                S.WatchJobRequest(id=job.id, after_sequence=last + 5), metadata=alice._metadata
            )
        )
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert translate(caught.value).reason == "SEQUENCE_OUT_OF_RANGE" and str(last) in caught.value.details()
    assert (
        list(alice.jobs.WatchJob(S.WatchJobRequest(id=job.id, after_sequence=last), metadata=alice._metadata))
        == []
    )

    bulk = alice.create_bulk("topic", [{"topic": f"item {i}"} for i in range(10)])
    request = bulk_pb2.WatchBulkJobRequest(id=bulk.id, after_sequence=10_000)
    with pytest.raises(grpc.RpcError) as caught:
        list(alice.bulk.WatchBulkJob(request, metadata=alice._metadata))
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert translate(caught.value).reason == "SEQUENCE_OUT_OF_RANGE"


def test_heartbeats_carry_the_time_and_the_last_sequence_sent(alice: GenJobsClient) -> None:
    job = alice.submit("topic", topic="slow", extra={"demo_seconds": "30"})
    stream = alice.jobs.WatchJob(S.WatchJobRequest(id=job.id), metadata=alice._metadata)
    sent = 0
    try:
        for event in stream:  # heartbeats come once a second of quiet in tests
            if event.type == S.JOB_EVENT_TYPE_HEARTBEAT:
                assert event.sequence == sent > 0
                assert abs(event.time.ToDatetime(UTC) - datetime.now(UTC)) < timedelta(seconds=30)
                break
            sent = event.sequence
    finally:
        stream.cancel()
        alice.cancel(job.id)


def test_retry_request_id_names_one_retry(alice: GenJobsClient) -> None:
    failed = final(alice, alice.submit("topic", topic="broken", extra={"demo_fail": "permanent"}).id)
    first = alice.retry(failed.id, request_id="r1")
    assert alice.retry(failed.id, request_id="r1").id == first.id  # a repeated request
    assert first.retry_of == failed.id and first.request_id == "r1"
    assert final(alice, first.id).status == S.JOB_STATUS_FAILED  # failed again
    second = alice.retry(failed.id, request_id="r2")  # another request: another retry
    assert second.id != first.id and second.retry_of == failed.id
    assert alice.retry(failed.id, request_id="r2").id == second.id
    plain = alice.retry(failed.id)  # no request_id: the job's one default retry
    assert plain.id not in (first.id, second.id) and alice.retry(failed.id).id == plain.id
    assert alice.get(failed.id).status == S.JOB_STATUS_FAILED


def retry_delay(error: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay of an error, in seconds; None without one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def test_unavailable_carries_a_retry_delay(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    mongo = MongoServer(tmp_path / "db", own=True)
    mongo.start()
    server = ServerThread(make_settings(mongo.uri, tmp_path)).start()
    try:
        with server.client() as alice:
            job = alice.submit("topic", topic="before the outage")
            mongo.stop()
            with pytest.raises(grpc.RpcError) as caught:
                alice.jobs.GetJob(S.GetJobRequest(id=job.id), metadata=alice._metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert (retry_delay(caught.value) or 0) > 0
    finally:
        server.stop()
        mongo.stop()


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("not.a.jwt", "not a genjobs token"),
        ("abc", "not a genjobs token"),
        (
            jwt.encode({"sub": "alice", "exp": 9999999999}, "another-secret-0123456789abcdef0123", "HS256"),
            "signed",
        ),
        (jwt.encode({"exp": 9999999999}, SECRET, "HS256"), "names no user"),
        (jwt.encode({"sub": "alice"}, SECRET, "HS256"), "no expiry"),
        (
            jwt.encode({"sub": "alice", "exp": 9999999999, "nbf": 9999999990}, SECRET, "HS256"),
            "not valid yet",
        ),
    ],
)
def test_invalid_token_is_explained_in_the_service_words(
    server: ServerThread, token: str, words: str
) -> None:
    with GenJobsClient(server.target, token) as caller, pytest.raises(GenJobsError) as caught:
        caller.list()
    assert caught.value.reason == "INVALID_TOKEN" and words in str(caught.value)
    for jwt_words in ("segments", "Signature verification", "claim", "padding", "Invalid", "payload"):
        assert jwt_words not in str(caught.value)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_is_served_as_v1_and_v1alpha(server: ServerThread, version: str) -> None:
    # The two protocols are identical on the wire: v1alpha's messages serve for both.
    with grpc.insecure_channel(server.target) as channel:
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="genjobs.v1.JobService"),
        ]
        listed, found = list(info(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "genjobs.v1.JobService",
        "genjobs.v1.BulkService",
        f"grpc.reflection.{version}.ServerReflection",
    } <= names
    assert found.file_descriptor_response.file_descriptor_proto


def test_every_request_field_says_whether_it_is_required() -> None:
    unannotated = [
        f"{method.input_type.name}.{field.name}"
        for file in (jobs_pb2.DESCRIPTOR, bulk_pb2.DESCRIPTOR)
        for service in file.services_by_name.values()
        for method in service.methods
        for field in method.input_type.fields
        if not field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    ]
    assert unannotated == []
    behaviors = (
        jobs_pb2.Job.DESCRIPTOR.fields_by_name["id"]
        .GetOptions()
        .Extensions[field_behavior_pb2.field_behavior]
    )
    assert list(behaviors) == [field_behavior_pb2.OUTPUT_ONLY]
    resource = jobs_pb2.Job.DESCRIPTOR.GetOptions().Extensions[resource_pb2.resource]
    assert resource.type == "genjobs/Job" and resource.name_field == "id"
    reference = (
        jobs_pb2.GetJobRequest.DESCRIPTOR.fields_by_name["id"]
        .GetOptions()
        .Extensions[resource_pb2.resource_reference]
    )
    assert reference.type == "genjobs/Job"


def test_durations_are_durations(alice: GenJobsClient) -> None:
    done = final(alice, alice.submit("topic", topic="timed", extra={"demo_seconds": "0.5"}).id)
    elapsed = done.progress.elapsed.ToTimedelta().total_seconds()
    assert elapsed >= 0.4 and abs(elapsed - done.progress.elapsed_seconds) < 1e-3
    stats = alice._call(alice.jobs.GetJobStats, S.GetJobStatsRequest())
    mean = stats.mean_duration.ToTimedelta().total_seconds()
    assert mean >= 0.4 and abs(mean - stats.mean_duration_seconds) < 1e-3
