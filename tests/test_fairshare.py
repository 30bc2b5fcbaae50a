"""Who goes next: priority, fair share between owners, schedule_time.

The pure choice (`fairshare.Candidates`) is tested directly; the rest through
a real server: jobs are queued behind a running "blocker" job, and the order
in which they then start is read from their start times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId
from google.protobuf.timestamp_pb2 import Timestamp

from genjobs.client import GenJobsClient
from genjobs.client.cli import parse_at
from genjobs.client.client import GenJobsError, InvalidArgument
from genjobs.server.dispatch import fairshare
from genjobs.server.dispatch.fairshare import Candidates, FairShare, Pick
from genjobs.server.model import clock
from genjobs.server.storage.database import Database
from genjobs.server.storage.outage import Outage
from genjobs.server.storage.queue import QueueStore
from genjobs.v1 import jobs_pb2
from tests.harness import MongoServer, ServerThread, make_settings, wait_for
from tests.test_cli import Cli

S = jobs_pb2
BLOCK = {"demo_seconds": "2"}  # long enough to queue the jobs under test behind it


# ---- the pure choice ----------------------------------------------------------


def _ids(n: int) -> list[ObjectId]:
    return [ObjectId() for _ in range(n)]


def drain(candidates: Candidates, names: dict[ObjectId, str], now: Iterator[int]) -> list[str]:
    """Pick until nothing is left, starting each pick; the picked jobs' names."""
    order = []
    while (pick := candidates.pick()) is not None:
        assert pick.oid is not None
        candidates.started(pick.owner, next(now))
        order.append(names[pick.oid])
    return order


def test_owners_take_turns_then_each_owner_in_order() -> None:
    candidates = Candidates(batch=8)
    names = {}
    ck = 0
    for owner, count in (("a", 3), ("b", 2), ("c", 1)):
        for i, oid in enumerate(_ids(count)):
            ck += 1
            candidates.add(owner, 1, ck, oid)
            names[oid] = f"{owner}{i + 1}"
    assert drain(candidates, names, iter(range(100, 200))) == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_the_best_rank_goes_first_whoever_started_last() -> None:
    candidates = Candidates()
    low, normal, high = _ids(3)
    candidates.turns = {"a": 5, "b": 1}
    candidates.add("b", 2, 1, low)
    candidates.add("b", 1, 2, normal)
    candidates.add("a", 0, 3, high)  # a started later than b, but HIGH
    names = {low: "low", normal: "normal", high: "high"}
    assert drain(candidates, names, iter(range(10, 20))) == ["high", "normal", "low"]


def test_the_owner_who_started_longest_ago_goes_next() -> None:
    candidates = Candidates()
    first, second = _ids(2)
    candidates.turns = {"a": 20, "b": 10}
    candidates.add("a", 1, 1, first)  # older job, but a started more recently
    candidates.add("b", 1, 2, second)
    assert candidates.pick() == Pick("b", second)


def test_an_owner_with_more_than_it_knows_is_read_before_its_turn() -> None:
    candidates = Candidates(batch=2)
    a1, a2, a3, b1 = _ids(4)
    candidates.reset({"a": (1, 1), "b": (1, 5)}, {})
    assert candidates.pick() == Pick("a", None)  # a's turn, its jobs not read yet
    candidates.fill("a", [(1, 1, a1), (1, 2, a2)])  # a full batch: there may be more
    candidates.add("a", 1, 3, a3)  # offered, beyond what was read: the next read finds it
    assert candidates.pick() == Pick("a", a1)
    candidates.started("a", 100)
    assert candidates.pick() == Pick("b", None)
    candidates.fill("b", [(1, 5, b1)])  # less than a batch: all of b's
    assert candidates.pick() == Pick("b", b1)
    candidates.started("b", 101)
    assert candidates.pick() == Pick("a", a2)
    assert candidates.pick() == Pick("a", None)  # a's known jobs used up: read again
    candidates.fill("a", [(1, 3, a3)])
    assert candidates.pick() == Pick("a", a3)
    assert candidates.pick() is None


def test_offers_are_bounded_per_owner() -> None:
    candidates = Candidates(batch=4)
    ids = _ids(20)
    for ck, oid in enumerate(ids):
        candidates.add("a", 1, ck, oid)
    state = candidates.owners["a"]
    assert len(state.heap) <= 8 and state.bound is not None
    assert candidates.pick() == Pick("a", ids[0])


def test_a_turn_is_stored_only_when_a_streak_starts() -> None:
    candidates = Candidates()
    assert [candidates.started(owner, t) for t, owner in enumerate("aaabba")] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]


class InsertsDuringReads:
    """The queue store as FairShare sees it, with a submit landing during each read:
    the read's answer was taken before the job was stored, its offer comes
    before the answer is used (as another thread's submit can)."""

    def __init__(self, stored: list[tuple[int, ObjectId]], late: list[tuple[int, ObjectId]]) -> None:
        self.stored, self.late = stored, late  # alice's (ck, id) stored and still to come
        self.fair: FairShare | None = None

    def _land_one(self) -> None:
        if self.late and self.fair is not None:
            ck, oid = self.late.pop(0)
            self.stored.append((ck, oid))
            self.fair.offer("alice", 1, ck, oid)

    def ready_owners(self) -> dict[str, tuple[int, int]]:
        heads = {"alice": (1, self.stored[0][0])} if self.stored else {}
        self._land_one()
        return heads

    def owner_head(self, owner: str, limit: int) -> list[dict[str, object]]:
        rows = [{"_id": oid, "owner": owner, "rank": 1, "ck": ck} for ck, oid in self.stored[:limit]]
        self._land_one()
        return rows

    def turns_of(self, owners: list[str]) -> dict[str, int]:
        return {}

    def save_turns(self, turns: dict[str, int]) -> None:
        pass


def test_a_job_submitted_during_a_read_keeps_its_place() -> None:
    # A claim that found one owner's jobs 1 and 2 while job 3 was being stored
    # ran job 4 before job 3 (a loaded full run saw test_jobs_run_fifo fail so).
    ids = _ids(5)
    names = {oid: f"job {i}" for i, oid in enumerate(ids)}
    for stored_before in (2, 0):  # the owner had jobs when the lane was read, or none yet
        jobs = list(enumerate(ids))
        store = InsertsDuringReads(jobs[:stored_before], jobs[stored_before:])
        fair = store.fair = FairShare(store, Outage(), 60.0, 60.0, 60.0)  # type: ignore[arg-type]
        order = []
        while (pick := fair.next()) is not None:
            assert pick.oid is not None
            fair.started(pick.owner)
            order.append(names[pick.oid])
            store._land_one()  # the next submit, between two claims
        assert order == [f"job {i}" for i in range(5)], stored_before


class CountedReads:
    """The queue store as FairShare sees it: an empty ready lane, each read named."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def ready_owners(self) -> dict[str, tuple[int, int]]:
        self.reads.append("ready_owners")
        return {}

    def runnable_heads(self, limit: int) -> list[tuple[str, int, int, ObjectId]]:
        self.reads.append("runnable_heads")
        return []

    def entered_ready(self, cursor: object, until_us: int, limit: int) -> tuple[list[object], object]:
        self.reads.append("entered_ready")
        return [], (until_us, None)

    def turns_of(self, owners: list[str]) -> dict[str, int]:
        self.reads.append("turns_of")
        return {}

    def save_turns(self, turns: dict[str, int]) -> None:
        self.reads.append("save_turns")


def test_the_poll_waits_for_the_claim_unless_nothing_is_known() -> None:
    # After a run longer than the poll interval, the poll's reads (3 round
    # trips with the wakeups check) came between the run's end and the next
    # job's claim: the dispatcher now picks from memory and catches up after.
    store = CountedReads()
    fair = FairShare(store, Outage(), 0.0, 60.0, 60.0)  # type: ignore[arg-type]  # every poll due
    assert fair.next() is None and "ready_owners" in store.reads  # the first pick builds
    oid = ObjectId()
    fair.offer("alice", 1, 1, oid)
    fair.started("alice")  # a turn to store at the next poll
    store.reads.clear()
    pick = fair.next(polls=False)
    assert pick is not None and pick.oid == oid
    assert "entered_ready" not in store.reads and "save_turns" not in store.reads
    assert fair.catch_up() and store.reads[-2:] == ["save_turns", "runnable_heads"]
    store.reads.clear()  # nothing known now: the due poll comes first
    assert fair.next(polls=False) is None and store.reads == ["runnable_heads"]


def test_a_stale_lane_is_read_before_the_next_pick() -> None:
    # A resume or a budget's release marks the lane stale: the job it moved
    # back may rank first, so the read comes before the pick, not after it.
    store = CountedReads()
    fair = FairShare(store, Outage(), 60.0, 60.0, 60.0)  # type: ignore[arg-type]  # no poll due
    fair.next()
    fair.offer("alice", 1, 1, ObjectId())
    fair.next(polls=False)
    fair.offer("alice", 1, 2, ObjectId())
    store.reads.clear()
    fair.stale()
    assert fair.next(polls=False) is not None and store.reads == ["entered_ready"]


def test_at_reads_relative_and_iso_times() -> None:
    before = datetime.now(UTC)
    later = parse_at("+5m")
    assert later is not None and timedelta(minutes=4) < later - before < timedelta(minutes=6)
    assert parse_at("2030-01-02T03:04:05Z") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_at("") is None
    with pytest.raises(ValueError):
        parse_at("tomorrow")


# ---- through the server ---------------------------------------------------------


def started(client: GenJobsClient, job_id: str) -> int:
    """When a finished job started (ns)."""
    job = wait_for(lambda: (j := client.get(job_id)).status == S.JOB_STATUS_COMPLETED and j, timeout=60)
    return int(job.start_time.ToNanoseconds())


def block(client: GenJobsClient) -> jobs_pb2.Job:
    """A job that runs for a while; returns once it runs."""
    job = client.submit("topic", topic="blocker", extra=BLOCK)
    wait_for(lambda: client.get(job.id).status == S.JOB_STATUS_PROCESSING, timeout=30)
    return job


def test_a_single_job_waits_only_for_the_running_bulk_item(server: ServerThread) -> None:
    with server.client("alice") as alice, server.client("bob") as bob:
        items = [{"topic": f"item {i}", "extra": BLOCK} for i in range(10)]
        bulk = alice.create_bulk("topic", items)
        ids = [item.id for item in sorted(bulk.items, key=lambda i: i.queue_position)]
        wait_for(lambda: alice.get(ids[0]).status == S.JOB_STATUS_PROCESSING, timeout=30)
        single = bob.submit("topic", topic="one article")
        bob_start = started(bob, single.id)
        starts = [alice.get(i).start_time.ToNanoseconds() for i in ids]
        assert [s for s in starts if 0 < s < bob_start] == starts[:1]  # only the running item went first
        alice.cancel_bulk(bulk.id)


def test_high_priority_from_a_premium_token_runs_before_earlier_normal_jobs(server: ServerThread) -> None:
    with (
        server.client("alice") as alice,
        server.client("bob") as bob,
        server.client("carol", tier="premium") as carol,
    ):
        block(alice)
        normal = [bob.submit("topic", topic=f"normal {i}") for i in range(3)]
        high = carol.submit("topic", topic="premium", priority="high")
        assert high.priority == S.PRIORITY_HIGH and normal[0].priority == S.PRIORITY_NORMAL
        assert started(carol, high.id) < min(started(bob, j.id) for j in normal)
        assert [j.id for j in carol.list(priorities=["high"]).jobs] == [high.id]
        assert carol.list(priorities=["normal", "low"]).jobs == []


def test_high_priority_from_a_plain_token_is_refused(server: ServerThread) -> None:
    with server.client("bob") as bob:
        with pytest.raises(GenJobsError) as refused:
            bob.submit("topic", topic="vip", priority="high")
        assert refused.value.code.name == "PERMISSION_DENIED"
        assert refused.value.reason == "PRIORITY_NOT_ALLOWED"
        with pytest.raises(GenJobsError) as bulk_refused:
            bob.create_bulk("topic", [{"topic": f"t{i}"} for i in range(10)], priority="high")
        assert bulk_refused.value.reason == "PRIORITY_NOT_ALLOWED"
        low = bob.submit("topic", topic="whenever", priority="low")
        assert low.priority == S.PRIORITY_LOW
    with server.client("root", admin=True) as admin:
        assert admin.submit("topic", topic="ops", priority="high").priority == S.PRIORITY_HIGH


def test_a_scheduled_job_starts_no_earlier(server: ServerThread) -> None:
    with server.client("alice") as alice:
        at = datetime.now(UTC) + timedelta(seconds=2)
        job = alice.submit("topic", topic="later", schedule_time=at)
        assert job.status == S.JOB_STATUS_QUEUED
        assert abs(job.schedule_time.ToDatetime(tzinfo=UTC) - at) < timedelta(milliseconds=1)
        now = alice.submit("topic", topic="now")  # queued after it, runs first
        assert started(alice, now.id) < int(at.timestamp() * 1e9)
        assert alice.get(job.id).status == S.JOB_STATUS_QUEUED or datetime.now(UTC) >= at
        assert started(alice, job.id) >= job.schedule_time.ToNanoseconds()
        past = alice.submit("topic", topic="past", schedule_time=datetime.now(UTC) - timedelta(hours=1))
        started(alice, past.id)  # a past time is no wait


def test_a_scheduled_bulk_job_waits_then_runs_in_order(server: ServerThread) -> None:
    with server.client("alice") as alice:
        at = datetime.now(UTC) + timedelta(seconds=2)
        bulk = alice.create_bulk("topic", [{"topic": f"t{i}"} for i in range(10)], schedule_time=at)
        assert bulk.schedule_time.ToDatetime(tzinfo=UTC) <= at
        alice.pause_bulk(bulk.id)
        alice.resume_bulk(bulk.id)  # still waits for its time, not sooner
        ids = [i.id for i in sorted(bulk.items, key=lambda i: i.queue_position)]
        starts = [started(alice, i) for i in ids]
        assert starts == sorted(starts)
        assert starts[0] >= int(at.timestamp() * 1e9) - 1000


def test_schedule_time_out_of_range_is_refused(server: ServerThread) -> None:
    with server.client("alice") as alice:
        request = jobs_pb2.SubmitJobRequest(
            mode=S.MODE_TOPIC,
            params=jobs_pb2.GenerationParams(topic="x"),
            schedule_time=Timestamp(seconds=253_402_300_800),
        )
        with pytest.raises(InvalidArgument) as refused:
            alice._call(alice.jobs.SubmitJob, request)
        assert [field for field, _ in refused.value.violations] == ["schedule_time"]


def test_owners_take_turns(server: ServerThread) -> None:
    with contextlib.ExitStack() as stack:
        dave, alice, bob, carol = (
            stack.enter_context(server.client(u)) for u in ("dave", "alice", "bob", "carol")
        )
        block(dave)
        queued = [(c, c.submit("topic", topic=f"{i}")) for c in (alice, bob, carol) for i in range(3)]
        order = sorted((started(c, job.id), job.owner) for c, job in queued)
        assert [owner for _, owner in order] == ["alice", "bob", "carol"] * 3


def test_turns_survive_a_restart(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    first = ServerThread(settings).start()
    with first.client("alice") as alice, first.client("bob") as bob:
        started(alice, alice.submit("topic", topic="a").id)
        started(bob, bob.submit("topic", topic="b").id)  # bob started last
    database = pymongo.MongoClient(mongo.uri)[settings.db_name]
    wait_for(lambda: database.turns.find_one({"_id": "bob"}) is not None, timeout=10)
    first.stop()
    second = ServerThread(settings).start()
    try:
        with second.client("carol") as carol, second.client("alice") as alice, second.client("bob") as bob:
            block(carol)
            bobs = bob.submit("topic", topic="b2")  # first in line by submission...
            alices = alice.submit("topic", topic="a2")  # ...but alice's turn is older
            assert started(alice, alices.id) < started(bob, bobs.id)
    finally:
        second.stop()
        database.client.close()


def test_a_job_queued_on_another_replica_gets_its_turn(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    servers = [ServerThread(settings).start() for _ in range(2)]
    try:
        wait_for(lambda: any(s.app and s.app.dispatcher._is_leader() for s in servers), timeout=30)
        leader, follower = sorted(servers, key=lambda s: not (s.app and s.app.dispatcher._is_leader()))
        with leader.client("alice") as alice, follower.client("bob") as bob:
            block(alice)
            mine = [alice.submit("topic", topic=f"a{i}") for i in range(3)]
            theirs = bob.submit("topic", topic="from the other replica")
            assert started(bob, theirs.id) < min(started(alice, j.id) for j in mine)
    finally:
        for running in servers:
            running.stop()


def test_the_cli_sets_and_shows_priority_and_schedule_time(server: ServerThread) -> None:
    cli = Cli(server)
    queued = cli("submit", "--topic", "later", "--priority", "low", "--at", "+1h").output
    assert "priority low, not before" in queued
    job_id = queued.split()[1]
    shown = cli("show", job_id).output
    assert "priority" in shown and "low" in shown and "scheduled" in shown
    assert cli.json("show", job_id)["priority"] == "PRIORITY_LOW"
    refused = cli("submit", "--topic", "vip", "--priority", "high", code=1)
    assert "PRIORITY_NOT_ALLOWED" in refused.output + refused.stderr
    assert "not an ISO 8601 time" in cli("submit", "--topic", "x", "--at", "soon", code=1).stderr


# ---- the incremental read of the ready lane -------------------------------------


def test_no_job_is_passed_over_at_a_page_edge(
    mongo: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs that entered the ready lane in one microsecond (one bulk move does
    # that), more of them than one incremental read takes: a read that ended
    # inside the run skipped the rest of it until the next rebuild.
    monkeypatch.setattr(fairshare, "DISCOVERY_DELAY_US", 0)
    monkeypatch.setattr(fairshare, "DISCOVERY_LIMIT", 5)
    database = Database(mongo.uri, f"edge_{ObjectId()}")
    jobs = database.jobs
    jobs.create_index([("ready_us", 1)])
    queued = {"status": "QUEUED", "queue": "ready", "rank": 1}
    jobs.insert_one({**queued, "owner": "zoe", "ck": 1, "ready_us": 1})  # known by the rebuild
    fair = FairShare(QueueStore(database), Outage(), 60.0, 60.0, 60.0)
    fair.rebuild()
    stamp = clock.now_us() + 1
    run = [ObjectId() for _ in range(12)]
    jobs.insert_many(
        [{**queued, "_id": oid, "owner": "amy", "ck": 10 + i, "ready_us": stamp} for i, oid in enumerate(run)]
    )
    wait_for(lambda: clock.now_us() > stamp, timeout=5)
    for _ in range(4):  # more reads than pages
        fair.poll()
    known = fair.candidates.owners["amy"].ids
    assert sorted(known) == sorted(run), f"{len(run) - len(known)} of {len(run)} jobs passed over"
    database.client.drop_database(database.db_name)
    database.client.close()
