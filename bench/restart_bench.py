"""Time from kill -9 of a genjobs-server, or of its embedded database, to SERVING again.

The server uses the embedded database (nx-27017 under its data dir). Three
cases, each measured `runs` times (default 10), median printed:
- the server alone is killed: the restarted server joins the running nx-27017;
- the server and its nx-27017 are both killed: the restart must recognise the
  stale instance (pid files naming a dead or zombie process) and start a new one;
- the nx-27017 alone is killed (issue 26 item 3): the running server starts a
  new one on the same port and data, nothing else restarts.
For a server restart the clock runs from just before the kill until grpc health
answers SERVING (polled every 10 ms), so it includes the process start and its
imports. For the database kill, health may not even leave SERVING (the server
can find the database dead and restart it between two checks), so the clock
stops when health says SERVING and a GetJob, which reads the database, answers.

    .venv/bin/python bench/restart_bench.py [runs] [database]

`database` runs only the third case.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genjobs.v1 import jobs_pb2, jobs_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genjobs.server.api.auth import make_token
from tests.harness import SECRET, ServerProcess, make_settings


def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def restart_seconds(data_dir: Path, workdir: Path, runs: int, with_database: bool) -> list[float]:
    """Kill -9 and restart a server `runs` times; the seconds each took to serve again."""
    settings = make_settings("", data_dir)
    server = ServerProcess(settings, workdir / "start.log").start()
    times = []
    try:
        for run in range(runs):
            database = int((data_dir / "nx-27017.pid").read_text())
            started = time.monotonic()
            server.kill()
            if with_database:
                os.kill(database, signal.SIGKILL)
            server = ServerProcess(settings, workdir / f"restart-{with_database}-{run}.log").launch()
            assert server.process is not None
            while not serving(server.target):
                if server.process.poll() is not None:
                    raise SystemExit(f"the server exited; see {server.log_path}")
                if time.monotonic() - started > 60:
                    raise SystemExit(f"not serving after 60 s; see {server.log_path}")
                time.sleep(0.01)
            times.append(time.monotonic() - started)
    finally:
        server.terminate()
    return times


def reads(target: str, job_id: str) -> bool:
    """Whether the server answers SERVING and a GetJob (a read of the database)."""
    if not serving(target):
        return False
    metadata = (("authorization", f"Bearer {make_token(SECRET, 'alice')}"),)
    with grpc.insecure_channel(target) as channel:
        try:
            jobs_pb2_grpc.JobServiceStub(channel).GetJob(
                jobs_pb2.GetJobRequest(id=job_id), timeout=0.5, metadata=metadata
            )
        except grpc.RpcError:
            return False
    return True


def database_pid(data_dir: Path) -> int:
    """The pid in the embedded database's pid file, once written (a restart
    writes it just after the new instance first answers)."""
    pid_file = data_dir / "nx-27017.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {pid_file}")
        time.sleep(0.01)
    return int(pid_file.read_text())


def database_restart_seconds(data_dir: Path, workdir: Path, runs: int) -> list[float]:
    """Kill -9 the embedded database `runs` times under a running server; the
    seconds each took until the server serves reads again."""
    server = ServerProcess(make_settings("", data_dir), workdir / "database.log").start()
    times = []
    try:
        with server.client() as alice:
            job_id = alice.submit("topic", topic="restart bench").id
        for _ in range(runs):
            database = database_pid(data_dir)
            started = time.monotonic()
            os.kill(database, signal.SIGKILL)
            while not reads(server.target, job_id):
                if time.monotonic() - started > 60:
                    raise SystemExit(f"not serving after 60 s; see {server.log_path}")
                time.sleep(0.01)
            times.append(time.monotonic() - started)
            if database_pid(data_dir) == database:
                raise SystemExit("the database was not restarted")
    finally:
        server.terminate()
    return times


def report(label: str, runs: int, times: list[float]) -> None:
    print(
        f"{label}: kill -9 to SERVING, median of {runs}: {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f}; runs {', '.join(f'{t:.2f}' for t in times)})"
    )


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    database_only = sys.argv[2:] == ["database"]
    cases = () if database_only else ((False, "server killed"), (True, "server and its nx-27017 killed"))
    for with_database, label in cases:
        with tempfile.TemporaryDirectory(prefix="genjobs-restart-") as workdir:
            report(label, runs, restart_seconds(Path(workdir) / "data", Path(workdir), runs, with_database))
    with tempfile.TemporaryDirectory(prefix="genjobs-restart-") as workdir:
        times = database_restart_seconds(Path(workdir) / "data", Path(workdir), runs)
    report("nx-27017 alone killed (the server restarts it)", runs, times)


if __name__ == "__main__":
    main()
