"""A port already in use is a start-up error, whoever holds it (issue 18 item 2)."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.harness import MongoServer, ServerProcess, make_settings, server_env, wait_for


def second_server(mongo: MongoServer, data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    settings = replace(make_settings(mongo.uri, data_dir), port=port)
    return subprocess.run(
        [sys.executable, "-m", "genjobs.server"],
        env=server_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
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


@pytest.mark.parametrize("setting", ["http_port", "metrics_port"])
def test_a_busy_http_or_metrics_port_names_the_setting_to_change(
    mongo: MongoServer, tmp_path: Path, setting: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        busy = {setting: str(port) if setting == "http_port" else port}
        settings = replace(make_settings(mongo.uri, tmp_path), **busy)
        result = subprocess.run(
            [sys.executable, "-m", "genjobs.server"],
            env=server_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # the HTTP face's log may come first
    assert last.startswith("genjobs: cannot listen") and str(port) in last, result.stderr
    assert f"GENJOBS_{setting.upper()}" in last, result.stderr


def test_the_banner_names_the_generator_and_its_model(mongo: MongoServer, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    settings = make_settings(
        mongo.uri, tmp_path / "data", generator="openai", openai_base_url="http://127.0.0.1:9/v1"
    )
    server = ServerProcess(replace(settings, log_format="text", openai_model="gpt-test-mini"), log).start()
    try:
        banner = wait_for(lambda: "Stop with Ctrl-C" in (text := log.read_text()) and text)
        assert "generator: openai, model gpt-test-mini at http://127.0.0.1:9/v1" in banner
    finally:
        server.terminate()
