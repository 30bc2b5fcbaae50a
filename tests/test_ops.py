"""Operating the server process: crashes of it and its embedded database, failed starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from genjobs.server.runtime.embedded import DATABASE_MODULE, free_port
from tests.harness import ServerProcess, make_settings, server_env, wait_for

GENJOBS_SERVER = str(Path(sys.executable).parent / "genjobs-server")


def nx_processes(data_dir: Path) -> list[int]:
    """Live (not zombie) nx-27017 processes serving `data_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        ours = str(data_dir.resolve() / "mongo").encode() in args
        if DATABASE_MODULE.encode() in args and ours and state != "Z":
            found.append(int(entry.name))
    return found


def zombie() -> subprocess.Popen[bytes]:
    """A process that has exited but is not reaped (while this object lives): its pid still "exists"."""
    child = subprocess.Popen(["true"])
    wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    return child


def test_restart_right_after_kill_9_of_the_server_and_its_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = make_settings("", data)
    first = ServerProcess(settings, tmp_path / "first.log").start()
    with first.client() as alice:
        job = alice.submit("topic", topic="survives")
    nx = int((data / "nx-27017.pid").read_text())
    first.kill()
    os.kill(nx, signal.SIGKILL)
    second = ServerProcess(settings, tmp_path / "second.log").start()
    try:
        with second.client() as alice:
            assert alice.get(job.id).id == job.id
        assert nx_processes(data) == [int((data / "nx-27017.pid").read_text())]
    finally:
        assert second.terminate() == 0
    wait_for(lambda: not nx_processes(data))


@pytest.mark.parametrize("stale", ["zombie", "pid reused by an unrelated process"])
def test_start_over_pid_files_naming_a_dead_or_unrelated_process(tmp_path: Path, stale: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    unrelated = subprocess.Popen(["sleep", "60"])
    dead = zombie()
    try:
        pid = dead.pid if stale == "zombie" else unrelated.pid
        # What a kill -9 of genjobs and its nx-27017 leaves behind, once the pid is stale.
        (data / "nx-27017.pid").write_text(str(pid))
        (data / "nx-27017.daemon.pid").write_text(str(pid))
        (data / "mongo.port").write_text(str(free_port()))
        server = ServerProcess(make_settings("", data), tmp_path / "server.log").start()
        try:
            with server.client() as alice:
                assert alice.submit("topic", topic="started").id
            assert unrelated.poll() is None  # left alone
        finally:
            assert server.terminate() == 0
        assert dead.returncode is None  # still a zombie all along: the start did not depend on its reaping
    finally:
        unrelated.kill()
        unrelated.wait()
        dead.wait()
    wait_for(lambda: not nx_processes(data))


def run_server(tmp_path: Path, **overrides: object) -> subprocess.CompletedProcess[str]:
    settings = replace(make_settings("", tmp_path / "data"), log_level="WARNING", **overrides)
    return subprocess.run(
        [GENJOBS_SERVER], env=server_env(settings), capture_output=True, text=True, timeout=90
    )


def test_bad_setting_fails_with_one_line_and_leaves_nothing_running(tmp_path: Path) -> None:
    done = run_server(tmp_path, generator="bogus", port=free_port())
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bogus" in lines[0], done.stderr
    assert not nx_processes(tmp_path / "data")


def test_failure_after_the_database_started_stops_it_and_says_why(tmp_path: Path) -> None:
    # The TLS files are read once the database is up (a port in use is refused before).
    missing = str(tmp_path / "missing.pem")
    done = run_server(tmp_path, port=free_port(), tls_cert_file=missing, tls_key_file=missing)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genjobs: cannot read a TLS file"), done.stderr
    assert (tmp_path / "data" / "mongo").exists()  # the embedded database had started
    assert not nx_processes(tmp_path / "data")


def test_a_free_port_is_not_one_an_outgoing_connection_can_take() -> None:
    # A listener's port picked from the kernel's range for outgoing connections
    # can go to some client's connect (a test's pymongo, say) before the
    # listener binds it, and that test fails with "address in use".
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)  # two servers of one test never get the same port
    if low > 1024:  # (a kernel whose range starts at 1024 leaves no other port)
        assert not [port for port in ports if low <= port <= high]
    for port in ports[:5]:  # and each can be listened on
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()
