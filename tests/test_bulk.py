"""BulkService end to end: ordering, failures, pause across restarts, cancel, webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pymongo
import pytest
from bson import ObjectId

from genjobs.client import FailedPrecondition, GenJobsClient, InvalidArgument, NotFound
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.harness import MongoServer, ServerThread, make_settings, serving, wait_for

B = bulk_pb2


def items(n: int, **extra_by_index: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"topic": f"article {i + 1}", "word_count": 60, "extra": extra_by_index.get(f"i{i + 1}", {})}
        for i in range(n)
    ]


def bulk_status(client: GenJobsClient, bulk_id: str, status: int) -> bulk_pb2.BulkJob | None:
    bulk = client.get_bulk(bulk_id)
    return bulk if bulk.status == status else None


@pytest.mark.parametrize("count", [9, 51])
def test_bulk_size_limits(alice: GenJobsClient, count: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        alice.create_bulk("topic", items(count))
    assert [f for f, _ in caught.value.violations] == ["items"]
    assert alice.list_bulk().total_size == 0 and alice.list().total_size == 0


def test_bad_item_is_named_and_nothing_stored(alice: GenJobsClient) -> None:
    bad = items(12)
    bad[6]["topic"] = ""
    with pytest.raises(InvalidArgument) as caught:
        alice.create_bulk("topic", bad)
    assert [f for f, _ in caught.value.violations] == ["items[6].topic"]
    assert alice.list().total_size == 0


def test_ten_items_run_in_order_and_complete_with_a_notification(alice: GenJobsClient) -> None:
    bulk = alice.create_bulk("topic", items(10), request_id="batch-1")
    assert bulk.total_items == 10 and bulk.remaining_items == 10
    assert [i.queue_position for i in bulk.items] == list(range(1, 11))
    assert alice.create_bulk("topic", items(10), request_id="batch-1").id == bulk.id
    events = list(alice.watch_bulk(bulk.id))
    final = events[-1]
    assert final.type == B.BULK_JOB_EVENT_TYPE_COMPLETED
    assert final.bulk_job.status == B.BULK_JOB_STATUS_COMPLETED
    assert final.bulk_job.completed_items == 10 and final.bulk_job.percentage == 100.0
    assert final.notification.bulk_job_id == bulk.id
    counts = [e.bulk_job.completed_items for e in events]
    assert counts == sorted(counts)  # progress only goes forward
    jobs = [alice.get(i.id) for i in alice.get_bulk(bulk.id).items]
    starts = [j.start_time.ToNanoseconds() for j in jobs]
    assert starts == sorted(starts)  # queue_position order
    notes = alice.notifications().notifications
    assert [n.bulk_job_id for n in notes] == [bulk.id]
    assert "10 of 10" in notes[0].message


def test_failed_item_does_not_stop_the_others_and_retry_supersedes_it(alice: GenJobsClient) -> None:
    bulk = alice.create_bulk("topic", items(10, i3={"demo_fail": "permanent"}))
    done = wait_for(lambda: bulk_status(alice, bulk.id, B.BULK_JOB_STATUS_COMPLETED), timeout=30)
    assert (done.completed_items, done.failed_items) == (9, 1)
    assert len(done.error_summary) == 1 and done.error_summary[0].startswith("item 3: DEMO_PERMANENT")
    failed_item = done.items[2]
    assert failed_item.status == jobs_pb2.JOB_STATUS_FAILED
    retry = alice.run_bulk_operation("retry_all_failed", bulk_job_id=bulk.id)
    assert retry.affected_count == 1
    new = alice.get(retry.job_ids[0])
    assert new.bulk_job_id == bulk.id and new.queue_position == 3
    reopened = alice.get_bulk(bulk.id)
    assert reopened.total_items == 10
    assert reopened.items[2].id == new.id  # the retry holds position 3 now
    again = wait_for(
        lambda: (
            (b := alice.get_bulk(bulk.id)).status == B.BULK_JOB_STATUS_COMPLETED
            and b.items[2].status == jobs_pb2.JOB_STATUS_FAILED
            and b
        )
    )
    assert (again.completed_items, again.failed_items, again.total_items) == (9, 1, 10)


def test_pause_survives_a_restart_then_resume_completes(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    with serving(settings) as alice:
        bulk = alice.create_bulk("topic", items(10, i1={"demo_seconds": "1"}))
        wait_for(lambda: alice.get_bulk(bulk.id).items[0].status == jobs_pb2.JOB_STATUS_PROCESSING)
        paused = alice.pause_bulk(bulk.id)
        assert paused.status == B.BULK_JOB_STATUS_PAUSED
        with pytest.raises(FailedPrecondition) as caught:
            alice.pause_bulk(bulk.id)
        assert caught.value.reason == "BULK_JOB_NOT_PAUSABLE"
        # The running item finishes; nothing after it starts.
        wait_for(lambda: alice.get_bulk(bulk.id).items[0].status == jobs_pb2.JOB_STATUS_COMPLETED)
    with serving(settings) as alice:
        still = alice.get_bulk(bulk.id)
        assert still.status == B.BULK_JOB_STATUS_PAUSED
        assert [i.status for i in still.items[1:]] == [jobs_pb2.JOB_STATUS_QUEUED] * 9
        submitted = alice.submit("topic", topic="not in the bulk job")
        wait_for(lambda: alice.get(submitted.id).status == jobs_pb2.JOB_STATUS_COMPLETED)
        assert alice.get_bulk(bulk.id).completed_items == 1  # paused items were skipped
        assert alice.resume_bulk(bulk.id).status == B.BULK_JOB_STATUS_PROCESSING
        done = wait_for(lambda: bulk_status(alice, bulk.id, B.BULK_JOB_STATUS_COMPLETED), timeout=30)
        assert done.completed_items == 10


def test_bulk_work_a_crash_left_half_done_is_finished_by_the_next_server(
    mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    with serving(settings) as alice:
        unsettled, unnotified = (alice.create_bulk("topic", items(10)).id for _ in range(2))
        for bulk_id in (unsettled, unnotified):
            wait_for(lambda b=bulk_id: bulk_status(alice, b, B.BULK_JOB_STATUS_COMPLETED), timeout=30)
    # What a server killed at the wrong moment leaves (some time ago): every item
    # ended but the bulk job still running; or the bulk job completed but its
    # notification unstored.
    db = pymongo.MongoClient(mongo.uri)[settings.db_name]
    db.bulk_jobs.update_one(
        {"_id": ObjectId(unsettled)},
        {"$set": {"status": "PROCESSING", "settled": False, "ended_us": 0, "updated_us": 1}},
    )
    db.bulk_jobs.update_one(
        {"_id": ObjectId(unnotified)}, {"$set": {"notification_pending": True, "ended_us": 1}}
    )
    db.notifications.delete_many({})
    with serving(settings) as alice:
        done = wait_for(lambda: bulk_status(alice, unsettled, B.BULK_JOB_STATUS_COMPLETED))
        assert done.completed_items == 10 and done.end_time.seconds > 0
        notes = wait_for(lambda: len(n := alice.notifications().notifications) == 2 and n)
        assert sorted(n.bulk_job_id for n in notes) == sorted([unsettled, unnotified])
        assert all("10 of 10" in n.message for n in notes)
        final = list(alice.watch_bulk(unsettled))[-1]  # a late watcher gets the notification too
        assert final.type == B.BULK_JOB_EVENT_TYPE_COMPLETED
        assert final.notification.bulk_job_id == unsettled


def test_a_bulk_cancel_cut_short_by_a_crash_is_finished_by_the_next_server(
    mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    with serving(settings) as alice:
        bulk = alice.create_bulk("topic", items(10, i1={"demo_seconds": "60"}))
        wait_for(lambda: alice.get_bulk(bulk.id).items[0].status == jobs_pb2.JOB_STATUS_PROCESSING)
        alice.pause_bulk(bulk.id)
        alice.cancel(bulk.items[0].id)
        wait_for(lambda: alice.get_bulk(bulk.id).cancelled_items == 1)
    # The bulk job marked cancelled, then the server killed before its items were.
    db = pymongo.MongoClient(mongo.uri)[settings.db_name]
    db.bulk_jobs.update_one({"_id": ObjectId(bulk.id)}, {"$set": {"status": "CANCELLED", "updated_us": 1}})
    with serving(settings) as alice:
        done = wait_for(lambda: (b := alice.get_bulk(bulk.id)).end_time.seconds and b)
        assert done.status == B.BULK_JOB_STATUS_CANCELLED
        assert (done.cancelled_items, done.completed_items, done.remaining_items) == (10, 0, 0)


def test_a_watcher_on_another_replica_gets_the_completion_and_its_notification(
    mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    with serving(settings) as alice:  # first up: it holds the dispatcher lease
        bulk = alice.create_bulk("topic", items(10, i10={"demo_seconds": "1"}))
        wait_for(lambda: alice.get_bulk(bulk.id).items[0].status == jobs_pb2.JOB_STATUS_COMPLETED)
        with serving(replace(settings, data_dir=tmp_path / "other")) as watcher:
            events = list(watcher.watch_bulk(bulk.id))
    assert events[0].type == B.BULK_JOB_EVENT_TYPE_SNAPSHOT and events[0].bulk_job.completed_items < 10
    assert events[-1].type == B.BULK_JOB_EVENT_TYPE_COMPLETED
    assert events[-1].bulk_job.completed_items == 10
    assert events[-1].notification.bulk_job_id == bulk.id and "10 of 10" in events[-1].notification.message


def test_a_bulk_job_paused_before_it_started_resumes_queued(alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="blocker", extra={"demo_seconds": "60"})
    wait_for(lambda: alice.get(blocker.id).status == jobs_pb2.JOB_STATUS_PROCESSING)
    bulk = alice.create_bulk("topic", items(10))
    assert alice.pause_bulk(bulk.id).status == B.BULK_JOB_STATUS_PAUSED
    assert alice.resume_bulk(bulk.id).status == B.BULK_JOB_STATUS_QUEUED
    with pytest.raises(FailedPrecondition) as caught:
        alice.resume_bulk(bulk.id)
    assert caught.value.reason == "BULK_JOB_NOT_PAUSED"
    alice.cancel(blocker.id)
    assert wait_for(lambda: bulk_status(alice, bulk.id, B.BULK_JOB_STATUS_COMPLETED), timeout=30)


def test_cancel_mid_run(alice: GenJobsClient) -> None:
    bulk = alice.create_bulk("topic", items(10, i2={"demo_seconds": "30"}))
    wait_for(lambda: alice.get_bulk(bulk.id).items[1].status == jobs_pb2.JOB_STATUS_PROCESSING)
    alice.cancel_bulk(bulk.id)
    done = wait_for(lambda: (b := alice.get_bulk(bulk.id)).remaining_items == 0 and b, timeout=3)
    assert done.status == B.BULK_JOB_STATUS_CANCELLED
    assert (done.completed_items, done.cancelled_items) == (1, 9)
    with pytest.raises(FailedPrecondition) as caught:
        alice.resume_bulk(bulk.id)
    assert caught.value.metadata["status"] == "CANCELLED"


def test_counts_stay_consistent_under_concurrent_item_cancels(alice: GenJobsClient) -> None:
    blocker = alice.submit("topic", topic="blocker", extra={"demo_seconds": "60"})
    wait_for(lambda: alice.get(blocker.id).status == jobs_pb2.JOB_STATUS_PROCESSING)
    bulk = alice.create_bulk("topic", items(20))
    targets = [i.id for i in bulk.items[::2]]
    threads = [threading.Thread(target=alice.cancel, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    now = alice.get_bulk(bulk.id)
    statuses = [alice.get(i.id).status for i in now.items]
    assert now.cancelled_items == statuses.count(jobs_pb2.JOB_STATUS_CANCELLED) == 10
    assert now.remaining_items == 10
    assert now.completed_items + now.failed_items + now.cancelled_items + now.remaining_items == 20


def test_other_users_bulk_jobs_are_not_found(alice: GenJobsClient, bob: GenJobsClient) -> None:
    bulk = alice.create_bulk("topic", items(10))
    for action in (bob.get_bulk, bob.pause_bulk, bob.cancel_bulk):
        with pytest.raises(NotFound):
            action(bulk.id)
    assert bob.list_bulk().total_size == 0


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    failures_left = 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Receiver.failures_left > 0:  # the first attempt fails: delivery is retried
            _Receiver.failures_left -= 1
            self.send_response(503)
        else:
            _Receiver.received.append((dict(self.headers), body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.received = []
    _Receiver.failures_left = 1
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()


def test_webhook_is_signed_and_retried(mongo: MongoServer, tmp_path: Path, receiver: str) -> None:
    settings = make_settings(mongo.uri, tmp_path, webhook_secret="hook-secret", webhook_backoff_seconds=0.2)
    with serving(settings) as alice:
        bulk = alice.create_bulk("topic", items(10), notify_url=receiver)
        wait_for(lambda: _Receiver.received, timeout=30)
        headers, body = _Receiver.received[0]
        stamp = headers["X-Genjobs-Timestamp"]
        expected = hmac.new(b"hook-secret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-Genjobs-Signature"] == "sha256=" + expected
        payload = json.loads(body)
        assert payload["bulk_job_id"] == bulk.id and payload["completed_items"] == 10
        note = wait_for(lambda: [n for n in alice.notifications().notifications if n.delivered])
        assert note[0].delivery_attempts == 2


def test_an_item_requeued_by_a_shutdown_stays_held_while_its_bulk_job_is_paused(
    mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    with serving(settings) as alice:
        bulk = alice.create_bulk("topic", items(10, i1={"demo_seconds": "4"}))
        wait_for(lambda: alice.get_bulk(bulk.id).items[0].status == jobs_pb2.JOB_STATUS_PROCESSING)
        alice.pause_bulk(bulk.id)
    # The stop (1 s grace) gave the running item back to the queue: it must wait
    # for the resume like its paused siblings, not run on the next server.
    first = pymongo.MongoClient(mongo.uri)[settings.db_name].jobs.find_one(
        {"bulk_job_id": bulk.id, "queue_position": 1}
    )
    assert first is not None and (first["status"], first["queue"], first["attempt"]) == ("QUEUED", "held", 0)
    with serving(settings) as alice:
        assert alice.get_bulk(bulk.id).items[0].status == jobs_pb2.JOB_STATUS_QUEUED
        alice.resume_bulk(bulk.id)
        done = wait_for(lambda: bulk_status(alice, bulk.id, B.BULK_JOB_STATUS_COMPLETED), timeout=60)
        assert done.completed_items == 10


def test_an_item_failing_after_a_pause_waits_held_not_in_backoff(
    alice: GenJobsClient, mongo: MongoServer, server: ServerThread
) -> None:
    bulk = alice.create_bulk(
        "topic", items(10, i1={"demo_seconds": "1", "demo_fail": "transient", "demo_fail_attempts": "1"})
    )
    wait_for(lambda: alice.get_bulk(bulk.id).items[0].status == jobs_pb2.JOB_STATUS_PROCESSING)
    alice.pause_bulk(bulk.id)
    jobs = pymongo.MongoClient(mongo.uri)[server.settings.db_name].jobs
    # Its retryable failure lands after the pause: a backoff would end in the
    # ready lane and start the item while its bulk job is paused.
    first = wait_for(
        lambda: jobs.find_one({"bulk_job_id": bulk.id, "queue_position": 1, "attempt": 1, "status": "QUEUED"})
    )
    assert first["queue"] == "held"
    alice.resume_bulk(bulk.id)
    done = wait_for(lambda: bulk_status(alice, bulk.id, B.BULK_JOB_STATUS_COMPLETED), timeout=60)
    assert done.completed_items == 10


def test_retrying_a_bulk_jobs_failed_item_that_fails_again_sends_no_second_notification(
    alice: GenJobsClient,
) -> None:
    items: list[dict[str, Any]] = [{"topic": f"item {i}", "word_count": 60} for i in range(10)]
    items[4]["extra"] = {"demo_fail": "permanent"}
    bulk = alice.create_bulk("topic", items)
    completed = bulk_pb2.BULK_JOB_STATUS_COMPLETED
    wait_for(lambda: alice.get_bulk(bulk.id).status == completed, timeout=60)
    first = alice.notifications(bulk_job_id=bulk.id).notifications
    assert [n.message.split(": ", 1)[1] for n in first] == ["9 of 10 items succeeded, 1 failed, 0 cancelled."]
    for _ in range(2):  # as `genjobs ops retry-failed --bulk ID`, twice
        retried = alice.run_bulk_operation("RETRY_ALL_FAILED", bulk_job_id=bulk.id).job_ids
        assert len(retried) == 1
        wait_for(
            lambda r=retried[0]: (
                alice.get(r).status == jobs_pb2.JOB_STATUS_FAILED
                and alice.get_bulk(bulk.id).status == completed
            ),
            timeout=60,
        )
    # The outcome did not change: the one notification stands, none is added.
    assert [n.id for n in alice.notifications(bulk_job_id=bulk.id).notifications] == [first[0].id]
