"""Fuzzing every route of the HTTP/JSON face, beside tests/test_fuzz.py.

The requests are the gRPC fuzzer's own (its strategies and seeds: long and
odd strings, unknown enums, out-of-range timestamps, forged page tokens,
10,000-item lists), sent as JSON bodies, query parameters and path
segments of each transcoded route; and, as often, hostile bytes in one of
those places: malformed JSON, lone surrogates, nesting thousands deep,
wrong types, invalid UTF-8, odd query parameters. About 2,000 requests in
all (GENJOBS_HTTP_FUZZ_REQUESTS); no answer may be a 500, and every error
is Google's JSON error shape with a deliberate status.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genjobs.server.api.http.transcode import Route, routes
from tests.harness import MongoServer, ServerThread, make_settings
from tests.test_abuse_http import MALFORMED, SERVICES
from tests.test_fuzz import ADMIN_RPCS, REQUESTS, Fuzzer, seed

pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module")
ROUTES = routes(SERVICES)
TOTAL = int(os.environ.get("GENJOBS_HTTP_FUZZ_REQUESTS", "2000"))
PER_ROUTE = math.ceil(TOTAL / len(ROUTES))
# Deliberate answers of 5xx: not served (501), the database away (503), too slow (504).
DELIBERATE_5XX = {501, 503, 504}
TALLY: Counter[int] = Counter()
# Longest text put in a URL: httpx refuses URLs over 64 KB (and the server heads over 32 KB, with 431).
URL_TEXT = 1000

surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.text(max_size=20),
    surrogates,
)
json_trees = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8) | surrogates, children, max_size=4),
    ),
    max_leaves=12,
)


def nested(depth: int, kind: int) -> bytes:
    if kind == 0:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


hostile_bodies = st.one_of(
    st.sampled_from(MALFORMED),
    st.binary(max_size=64),
    st.builds(nested, st.integers(50, 5000), st.integers(0, 1)),
    json_trees.map(lambda tree: json.dumps(tree).encode()),  # \ud800 escapes where surrogates were drawn
    st.dictionaries(
        st.sampled_from(["mode", "params", "items", "requestId", "priority", "pageSize", "token", "job"]),
        json_trees,
        max_size=3,
    ).map(lambda tree: json.dumps(tree).encode()),
)
hostile_params = st.lists(
    st.tuples(
        st.sampled_from(
            ["pageSize", "page_size", "statuses", "pageToken", "query", "createdAfter", "x", "a.b"]
        )
        | st.text(max_size=10),
        st.text(max_size=30) | st.sampled_from(["-1", "1e99", "9" * 30, "true", "JOB_STATUS_X", "%ff"]),
    ),
    max_size=4,
)
hostile_segments = st.one_of(
    st.text(max_size=30), st.sampled_from(["..", "%2e%2e", "%ff", "%ed%a0%80", "a/b"])
)


def flattened(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    """A JSON value as query parameters: nested fields dotted, lists repeated."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flattened(f"{prefix}.{key}" if prefix else key, inner)
    elif isinstance(value, list):
        for item in value[:50]:
            if not isinstance(item, dict | list):
                yield from flattened(prefix, item)
    elif isinstance(value, bool):
        yield prefix, "true" if value else "false"
    else:
        yield prefix, str(value)


def as_http(route: Route, message: Message) -> tuple[str, list[tuple[str, str]], bytes]:
    """(path, query parameters, body) of `message` on `route`, as a client would send it."""
    try:
        data: dict[str, Any] = json_format.MessageToDict(message)
    except (ValueError, TypeError, json_format.Error):  # e.g. a timestamp outside Timestamp's range
        data = {}
    path = route.template
    for field in route.fields:
        value = str(getattr(message, field, ""))[:URL_TEXT]
        path = path.replace("{" + field + "}", quote(value, safe=""), 1)
        data.pop(message.DESCRIPTOR.fields_by_name[field].json_name, None)
    if route.body:
        return path, [], json.dumps(data).encode()
    return path, [(name[:URL_TEXT], value[:URL_TEXT]) for name, value in flattened("", data)], b""


class HttpFuzzer:
    """Real HTTP clients of the fuzzing server: the fuzzing user's and an admin's."""

    def __init__(self, fuzzer: Fuzzer) -> None:
        server = fuzzer.server
        assert server.app is not None
        base = f"http://127.0.0.1:{server.app.http_port}"
        self.user = httpx.Client(base_url=base, headers=dict(fuzzer.metadata), timeout=60)
        self.admin = httpx.Client(base_url=base, headers=dict(fuzzer.admin_metadata), timeout=60)

    def send(self, route: Route, path: str, params: list[tuple[str, str]], body: bytes) -> None:
        http = self.admin if route.method.name in ADMIN_RPCS else self.user
        content = body if body or route.body else None
        request = http.build_request(route.verb, path, params=params, content=content)
        answer = http.send(request, stream=True)  # a Watch answers its first event: read no further
        try:
            status = answer.status_code
            TALLY[status] += 1
            where = f"{route.verb} {path[:100]} {params[:3]} {body[:80]!r}"
            assert status < 500 or status in DELIBERATE_5XX, f"{where}: {status} {answer.read()[:300]!r}"
            if status >= 400 and answer.request.url.path.startswith("/v1/"):  # ".." may leave the API
                error = json.loads(answer.read())["error"]
                assert error["code"] == status and error["status"] not in ("INTERNAL", "UNKNOWN"), where
        finally:
            answer.close()

    def close(self) -> None:
        self.user.close()
        self.admin.close()


@pytest.fixture(scope="module")
def http_fuzzer(mongo: MongoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFuzzer]:
    """One server, seeded as the gRPC fuzzer seeds its own, for every route."""
    config = replace(
        make_settings(mongo.uri, tmp_path_factory.mktemp("fuzz-http")), max_queued_per_owner=10**9
    )
    server = ServerThread(config).start()
    fuzzer = Fuzzer(server, mongo.uri)
    seed(fuzzer)
    made = HttpFuzzer(fuzzer)
    yield made
    made.close()
    fuzzer.close()
    server.stop(grace=0.1)
    print(
        f"\nhttp fuzz: {sum(TALLY.values())} requests over {len(ROUTES)} routes: {dict(TALLY.most_common())}"
    )


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.verb} {r.template}" for r in ROUTES])
@settings(
    max_examples=PER_ROUTE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_every_route_answers_hostile_requests_without_a_500(
    http_fuzzer: HttpFuzzer, route: Route, data: st.DataObject
) -> None:
    path, params, body = as_http(route, data.draw(REQUESTS[route.method.name], label="request"))
    where = data.draw(st.sampled_from(["as is", "body", "query", "path"]), label="hostile part")
    if where == "body":
        body = data.draw(hostile_bodies, label="body")
    elif where == "query":
        params = data.draw(hostile_params, label="params")
    elif where == "path" and route.fields:
        segment = quote(data.draw(hostile_segments, label="segment"), safe="%/")
        path = route.template.split("{", 1)[0] + segment + route.template.split("}", 1)[1]
    http_fuzzer.send(route, path, params, body)
