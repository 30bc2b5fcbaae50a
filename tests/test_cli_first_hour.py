"""The first hour with the command line: what a newcomer tripped on (issue 18).

Each test goes through `genjobs` as a user types it, against a live server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from genjobs.v1 import bulk_pb2
from typer.testing import Result

from client import GenJobsClient
from tests.harness import ServerThread, wait_for
from tests.test_cli import Cli


@pytest.fixture
def cli(server: ServerThread) -> Cli:
    return Cli(server)


def within(seconds: float, run: Callable[[], Any]) -> Any:
    """`run()`'s answer, failing (not hanging) when it takes longer than `seconds`."""
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(run()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    assert answer, "it raised"
    return answer[0]


def _items(count: int, **extra_of: dict[str, str]) -> list[dict[str, Any]]:
    """`count` short bulk items; `extra_of["3"]` gives item 3 its params.extra."""
    return [
        {"topic": f"Item {i}", "word_count": 60, "extra": extra_of.get(str(i), {})}
        for i in range(1, count + 1)
    ]


def _bulk_final(client: GenJobsClient, bulk_id: str, timeout: float = 30) -> bulk_pb2.BulkJob:
    final = (bulk_pb2.BULK_JOB_STATUS_COMPLETED, bulk_pb2.BULK_JOB_STATUS_CANCELLED)
    return wait_for(  # type: ignore[no-any-return]
        lambda: (b := client.get_bulk(bulk_id)).status in final and b.remaining_items == 0 and b,
        timeout=timeout,
    )


# ---- 1. bulk watch ends once the bulk job is final, whatever became of its items


def test_bulk_watch_ends_after_its_completed_items_were_deleted(cli: Cli, alice: GenJobsClient) -> None:
    bulk = alice.create_bulk("topic", _items(10))
    _bulk_final(alice, bulk.id)
    assert "deleted 10 jobs" in cli("ops", "clean-completed").stdout
    watched: Result = within(30, lambda: cli("bulk", "watch", bulk.id))
    assert "completed" in watched.stdout and "10 deleted" in watched.stdout
    events = within(30, lambda: list(alice.watch_bulk(bulk.id)))
    assert events[-1].bulk_job.status == bulk_pb2.BULK_JOB_STATUS_COMPLETED


def test_a_bulk_job_whose_done_items_were_deleted_while_it_ran_still_completes(
    cli: Cli, alice: GenJobsClient
) -> None:
    bulk = alice.create_bulk("topic", _items(10, **{"10": {"demo_seconds": "3"}}))
    wait_for(lambda: alice.get_bulk(bulk.id).completed_items == 9, timeout=30)
    assert "deleted 9 jobs" in cli("ops", "clean-completed").stdout
    watched: Result = within(30, lambda: cli("bulk", "watch", bulk.id))
    assert "completed: 1 completed" in watched.stdout and "9 deleted" in watched.stdout
    assert alice.get_bulk(bulk.id).status == bulk_pb2.BULK_JOB_STATUS_COMPLETED


def test_bulk_watch_of_a_cancelled_bulk_job_whose_items_were_deleted(cli: Cli, alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "60"})
    bulk = alice.create_bulk("topic", _items(10))
    cli("bulk", "cancel", bulk.id)
    _bulk_final(alice, bulk.id)
    cli("rm", *[item.id for item in alice.get_bulk(bulk.id).items])
    watched: Result = within(30, lambda: cli("bulk", "watch", bulk.id))
    assert "cancelled" in watched.stdout
    assert "of 10, 10 deleted" in watched.stdout
    alice.cancel(blocker.id)


def test_within_fails_instead_of_hanging() -> None:
    stop = threading.Event()
    try:
        within(0.1, stop.wait)
    except AssertionError as error:
        assert "still running" in str(error)
    else:
        raise AssertionError("within() did not fail")
    finally:
        stop.set()
