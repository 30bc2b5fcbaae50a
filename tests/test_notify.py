"""Job webhooks and email (issue 21): one signed webhook when a single job ends
(never between its retries), mail for jobs and bulk jobs through a real SMTP
server, delayed but never lost while that server is down, and the notification
list naming each job or bulk job with its delivery state per channel."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from genjobs.client import FailedPrecondition, GenJobsClient, InvalidArgument
from genjobs.server.runtime.embedded import free_port
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.harness import MongoServer, ServerThread, make_settings, serving, wait_for
from tests.receivers import MailServer, Receiver

B, J = bulk_pb2, jobs_pb2
SECRET = "hook-secret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def mail_port() -> Iterator[int]:
    yield free_port()


def final(client: GenJobsClient, job_id: str) -> J.Job | None:
    job = client.get(job_id)
    return (
        job if job.status in (J.JOB_STATUS_COMPLETED, J.JOB_STATUS_FAILED, J.JOB_STATUS_CANCELLED) else None
    )


def verified(hook: Any) -> dict[str, Any]:
    """The payload of a webhook whose signature checks out (docs/notifications.md's recipe)."""
    stamp = hook.headers["X-Genjobs-Timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + hook.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(hook.headers["X-Genjobs-Signature"], "sha256=" + expected)
    return json.loads(hook.body)  # type: ignore[no-any-return]


def delivered(client: GenJobsClient, channel: int, **where: str) -> B.Notification | None:
    for note in client.notifications(**where).notifications:
        for delivery in note.deliveries:
            if delivery.channel == channel and delivery.state == B.DELIVERY_STATE_DELIVERED:
                return note
    return None


def test_each_ending_job_sends_one_signed_webhook_and_none_between_retries(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(mongo.uri, tmp_path, webhook_secret=SECRET, webhook_backoff_seconds=0.2)
    with serving(settings) as alice:
        done = alice.submit("topic", topic="Tea", word_count=60, notify_url=receiver.url("/done"))
        # Fails its first attempt (retried), then completes: one webhook, at the end.
        flaky = alice.submit(
            "topic",
            topic="Coffee",
            word_count=60,
            extra={"demo_fail": "transient"},
            notify_url=receiver.url("/flaky"),
        )
        # Fails both attempts: FAILED for good only after the second.
        failed = alice.submit(
            "topic",
            topic="Cocoa",
            word_count=60,
            max_attempts=2,
            extra={"demo_fail": "transient", "demo_fail_attempts": "5"},
            notify_url=receiver.url("/failed"),
        )
        slow = alice.submit(
            "topic",
            topic="Mate",
            word_count=60,
            extra={"demo_seconds": "60"},
            notify_url=receiver.url("/gone"),
        )
        alice.cancel(slow.id)
        for job in (done, flaky, failed, slow):
            wait_for(lambda job=job: final(alice, job.id), timeout=60)
            wait_for(lambda job=job: delivered(alice, B.DELIVERY_CHANNEL_WEBHOOK, job_id=job.id), timeout=30)
        events = {
            path: [verified(h) for h in receiver.on(path)] for path in ("/done", "/flaky", "/failed", "/gone")
        }
        assert {path: len(hooks) for path, hooks in events.items()} == {p: 1 for p in events}
        assert events["/done"][0]["event"] == "job.completed" and events["/done"][0]["job_id"] == done.id
        assert events["/flaky"][0]["status"] == "COMPLETED" and events["/flaky"][0]["attempt"] == 2
        assert events["/failed"][0]["event"] == "job.failed" and events["/failed"][0]["attempt"] == 2
        assert events["/failed"][0]["error"]["code"] == "DEMO_TRANSIENT"
        assert events["/gone"][0]["event"] == "job.cancelled"
        note = alice.notifications(job_id=failed.id).notifications[0]
        assert note.job_id == failed.id and note.event == "job.failed" and not note.bulk_job_id
        assert [(d.channel, d.target, d.attempts) for d in note.deliveries] == [
            (B.DELIVERY_CHANNEL_WEBHOOK, receiver.url("/failed"), 1)
        ]
        retry = alice.retry(failed.id)
        assert retry.notify_url == receiver.url("/failed")  # a retry keeps its webhook
        assert alice.get(done.id).notify_url == receiver.url("/done")


def test_a_bulk_job_completing_sends_one_mail_with_its_counts(
    mongo: MongoServer, tmp_path: Path, mail_port: int
) -> None:
    smtp = MailServer(mail_port).start()
    settings = make_settings(
        mongo.uri,
        tmp_path,
        smtp_url=f"smtp://127.0.0.1:{mail_port}",
        smtp_from="genjobs@example.com",
        public_url="http://genjobs.example.com",
    )
    try:
        with serving(settings) as alice:
            items = [{"topic": f"article {i}", "word_count": 100} for i in range(10)]
            items[2]["extra"] = {"demo_fail": "permanent"}
            bulk = alice.create_bulk("topic", items, notify_email="team@example.com")
            assert bulk.notify_email == "team@example.com"
            wait_for(lambda: smtp.messages, timeout=90)
            note = wait_for(
                lambda: delivered(alice, B.DELIVERY_CHANNEL_EMAIL, bulk_job_id=bulk.id), timeout=30
            )
            events = list(alice.watch_bulk(bulk.id))
        assert len(smtp.messages) == 1
        mail = smtp.messages[0]
        assert mail["To"] == "team@example.com" and mail["From"] == "genjobs@example.com"
        assert mail["Subject"].strip() == f"Bulk job {bulk.id} completed: 9 of 10 succeeded, 1 failed"
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "9 of 10 items completed, 1 failed, 0 cancelled." in text
        assert "Cost: $0.09." in text  # 9 articles of 100 words, 1 cent each
        assert f"http://genjobs.example.com/bulk/{bulk.id}" in text
        assert "DEMO_PERMANENT" in text
        assert "9 of 10 items completed" in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert note.bulk_job_id == bulk.id and note.event == "bulk_job.completed"
        # The watch's completion event names the bulk job and its channels too.
        completion = events[-1].notification
        assert completion.bulk_job_id == bulk.id
        assert [d.channel for d in completion.deliveries] == [B.DELIVERY_CHANNEL_EMAIL]
    finally:
        smtp.stop()


def test_mail_waits_for_an_unreachable_server_and_none_is_lost(
    mongo: MongoServer, tmp_path: Path, mail_port: int
) -> None:
    settings = make_settings(
        mongo.uri, tmp_path, smtp_url=f"smtp://127.0.0.1:{mail_port}", webhook_backoff_seconds=0.1
    )
    with serving(settings) as alice:
        jobs = [
            alice.submit("topic", topic=f"t{i}", word_count=60, notify_email="me@example.com")
            for i in range(3)
        ]

        def retried() -> bool:
            notes = alice.notifications().notifications
            return len(notes) == 3 and all(
                n.deliveries[0].attempts >= 2 and n.deliveries[0].state == B.DELIVERY_STATE_PENDING
                for n in notes
            )

        wait_for(retried, timeout=60)
        assert "Connect" in alice.notifications().notifications[0].deliveries[0].last_error
        smtp = MailServer(mail_port).start()
        try:
            wait_for(lambda: len(smtp.messages) == 3, timeout=60)
            for job in jobs:
                wait_for(
                    lambda job=job: delivered(alice, B.DELIVERY_CHANNEL_EMAIL, job_id=job.id), timeout=30
                )
            assert sorted(m["Subject"].strip() for m in smtp.messages) == sorted(
                f"Job {j.id} completed" for j in jobs
            )
        finally:
            smtp.stop()


@pytest.mark.parametrize(
    "address", ["not-an-address", "a@b", "two@@example.com", "me@example.com\r\nBcc: x@y.z"]
)
def test_a_bad_mail_address_is_refused(mongo: MongoServer, tmp_path: Path, address: str) -> None:
    with serving(make_settings(mongo.uri, tmp_path, smtp_url="smtp://127.0.0.1:1")) as alice:
        with pytest.raises(InvalidArgument) as caught:
            alice.submit("topic", topic="Tea", notify_email=address)
        assert [field for field, _ in caught.value.violations] == ["notify_email"]
        with pytest.raises(InvalidArgument):
            alice.create_bulk("topic", [{"topic": f"t{i}"} for i in range(10)], notify_email=address)
        assert alice.list().total_size == 0


def test_mail_without_an_smtp_server_is_refused(alice: GenJobsClient) -> None:
    with pytest.raises(FailedPrecondition, match="email is not configured"):
        alice.submit("topic", topic="Tea", notify_email="me@example.com")
    with pytest.raises(FailedPrecondition, match="email is not configured"):
        alice.create_bulk("topic", [{"topic": f"t{i}"} for i in range(10)], notify_email="me@example.com")
    assert alice.list().total_size == 0


def test_a_job_whose_notification_a_crash_lost_is_notified_by_the_next_server(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    with serving(settings) as alice:
        job = alice.submit("topic", topic="Tea", word_count=60, notify_url=receiver.url())
        wait_for(lambda: receiver.received, timeout=60)
    # As if the server had stopped between the job's final write and its notification.
    db = pymongo.MongoClient(mongo.uri)[settings.db_name]
    db.notifications.delete_many({})
    db.jobs.update_one({"_id": ObjectId(job.id)}, {"$set": {"notify_pending": True, "ended_us": 1}})
    with serving(settings) as alice:
        wait_for(lambda: len(receiver.received) == 2, timeout=60)
        assert alice.notifications(job_id=job.id).notifications[0].job_id == job.id
        assert not db.jobs.find_one({"_id": ObjectId(job.id)})["notify_pending"]  # type: ignore[index]
    assert len(receiver.received) == 2


def test_notifications_of_other_users_jobs_are_not_listed(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver
) -> None:
    server = ServerThread(make_settings(mongo.uri, tmp_path)).start()
    try:
        with server.client("alice") as alice, server.client("bob") as bob:
            job = alice.submit("topic", topic="Tea", word_count=60, notify_url=receiver.url())
            wait_for(lambda: delivered(alice, B.DELIVERY_CHANNEL_WEBHOOK, job_id=job.id), timeout=60)
            assert bob.notifications(job_id=job.id).notifications == []
            assert bob.notifications().notifications == []
    finally:
        server.stop()


def test_a_job_and_a_bulk_job_notify_the_targets_of_their_notify_list(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(mongo.uri, tmp_path, webhook_secret=SECRET)
    with serving(settings) as alice:
        job = alice.submit("topic", topic="Tea", word_count=60, notify=[("webhook", receiver.url("/job"))])
        bulk = alice.create_bulk(
            "topic",
            [{"topic": f"article {i}", "word_count": 60} for i in range(10)],
            notify=[("webhook", receiver.url("/bulk"))],
        )
        # The list and its shorthand say the same.
        assert [(t.channel, t.address) for t in job.notify] == [("webhook", receiver.url("/job"))]
        assert job.notify_url == receiver.url("/job") and not job.notify_email
        assert [(t.channel, t.address) for t in bulk.notify] == [("webhook", receiver.url("/bulk"))]
        assert bulk.notify_url == receiver.url("/bulk")
        wait_for(lambda: delivered(alice, B.DELIVERY_CHANNEL_WEBHOOK, job_id=job.id), timeout=60)
        wait_for(lambda: delivered(alice, B.DELIVERY_CHANNEL_WEBHOOK, bulk_job_id=bulk.id), timeout=90)
        [job_hook] = [verified(h) for h in receiver.on("/job")]
        [bulk_hook] = [verified(h) for h in receiver.on("/bulk")]
        assert job_hook["event"] == "job.completed" and job_hook["job_id"] == job.id
        assert bulk_hook["event"] == "bulk_job.completed" and bulk_hook["bulk_job_id"] == bulk.id
        assert [(t.channel, t.address) for t in alice.get(job.id).notify] == [
            ("webhook", receiver.url("/job"))
        ]


def test_a_notify_target_on_an_unknown_channel_or_twice_on_one_is_refused(server: ServerThread) -> None:
    with server.client("alice") as alice:
        with pytest.raises(InvalidArgument) as caught:
            alice.submit("topic", topic="Tea", notify=[("pigeon", "loft 3")])
        [(field, description)] = caught.value.violations
        assert field == "notify[0].channel"
        assert "unknown channel 'pigeon'" in description and "'webhook'" in description
        with pytest.raises(InvalidArgument) as caught:
            alice.create_bulk(
                "topic", [{"topic": f"t{i}"} for i in range(10)], notify=[("webhook", "ftp://example.com")]
            )
        assert [field for field, _ in caught.value.violations] == ["notify[0].address"]
        with pytest.raises(InvalidArgument) as caught:
            alice.submit(
                "topic",
                topic="Tea",
                notify=[("webhook", "https://a.example.com/")],
                notify_url="https://b.example.com/",
            )
        assert [field for field, _ in caught.value.violations] == ["notify_url"]
        assert alice.list().total_size == 0
