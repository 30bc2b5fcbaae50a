"""Bulk jobs (placeholder until the bulk service is built)."""

from __future__ import annotations

from server.events import EventHub
from server.jobs import Jobs
from server.store import Store
from server.webhooks import WebhookSender


class Bulks:
    """The BulkService's domain."""

    def __init__(self, store: Store, hub: EventHub, jobs: Jobs, webhooks: WebhookSender) -> None:
        self.store = store
        self.hub = hub
        self.jobs = jobs
        self.webhooks = webhooks

    async def poll_remote(self) -> None:
        """Deliver other replicas' bulk changes to this server's watchers."""
