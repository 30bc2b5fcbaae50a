"""Metrics, traces and logs: the one place genjobs wires them.

The rest of the code records through the small functions here, one line at
each event's site (`job_submitted(mode)`, `attempt_ended(doc, seconds)`,
...), never through globals of its own.

- Metrics: Prometheus, in a registry owned by this module (not the client
  library's global one), served on GENJOBS_METRICS_PORT by `serve_metrics`
  and handed to any other HTTP face by `exposition()`.
- RPCs: one grpc.aio interceptor (`RpcMetrics`) counts and times every call
  and names it in the log context.
- Traces: OpenTelemetry, off unless OTEL_EXPORTER_OTLP_ENDPOINT or
  OTEL_TRACES_EXPORTER=console is set (`setup_tracing`).
- Logs: text by default, one JSON object a line with GENJOBS_LOG_FORMAT=json,
  tokens and configured secrets redacted either way (`configure_logging`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest, start_http_server

Doc = dict[str, Any]
log = logging.getLogger(__name__)

# ---- metrics ----------------------------------------------------------------

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds: a job waits from under a second to hours; runs from milliseconds to minutes.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

JOBS_SUBMITTED = Counter(
    "genjobs_jobs_submitted", "Jobs queued on this replica by SubmitJob and CreateBulkJob.", ["mode"],
    registry=REGISTRY,
)  # fmt: skip
JOBS_FINISHED = Counter(
    "genjobs_jobs_finished", "Jobs that reached a final status on this replica.", ["mode", "status"],
    registry=REGISTRY,
)  # fmt: skip
JOB_ATTEMPTS = Counter(
    "genjobs_job_attempts",
    "Attempts this replica's dispatcher ended, by outcome "
    "(completed, failed, retry, cancelled, requeued, lost).",
    ["mode", "outcome"],
    registry=REGISTRY,
)
JOB_FAILURES = Counter(
    "genjobs_job_failures", "Failed attempts by error code (retried or final).", ["code"], registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "genjobs_queue_depth", "Queued jobs in the database, by priority.", ["priority"], registry=REGISTRY
)
JOBS_RUNNING = Gauge("genjobs_jobs_running", "Jobs processing in the deployment.", registry=REGISTRY)
JOB_WAIT = Histogram(
    "genjobs_job_wait_seconds", "From a job's submission to its first attempt's start.",
    buckets=WAIT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
JOB_RUN = Histogram(
    "genjobs_job_run_seconds", "From an attempt's start to its end.", ["mode"],
    buckets=RUN_BUCKETS, registry=REGISTRY,
)  # fmt: skip
GENERATOR_COST = Counter(
    "genjobs_generator_cost_cents", "What completed jobs cost, in cents.", ["mode"], registry=REGISTRY
)
# transport: "grpc", or "http" for the same RPCs called through the HTTP/JSON face.
RPC_HANDLED = Counter(
    "genjobs_rpc_handled", "RPCs finished, by gRPC status code name.",
    ["service", "method", "code", "transport"], registry=REGISTRY,
)  # fmt: skip
RPC_DURATION = Histogram(
    "genjobs_rpc_duration_seconds", "RPC handling time (a stream: until it ends).",
    ["service", "method", "transport"], buckets=RPC_BUCKETS, registry=REGISTRY,
)  # fmt: skip
STREAMS_OPEN = Gauge(
    "genjobs_streams_open", "Server streams open now.", ["method", "transport"], registry=REGISTRY
)
HTTP_REFUSED = Counter(
    "genjobs_http_refused", "HTTP connections a guard closed (server/api/http/guard.py), by reason.",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
DISPATCHER_LEADER = Gauge(
    "genjobs_dispatcher_leader", "1 while this replica holds the dispatcher lease.", registry=REGISTRY
)
WEBHOOK_DELIVERIES = Counter(
    "genjobs_webhook_deliveries",
    "Webhook attempts by outcome (delivered, retry, failed, refused).",
    ["outcome"],
    registry=REGISTRY,
)

# Every queued job has the normal priority today.
DEFAULT_PRIORITY = "normal"
# The queue gauges come from the database, at most this often.
QUEUE_REFRESH_SECONDS = 5.0

_FINAL = {"COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled"}


_children: dict[tuple[Any, ...], Any] = {}


def _labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: labels() costs more than the
    increment itself. The label values are bounded sets (modes, statuses, codes)."""
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def _mode(doc: Mapping[str, Any]) -> str:
    return str(doc.get("mode", "")).lower()


def job_submitted(mode: str, count: int = 1) -> None:
    """`count` jobs of `mode` were queued here."""
    _labelled(JOBS_SUBMITTED, mode.lower()).inc(count)


def job_changed(doc: Doc, kind: str) -> None:
    """A change this replica made to a job (every one passes here once): a
    final status counts the job as finished."""
    status = _FINAL.get(doc.get("status", ""))
    if status is not None and kind == "STATUS_CHANGED":
        _labelled(JOBS_FINISHED, _mode(doc), status).inc()


def attempt_started(job: Doc) -> None:
    """The dispatcher claimed `job`: its first attempt's wait is observed."""
    if job.get("attempt") == 1 and job.get("started_us") and job.get("ck"):
        JOB_WAIT.observe(max(0.0, (job["started_us"] - job["ck"]) / 1e6))


def attempt_ended(after: Doc, run_seconds: float) -> None:
    """The dispatcher recorded an attempt's outcome; `after` is the job as stored."""
    mode = _mode(after)
    outcome = attempt_outcome(after)
    _labelled(JOB_ATTEMPTS, mode, outcome).inc()
    _labelled(JOB_RUN, mode).observe(run_seconds)
    # A line costs more than the rest of the recording: completions (the metrics count them) only at DEBUG.
    level = logging.DEBUG if outcome == "completed" else logging.INFO
    attempt = after.get("attempt")
    log.log(level, "attempt %s of job %s: %s in %.3f s", attempt, after["_id"], outcome, run_seconds)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("genjobs.outcome", outcome)
    if outcome in ("failed", "retry", "lost"):
        _labelled(JOB_FAILURES, str((after.get("error") or {}).get("code", "UNKNOWN"))).inc()
    elif outcome == "completed":
        _labelled(GENERATOR_COST, mode).inc(int(after.get("cost_cents") or 0))


def attempt_lost(after: Doc) -> None:
    """An attempt whose server died was recovered by this replica."""
    _labelled(JOB_ATTEMPTS, _mode(after), "lost").inc()
    _labelled(JOB_FAILURES, "WORKER_LOST").inc()


def attempt_outcome(after: Doc) -> str:
    """What became of an attempt, from the job as its outcome left it."""
    status = after.get("status", "")
    if status == "QUEUED":
        return "retry" if after.get("queue") == "backoff" else "requeued"
    return _FINAL.get(status, status.lower())


def leader(held: bool) -> None:
    """Whether this replica holds the dispatcher lease now."""
    DISPATCHER_LEADER.set(1 if held else 0)


def webhook_delivery(outcome: str) -> None:
    """One webhook attempt's outcome (delivered, retry, failed, refused)."""
    _labelled(WEBHOOK_DELIVERIES, outcome).inc()


def queue_gauges(queued: int, running: int) -> None:
    """The deployment's queued and processing jobs, as counted in the database."""
    _labelled(QUEUE_DEPTH, DEFAULT_PRIORITY).set(queued)
    JOBS_RUNNING.set(running)


def exposition(accept: str = "") -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type: what an
    HTTP face answers `GET /metrics` with."""
    del accept  # the text format suits every Prometheus
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsServer:
    """prometheus_client's own HTTP server on a port (GENJOBS_METRICS_PORT)."""

    def __init__(self, host: str, port: int, certfile: str = "", keyfile: str = "") -> None:
        tls: dict[str, Any] = {"certfile": certfile, "keyfile": keyfile} if certfile else {}
        self._server, self._thread = start_http_server(port, host, registry=REGISTRY, **tls)
        self.port = int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving, without waiting: its loop notices within half a second."""

        def close() -> None:
            self._server.shutdown()
            self._server.server_close()

        threading.Thread(target=close, name="metrics-stop", daemon=True).start()


# ---- the RPC interceptor ----------------------------------------------------------

_rpc: contextvars.ContextVar[str] = contextvars.ContextVar("genjobs_rpc", default="")


def _status_name(context: grpc.aio.ServicerContext, failed: BaseException | None) -> str:
    code = context.code()
    if code is None:
        if isinstance(failed, asyncio.CancelledError):  # the caller went away
            return "CANCELLED"
        return "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(code, "UNKNOWN")


_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def rpc_done(service: str, method: str, code: str, started: float, transport: str) -> None:
    """Count one finished RPC (`started`: its time.perf_counter() at the start)."""
    _labelled(RPC_HANDLED, service, method, code, transport).inc()
    _labelled(RPC_DURATION, service, method, transport).observe(time.perf_counter() - started)


def stream_gauge(method: str, transport: str) -> Any:
    """The open-streams gauge of `method` (inc() when one opens, dec() when it ends)."""
    return _labelled(STREAMS_OPEN, method, transport)


def http_refused(reason: str) -> None:
    """An HTTP connection closed by a guard: header_too_large, header_timeout, too_many_connections."""
    _labelled(HTTP_REFUSED, reason).inc()


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by service, method and status code, counts
    open streams, and names the RPC in log lines written while it runs."""

    def __init__(self) -> None:
        # method -> (the handler served, its measured wrapper): wrapped once, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method
        known = self._wrapped.get(full)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, full)
        self._wrapped[full] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full: str) -> grpc.RpcMethodHandler:
        service, _, method = full.lstrip("/").rpartition("/")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: only reflection, not measured

    def _done(self, service: str, method: str, code: str, started: float) -> None:
        rpc_done(service, method, code, started, "grpc")

    def _unary(self, inner: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _rpc.set(method)
            started = time.perf_counter()
            failed: BaseException | None = None
            try:
                answer = inner(request, context)
                return (await answer) if inspect.isawaitable(answer) else answer
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self._done(service, method, _status_name(context, failed), started)

        return behavior

    def _stream(self, inner: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _rpc.set(method)
            started = time.perf_counter()
            failed: BaseException | None = None
            gauge = stream_gauge(method, "grpc")
            gauge.inc()
            try:
                answers = inner(request, context)
                if hasattr(answers, "__aiter__"):
                    async for item in answers:
                        yield item
                else:
                    for item in answers:
                        yield item
            except BaseException as exc:
                failed = exc
                raise
            finally:
                gauge.dec()
                self._done(service, method, _status_name(context, failed), started)

        return behavior


# ---- job context: logs and traces ---------------------------------------------

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
_tracer_provider: TracerProvider | None = None
_tracing_lock = threading.Lock()


def tracing_wanted(env: Mapping[str, str] | None = None) -> bool:
    """OpenTelemetry's own variables ask for traces: an OTLP endpoint, or a
    traces exporter other than none."""
    env = os.environ if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or exporter in ("console", "otlp")
    )


def setup_tracing(processor: SpanProcessor | None = None) -> TracerProvider | None:
    """Turn tracing on once per process: with `processor` (tests), else as
    OpenTelemetry's environment variables say; None when they say nothing."""
    global _tracer, _tracer_provider
    with _tracing_lock:
        if _tracer_provider is not None:
            if processor is not None:
                _tracer_provider.add_span_processor(processor)
            return _tracer_provider
        if processor is None:
            if not tracing_wanted():
                return None
            processor = BatchSpanProcessor(_exporter())
        provider = TracerProvider(resource=Resource.create({"service.name": "genjobs"}))
        provider.add_span_processor(processor)
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument(tracer_provider=provider)
        _tracer_provider = provider
        _tracer = provider.get_tracer("genjobs")
        return provider


def _exporter() -> Any:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, TLS: from OTEL_EXPORTER_OTLP_*


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server puts before its own: the RPC span (when
    tracing is on), then the RPC metrics."""
    found: list[grpc.aio.ServerInterceptor] = []
    if _tracer_provider is not None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        found.append(aio_server_interceptor(tracer_provider=_tracer_provider))
    found.append(RpcMetrics())
    return found


def shutdown_tracing() -> None:
    """Send the spans still buffered (a server stops)."""
    if _tracer_provider is not None:
        _tracer_provider.force_flush(5000)


def stop_tracing() -> None:
    """Turn tracing off again in this process (tests)."""
    global _tracer, _tracer_provider
    with _tracing_lock:
        if _tracer_provider is None:
            return
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().uninstrument()
        _tracer_provider.shutdown()
        _tracer = _tracer_provider = None


# ---- logs -----------------------------------------------------------------------

REDACTED = "[redacted]"
# A JWT (three base64url parts, the first a JSON header) and bearer credentials.
_TOKENISH = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+|(?i:bearer)\s+[\w.~+/=-]+")


class Redactor:
    """Removes tokens and configured secrets from log text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "eyJ" in text or "earer" in text:
            text = _TOKENISH.sub(REDACTED, text)
        return text


def _context_fields() -> Doc:
    fields: Doc = {}
    job = _job.get()
    if job:
        fields.update((k, v) for k, v in job.items() if v not in ("", None))
    rpc = _rpc.get()
    if rpc:
        fields["rpc"] = rpc
        if "owner" not in fields:
            from server.api.auth import current_caller

            with contextlib.suppress(LookupError):
                fields["owner"] = current_caller().user
    if _tracer is not None:  # without a tracer provider no span is ever current
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            fields["trace_id"] = format(span.trace_id, "032x")
    return fields


_ENCODER = json.JSONEncoder(default=str)  # made once: json.dumps(default=...) makes one a call


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the job and RPC
    context where known, and the exception if any."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        line: Doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created % 1 * 1000):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        line.update(_context_fields())
        if record.exc_info:
            line["exception"] = self.redact(self.formatException(record.exc_info))
        return _ENCODER.encode(line)


class TextFormatter(logging.Formatter):
    """The plain format, with the job or RPC it concerns appended and secrets redacted."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context_fields()
        context.pop("trace_id", None)
        if context:
            text += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return self.redact(text)


LOG_FORMATS = ("text", "json")


def configure_logging(level: str, fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Set up the root logger: `fmt` text or json, on stderr; `secrets` never
    appear in a line."""
    if fmt not in LOG_FORMATS:
        raise SystemExit(f"genjobs: GENJOBS_LOG_FORMAT={fmt!r}: use text or json")
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format shows them: each record need not look them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
