"""Webhook delivery of notifications: a signed JSON POST, retried with backoff,
on a thread of its own so that the dispatcher never waits for a slow receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time

import httpx
from pymongo.errors import PyMongoError

from server import clock
from server.store import Store

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Genjobs-Signature"
TIMESTAMP_HEADER = "X-Genjobs-Timestamp"
MAX_ATTEMPTS = 6
POLL_SECONDS = 2.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: sha256=HMAC(secret, "<timestamp>.<body>")."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookSender:
    """Delivers pending notifications to their notify_url."""

    def __init__(self, store: Store, secret: str, backoff_seconds: float = 1.0) -> None:
        self.store = store
        self.secret = secret
        self.backoff_seconds = backoff_seconds
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)

    def start(self) -> None:
        """Start delivering."""
        self._thread.start()

    def wake(self) -> None:
        """A notification is waiting: deliver it now."""
        self._wake.set()

    def stop(self) -> None:
        """Stop delivering (pending ones are sent by the next server to run)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stopping.is_set():
                try:
                    for pending in self.store.pending_deliveries(clock.now_us()):
                        self._deliver(client, pending["_id"])
                except PyMongoError as exc:
                    log.warning("webhooks: database unavailable (%s)", exc)
                self._wake.wait(min(POLL_SECONDS, self.backoff_seconds))
                self._wake.clear()

    def _deliver(self, client: httpx.Client, oid: object) -> None:
        # Claim the attempt first: another replica will not send it meanwhile.
        claimed = self.store.claim_delivery(oid, clock.now_us() + 60_000_000)  # type: ignore[arg-type]
        if claimed is None:
            return
        body = json.dumps({"id": str(claimed["_id"]), **claimed["payload"]}, sort_keys=True).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(self.secret, stamp, body),
        }
        attempts = claimed["attempts"]
        try:
            answer = client.post(claimed["notify_url"], content=body, headers=headers)
            ok, detail = answer.is_success, f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        if ok:
            self.store.record_delivery(claimed["_id"], {"delivery": "delivered", "last_error": ""})
        elif attempts >= MAX_ATTEMPTS:
            log.warning("webhook %s gave up after %d attempts: %s", claimed["_id"], attempts, detail)
            self.store.record_delivery(claimed["_id"], {"delivery": "failed", "last_error": detail})
        else:
            delay = self.backoff_seconds * 2 ** (attempts - 1)
            self.store.record_delivery(
                claimed["_id"],
                {"next_attempt_us": clock.now_us() + int(delay * 1e6), "last_error": detail},
            )
