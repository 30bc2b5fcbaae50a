"""Fuzzing every RPC of JobService and BulkService through the real stubs.

Hostile shapes: long and odd strings (any Unicode, control characters,
5,000+ characters), unknown enum numbers, timestamps outside Timestamp's
range, forged page tokens (base64 JSON with wrong types and huge numbers,
random bytes, tampered real ones) and repeated fields of 10,000 items.
Every answer must be OK or a deliberate error: never INTERNAL, UNKNOWN or
RESOURCE_EXHAUSTED; every error's trailers under 2 KB; a refused call
stores nothing. `bench/fuzz_report.py` runs the same tests and prints
what was tried, by status code, and the largest trailer.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pymongo
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genjobs.v1 import (
    bulk_pb2,
    bulk_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)
from tests.harness import MongoServer, ServerThread, make_settings, wait_for

# The server shares this process: its dispatcher's retry jitter draws from
# `random` while hypothesis generates, which hypothesis would warn about.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module")
EXAMPLES = int(os.environ.get("GENJOBS_FUZZ_EXAMPLES", "20"))  # per RPC
TRAILER_LIMIT = 2048
HUGE = 10_000
REFUSED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}
# What a call can store. Not notifications: the server stores one when a job
# ends, and fuzzed jobs run (and end) beside the calls once a fuzzed
# CancelJob stops the seeds' running job.
COLLECTIONS = ("jobs", "bulk_jobs", "schedules", "templates")


@dataclass
class Tally:
    """What the fuzzing tried: answers by status code, the largest error trailer."""

    by_code: Counter[str] = field(default_factory=Counter)
    by_rpc: Counter[str] = field(default_factory=Counter)
    largest_trailer: int = 0
    largest_trailer_rpc: str = ""

    def report(self) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in self.by_code.most_common())
        return (
            f"{sum(self.by_code.values())} requests over {len(self.by_rpc)} RPCs: {codes}; "
            f"largest error trailer {self.largest_trailer} bytes ({self.largest_trailer_rpc})"
        )


TALLY = Tally()


@dataclass
class Seeds:
    """Real ids and page tokens of the fuzzing user, so that valid ones are tried too."""

    job_ids: list[str] = field(default_factory=list)
    bulk_ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    schedule_ids: list[str] = field(default_factory=list)
    template_names: list[str] = field(default_factory=list)


SEEDS = Seeds()


class Fuzzer:
    """A server, stubs for one user, and the database its calls may change."""

    def __init__(self, server: ServerThread, mongo_uri: str) -> None:
        self.server = server
        self.user = "fuzz-" + uuid.uuid4().hex[:8]
        self.metadata = (("authorization", f"Bearer {server.token(self.user)}"),)
        self.admin_metadata = (("authorization", f"Bearer {server.token('fuzz-admin', admin=True)}"),)
        self.channel = grpc.insecure_channel(server.target)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.bulk = bulk_pb2_grpc.BulkServiceStub(self.channel)
        self.schedules = schedules_pb2_grpc.ScheduleServiceStub(self.channel)
        self.templates = templates_pb2_grpc.TemplateServiceStub(self.channel)
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
        self.db = self.client[server.settings.db_name]

    def stored(self) -> tuple[int, ...]:
        return tuple(self.db[name].count_documents({}) for name in COLLECTIONS)

    def call(self, rpc: str, request: Any) -> grpc.StatusCode:
        """Send one request; check and tally its answer."""
        service = self.bulk if rpc in BULK_RPCS else self.jobs
        if rpc in SCHEDULE_REQUESTS:
            service = self.schedules
        elif rpc in TEMPLATE_REQUESTS:
            service = self.templates
        method = getattr(service, rpc)
        before = self.stored()
        try:
            metadata = self.admin_metadata if rpc in ADMIN_RPCS else self.metadata
            answer = method(request, metadata=metadata, timeout=30)
            if rpc.startswith("Watch"):  # the first event is enough; then hang up
                next(answer)
                answer.cancel()
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.CANCELLED:  # our own hang-up after the first event
                code = grpc.StatusCode.OK
            else:
                self._check_error(rpc, error, before)
        except StopIteration:  # a stream that ended at once (a final job resumed at its end)
            code = grpc.StatusCode.OK
        TALLY.by_code[code.name] += 1
        TALLY.by_rpc[rpc] += 1
        return code

    def _check_error(self, rpc: str, error: grpc.RpcError, before: tuple[int, ...]) -> None:
        code = error.code()
        assert code not in REFUSED, f"{rpc}: {code} {error.details()!r}"[:2000]
        raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
        size = len(raw) + len((error.details() or "").encode())
        assert size < TRAILER_LIMIT, f"{rpc}: {size} bytes of trailers"
        if size > TALLY.largest_trailer:
            TALLY.largest_trailer, TALLY.largest_trailer_rpc = size, f"{rpc} {code.name}"
        after = self.stored()
        assert after == before, f"{rpc} was refused ({code}) but stored: {COLLECTIONS} {before} -> {after}"

    def close(self) -> None:
        self.channel.close()
        self.client.close()


# ---- strategies -------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


any_char = st.characters(codec="utf-8")  # every code point but lone surrogates
short_text = st.text(any_char, max_size=12)
control_text = st.text(
    st.characters(max_codepoint=31) | st.sampled_from("\x7f\x85\u2028\ufeff\U0010ffff"),
    min_size=1,
    max_size=8,
)
long_text = st.builds(lambda c, n: c * n, any_char, st.integers(5000, 6000))
texts = st.one_of(
    short_text, control_text, long_text, st.sampled_from(["", " ", "x", "(", ".*", "\\", "$where"])
)
hex_ids = st.text("0123456789abcdef", min_size=24, max_size=24)
job_ids = st.one_of(texts, hex_ids, st.deferred(lambda: st.sampled_from(SEEDS.job_ids)))
bulk_ids = st.one_of(texts, hex_ids, st.deferred(lambda: st.sampled_from(SEEDS.bulk_ids)))
enums = st.one_of(st.integers(0, 6), st.sampled_from([-1, 999, 2**31 - 1, -(2**31)]))
int32s = st.one_of(st.integers(-5, 200), st.sampled_from([-(2**31), 2**31 - 1]))
int64s = st.one_of(st.integers(0, 50), st.sampled_from([-(2**63), 2**63 - 1, 2**62]))
timestamps = st.one_of(
    st.none(),
    st.builds(
        Timestamp,
        seconds=st.one_of(
            st.integers(0, 4 * 10**9),
            st.sampled_from([2**62, -(2**62), 2**63 - 1, -(2**63), 253402300800, -62135596801]),
        ),
        nanos=st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 10**9, -(2**31), 2**31 - 1])),
    ),
)
json_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(),
    short_text,
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
forged_tokens = st.one_of(
    st.fixed_dictionaries({}, optional={"b": json_values, "t": json_values, "f": json_values}).map(
        lambda claims: b64(json.dumps(claims).encode())
    ),
    st.just(b64(b'{"b":1e400,"t":1e400,"f":"x"}')),
    st.binary(max_size=80).map(b64),
    st.tuples(st.binary(max_size=40), st.binary(max_size=16)).map(lambda p: f"{b64(p[0])}.{b64(p[1])}"),
)


def tampered(token: str, how: int) -> str:
    """A real token changed a little: one character, its signature, or its claims."""
    payload, _, signature = token.partition(".")
    if how == 0:
        return payload
    if how == 1:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["t"] = 987654
        return f"{b64(json.dumps(claims).encode())}.{signature}"
    index = how % max(len(token), 1)
    return token[:index] + ("A" if token[index : index + 1] != "A" else "B") + token[index + 1 :]


real_tokens = st.deferred(lambda: st.sampled_from(SEEDS.tokens))
page_tokens = st.one_of(
    st.just(""), texts, forged_tokens, real_tokens, st.builds(tampered, real_tokens, st.integers(0, 200))
)


def repeated(values: st.SearchStrategy[Any], small: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A few values, or 10,000 copies of a small one."""
    return st.one_of(st.lists(values, max_size=3), small.map(lambda v: [v] * HUGE))


extras = st.one_of(
    st.dictionaries(texts, texts, max_size=3),
    st.dictionaries(
        st.sampled_from(["demo_fail", "demo_fail_attempts", "demo_seconds"]),
        st.sampled_from(["²", "\u0661", "nan", "inf", "-1", "1e3", "0", "1", "transient", "permanent", ""]),
        max_size=3,
    ),
    st.builds(lambda: {f"k{i}": "v" for i in range(HUGE)}),
)
params = st.builds(
    jobs_pb2.GenerationParams,
    topic=texts,
    keywords=repeated(texts, short_text),
    word_count=int32s,
    tone=texts,
    source_text=texts,
    extra=extras,
)
small_params = st.builds(jobs_pb2.GenerationParams, topic=st.one_of(short_text, st.just("a topic")))
valid_items = st.integers(10, 12).map(
    lambda n: [jobs_pb2.GenerationParams(topic=f"item {i}") for i in range(n)]
)
items = st.one_of(st.lists(params, max_size=3), valid_items, small_params.map(lambda p: [p] * HUGE))

JOB_REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "SubmitJob": st.one_of(
        st.builds(
            jobs_pb2.SubmitJobRequest,
            mode=enums,
            params=params,
            request_id=texts,
            project=texts,
            max_attempts=int32s,
            notify_url=texts,
            notify_email=texts,
            priority=enums,
            schedule_time=timestamps,
        ),
        # Valid but for the labels: reaches the store's idempotency keys.
        st.builds(
            jobs_pb2.SubmitJobRequest,
            mode=st.just(jobs_pb2.MODE_TOPIC),
            params=st.just(jobs_pb2.GenerationParams(topic="t", word_count=60)),
            request_id=texts,
            project=texts,
            priority=enums,
            schedule_time=timestamps,
        ),
        # A template by name, with overrides: reaches the template merge.
        st.builds(
            jobs_pb2.SubmitJobRequest,
            template=st.deferred(lambda: template_names),
            params=params,
            mode=enums,
        ),
    ),
    "GetJob": st.builds(jobs_pb2.GetJobRequest, id=job_ids),
    "ListJobs": st.builds(
        jobs_pb2.ListJobsRequest,
        statuses=repeated(enums, enums),
        modes=repeated(enums, enums),
        created_after=timestamps,
        created_before=timestamps,
        query=texts,
        bulk_job_id=st.one_of(st.just(""), bulk_ids),
        project=texts,
        page_size=int32s,
        page_token=page_tokens,
        priorities=repeated(enums, enums),
    ),
    "CancelJob": st.builds(jobs_pb2.CancelJobRequest, id=job_ids),
    "RetryJob": st.builds(jobs_pb2.RetryJobRequest, id=job_ids, request_id=texts),
    "DeleteJob": st.builds(jobs_pb2.DeleteJobRequest, id=job_ids),
    "WatchJob": st.builds(jobs_pb2.WatchJobRequest, id=job_ids, after_sequence=int64s),
    "WatchJobs": st.builds(jobs_pb2.WatchJobsRequest, project=texts),
    "RunBulkOperation": st.builds(
        jobs_pb2.RunBulkOperationRequest,
        operation=enums,
        bulk_job_id=st.one_of(st.just(""), bulk_ids),
        modes=repeated(enums, enums),
        validate_only=st.booleans(),
        project=texts,
    ),
    "GetJobStats": st.builds(
        jobs_pb2.GetJobStatsRequest, created_after=timestamps, created_before=timestamps, project=texts
    ),
    "ReportProgress": st.builds(
        jobs_pb2.ReportProgressRequest,
        job_id=job_ids,
        token=texts,
        percentage=int32s,
        stage=texts,
        stage_progress=int32s,
        message=texts,
    ),
    # Sent with an admin token (ADMIN_RPCS), so that its checks are reached.
    "SetBudget": st.builds(
        jobs_pb2.SetBudgetRequest,
        owner=st.one_of(texts, st.just("someone")),
        project=texts,
        monthly_limit_cents=st.one_of(int64s, st.integers(-5, -1)),
    ),
    "GetUsage": st.builds(jobs_pb2.GetUsageRequest, owner=st.one_of(texts, st.just(""))),
    "SetTier": st.builds(
        jobs_pb2.SetTierRequest,
        owner=st.one_of(texts, st.just("someone")),
        tier=st.one_of(texts, st.sampled_from(["", "premium"])),
    ),
}
ADMIN_RPCS = frozenset({"SetBudget", "SetTier"})
BULK_REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "CreateBulkJob": st.builds(
        bulk_pb2.CreateBulkJobRequest,
        mode=enums,
        items=items,
        request_id=texts,
        project=texts,
        notify_url=st.one_of(texts, st.sampled_from(["http://127.0.0.1:9/x", "https://", "ftp://x"])),
        notify_email=texts,
        priority=enums,
        schedule_time=timestamps,
    ),
    "GetBulkJob": st.builds(bulk_pb2.GetBulkJobRequest, id=bulk_ids),
    "ListBulkJobs": st.builds(
        bulk_pb2.ListBulkJobsRequest,
        statuses=repeated(enums, enums),
        project=texts,
        page_size=int32s,
        page_token=page_tokens,
    ),
    "PauseBulkJob": st.builds(bulk_pb2.PauseBulkJobRequest, id=bulk_ids),
    "ResumeBulkJob": st.builds(bulk_pb2.ResumeBulkJobRequest, id=bulk_ids),
    "CancelBulkJob": st.builds(bulk_pb2.CancelBulkJobRequest, id=bulk_ids),
    "WatchBulkJob": st.builds(bulk_pb2.WatchBulkJobRequest, id=bulk_ids, after_sequence=int64s),
    "ListNotifications": st.builds(
        bulk_pb2.ListNotificationsRequest,
        page_size=int32s,
        page_token=page_tokens,
        job_id=st.one_of(st.just(""), job_ids),
        bulk_job_id=st.one_of(st.just(""), bulk_ids),
    ),
}
BULK_RPCS = frozenset(BULK_REQUESTS)
schedule_ids = st.one_of(texts, hex_ids, st.deferred(lambda: st.sampled_from(SEEDS.schedule_ids)))
template_names = st.one_of(
    texts,
    st.sampled_from(["a", "x" * 64, "x" * 65, "a.b_c-d"]),
    st.deferred(lambda: st.sampled_from(SEEDS.template_names)),
)
# Valid crons that never tick during a test (a tick would store jobs beside a refused call).
crons = st.one_of(
    texts, st.sampled_from(["0 9 * * 1", "0 0 1 1 *", "61 * * * *", "* * * * * * *", "@yearly"])
)
zones = st.one_of(texts, st.sampled_from(["", "UTC", "Europe/Berlin", "Mars/Olympus", "../etc/passwd"]))
submit_requests = st.deferred(lambda: JOB_REQUESTS["SubmitJob"])
bulk_requests = st.deferred(lambda: BULK_REQUESTS["CreateBulkJob"])
SCHEDULE_REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "CreateSchedule": st.one_of(
        st.builds(
            schedules_pb2.CreateScheduleRequest,
            cron=crons,
            time_zone=zones,
            job=submit_requests,
            request_id=texts,
        ),
        st.builds(schedules_pb2.CreateScheduleRequest, cron=crons, time_zone=zones, bulk_job=bulk_requests),
        st.builds(schedules_pb2.CreateScheduleRequest, cron=crons, time_zone=zones, template=template_names),
        st.builds(schedules_pb2.CreateScheduleRequest, cron=crons),
    ),
    "GetSchedule": st.builds(schedules_pb2.GetScheduleRequest, id=schedule_ids),
    "ListSchedules": st.builds(
        schedules_pb2.ListSchedulesRequest,
        states=repeated(enums, enums),
        page_size=int32s,
        page_token=page_tokens,
    ),
    "PauseSchedule": st.builds(schedules_pb2.PauseScheduleRequest, id=schedule_ids),
    "ResumeSchedule": st.builds(schedules_pb2.ResumeScheduleRequest, id=schedule_ids),
    "DeleteSchedule": st.builds(schedules_pb2.DeleteScheduleRequest, id=schedule_ids),
}
TEMPLATE_REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "CreateTemplate": st.one_of(
        st.builds(templates_pb2.CreateTemplateRequest, name=template_names, job=submit_requests),
        st.builds(templates_pb2.CreateTemplateRequest, name=template_names, bulk_job=bulk_requests),
        st.builds(templates_pb2.CreateTemplateRequest, name=template_names),
    ),
    "GetTemplate": st.builds(templates_pb2.GetTemplateRequest, name=template_names),
    "ListTemplates": st.builds(templates_pb2.ListTemplatesRequest, page_size=int32s, page_token=page_tokens),
    "UpdateTemplate": st.one_of(
        st.builds(templates_pb2.UpdateTemplateRequest, name=template_names, job=submit_requests),
        st.builds(templates_pb2.UpdateTemplateRequest, name=template_names, bulk_job=bulk_requests),
        st.builds(templates_pb2.UpdateTemplateRequest, name=template_names),
    ),
    "DeleteTemplate": st.builds(templates_pb2.DeleteTemplateRequest, name=template_names),
}
REQUESTS = {**JOB_REQUESTS, **BULK_REQUESTS, **SCHEDULE_REQUESTS, **TEMPLATE_REQUESTS}


def test_every_rpc_is_fuzzed() -> None:
    services = [
        jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
        bulk_pb2.DESCRIPTOR.services_by_name["BulkService"],
        schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"],
        templates_pb2.DESCRIPTOR.services_by_name["TemplateService"],
    ]
    assert {m.name for s in services for m in s.methods} == set(REQUESTS)


# ---- the server and its seeds -------------------------------------------------


def seed(fuzzer: Fuzzer) -> None:
    """Jobs and bulk jobs of every kind for the fuzzing user, and real page tokens."""
    ok: Callable[..., Any] = lambda method, request: method(request, metadata=fuzzer.metadata, timeout=30)  # noqa: E731
    topic = jobs_pb2.GenerationParams(topic="seed", word_count=60)
    failing = jobs_pb2.GenerationParams(topic="seed", word_count=60, extra={"demo_fail": "permanent"})
    done = ok(fuzzer.jobs.SubmitJob, jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=topic))
    failed = ok(
        fuzzer.jobs.SubmitJob,
        jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=failing, max_attempts=1),
    )
    for job in (done, failed):
        wait_for(
            lambda j=job: (
                ok(fuzzer.jobs.GetJob, jobs_pb2.GetJobRequest(id=j.id)).status
                >= jobs_pb2.JOB_STATUS_COMPLETED
            ),
            timeout=30,
        )
    slow = jobs_pb2.GenerationParams(topic="seed", word_count=60, extra={"demo_seconds": "600"})
    running = ok(fuzzer.jobs.SubmitJob, jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=slow))
    queued = ok(fuzzer.jobs.SubmitJob, jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=topic))
    SEEDS.job_ids[:] = [done.id, failed.id, running.id, queued.id]
    bulks = [
        ok(
            fuzzer.bulk.CreateBulkJob,
            bulk_pb2.CreateBulkJobRequest(mode=jobs_pb2.MODE_TOPIC, items=[topic] * 10),
        )
        for _ in range(2)
    ]
    SEEDS.bulk_ids[:] = [b.id for b in bulks]
    templates = [
        ok(fuzzer.templates.CreateTemplate, templates_pb2.CreateTemplateRequest(name=f"seed{i}", job=request))
        for i, request in enumerate([jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=topic)] * 2)
    ]
    SEEDS.template_names[:] = [t.name for t in templates]
    weekly = schedules_pb2.CreateScheduleRequest(cron="0 9 * * 1", template="seed0")
    SEEDS.schedule_ids[:] = [ok(fuzzer.schedules.CreateSchedule, weekly).id]
    SEEDS.tokens[:] = [
        ok(fuzzer.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=1)).next_page_token,
        ok(fuzzer.bulk.ListBulkJobs, bulk_pb2.ListBulkJobsRequest(page_size=1)).next_page_token,
        ok(fuzzer.templates.ListTemplates, templates_pb2.ListTemplatesRequest(page_size=1)).next_page_token,
    ]


@pytest.fixture(scope="module")
def fuzzer(mongo: MongoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    """One server for every fuzzed RPC (starting one per example would dwarf the calls)."""
    # Long runs queue thousands of jobs behind the seeds' running one: no queued-jobs cap here.
    config = replace(make_settings(mongo.uri, tmp_path_factory.mktemp("fuzz")), max_queued_per_owner=10**9)
    server = ServerThread(config).start()
    made = Fuzzer(server, mongo.uri)
    seed(made)
    yield made
    made.close()
    server.stop(grace=0.1)
    print(f"\nfuzz: {TALLY.report()}")


@pytest.mark.parametrize("rpc", sorted(REQUESTS))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_hostile_requests_get_a_readable_deliberate_answer(
    fuzzer: Fuzzer, rpc: str, data: st.DataObject
) -> None:
    fuzzer.call(rpc, data.draw(REQUESTS[rpc], label="request"))
