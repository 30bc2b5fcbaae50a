"""Pure logic of the domain model (issue 28): the priority vocabulary, what a
retry keeps, the document round trip at the storage edge, error codes that
gRPC reads by number, and how long a read of what a server keeps stands."""

from __future__ import annotations

import time

import grpc
from bson import ObjectId

import genjobs.server.notify  # noqa: F401  (the channels register themselves as it is imported)
from genjobs.server.model.errors import Code
from genjobs.server.model.recheck import RECHECK_SECONDS, Recheck
from genjobs.server.model.records import Job, Params, Submission
from genjobs.server.model.states import Status
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.model.vocabulary import Mode, Priority
from genjobs.server.storage import records


def test_a_missing_or_unknown_priority_is_normal_and_high_runs_first() -> None:
    assert Priority.of(None) is Priority.NORMAL  # stored before priorities existed
    assert Priority.of("URGENT") is Priority.NORMAL
    assert Priority.of("HIGH") is Priority.HIGH
    assert sorted(Priority, key=lambda p: p.rank) == [Priority.HIGH, Priority.NORMAL, Priority.LOW]
    assert Priority.rank_of(None) == Priority.NORMAL.rank


def test_a_retry_keeps_the_work_and_its_targets_but_not_its_schedule_time() -> None:
    targets = (NotifyTarget("webhook", "https://example.com/hook"), NotifyTarget("email", "me@example.com"))
    original = Job(
        id="j1",
        owner="alice",
        mode=Mode.KEYWORDS,
        params=Params(keywords=("a", "b")),
        status=Status.FAILED,
        project="p",
        priority=Priority.HIGH,
        max_attempts=0,  # stored before max_attempts: the server's default
        bulk_job_id="b1",
        queue_position=4,
        schedule_us=123,
        targets=targets,
        schedule_id="s1",
        template="t1",
        attempt=3,
    )
    retry = original.retry_submission("again", default_attempts=5)
    assert retry == Submission(
        owner="alice",
        mode=Mode.KEYWORDS,
        params=Params(keywords=("a", "b")),
        project="p",
        request_id="again",
        max_attempts=5,
        priority=Priority.HIGH,
        targets=targets,
        retry_of="j1",
        bulk_job_id="b1",
        queue_position=4,
        schedule_id="s1",
        template="t1",
    )


def test_a_submission_reads_back_as_the_job_it_stored() -> None:
    submission = Submission(
        owner="alice",
        mode=Mode.TOPIC,
        params=Params(topic="tides", word_count=800, extra={"k": "v"}),
        priority=Priority.LOW,
        targets=(NotifyTarget("email", "me@example.com"),),
    )
    doc = records.job_doc(submission, ObjectId(), 42, "ready", "key")
    assert doc["notify_email"] == "me@example.com" and doc["notify_pending"] is True
    assert not doc.get("notify_url")  # a channel not asked for stores nothing
    job = records.job(doc)
    assert (job.owner, job.mode, job.params, job.priority) == (
        "alice",
        Mode.TOPIC,
        submission.params,
        Priority.LOW,
    )
    assert job.targets == submission.targets and job.status == Status.QUEUED and job.created_us == 42
    assert doc["rank"] == Priority.LOW.rank


def test_error_codes_are_grpc_status_numbers() -> None:
    assert {c.name: int(c) for c in Code} == {c.name: c.value[0] for c in grpc.StatusCode}


def test_a_leader_alone_reads_again_once_a_recheck_and_the_first_time_at_once() -> None:
    reads = Recheck(every=1.5)
    assert reads.due(alone=True)  # never read
    reads.read(alone=False, at=time.monotonic() - 2)
    assert reads.due(alone=False)  # a read stands `every` while others share the database
    assert reads.due(alone=True)  # alone now: the servers gone may have left changes
    reads.read(alone=True, at=time.monotonic() - 2)
    assert not reads.due(alone=True)  # read alone: it stands a recheck
    assert reads.due(alone=False)  # a server joined
    reads.read(alone=True, at=time.monotonic() - RECHECK_SECONDS)
    assert reads.due(alone=True)
    reads.read(alone=True)
    reads.forget()  # a change nobody told
    assert reads.due(alone=True)
    assert reads.take(alone=True) and not reads.take(alone=True)  # a read taken stands
