"""The server as a whole: database outages, the embedded database, generated code."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from genjobs.client import Unavailable
from tests.harness import MongoServer, ServerProcess, ServerThread, health_of, make_settings, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_database_outage_gives_unavailable_and_recovers(tmp_path: Path) -> None:
    mongo = MongoServer(tmp_path / "db", own=True)
    (tmp_path / "db").mkdir()
    mongo.start()
    server = ServerThread(make_settings(mongo.uri, tmp_path)).start()
    try:
        with server.client() as alice:
            job = alice.submit("topic", topic="before the outage")
            mongo.stop()
            with pytest.raises(Unavailable) as caught:
                alice.get(job.id)
            assert caught.value.reason == "DATABASE_UNAVAILABLE"
            wait_for(
                lambda: health_of(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10
            )
            mongo.start()  # same port, same data
            wait_for(lambda: health_of(server.target) == health_pb2.HealthCheckResponse.SERVING, timeout=15)
            assert alice.get(job.id).id == job.id
            assert alice.submit("topic", topic="after the outage").id
    finally:
        server.stop()
        mongo.stop()


def test_embedded_database_is_shared_by_servers_on_one_data_dir(tmp_path: Path) -> None:
    settings = make_settings("", tmp_path / "data")
    stale = tmp_path / "data"
    stale.mkdir()
    (stale / "nx-27017.pid").write_text("999999")  # left by a crash
    (stale / "mongo.port").write_text("1")
    first = ServerProcess(settings, tmp_path / "a.log").start()
    second = ServerProcess(settings, tmp_path / "b.log").start()
    try:
        pid = int((stale / "nx-27017.pid").read_text())
        assert pid != 999999
        # The banner follows the health check's SERVING by a moment.
        banner = wait_for(lambda: "genjobs --target" in (text := (tmp_path / "b.log").read_text()) and text)
        assert "joining the embedded database" in banner
        # How to call it: the address, a ready token, a grpcurl line and a genjobs line.
        assert f"genjobs is serving on {second.target}" in banner and "export GENJOBS_TOKEN=ey" in banner
        assert "genjobs.v1.JobService/SubmitJob" in banner and "genjobs --target" in banner
        with first.client() as one, second.client() as two:
            job = one.submit("topic", topic="shared")
            assert two.get(job.id).id == job.id
        assert first.terminate() == 0
        os.kill(pid, 0)  # still running: the second server uses it
        with second.client() as two:
            assert two.get(job.id).id == job.id
    finally:
        second.terminate()
    wait_for(
        lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )
    assert not (stale / "nx-27017.pid").exists()


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    protos = ROOT / "protos"
    names = ["jobs", "bulk"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{protos}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *[str(protos / "genjobs" / "v1" / f"{n}.proto") for n in names],
        ],
        check=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
    )
    for name in names:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            generated = tmp_path / "genjobs" / "v1" / f"{name}{suffix}"
            committed = protos / "genjobs" / "v1" / f"{name}{suffix}"
            assert filecmp.cmp(generated, committed, shallow=False), (
                f"{committed.name} is stale: run make proto"
            )


def test_token_command_prints_a_token_the_server_accepts(server: ServerThread, tmp_path: Path) -> None:
    env = {**os.environ, "GENJOBS_AUTH_SECRET": server.settings.auth_secret}
    token = subprocess.run(
        [sys.executable, "-m", "genjobs.server", "token", "--user", "carol"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    from genjobs.client import GenJobsClient

    with GenJobsClient(server.target, token) as carol:
        assert carol.list().total_size == 0
