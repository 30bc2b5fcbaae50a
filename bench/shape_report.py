"""Figures of the code's shape (issue 28): the largest modules, import
circles, imports that run up the layers, and untyped documents outside the
storage and API edges. Prints them for the tree it is run in.

    .venv/bin/python bench/shape_report.py [ROOT]

Layers, top to bottom: runtime -> api -> services -> dispatch | notify |
generators -> storage -> model. A module's layer is its room (the folder
under server/); for the flat layout before the rooms existed, the room the
module moved to (OLD_ROOMS).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

RANK = {
    "runtime": 6,
    "api": 5,
    "services": 4,
    "dispatch": 3,
    "notify": 3,
    "generators": 3,
    "storage": 2,
    "telemetry": 1.5,  # cross-cutting recording: just above model
    "model": 1,
}
# Where each module of the flat layout (before issue 28) went.
OLD_ROOMS = {
    "app": "runtime", "config": "runtime", "embedded": "runtime", "quiet_nx": "runtime",
    "observability": "runtime", "probe": "runtime", "__main__": "runtime",
    "auth": "api", "reflection": "api", "convert": "api", "watch": "api", "servicers": "api", "http": "api",
    "states": "model", "clock": "model", "errors": "model",
    "store": "storage", "budget_store": "storage", "schedule_store": "storage", "pagetoken": "storage",
    "eventlog": "storage", "outage": "storage",
    "jobs": "services", "bulk": "services", "budgets": "services", "schedules": "services",
    "templates": "services", "progress": "services", "validation": "services", "entitlement": "services",
    "events": "services",
    "dispatcher": "dispatch", "fairshare": "dispatch",
}  # fmt: skip
EDGES = ("storage", "api")  # where documents and protos may be untyped dicts


def modules(root: Path) -> dict[str, Path]:
    """Every module of server/ and client/ (generated code aside), by dotted name."""
    found = {}
    for top in ("server", "client"):
        for path in (root / top).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def room(name: str) -> str:
    """The room (layer) of a server module: its folder, or where it moved to."""
    parts = name.split(".")
    if parts[0] != "server" or len(parts) < 2:
        return ""
    return parts[1] if parts[1] in RANK else OLD_ROOMS.get(parts[1], "")


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports at module level or in functions."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a import b`: module a.b when it is one, else a (b is a name in it).
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                for alias in node.names
            ]
        for target in targets:
            # Since the packaging of issue 28 the folders server/ and client/ are
            # imported as genjobs.server and genjobs.client; names here are by folder.
            if target.startswith(("genjobs.server", "genjobs.client")):
                target = target.removeprefix("genjobs.")
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    known = modules(root)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in known.items()), reverse=True)
    print("largest modules:", ", ".join(f"{n} {lines}" for lines, n in sizes[:3]))
    print("modules over 600 lines:", sum(1 for lines, _ in sizes if lines > 600))
    found = circles(graph)
    print(f"import circles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    upward: list[str] = []
    across: list[str] = []
    for name, targets in sorted(graph.items()):
        a = room(name)
        for target in sorted(targets):
            b = room(target)
            if not a or not b or a == b:
                continue
            if RANK[b] > RANK[a]:
                upward.append(f"{name} -> {target}")
            elif RANK[b] == RANK[a]:
                across.append(f"{name} -> {target}")
    print(f"imports that run up the layers: {len(upward)}" + "".join(f"\n  {u}" for u in upward))
    print(f"imports across rooms of one layer: {len(across)}" + "".join(f"\n  {u}" for u in across))
    untyped = defaultdict(int)
    for name, path in known.items():
        if room(name) in EDGES:
            continue
        text = path.read_text()
        untyped[name] += len(re.findall(r"dict\[str, Any\]|\bDoc\b", text))
    total = sum(untyped.values())
    where = sum(1 for v in untyped.values() if v)
    print(f"dict[str, Any] / Doc uses outside the storage and API edges: {total} in {where} modules")


if __name__ == "__main__":
    main()
