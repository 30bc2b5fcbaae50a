"""Every RPC but health and reflection needs a valid bearer token."""

from __future__ import annotations

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genjobs.client import Unauthenticated, translate
from genjobs.v1 import bulk_pb2, bulk_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from tests.harness import SECRET, ServerThread


def call_both(server: ServerThread, metadata: tuple[tuple[str, str], ...]) -> list[Exception]:
    """A unary and a streaming call with `metadata`; the errors they raised."""
    errors: list[Exception] = []
    with grpc.insecure_channel(server.target) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        bulk = bulk_pb2_grpc.BulkServiceStub(channel)
        calls = [
            lambda: jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata),
            lambda: list(jobs.WatchJob(jobs_pb2.WatchJobRequest(id="0" * 24), metadata=metadata)),
            lambda: bulk.GetBulkJob(bulk_pb2.GetBulkJobRequest(id="0" * 24), metadata=metadata),
        ]
        for call in calls:
            try:
                call()
            except grpc.RpcError as error:
                errors.append(translate(error))
    return errors


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "MISSING_TOKEN"),
        ("Basic abc", "MALFORMED_TOKEN"),
        ("Bearer not.a.jwt", "INVALID_TOKEN"),
        (
            "Bearer "
            + jwt.encode({"sub": "alice", "exp": 9999999999}, "wrong-secret-0123456789abcdef0123", "HS256"),
            "INVALID_TOKEN",
        ),
        ("Bearer " + jwt.encode({"sub": "alice", "exp": 1000}, SECRET, "HS256"), "TOKEN_EXPIRED"),
        ("Bearer " + jwt.encode({"exp": 9999999999}, SECRET, "HS256"), "INVALID_TOKEN"),
    ],
)
def test_refused_without_a_valid_token(server: ServerThread, header: str | None, reason: str) -> None:
    metadata = () if header is None else (("authorization", header),)
    errors = call_both(server, metadata)
    assert len(errors) == 3
    for error in errors:
        assert isinstance(error, Unauthenticated)
        assert error.reason == reason


def test_valid_token_is_accepted_on_unary_and_streaming(server: ServerThread) -> None:
    errors = call_both(server, (("authorization", f"Bearer {server.token('alice')}"),))
    # With a valid token the calls reach the service: unknown ids are NOT_FOUND.
    assert [e.code for e in errors] == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND]


def test_health_needs_no_token_and_reports_serving(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "genjobs.v1.JobService", "genjobs.v1.BulkService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
