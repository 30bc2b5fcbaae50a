"""The HTTP/JSON face: every route transcoded from the protos' annotations,
against a live server (the same one gRPC clients use), with real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from genjobs.server.api.http.face import port_setting
from genjobs.server.api.http.transcode import routes, split_custom
from genjobs.v1 import bulk_pb2, jobs_pb2, schedules_pb2, templates_pb2
from tests.harness import MongoServer, ServerThread, make_settings, wait_for

FINAL = {"JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"}
SERVICES = [
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
    bulk_pb2.DESCRIPTOR.services_by_name["BulkService"],
    schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"],
    templates_pb2.DESCRIPTOR.services_by_name["TemplateService"],
]


class Api:
    """A user's HTTP client of one server."""

    def __init__(self, server: ServerThread, user: str | None) -> None:
        assert server.app is not None
        headers = {"authorization": f"Bearer {server.token(user)}"} if user else {}
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{server.app.http_port}", headers=headers, timeout=30
        )

    def __call__(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        answer = self.http.request(method, path, **kwargs)
        assert answer.status_code == expect, answer.text
        return answer.json()

    def submit(self, topic: str = "Green tea", **extra: str) -> dict[str, Any]:
        body = {"mode": "MODE_TOPIC", "params": {"topic": topic, "wordCount": 80, "extra": extra}}
        return self("POST", "/v1/jobs", json=body)

    def final(self, job_id: str) -> dict[str, Any]:
        return wait_for(lambda: (j := self("GET", f"/v1/jobs/{job_id}"))["status"] in FINAL and j, timeout=30)

    def events(self, path: str, **headers: str) -> list[tuple[str, dict[str, Any]]]:
        """(id, data) of every event of a stream, read until the server ends it."""
        events, current_id = [], ""
        with self.http.stream("GET", path, headers=headers) as answer:
            assert answer.status_code == 200, answer.read()
            assert answer.headers["content-type"].startswith("text/event-stream")
            for line in answer.iter_lines():
                if line.startswith("id: "):
                    current_id = line[4:]
                elif line.startswith("data: "):
                    events.append((current_id, httpx.Response(200, content=line[6:]).json()))
                    current_id = ""
        return events


@pytest.fixture
def api(server: ServerThread) -> Iterator[Api]:
    client = Api(server, "alice")
    yield client
    client.http.close()


@pytest.fixture
def bob_api(server: ServerThread) -> Iterator[Api]:
    client = Api(server, "bob")
    yield client
    client.http.close()


def error_of(answer: dict[str, Any]) -> tuple[int, str, str]:
    """(HTTP code, gRPC status name, ErrorInfo reason) of a Google JSON error."""
    error = answer["error"]
    info = next(d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert error["message"]
    return error["code"], error["status"], info["reason"]


def test_every_rpc_is_annotated_and_served(server: ServerThread) -> None:
    served = {r.method.full_name for r in routes(SERVICES)}
    assert served == {m.full_name for s in SERVICES for m in s.methods}
    assert server.app is not None and server.app.http is not None
    assert set(server.app.http.api.handlers) == served
    assert split_custom("/v1/jobs/abc:cancel") == ("/v1/jobs/abc", "cancel")
    assert split_custom("/v1/jobs:stats") == ("/v1/jobs", "stats")


def test_submit_get_and_list_in_both_spellings(api: Api) -> None:
    snake = api(
        "POST",
        "/v1/jobs",
        json={"mode": "MODE_KEYWORDS", "params": {"keywords": ["tea", "health"], "word_count": 90}},
    )
    assert snake["status"] == "JOB_STATUS_QUEUED" and snake["params"]["wordCount"] == 90
    assert "word_count" not in snake["params"]  # lowerCamelCase out
    camel = api(
        "POST", "/v1/jobs", json={"mode": "MODE_TOPIC", "params": {"topic": "Oolong", "wordCount": 80}}
    )
    done = api.final(camel["id"])
    assert done["status"] == "JOB_STATUS_COMPLETED" and done["result"]["content"]
    assert api("GET", f"/v1/jobs/{camel['id']}")["id"] == camel["id"]
    api.final(snake["id"])

    everything = api("GET", "/v1/jobs")
    assert [j["id"] for j in everything["jobs"]] == [camel["id"], snake["id"]]  # newest first
    assert everything["totalSize"] == 2
    # Repeated fields repeat, enums by name, timestamps in RFC 3339, both spellings of a name.
    found = api(
        "GET",
        "/v1/jobs",
        params=[
            ("statuses", "JOB_STATUS_COMPLETED"),
            ("statuses", "JOB_STATUS_FAILED"),
            ("modes", "MODE_KEYWORDS"),
            ("createdAfter", snake["createTime"]),
            ("created_before", "2999-01-01T00:00:00Z"),
            ("query", "HEALTH"),
            ("pageSize", "1"),
        ],
    )
    assert [j["id"] for j in found["jobs"]] == [snake["id"]]
    first = api("GET", "/v1/jobs", params={"pageSize": 1})
    second = api("GET", "/v1/jobs", params={"pageSize": 1, "pageToken": first["nextPageToken"]})
    assert [first["jobs"][0]["id"], second["jobs"][0]["id"]] == [camel["id"], snake["id"]]
    assert "nextPageToken" not in second  # the end


def test_cancel_retry_delete_and_their_refusals(api: Api) -> None:
    blocker = api.submit("keeps the dispatcher busy", demo_seconds="30")
    queued = api.submit("waits its turn")
    cancelled = api("POST", f"/v1/jobs/{queued['id']}:cancel")
    assert cancelled["status"] == "JOB_STATUS_CANCELLED"
    # The same rules as gRPC, with the standard HTTP status of each gRPC code.
    refused = api("POST", f"/v1/jobs/{queued['id']}:cancel", expect=400)
    assert error_of(refused)[1] == "FAILED_PRECONDITION"
    assert error_of(api("DELETE", f"/v1/jobs/{blocker['id']}", expect=400))[1] == "FAILED_PRECONDITION"
    retried = api("POST", f"/v1/jobs/{queued['id']}:retry", json={"requestId": "again-1"})
    assert retried["retryOf"] == queued["id"] and retried["status"] == "JOB_STATUS_QUEUED"
    assert (
        api("POST", f"/v1/jobs/{queued['id']}:retry", json={"request_id": "again-1"})["id"] == retried["id"]
    )
    assert api("DELETE", f"/v1/jobs/{queued['id']}") == {}
    assert error_of(api("GET", f"/v1/jobs/{queued['id']}", expect=404))[1:] == ("NOT_FOUND", "JOB_NOT_FOUND")
    api("POST", f"/v1/jobs/{blocker['id']}:cancel")


def test_bulk_operation_with_a_dry_run_and_stats(api: Api) -> None:
    failed = [api.submit(f"broken {i}", demo_fail="permanent") for i in range(3)]
    for job in failed:
        api.final(job["id"])
    body = {"operation": "BULK_OPERATION_RETRY_ALL_FAILED", "validateOnly": True}
    dry = api("POST", "/v1/jobs:runBulkOperation", json=body)
    assert dry["affectedCount"] == 3 and sorted(dry["jobIds"]) == sorted(j["id"] for j in failed)
    assert all(api("GET", f"/v1/jobs/{j['id']}")["status"] == "JOB_STATUS_FAILED" for j in failed)
    done = api("POST", "/v1/jobs:runBulkOperation", json={**body, "validateOnly": False})
    assert done["affectedCount"] == 3
    stats = api("GET", "/v1/jobs:stats", params={"createdAfter": "2000-01-01T00:00:00Z"})
    assert int(stats["totalJobs"]) == 6
    assert {s["status"] for s in stats["byStatus"]} <= {"JOB_STATUS_FAILED", "JOB_STATUS_QUEUED", *FINAL} | {
        "JOB_STATUS_PROCESSING"
    }


def test_bulk_jobs_and_notifications(api: Api) -> None:
    items = [{"topic": f"item {i}", "wordCount": 60} for i in range(10)]
    bulk = api("POST", "/v1/bulkJobs", json={"mode": "MODE_TOPIC", "items": items, "requestId": "b-1"})
    assert bulk["totalItems"] == 10 and len(bulk["items"]) == 10
    assert (
        api("POST", "/v1/bulkJobs", json={"mode": "MODE_TOPIC", "items": items, "requestId": "b-1"})["id"]
        == (bulk["id"])
    )
    done = wait_for(
        lambda: (
            (b := api("GET", f"/v1/bulkJobs/{bulk['id']}"))["status"] == "BULK_JOB_STATUS_COMPLETED" and b
        ),
        timeout=60,
    )
    assert done["completedItems"] == 10 and [i["queuePosition"] for i in done["items"]] == list(range(1, 11))
    listed = api("GET", "/v1/bulkJobs", params={"statuses": "BULK_JOB_STATUS_COMPLETED"})
    assert [b["id"] for b in listed["bulkJobs"]] == [bulk["id"]]
    notes = wait_for(lambda: api("GET", "/v1/notifications").get("notifications"))
    assert notes[0]["bulkJobId"] == bulk["id"]

    blocker = api.submit("keeps the dispatcher busy", demo_seconds="30")
    second = api("POST", "/v1/bulkJobs", json={"mode": "MODE_TOPIC", "items": items})
    assert api("POST", f"/v1/bulkJobs/{second['id']}:pause")["status"] == "BULK_JOB_STATUS_PAUSED"
    assert api("POST", f"/v1/bulkJobs/{second['id']}:resume")["status"] != "BULK_JOB_STATUS_PAUSED"
    cancelled = api("POST", f"/v1/bulkJobs/{second['id']}:cancel")
    assert cancelled["status"] == "BULK_JOB_STATUS_CANCELLED" and cancelled["cancelledItems"] == 10
    refused = api("POST", f"/v1/bulkJobs/{second['id']}:pause", expect=400)
    assert error_of(refused)[1] == "FAILED_PRECONDITION"
    api("POST", f"/v1/jobs/{blocker['id']}:cancel")


def test_auth_failures(server: ServerThread, api: Api) -> None:
    job = api.submit()
    anonymous = Api(server, None)
    for method, path in (
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job['id']}:watch"),
        ("GET", "/v1/notifications"),
    ):
        answer = anonymous.http.request(method, path)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert error_of(answer.json()) == (401, "UNAUTHENTICATED", "MISSING_TOKEN")
    for header, reason in (
        ("Basic abc", "MALFORMED_TOKEN"),
        ("Bearer not-a-jwt", "INVALID_TOKEN"),
        (f"Bearer {server.token('alice', ttl=-10)}", "TOKEN_EXPIRED"),
    ):
        answer = anonymous("GET", f"/v1/jobs/{job['id']}", expect=401, headers={"authorization": header})
        assert error_of(answer)[2] == reason
    anonymous.http.close()


def test_another_users_jobs_are_not_found(api: Api, bob_api: Api) -> None:
    job = api.submit()
    items = [{"topic": f"item {i}"} for i in range(10)]
    bulk = api("POST", "/v1/bulkJobs", json={"mode": "MODE_TOPIC", "items": items})
    for method, path in (
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}:cancel"),
        ("POST", f"/v1/jobs/{job['id']}:retry"),
        ("DELETE", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}:watch"),
        ("GET", f"/v1/bulkJobs/{bulk['id']}"),
        ("POST", f"/v1/bulkJobs/{bulk['id']}:pause"),
        ("GET", f"/v1/bulkJobs/{bulk['id']}:watch"),
    ):
        assert error_of(bob_api(method, path, expect=404))[1] == "NOT_FOUND", path
    assert bob_api("GET", "/v1/jobs") == {}  # nothing of alice's, not even a count
    assert bob_api("GET", "/v1/bulkJobs") == {}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "reason"),
    [
        ("POST", "/v1/jobs", {"content": b"{not json"}, "INVALID_JSON"),
        ("POST", "/v1/jobs", {"content": b"[1, 2]"}, "INVALID_JSON"),
        ("POST", "/v1/jobs", {"content": b"\xff\xfe"}, "INVALID_JSON"),
        ("POST", "/v1/jobs", {"json": {"mode": "MODE_TOPIC", "colour": "red"}}, "INVALID_FIELD"),
        (
            "POST",
            "/v1/jobs",
            {"json": {"mode": "MODE_TOPIC", "params": {"wordCount": "many"}}},
            "INVALID_FIELD",
        ),
        ("POST", "/v1/jobs", {"json": {"mode": "MODE_PAINTING"}}, "INVALID_FIELD"),
        ("POST", "/v1/jobs", {"json": {"mode": "MODE_TOPIC", "params": ["x"]}}, "INVALID_FIELD"),
        ("POST", "/v1/jobs", {"json": {"mode": "MODE_TOPIC", "params": {}}}, "INVALID_REQUEST"),
        ("GET", "/v1/jobs", {"params": {"colour": "red"}}, "UNKNOWN_QUERY_PARAMETER"),
        ("GET", "/v1/jobs", {"params": {"pageSize": "lots"}}, "INVALID_FIELD"),
        ("GET", "/v1/jobs", {"params": {"pageSize": "-1"}}, "INVALID_REQUEST"),
        ("GET", "/v1/jobs", {"params": {"createdAfter": "yesterday"}}, "INVALID_FIELD"),
        ("GET", "/v1/jobs", {"params": {"statuses": "JOB_STATUS_SLEEPING"}}, "INVALID_FIELD"),
        ("GET", "/v1/jobs", {"params": [("query", "a"), ("query", "b")]}, "INVALID_QUERY_PARAMETER"),
        ("GET", "/v1/jobs", {"params": {"createdAfter.seconds": "1"}}, "INVALID_FIELD"),
        ("GET", "/v1/jobs/not-an-id", {}, "INVALID_REQUEST"),
        ("GET", "/v1/jobs/abc:watch", {"headers": {"last-event-id": "soon"}}, "INVALID_LAST_EVENT_ID"),
        (
            "POST",
            "/v1/bulkJobs",
            {"json": {"mode": "MODE_TOPIC", "items": [{"topic": "one"}]}},
            "INVALID_REQUEST",
        ),
    ],
)
def test_bad_requests_are_400_with_a_reason(
    api: Api, method: str, path: str, kwargs: dict[str, Any], reason: str
) -> None:
    answer = api(method, path, expect=400, **kwargs)
    code, status, got = error_of(answer)
    assert (code, status) == (400, "INVALID_ARGUMENT")
    assert got == reason or reason == "INVALID_REQUEST", answer
    violations = next(d for d in answer["error"]["details"] if d["@type"].endswith("BadRequest"))
    assert violations["fieldViolations"][0]["field"]


def test_unknown_routes_and_methods(api: Api) -> None:
    assert error_of(api("GET", "/v1/jobs/abc:explode", expect=404))[2] == "NO_SUCH_ROUTE"
    assert error_of(api("GET", "/v1/nothing", expect=404))[2] == "NO_SUCH_ROUTE"
    assert error_of(api("PUT", "/v1/jobs", expect=501))[2] == "METHOD_NOT_ALLOWED"


def test_watch_streams_each_event_once_and_resumes_from_last_event_id(api: Api) -> None:
    job = api.submit("watched", demo_seconds="1")
    whole = api.events(f"/v1/jobs/{job['id']}:watch")
    sequences = [int(data["sequence"]) for _, data in whole]
    assert sequences == sorted(set(sequences)) and len(sequences) >= 3
    assert [int(i) for i, _ in whole] == sequences  # the SSE id is the sequence
    assert whole[-1][1]["job"]["status"] == "JOB_STATUS_COMPLETED"
    assert any(data["type"] == "JOB_EVENT_TYPE_PROGRESS" for _, data in whole)

    # A dropped stream resumes after its last event: nothing lost, nothing twice.
    middle = whole[len(whole) // 2][0]
    rest = api.events(f"/v1/jobs/{job['id']}:watch", **{"Last-Event-ID": middle})
    assert [int(i) for i, _ in rest] == [s for s in sequences if s > int(middle)]
    assert rest[-1][1]["job"]["status"] == "JOB_STATUS_COMPLETED"
    # The query parameter does the same; after the end there is nothing more.
    assert api.events(f"/v1/jobs/{job['id']}:watch?afterSequence={middle}") == rest
    assert api.events(f"/v1/jobs/{job['id']}:watch", **{"Last-Event-ID": str(sequences[-1])}) == []


def test_the_owner_stream_carries_every_job_of_the_owner_and_no_one_elses(api: Api, bob_api: Api) -> None:
    with api.http.stream("GET", "/v1/jobs:watch?project=tea") as answer:
        assert answer.status_code == 200
        lines = answer.iter_lines()
        assert next(lines).startswith(": ")  # a heartbeat at once: the stream is open

        def body(project: str, topic: str) -> dict[str, Any]:
            return {"mode": "MODE_TOPIC", "project": project, "params": {"topic": topic}}

        bob_api("POST", "/v1/jobs", json=body("tea", "bob's"))
        api("POST", "/v1/jobs", json=body("coffee", "other"))
        job = api("POST", "/v1/jobs", json=body("tea", "mine"))
        seen: list[dict[str, Any]] = []
        for line in lines:
            if line.startswith("data: "):
                seen.append(httpx.Response(200, content=line[6:]).json()["job"])
                if seen[-1]["status"] == "JOB_STATUS_COMPLETED":
                    break
    assert {j["id"] for j in seen} == {job["id"]}  # neither bob's job nor another project's
    statuses = [j["status"] for j in seen]
    assert statuses[0] == "JOB_STATUS_QUEUED" and "JOB_STATUS_PROCESSING" in statuses


def test_watch_bulk_job_until_its_notification(api: Api) -> None:
    items = [{"topic": f"item {i}", "wordCount": 60} for i in range(10)]
    bulk = api("POST", "/v1/bulkJobs", json={"mode": "MODE_TOPIC", "items": items})
    events = api.events(f"/v1/bulkJobs/{bulk['id']}:watch")
    assert events[0][1]["type"] == "BULK_JOB_EVENT_TYPE_SNAPSHOT"
    last = events[-1][1]
    assert last["type"] == "BULK_JOB_EVENT_TYPE_COMPLETED" and last["notification"]["bulkJobId"] == bulk["id"]
    done = [e["bulkJob"].get("completedItems", 0) for _, e in events]
    assert done == sorted(done) and done[-1] == 10
    assert api.events(f"/v1/bulkJobs/{bulk['id']}:watch", **{"Last-Event-ID": events[-1][0]}) == []


def test_a_stream_open_at_shutdown_ends_with_unavailable(mongo: MongoServer, tmp_path: Path) -> None:
    server = ServerThread(make_settings(mongo.uri, tmp_path)).start()
    api = Api(server, "alice")
    try:
        job = api.submit("never finishes", demo_seconds="60")
        with api.http.stream("GET", f"/v1/jobs/{job['id']}:watch") as answer:
            lines = answer.iter_lines()
            assert next(lines).startswith("id: ")
            server.stop()
            rest = list(lines)
        assert "event: error" in rest
        error = httpx.Response(200, content=rest[rest.index("event: error") + 1][6:]).json()
        assert error_of(error)[:2] == (503, "UNAVAILABLE")
    finally:
        server.stop()
        api.http.close()


def test_the_dashboard_is_served_at_the_root(api: Api) -> None:
    page = api.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>" in page.text
    script = api.http.get("/app.js", headers={"accept-encoding": "gzip"})
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["content-encoding"] == "gzip" and "import" in script.text
    again = api.http.get("/app.js", headers={"if-none-match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert api.http.get("/nothing.js").status_code == 404
    # A page of jobs is compressed for a browser, never an event stream. Eight
    # jobs keep the page over the 1 KiB threshold whatever state they are in
    # (three queued jobs came to 1,008 bytes and went uncompressed).
    for i in range(8):
        api.submit(f"compressed {i}")
    listed = api.http.get("/v1/jobs", headers={"accept-encoding": "gzip"})
    assert listed.headers["content-encoding"] == "gzip" and len(listed.json()["jobs"]) == 8


def test_http_port_setting(mongo: MongoServer, tmp_path: Path) -> None:
    assert port_setting("off") is None and port_setting("0") == 0 and port_setting("8080") == 8080
    for bad in ("eighty", "-1", "70000"):
        with pytest.raises(SystemExit):
            port_setting(bad)
    server = ServerThread(replace(make_settings(mongo.uri, tmp_path), http_port="off")).start()
    try:
        assert server.app is not None and server.app.http is None and server.app.http_port == 0
    finally:
        server.stop()


def test_metrics_are_scraped_on_the_http_port(api: Api) -> None:
    def submitted() -> float:
        answer = api.http.get("/metrics", headers={"authorization": ""})  # no token: Prometheus has none
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        return sum(
            sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
            if sample.name == "genjobs_jobs_submitted_total"
        )

    before = submitted()
    api.submit()
    assert submitted() == before + 1


def test_a_body_over_four_megabytes_is_refused_unread(api: Api) -> None:
    # ReportProgress needs no token: nobody may make the server hold a huge body.
    answer = api.http.post(
        "/v1/jobs/0123456789abcdef01234567:reportProgress", content=b"x" * (5 * 1024 * 1024)
    )
    assert answer.status_code == 413
    assert error_of(answer.json())[1:] == ("RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE")
