"""Fixtures: one real MongoDB-wire server per session, a fresh genjobs server per test."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from genjobs.client import GenJobsClient
from tests.harness import MongoServer, ServerThread, make_settings

# The modules that take a minute or more. `make test` spreads modules over
# workers in collection order; these go first, so none starts last and
# runs alone while the other workers sit idle.
LONG_MODULES = ("test_chaos.py", "test_deploy.py", "test_readme.py", "test_growth.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the long modules first (the sort is stable: each keeps its order)."""
    items.sort(key=lambda item: item.path.name not in LONG_MODULES)


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(mongo: MongoServer, tmp_path: Path) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(mongo.uri, tmp_path)).start()
    yield running
    running.stop()


@pytest.fixture
def alice(server: ServerThread) -> Iterator[GenJobsClient]:
    with server.client("alice") as client:
        yield client


@pytest.fixture
def bob(server: ServerThread) -> Iterator[GenJobsClient]:
    with server.client("bob") as client:
        yield client


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[MongoServer]:
    """An nx-27017 of the test's own (even with GENJOBS_MONGODB_URI set), which
    it may kill, restart and freeze (SIGSTOP): given back running."""
    (tmp_path / "db").mkdir()
    mongo = MongoServer(tmp_path / "db", own=True)
    mongo.start()
    yield mongo
    if mongo.process is not None:
        os.kill(mongo.process.pid, signal.SIGCONT)
    mongo.stop()
