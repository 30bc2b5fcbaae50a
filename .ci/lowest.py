"""Print pip constraints pinning every runtime dependency to its declared floor.

    python .ci/lowest.py > lowest.txt && pip install -c lowest.txt -e .

`make test-min` installs these into a venv of their own and runs the smoke
tests, so the floors in pyproject.toml stay the versions the code really runs on.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def floors(requirements: list[str]) -> list[str]:
    """`name>=1.2,<2; marker` -> `name==1.2; marker`; exact pins stay as they are."""
    pinned = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        found = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(?:>=|==)\s*([^,\s]+)", spec)
        if found is None:
            raise SystemExit(f"no floor in {requirement!r}: give every dependency a lower bound")
        name = found.group(1).split("[")[0]
        pinned.append(f"{name}=={found.group(2)}" + (f";{marker}" if marker else ""))
    return pinned


if __name__ == "__main__":
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    print("\n".join(floors(project["dependencies"])))
