"""Shared by the benchmarks: servers to measure, command counting, statistics."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pymongo import monitoring

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import MongoServer, ServerProcess, ServerThread, make_settings

__all__ = ["MongoServer", "ServerProcess", "ServerThread", "make_settings"]


class CommandCounter(monitoring.CommandListener):
    """Counts MongoDB commands by the name of the thread that sent them."""

    def __init__(self) -> None:
        self.by_thread: Counter[str] = Counter()
        self.names: Counter[str] = Counter()
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("ping", "hello", "isMaster", "endSessions"):
            return
        thread = threading.current_thread().name
        with self._lock:
            self.by_thread[thread.split("_")[0]] += 1
            self.names[f"{thread.split('_')[0]}:{event.command_name}"] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self, prefix: str | tuple[str, ...]) -> int:
        """Commands sent by threads whose name starts with `prefix` (or one of
        them) since the last take."""
        with self._lock:
            n = sum(v for k, v in self.by_thread.items() if k.startswith(prefix))
            for k in [k for k in self.by_thread if k.startswith(prefix)]:
                del self.by_thread[k]
            return n


COUNTER = CommandCounter()
monitoring.register(COUNTER)  # every MongoClient made after this reports to it


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def process_cpu(pid: int, thread: int | None = None) -> float:
    """CPU seconds (user and system) another process, or one `thread` of it, has used so far."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core summed
    (/proc/stat): the busy share of a span says whether the cores were the limit."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    hertz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hertz, sum(ticks) / hertz


def core_count() -> int:
    """The cores the bench's processes may run on (what bounds their CPU a second)."""
    return len(os.sched_getaffinity(0))


def busy_share(before: tuple[float, float]) -> float:
    """The share of the machine's CPU (all cores) busy since `machine_cpu()` gave `before`."""
    busy, total = machine_cpu()
    return (busy - before[0]) / max(1e-9, total - before[1])


def measured(
    run: Callable[[], tuple[int, float]], processes: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """Call `run`, which returns (jobs done, seconds taken): jobs a second, and
    what each party spent on a job in CPU microseconds: "callers" (this
    process) and each of `processes` (name -> pid)."""
    before = {name: process_cpu(pid) for name, pid in processes.items()}
    callers_before = time.process_time()
    jobs, seconds = run()
    spent = {"callers": time.process_time() - callers_before}
    spent.update({name: process_cpu(pid) - before[name] for name, pid in processes.items()})
    return jobs / seconds, {name: cpu / max(1, jobs) * 1e6 for name, cpu in spent.items()}


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="genjobs-bench-"))


def start_mongo() -> MongoServer:
    """A fresh nx-27017 on a free port (GENJOBS_MONGODB_URI is ignored: figures are for nx)."""
    directory = scratch()
    mongo = MongoServer(directory, own=True)
    mongo.start()
    return mongo


def ensure_redis() -> str:
    """redis-server and rq, installed if missing; returns the redis-server path."""
    if shutil.which("redis-server") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True)
    try:
        import rq  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "rq", "redis"], check=True)
    return shutil.which("redis-server") or "redis-server"


class Redis:
    """A redis-server on a free port, for the RQ and Celery comparisons."""

    def __init__(self) -> None:
        from genjobs.server.runtime.embedded import free_port

        self.port = free_port()
        self.process = subprocess.Popen(
            [ensure_redis(), "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(port=self.port)
        from tests.harness import wait_for

        def up() -> bool:
            try:
                return bool(self.client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_for(up)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def noop() -> None:
    """The job RQ and Celery run."""


os.environ.setdefault("PYTHONHASHSEED", "0")
