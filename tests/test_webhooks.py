"""Webhook hardening (issue 14 item 2): a bad notify_url is refused, no delivery
failure stops the sender or other users' webhooks, a slow endpoint holds up
only itself, and webhooks do not reach private addresses unless allowed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from genjobs.client import GenJobsClient, InvalidArgument
from genjobs.server.model.channels import new_notification
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.notify import guard
from genjobs.v1 import bulk_pb2
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.receivers import Receiver

B = bulk_pb2


def items(n: int = 10) -> list[dict[str, Any]]:
    return [{"topic": f"article {i + 1}", "word_count": 60} for i in range(n)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def database(mongo: MongoServer, server: ServerThread) -> pymongo.database.Database[dict[str, Any]]:
    return pymongo.MongoClient(mongo.uri)[server.settings.db_name]


def stored_notification(owner: str, url: str) -> dict[str, Any]:
    """A pending webhook notification as an older version stored it (unchecked URL)."""
    doc = new_notification(
        oid=ObjectId(),
        owner=owner,
        event="bulk_job.completed",
        message="stored by hand",
        payload={"bulk_job_id": "0" * 24},
        ck=int(time.time() * 1e6),
        created_us=int(time.time() * 1e6),
        targets=[NotifyTarget("webhook", url)],
        bulk_job_id="0" * 24,
    )
    for old_only in ("job_id", "event", "notify_email", "email_delivery", "email_attempts"):
        del doc[old_only]
    return doc


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "ftp://example.com/hook",
        "http://",
        "http:///path",
        "http://example.com:99999/",
        "http://user:secret@example.com/",
        "http://exa mple.com/",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_a_bad_notify_url_is_refused(alice: GenJobsClient, url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        alice.create_bulk("topic", items(), notify_url=url)
    assert "notify_url" in [field for field, _ in caught.value.violations]
    assert alice.list_bulk().total_size == 0


def test_a_stored_bad_url_does_not_stop_another_users_webhook(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver
) -> None:
    server = ServerThread(make_settings(mongo.uri, tmp_path, webhook_backoff_seconds=0.2)).start()
    try:
        db = database(mongo, server)
        bad = stored_notification("mallory", "http://[::1")
        db.notifications.insert_one(bad)
        with server.client("bob") as bob:
            bulk = bob.create_bulk("topic", items(), notify_url=receiver.url("/bob"))
            wait_for(lambda: receiver.on("/bob"), timeout=60)
            assert bulk.id.encode() in receiver.on("/bob")[0].body
        after = db.notifications.find_one({"_id": bad["_id"]})
        assert after is not None and after["delivery"] == "failed" and after["attempts"] == 1
        assert "unusable notify_url" in after["last_error"]
    finally:
        server.stop()


def test_a_slow_endpoint_does_not_hold_up_another(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver
) -> None:
    slow = Receiver(held={"/slow"})
    settings = make_settings(mongo.uri, tmp_path, webhook_timeout_seconds=20.0)
    server = ServerThread(settings).start()
    try:
        db = database(mongo, server)
        # A backlog for an endpoint that does not answer (until released).
        db.notifications.insert_many([stored_notification("carol", slow.url("/slow")) for _ in range(8)])
        wait_for(lambda: slow.arrived, timeout=30)
        with server.client("bob") as bob:
            bob.create_bulk("topic", items(), notify_url=receiver.url("/fast"))
            wait_for(lambda: receiver.on("/fast"), timeout=60)
        # Delivered while every request to the slow endpoint is still held.
        assert slow.received == []
        assert len(slow.arrived) <= 2  # at most two at a time per endpoint
        slow.release()
        wait_for(lambda: len(slow.received) == 8, timeout=60)
    finally:
        slow.close()
        server.stop()


def test_a_loopback_url_is_refused_and_not_retried(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(mongo.uri, tmp_path, webhook_allow_private=False, webhook_backoff_seconds=0.1)
    server = ServerThread(settings).start()
    try:
        with server.client("alice") as alice:
            bulk = alice.create_bulk("topic", items(), notify_url=receiver.url())

            def refused(bulk_id: str) -> Any:
                notes = alice.notifications(bulk_job_id=bulk_id).notifications
                return notes and notes[0].deliveries[0].state == B.DELIVERY_STATE_REFUSED and notes[0]

            note = wait_for(lambda: refused(bulk.id), timeout=60)
            assert note.deliveries[0].channel == B.DELIVERY_CHANNEL_WEBHOOK
            assert "loopback" in note.deliveries[0].last_error
            assert note.deliveries[0].attempts == 1 and not note.delivered
            # A later bulk job's delivery refused too: the sender has passed over
            # the first one again since, and did not try it a second time.
            later = alice.create_bulk("topic", items(), notify_url=receiver.url())
            wait_for(lambda: refused(later.id), timeout=60)
            again = alice.notifications(bulk_job_id=bulk.id).notifications[0]
            assert again.deliveries[0].attempts == 1 and again.deliveries[0].state == B.DELIVERY_STATE_REFUSED
        assert receiver.received == []
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fd00:ec2::254", "private"),  # cloud metadata over IPv6
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("100.100.100.200", "non-public"),  # metadata in shared address space
        ("224.0.0.1", "multicast"),
        ("93.184.216.34", ""),
        ("2606:2800:220:1:248:1893:25c8:1946", ""),
    ],
)
def test_the_guard_knows_private_addresses(address: str, kind: str) -> None:
    assert guard.forbidden(address) == kind


def test_the_guard_connects_to_the_address_it_checked() -> None:
    with pytest.raises(guard.Refused):
        guard.resolve("http://localhost:8080/hook", allow_private=False)
    target = guard.resolve("https://93.184.216.34:8443/hook?x=1", allow_private=False)
    assert target.url == "https://93.184.216.34:8443/hook?x=1"
    assert (target.host_header, target.server_name) == ("93.184.216.34:8443", "93.184.216.34")
    allowed = guard.resolve("http://localhost:8080/hook", allow_private=True)
    assert allowed.url == "http://localhost:8080/hook"
