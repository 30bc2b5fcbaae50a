"""The dashboard's files (server/web, package data), read once at start and
served from memory, compressed ahead of time: no file or thread work per request."""

from __future__ import annotations

import base64
import gzip
import hashlib
import mimetypes
import re
from dataclasses import dataclass
from importlib import resources

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
# An inline <script> of the pages (no src): allowed by its hash, nothing else inline.
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
# The dashboard's pages as plain URLs (mail links, bookmarks): each is index.html,
# whose script routes by the path. One page name, then at most one id or name.
PAGES = re.compile(r"/(jobs|bulk-jobs|schedules|templates|usage|notifications)(/[\w.%-]{1,200})?/?")


@dataclass(frozen=True)
class WebFile:
    """One file: its bytes, gzipped bytes (when that is smaller) and validators."""

    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str


class WebFiles:
    """`GET /` and every page's path (`/jobs/<id>`, `/schedules`, ...) are
    index.html; `GET /app.js` is app.js; anything else is 404."""

    def __init__(self, package: str = "genjobs.server", folder: str = "web") -> None:
        self.files: dict[str, WebFile] = {}
        for entry in resources.files(package).joinpath(folder).iterdir():
            if not entry.is_file() or entry.name.startswith("."):
                continue
            body = entry.read_bytes()
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            media_type = TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0]
            media_type = media_type or "application/octet-stream"
            if media_type.startswith("text/"):
                media_type += "; charset=utf-8"
            packed = gzip.compress(body, 9, mtime=0)
            self.files["/" + entry.name] = WebFile(
                body=body,
                gzipped=packed if len(packed) < len(body) * 0.9 else None,
                media_type=media_type,
                etag='"' + hashlib.sha256(body).hexdigest()[:16] + '"',
            )
        if "/index.html" in self.files:
            self.files["/"] = self.files["/index.html"]

    def security_headers(self) -> dict[str, str]:
        """The headers every answer carries: a Content-Security-Policy allowing
        this origin only (the pages' inline scripts by hash; the icon is a data:
        URL), no MIME sniffing, no framing."""
        hashes = sorted(
            {
                "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
                for name, found in self.files.items()
                if name.endswith(".html")
                for script in _INLINE_SCRIPT.findall(found.body)
            }
        )
        policy = [
            "default-src 'self'",
            " ".join(["script-src 'self'", *hashes]),
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
        return {
            "content-security-policy": "; ".join(policy),
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
        }

    async def serve(self, request: Request) -> Response:
        """The file at the request's path; 304 when the browser's copy is current."""
        path = request.url.path
        found = self.files.get(path)
        if found is None and PAGES.fullmatch(path):
            found = self.files.get("/index.html")
        if found is None:
            return PlainTextResponse("not found", status_code=404)
        # Revalidated on every load (cheap: a 304), so a new release is never stale.
        headers = {"ETag": found.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        body = found.body
        if found.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            body = found.gzipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=found.media_type, headers=headers)


def security_headers(app: ASGIApp, headers: dict[str, str]) -> ASGIApp:
    """ASGI middleware: `headers` added to every HTTP answer (streams included)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                found = MutableHeaders(scope=message)
                for name, value in headers.items():
                    found.setdefault(name, value)
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped
