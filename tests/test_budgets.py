"""Budgets and quotas through the real server: monthly spending limits per owner
and per project (SetBudget, GetUsage), refusals with a QuotaFailure, queued
jobs waiting in the budget lane until the limit is raised, the queued-jobs
cap, and spend counted exactly once across restarts.

The demo generator charges max(1, word_count // 100) cents: 500 words cost 5.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pymongo
import pytest
from bson import ObjectId
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pymongo.database import Database

from genjobs.client import GenJobsClient, GenJobsError, ResourceExhausted
from genjobs.server.model import clock
from genjobs.server.model import recheck as recheck_module
from genjobs.server.model.recheck import RECHECK_SECONDS
from genjobs.server.model.records import Budget
from genjobs.server.services import budgets as budgets_module
from genjobs.server.services.budgets import CACHE_SECONDS, Budgets, month_of
from genjobs.server.services.queue_cap import QueueCap
from genjobs.server.services.written_behind import RUN_PATH, WrittenBehind
from genjobs.server.storage import records
from genjobs.server.storage.budgets import BudgetStore, budget_key, usage_key
from genjobs.server.storage.events import STATUS_CHANGED
from genjobs.server.storage.store import Store
from genjobs.v1 import bulk_pb2, jobs_pb2, jobs_pb2_grpc
from tests.harness import MongoServer, ServerThread, make_settings, wait_for

WORDS = 500  # 5 cents a job
COST = 5


@pytest.fixture
def admin(server: ServerThread) -> Iterator[GenJobsClient]:
    with server.client("root", admin=True) as client:
        yield client


def quota_failure(server: ServerThread, user: str, call: Any) -> tuple[str, list[tuple[str, str]]]:
    """Make `call(stub, metadata)`, expect RESOURCE_EXHAUSTED; (ErrorInfo reason, QuotaFailure violations)."""
    with grpc.insecure_channel(server.target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, stub, (("authorization", f"Bearer {server.token(user)}"),))
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(error)
    assert status is not None
    reason, violations = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            violations = [(v.subject, v.description) for v in failure.violations]
    return reason, violations


def submit_request(project: str = "", seconds: float = 0.0) -> jobs_pb2.SubmitJobRequest:
    extra = {"demo_seconds": str(seconds)} if seconds else {}
    return jobs_pb2.SubmitJobRequest(
        mode=jobs_pb2.MODE_TOPIC,
        params=jobs_pb2.GenerationParams(topic="Tea", word_count=WORDS, extra=extra),
        project=project,
    )


def submit(client: GenJobsClient, project: str = "", seconds: float = 0.0) -> jobs_pb2.Job:
    extra = {"demo_seconds": str(seconds)} if seconds else {}
    return client.submit("topic", topic="Tea", word_count=WORDS, project=project, extra=extra)


def status_of(client: GenJobsClient, job_id: str) -> int:
    return client.get(job_id).status


def completed(client: GenJobsClient, job_id: str) -> bool:
    return status_of(client, job_id) == jobs_pb2.JOB_STATUS_COMPLETED


def waiting(client: GenJobsClient, job_id: str) -> jobs_pb2.Job | None:
    """The job while it waits for a budget (queued, with a message saying why)."""
    job = client.get(job_id)
    waits = job.status == jobs_pb2.JOB_STATUS_QUEUED and "budget" in job.progress.message
    return job if waits else None


def spent(client: GenJobsClient, cents: int, owner: str = "") -> jobs_pb2.Usage:
    """The usage once `cents` are spent: a job's cost is counted just after its
    completion is stored (and GetJob shows it)."""
    return wait_for(lambda: (u := client.usage(owner)).spent_cents == cents and u, timeout=10)  # type: ignore[no-any-return]


def test_over_budget_refused_and_queued_job_waits_until_raised(
    server: ServerThread, alice: GenJobsClient, admin: GenJobsClient
) -> None:
    admin.set_budget("alice", COST)  # nothing spent yet: submits are accepted
    first = submit(alice, seconds=0.5)
    second = submit(alice)
    dropped = submit(alice)
    wait_for(lambda: completed(alice, first.id), timeout=30)
    held = wait_for(lambda: waiting(alice, second.id), timeout=30)
    assert held.progress.message == "waiting: the monthly budget of 5 cents for alice is spent"
    alice.cancel(dropped.id)
    with pytest.raises(ResourceExhausted):  # a retry queues a job too
        alice.retry(dropped.id)

    reason, violations = quota_failure(
        server, "alice", lambda _, stub, md: stub.SubmitJob(submit_request(), metadata=md)
    )
    assert reason == "BUDGET_EXHAUSTED"
    assert [subject for subject, _ in violations] == ["owner:alice"]
    assert "monthly budget of 5 cents" in violations[0][1]
    with pytest.raises(ResourceExhausted):  # a bulk job too
        alice.create_bulk("topic", [{"topic": f"Tea {i}"} for i in range(10)])

    usage = alice.usage()
    assert usage.spent_cents == COST and usage.month == month_of(clock.now_us())
    assert [(b.project, b.monthly_limit_cents, b.spent_cents, b.exhausted) for b in usage.budgets] == [
        ("", COST, COST, True)
    ]
    assert alice.get(second.id).status == jobs_pb2.JOB_STATUS_QUEUED  # still not started

    raised = admin.set_budget("alice", 100)
    assert raised.monthly_limit_cents == 100 and not raised.exhausted
    wait_for(lambda: completed(alice, second.id), timeout=30)
    done = alice.get(second.id)
    assert done.attempt == 1  # the wait cost no attempt
    spent(alice, 2 * COST)
    assert submit(alice).status == jobs_pb2.JOB_STATUS_QUEUED  # accepted again
    assert alice.retry(dropped.id).status == jobs_pb2.JOB_STATUS_QUEUED


def test_a_project_limit_binds_only_that_project(
    server: ServerThread, alice: GenJobsClient, admin: GenJobsClient
) -> None:
    admin.set_budget("alice", 1, project="blog")
    first = submit(alice, project="blog", seconds=0.5)
    blog = submit(alice, project="blog")
    news = submit(alice, project="news")
    wait_for(lambda: completed(alice, first.id), timeout=30)
    wait_for(lambda: completed(alice, news.id), timeout=30)  # runs, past the waiting blog job
    held = wait_for(lambda: waiting(alice, blog.id), timeout=30)
    assert (
        held.progress.message == "waiting: the monthly budget of 1 cents for alice's project 'blog' is spent"
    )
    usage = spent(alice, 2 * COST)  # the first blog job and the news one
    assert dict((p.project, p.spent_cents) for p in usage.projects) == {"blog": COST, "news": COST}
    assert [(b.project, b.exhausted) for b in usage.budgets] == [("blog", True)]

    reason, violations = quota_failure(
        server, "alice", lambda _, stub, md: stub.SubmitJob(submit_request("blog"), metadata=md)
    )
    assert reason == "BUDGET_EXHAUSTED" and violations[0][0] == "owner:alice/project:blog"
    assert submit(alice, project="news").status == jobs_pb2.JOB_STATUS_QUEUED
    assert submit(alice).status == jobs_pb2.JOB_STATUS_QUEUED  # no project: not under the blog limit

    admin.set_budget("alice", 0, project="blog")  # 0 removes the limit
    wait_for(lambda: completed(alice, blog.id), timeout=30)
    assert not alice.usage().budgets


def test_the_queued_jobs_cap_refuses_with_a_quota_failure(mongo: MongoServer, tmp_path: Path) -> None:
    # The cap counts open jobs: the running one too, until it ends.
    server = ServerThread(replace(make_settings(mongo.uri, tmp_path), max_queued_per_owner=4)).start()
    try:
        with server.client("alice") as alice, server.client("bob") as bob:
            running = submit(alice, seconds=30)
            wait_for(lambda: status_of(alice, running.id) == jobs_pb2.JOB_STATUS_PROCESSING, timeout=30)
            for _ in range(3):
                submit(alice)
            reason, violations = quota_failure(
                server, "alice", lambda _, stub, md: stub.SubmitJob(submit_request(), metadata=md)
            )
            assert reason == "QUEUED_JOBS_LIMIT"
            assert violations[0][0] == "owner:alice" and "4 queued jobs" in violations[0][1]
            usage = alice.usage()
            assert (usage.queued_jobs, usage.max_queued_jobs) == (4, 4)
            assert submit(bob).status == jobs_pb2.JOB_STATUS_QUEUED  # the cap is per owner

            def bulk(channel: grpc.Channel, _: Any, md: Any) -> Any:
                from genjobs.v1 import bulk_pb2_grpc

                items = [jobs_pb2.GenerationParams(topic=f"Tea {i}") for i in range(10)]
                request = bulk_pb2.CreateBulkJobRequest(mode=jobs_pb2.MODE_TOPIC, items=items)
                return bulk_pb2_grpc.BulkServiceStub(channel).CreateBulkJob(request, metadata=md)

            reason, violations = quota_failure(server, "bob", bulk)  # a bulk job counts its items
            assert reason == "QUEUED_JOBS_LIMIT" and "10 jobs more" in violations[0][1]

            alice.cancel(running.id)  # the next one runs: room for one more
            wait_for(lambda: status_of(alice, running.id) == jobs_pb2.JOB_STATUS_CANCELLED, timeout=30)
            wait_for(lambda: alice.usage().queued_jobs < 4, timeout=30)
            assert submit(alice).status == jobs_pb2.JOB_STATUS_QUEUED
    finally:
        server.stop()


def test_set_budget_is_for_admins_and_checks_its_input(alice: GenJobsClient, admin: GenJobsClient) -> None:
    with pytest.raises(GenJobsError) as caught:
        alice.set_budget("alice", 1000)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED and caught.value.reason == "ADMIN_REQUIRED"
    with pytest.raises(GenJobsError) as caught:
        admin.set_budget("alice", -1)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in caught.value.violations] == ["monthly_limit_cents"]
    with pytest.raises(GenJobsError) as caught:
        admin.set_budget("", 10)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    budget = admin.set_budget("alice", 250, project="a.b$c")
    assert (budget.owner, budget.project, budget.monthly_limit_cents, budget.exhausted) == (
        "alice",
        "a.b$c",
        250,
        False,
    )
    assert budget.HasField("update_time")
    assert [b.project for b in alice.usage().budgets] == ["a.b$c"]


def test_get_usage_of_another_owner_is_for_admins(
    alice: GenJobsClient, bob: GenJobsClient, admin: GenJobsClient
) -> None:
    job = submit(bob)
    wait_for(lambda: completed(bob, job.id), timeout=30)
    with pytest.raises(GenJobsError) as caught:
        alice.usage("bob")
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert alice.usage("alice").owner == "alice"  # naming oneself is fine
    usage = spent(admin, COST, "bob")
    assert (usage.owner, usage.queued_jobs) == ("bob", 0)
    assert [(p.project, p.spent_cents) for p in usage.projects] == [("", COST)]
    assert admin.usage().owner == "root"


def test_the_http_face_serves_budgets_and_usage(server: ServerThread) -> None:
    assert server.app is not None
    base = f"http://127.0.0.1:{server.app.http_port}"
    admin = {"authorization": f"Bearer {server.token('root', admin=True)}"}
    plain = {"authorization": f"Bearer {server.token('alice')}"}
    with httpx.Client(base_url=base, timeout=30) as http:
        answer = http.post("/v1/budgets", json={"owner": "alice", "monthlyLimitCents": "700"}, headers=admin)
        assert answer.status_code == 200, answer.text
        assert answer.json()["monthlyLimitCents"] == "700"
        assert (
            http.post(
                "/v1/budgets", json={"owner": "alice", "monthlyLimitCents": "1"}, headers=plain
            ).status_code
            == 403
        )
        usage = http.get("/v1/usage", headers=plain).json()
        assert usage["owner"] == "alice" and usage["budgets"][0]["monthlyLimitCents"] == "700"
        assert http.get("/v1/usage", params={"owner": "bob"}, headers=plain).status_code == 403
        assert http.get("/v1/usage", params={"owner": "bob"}, headers=admin).json()["owner"] == "bob"


def test_spend_is_counted_once_across_restarts(mongo: MongoServer, tmp_path: Path) -> None:
    settings = make_settings(mongo.uri, tmp_path)
    server = ServerThread(settings).start()
    try:
        with server.client("alice") as alice:
            job = submit(alice)
            wait_for(lambda: completed(alice, job.id), timeout=30)
            wait_for(lambda: alice.usage().spent_cents == COST, timeout=10)
    finally:
        server.stop()

    # Two crashes, as the database shows them: one server stopped after the
    # job's completion write (cost not counted), one after the count but
    # before it cleared the job's flag (cost counted, flag still set).
    db: Database[dict[str, Any]] = pymongo.MongoClient(mongo.uri)[settings.db_name]
    ended = clock.now_us() - 20_000_000
    month = month_of(ended)
    # (Both 20 s ago: the sweep leaves jobs that ended in the last 10 s to their live server.)
    db.jobs.update_one({"_id": ObjectId(job.id)}, {"$set": {"spend_pending": True, "ended_us": ended}})
    db.usage.update_one({"_id": usage_key("alice", month)}, {"$set": {f"counted.{job.id}": True}})
    uncounted = db.jobs.find_one({"_id": ObjectId(job.id)})
    assert uncounted is not None
    uncounted.update(_id=ObjectId(), ck=uncounted["ck"] + 1, request_key=f"crash-{uncounted['ck']}")
    uncounted.update(cost_cents=7, ended_us=ended, spend_pending=True, project="blog")
    db.jobs.insert_one(uncounted)
    # A job on an unpriced model the stopped server completed: counted apart, once.
    unknown = {**uncounted, "_id": ObjectId(), "ck": uncounted["ck"] + 1, "request_key": "crash-unknown"}
    db.jobs.insert_one({**unknown, "cost_cents": 0, "cost_unknown": True})

    for _ in range(2):  # the first start counts what is missing; the second adds nothing
        server = ServerThread(settings).start()
        try:
            with server.client("alice") as alice:
                wait_for(lambda: db.jobs.count_documents({"spend_pending": True}) == 0, timeout=30)
                usage = alice.usage()
                assert (usage.spent_cents, usage.cost_unknown_jobs) == (COST + 7, 1)
                assert dict((p.project, p.spent_cents) for p in usage.projects) == {"": COST, "blog": 7}
        finally:
            server.stop()
    stored = db.usage.find_one({"_id": usage_key("alice", month)})
    assert stored is not None and stored["counted"] == {}  # markers go once their jobs are settled
    db.client.close()


def test_a_free_job_writes_no_spend(mongo: MongoServer, tmp_path: Path) -> None:
    settings = replace(make_settings(mongo.uri, tmp_path), generator="noop")
    server = ServerThread(settings).start()
    try:
        with server.client("alice") as alice:
            job = submit(alice)
            wait_for(lambda: completed(alice, job.id), timeout=30)
            assert alice.usage().spent_cents == 0
        db: Database[dict[str, Any]] = pymongo.MongoClient(mongo.uri)[settings.db_name]
        stored = db.jobs.find_one({"_id": ObjectId(job.id)})
        assert stored is not None and "spend_pending" not in stored
        assert db.usage.count_documents({}) == 0
        db.client.close()
    finally:
        server.stop()


def test_quota_failure_stays_small() -> None:
    """Unit: a QuotaFailure echoes at most a bounded subject and description."""
    from genjobs.server.api.status import to_status
    from genjobs.server.model.errors import quota_exceeded

    status = to_status(
        quota_exceeded("BUDGET_EXHAUSTED", "owner:" + "x" * 5000, "y" * 5000, {"owner": "x" * 5000})
    )
    assert status.ByteSize() < 2000
    assert any(d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR) for d in status.details)


def test_the_cli_sets_budgets_and_shows_usage(server: ServerThread, alice: GenJobsClient) -> None:
    from tests.test_cli import Cli

    job = submit(alice, project="blog")
    wait_for(lambda: completed(alice, job.id), timeout=30)
    spent(alice, COST)
    cli = Cli(server)
    admin_token = server.token("root", admin=True)
    out = cli("budget", "set", "alice", "500", GENJOBS_TOKEN=admin_token).stdout
    assert "monthly limit for alice: 500¢, spent 5¢" in out
    out = cli("budget", "set", "alice", "5", "--project", "blog", GENJOBS_TOKEN=admin_token).stdout
    assert "alice's project 'blog': 5¢" in out and "exhausted, new jobs are refused" in out
    refused = cli("budget", "set", "alice", "1", code=1)
    assert "ADMIN_REQUIRED" in refused.stderr
    table = cli("usage").stdout
    assert "alice" in table and "project blog" in table and "queued jobs" in table
    assert "spent" in table and "500¢" in table
    data = cli.json("usage")
    assert data["spent_cents"] == str(COST) and data["max_queued_jobs"] == 1000
    refused = cli("submit", "--topic", "Tea", "--project", "blog", code=1)
    assert "BUDGET_EXHAUSTED" in refused.stderr and "project 'blog'" in refused.stderr


def test_a_paused_bulk_job_stays_held_when_its_budget_is_raised(
    server: ServerThread, mongo: MongoServer, alice: GenJobsClient, admin: GenJobsClient
) -> None:
    admin.set_budget("alice", COST)
    items: list[dict[str, Any]] = [{"topic": f"Tea {i}", "word_count": WORDS} for i in range(10)]
    items[0]["extra"] = {"demo_seconds": "0.5"}
    bulk = alice.create_bulk("topic", items)
    db: Database[dict[str, Any]] = pymongo.MongoClient(mongo.uri)[server.settings.db_name]
    try:
        lanes = lambda: sorted(j["queue"] for j in db.jobs.find({"bulk_job_id": bulk.id, "status": "QUEUED"}))  # noqa: E731
        wait_for(lambda: lanes() == ["budget"] * 9, timeout=30)  # the first item spent the budget
        alice.pause_bulk(bulk.id)
        assert lanes() == ["held"] * 9
        admin.set_budget("alice", 1000)
        # The release has looked once the limit holds nothing: the paused items stay held.
        wait_for(lambda: not db.budgets.find_one({"owner": "alice", "holding": True}), timeout=30)
        assert lanes() == ["held"] * 9
        alice.resume_bulk(bulk.id)
        wait_for(lambda: alice.get_bulk(bulk.id).completed_items == 10, timeout=60)
        spent(alice, 10 * COST)
    finally:
        db.client.close()


def test_months_and_project_keys() -> None:
    """Unit: spend is kept by calendar month (UTC), under reversible project keys."""
    from datetime import UTC, datetime

    from genjobs.server.storage.budgets import project_field, project_name

    last = clock.to_us(datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC))
    assert (month_of(last), month_of(last + 1)) == ("2026-11", "2026-12")
    for name in ["", "blog", "a.b", "$x", "%2E", "p.%24.$"]:
        key = project_field(name)
        assert "." not in key and not key.startswith("$") and project_name(key) == name


class CountingBudgetStore(BudgetStore):
    """A budget store that records how many limits each re-read returns."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.reads: list[int] = []

    def changed_budgets(self, since_us: int) -> list[Budget]:
        found = super().changed_budgets(since_us)
        self.reads.append(len(found))
        return found


def test_limits_are_re_read_only_after_they_change(mongo: MongoServer) -> None:
    """Every server re-reads the limits every 1.5 s: limits set long ago are read
    once, not on every re-read, and a limit written by a replica whose clock is
    up to a minute behind is still seen."""
    store = Store(mongo.uri, "budget_rereads")
    try:
        budget_store = CountingBudgetStore(store)
        budget_store.ensure_indexes()
        for i in range(20):  # set in one burst, an hour ago
            budget_store.set_budget(f"owner{i}", "", 500)
        budget_store.budgets.update_many({}, {"$set": {"changed_us": clock.now_us() - 3_600_000_000}})
        budgets = Budgets(budget_store, lambda job, kind: None, QueueCap(store.jobs, 1000))
        budgets.check_submit("owner0", "", 1)
        budgets.stale()
        budgets.check_submit("owner0", "", 1)
        assert budget_store.reads == [20, 0]
        budget_store.set_budget("owner1", "", 700)  # as stamped by a clock 30 s behind:
        behind = {"$inc": {"changed_us": -30_000_000}}
        budget_store.budgets.update_one({"_id": budget_key("owner1", "")}, behind)
        budgets.stale()
        budgets.check_submit("owner0", "", 1)
        assert budget_store.reads[-1] == 1
    finally:
        store.database.db.client.drop_database("budget_rereads")
        store.close()


def test_a_job_that_just_ended_frees_its_place_at_once(mongo: MongoServer, tmp_path: Path) -> None:
    """A run's end gives its place back in the write of its outcome: a submit
    right after the end is admitted, and the owner's count shows it."""
    server = ServerThread(replace(make_settings(mongo.uri, tmp_path), max_queued_per_owner=1)).start()
    try:
        with server.client("alice") as alice:
            for i in range(5):
                job = alice.submit("topic", topic=f"Tea {i}")
                for _ in alice.watch(job.id):
                    pass
                assert completed(alice, job.id)
            assert alice.usage().queued_jobs == 0
    finally:
        server.stop()


def test_a_repeated_request_at_the_cap_returns_the_earlier_job(mongo: MongoServer, tmp_path: Path) -> None:
    server = ServerThread(replace(make_settings(mongo.uri, tmp_path), max_queued_per_owner=12)).start()
    try:
        with server.client("alice") as alice:
            running = submit(alice, seconds=30)
            wait_for(lambda: status_of(alice, running.id) == jobs_pb2.JOB_STATUS_PROCESSING, timeout=30)
            single = alice.submit("topic", topic="Tea", request_id="digest-1")
            items = [{"topic": f"Tea {i}"} for i in range(10)]
            bulk = alice.create_bulk("topic", items, request_id="digests")  # 12 open: the cap
            with pytest.raises(ResourceExhausted):
                alice.submit("topic", topic="Tea", request_id="digest-2")
            # A client retrying what it sent gets what it made, not a refusal.
            assert alice.submit("topic", topic="Tea", request_id="digest-1").id == single.id
            assert alice.create_bulk("topic", items, request_id="digests").id == bulk.id
            alice.cancel(running.id)
    finally:
        server.stop()


def test_costs_counted_behind_runs_count_once_and_settle_together(mongo: MongoServer) -> None:
    """A run's cost is in its month at once where a limit covers it (the next
    admission reads it); an owner no limit covers has the costs of their runs
    counted behind them, together, as GetUsage shows. A sweep meanwhile adds
    nothing twice, and every flag and marker is cleared in the end."""
    store = Store(mongo.uri, "spend_behind")
    try:
        budgets = Budgets(BudgetStore(store), lambda doc, kind: None, QueueCap(store.jobs, 10))
        budgets.store.set_budget("bob", "", 1000)
        budgets.check_submit("alice", "", 1)  # the budgets are read: bob has a limit, alice none
        budgets.counted.window_seconds = 60.0  # written behind only when flushed
        now = clock.now_us()

        def complete(owner: str, cents: int, ended: int = now) -> None:
            doc = {"_id": ObjectId(), "owner": owner, "mode": "TOPIC", "status": "COMPLETED"}
            doc |= {
                "ended_us": ended,
                "cost_cents": cents,
                "spend_pending": True,
                "result": {"cost_cents": cents},
            }
            store.jobs.jobs.insert_one(doc)
            token = RUN_PATH.set(True)
            try:
                budgets.job_changed(records.job(doc), STATUS_CHANGED)
            finally:
                RUN_PATH.reset(token)

        def spent(owner: str) -> int:
            months = {month_of(now), month_of(now - 20_000_000)}
            return sum(budgets.store.month_spend(owner, month).spent_cents for month in months)

        complete("bob", 5)
        complete("alice", 1)
        assert (spent("bob"), spent("alice")) == (5, 0)  # alice's behind the runs
        assert budgets.counted.flush() == 2
        assert spent("alice") == 1  # her month's document is there now
        one_by_one: list[str] = []
        count_spend = budgets.store.count_spend
        budgets.store.count_spend = lambda job: one_by_one.append(job.job_id) or count_spend(job)  # type: ignore[method-assign]
        complete("alice", 3)
        complete("alice", 4)
        assert budgets.counted.flush(owner="alice") == 2
        assert (spent("alice"), one_by_one) == (8, [])  # in one command

        # A run whose end is old enough for the sweep (its server stalled): the sweep counts it.
        complete("alice", 2, now - 20_000_000)
        budgets.recover()
        budgets.close()  # what was written behind is written by now
        assert (spent("bob"), spent("alice")) == (5, 10)
        assert store.jobs.jobs.count_documents({"spend_pending": True}) == 0
        for stored in budgets.store.usage.find({}):
            assert stored["counted"] == {}
    finally:
        store.database.db.client.drop_database("spend_behind")
        store.close()


def test_counted_flags_do_not_wait_out_an_outage() -> None:
    """A flag's clear that landed after another server's sweep read the flag
    would let that sweep count the cost again: while the database does not
    answer, the flags are left to the sweep."""
    sent: list[dict[str, list[str]]] = []

    def down(batch: dict[str, list[str]]) -> int:
        sent.append(batch)
        raise pymongo.errors.AutoReconnect("the database is down")

    flags = WrittenBehind(down, "counted costs' flags", "test-flags", 60.0)
    flags.add("alice", ["job"])
    assert flags.flush() == 0
    assert flags.flush() == 0  # nothing is kept to send again
    assert len(sent) == 1


def test_a_leader_alone_rereads_limits_once_a_recheck_whatever_submits_read(
    mongo: MongoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader alone writes every limit itself: its housekeeping re-reads them
    once a recheck, and a submit's re-read (which does not know whether the
    server is alone) does not bring that read back to every CACHE_SECONDS."""
    now = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: now[0])
    monkeypatch.setattr(budgets_module, "time", fake_time)
    monkeypatch.setattr(recheck_module, "time", fake_time)
    store = Store(mongo.uri, "budget_rechecks")
    try:
        budget_store = CountingBudgetStore(store)
        budget_store.ensure_indexes()
        budgets = Budgets(budget_store, lambda job, kind: None, QueueCap(store.jobs, 1000))
        budgets.release(alone=True)  # the first read
        now[0] += 2 * CACHE_SECONDS
        budgets.check_submit("owner0", "", 1)  # the submit path's read
        now[0] += 2 * CACHE_SECONDS
        budgets.release(alone=True)  # within a recheck of both: no read
        assert len(budget_store.reads) == 2
        now[0] += RECHECK_SECONDS
        budgets.release(alone=True)
        assert len(budget_store.reads) == 3
    finally:
        store.database.db.client.drop_database("budget_rechecks")
        store.close()
