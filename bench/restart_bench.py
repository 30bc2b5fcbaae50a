"""Time from kill -9 of a genjobs-server to SERVING again on its restart.

The server uses the embedded database (nx-27017 under its data dir). Two cases,
each measured `runs` times (default 10), median printed:
- the server alone is killed: the restarted server joins the running nx-27017;
- the server and its nx-27017 are both killed: the restart must recognise the
  stale instance (pid files naming a dead or zombie process) and start a new one.
The clock runs from just before the kill until grpc health answers SERVING
(polled every 10 ms), so it includes the process start and its imports.

    .venv/bin/python bench/restart_bench.py [runs]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import ServerProcess, make_settings


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


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for with_database, label in ((False, "server killed"), (True, "server and its nx-27017 killed")):
        with tempfile.TemporaryDirectory(prefix="genjobs-restart-") as workdir:
            times = restart_seconds(Path(workdir) / "data", Path(workdir), runs, with_database)
        print(
            f"{label}: kill -9 to SERVING, median of {runs}: {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}; runs {', '.join(f'{t:.2f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
