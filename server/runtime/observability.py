"""Metrics, traces and logs: the one place genjobs wires them.

Every layer records through server/telemetry/ (`metrics.job_submitted(mode)`,
`context.job_attempt(job)`, ...); this module is what only the process does:

- Metrics: serves telemetry's registry on GENJOBS_METRICS_PORT (`MetricsServer`);
  the queue gauges are counted every QUEUE_REFRESH_SECONDS while scraped (runtime/app.py).
- RPCs: one grpc.aio interceptor (`RpcMetrics`) counts and times every call
  and names it in the log context.
- Traces: OpenTelemetry, off unless OTEL_EXPORTER_OTLP_ENDPOINT or
  OTEL_TRACES_EXPORTER=console is set (`setup_tracing`).
- Logs: text by default, one JSON object a line with GENJOBS_LOG_FORMAT=json,
  tokens and configured secrets redacted either way (`configure_logging`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from prometheus_client.exposition import start_http_server

from genjobs.server.telemetry import context as telemetry_context
from genjobs.server.telemetry import metrics

Doc = dict[str, Any]

# The queue gauges come from the database, at most this often (and only while scraped).
QUEUE_REFRESH_SECONDS = 5.0


class MetricsServer:
    """prometheus_client's own HTTP server on a port (GENJOBS_METRICS_PORT)."""

    def __init__(self, host: str, port: int, certfile: str = "", keyfile: str = "") -> None:
        tls: dict[str, Any] = {"certfile": certfile, "keyfile": keyfile} if certfile else {}
        self._server, self._thread = start_http_server(port, host, registry=metrics.REGISTRY, **tls)
        self.port = int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving, without waiting: its loop notices within half a second."""

        def close() -> None:
            self._server.shutdown()
            self._server.server_close()

        threading.Thread(target=close, name="metrics-stop", daemon=True).start()


# ---- the RPC interceptor ----------------------------------------------------------


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
        metrics.rpc_done(service, method, code, started, "grpc")

    def _unary(self, inner: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            telemetry_context.rpc_method.set(method)
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
            telemetry_context.rpc_method.set(method)
            started = time.perf_counter()
            failed: BaseException | None = None
            gauge = metrics.stream_gauge(method, "grpc")
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


# ---- traces -----------------------------------------------------------------------

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
    global _tracer_provider
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
        telemetry_context.use_tracer(provider.get_tracer("genjobs"))
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
    global _tracer_provider
    with _tracing_lock:
        if _tracer_provider is None:
            return
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().uninstrument()
        _tracer_provider.shutdown()
        telemetry_context.use_tracer(None)
        _tracer_provider = None


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
        line.update(telemetry_context.context_fields())
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
        fields = telemetry_context.context_fields()
        fields.pop("trace_id", None)
        if fields:
            text += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
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
