"""Signed webhook delivery (placeholder until the bulk service is built)."""

from __future__ import annotations

from server.store import Store


class WebhookSender:
    """Delivers notifications to notify_url."""

    def __init__(self, store: Store, secret: str) -> None:
        self.store = store
        self.secret = secret

    def start(self) -> None:
        """Start delivering."""

    def stop(self) -> None:
        """Stop delivering."""
