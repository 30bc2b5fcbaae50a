"""The chaos scenario of tests/test_chaos.py, run on its own, printing its figures:
acknowledged jobs, lost, stuck, double-generated (and how many had a kill between
the generation and its write), run time.

    .venv/bin/python bench/chaos_report.py [runs]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_chaos import run_chaos


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for run in range(1, runs + 1):
        with tempfile.TemporaryDirectory(prefix="genjobs-chaos-") as workdir:
            report = run_chaos(Path(workdir), seed=14 + run)
        print(f"run {run}:")
        for line in report.lines():
            print("  " + line)
        for problem in (report.lost, report.stuck, report.overlaps, report.bulk_mismatches):
            for item in problem[:5]:
                print("  !", item)


if __name__ == "__main__":
    main()
