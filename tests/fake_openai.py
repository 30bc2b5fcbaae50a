"""A real local HTTP server speaking the OpenAI chat-completions streaming
protocol (server-sent `data:` chunks, a final usage chunk, `[DONE]`), for the
openai generator's tests and benchmark. Each request follows the next queued
Plan (or the default one) and is recorded."""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Plan:
    """How to answer one request."""

    pieces: list[str] = field(default_factory=lambda: ["# A title\n\n", "Hello ", "there, ", "reader."])
    delay: float = 0.0  # seconds between pieces
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = (10, 4)  # prompt, completion tokens
    status: int = 200
    error: str = ""  # the provider's message of an error status
    headers: dict[str, str] = field(default_factory=dict)
    stall_after: int = -1  # send this many pieces, then nothing until the client leaves


@dataclass
class Seen:
    """One request as the server saw it."""

    body: dict[str, Any]
    headers: dict[str, str]
    arrived: float
    ended: float = 0.0
    chunks_sent: int = 0
    closed_by_client: threading.Event = field(default_factory=threading.Event)


class FakeOpenAI:
    """`with FakeOpenAI() as fake:` serves on a free port; `fake.base_url` is the /v1 root."""

    def __init__(self) -> None:
        self.plans: list[Plan] = []
        self.default = Plan()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self._handler = Handler
        self.httpd: ThreadingHTTPServer | None = self._listen(0)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def _listen(self, port: int) -> ThreadingHTTPServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler)
        httpd.daemon_threads = True
        return httpd

    def __enter__(self) -> FakeOpenAI:
        assert self.httpd is not None
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="fake-openai").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening, as a provider does for a restart: connections are refused."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def restart(self) -> None:
        """Listen again on the same port."""
        self.httpd = self._listen(self.port)
        self.__enter__()

    def queue(self, *plans: Plan) -> None:
        """Answer the next requests with these plans, in order."""
        with self._lock:
            self.plans.extend(plans)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        seen = Seen(body, {k.lower(): v for k, v in handler.headers.items()}, time.monotonic())
        with self._lock:
            plan = self.plans.pop(0) if self.plans else self.default
            self.requests.append(seen)
        if plan.status != 200:
            data = json.dumps({"error": {"message": plan.error, "type": "invalid_request_error"}}).encode()
            handler.send_response(plan.status)
            for name, value in {"Content-Type": "application/json", **plan.headers}.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            seen.ended = time.monotonic()
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        model = body.get("model", "")
        try:
            for event in _events(plan, model):
                if plan.stall_after == seen.chunks_sent:
                    _until_closed(handler)
                    seen.closed_by_client.set()
                    return
                handler.wfile.write(event)
                seen.chunks_sent += 1
                if plan.delay:
                    time.sleep(plan.delay)  # the model writing its next words
        except (BrokenPipeError, ConnectionResetError):
            seen.closed_by_client.set()
        seen.ended = time.monotonic()


def _chunk(model: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
    data: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        data["usage"] = usage
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _events(plan: Plan, model: str) -> Iterator[bytes]:
    for piece in plan.pieces:
        yield _chunk(model, [{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    yield _chunk(model, [{"index": 0, "delta": {}, "finish_reason": plan.finish_reason}])
    if plan.usage is not None:
        prompt, completion = plan.usage
        yield _chunk(
            model,
            [],
            {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        )
    yield b"data: [DONE]\n\n"


def _until_closed(handler: BaseHTTPRequestHandler) -> None:
    """Send nothing until the client closes its end (at most a minute)."""
    sock = handler.connection
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable and not sock.recv(1024):
            return
