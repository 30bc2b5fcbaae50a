"""Webhooks: one signed JSON POST per attempt, to the address the guard checked."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlsplit

import httpx

from server.notify import guard
from server.notify.channels import DELIVERED, FAILED, PENDING, REFUSED, WEBHOOK, Doc
from server.notify.sender import Outcome

SIGNATURE_HEADER = "X-Genjobs-Signature"
TIMESTAMP_HEADER = "X-Genjobs-Timestamp"
MAX_ATTEMPTS = 6


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: sha256=HMAC-SHA256(secret, "<timestamp>.<body>") in hex."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def body_of(doc: Doc) -> bytes:
    """The JSON a notification is POSTed as: its payload and its id."""
    return json.dumps({"id": str(doc["_id"]), **doc["payload"]}, sort_keys=True).encode()


class WebhookSender:
    """Sends the webhook channel of notifications."""

    channel = WEBHOOK
    max_attempts = MAX_ATTEMPTS

    def __init__(self, secret: str, timeout_seconds: float = 5.0, allow_private: bool = False) -> None:
        self.secret = secret
        self.allow_private = allow_private
        # No redirects: a redirect could lead where the guard would not send.
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 3.0)),
            follow_redirects=False,
            trust_env=False,
        )

    def endpoint(self, doc: Doc) -> str:
        """The URL's host and port: deliveries to one receiver are limited together."""
        return urlsplit(doc[WEBHOOK.target]).netloc.lower()

    def send(self, doc: Doc) -> Outcome:
        """POST the notification once; what came of it."""
        try:
            target = guard.resolve(doc[WEBHOOK.target], self.allow_private)
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
            answer = self.client.post(
                target.url, content=body, headers=headers, extensions={"sni_hostname": target.server_name}
            )
        except httpx.HTTPError as exc:
            return Outcome(PENDING, f"{type(exc).__name__}: {exc}")
        if answer.is_success:
            return Outcome(DELIVERED)
        return Outcome(PENDING, f"HTTP {answer.status_code}")

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
