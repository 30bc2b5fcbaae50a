"""Templates through a real server: CRUD, per-owner isolation, refusals, and
SubmitJob / CreateBulkJob from a template with field overrides."""

from __future__ import annotations

import grpc
import pytest

from genjobs.client import AlreadyExists, FailedPrecondition, GenJobsClient, InvalidArgument, NotFound
from genjobs.client.client import params
from genjobs.server.services.templates import merge
from genjobs.v1 import bulk_pb2, jobs_pb2
from tests.harness import ServerThread
from tests.test_cli import Cli

TOPIC = jobs_pb2.MODE_TOPIC


def job_request(**fields: object) -> jobs_pb2.SubmitJobRequest:
    base = {
        "mode": TOPIC,
        "params": params(topic="Green tea", keywords=["tea", "health"], word_count=300, tone="friendly"),
        "project": "blog",
        "max_attempts": 2,
    }
    return jobs_pb2.SubmitJobRequest(**{**base, **fields})  # type: ignore[arg-type]


def bulk_request(count: int = 10) -> bulk_pb2.CreateBulkJobRequest:
    return bulk_pb2.CreateBulkJobRequest(
        mode=TOPIC, items=[params(topic=f"item {i}", word_count=60) for i in range(count)], project="bulk"
    )


def test_template_crud(alice: GenJobsClient) -> None:
    made = alice.create_template("weekly-tea", job=job_request())
    assert made.name == "weekly-tea" and made.owner == "alice"
    assert made.job.params.topic == "Green tea" and made.HasField("create_time")
    assert alice.get_template("weekly-tea").job.project == "blog"
    with pytest.raises(AlreadyExists):
        alice.create_template("weekly-tea", job=job_request())
    updated = alice.update_template("weekly-tea", job=job_request(project="news"))
    assert updated.job.project == "news"
    assert alice.get_template("weekly-tea").job.project == "news"
    alice.delete_template("weekly-tea")
    with pytest.raises(NotFound):
        alice.get_template("weekly-tea")
    with pytest.raises(NotFound):
        alice.update_template("weekly-tea", job=job_request())
    with pytest.raises(NotFound):
        alice.delete_template("weekly-tea")


def test_templates_list_by_name_in_pages(alice: GenJobsClient) -> None:
    for name in ("c.3", "a_1", "b-2", "D4", "e5"):
        alice.create_template(name, job=job_request())
    first = alice.list_templates(page_size=2)
    assert [t.name for t in first.templates] == ["D4", "a_1"]
    assert first.next_page_token
    assert [t.name for t in alice.iter_templates()] == ["D4", "a_1", "b-2", "c.3", "e5"]
    with pytest.raises(InvalidArgument) as refused:
        alice.list_templates(page_token=first.next_page_token[:-2] + "xx")
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


def test_each_owner_sees_only_their_templates(alice: GenJobsClient, bob: GenJobsClient) -> None:
    alice.create_template("mine", job=job_request())
    bob.create_template("mine", job=job_request(project="bobs"))  # names are per owner
    assert alice.get_template("mine").job.project == "blog"
    assert [t.owner for t in bob.iter_templates()] == ["bob"]
    alice.create_template("only-alice", job=job_request())
    for act in (
        lambda: bob.get_template("only-alice"),
        lambda: bob.update_template("only-alice", job=job_request()),
        lambda: bob.delete_template("only-alice"),
        lambda: bob.submit("", template="only-alice"),
    ):
        with pytest.raises(NotFound):
            act()
    assert alice.get_template("only-alice").owner == "alice"


def test_refusals_name_the_field(alice: GenJobsClient) -> None:
    cases = [
        ("bad name!", job_request(), None, "name"),
        ("x" * 65, job_request(), None, "name"),
        ("ok", None, None, "request"),
        ("ok", job_request(mode=0), None, "job.mode"),
        ("ok", job_request(params=params(topic="t", word_count=7)), None, "job.params.word_count"),
        ("ok", job_request(template="other"), None, "job.template"),
        ("ok", None, bulk_request(3), "bulk_job.items"),
    ]
    for name, job, bulk, field in cases:
        with pytest.raises(InvalidArgument) as refused:
            alice.create_template(name, job=job, bulk_job=bulk)
        assert field in [f for f, _ in refused.value.violations], (name, field, refused.value.violations)
    assert list(alice.iter_templates()) == []


def test_a_job_from_a_template_keeps_the_fields_not_overridden(alice: GenJobsClient) -> None:
    alice.create_template("tea", job=job_request(request_id="kept-out"))
    job = alice.submit("", template="tea", topic="Black tea")
    assert job.template == "tea"
    assert job.params.topic == "Black tea"  # overridden
    assert list(job.params.keywords) == ["tea", "health"]  # the template's
    assert (job.params.word_count, job.params.tone, job.project, job.max_attempts) == (
        300,
        "friendly",
        "blog",
        2,
    )
    assert job.mode == TOPIC
    # A repeated field set in the request replaces the template's.
    again = alice.submit("", template="tea", keywords=["oolong"])
    assert list(again.params.keywords) == ["oolong"] and again.params.topic == "Green tea"
    assert again.id != job.id  # the template's request_id is not kept
    # The merged request is checked like any other.
    with pytest.raises(InvalidArgument):
        alice.submit("", template="tea", word_count=9)
    with pytest.raises(NotFound):
        alice.submit("", template="no-such")


def test_bulk_jobs_from_templates_and_kinds_not_mixed(alice: GenJobsClient) -> None:
    alice.create_template("ten", bulk_job=bulk_request())
    alice.create_template("one", job=job_request())
    bulk = alice.create_bulk("", [], template="ten", project="override")
    assert bulk.template == "ten" and bulk.project == "override" and bulk.total_items == 10
    item = alice.get(bulk.items[0].id)
    assert item.template == "ten" and item.project == "override"
    with pytest.raises(FailedPrecondition) as wrong:
        alice.submit("", template="ten")
    assert wrong.value.reason == "TEMPLATE_KIND_MISMATCH"
    with pytest.raises(FailedPrecondition):
        alice.create_bulk("", [], template="one")
    assert wrong.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_merge_replaces_set_fields_only() -> None:
    base = job_request(params=params(topic="a", keywords=["x", "y"], extra={"k": "v", "j": "w"}))
    merged = merge(base, jobs_pb2.SubmitJobRequest(params=params(extra={"k": "new"}), project="p"))
    assert isinstance(merged, jobs_pb2.SubmitJobRequest)
    assert dict(merged.params.extra) == {"k": "new"}  # a map set in the request replaces the base's
    assert list(merged.params.keywords) == ["x", "y"] and merged.params.topic == "a"
    assert merged.project == "p" and merged.max_attempts == 2


def test_the_cli_saves_lists_uses_and_removes_templates(server: ServerThread, alice: GenJobsClient) -> None:
    cli = Cli(server)
    assert (
        "saved template tea"
        in cli("template", "save", "tea", "--topic", "Green tea", "--tone", "calm").stdout
    )
    assert (
        "updated template tea"
        in cli(
            "template", "save", "tea", "--topic", "Green tea", "--tone", "friendly", "--word-count", "300"
        ).stdout
    )
    listed = cli("template", "ls").stdout
    assert "tea" in listed and "topic: Green tea" in listed
    job_id = cli.json("submit", "--template", "tea", "--topic", "Black tea")["id"]
    job = alice.get(str(job_id))
    assert (job.params.topic, job.params.tone, job.params.word_count, job.template) == (
        "Black tea",
        "friendly",
        300,
        "tea",
    )
    items = server.settings.data_dir / "items.csv"
    items.write_text("topic\n" + "".join(f"item {i}\n" for i in range(10)))
    cli("template", "save", "ten", "--items", str(items), "--project", "bulky")
    bulk = cli.json("bulk", "create", "--template", "ten")
    assert bulk["template"] == "ten" and bulk["project"] == "bulky" and bulk["total_items"] == 10
    assert "deleted template tea" in cli("template", "rm", "tea").stdout
    assert "TEMPLATE_NOT_FOUND" in cli("template", "rm", "tea", code=1).stderr
    assert [t.name for t in alice.iter_templates()] == ["ten"]


def test_a_page_of_large_templates_stays_under_the_reply_limit(alice: GenJobsClient) -> None:
    text = "word " * 20_000  # 100,000 characters, the most a request's source_text may hold
    spin = jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_SPIN, params=params(source_text=text))
    for i in range(45):  # 4.5 MB of templates: more than one gRPC reply may carry
        alice.create_template(f"spin-{i:02d}", job=spin)
    first = alice.list_templates()
    assert 0 < len(first.templates) < 45 and first.next_page_token
    assert len(list(alice.iter_templates())) == 45
