"""A port already in use is a start-up error, whoever holds it (issue 18 item 2)."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from tests.harness import MongoServer, ServerProcess, make_settings, server_env


def second_server(mongo: MongoServer, data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    settings = replace(make_settings(mongo.uri, data_dir), port=port)
    return subprocess.run(
        [sys.executable, "-m", "server"], env=server_env(settings), capture_output=True, text=True, timeout=60
    )


def test_a_second_genjobs_server_on_a_port_in_use_stops(mongo: MongoServer, tmp_path: Path) -> None:
    first = ServerProcess(make_settings(mongo.uri, tmp_path / "a"), tmp_path / "a.log").start()
    try:
        second = second_server(mongo, tmp_path / "b", first.settings.port)
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and str(first.settings.port) in lines[0] and "in use" in lines[0], (
            second.stderr
        )
        with first.client() as alice:  # the first one still serves
            assert alice.list().total_size == 0
    finally:
        first.terminate()


def test_a_port_held_by_another_program_stops_the_server(mongo: MongoServer, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a grpc server holds its port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = second_server(mongo, tmp_path, port)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], result.stderr
