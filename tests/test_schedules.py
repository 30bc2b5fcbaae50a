"""Schedules through real servers: one job per tick across replicas and
restarts, pause and resume, runs listed by schedule_id, templates at tick
time, per-owner isolation and refusals."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from genjobs.client import GenJobsClient, GenJobsError, InvalidArgument, NotFound
from genjobs.client.client import params
from genjobs.server.model import clock
from genjobs.server.runtime.app import App
from genjobs.server.services.schedules import latest_tick, next_tick
from genjobs.v1 import bulk_pb2, jobs_pb2, schedules_pb2
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.test_cli import Cli

EVERY_SECOND = "* * * * * *"
EVERY_2_SECONDS = "*/2 * * * * *"
ACTIVE, PAUSED = schedules_pb2.SCHEDULE_STATE_ACTIVE, schedules_pb2.SCHEDULE_STATE_PAUSED


def job(topic: str = "Daily tea") -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=params(topic=topic, word_count=60))


def runs(client: GenJobsClient, schedule_id: str) -> list[jobs_pb2.Job]:
    return list(client.iter_jobs(schedule_id=schedule_id))


def tick_times(db: Any, schedule_id: str) -> list[int]:
    """The tick each of the schedule's jobs was made for (from its request key)."""
    keys = [d["request_key"] for d in db.jobs.find({"schedule_id": schedule_id}, {"request_key": 1})]
    return sorted(json.loads(k)[-1] for k in keys)


@pytest.fixture
def db(mongo: MongoServer, server: ServerThread) -> Any:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    yield client[server.settings.db_name]
    client.close()


def app_of(server: ServerThread) -> App:
    assert server.app is not None
    return server.app


def test_one_job_per_tick_with_two_replicas(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    servers = [ServerThread(settings).start() for _ in range(2)]
    database: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    try:
        with servers[0].client() as one, servers[1].client() as two:
            schedule = one.create_schedule(EVERY_2_SECONDS, job=job())
            assert schedule.state == ACTIVE and schedule.next_run_time.seconds % 2 == 0
            wait_for(lambda: two.get_schedule(schedule.id).run_count >= 3, timeout=30)
            one.pause_schedule(schedule.id)
            ticks = tick_times(database[settings.db_name], schedule.id)
            assert len(ticks) >= 3
            assert len(set(ticks)) == len(ticks), ticks  # never two jobs for one tick
            assert all(t % 2_000_000 == 0 for t in ticks)  # on the cron's ticks
            listed = runs(two, schedule.id)
            assert len(listed) == len(ticks)
            assert all(j.schedule_id == schedule.id for j in listed)
            last = one.get_schedule(schedule.id)
            assert last.last_job_id in {j.id for j in listed} and last.HasField("last_run_time")
    finally:
        database.close()
        for server in servers:
            server.stop()


def test_a_repeated_tick_creates_nothing_more(alice: GenJobsClient, server: ServerThread, db: Any) -> None:
    schedule = alice.pause_schedule(alice.create_schedule(EVERY_SECOND, job=job()).id)
    stored = app_of(server).schedules.store.get_schedule("alice", schedule.id)
    tick = (clock.now_us() // 1_000_000 - 5) * 1_000_000
    # As the leader read it before it crashed between job and advance.
    read = dataclasses.replace(stored, next_run_us=tick)
    for _ in range(2):  # the first leader's tick, then its successor's
        app_of(server).schedules._fire(read, tick + 500_000)
    assert tick_times(db, schedule.id) == [tick]
    assert len(runs(alice, schedule.id)) == 1


def test_a_restart_over_several_ticks_runs_only_the_latest(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    first = ServerThread(settings).start()
    with first.client() as alice:
        schedule = alice.create_schedule(EVERY_2_SECONDS, job=job())
        wait_for(lambda: alice.get_schedule(schedule.id).run_count >= 1, timeout=20)
    first.stop()
    database: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri)
    db = database[settings.db_name]
    try:
        before = tick_times(db, schedule.id)
        count = db.schedules.find_one({"_id": ObjectId(schedule.id)})["run_count"]
        # As if no server had run for five ticks: the next tick is 10 s in the past.
        missed_from = (clock.now_us() // 2_000_000) * 2_000_000 - 10_000_000
        db.schedules.update_one({"_id": ObjectId(schedule.id)}, {"$set": {"next_run_us": missed_from}})
        restart_us = clock.now_us()
        second = ServerThread(settings).start()
        try:
            with second.client() as alice:
                wait_for(lambda: alice.get_schedule(schedule.id).run_count >= count + 2, timeout=20)
                new = [t for t in tick_times(db, schedule.id) if t not in before]
                # No missed tick replayed: the first one run is the latest due at the restart.
                assert new and all(t >= restart_us - 2_000_000 for t in new), (missed_from, restart_us, new)
                assert len(set(new)) == len(new)
        finally:
            second.stop()
    finally:
        database.close()


def test_pause_stops_ticks_and_resume_restarts_them(alice: GenJobsClient, db: Any) -> None:
    paused = alice.create_schedule(EVERY_SECOND, job=job("paused"))
    witness = alice.create_schedule(EVERY_SECOND, job=job("witness"))
    wait_for(lambda: alice.get_schedule(paused.id).run_count >= 1, timeout=20)
    stopped = alice.pause_schedule(paused.id)
    assert stopped.state == PAUSED and not stopped.HasField("next_run_time")
    assert alice.pause_schedule(paused.id).state == PAUSED  # pausing again changes nothing
    settled = len(tick_times(db, paused.id))  # a tick under way at the pause may add one
    seen = alice.get_schedule(witness.id).run_count
    # The witness ticks twice: housekeeping passes went by, and the paused one made nothing.
    wait_for(lambda: alice.get_schedule(witness.id).run_count >= seen + 2, timeout=20)
    assert len(tick_times(db, paused.id)) == settled
    resumed = alice.resume_schedule(paused.id)
    assert resumed.state == ACTIVE
    assert resumed.next_run_time.ToMicroseconds() > clock.now_us() - 1_000_000
    wait_for(lambda: len(tick_times(db, paused.id)) > settled, timeout=20)
    listed = alice.list_schedules()
    assert [s.id for s in listed.schedules] == [witness.id, paused.id]  # newest first
    alice.delete_schedule(witness.id)
    with pytest.raises(NotFound):
        alice.get_schedule(witness.id)
    assert runs(alice, witness.id)  # its jobs stay


def test_runs_are_listed_by_schedule_id(alice: GenJobsClient) -> None:
    schedule = alice.create_schedule(EVERY_SECOND, job=job("listed"))
    alice.submit("topic", topic="not a run")
    wait_for(lambda: len(runs(alice, schedule.id)) >= 2, timeout=20)
    assert all(j.schedule_id == schedule.id and j.params.topic == "listed" for j in runs(alice, schedule.id))
    with pytest.raises(InvalidArgument):
        alice.list(schedule_id="not-an-id")


def test_a_template_schedule_submits_the_template_as_it_is_at_tick_time(alice: GenJobsClient) -> None:
    alice.create_template("daily", job=job("first version"))
    schedule = alice.create_schedule(EVERY_SECOND, template="daily", time_zone="Europe/Berlin")
    assert schedule.template == "daily" and schedule.time_zone == "Europe/Berlin"
    wait_for(lambda: runs(alice, schedule.id), timeout=20)
    first = runs(alice, schedule.id)[-1]
    assert first.template == "daily" and first.params.topic == "first version"
    alice.update_template("daily", job=job("second version"))
    wait_for(lambda: any(j.params.topic == "second version" for j in runs(alice, schedule.id)), timeout=20)
    alice.delete_template("daily")
    wait_for(lambda: "TEMPLATE_NOT_FOUND" in alice.get_schedule(schedule.id).last_error, timeout=20)
    moved = alice.get_schedule(schedule.id)
    assert moved.next_run_time.ToMicroseconds() > clock.now_us() - 1_000_000  # it moved on


def test_a_bulk_schedule_creates_bulk_jobs(alice: GenJobsClient) -> None:
    items = [params(topic=f"item {i}", word_count=60) for i in range(10)]
    request = bulk_pb2.CreateBulkJobRequest(mode=jobs_pb2.MODE_TOPIC, items=items)
    schedule = alice.create_schedule(EVERY_SECOND, bulk_job=request)
    wait_for(lambda: alice.get_schedule(schedule.id).last_bulk_job_id, timeout=20)
    bulk = alice.get_bulk(alice.get_schedule(schedule.id).last_bulk_job_id)
    assert bulk.schedule_id == schedule.id and bulk.total_items == 10
    assert alice.get(bulk.items[0].id).schedule_id == schedule.id
    alice.pause_schedule(schedule.id)


def test_schedules_are_per_owner_and_idempotent(alice: GenJobsClient, bob: GenJobsClient) -> None:
    schedule = alice.create_schedule("0 9 * * 1", job=job(), request_id="weekly")
    assert alice.create_schedule("0 9 * * 1", job=job(), request_id="weekly").id == schedule.id
    assert bob.create_schedule("0 9 * * 1", job=job(), request_id="weekly").id != schedule.id
    for act in (bob.get_schedule, bob.pause_schedule, bob.resume_schedule, bob.delete_schedule):
        with pytest.raises(NotFound):
            act(schedule.id)
    assert [s.owner for s in bob.iter_schedules()] == ["bob"]
    assert alice.get_schedule(schedule.id).state == ACTIVE


@pytest.mark.parametrize(
    ("cron", "zone", "target", "field"),
    [
        ("not a cron", "", {"job": job()}, "cron"),
        ("* * * * * * *", "", {"job": job()}, "cron"),
        ("61 * * * *", "", {"job": job()}, "cron"),
        ("* * * * *", "Mars/Olympus", {"job": job()}, "time_zone"),
        ("* * * * *", "", {}, "target"),
        ("* * * * *", "", {"job": jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC)}, "job.params.topic"),
        (
            "* * * * *",
            "",
            {"bulk_job": bulk_pb2.CreateBulkJobRequest(mode=jobs_pb2.MODE_TOPIC)},
            "bulk_job.items",
        ),
        ("* * * * *", "", {"template": "bad name"}, "template"),
    ],
)
def test_refusals_name_the_field(
    alice: GenJobsClient, cron: str, zone: str, target: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        alice.create_schedule(cron, time_zone=zone, **target)
    assert field in [f for f, _ in refused.value.violations]
    assert list(alice.iter_schedules()) == []


def test_an_unknown_template_is_not_found(alice: GenJobsClient) -> None:
    with pytest.raises(NotFound):
        alice.create_schedule("* * * * *", template="nothing-here")
    with pytest.raises(NotFound):
        alice.create_schedule("* * * * *", job=jobs_pb2.SubmitJobRequest(template="nothing-here"))


def test_the_cli_creates_lists_pauses_resumes_and_removes_schedules(
    server: ServerThread, alice: GenJobsClient
) -> None:
    cli = Cli(server)
    made = cli.json(
        "schedule", "create", "--cron", "0 9 * * 1", "--tz", "Europe/Berlin", "--topic", "Weekly tea"
    )
    schedule_id = str(made["id"])
    assert made["job"]["params"]["topic"] == "Weekly tea" and made["time_zone"] == "Europe/Berlin"
    listed = cli("schedule", "ls").stdout
    assert schedule_id in listed and "0 9 * * 1 Europe/Berlin" in listed and "topic: Weekly tea" in listed
    assert "paused schedule" in cli("schedule", "pause", schedule_id).stdout
    assert alice.get_schedule(schedule_id).state == PAUSED
    assert "next run" in cli("schedule", "resume", schedule_id).stdout
    alice.create_template("tea", job=job())
    by_template = cli.json("schedule", "create", "--cron", "*/5 * * * * *", "--template", "tea")
    assert by_template["template"] == "tea"
    assert "deleted schedule" in cli("schedule", "rm", schedule_id).stdout
    assert "SCHEDULE_NOT_FOUND" in cli("schedule", "rm", schedule_id, code=1).stderr
    assert "cron" in cli("schedule", "create", "--cron", "bad", "--topic", "x", code=1).stderr
    assert [s.id for s in alice.iter_schedules()] == [by_template["id"]]
    run = wait_for(lambda: runs(alice, str(by_template["id"])), timeout=20)[0]
    assert run.id in cli("ls", "--schedule", str(by_template["id"])).stdout


def test_ticks_are_read_in_the_time_zone_and_on_whole_seconds() -> None:
    winter = clock.to_us(datetime(2026, 1, 15, 12, 0, tzinfo=UTC))
    summer = clock.to_us(datetime(2026, 7, 15, 12, 0, tzinfo=UTC))
    # 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
    assert clock.from_us(next_tick("0 9 * * *", "Europe/Berlin", winter)).hour == 8
    assert clock.from_us(next_tick("0 9 * * *", "Europe/Berlin", summer)).hour == 7
    assert clock.from_us(next_tick("0 9 * * *", "", summer)).hour == 9  # UTC when empty
    # A tick exactly now is the latest due, and the next one is strictly after it.
    assert latest_tick(EVERY_2_SECONDS, "", winter) == winter
    assert latest_tick(EVERY_2_SECONDS, "", winter - 1) == winter - 2_000_000
    assert next_tick(EVERY_2_SECONDS, "", winter) == winter + 2_000_000


def test_ticks_fire_while_a_long_job_runs(alice: GenJobsClient) -> None:
    # One run at a time, yet the leader's housekeeping (ticks, due retries) goes on beside it.
    long = alice.submit("topic", topic="Long read", extra={"demo_seconds": "6"})
    wait_for(lambda: alice.get(long.id).status == jobs_pb2.JOB_STATUS_PROCESSING, timeout=20)
    schedule = alice.create_schedule(EVERY_SECOND, job=job())
    wait_for(lambda: alice.get_schedule(schedule.id).run_count >= 2, timeout=20)
    assert alice.get(long.id).status == jobs_pb2.JOB_STATUS_PROCESSING  # ticked during the run, not after it
    alice.delete_schedule(schedule.id)
    alice.cancel(long.id)


def test_a_high_priority_schedule_needs_a_premium_creator_and_ticks_at_high_with_the_tier(
    server: ServerThread, alice: GenJobsClient
) -> None:
    high = jobs_pb2.SubmitJobRequest(
        mode=jobs_pb2.MODE_TOPIC, params=params(topic="Premium digest"), priority=jobs_pb2.PRIORITY_HIGH
    )
    with pytest.raises(GenJobsError) as refused:
        alice.create_schedule(EVERY_SECOND, job=high)  # refused now, not at every tick
    assert refused.value.code.name == "PERMISSION_DENIED"
    alice.create_template("urgent", job=high)  # a template may hold it; a plain schedule of it may not
    with pytest.raises(GenJobsError) as refused:
        alice.create_schedule(EVERY_SECOND, template="urgent")
    assert refused.value.code.name == "PERMISSION_DENIED"
    with server.client("vip", tier="premium") as vip, server.client("root", admin=True) as admin:
        # A tick has no token: it runs HIGH while an admin grants the owner the tier.
        admin.set_tier("vip", "premium")
        schedule = vip.create_schedule(EVERY_SECOND, job=high)
        wait_for(lambda: vip.get_schedule(schedule.id).run_count >= 1, timeout=20)
        vip.pause_schedule(schedule.id)
        made = vip.get_schedule(schedule.id)
        assert made.last_error == ""
        assert vip.get(made.last_job_id).priority == jobs_pb2.PRIORITY_HIGH


def test_a_retried_run_is_still_a_run_of_its_schedule(alice: GenJobsClient) -> None:
    failing = jobs_pb2.SubmitJobRequest(
        mode=jobs_pb2.MODE_TOPIC, params=params(topic="Flaky digest", extra={"demo_fail": "permanent"})
    )
    schedule = alice.create_schedule(EVERY_SECOND, job=failing)
    wait_for(lambda: alice.get_schedule(schedule.id).run_count >= 1, timeout=20)
    alice.pause_schedule(schedule.id)
    first = alice.get_schedule(schedule.id).last_job_id
    wait_for(lambda: alice.get(first).status == jobs_pb2.JOB_STATUS_FAILED, timeout=20)
    retry = alice.retry(first)
    assert retry.schedule_id == schedule.id
    assert retry.id in {j.id for j in runs(alice, schedule.id)}
