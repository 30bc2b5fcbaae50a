"""A client in another language builds from `protos/` alone (issue 29, item 18):
the contract and the error details it reads, google/rpc included.

The messages here come from the .proto files in `protos/` (compiled by
protoc into a descriptor set, loaded into a pool of their own), never from
the Python packages that ship google.rpc, as a Node or Go client would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc_tools
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.harness import ServerThread

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto, as any toolchain has


def pool_from_protos(out: Path) -> descriptor_pool.DescriptorPool:
    """Every .proto under protos/ compiled with protoc, its imports resolved in protos/ alone."""
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    assert "google/rpc/status.proto" in files and "google/rpc/error_details.proto" in files
    descriptors = out / "protos.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{WELL_KNOWN}",
            "--include_imports",
            f"--descriptor_set_out={descriptors}",
            *files,
        ],
        check=True,
        capture_output=True,
    )
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes()).file:
        pool.Add(proto)
    return pool


def message(pool: descriptor_pool.DescriptorPool, name: str) -> Any:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def test_a_client_built_from_protos_alone_reads_error_info_and_bad_request(
    server: ServerThread, tmp_path: Path
) -> None:
    pool = pool_from_protos(tmp_path)
    request_type = message(pool, "genjobs.v1.SubmitJobRequest")
    job_type = message(pool, "genjobs.v1.Job")
    with grpc.insecure_channel(server.target) as channel:
        submit = channel.unary_unary(
            "/genjobs.v1.JobService/SubmitJob",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=job_type.FromString,
        )
        bad = request_type(mode=pool.FindEnumTypeByName("genjobs.v1.Mode").values_by_name["MODE_SPIN"].number)
        try:
            submit(bad, metadata=(("authorization", f"Bearer {server.token('alice')}"),))
        except grpc.RpcError as error:
            refused = error
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    trailers = dict(refused.trailing_metadata())  # type: ignore[attr-defined]
    status = message(pool, "google.rpc.Status").FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    details = {d.type_url.rsplit("/", 1)[1]: d.value for d in status.details}
    info = message(pool, "google.rpc.ErrorInfo").FromString(details["google.rpc.ErrorInfo"])
    violations = message(pool, "google.rpc.BadRequest").FromString(details["google.rpc.BadRequest"])
    assert info.reason and info.domain
    assert "params.source_text" in [v.field for v in violations.field_violations]
    for name in ("google.rpc.QuotaFailure", "google.rpc.RetryInfo"):
        assert message(pool, name).DESCRIPTOR.full_name == name


def test_the_google_rpc_protos_keep_their_license_headers() -> None:
    for name in ("status.proto", "error_details.proto"):
        text = (PROTOS / "google" / "rpc" / name).read_text()
        assert "Licensed under the Apache License, Version 2.0" in text and "package google.rpc;" in text
