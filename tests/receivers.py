"""Real local receivers for notification tests: an HTTP server that records
webhook POSTs, and an SMTP server (aiosmtpd) that records mail."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Hook:
    """One POST a Receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived


@dataclass
class Receiver:
    """An HTTP server on a free loopback port that answers 200 and records every
    POST; paths in `held` wait (up to `hold_seconds`) until `release()`."""

    held: set[str] = field(default_factory=set)
    hold_seconds: float = 30.0
    received: list[Hook] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._release = threading.Event()
        self.arrived: list[str] = []  # every request's path as it arrives, held ones included
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrived.append(self.path)
                if self.path in receiver.held:
                    receiver._release.wait(receiver.hold_seconds)
                receiver.received.append(Hook(self.path, dict(self.headers), body, time.time()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def on(self, path: str) -> list[Hook]:
        return [hook for hook in self.received if hook.path == path]

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[EmailMessage, float]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((message, time.time()))  # type: ignore[arg-type]
        return "250 OK"


class MailServer:
    """An aiosmtpd SMTP server on `port` of loopback, recording what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inbox = _Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=port)

    def start(self) -> MailServer:
        self.controller.start()
        return self

    @property
    def messages(self) -> list[EmailMessage]:
        return [m for m, _ in self.inbox.messages]

    def stop(self) -> None:
        self.controller.stop()
