"""Real local receivers for tests: an HTTP server that records webhook POSTs,
an SMTP server (aiosmtpd) that records mail, and the plumbing of the tests'
own generation services (`JsonHandler`, `serving`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


class JsonHandler(BaseHTTPRequestHandler):
    """A test's HTTP service: reads JSON bodies, answers JSON, logs nothing."""

    def body(self) -> Any:
        """The request's JSON body."""
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def answer(self, code: int, payload: Any) -> None:
        """Send `payload` as a JSON answer with status `code`."""
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a free loopback port for the block; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


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


class Trickler:
    """An HTTP receiver that never finishes answering: it reads each request,
    then sends a status line and headers one byte every `interval` seconds,
    for as long as the client stays connected. Records when each connection
    opened and closed."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.opened: list[float] = []
        self.closed: list[float] = []
        self._stopping = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self.opened) - len(self.closed)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        self.opened.append(time.time())
        answer = b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"a" * 100_000
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            for i in range(len(answer)):
                conn.sendall(answer[i : i + 1])
                # Wait a tick, noticing at once when the client hangs up.
                readable, _, _ = select.select([conn], [], [], self.interval)
                if readable and not conn.recv(65536):
                    return
                if self._stopping.is_set():
                    return
        except OSError:
            return
        finally:
            self.closed.append(time.time())
            conn.close()

    def close(self) -> None:
        self._stopping.set()
        self.sock.close()


class Flood(Trickler):
    """An HTTP receiver that answers 200 with a body of `limit` bytes, sent as
    fast as the client reads, then holds the connection open. Records how
    many body bytes it got to send on each connection."""

    def __init__(self, limit: int = 50_000_000) -> None:
        self.limit = limit
        self.sent: list[int] = []
        super().__init__(interval=0.2)

    def _trickle(self, conn: socket.socket) -> None:
        self.opened.append(time.time())
        sent = 0
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (self.limit * 2))
            block = b"x" * 65536
            conn.settimeout(1.0)
            while sent < self.limit and not self._stopping.is_set():
                try:
                    sent += conn.send(block)
                except TimeoutError:
                    continue  # the client is not reading (yet)
            while not self._stopping.is_set():  # the rest never comes
                readable, _, _ = select.select([conn], [], [], self.interval)
                if readable and not conn.recv(65536):
                    return
        except OSError:
            return
        finally:
            self.sent.append(sent)
            self.closed.append(time.time())
            conn.close()


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[EmailMessage, float]] = []
        self.slow_domain = ""  # mail to this domain is answered after `slow_seconds`
        self.slow_seconds = 0.0
        self.slow_arrived = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.slow_domain and any(r.endswith("@" + self.slow_domain) for r in envelope.rcpt_tos):
            self.slow_arrived += 1
            await asyncio.sleep(self.slow_seconds)
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
