"""Notification abuse (issue 26 items 2 and 9): a user's trickling webhook
receivers or slow mail hold no other user's notifications, an attempt has a
total deadline, one attempt is one POST and one recorded outcome even when it
outlasts its claim, a stopping server exits within its grace whatever the
receivers do, and mail refuses address literals and %-routing and keeps to a
per-owner hourly rate."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from genjobs.client import GenJobsClient, InvalidArgument
from genjobs.server.model.channels import new_notification
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.runtime.embedded import free_port
from genjobs.v1 import bulk_pb2
from tests.harness import MongoServer, ServerProcess, ServerThread, make_settings, serving, wait_for
from tests.receivers import Flood, MailServer, Receiver, Trickler

B = bulk_pb2
Doc = dict[str, Any]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def tricklers() -> Iterator[list[Trickler]]:
    running = [Trickler(interval=0.5) for _ in range(10)]
    yield running
    for trickler in running:
        trickler.close()


def delivery(client: GenJobsClient, job_id: str, channel: int) -> B.NotificationDelivery | None:
    """The job's delivery on `channel` once its notification is stored."""
    for note in client.notifications(job_id=job_id).notifications:
        for found in note.deliveries:
            if found.channel == channel:
                return found
    return None


def settled(client: GenJobsClient, job_id: str, channel: int) -> B.NotificationDelivery | None:
    """The job's delivery on `channel` once it is no longer pending."""
    found = delivery(client, job_id, channel)
    return found if found is not None and found.state != B.DELIVERY_STATE_PENDING else None


def ended_at(client: GenJobsClient, job_id: str) -> float:
    """When the job ended (its stored end_time), in seconds since the epoch."""
    job = wait_for(lambda: (j := client.get(job_id)).HasField("end_time") and j, timeout=60)
    return float(job.end_time.ToMicroseconds()) / 1e6


def test_trickling_receivers_of_one_owner_do_not_delay_another_owners_webhook(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver, tricklers: list[Trickler]
) -> None:
    server = ServerThread(make_settings(mongo.uri, tmp_path)).start()
    try:
        with server.client("mallory") as mallory, server.client("bob") as bob:
            # Two jobs for each of ten ports: more than every delivery worker.
            for i in range(20):
                mallory.submit("topic", topic=f"t{i}", word_count=60, notify_url=tricklers[i % 10].url())
            # Every one of them ended and its webhook is being sent.
            wait_for(lambda: len(mallory.notifications().notifications) == 20, timeout=60)
            wait_for(lambda: sum(t.open for t in tricklers) >= 4, timeout=60)
            job = bob.submit("topic", topic="Tea", word_count=60, notify_url=receiver.url("/bob"))
            hook = wait_for(lambda: receiver.on("/bob"), timeout=60)[0]
            late = hook.at - ended_at(bob, job.id)
            assert late < 8.0, f"bob's webhook arrived {late:.1f} s after his job ended"
            # The tricklers were never given every worker.
            assert max(t.open for t in tricklers) <= 2
    finally:
        server.stop()


def test_a_backlog_of_one_owners_due_webhooks_does_not_hide_another_owners(
    mongo: MongoServer, tmp_path: Path, receiver: Receiver, tricklers: list[Trickler]
) -> None:
    server = ServerThread(make_settings(mongo.uri, tmp_path)).start()
    try:
        # More due deliveries than the notifier reads at a time, all mallory's.
        now_us = int(time.time() * 1e6)
        backlog = [
            new_notification(
                oid=ObjectId(),
                owner="mallory",
                event="job.completed",
                message="a backlog",
                payload={},
                ck=now_us + i,
                created_us=now_us,
                targets=[NotifyTarget("webhook", tricklers[i % 10].url())],
            )
            for i in range(700)
        ]
        with pymongo.MongoClient(mongo.uri) as client:
            client[server.settings.db_name].notifications.insert_many(backlog)
        wait_for(lambda: sum(t.open for t in tricklers) >= 4, timeout=60)
        with server.client("bob") as bob:
            job = bob.submit("topic", topic="Tea", word_count=60, notify_url=receiver.url("/bob"))
            hook = wait_for(lambda: receiver.on("/bob"), timeout=60)[0]
            late = hook.at - ended_at(bob, job.id)
            assert late < 8.0, f"bob's webhook arrived {late:.1f} s after his job ended"
    finally:
        server.stop()


def test_a_trickling_receiver_is_cut_off_at_the_attempts_deadline(
    mongo: MongoServer, tmp_path: Path, tricklers: list[Trickler]
) -> None:
    trickler = tricklers[0]
    settings = make_settings(mongo.uri, tmp_path, webhook_timeout_seconds=2.0, webhook_backoff_seconds=30)
    with serving(settings) as alice:
        job = alice.submit("topic", topic="Tea", word_count=60, notify_url=trickler.url())

        def first_attempt_recorded() -> B.NotificationDelivery | None:
            found = delivery(alice, job.id, B.DELIVERY_CHANNEL_WEBHOOK)
            return found if found is not None and found.last_error else None

        found = wait_for(first_attempt_recorded, timeout=30)
        assert found.state == B.DELIVERY_STATE_PENDING and found.attempts == 1
        assert "2 s" in found.last_error
        wait_for(lambda: trickler.closed, timeout=10)
        held = trickler.closed[0] - trickler.opened[0]
        assert held < 2.0 + 2.0, f"a 2 s attempt held the trickling receiver {held:.1f} s"


def test_a_huge_answer_is_read_only_in_part(mongo: MongoServer, tmp_path: Path) -> None:
    flood = Flood()
    try:
        with serving(make_settings(mongo.uri, tmp_path)) as alice:
            job = alice.submit("topic", topic="Tea", word_count=60, notify_url=flood.url())
            found = wait_for(lambda: settled(alice, job.id, B.DELIVERY_CHANNEL_WEBHOOK), timeout=60)
            assert (found.state, found.attempts) == (B.DELIVERY_STATE_DELIVERED, 1)
            wait_for(lambda: flood.sent, timeout=10)
        # What the sender took before hanging up (the rest sat in socket buffers).
        assert flood.sent[0] < 10_000_000, f"{flood.sent[0]} bytes of an answer read"
    finally:
        flood.close()


def test_an_answer_slower_than_the_claim_is_one_post_and_one_outcome(
    mongo: MongoServer, tmp_path: Path
) -> None:
    slow = Receiver(held={"/slow"}, hold_seconds=4.0)
    settings = make_settings(mongo.uri, tmp_path, notify_claim_seconds=1.0, webhook_timeout_seconds=10.0)
    try:
        with serving(settings) as alice:
            job = alice.submit("topic", topic="Tea", word_count=60, notify_url=slow.url("/slow"))
            found = wait_for(lambda: settled(alice, job.id, B.DELIVERY_CHANNEL_WEBHOOK), timeout=60)
            assert (found.state, found.attempts) == (B.DELIVERY_STATE_DELIVERED, 1)
            assert len(slow.arrived) == 1, f"{len(slow.arrived)} POSTs for one notification"
    finally:
        slow.close()


def test_sigterm_exits_within_the_grace_while_a_trickle_is_open(
    mongo: MongoServer, tmp_path: Path, tricklers: list[Trickler]
) -> None:
    trickler = tricklers[0]
    settings = make_settings(mongo.uri, tmp_path, shutdown_grace_seconds=2.0, webhook_timeout_seconds=120.0)
    server = ServerProcess(settings, tmp_path / "server.log").start()
    try:
        with server.client() as alice:
            job = alice.submit("topic", topic="Tea", word_count=60, notify_url=trickler.url())
        wait_for(lambda: trickler.open, timeout=60)
        assert server.process is not None
        asked = time.time()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(15)
        except Exception:
            pytest.fail(f"still running {time.time() - asked:.0f} s after SIGTERM with a 2 s grace")
        assert code == 0
        assert time.time() - asked < 10
        # The attempt was given back: due now, for the next server to make.
        with pymongo.MongoClient(mongo.uri) as client:
            doc = client[settings.db_name].notifications.find_one({"_id": ObjectId(job.id)})
        assert doc is not None and doc["delivery"] == "pending"
        assert doc["next_attempt_us"] <= time.time() * 1e6
        assert (doc["attempts"], doc["claim_token"]) == (0, "")  # not counted, not held
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


def test_a_slow_mail_server_holds_no_other_owners_mail(mongo: MongoServer, tmp_path: Path) -> None:
    smtp = MailServer(free_port())
    smtp.inbox.slow_domain, smtp.inbox.slow_seconds = "slow.example.com", 60.0
    smtp.start()
    settings = make_settings(mongo.uri, tmp_path, smtp_url=f"smtp://127.0.0.1:{smtp.port}")
    server = ServerThread(settings).start()
    try:
        with server.client("mallory") as mallory, server.client("bob") as bob:
            for i in range(8):
                mallory.submit("topic", topic=f"t{i}", word_count=60, notify_email=f"m{i}@slow.example.com")
            wait_for(lambda: smtp.inbox.slow_arrived >= 2, timeout=60)
            job = bob.submit("topic", topic="Tea", word_count=60, notify_email="bob@example.com")
            wait_for(lambda: any(m["To"] == "bob@example.com" for m in smtp.messages), timeout=90)
            at = next(t for m, t in smtp.inbox.messages if m["To"] == "bob@example.com")
            late = at - ended_at(bob, job.id)
            assert late < 8.0, f"bob's mail arrived {late:.1f} s after his job ended"
    finally:
        server.stop()
        smtp.stop()


@pytest.mark.parametrize(
    "address",
    [
        "a@[127.0.0.1]",
        "a@[IPv6:::1]",
        "a@127.0.0.1",
        "a%evil.com@example.com",
        "a!evil.com@example.com",
        '"a@evil.com"@example.com',
    ],
)
def test_address_literals_and_percent_routing_are_refused(
    mongo: MongoServer, tmp_path: Path, address: str
) -> None:
    with serving(make_settings(mongo.uri, tmp_path, smtp_url="smtp://127.0.0.1:1")) as alice:
        with pytest.raises(InvalidArgument) as caught:
            alice.submit("topic", topic="Tea", notify_email=address)
        assert [field for field, _ in caught.value.violations] == ["notify_email"]
        with pytest.raises(InvalidArgument):
            alice.create_bulk("topic", [{"topic": f"t{i}"} for i in range(10)], notify_email=address)
        assert alice.list().total_size == 0
        alice.submit("topic", topic="Tea", notify_email="a.b+c@mail.example.com")  # a plain one passes


def test_mail_past_the_owners_hourly_rate_is_not_sent_and_says_so(mongo: MongoServer, tmp_path: Path) -> None:
    smtp = MailServer(free_port()).start()
    settings = make_settings(
        mongo.uri, tmp_path, smtp_url=f"smtp://127.0.0.1:{smtp.port}", mail_per_owner_per_hour=4
    )
    # Two replicas on one database: the rate is counted there, not per server.
    first = ServerThread(settings).start()
    second = ServerThread(replace(settings, data_dir=tmp_path / "second")).start()
    try:
        with first.client("mallory") as one, second.client("mallory") as two, first.client("bob") as bob:
            jobs = [
                client.submit("topic", topic=f"t{i}", word_count=60, notify_email="victim@example.com")
                for i in range(3)
                for client in (one, two)
            ]
            theirs = bob.submit("topic", topic="Tea", word_count=60, notify_email="bob@example.com")
            states = [
                wait_for(lambda j=j: settled(one, j.id, B.DELIVERY_CHANNEL_EMAIL), timeout=90) for j in jobs
            ]
            wait_for(lambda: settled(bob, theirs.id, B.DELIVERY_CHANNEL_EMAIL), timeout=90)
        sent = [s for s in states if s.state == B.DELIVERY_STATE_DELIVERED]
        held = [s for s in states if s.state != B.DELIVERY_STATE_DELIVERED]
        assert len(sent) == 4 and len(held) == 2
        for state in held:
            assert state.state == B.DELIVERY_STATE_REFUSED
            assert "not sent" in state.last_error and "GENJOBS_MAIL_PER_OWNER_PER_HOUR" in state.last_error
        assert sorted(m["To"] for m in smtp.messages) == ["bob@example.com"] + ["victim@example.com"] * 4
    finally:
        first.stop()
        second.stop()
        smtp.stop()
