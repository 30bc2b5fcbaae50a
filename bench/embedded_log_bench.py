"""Issue 18 figure: how fast an idle genjobs-server's embedded database log
grows (nx-27017.log and nx-27017.out together), measured over a few minutes
and scaled to an hour.

    .venv/bin/python bench/embedded_log_bench.py [SECONDS]   (default 180)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import ServerProcess, make_settings, scratch


def log_bytes(data: Path) -> int:
    return sum(
        p.stat().st_size for p in data.glob("nx-27017.*") if p.suffix in (".log", ".out") or ".log." in p.name
    )


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 180.0
    data = scratch() / "data"
    server = ServerProcess(make_settings("", data), data.parent / "server.log").start()
    try:
        time.sleep(5)  # past start-up's own lines
        before = log_bytes(data)
        time.sleep(seconds)
        grown = log_bytes(data) - before
    finally:
        server.terminate()
    print(f"idle for {seconds:.0f} s: the embedded database's log grew {grown} bytes")
    print(f"per idle hour (scaled): {grown * 3600 / seconds / 1024:.1f} KB")


if __name__ == "__main__":
    main()
