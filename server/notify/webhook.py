"""Webhooks: one signed JSON POST per attempt, to the address the guard checked.

The "webhook" channel: its address is an http(s) URL (the guard's check).
Its fields keep the names older versions stored (notify_url, delivery, ...)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from urllib.parse import urlsplit

import httpx

from genjobs.server.model.channels import DELIVERED, FAILED, PENDING, REFUSED, Channel, Doc, register
from genjobs.server.notify import guard
from genjobs.server.notify.sender import Outcome

SIGNATURE_HEADER = "X-Genjobs-Signature"
TIMESTAMP_HEADER = "X-Genjobs-Timestamp"
MAX_ATTEMPTS = 6
MAX_ANSWER = 64 * 1024  # the most of a receiver's answer read

WEBHOOK = register(
    Channel(
        "webhook",
        "notify_url",
        "delivery",
        "attempts",
        "next_attempt_us",
        "last_error",
        "claim_token",
        problem=guard.url_problem,
    )
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: sha256=HMAC-SHA256(secret, "<timestamp>.<body>") in hex."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def body_of(doc: Doc) -> bytes:
    """The JSON a notification is POSTed as: its payload and its id."""
    return json.dumps({"id": str(doc["_id"]), **doc["payload"]}, sort_keys=True).encode()


class WebhookSender:
    """Sends the webhook channel of notifications, on the notifier's loop."""

    channel = WEBHOOK
    max_attempts = MAX_ATTEMPTS

    def __init__(self, secret: str, timeout_seconds: float = 5.0, allow_private: bool = False) -> None:
        self.secret = secret
        self.allow_private = allow_private
        # A total deadline, not httpx's per-read one: a receiver that sends a
        # byte every few seconds would otherwise hold the attempt for ever.
        self.deadline_seconds = timeout_seconds
        self._client: httpx.AsyncClient | None = None

    def endpoint(self, doc: Doc) -> str:
        """The URL's host and port: an owner's deliveries to one receiver are limited together."""
        return urlsplit(doc[WEBHOOK.target]).netloc.lower()

    def _http(self) -> httpx.AsyncClient:
        """The connection pool, made on the loop that uses it."""
        if self._client is None:
            # No redirects: a redirect could lead where the guard would not send.
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.deadline_seconds, connect=min(self.deadline_seconds, 3.0)),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def send(self, doc: Doc) -> Outcome:
        """POST the notification once, all of it within the deadline; what came of it."""
        try:
            async with asyncio.timeout(self.deadline_seconds):
                return await self._post(doc)
        except TimeoutError:
            return Outcome(
                PENDING,
                f"no complete answer within {self.deadline_seconds:g} s (GENJOBS_WEBHOOK_TIMEOUT_SECONDS)",
            )

    async def _post(self, doc: Doc) -> Outcome:
        try:  # the name lookup is part of the attempt, and may be slow: off the loop
            target = await asyncio.to_thread(guard.resolve, doc[WEBHOOK.target], self.allow_private)
        except guard.Refused as exc:
            return Outcome(REFUSED, str(exc))
        except ValueError as exc:  # stored by an older version that did not check it
            return Outcome(FAILED, f"unusable notify_url: {exc}")
        except OSError as exc:  # the name did not resolve: perhaps later
            return Outcome(PENDING, f"cannot resolve the host: {exc}")
        body = body_of(doc)
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Host": target.host_header,
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(self.secret, stamp, body),
        }
        try:
            async with self._http().stream(
                "POST",
                target.url,
                content=body,
                headers=headers,
                extensions={"sni_hostname": target.server_name},
            ) as answer:
                # Read the answer's body (the connection can then be used
                # again), but no more than MAX_ANSWER bytes of it.
                read = 0
                async for chunk in answer.aiter_raw():
                    read += len(chunk)
                    if read > MAX_ANSWER:
                        break
        except httpx.HTTPError as exc:
            return Outcome(PENDING, f"{type(exc).__name__}: {exc}")
        if answer.is_success:
            return Outcome(DELIVERED)
        return Outcome(PENDING, f"HTTP {answer.status_code}")

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
