"""The HTTP port's guards, in the connection protocol under uvicorn: a cap on a
request head's size (431), a deadline for a head to arrive, then one for its
body (408), and a bound on open connections (503).

The HTTP face shares the event loop with gRPC, so whatever one connection
makes the loop do, every RPC waits for. httptools, uvicorn's fast parser,
puts no limit on a head: it appends each piece of a header to what it has,
so a 100 MB header costs CPU that grows with the square of its size, and a
connection that sends nothing, or half a head, is kept for good (uvicorn's
keep-alive timer runs only after a response). These guards count the bytes
fed to the parser until the head is complete, and close the connection as
soon as it is too big or too slow; nothing else changes for a request that
keeps to them. A body is read by the handler, which waits for it as long
as the connection is open: a body that stops coming would hold the
connection and its handler for good, so a request's body has a deadline
of its own from the end of its head.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from genjobs.server.telemetry import metrics


@dataclass(frozen=True)
class Limits:
    """What one HTTP connection may do (GENJOBS_HTTP_* settings)."""

    max_header_bytes: int = 32768
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_connections: int = 2000


def _refusal(status: str, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, in the API's error shape."""
    code, _, _ = status.partition(" ")
    body = json.dumps(
        {
            "error": {
                "code": int(code),
                "message": message,
                "status": "RESOURCE_EXHAUSTED" if code != "408" else "DEADLINE_EXCEEDED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": reason,
                        "domain": "genjobs.v1",
                    }
                ],
            }
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards; `limits` is set by `protocol()`."""

    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_message = False  # between on_message_begin and on_message_complete
        self._head_open = False  # a message began; its head is not complete
        self._began = 0  # messages begun during the current data_received
        self._head_bytes = 0  # bytes of the open head (see data_received)
        self._known_bytes = 0  # the open head's URL and complete headers, as the parser gave them
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Take the connection, or refuse it at once when too many are open."""
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            metrics.http_refused("too_many_connections")
            self._refuse(
                "503 Service Unavailable", "TOO_MANY_CONNECTIONS", "too many HTTP connections are open"
            )
            return
        self._arm()  # a connection that never sends a head is closed, too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, then count what went to an unfinished head."""
        was_in_message = self._in_message
        if not was_in_message and self._deadline is None:
            self._arm()  # the next head starts (uvicorn's idle timer ends here): it has its deadline
        self._began = 0
        super().data_received(data)
        if not self._head_open or self.transport.is_closing():
            return
        if self._began == 0 or (self._began == 1 and not was_in_message):
            # The whole chunk is this head (it began the chunk, or continues from the last one).
            self._head_bytes += len(data)
        else:
            # Pipelined: the head began after another request's end in this chunk;
            # the parser's callbacks say how much of it is known.
            self._head_bytes = self._known_bytes
        if self._head_bytes > self.limits.max_header_bytes:
            self._too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = self._head_open = True
        self._began += 1
        self._head_bytes = self._known_bytes = 0
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._known_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._known_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._disarm()
        if self.transport.is_closing():  # refused: the parser ends the chunk without us
            return
        if self._known_bytes > self.limits.max_header_bytes:  # a whole head in one piece
            self._too_large()
            return
        super().on_headers_complete()
        # Disarmed by the message's end: in this same feed when it has no body.
        self._arm(self.limits.body_timeout_seconds, self._body_too_slow)

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._disarm()
        if not self.transport.is_closing():
            super().on_message_complete()

    def _too_large(self) -> None:
        metrics.http_refused("header_too_large")
        self._refuse(
            "431 Request Header Fields Too Large",
            "HEADERS_TOO_LARGE",
            f"the request head is over {self.limits.max_header_bytes} bytes",
        )

    def _arm(self, seconds: float | None = None, then: Callable[[], None] | None = None) -> None:
        """Call `then` (the head's deadline by default) in `seconds` unless disarmed first."""
        self._disarm()
        self._deadline = self.loop.call_later(
            self.limits.header_timeout_seconds if seconds is None else seconds, then or self._too_slow
        )

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """The head did not arrive in time."""
        self._timed_out("header_timeout", "HEADER_TIMEOUT", "the request head took too long")

    def _body_too_slow(self) -> None:
        """The body did not arrive in time (its handler waits for it)."""
        self._timed_out("body_timeout", "BODY_TIMEOUT", "the request body took too long", answering=True)

    def _timed_out(self, counted: str, reason: str, message: str, answering: bool = False) -> None:
        """Close, answering 408 where no other answer is under way (`_refuse`)."""
        self._deadline = None
        if self.transport.is_closing():
            return
        metrics.http_refused(counted)
        self._refuse("408 Request Timeout", reason, message, answering)

    def _refuse(self, status: str, reason: str, message: str, answering: bool = False) -> None:
        """Write a refusal when nothing else is being answered, then close.
        `answering`: it answers the request whose body is being read, only
        while its handler has not started an answer and no request is queued
        behind another's answer (pipelined): else it would garble that one."""
        self._disarm()
        cycle = self.cycle
        if answering:
            unanswered = cycle is not None and not cycle.response_started and not self.pipeline
        else:
            unanswered = cycle is None or cycle.response_complete
        if unanswered:
            self.transport.write(_refusal(status, reason, message))
        self.transport.close()


def protocol(limits: Limits) -> type[GuardedHttpTools]:
    """The protocol class uvicorn builds each connection with (`Config(http=...)`)."""
    return type("GuardedHttpTools", (GuardedHttpTools,), {"limits": limits})
