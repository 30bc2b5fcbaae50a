"""Property tests: random requests never make the server answer INTERNAL, and a
rejected SubmitJob stores nothing."""

from __future__ import annotations

import uuid

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import ServerThread

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
long_text = st.one_of(text, st.text(alphabet="ab ", min_size=490, max_size=520))
ints = st.one_of(st.integers(-5, 6000), st.integers(-(2**31), 2**31 - 1))
enum_values = st.integers(-3, 12)

params = st.builds(
    jobs_pb2.GenerationParams,
    topic=long_text,
    keywords=st.lists(text, max_size=25),
    word_count=ints,
    tone=text,
    source_text=text,
    extra=st.dictionaries(
        st.one_of(text, st.sampled_from(["demo_seconds", "demo_fail", "a.b", "$x"])),
        st.one_of(text, st.sampled_from(["0", "transient", "permanent", "-1", "nan"])),
        max_size=4,
    ),
)
submits = st.builds(
    jobs_pb2.SubmitJobRequest,
    mode=enum_values,
    params=params,
    request_id=text,
    project=text,
    max_attempts=st.integers(-2, 12),
)
lists = st.builds(
    jobs_pb2.ListJobsRequest,
    statuses=st.lists(enum_values, max_size=3),
    modes=st.lists(enum_values, max_size=3),
    query=st.one_of(text, st.sampled_from(["(", "[a-", ".*", "\\"])),
    project=text,
    page_size=st.integers(-3, 300),
    page_token=st.one_of(text, st.just("eyJiIjoxLCJ0IjoxLCJmIjoieCJ9")),
    bulk_job_id=text,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=submits, listing=lists)
def test_random_requests_never_internal(
    server: ServerThread, request: jobs_pb2.SubmitJobRequest, listing: jobs_pb2.ListJobsRequest
) -> None:
    user = uuid.uuid4().hex
    metadata = (("authorization", f"Bearer {server.token(user)}"),)
    with grpc.insecure_channel(server.target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        try:
            stub.SubmitJob(request, metadata=metadata, timeout=10)
            accepted = True
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            accepted = False
        stored = stub.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata, timeout=10).total_size
        assert stored == (1 if accepted else 0)
        try:
            stub.ListJobs(listing, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
