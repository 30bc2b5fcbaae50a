"""Abuse of schedules, templates, watch streams and priority (issue 26, items 5
and 6): per-owner caps that hold under concurrent calls, the least interval
between a schedule's ticks, ticks shared fairly between owners, a failing
schedule that says so without flooding the log, and PRIORITY_HIGH only while
the creator is entitled to it, on every path that creates a job."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pymongo
import pytest

from genjobs.client import GenJobsClient, GenJobsError
from genjobs.client.client import params
from genjobs.server.model.errors import ServiceError
from genjobs.server.storage.schedules import SCHEDULES, ScheduleStore
from genjobs.server.storage.store import Store
from genjobs.v1 import bulk_pb2, jobs_pb2, jobs_pb2_grpc
from tests.harness import MongoServer, ServerThread, make_settings, wait_for

EVERY_SECOND = "* * * * * *"
EVERY_MINUTE = "* * * * *"
HIGH, NORMAL = jobs_pb2.PRIORITY_HIGH, jobs_pb2.PRIORITY_NORMAL


def job(topic: str = "Daily tea", priority: int = 0, **extra: str) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(
        mode=jobs_pb2.MODE_TOPIC,
        params=params(topic=topic, word_count=60, extra=extra or None),
        priority=priority,  # type: ignore[arg-type]
    )


def said(error: GenJobsError) -> str:
    """Everything an error tells its caller: message, field violations, metadata."""
    return " ".join([str(error), *(d for _, d in error.violations), *error.metadata.values()])


def code(call: Any) -> str:
    """The status code name `call()` fails with ("OK" when it does not)."""
    try:
        call()
    except GenJobsError as exc:
        return str(exc.code.name)
    return "OK"


@pytest.fixture
def capped(mongo: MongoServer, tmp_path: Path) -> Iterator[ServerThread]:
    """A server with small caps, so that a test reaches them quickly."""
    settings = make_settings(
        mongo.uri,
        tmp_path,
        max_schedules_per_owner=20,
        max_templates_per_owner=5,
        max_template_bytes=2048,
        max_streams_per_owner=3,
    )
    running = ServerThread(settings).start()
    yield running
    running.stop()


# ---- schedules: cap, least interval, fairness, failing ------------------------


def test_a_cron_faster_than_the_least_interval_is_refused_naming_the_limit(
    mongo: MongoServer, tmp_path: Path
) -> None:
    server = ServerThread(make_settings(mongo.uri, tmp_path, min_schedule_interval_seconds=60)).start()
    try:
        with server.client("alice") as alice:
            for fast in (EVERY_SECOND, "*/30 * * * * *", "0,59 * * * * *"):
                with pytest.raises(GenJobsError) as refused:
                    alice.create_schedule(fast, job=job())
                assert refused.value.code.name == "INVALID_ARGUMENT", fast
                assert "GENJOBS_MIN_SCHEDULE_INTERVAL_SECONDS" in said(refused.value), fast
            assert alice.create_schedule(EVERY_MINUTE, job=job()).id  # every 60 s: allowed
            assert alice.create_schedule("0 * * * * *", job=job()).id  # second 0 of every minute
    finally:
        server.stop()


def test_a_schedule_stored_before_the_limit_ticks_no_faster_than_it(
    mongo: MongoServer, tmp_path: Path
) -> None:
    settings = make_settings(mongo.uri, tmp_path)  # the least interval at 1 s, as before the limit
    first = ServerThread(settings).start()
    try:
        with first.client("alice") as alice:
            schedule = alice.create_schedule(EVERY_SECOND, job=job())
    finally:
        first.stop()
    second = ServerThread(replace(settings, min_schedule_interval_seconds=30)).start()
    try:
        with second.client("alice") as alice:
            # The first server may have ticked it before it stopped, at its 1 s:
            # the second's next tick sets the next run 30 s on, never 1 s.
            def gap() -> int:
                ticked = alice.get_schedule(schedule.id)
                return ticked.next_run_time.ToMicroseconds() - ticked.last_run_time.ToMicroseconds()

            wait_for(
                lambda: alice.get_schedule(schedule.id).run_count >= 1 and gap() >= 30_000_000, timeout=30
            )
            alice.delete_schedule(schedule.id)
    finally:
        second.stop()


def test_the_least_interval_of_a_cron() -> None:
    from genjobs.server.services.schedules import least_interval

    assert least_interval(EVERY_SECOND) == 1
    assert least_interval("*/5 * * * * *") == 5
    assert least_interval("0,59 * * * * *") == 1  # 59 s, then 1 s to the next minute's 0
    assert least_interval(EVERY_MINUTE) == 60
    assert least_interval("*/15 * * * *") == 900
    assert least_interval("@hourly") == 3600
    assert least_interval("0 9 * * 1-5") >= 82800


def test_one_owners_schedules_stop_at_the_cap_under_concurrent_creates(capped: ServerThread) -> None:
    with capped.client("mallory") as mallory, capped.client("bob") as bob:

        def create(i: int) -> str:
            return code(lambda: mallory.create_schedule(EVERY_MINUTE, job=job(f"spam {i}")))

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(create, range(30)))
        assert outcomes.count("OK") == 20 and outcomes.count("RESOURCE_EXHAUSTED") == 10, outcomes
        assert len(list(mallory.iter_schedules())) == 20
        with pytest.raises(GenJobsError) as refused:
            mallory.create_schedule(EVERY_MINUTE, job=job())
        assert "GENJOBS_MAX_SCHEDULES_PER_OWNER" in said(refused.value)
        assert bob.create_schedule(EVERY_MINUTE, job=job()).id  # another owner is not capped by mallory
        # A delete frees a place; a repeated request_id at the cap returns the first schedule.
        mallory.delete_schedule(next(mallory.iter_schedules()).id)
        first = mallory.create_schedule(EVERY_MINUTE, job=job(), request_id="r1")
        assert mallory.create_schedule(EVERY_MINUTE, job=job(), request_id="r1").id == first.id
        assert code(lambda: mallory.create_schedule(EVERY_MINUTE, job=job())) == "RESOURCE_EXHAUSTED"


def test_places_left_taken_by_servers_that_died_are_given_back(
    capped: ServerThread, mongo: MongoServer
) -> None:
    """A server that dies between counting a create and storing it leaves the
    owner's count one high; dead servers' places pile up to the cap. A create
    refused at the cap counts again what the owner has, and goes on."""
    counts = pymongo.MongoClient(mongo.uri)[capped.settings.db_name]["owner_counts"]
    with capped.client("carol") as carol:
        kept = [carol.create_schedule(EVERY_MINUTE, job=job(f"kept {i}")).id for i in range(3)]
        carol.create_template("kept", job=job("a template"))
        # Left as servers dying mid-create leave it, long ago: every place taken.
        counts.update_one({"_id": "schedules:carol"}, {"$set": {"n": 20}, "$unset": {"changed_us": ""}})
        counts.update_one({"_id": "templates:carol"}, {"$set": {"n": 5}, "$unset": {"changed_us": ""}})
        assert carol.create_schedule(EVERY_MINUTE, job=job("a fourth")).id not in kept
        assert carol.create_template("another", job=job("a second template")).name == "another"
        # Counted right from then on: the cap holds at what the owner really has.
        made = [code(lambda: carol.create_schedule(EVERY_MINUTE, job=job("more"))) for _ in range(20)]
        assert made.count("OK") == 16 and made.count("RESOURCE_EXHAUSTED") == 4, made
    counts.database.client.close()


def test_a_place_taken_by_a_create_still_in_flight_is_not_counted_away(mongo: MongoServer) -> None:
    """The recount waits until the counter has not moved for a while: a
    create that took its place and has not stored yet keeps it."""
    store = Store(mongo.uri, "t_inflight_" + uuid.uuid4().hex[:8])
    schedules = ScheduleStore(store.database)
    schedules.ensure_indexes()
    schedules.take_place(SCHEDULES, "dave", 1, "GENJOBS_MAX_SCHEDULES_PER_OWNER")  # not stored yet
    with pytest.raises(ServiceError) as refused:
        schedules.take_place(SCHEDULES, "dave", 1, "GENJOBS_MAX_SCHEDULES_PER_OWNER")
    assert refused.value.reason == "TOO_MANY_SCHEDULES"
    store.database.client.drop_database(store.database.db_name)
    store.close()


def test_a_create_at_the_cap_during_a_delete_leaves_the_count_right(mongo: MongoServer) -> None:
    """A create refused at the cap between a delete's removal and its giving
    back does not count the deleted schedule gone twice (the count would end
    low, and the owner over the cap)."""
    store = Store(mongo.uri, "t_deleting_" + uuid.uuid4().hex[:8])
    schedules = ScheduleStore(store.database)
    schedules.ensure_indexes()
    cap, setting = 2, "GENJOBS_MAX_SCHEDULES_PER_OWNER"
    for _ in range(cap):
        schedules.take_place(SCHEDULES, "erin", cap, setting)
    ids = [str(schedules.schedules.insert_one({"owner": "erin"}).inserted_id) for _ in range(cap)]
    # A minute and more later, nothing changed since: a recount may run.
    schedules.counts.update_one({"_id": "schedules:erin"}, {"$unset": {"changed_us": ""}})
    give_back, raced = schedules.give_place, []

    def create_then_give_back(kind: str, owner: str) -> None:
        try:  # a create at the cap, after the delete removed its schedule, before it gave back
            schedules.take_place(kind, owner, cap, setting)
            raced.append("OK")
        except ServiceError:
            raced.append("RESOURCE_EXHAUSTED")
        give_back(kind, owner)

    schedules.give_place = create_then_give_back  # type: ignore[method-assign]
    schedules.delete_schedule("erin", ids[0])
    schedules.give_place = give_back  # type: ignore[method-assign]
    assert raced == ["RESOURCE_EXHAUSTED"]  # counted as still there: the count stays high, never low
    schedules.take_place(SCHEDULES, "erin", cap, setting)  # the room the delete made
    with pytest.raises(ServiceError):
        schedules.take_place(SCHEDULES, "erin", cap, setting)
    store.database.client.drop_database(store.database.db_name)
    store.close()


def test_another_owners_schedule_ticks_on_time_beside_a_flood(capped: ServerThread) -> None:
    with capped.client("mallory") as mallory, capped.client("bob") as bob:
        outcomes = [code(lambda: mallory.create_schedule(EVERY_SECOND, job=job("flood"))) for _ in range(25)]
        assert outcomes.count("OK") == 20 and outcomes.count("RESOURCE_EXHAUSTED") == 5
        mine = bob.create_schedule(EVERY_SECOND, job=job("bob's digest"))
        wait_for(lambda: bob.get_schedule(mine.id).run_count >= 1, timeout=30)
        start = bob.get_schedule(mine.id).run_count
        floods = [s.id for s in mallory.iter_schedules()]
        flood_start = sum(mallory.get_schedule(s).run_count for s in floods)
        # Eight more ticks of bob's; mallory's 20 schedules tick as well, none ahead of bob's turn.
        wait_for(lambda: bob.get_schedule(mine.id).run_count >= start + 8, timeout=40, interval=0.2)
        bob_ticks = bob.get_schedule(mine.id).run_count - start
        flood_ticks = sum(mallory.get_schedule(s).run_count for s in floods) - flood_start
        assert flood_ticks / len(floods) <= 2 * bob_ticks, (flood_ticks, bob_ticks)
        for schedule_id in floods:
            mallory.delete_schedule(schedule_id)


def test_due_ticks_are_taken_round_robin_between_owners() -> None:
    from genjobs.server.services.schedules import fair_order

    # 300 of mallory's ticks due first, then one each of bob's and carol's.
    due = [{"_id": i, "owner": "mallory"} for i in range(300)]
    due += [{"_id": 300, "owner": "bob"}, {"_id": 301, "owner": "carol"}]
    picked = fair_order(due, 10)
    assert len(picked) == 10
    assert [d["owner"] for d in picked[:3]] == ["mallory", "bob", "carol"]
    assert [d["_id"] for d in picked if d["owner"] == "mallory"] == list(range(8))  # oldest first
    assert fair_order(due, 1) == [due[0]]


def test_a_failing_schedule_says_so_and_logs_once_per_change(
    alice: GenJobsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="genjobs.server.services.schedules")
    alice.create_template("digest", job=job())
    schedule = alice.create_schedule(EVERY_SECOND, template="digest")
    wait_for(lambda: alice.get_schedule(schedule.id).run_count >= 1, timeout=30)
    alice.delete_template("digest")  # every tick now fails: NOT_FOUND

    def failing_ticks() -> int:
        error = alice.get_schedule(schedule.id).last_error
        return int(error.split(" ticks in a row")[0].rsplit("(", 1)[1]) if "ticks in a row" in error else 0

    wait_for(lambda: failing_ticks() >= 5, timeout=40, interval=0.2)
    error = alice.get_schedule(schedule.id).last_error
    assert error.startswith("TEMPLATE_NOT_FOUND") or "NOT_FOUND" in error, error
    alice.create_template("digest", job=job())  # it runs again
    wait_for(lambda: alice.get_schedule(schedule.id).last_error == "", timeout=30, interval=0.2)
    alice.delete_schedule(schedule.id)
    lines = [
        r
        for r in caplog.records
        if r.name == "genjobs.server.services.schedules" and schedule.id in r.getMessage()
    ]
    # One line when it starts failing, one when it runs again: not one per tick.
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]


# ---- templates: cap and size ---------------------------------------------------


def test_templates_stop_at_the_cap_and_the_size_limit(capped: ServerThread) -> None:
    with capped.client("mallory") as mallory, capped.client("bob") as bob:

        def create(i: int) -> str:
            return code(lambda: mallory.create_template(f"t{i}", job=job()))

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(create, range(12)))
        assert outcomes.count("OK") == 5 and outcomes.count("RESOURCE_EXHAUSTED") == 7, outcomes
        with pytest.raises(GenJobsError) as refused:
            mallory.create_template("one-more", job=job())
        assert "GENJOBS_MAX_TEMPLATES_PER_OWNER" in said(refused.value)
        assert code(lambda: mallory.create_template("t0", job=job())) in (
            "ALREADY_EXISTS",
            "RESOURCE_EXHAUSTED",
        )
        mallory.delete_template(next(mallory.iter_templates()).name)
        assert mallory.create_template("one-more", job=job()).name == "one-more"
        # Size: a bulk template of 40 long items is over 2,048 bytes.
        big = bulk_pb2.CreateBulkJobRequest(
            mode=jobs_pb2.MODE_TOPIC, items=[params(topic="x" * 100 + str(i)) for i in range(40)]
        )
        with pytest.raises(GenJobsError) as refused:
            bob.create_template("big", bulk_job=big)
        assert refused.value.code.name == "INVALID_ARGUMENT"
        assert "GENJOBS_MAX_TEMPLATE_BYTES" in said(refused.value)
        bob.create_template("small", job=job())
        with pytest.raises(GenJobsError) as refused:
            bob.update_template("small", bulk_job=big)
        assert refused.value.code.name == "INVALID_ARGUMENT"


def test_templates_stored_before_the_cap_count_towards_it(capped: ServerThread) -> None:
    # An upgrade: an owner's templates were stored before counting began (no
    # counter document). The cap counts them, not only the ones made after.
    assert capped.app is not None
    with capped.client("erin") as erin:
        for i in range(5):
            erin.create_template(f"old{i}", job=job())
        capped.app.store.database.db["owner_counts"].delete_many({"_id": "templates:erin"})
        with pytest.raises(GenJobsError) as refused:
            erin.create_template("one-more", job=job())
        assert refused.value.code.name == "RESOURCE_EXHAUSTED"
        erin.delete_template("old0")
        assert erin.create_template("one-more", job=job()).name == "one-more"


# ---- watch streams ---------------------------------------------------------------


def test_watch_streams_stop_at_the_cap_per_owner(capped: ServerThread) -> None:
    assert capped.app is not None
    metadata = (("authorization", f"Bearer {capped.token('alice')}"),)
    with capped.client("alice") as alice, capped.client("bob") as bob:
        running = alice.submit("topic", topic="Long read", extra={"demo_seconds": "120"})
        bobs = bob.submit("topic", topic="Bob's", extra={"demo_seconds": "120"})
        stub = jobs_pb2_grpc.JobServiceStub(alice._channel)
        streams = [
            stub.WatchJob(jobs_pb2.WatchJobRequest(id=running.id), metadata=metadata) for _ in range(3)
        ]
        for stream in streams:
            next(stream)  # the snapshot: the stream is open and counted
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.WatchJob(jobs_pb2.WatchJobRequest(id=running.id), metadata=metadata))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "GENJOBS_MAX_STREAMS_PER_OWNER" in (refused.value.details() or "")
        http = httpx.Client(base_url=f"http://127.0.0.1:{capped.app.http_port}", timeout=30)
        answer = http.get(
            f"/v1/jobs/{running.id}:watch", headers={"authorization": f"Bearer {capped.token('alice')}"}
        )
        assert answer.status_code == 429, answer.text
        # Another owner still opens streams; alice again once one of hers ends.
        with http.stream(
            "GET", f"/v1/jobs/{bobs.id}:watch", headers={"authorization": f"Bearer {capped.token('bob')}"}
        ) as bob_stream:
            assert bob_stream.status_code == 200
            assert next(bob_stream.iter_lines()).startswith(("id:", "event:", "data:"))
        streams[0].cancel()

        def opens() -> bool:
            try:
                return (
                    next(stub.WatchJob(jobs_pb2.WatchJobRequest(id=running.id), metadata=metadata))
                    is not None
                )
            except grpc.RpcError:
                return False

        wait_for(opens, timeout=10, interval=0.1)
        for stream in streams[1:]:
            stream.cancel()
        http.close()
        alice.cancel(running.id)
        bob.cancel(bobs.id)


# ---- priority: one rule on every path -------------------------------------------


def test_a_schedule_ticks_high_only_while_an_admin_grants_its_owner_premium(server: ServerThread) -> None:
    with (
        GenJobsClient(server.target, server.token("vip", tier="premium", ttl=5)) as vip,
        server.client("vip") as vip_plain,
        server.client("root", admin=True) as admin,
        server.client("vip") as plain,
    ):
        schedule = vip.create_schedule(EVERY_SECOND, job=job("Premium digest", HIGH))

        def last_run() -> jobs_pb2.Job | None:
            made = vip_plain.get_schedule(schedule.id)
            return vip_plain.get(made.last_job_id) if made.last_job_id else None

        # No stored tier (the token's claim is gone once it expires): NORMAL, and the schedule says why.
        wait_for(lambda: (run := last_run()) is not None and run.priority == NORMAL, timeout=30)
        assert "PRIORITY_NOT_ALLOWED" in vip_plain.get_schedule(schedule.id).last_error
        assert code(lambda: plain.set_tier("vip", "premium")) == "PERMISSION_DENIED"
        admin.set_tier("vip", "premium")
        wait_for(lambda: (run := last_run()) is not None and run.priority == HIGH, timeout=30)
        wait_for(lambda: vip_plain.get_schedule(schedule.id).last_error == "", timeout=30)
        admin.set_tier("vip", "")  # revoked: NORMAL again from the next tick
        wait_for(lambda: (run := last_run()) is not None and run.priority == NORMAL, timeout=30)
        vip_plain.delete_schedule(schedule.id)


def test_a_template_edited_to_high_does_not_make_a_plain_owners_schedule_high(alice: GenJobsClient) -> None:
    alice.create_template("urgent", job=job("Digest"))
    schedule = alice.create_schedule(EVERY_SECOND, template="urgent")
    wait_for(lambda: alice.get_schedule(schedule.id).run_count >= 1, timeout=30)
    alice.update_template("urgent", job=job("Digest", HIGH))  # a template may hold HIGH
    before = alice.get_schedule(schedule.id).run_count
    wait_for(lambda: alice.get_schedule(schedule.id).run_count >= before + 2, timeout=30)
    alice.pause_schedule(schedule.id)
    made = alice.get_schedule(schedule.id)
    assert alice.get(made.last_job_id).priority == NORMAL
    assert "PRIORITY_NOT_ALLOWED" in made.last_error
    assert all(j.priority != HIGH for j in alice.iter_jobs(schedule_id=schedule.id))
    # Submitting the template by hand is refused, as a HIGH submit is.
    assert code(lambda: alice.submit("", template="urgent")) == "PERMISSION_DENIED"


def test_a_plain_token_retry_of_a_high_job_runs_at_normal(server: ServerThread) -> None:
    with server.client("vip", tier="premium") as premium, server.client("vip") as plain:
        failed = premium.submit("topic", topic="Broken", priority="high", extra={"demo_fail": "permanent"})
        assert failed.priority == HIGH
        wait_for(lambda: plain.get(failed.id).status == jobs_pb2.JOB_STATUS_FAILED, timeout=30)
        retries = [plain.retry(failed.id, request_id=f"again-{i}") for i in range(3)]
        assert [r.priority for r in retries] == [NORMAL] * 3
        assert premium.retry(failed.id, request_id="premium").priority == HIGH  # still entitled


def test_a_plain_token_bulk_retry_of_high_jobs_runs_them_at_normal(server: ServerThread) -> None:
    with server.client("vip", tier="premium") as premium, server.client("vip") as plain:
        failed = [
            premium.submit("topic", topic=f"Broken {i}", priority="high", extra={"demo_fail": "permanent"})
            for i in range(3)
        ]
        wait_for(
            lambda: all(plain.get(j.id).status == jobs_pb2.JOB_STATUS_FAILED for j in failed), timeout=60
        )
        result = plain.run_bulk_operation("RETRY_ALL_FAILED")
        assert len(result.job_ids) == 3
        assert [plain.get(i).priority for i in result.job_ids] == [NORMAL] * 3
