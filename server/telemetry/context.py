"""The context a job attempt or an RPC runs in: what its log lines name,
and the trace its attempt's span links to.

Recording only: the dispatcher wraps an attempt in `job_attempt`, a submit
stores `trace_fields()`, the RPC interceptor names the method in
`rpc_method`. Which tracer exists (exporters, the provider) is wiring:
server/runtime/observability.py sets it here with `use_tracer`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from genjobs.server.model.caller import current_caller

Doc = dict[str, Any]

# The RPC being served (its method name), set by the RPC interceptor.
rpc_method: contextvars.ContextVar[str] = contextvars.ContextVar("genjobs_rpc", default="")
_job: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("genjobs_job", default=None)

TRACE_FIELD = "traceparent"  # the SubmitJob's W3C trace context, stored on the job


@contextlib.contextmanager
def job_attempt(job: Doc) -> Iterator[None]:
    """Around one attempt of `job` on the dispatcher's thread: log lines carry
    its ids, and (with tracing on) a span linked to the SubmitJob's trace."""
    token = _job.set(
        {
            "job_id": str(job["_id"]),
            "bulk_job_id": job.get("bulk_job_id", ""),
            "owner": job.get("owner", ""),
            "attempt": job.get("attempt", 0),
        }
    )
    try:
        if _tracer is None:
            yield
            return
        links = []
        parent = job.get(TRACE_FIELD)
        if parent:
            context = trace.get_current_span(_PROPAGATOR.extract({"traceparent": parent})).get_span_context()
            if context.is_valid:
                links.append(trace.Link(context, {"genjobs.link": "submitted_by"}))
        with _tracer.start_as_current_span(
            "genjobs.job_attempt",
            # A new trace per attempt, linked to the submit's: a job may wait hours.
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "genjobs.job_id": str(job["_id"]),
                "genjobs.mode": str(job.get("mode", "")),
                "genjobs.attempt": int(job.get("attempt", 0)),
                "genjobs.bulk_job_id": str(job.get("bulk_job_id", "")),
            },
        ):
            yield
    finally:
        _job.reset(token)


def trace_fields() -> Doc:
    """The fields a new job stores so its attempts can link to this request's
    trace: {} unless tracing is on and a span is current."""
    if _tracer is None:
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    parent = carrier.get("traceparent")
    return {TRACE_FIELD: parent} if parent else {}


_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None


def use_tracer(tracer: trace.Tracer | None) -> None:
    """Spans of attempts and trace links of submits go to `tracer` from now on
    (None: tracing off)."""
    global _tracer
    _tracer = tracer


def context_fields() -> Doc:
    """What a log line names of the job or RPC it concerns: job ids, the RPC
    and its caller, the trace id (with tracing on)."""
    fields: Doc = {}
    job = _job.get()
    if job:
        fields.update((k, v) for k, v in job.items() if v not in ("", None))
    rpc = rpc_method.get()
    if rpc:
        fields["rpc"] = rpc
        if "owner" not in fields:
            with contextlib.suppress(LookupError):
                fields["owner"] = current_caller().user
    if _tracer is not None:  # without a tracer provider no span is ever current
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            fields["trace_id"] = format(span.trace_id, "032x")
    return fields
