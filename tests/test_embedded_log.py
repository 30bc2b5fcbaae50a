"""The embedded database's log: quiet at info level, bounded in size (issue 18 item 9)."""

from __future__ import annotations

import logging
from pathlib import Path

import pymongo

from genjobs.server.runtime import quiet_nx
from tests.harness import ServerProcess, make_settings


def test_embedded_database_logs_no_line_per_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(make_settings("", data), tmp_path / "server.log").start()
    try:
        with server.client() as alice:
            alice.submit("topic", topic="a few commands")
        port = int((data / "mongo.port").read_text())
        with pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true") as client:
            for _ in range(20):
                client.admin.command("ping")  # what the server's health check sends every second
    finally:
        server.terminate()
    logs = {p.name: p.read_text() for p in data.glob("nx-27017.*") if p.suffix in (".log", ".out")}
    assert "nx-27017.log" in logs
    for name, text in logs.items():
        assert "Calling db.command" not in text and "NeoSQLite returned" not in text, name
        assert len(text) < 16_384, (name, text[-500:])  # what is left: its shutdown traces


def test_embedded_database_log_is_rotated(tmp_path: Path) -> None:
    log_file = tmp_path / "nx-27017.log"
    handler = quiet_nx.log_handler(str(log_file), max_bytes=10_000)
    logger = logging.getLogger("test-quiet-nx")
    logger.addHandler(handler)
    try:
        for i in range(2_000):
            logger.warning("warning %d %s", i, "x" * 50)
    finally:
        logger.removeHandler(handler)
        handler.close()
    files = list(tmp_path.glob("nx-27017.log*"))
    assert 1 < len(files) <= quiet_nx.BACKUPS + 1
    assert sum(f.stat().st_size for f in files) <= 10_000 * (quiet_nx.BACKUPS + 1)
