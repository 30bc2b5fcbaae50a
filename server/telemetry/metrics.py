"""Metrics: the counters, gauges and histograms genjobs keeps, and the small
functions every layer records through, one line at each event's site
(`job_submitted(mode)`, `attempt_ended(doc, seconds)`, ...).

Prometheus, in a registry owned by this module (not the client library's
global one). Serving it (a port, an HTTP face's `GET /metrics`) is wiring:
server/runtime/observability.py and the HTTP face read `exposition()` and
`REGISTRY`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from genjobs.server.model.records import Job

Doc = dict[str, Any]
log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)


class _Scrapes(Collector):
    """Counts the reads of REGISTRY (a scrape of /metrics or of the metrics
    port); it adds no metric of its own."""

    def __init__(self) -> None:
        self.count = 0

    def describe(self) -> Iterable[Metric]:
        return ()  # (else registering it would collect it: a read nobody made)

    def collect(self) -> Iterable[Metric]:
        self.count += 1
        return ()


_SCRAPES = _Scrapes()
REGISTRY.register(_SCRAPES)

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
PROVIDER_UP = Gauge(
    "genjobs_provider_up", "1 while a generation provider is up, 0 while it is marked down.",
    ["provider"], registry=REGISTRY,
)  # fmt: skip
WEBHOOK_DELIVERIES = Counter(
    "genjobs_webhook_deliveries",
    "Webhook attempts by outcome (delivered, retry, failed, refused).",
    ["outcome"],
    registry=REGISTRY,
)

# Every queued job has the normal priority today.
DEFAULT_PRIORITY = "normal"
# The queue gauges come from the database, at most this often.

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


def job_changed(job: Job, kind: str) -> None:
    """A status change this replica made to a job that ended it or a bulk
    item (every one passes here once): a final status counts the job as finished."""
    status = _FINAL.get(job.status)
    if status is not None and kind == "STATUS_CHANGED":
        _labelled(JOBS_FINISHED, str(job.mode).lower(), status).inc()


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
    log.log(level, "%s", attempt_line(after, outcome, run_seconds))
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


def attempt_line(after: Doc, outcome: str, run_seconds: float) -> str:
    """The log line of an attempt that ended: the number of the attempt that
    ran (a requeued one was given back, so the job holds one less), how long
    it ran, and for a retry how long until the next attempt may start."""
    attempt = int(after.get("attempt") or 0)
    head = f"attempt {attempt + 1 if outcome == 'requeued' else attempt} of job {after['_id']}"
    if outcome == "retry":
        delay = max(0.0, int(after.get("run_after_us") or 0) / 1e6 - time.time())
        return f"{head}: failed after {run_seconds:.3f} s; retry in {delay:.1f} s"
    return f"{head}: {outcome} after {run_seconds:.3f} s"


def attempt_outcome(after: Doc) -> str:
    """What became of an attempt, from the job as its outcome left it."""
    status = after.get("status", "")
    if status == "QUEUED":
        return "retry" if after.get("queue") == "backoff" else "requeued"
    return _FINAL.get(status, status.lower())


def leader(held: bool) -> None:
    """Whether this replica holds the dispatcher lease now."""
    DISPATCHER_LEADER.set(1 if held else 0)


def provider_up(provider: str, up: bool) -> None:
    """Whether this replica's dispatcher takes `provider` for up (issue #31)."""
    PROVIDER_UP.labels(provider).set(1 if up else 0)


def webhook_delivery(outcome: str) -> None:
    """One webhook attempt's outcome (delivered, retry, failed, refused)."""
    _labelled(WEBHOOK_DELIVERIES, outcome).inc()


def scrapes() -> int:
    """How many times this process's metrics were read: the queue gauges,
    which cost the database two counts, are counted only while someone reads them."""
    return _SCRAPES.count


def queue_gauges(queued: int, running: int) -> None:
    """The deployment's queued and processing jobs, as counted in the database."""
    _labelled(QUEUE_DEPTH, DEFAULT_PRIORITY).set(queued)
    JOBS_RUNNING.set(running)


def exposition(accept: str = "") -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type: what an
    HTTP face answers `GET /metrics` with."""
    del accept  # the text format suits every Prometheus
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def rpc_done(service: str, method: str, code: str, started: float, transport: str) -> None:
    """Count one finished RPC (`started`: its time.perf_counter() at the start)."""
    _labelled(RPC_HANDLED, service, method, code, transport).inc()
    _labelled(RPC_DURATION, service, method, transport).observe(time.perf_counter() - started)


def stream_gauge(method: str, transport: str) -> Any:
    """The open-streams gauge of `method` (inc() when one opens, dec() when it ends)."""
    return _labelled(STREAMS_OPEN, method, transport)


def http_refused(reason: str) -> None:
    """An HTTP connection closed by a guard: header_too_large, header_timeout,
    body_timeout, too_many_connections."""
    _labelled(HTTP_REFUSED, reason).inc()
