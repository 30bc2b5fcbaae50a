"""Hostile input through the real stubs: forged page tokens, unknown enum
values, extreme timestamps, huge inputs, request-id hijacks, bad bodies.
Each answer must be INVALID_ARGUMENT (or the right code) naming the field,
with an error small enough for any client to read."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from genjobs.v1 import bulk_pb2, bulk_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from tests.harness import SECRET, MongoServer, ServerThread, make_settings, wait_for

TRAILER_LIMIT = 2048


@pytest.fixture(scope="module")
def shared(mongo: MongoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for the module: every test uses users of its own."""
    running = ServerThread(make_settings(mongo.uri, tmp_path_factory.mktemp("input"))).start()
    yield running
    running.stop()


class Caller:
    """Stubs of both services for one user, and the last error's details."""

    def __init__(self, server: ServerThread, user: str = "", token: str = "") -> None:
        self.user = user or "u" + uuid.uuid4().hex[:10]
        self.metadata = (("authorization", f"Bearer {token or server.token(self.user)}"),)
        self.channel = grpc.insecure_channel(server.target)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.bulk = bulk_pb2_grpc.BulkServiceStub(self.channel)

    def ok(self, method: Callable[..., Any], request: Any) -> Any:
        return method(request, metadata=self.metadata, timeout=30)

    def fails(self, method: Callable[..., Any], request: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            result = method(request, metadata=self.metadata, timeout=30)
            if not hasattr(result, "ListFields"):  # a stream: read it
                list(result)
        return caught.value


def details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """The ErrorInfo and the BadRequest field violations of an error."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    status = status_pb2.Status.FromString(raw)
    info, violations = error_details_pb2.ErrorInfo(), []
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            any_.Unpack(info)
        else:
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return info, violations


def trailer_size(error: grpc.RpcError) -> int:
    """What the error costs in trailers: status details and message."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    return len(raw) + len((error.details() or "").encode())


def assert_invalid(error: grpc.RpcError, field: str) -> list[tuple[str, str]]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    _, violations = details(error)
    assert field in [f for f, _ in violations], violations
    assert trailer_size(error) < TRAILER_LIMIT
    return violations


def b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode().rstrip("=")


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def bulk_items(n: int = 10) -> list[jobs_pb2.GenerationParams]:
    return [jobs_pb2.GenerationParams(topic=f"item {i}", word_count=60) for i in range(n)]


def forged_payloads(real: dict[str, Any]) -> list[bytes]:
    """Valid base64 and JSON, with fields of the wrong type or out of range."""
    out = [
        json.dumps({**real, key: value}).encode()
        for key in ("b", "t")
        for value in (2**63, 10**30, -(2**64), "x", [], None, 1.5, True)
    ]
    out += [b'{"b":1e400,"t":1,"f":"%s"}' % str(real.get("f")).encode(), b"[]", b"null", b"\xff\xfe"]
    return out


# ---- 3 and 11: page tokens ---------------------------------------------------


def test_forged_job_page_tokens_are_invalid_argument(shared: ServerThread) -> None:
    me = Caller(shared)
    for i in range(2):
        me.ok(
            me.jobs.SubmitJob,
            jobs_pb2.SubmitJobRequest(
                mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic=f"t{i}")
            ),
        )
    first = me.ok(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1))
    real = json.loads(unb64(first.next_page_token.split(".")[0]))
    for payload in forged_payloads(real):
        error = me.fails(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1, page_token=b64(payload)))
        assert_invalid(error, "page_token")


def test_forged_total_size_is_refused(shared: ServerThread) -> None:
    me = Caller(shared)
    for i in range(3):
        me.ok(
            me.jobs.SubmitJob,
            jobs_pb2.SubmitJobRequest(
                mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic=f"t{i}")
            ),
        )
    first = me.ok(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1))
    assert first.total_size == 3
    payload, _, signature = first.next_page_token.partition(".")
    claims = json.loads(unb64(payload))
    claims["t"] = 987654
    forged = b64(json.dumps(claims, separators=(",", ":")).encode())
    for token in (forged, f"{forged}.{signature}"):
        error = me.fails(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1, page_token=token))
        assert_invalid(error, "page_token")
    second = me.ok(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1, page_token=first.next_page_token))
    assert second.total_size == 3 and len(second.jobs) == 1


def test_forged_bulk_page_tokens_are_invalid_argument(shared: ServerThread) -> None:
    me = Caller(shared)
    for _ in range(2):
        me.ok(
            me.bulk.CreateBulkJob, bulk_pb2.CreateBulkJobRequest(mode=jobs_pb2.MODE_TOPIC, items=bulk_items())
        )
    first = me.ok(me.bulk.ListBulkJobs, bulk_pb2.ListBulkJobsRequest(page_size=1))
    real = json.loads(unb64(first.next_page_token.split(".")[0]))
    for payload in forged_payloads(real):
        error = me.fails(
            me.bulk.ListBulkJobs, bulk_pb2.ListBulkJobsRequest(page_size=1, page_token=b64(payload))
        )
        assert_invalid(error, "page_token")


def test_forged_notification_page_tokens_are_invalid_argument(shared: ServerThread) -> None:
    me = Caller(shared)
    # The fingerprint an unsigned token of this listing carried: the owner's hash.
    real = {"b": 1, "t": 0, "f": hashlib.sha256(me.user.encode()).hexdigest()[:16]}
    for payload in forged_payloads(real):
        error = me.fails(
            me.bulk.ListNotifications, bulk_pb2.ListNotificationsRequest(page_token=b64(payload))
        )
        assert_invalid(error, "page_token")


def test_a_bad_notification_filter_names_its_field(shared: ServerThread) -> None:
    me = Caller(shared)
    error = me.fails(me.bulk.ListNotifications, bulk_pb2.ListNotificationsRequest(job_id="not-an-id"))
    assert [field for field, _ in assert_invalid(error, "job_id")] == ["job_id"]


def test_page_token_of_another_user_is_refused(shared: ServerThread) -> None:
    alice, bob = Caller(shared), Caller(shared)
    for i in range(2):
        alice.ok(
            alice.jobs.SubmitJob,
            jobs_pb2.SubmitJobRequest(
                mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic=f"t{i}")
            ),
        )
    token = alice.ok(alice.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1)).next_page_token
    assert_invalid(
        bob.fails(bob.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1, page_token=token)), "page_token"
    )


# ---- 3 and 11: enum values ---------------------------------------------------


@pytest.mark.parametrize("operation", [999, -1, 4, 0])
def test_unknown_bulk_operation_is_invalid_argument(shared: ServerThread, operation: int) -> None:
    me = Caller(shared)
    error = me.fails(me.jobs.RunBulkOperation, jobs_pb2.RunBulkOperationRequest(operation=operation))  # type: ignore[arg-type]
    assert_invalid(error, "operation")


def test_unknown_status_is_refused_alike_by_every_listing(shared: ServerThread) -> None:
    me = Caller(shared)
    jobs = me.fails(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(statuses=[999]))  # type: ignore[list-item]
    bulks = me.fails(me.bulk.ListBulkJobs, bulk_pb2.ListBulkJobsRequest(statuses=[999]))  # type: ignore[list-item]
    assert assert_invalid(jobs, "statuses") and assert_invalid(bulks, "statuses")
    unspecified = me.fails(me.bulk.ListBulkJobs, bulk_pb2.ListBulkJobsRequest(statuses=[0]))
    assert_invalid(unspecified, "statuses")


# ---- 3: timestamps -----------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(2**62, 0), (-(2**62), 0), (0, -1), (1, 1_000_000_000), (253402300800, 0)]
)
def test_extreme_timestamps_are_invalid_argument(shared: ServerThread, seconds: int, nanos: int) -> None:
    me = Caller(shared)
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    for field in ("created_after", "created_before"):
        stats = me.fails(me.jobs.GetJobStats, jobs_pb2.GetJobStatsRequest(**{field: stamp}))
        listing = me.fails(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(**{field: stamp}))
        assert_invalid(stats, field) and assert_invalid(listing, field)


# ---- 4: bounded errors -------------------------------------------------------


def test_a_5000_character_id_is_refused_in_a_small_error(shared: ServerThread) -> None:
    me = Caller(shared)
    long_id = "x" * 5000
    calls = [
        (me.jobs.GetJob, jobs_pb2.GetJobRequest(id=long_id)),
        (me.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=long_id)),
        (me.jobs.RetryJob, jobs_pb2.RetryJobRequest(id=long_id)),
        (me.jobs.DeleteJob, jobs_pb2.DeleteJobRequest(id=long_id)),
        (me.jobs.WatchJob, jobs_pb2.WatchJobRequest(id=long_id)),
        (me.bulk.GetBulkJob, bulk_pb2.GetBulkJobRequest(id=long_id)),
        (me.bulk.PauseBulkJob, bulk_pb2.PauseBulkJobRequest(id=long_id)),
        (me.bulk.WatchBulkJob, bulk_pb2.WatchBulkJobRequest(id=long_id)),
        (me.jobs.ListJobs, jobs_pb2.ListJobsRequest(bulk_job_id=long_id)),
        (me.jobs.RunBulkOperation, jobs_pb2.RunBulkOperationRequest(operation=1, bulk_job_id=long_id)),
    ]
    for method, request in calls:
        error = me.fails(method, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.code())
        assert trailer_size(error) < 400, trailer_size(error)
        assert "x" * 65 not in error.details()


def test_not_found_echoes_a_short_id(shared: ServerThread) -> None:
    me = Caller(shared)
    error = me.fails(me.jobs.GetJob, jobs_pb2.GetJobRequest(id="0" * 24))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info, _ = details(error)
    assert info.metadata["id"] == "0" * 24 and trailer_size(error) < 400


def test_ten_thousand_bad_bulk_items_give_a_bounded_error(shared: ServerThread) -> None:
    me = Caller(shared)
    bad = [jobs_pb2.GenerationParams(topic="", extra={"k" * 300: "v"}) for _ in range(10_000)]
    error = me.fails(
        me.bulk.CreateBulkJob, bulk_pb2.CreateBulkJobRequest(mode=jobs_pb2.MODE_TOPIC, items=bad)
    )
    violations = assert_invalid(error, "items")
    assert len(violations) <= 21
    assert "more" in violations[-1][1] and "more" in error.details()
    assert all(len(f) <= 80 and len(d) <= 200 for f, d in violations)


def test_long_extra_keys_are_not_echoed_whole(shared: ServerThread) -> None:
    me = Caller(shared)
    params = jobs_pb2.GenerationParams(topic="t", extra={"é" * 5000: "v", "a.b" * 2000: "\x00" * 2000})
    error = me.fails(me.jobs.SubmitJob, jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=params))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer_size(error) < TRAILER_LIMIT
    assert "é" * 65 not in error.details() and "a.b" * 30 not in error.details()


# ---- 5 and 11: idempotency keys ---------------------------------------------


def test_retry_cannot_be_hijacked_by_a_request_id(shared: ServerThread) -> None:
    from genjobs.server.storage.paging import request_key

    me = Caller(shared)
    failing = jobs_pb2.SubmitJobRequest(
        mode=jobs_pb2.MODE_TOPIC,
        params=jobs_pb2.GenerationParams(topic="fails", extra={"demo_fail": "permanent"}),
        max_attempts=1,
    )
    job = me.ok(me.jobs.SubmitJob, failing)
    wait_for(
        lambda: me.ok(me.jobs.GetJob, jobs_pb2.GetJobRequest(id=job.id)).status == jobs_pb2.JOB_STATUS_FAILED
    )
    planted_ids = [
        f"retry-of\x1f{job.id}",
        json.dumps(["retry-of", job.id]),
        request_key(me.user, "retry-of", job.id),
    ]
    for planted in planted_ids:
        plant = jobs_pb2.SubmitJobRequest(
            mode=jobs_pb2.MODE_SPIN, params=jobs_pb2.GenerationParams(source_text="x"), request_id=planted
        )
        try:
            me.ok(me.jobs.SubmitJob, plant)
        except grpc.RpcError as error:  # control characters in a request id are refused
            assert_invalid(error, "request_id")
    retry = me.ok(me.jobs.RetryJob, jobs_pb2.RetryJobRequest(id=job.id))
    assert retry.retry_of == job.id and retry.mode == jobs_pb2.MODE_TOPIC and retry.params.topic == "fails"


def test_a_subject_with_control_characters_is_unauthenticated(shared: ServerThread) -> None:
    alice = Caller(shared)
    mine = alice.ok(
        alice.jobs.SubmitJob,
        jobs_pb2.SubmitJobRequest(
            mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic="mine"), request_id="z"
        ),
    )
    for sub in (f"{alice.user}\x1f", f"{alice.user}\x00", "a\nb", "\x7f", "\ud800"):
        thief = Caller(
            shared, token=jwt.encode({"sub": sub, "exp": time.time() + 600}, SECRET, algorithm="HS256")
        )
        error = thief.fails(
            thief.jobs.SubmitJob,
            jobs_pb2.SubmitJobRequest(
                mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic="x"), request_id="z"
            ),
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "control character" in error.details()
    assert alice.ok(alice.jobs.GetJob, jobs_pb2.GetJobRequest(id=mine.id)).owner == alice.user


def test_request_keys_are_unambiguous() -> None:
    from genjobs.server.storage.paging import request_key

    assert request_key("a\x1fb", "request", "c") != request_key("a", "request", "b\x1fc")
    assert request_key("a", "request", "retry-of", "x") != request_key("a", "retry-of", "x")
    assert request_key("a", "request", '", "x') != request_key("a", "request", "", "x")


# ---- 6: total_size with a date filter ---------------------------------------


def test_total_size_and_pages_honour_the_date_range(shared: ServerThread) -> None:
    me = Caller(shared)
    jobs = [
        me.ok(
            me.jobs.SubmitJob,
            jobs_pb2.SubmitJobRequest(
                mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic=f"t{i}")
            ),
        )
        for i in range(5)
    ]
    future = Timestamp(seconds=jobs[-1].create_time.seconds + 3600)
    later = me.ok(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(created_after=future))
    assert later.total_size == 0 and list(later.jobs) == []
    # From the second job on, one a page: four jobs, four pages, the first job on none.
    request = jobs_pb2.ListJobsRequest(created_after=jobs[1].create_time, page_size=1)
    seen, totals = [], set()
    while True:
        page = me.ok(me.jobs.ListJobs, request)
        seen += [j.id for j in page.jobs]
        totals.add(page.total_size)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == [j.id for j in jobs[1:]][::-1] and totals == {4}


# ---- 9: validation gaps ------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "\u0661", "1e3", "-1", " 1", "99999", ""])
def test_demo_fail_attempts_must_be_a_plain_number(shared: ServerThread, value: str) -> None:
    me = Caller(shared)
    params = jobs_pb2.GenerationParams(
        topic="t", extra={"demo_fail": "transient", "demo_fail_attempts": value}
    )
    error = me.fails(me.jobs.SubmitJob, jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=params))
    assert_invalid(error, "params.extra['demo_fail_attempts']")


def test_demo_fail_attempts_plain_number_runs(shared: ServerThread) -> None:
    me = Caller(shared)
    params = jobs_pb2.GenerationParams(
        topic="t", word_count=60, extra={"demo_fail": "transient", "demo_fail_attempts": "1"}
    )
    job = me.ok(me.jobs.SubmitJob, jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=params))
    done = wait_for(
        lambda: (
            (j := me.ok(me.jobs.GetJob, jobs_pb2.GetJobRequest(id=job.id))).status
            == jobs_pb2.JOB_STATUS_COMPLETED
            and j
        ),
        timeout=30,
    )
    assert done.attempt == 2


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("/genjobs.v1.JobService/GetJob", b"\xff\xff\xff"),
        ("/genjobs.v1.JobService/SubmitJob", b"\x12\x03\x0a\x01\xff"),  # params.topic: bad UTF-8
        ("/genjobs.v1.JobService/GetJob", b"\x0a\x02\xc3\x28"),  # id with bad UTF-8
        ("/genjobs.v1.JobService/WatchJob", b"\x0a\x02\xed\xa0"),  # a surrogate, stream
        ("/genjobs.v1.BulkService/ListBulkJobs", b"\x08"),  # truncated
    ],
)
def test_a_body_that_is_not_protobuf_is_invalid_argument(
    shared: ServerThread, method: str, body: bytes
) -> None:
    me = Caller(shared)
    if method.endswith("WatchJob"):
        call: Any = me.channel.unary_stream(method)
    else:
        call = me.channel.unary_unary(method)
    error = me.fails(call, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    info, _ = details(error)
    assert info.reason == "MALFORMED_REQUEST" and trailer_size(error) < TRAILER_LIMIT


def test_a_bad_body_without_a_token_is_still_unauthenticated(shared: ServerThread) -> None:
    channel = grpc.insecure_channel(shared.target)
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/genjobs.v1.JobService/GetJob")(b"\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- replies a client can read -----------------------------------------------


def test_a_page_of_large_jobs_fits_in_a_reply(shared: ServerThread) -> None:
    """A page stops short of gRPC's 4 MB message limit; the token goes on from there."""
    me = Caller(shared)
    source = "word " * 20_000  # 100,000 characters, the most a job may carry
    request = jobs_pb2.SubmitJobRequest(
        mode=jobs_pb2.MODE_SPIN, params=jobs_pb2.GenerationParams(source_text=source)
    )
    submitted = []
    for i in range(60):
        request.request_id = f"big-{i}"
        submitted.append(me.ok(me.jobs.SubmitJob, request).id)
    seen: list[str] = []
    listing = jobs_pb2.ListJobsRequest(page_size=100)
    while True:
        page = me.ok(me.jobs.ListJobs, listing)
        assert page.total_size == 60 and page.ByteSize() < 4 * 1024 * 1024
        seen += [j.id for j in page.jobs]
        if not page.next_page_token:
            break
        listing.page_token = page.next_page_token
    assert seen == submitted[::-1]


def test_the_worst_error_fits_in_two_kilobytes() -> None:
    """Pure logic: the bounds of errors.to_status hold for the largest inputs."""
    from genjobs.server.api.status import to_status
    from genjobs.server.model.errors import Code, FieldViolation, ServiceError, invalid

    wide = "\U0010ffff" * 5000  # four bytes a character in UTF-8
    error = invalid([FieldViolation(wide, wide) for _ in range(10_000)])
    error.metadata = {wide[:100] + str(i): wide for i in range(50)}
    error.message = wide
    status = to_status(error)
    assert status.ByteSize() + len(status.message.encode()) < TRAILER_LIMIT
    bad = to_status(ServiceError(Code.NOT_FOUND, "X", wide))
    assert bad.ByteSize() + len(bad.message.encode()) < 700


def test_a_time_range_at_the_epoch_is_a_range(shared: ServerThread) -> None:
    """created_before 1970-01-01 is before every job, not "no filter"."""
    me = Caller(shared)
    me.ok(
        me.jobs.SubmitJob,
        jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic="t")),
    )
    epoch = Timestamp(seconds=0)
    assert me.ok(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(created_before=epoch)).total_size == 0
    assert me.ok(me.jobs.GetJobStats, jobs_pb2.GetJobStatsRequest(created_before=epoch)).total_jobs == 0
    assert me.ok(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(created_after=epoch)).total_size == 1
    error = me.fails(me.jobs.ListJobs, jobs_pb2.ListJobsRequest(created_after=epoch, created_before=epoch))
    assert_invalid(error, "created_before")
